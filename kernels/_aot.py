"""Ahead-of-time compile of Triton kernels for real GPUs, with no GPU: the only GPU-side evidence here.

Each kernel module lists, in ``aot_specs()``, every binary its launchers can make the JIT build.
``compile_spec`` compiles one for an NVIDIA arch (80 = A100, 90 = H100) through Triton's own compiler
(ttir → ttgir → llir → ptx → cubin) and reports its resources: registers per thread, shared memory,
the stack frame and spill stores/loads from ptxas's own ``-v`` log, LOCAL/STACK from the cubin
(``cuobjdump`` bundled with triton; LOCAL is what Triton's runtime reports as ``n_spills``), and the
occupancy they allow (CTAs per SM, ``occupancy``).

Specialisation. The JIT compiles a kernel for the launch's arguments: pointers 16-byte aligned and
ints divisible by 16 get ``tt.divisibility = 16`` (vectorised, unmasked-friendly accesses), ints equal
to 1 become constants. The faithful spec is therefore taken from the JIT itself (``_aot_capture``):
a module's ``aot_launches()`` lists representative calls of its launchers on ``meta`` tensors
(nothing is allocated or run; a meta tensor's data pointer is 0, aligned like every CUDA allocation),
and ``specs_from_launches`` runs them through triton's own ``JITFunction.run`` against a stand-in
driver, reading what it would compile from triton's ``knobs.runtime.jit_cache_hook``. Every module
derives its specs that way (``aot_specs() = specs_from_launches(aot_launches())``; per arch where a
launcher's table reads the arch: ``arch=ARCHS``); there are no hand-written spec lists to drift.

``python -m clipfast.kernels._aot [--json FILE]`` (``make aot-report``) prints one row per spec and
arch and exits 1 if any row has a problem (``problems``).
"""
import contextlib
import dataclasses
import functools
import io
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ._common import triton_cuobjdump
from ._aot_capture import AotSpec, capture, kernel_params, spec_from_launch, specs_from_launches  # noqa: F401

