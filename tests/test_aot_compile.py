"""Every Triton kernel config the launchers can choose compiles for sm_80 and sm_90 with the JIT's own
specialisation, no spills or stack frame, and shared memory within the arch limit (ahead of time, no
GPU: ``python -m clipfast.kernels._aot``); the checks themselves are shown to fail where they should."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import triton
import triton.language as tl

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
        if r["module"] in ("contrastive_loss", "sigmoid_loss") and r["kernel"].endswith(("fwd_kernel", "bwd_kernel")):
            assert r["bytes_per_flop"] is not None and 0 < r["bytes_per_flop"] < 1, r


def test_report_rows_carry_the_specialisation(rows):
    """The compiled binaries are the aligned/divisible variants the JIT builds for real CLIP shapes, and
    the unaligned variants for odd shapes (d = 72, 1000 × 777) are compiled too."""
    fwd = [r for r in rows if r["kernel"] == "_contrastive_loss_fwd_kernel"]
    big = [r for r in fwd if "32768x32768 d=512" in r["label"]]
    odd = [r for r in fwd if "1000x777 d=72" in r["label"]]
    assert big and odd
    assert all({"a_ptr", "b_ptr", "D", "M", "N", "stride_am", "stride_bn"} <= set(r["aligned"]) for r in big)
    assert all(not {"D", "M", "N", "stride_am"} & set(r["aligned"]) and "a_ptr" in r["aligned"] for r in odd)


# What the JIT compiles for every representative launch, computed in a process without the interpreter
# (real JITFunctions), against the specs: the round trip spec -> ASTSource must give the JIT's exact
# signature, constants, divisibility attributes, and its backend options for each arch.
_JIT_VS_SPEC = """
    import json, torch
    from clipfast.kernels import _aot
    checked, keys = 0, {}
    for module in _aot.kernel_modules():
        if not hasattr(module, "aot_launches"):
            continue
        specs = {s.key() for s in module.aot_specs()}
        keys[module.__name__] = sorted(repr(k) for k in specs)
        for arch in _aot.ARCHS:
            for label, fn, args, kwargs in module.aot_launches():
                with _aot.capture(arch) as launches:
                    fn(*args, **kwargs)
                for launch in launches:
                    spec = _aot.spec_from_launch(launch, label)
                    src = _aot.ast_source(spec)
                    assert src.signature == launch.signature, (label, src.signature, launch.signature)
                    assert src.constants == launch.constants, (label, src.constants, launch.constants)
                    assert src.attrs == launch.attrs, (label, spec.kernel.__name__, src.attrs, launch.attrs)
                    options = json.loads(json.dumps(_aot.compile_options(spec, arch)))
                    assert options == launch.options, (label, arch, options, launch.options)
                    assert spec.key() in specs, (label, spec.kernel.__name__)
                    checked += 1
    # A call on real (allocated, CPU) tensors specialises like the meta-tensor calls: its binaries are
    # among the specs; a misaligned view is a different binary (the check can tell). QuickGELU: its
    # launchers pick nothing by device type (the loss launchers upcast on CPU).
    from clipfast.kernels import quick_gelu as Q
    x, bias = torch.randn(4096, 96, dtype=torch.float16), torch.randn(96, dtype=torch.float16)
    specs = {s.key() for s in Q.aot_specs()}
    with _aot.capture() as real:
        Q.quick_gelu_fwd(x, bias)
        Q.quick_gelu_bwd(x, x, bias)
    assert len(real) == 2 and all(_aot.spec_from_launch(l, "real").key() in specs for l in real)
    shifted = torch.empty(4096 * 96 + 1, dtype=torch.float16)[1:].view(4096, 96)
    with _aot.capture() as odd:
        Q.quick_gelu_fwd(shifted, bias)
    odd_spec = _aot.spec_from_launch(odd[0], "misaligned")
    assert "x_ptr" not in odd_spec.aligned and odd_spec.key() not in specs
    print(json.dumps({"checked": checked, "keys": keys}))
