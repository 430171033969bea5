"""Ahead-of-time compile of Triton kernels for real GPUs, with no GPU: the only GPU-side evidence here.

Each kernel module lists, in ``aot_specs()``, every config its launchers can choose. ``compile_spec``
builds one for an NVIDIA arch (80 = A100, 90 = H100) through Triton's own compiler (ttir → ttgir → llir
→ ptx → cubin) and reads the cubin's resources with the ``cuobjdump`` bundled with triton:
registers per thread, static shared memory, and LOCAL (stack spill) bytes.
"""
import dataclasses
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# Max shared memory per block (opt-in), bytes: A100 = 163 KiB, H100 = 227 KiB.
SHARED_LIMIT = {80: 166912, 90: 232448}
ARCHS = (80, 90)


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One launchable config of one kernel.

    ``signature`` maps every runtime argument to a Triton type string ("*fp32", "*fp16", "*bf16", "i32",
    "i64", "fp32"); ``constexprs`` maps every ``tl.constexpr`` argument to its value.
    """

    kernel: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    label: str


@dataclasses.dataclass(frozen=True)
class Resources:
    """Static resources of one compiled kernel (bytes, except registers per thread)."""

    registers: int
    shared: int
    local: int
    stack: int


def _cuobjdump():
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _read_resources(cubin, dynamic_shared):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return Resources(
        registers=int(fields["REG"]),
        shared=int(fields["SHARED"]) + dynamic_shared,
        local=int(fields["LOCAL"]),
        stack=int(fields["STACK"]),
    )


def compile_spec(spec, arch):
    """Compile ``spec`` for ``sm_<arch>`` and return its ``Resources`` (shared includes Triton's
    dynamic shared memory)."""
    signature = dict(spec.signature)
    signature.update({name: "constexpr" for name in spec.constexprs})
    source = ASTSource(fn=spec.kernel, signature=signature, constexprs=dict(spec.constexprs))
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )
    return _read_resources(compiled.asm["cubin"], compiled.metadata.shared)


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


def _compile_row(job):
    module_name, index, arch = job
    import importlib

    spec = importlib.import_module(module_name).aot_specs()[index]
    row = {"module": module_name.rsplit(".", 1)[-1], "kernel": spec.kernel.__name__, "label": spec.label,
           "arch": arch, "num_warps": spec.num_warps, "num_stages": spec.num_stages}
    try:
        row.update(dataclasses.asdict(compile_spec(spec, arch)), error=None)
    except Exception as exc:  # report every failure, not just the first
        row["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
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
    """What is wrong with one compiled row: compile error, spills, or shared memory over the limit."""
    if row["error"]:
        return [row["error"]]
    found = []
    if row["local"] > 0:
        found.append(f"spills {row['local']} bytes to local memory")
    if row["shared"] > SHARED_LIMIT[row["arch"]]:
        found.append(f"shared memory {row['shared']} B > sm_{row['arch']} limit {SHARED_LIMIT[row['arch']]} B")
    return found


def main(argv=None):
    """``python -m clipfast.kernels._aot [--json FILE]``: the resource report of every kernel config."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    args = parser.parse_args(argv)
    rows = compile_all(args.jobs)
    header = f"{'kernel':<34} {'config':<34} {'arch':>5} {'warps':>5} {'stg':>3} {'REG':>4} {'SHARED':>7} {'LOCAL':>5}"
    print(header)
    for r in rows:
        if r["error"]:
            print(f"{r['kernel']:<34} {r['label']:<34} sm_{r['arch']}  ERROR {r['error'][:200]}")
        else:
            print(f"{r['kernel']:<34} {r['label']:<34} sm_{r['arch']} {r['num_warps']:>5} {r['num_stages']:>3}"
                  f" {r['registers']:>4} {r['shared']:>7} {r['local']:>5}")
    bad = [(r, p) for r in rows for p in problems(r)]
    print(f"{len(rows)} compiles, {len(bad)} problems")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
