"""Ahead-of-time compile of Triton kernels for real GPUs, with no GPU: the only GPU-side evidence here.

Each kernel module lists, in ``aot_specs()``, every config its launchers can choose. ``compile_spec``
builds one for an NVIDIA arch (80 = A100, 90 = H100) through Triton's own compiler (ttir → ttgir → llir
→ ptx → cubin) and reports its resources: registers per thread, shared memory, the stack frame and
spill stores/loads from ptxas's own ``-v`` log, LOCAL/STACK from the cubin (``cuobjdump`` bundled with
triton), and the occupancy they allow (CTAs per SM).

Specialisation. The JIT does not compile "the kernel": it compiles it for the launch's arguments —
pointers 16-byte aligned and ints divisible by 16 get ``tt.divisibility = 16`` (vectorised accesses),
ints equal to 1 become constants. A spec carries that specialisation (``aligned`` and ``constexprs``).
The faithful way to get it is ``specs_from_launches``: a module's ``aot_launches()`` lists
representative calls of its launchers on ``meta`` tensors (nothing is allocated or run; their data
pointers are 0, i.e. aligned like every CUDA allocation), ``capture`` records the kernel launches
those calls make, and ``jit_specialization`` computes for each exactly what ``JITFunction.run``
computes (triton's own binder and ``_pack_args``), with the launch's own ``num_warps``/``num_stages``.
Hand-written specs (``AotSpec(...)`` without ``aligned``) still work: every pointer is then assumed
aligned and no int divisible.
"""
import contextlib
import dataclasses
import inspect
import io
import os
import re
import subprocess
import tempfile
import types

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# Max shared memory per block (opt-in), bytes: A100 = 163 KiB, H100 = 227 KiB.
SHARED_LIMIT = {80: 166912, 90: 232448}
# Per SM: shared memory for CTAs, registers, warps, CTAs (CUDA occupancy tables, sm_80 / sm_90).
SM_SHARED = {80: 167936, 90: 233472}
SM_REGISTERS = 65536
SM_WARPS = 64
SM_CTAS = 32
SHARED_RESERVED_PER_CTA = 1024  # the driver reserves 1 KiB of shared memory per CTA (sm_80+)
ARCHS = (80, 90)
_INT_TYPES = {"i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"}


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One launchable config of one kernel.

    ``signature`` maps every runtime argument to a Triton type string ("*fp32", "*fp16", "*bf16", "i32",
    "i64", "fp32"); ``constexprs`` maps every ``tl.constexpr`` argument (and every int the JIT turns into
    a constant: value 1, or None) to its value. ``aligned``: names of the arguments the JIT marks
    divisible by 16 (16-byte aligned pointers, ints ≡ 0 mod 16); None → every pointer, no int.
    """

    kernel: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    label: str
    aligned: tuple = None

    def aligned_names(self):
        if self.aligned is not None:
            return tuple(self.aligned)
        return tuple(name for name, ty in self.signature.items() if ty.startswith("*"))

    def key(self):
        """What makes two specs the same binary."""
        return (self.kernel.__name__, tuple(sorted(self.signature.items())),
                tuple(sorted((k, repr(v)) for k, v in self.constexprs.items())), tuple(sorted(self.aligned_names())),
                self.num_warps, self.num_stages)


@dataclasses.dataclass(frozen=True)
class Resources:
    """Static resources of one compiled kernel (bytes, except registers per thread)."""

    registers: int
    shared: int
    local: int  # cuobjdump LOCAL
    stack: int  # cuobjdump STACK
    stack_frame: int  # ptxas -v "bytes stack frame"
    spill_stores: int  # ptxas -v "bytes spill stores"
    spill_loads: int  # ptxas -v "bytes spill loads"


# ---------------------------------------------------------------------------------------------------
# The JIT's specialisation of a launch.

@dataclasses.dataclass(frozen=True)
class Launch:
    """One recorded ``kernel[grid](*args, **kwargs)``."""

    kernel: object
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def capture():
    """Record kernel launches instead of running them: ``with capture() as launches: launcher(...)``.

    Patches ``run`` of triton's JIT and interpreter kernel classes for the duration (not thread-safe)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs))

    saved = {cls: cls.__dict__["run"] for cls in (JITFunction, InterpretedFunction)}
    try:
        for cls in saved:
            cls.run = record
        yield launches
    finally:
        for cls, run in saved.items():
            cls.run = run


def _kernel_params(kernel):
    """Triton's ``KernelParam`` list of ``kernel`` (a JIT or an interpreted function)."""
    from triton.runtime.jit import KernelParam

    dns = getattr(kernel, "do_not_specialize", None) or getattr(kernel, "kwargs", {}).get("do_not_specialize") or ()
    dnsoa = (getattr(kernel, "do_not_specialize_on_alignment", None)
             or getattr(kernel, "kwargs", {}).get("do_not_specialize_on_alignment") or ())
    params = inspect.signature(kernel.fn).parameters.values()
    return [KernelParam(i, p, i in dns or p.name in dns, i in dnsoa or p.name in dnsoa) for i, p in enumerate(params)]


