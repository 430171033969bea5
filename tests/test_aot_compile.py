"""Every Triton kernel config the launchers can choose compiles for sm_80 and sm_90 with the JIT's own
specialisation, no spills or stack frame, and shared memory within the arch limit (ahead of time, no
GPU: ``python -m clipfast.kernels._aot``); the checks themselves are shown to fail where they should."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from clipfast.kernels import _aot

# The compiles run without TRITON_INTERPRET: under the interpreter @triton.jit can't be compiled.
_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _run_compiled(code):
    """Run ``code`` in a fresh interpreter without TRITON_INTERPRET; return its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "report.json"
    proc = subprocess.run([sys.executable, "-m", "clipfast.kernels._aot", "--json", str(out)],
                          env=_ENV, capture_output=True, text=True)
    assert out.exists(), f"AOT compile crashed:\n{proc.stdout}\n{proc.stderr}"
    print(proc.stdout)
    return json.loads(out.read_text())


def test_every_kernel_module_lists_specs():
    modules = _aot.kernel_modules()
    assert modules, "no kernel modules found in clipfast.kernels"
    for module in modules:
        assert module.aot_specs(), f"{module.__name__}.aot_specs() is empty"


def test_specs_cover_every_jit_kernel():
    """A @triton.jit kernel that no spec lists would escape the compile check. Device functions imported
    from helper modules (``kernels/_tiles.py``) are inlined into the kernels that call them."""
    for module in _aot.kernel_modules():
        jitted = {name for name, obj in vars(module).items()
                  if hasattr(obj, "fn") and hasattr(obj, "arg_names") and obj.fn.__module__ == module.__name__}
        covered = {spec.kernel.__name__ for spec in module.aot_specs()}
        assert jitted <= covered, f"{module.__name__}: kernels with no AOT spec: {sorted(jitted - covered)}"


def test_all_configs_compile_without_spills(rows):
    assert {r["arch"] for r in rows} == set(_aot.ARCHS)
    bad = [f"{r['kernel']}[{r['label']}] sm_{r['arch']}: {p}" for r in rows for p in _aot.problems(r)]
    assert not bad, "\n".join(bad)
    for r in rows:
        assert 1 <= r["ctas_per_sm"] <= _aot.SM_CTAS, r
        assert r["occupancy_bound"] in ("registers", "shared", "warps", "ctas"), r


def test_report_rows_carry_the_specialisation(rows):
    """The compiled binaries are the aligned/divisible variants the JIT builds for real CLIP shapes, and
    the unaligned variants for odd shapes (d = 72, 1000 × 777) are compiled too."""
    fwd = [r for r in rows if r["kernel"] == "_contrastive_loss_fwd_kernel"]
    big = [r for r in fwd if "32768x32768 d=512" in r["label"]]
    odd = [r for r in fwd if "1000x777 d=72" in r["label"]]
    assert big and odd
    assert all({"a_ptr", "b_ptr", "D", "M", "N", "stride_am", "stride_bn"} <= set(r["aligned"]) for r in big)
    assert all(not {"D", "M", "N", "stride_am"} & set(r["aligned"]) and "a_ptr" in r["aligned"] for r in odd)