"""


def test_specialisation_equals_the_jits():
    """``spec_from_launch`` + ``ast_source`` reproduce exactly what ``JITFunction.run`` computes (read from
    triton's ``jit_cache_hook``) for every representative launch on sm_80 and sm_90, and the specs are
    the same whether computed with or without the interpreter (here, under TRITON_INTERPRET=1)."""
    got = json.loads(_run_compiled(_JIT_VS_SPEC).strip().splitlines()[-1])
    assert got["checked"] >= 300, got["checked"]
    assert set(got["keys"]) >= {"clipfast.kernels.contrastive_loss", "clipfast.kernels.sigmoid_loss",
                                "clipfast.kernels.quick_gelu"}
    here = {m.__name__: sorted(repr(s.key()) for s in m.aot_specs()) for m in _aot.kernel_modules()
            if hasattr(m, "aot_launches")}
    # The key names the kernel by __name__ and holds only plain values: comparable across processes.
    assert here == got["keys"]


def test_divisibility_follows_the_shapes():
    """Independent of the round trip: the JIT's attributes say what the arguments are."""
    from clipfast.kernels import quick_gelu as Q

    with _aot.capture() as launches:
        Q.quick_gelu_fwd(torch.empty(8192, 3072, dtype=torch.float16, device="meta"),
                         torch.empty(3072, dtype=torch.float16, device="meta"))
        Q.quick_gelu_fwd(torch.empty(231, 130, dtype=torch.float16, device="meta"))
    aligned, odd = (_aot.spec_from_launch(launch, "x") for launch in launches)
    assert {"x_ptr", "b_ptr", "y_ptr", "n_rows", "n_cols", "stride_xm", "stride_ym"} <= set(aligned.aligned)
    assert not {"n_rows", "n_cols", "stride_xm"} & set(odd.aligned) and "x_ptr" in odd.aligned


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def test_launch_without_explicit_warps_and_stages_is_refused():
    x = torch.empty(64, device="meta")
    with _aot.capture() as launches:
        _copy_kernel[(1,)](x, x, 64, BLOCK=64, num_warps=4)
        _copy_kernel[(1,)](x, x, 1, BLOCK=64, num_warps=4, num_stages=1)
    with pytest.raises(ValueError, match="without explicit num_stages"):
        _aot.spec_from_launch(launches[0], "x")
    spec = _aot.spec_from_launch(launches[1], "x")
    assert spec.constexprs == {"n": 1, "BLOCK": 64} and spec.num_stages == 1  # ints equal to 1: constants


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
    # cuobjdump's LOCAL reads 0 here (34 KB spilled, on triton 3.8 / ptxas 13): spill slots live in the stack
    # frame, which is why the check reads ptxas's spill counts and the stack, not LOCAL.
    assert row["spill_stores"] > 0 and row["stack_frame"] > 0 and max(row["stack"], row["stack_frame"]) > 0, row
    found = _aot.problems(row)
    assert any("spills" in p for p in found) and any("stack frame" in p for p in found), found


def test_parse_ptxas_log():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "ptxas info    : Function properties for k\n"
           "    368 bytes stack frame, 428 bytes spill stores, 488 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 368 bytes cumulative stack size\n")
    assert _aot.parse_ptxas_log(log) == (368, 428, 488)
    with pytest.raises(ValueError, match="no ptxas"):
        _aot.parse_ptxas_log("")


@pytest.mark.parametrize("registers,shared,warps,arch,want", [
    (255, 41984, 4, 90, (2, "registers")),  # 8192 registers per warp → 2 warps per sub-partition → 8
    (168, 17408, 4, 90, (3, "registers")),  # 168·32 → 5376 per warp → 3 per sub-partition → 12 warps
    (40, 0, 2, 80, (24, "registers")),  # 1280 per warp: 12 per sub-partition = 48 warps (not 65536/1280 = 51)
    (32, 100_000, 4, 80, (1, "shared")),
    (32, 100_000, 4, 90, (2, "shared")),
    (16, 0, 4, 80, (16, "warps")),
    (16, 0, 1, 90, (32, "ctas")),
    (255, 0, 16, 90, (0, "registers")),  # 16 warps × 8192 > 65536: cannot launch
])
def test_occupancy(registers, shared, warps, arch, want):
    assert _aot.occupancy(registers, shared, warps, arch) == want


def test_problems_flag_each_resource():
    ok = {"error": None, "spill_stores": 0, "spill_loads": 0, "stack_frame": 0, "stack": 0, "local": 0,
          "shared": 1000, "arch": 80, "ctas_per_sm": 4, "occupancy_bound": "registers"}
    assert _aot.problems(ok) == []
    for change, word in (({"spill_loads": 8}, "spills"), ({"stack": 16}, "stack frame"),
                         ({"local": 16}, "LOCAL"), ({"shared": 170_000}, "shared memory"),
                         ({"ctas_per_sm": 0}, "0 CTAs"), ({"error": "boom"}, "boom")):
        assert any(word in p for p in _aot.problems({**ok, **change})), change


def test_hand_written_specs_default_to_aligned_pointers():
    """The hand-written AotSpec form (no ``aligned``) still works: pointers aligned, ints not divisible."""
    spec = _aot.AotSpec(kernel=object(), signature={"x_ptr": "*fp16", "n": "i32"}, constexprs={"B": 1},
                        num_warps=4, num_stages=1, label="old")
    assert spec.aligned_names() == ("x_ptr",)


_PRECISION_PTX = """
    import json, re, torch
    from clipfast.kernels import _aot, _common, contrastive_loss as K
    a = torch.empty(4096, 512, device="meta")
    out = {}
    for value in ("ieee", "tf32"):
        with _common.fp32_precision(value), _aot.capture() as launches:
            K.contrastive_loss_fwd(a, a, torch.empty(1, device="meta"))
        spec = _aot.spec_from_launch(launches[0], value)
        for arch in _aot.ARCHS:
            ptx = _aot._compile(spec, arch, False)[0].asm["ptx"]
            out[f"{value} {arch}"] = [spec.constexprs["INPUT_PRECISION"],
                                      len(re.findall(r"\\b(?:mma\\.sync|wgmma\\.mma_async)\\S*\\.tf32", ptx)),
                                      len(re.findall(r"\\bfma\\.rn\\.f32", ptx))]
    print(json.dumps(out))
"""


def test_fp32_tf32_switch_takes_the_tensor_cores():
    """fp32 loss dots: exact FMA products by default; with TF32 allowed (``fp32_precision = "tf32"``)
    ``tf32x3``, compiled to TF32 MMA instructions (mma.sync on sm_80, wgmma on sm_90)."""
    got = json.loads(_run_compiled(_PRECISION_PTX).strip().splitlines()[-1])
    for arch in _aot.ARCHS:
        precision, mma, fma = got[f"ieee {arch}"]
        assert precision == "ieee" and mma == 0 and fma >= 512, got  # 64×64×16 tile: ≥ 64·64·16/(128 threads) FMAs
        precision, mma, fma = got[f"tf32 {arch}"]
        assert precision == "tf32x3" and mma > 0 and fma < 64, got