def _nvidia_backend(arch=90):
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", arch, 32))


def jit_specialization(kernel, args, kwargs, params=None):
    """(signature, constexprs, attrs, options) exactly as ``JITFunction.run`` computes them for this
    launch on an NVIDIA GPU: its binder (``create_function_from_signature``) and ``_pack_args``, keyed
    by triton's argument paths."""
    from triton.runtime.jit import JITFunction, create_function_from_signature

    params = params if params is not None else _kernel_params(kernel)
    backend = _nvidia_backend()
    binder = create_function_from_signature(inspect.signature(kernel.fn), params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    return JITFunction._pack_args(types.SimpleNamespace(params=params), backend, dict(kwargs), bound,
                                  specialization, options)


def spec_from_launch(launch, label):
    """The ``AotSpec`` of the binary the JIT builds for ``launch`` (which must pass num_warps and
    num_stages explicitly, so that the AOT compile and the launch read the same values)."""
    kernel = launch.kernel
    missing = [k for k in ("num_warps", "num_stages") if k not in launch.kwargs]
    if missing:
        raise ValueError(f"{kernel.__name__}: launch without explicit {', '.join(missing)}")
    _, signature, constexprs, attrs = jit_specialization(kernel, launch.args, launch.kwargs)
    names = kernel.arg_names
    consts = {names[path[0]]: value for path, value in constexprs.items()}
    aligned = tuple(names[path[0]] for path, value in attrs.items() if ["tt.divisibility", 16] in value)
    sig = {name: ty for name, ty in signature.items() if ty != "constexpr"}
    return AotSpec(kernel, sig, consts, launch.kwargs["num_warps"], launch.kwargs["num_stages"], label, aligned)


def specs_from_launches(calls):
    """Distinct ``AotSpec``s of every launch made by ``calls``: (label, launcher, args, kwargs) tuples."""
    specs = {}
    for label, fn, args, kwargs in calls:
        with capture() as launches:
            fn(*args, **kwargs)
        if not launches:
            raise ValueError(f"{label}: {getattr(fn, '__name__', fn)} launched no kernel")
        for launch in launches:
            spec = spec_from_launch(launch, label)
            specs.setdefault(spec.key(), spec)
    return list(specs.values())


# ---------------------------------------------------------------------------------------------------
# Compile and read resources.

def _cuobjdump():
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _read_cubin(cubin):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def parse_ptxas_log(log):
    """(stack frame, spill stores, spill loads) bytes from ptxas -v output (maxima over its entries)."""
    def biggest(pattern):
        return max((int(v) for v in re.findall(pattern, log)), default=0)
    if "Used" not in log:
        raise ValueError(f"no ptxas -v resource line in: {log[:500]!r}")
    return (biggest(r"(\d+) bytes stack frame"), biggest(r"(\d+) bytes spill stores"),
            biggest(r"(\d+) bytes spill loads"))


def _ast_source(spec):
    names = spec.kernel.arg_names
    signature = dict(spec.signature)
    signature.update({name: "constexpr" for name in spec.constexprs})
    signature = {name: signature[name] for name in names}  # in argument order, as the JIT builds it
    aligned, parse = set(spec.aligned_names()), _nvidia_backend().parse_attr
    # As the JIT: an (empty) entry for every constexpr, "D" or "" for pointers and ints, none for floats/bools.
    attrs = {(i,): parse("D" if name in aligned else "") for i, name in enumerate(names)
             if name in spec.constexprs or signature[name].startswith("*") or signature[name] in _INT_TYPES}
    return ASTSource(fn=spec.kernel, signature=signature, constexprs=dict(spec.constexprs), attrs=attrs)


def compile_spec(spec, arch):
    """Compile ``spec`` for ``sm_<arch>`` (always, bypassing triton's cache, so ptxas runs and logs) and
    return its ``Resources`` (shared includes Triton's dynamic shared memory)."""
    from triton import knobs

    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        compiled = triton.compile(_ast_source(spec), target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    frame, stores, loads = parse_ptxas_log(log.getvalue())
    fields = _read_cubin(compiled.asm["cubin"])
    return Resources(registers=fields["REG"], shared=fields["SHARED"] + compiled.metadata.shared,
                     local=fields["LOCAL"], stack=fields["STACK"], stack_frame=frame, spill_stores=stores,
                     spill_loads=loads)


def occupancy(registers, shared, num_warps, arch):
    """CTAs per SM allowed by registers (allocated per warp in units of 256), shared memory (plus the
    1 KiB reserved per CTA, in 128-byte units), warps and the CTA limit; and which one binds."""
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    limits = {
        "registers": (SM_REGISTERS // regs_per_warp) // num_warps,
        "shared": SM_SHARED[arch] // (-(-(shared + SHARED_RESERVED_PER_CTA) // 128) * 128),
        "warps": SM_WARPS // num_warps,
        "ctas": SM_CTAS,
    }
    bound = min(limits, key=limits.get)
    return limits[bound], bound


def kernel_modules():
    """Every kernel module of this package (``clipfast.kernels.<op>``), imported."""
    import importlib
    import pkgutil

    package = importlib.import_module(__package__)
    return [
        importlib.import_module(f"{__package__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    ]


def _declared_constexprs(spec):
    return {p.name for p in _kernel_params(spec.kernel) if p.is_constexpr}


def spec_row(spec, arch):
    """One report row (a dict) for ``spec`` on ``sm_<arch>``: config, specialisation, resources or error."""
    row = {"kernel": spec.kernel.__name__, "label": spec.label, "arch": arch, "num_warps": spec.num_warps,
           "num_stages": spec.num_stages, "aligned": sorted(spec.aligned_names()),
           "constants": sorted(f"{k}={v}" for k, v in spec.constexprs.items() if k not in _declared_constexprs(spec))}
    try:
        res = compile_spec(spec, arch)
        ctas, bound = occupancy(res.registers, res.shared, spec.num_warps, arch)
        row.update(dataclasses.asdict(res), ctas_per_sm=ctas, occupancy_bound=bound, error=None)
    except Exception as exc:  # report every failure, not just the first
        row["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    return row


def _compile_row(job):
    module_name, index, arch = job
    import importlib

    module = importlib.import_module(module_name)
    spec = module.aot_specs()[index]
    row = spec_row(spec, arch)
    row["module"] = module_name.rsplit(".", 1)[-1]
    model = getattr(module, "aot_bytes_per_flop", None)  # optional: the module's traffic model of a spec
    row["bytes_per_flop"] = model(spec) if model is not None else None
    return row


def compile_all(jobs=2):
    """Compile every spec of every kernel module for every arch in ``ARCHS``; return one row (dict)
    per (spec, arch) with its resources or its compile error."""
    import concurrent.futures

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1: the interpreter replaces @triton.jit; unset it to compile")
    work = [(m.__name__, i, arch) for m in kernel_modules() for i in range(len(m.aot_specs())) for arch in ARCHS]
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_compile_row, work))


def problems(row):
    """What is wrong with one compiled row: compile error, spills or a stack frame, shared memory over the
    limit."""
    if row["error"]:
        return [row["error"]]
    found = []
    if row["spill_stores"] or row["spill_loads"]:
        found.append(f"ptxas spills {row['spill_stores']} B stores / {row['spill_loads']} B loads")
    if row["stack_frame"] or row["stack"] or row["local"]:
        found.append(f"stack frame {max(row['stack_frame'], row['stack'])} B, LOCAL {row['local']} B")
    if row["shared"] > SHARED_LIMIT[row["arch"]]:
        found.append(f"shared memory {row['shared']} B > sm_{row['arch']} limit {SHARED_LIMIT[row['arch']]} B")
    return found


def format_row(r):
    if r["error"]:
        return f"{r['kernel']:<32} {r['label'][:40]:<40} sm_{r['arch']}  ERROR {r['error'][:200]}"
    extra = r.get("bytes_per_flop")
    return (f"{r['kernel']:<32} {r['label'][:40]:<40} sm_{r['arch']} {r['num_warps']:>2} {r['num_stages']:>2}"
            f" {r['registers']:>4} {r['shared']:>7} {r['stack_frame']:>5} {r['spill_stores']:>4}/{r['spill_loads']:<4}"
            f" {r['ctas_per_sm']:>2} {r['occupancy_bound']:<9}" + (f" {extra:.4f}" if extra is not None else ""))


def main(argv=None):
    """``python -m clipfast.kernels._aot [--json FILE]``: the resource report of every kernel config."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    args = parser.parse_args(argv)
    rows = compile_all(args.jobs)
    print(f"{'kernel':<32} {'config':<40} {'arch':>5} {'w':>2} {'st':>2} {'REG':>4} {'SHARED':>7} {'STACK':>5}"
          f" {'spill st/ld':<9} {'CTA/SM':>2} {'bound':<9} B/FLOP")
    for r in rows:
        print(format_row(r))
    bad = [(r, p) for r in rows for p in problems(r)]
    print(f"{len(rows)} compiles, {len(bad)} problems")
    for r, p in bad:
        print(f"  {r['kernel']}[{r['label']}] sm_{r['arch']}: {p}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