def test_specialisation_equals_the_jits():
    """For every representative launch, ``spec_from_launch`` carries exactly the signature, constants and
    divisibility attributes that ``JITFunction.run`` computes (the real JITFunction's params, binder
    and ``_pack_args``), and the launch's num_warps/num_stages; the spec is one of ``aot_specs()``."""
    out = _run_compiled("""
        import inspect
        from triton.runtime.jit import JITFunction, create_function_from_signature
        from clipfast.kernels import _aot
        checked = 0
        for module in _aot.kernel_modules():
            launches_of = getattr(module, "aot_launches", None)
            if launches_of is None:
                continue
            keys = {s.key() for s in module.aot_specs()}
            for label, fn, args, kwargs in launches_of():
                with _aot.capture() as launches:
                    fn(*args, **kwargs)
                for launch in launches:
                    k = launch.kernel
                    assert isinstance(k, JITFunction), type(k)
                    backend = _aot._nvidia_backend()
                    binder = create_function_from_signature(k.signature, k.params, backend)
                    bound, specialization, options = binder(*launch.args, **launch.kwargs)
                    _, signature, constexprs, attrs = k._pack_args(backend, dict(launch.kwargs), bound,
                                                                   specialization, options)
                    spec = _aot.spec_from_launch(launch, label)
                    src = _aot._ast_source(spec)
                    assert src.signature == signature, (label, src.signature, signature)
                    assert src.constants == constexprs, (label, src.constants, constexprs)
                    assert src.attrs == attrs, (label, k.__name__, src.attrs, attrs)
                    assert (spec.num_warps, spec.num_stages) == (launch.kwargs["num_warps"],
                                                                 launch.kwargs["num_stages"])
                    assert spec.key() in keys, (label, k.__name__)
                    checked += 1
        print(checked)
    """)
    assert int(out.split()[-1]) >= 100


def test_launch_without_explicit_warps_and_stages_is_refused():
    launch = _aot.Launch(_aot.kernel_modules()[0].aot_specs()[0].kernel, (), {"num_warps": 4})
    with pytest.raises(ValueError, match="num_stages"):
        _aot.spec_from_launch(launch, "x")


def test_spill_check_fails_on_a_register_hungry_config():
    """A 256×256 fp32 accumulator on 4 warps (512 values per thread) can't fit 255 registers: the
    compile must report spills and a stack frame, and ``problems`` must flag them. Not a shipped config."""
    out = _run_compiled("""
        import dataclasses, json
        from clipfast.kernels import _aot, contrastive_loss as K
        spec = next(s for s in K.aot_specs() if s.kernel is K._contrastive_loss_fwd_kernel
                    and s.signature["a_ptr"] == "*fp16")
        hungry = dataclasses.replace(spec, constexprs={**spec.constexprs, "BLOCK_M": 256, "BLOCK_N": 256},
                                     num_warps=4, num_stages=1, label="hungry")
        print(json.dumps(_aot.spec_row(hungry, 80)))
    """)
    row = json.loads(out.strip().splitlines()[-1])
    assert row["error"] is None, row["error"]
    assert row["spill_stores"] > 0 and row["stack_frame"] > 0, row
    assert any("spills" in p for p in _aot.problems(row)), _aot.problems(row)


def test_parse_ptxas_log():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "ptxas info    : Function properties for k\n"
           "    368 bytes stack frame, 428 bytes spill stores, 488 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 368 bytes cumulative stack size\n")
    assert _aot.parse_ptxas_log(log) == (368, 428, 488)
    with pytest.raises(ValueError, match="no ptxas"):
        _aot.parse_ptxas_log("")


@pytest.mark.parametrize("registers,shared,warps,arch,want", [
    (255, 41984, 4, 90, (2, "registers")),  # 8192 registers per warp → 8 warps
    (168, 17408, 4, 90, (3, "registers")),  # 168·32 → 5376 per warp → 12 warps
    (32, 100_000, 4, 80, (1, "shared")),
    (16, 0, 4, 80, (16, "warps")),
    (16, 0, 1, 90, (32, "ctas")),
])
def test_occupancy(registers, shared, warps, arch, want):
    assert _aot.occupancy(registers, shared, warps, arch) == want


def test_hand_written_specs_default_to_aligned_pointers():
    """The pre-existing AotSpec form (no ``aligned``) still works: pointers aligned, ints not divisible."""
    spec = _aot.AotSpec(kernel=object(), signature={"x_ptr": "*fp16", "n": "i32"}, constexprs={"B": 1},
                        num_warps=4, num_stages=1, label="old")
    assert spec.aligned_names() == ("x_ptr",)