ARCHS = (80, 90)
# Per arch (CUDA C Programming Guide, "Compute capabilities" table): max shared memory per block
# (opt-in), shared memory per SM, registers per SM, warps per SM, CTAs per SM.
SHARED_LIMIT = {80: 166912, 90: 232448}  # 163 KiB, 227 KiB
SM_SHARED = {80: 167936, 90: 233472}  # 164 KiB, 228 KiB
SM_REGISTERS = 65536  # 4 sub-partitions of 16384
SM_WARPS = 64
SM_CTAS = 32
SHARED_RESERVED_PER_CTA = 1024  # the driver reserves 1 KiB of shared memory per CTA (sm_80+)
_PTXAS_LOG = "ptxas.log"
_INT_TYPES = {"i1", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"}


@dataclasses.dataclass(frozen=True)
class Resources:
    """Static resources of one compiled kernel (bytes, except registers per thread)."""

    registers: int
    shared: int  # static (cubin) + Triton's dynamic shared memory
    local: int  # cuobjdump LOCAL (= Triton's n_spills)
    stack: int  # cuobjdump STACK
    stack_frame: int  # ptxas -v "bytes stack frame"
    spill_stores: int  # ptxas -v "bytes spill stores"
    spill_loads: int  # ptxas -v "bytes spill loads"


def _read_cubin(cubin):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([triton_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out)}


def parse_ptxas_log(log):
    """(stack frame, spill stores, spill loads) bytes from ptxas -v output (maxima over its entries)."""
    if "Used" not in log:
        raise ValueError(f"no ptxas -v resource line in: {log[:500]!r}")

    def biggest(pattern):
        return max((int(v) for v in re.findall(pattern, log)), default=0)
    return (biggest(r"(\d+) bytes stack frame"), biggest(r"(\d+) bytes spill stores"),
            biggest(r"(\d+) bytes spill loads"))


def ast_source(spec):
    """The ``ASTSource`` of ``spec``, keyed as ``JITFunction.run`` keys it (argument order, ``(index,)``
    paths; an attribute entry for every constexpr, pointer and int, except the ``do_not_specialize`` ones;
    none for floats)."""
    names = [p.name for p in kernel_params(spec.kernel)]
    fixed = _unspecialised(spec.kernel)
    signature = dict(spec.signature)
    signature.update({name: "constexpr" for name in spec.constexprs})
    missing = set(names) ^ set(signature)
    if missing:
        raise ValueError(f"{spec.kernel.__name__}[{spec.label}]: signature/constexprs do not match the "
                         f"kernel's arguments: {sorted(missing)}")
    signature = {name: signature[name] for name in names}
    aligned = set(spec.aligned_names())
    parse = _backend(90).parse_attr
    attrs = {(i,): parse("D" if name in aligned else "") for i, name in enumerate(names) if name not in fixed
             and (name in spec.constexprs or signature[name].startswith("*") or signature[name] in _INT_TYPES)}
    constants = {(names.index(k),): v for k, v in spec.constexprs.items()}
    return ASTSource(fn=spec.kernel, signature=signature, constexprs=constants, attrs=attrs)


@functools.lru_cache(maxsize=None)
def _backend(arch):
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", arch, 32))


def compile_options(spec, arch):
    """The backend options ``triton.compile`` uses for ``spec`` on ``sm_<arch>`` (as a dict)."""
    return _backend(arch).parse_options({"num_warps": spec.num_warps, "num_stages": spec.num_stages}).__dict__


def _compile(spec, arch, always):
    """(compiled kernel, what ptxas -v printed: "" when triton's cache answered)."""
    from triton import knobs

    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = always
        compiled = triton.compile(ast_source(spec), target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    return compiled, log.getvalue()


def compile_spec(spec, arch):
    """Compile ``spec`` for ``sm_<arch>`` and return its ``Resources``. ptxas's ``-v`` log is kept beside
    the binary in triton's cache (``<hash>/ptxas.log``); a cached binary without it is compiled again."""
    from triton.runtime.cache import get_cache_manager

    compiled, log = _compile(spec, arch, always=False)
    cache = get_cache_manager(compiled.hash)
    if "Used" in log:
        cache.put(log, _PTXAS_LOG, binary=False)
    elif cache.get_file(_PTXAS_LOG) is not None:
        with open(cache.get_file(_PTXAS_LOG)) as f:
            log = f.read()
    else:
        compiled, log = _compile(spec, arch, always=True)
        cache.put(log, _PTXAS_LOG, binary=False)
    frame, stores, loads = parse_ptxas_log(log)
    fields = _read_cubin(compiled.asm["cubin"])
    return Resources(registers=fields["REG"], shared=fields["SHARED"] + compiled.metadata.shared,
                     local=fields["LOCAL"], stack=fields["STACK"], stack_frame=frame, spill_stores=stores,
                     spill_loads=loads)


def occupancy(registers, shared, num_warps, arch):
    """(CTAs per SM, the limit that binds) from registers per thread, shared bytes per CTA and warps per
    CTA, as CUDA's occupancy calculator (``cuda_occupancy.h``) computes it at the largest shared-memory
    carveout: registers are allocated per warp in units of 256 and each of the 4 SM sub-partitions
    holds floor(16384 / per-warp) warps (a CTA whose warps, rounded up to 4, need more than 65536
    registers cannot launch); shared memory in 128-byte units plus the 1 KiB the driver reserves per
    CTA; at most 64 warps and 32 CTAs per SM. 0 CTAs: the kernel cannot launch."""
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    fits = registers <= 255 and regs_per_warp * -(-num_warps // 4) * 4 <= SM_REGISTERS
    limits = {
        "registers": (SM_REGISTERS // 4 // regs_per_warp) * 4 // num_warps if fits else 0,
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


def _unspecialised(kernel):
    """The ``do_not_specialize`` arguments of ``kernel`` (the JIT gives them no attribute)."""
    return {p.name for p in kernel_params(kernel) if p.do_not_specialize}


def _declared_constexprs(kernel):
    return {p.name for p in kernel_params(kernel) if p.is_constexpr}


def spec_row(spec, arch, bytes_per_flop=None):
    """One report row (a dict) for ``spec`` on ``sm_<arch>``: config, specialisation, resources,
    occupancy or the compile error."""
    row = {"kernel": spec.kernel.__name__, "label": spec.label, "arch": arch, "num_warps": spec.num_warps,
           "num_stages": spec.num_stages, "aligned": sorted(spec.aligned_names()),
           "constants": sorted(f"{k}={v}" for k, v in spec.constexprs.items()
                               if k not in _declared_constexprs(spec.kernel)),
           "bytes_per_flop": bytes_per_flop,
           "specialisable": sum(ty.startswith("*") or ty in _INT_TYPES for name, ty in spec.signature.items()
                                if name not in _unspecialised(spec.kernel))}
    try:
        res = compile_spec(spec, arch)
        ctas, bound = occupancy(res.registers, res.shared, spec.num_warps, arch)
        row.update(dataclasses.asdict(res), ctas_per_sm=ctas, occupancy_bound=bound, error=None)
    except Exception as exc:  # report every failure, not just the first
        row["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    return row


@functools.lru_cache(maxsize=None)
def _module_specs(module_name):
    import importlib

    return importlib.import_module(module_name).aot_specs()


def _compile_row(job):
    import importlib

    module_name, index, arch = job
    spec = _module_specs(module_name)[index]
    model = getattr(importlib.import_module(module_name), "aot_bytes_per_flop", None)
    row = spec_row(spec, arch, model(spec) if model is not None else None)
    row["module"] = module_name.rsplit(".", 1)[-1]
    return row


def compile_all(jobs=2, only=None):
    """Compile every spec of every kernel module (or of the modules named in ``only``) for every arch in
    ``ARCHS``; return one row (dict) per (spec, arch) with its resources or its compile error."""
    import concurrent.futures

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1: the interpreter replaces @triton.jit; unset it to compile")
    modules = [m for m in kernel_modules() if not only or m.__name__.rsplit(".", 1)[-1] in only]
    work = [(m.__name__, i, arch) for m in modules for i in range(len(m.aot_specs())) for arch in ARCHS]
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_compile_row, work))


def problems(row):
    """What is wrong with one compiled row: a compile error, ptxas spills, a stack frame (STACK/LOCAL:
    spill slots live there), shared memory over the arch limit, or an occupancy of 0 CTAs per SM."""
    if row["error"]:
        return [row["error"]]
    found = []
    if row["spill_stores"] or row["spill_loads"]:
        found.append(f"ptxas spills {row['spill_stores']} B stores / {row['spill_loads']} B loads")
    if row["stack_frame"] or row["stack"] or row["local"]:
        found.append(f"stack frame {max(row['stack_frame'], row['stack'])} B, LOCAL {row['local']} B")
    if row["shared"] > SHARED_LIMIT[row["arch"]]:
        found.append(f"shared memory {row['shared']} B > sm_{row['arch']} limit {SHARED_LIMIT[row['arch']]} B")
    if row["ctas_per_sm"] < 1:
        found.append(f"0 CTAs per SM ({row['occupancy_bound']})")
    return found


HEADER = (f"{'kernel':<30} {'config':<44} {'arch':<5} {'div16':>5} {'w':>2} {'st':>2} {'REG':>3} {'SHARED':>6}"
          f" {'STACK':>5} {'spill st/ld':>11} {'CTA/SM':>6} {'bound':<9} B/FLOP")


def format_row(r):
    """One line of the report (see ``HEADER``; div16: pointer/int arguments the JIT marks divisible by 16,
    of those it could)."""
    div16 = f"{len(r['aligned'])}/{r['specialisable']}"
    head = f"{r['kernel'][:30]:<30} {r['label'][:44]:<44} sm_{r['arch']} {div16:>5}"
    if r["error"]:
        return f"{head} ERROR {r['error'][:200]}"
    bpf = r.get("bytes_per_flop")
    return (f"{head} {r['num_warps']:>2} {r['num_stages']:>2} {r['registers']:>3} {r['shared']:>6}"
            f" {max(r['stack_frame'], r['stack']):>5} {r['spill_stores']:>5}/{r['spill_loads']:<5}"
            f" {r['ctas_per_sm']:>6} {r['occupancy_bound']:<9}" + (f" {bpf:.4f}" if bpf is not None else " -"))


def main(argv=None):
    """``python -m clipfast.kernels._aot [--json FILE]``: the resource report of every kernel config."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    parser.add_argument("--only", nargs="*", help="kernel modules to compile (default: all)")
    args = parser.parse_args(argv)
    rows = compile_all(args.jobs, args.only)
    print(HEADER)
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
