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
    """Every module derives its specs from representative launches (no hand-written lists to drift)."""
    modules = _aot.kernel_modules()
    assert modules, "no kernel modules found in clipfast.kernels"
    for module in modules:
        assert module.aot_specs(), f"{module.__name__}.aot_specs() is empty"
        assert callable(getattr(module, "aot_launches", None)), f"{module.__name__}: no aot_launches()"


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
    the unaligned variants for odd shapes (losses: d = 72, 1000 × 777; attention: padded heads, misaligned
    q/k/v) are compiled too."""
    fwd = [r for r in rows if r["kernel"] == "_contrastive_loss_fwd_kernel"]
    big = [r for r in fwd if "32768x32768 d=512" in r["label"]]
    odd = [r for r in fwd if "1000x777 d=72" in r["label"]]
    assert big and odd
    assert all({"a_ptr", "b_ptr", "D", "M", "N", "stride_am", "stride_bn"} <= set(r["aligned"]) for r in big)
    assert all(not {"D", "M", "N", "stride_am"} & set(r["aligned"]) and "a_ptr" in r["aligned"] for r in odd)
    attn = [r for r in rows if r["kernel"] == "_attn_fwd_kernel"]
    clip = [r for r in attn if " B128 L50 H12" in r["label"]]
    odd = [r for r in attn if " odd " in r["label"]]
    assert clip and odd
    assert all({"q_ptr", "o_ptr", "stride_b", "stride_l", "stride_lse_h"} <= set(r["aligned"]) for r in clip)
    assert all(not {"q_ptr", "stride_l", "stride_lse_h"} & set(r["aligned"]) and "o_ptr" in r["aligned"] for r in odd)


# What the JIT compiles for every representative launch, computed in a process without the interpreter
# (real JITFunctions), against the specs: the round trip spec -> ASTSource must give the JIT's exact
# signature, constants, divisibility attributes, and its backend options for each arch.
_JIT_VS_SPEC = """
    import json, torch
    from clipfast.kernels import _aot
    checked, keys = {}, {}
    for module in _aot.kernel_modules():
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
                    checked[module.__name__] = checked.get(module.__name__, 0) + 1
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
    # fused_adam picks nothing by device type either: real CPU tensors of the aligned launch's size.
    from clipfast.kernels import fused_adam as F
    label, fn, args, kwargs = next(c for c in F.aot_launches() if c[0] == "p=fp32 state=fp32 master=0 sr=0 2304x768")
    real_args = [[torch.zeros(t.shape, dtype=t.dtype) for t in a] if isinstance(a, list) else a for a in args]
    with _aot.capture() as real:
        fn(*real_args, **kwargs)
    assert _aot.spec_from_launch(real[0], "real").key() in {s.key() for s in F.aot_specs()}
    print(json.dumps({"checked": checked, "keys": keys}))
"""


def test_specialisation_equals_the_jits():
    """``spec_from_launch`` + ``ast_source`` reproduce exactly what ``JITFunction.run`` computes (read from
    triton's ``jit_cache_hook``) for every representative launch on sm_80 and sm_90, and the specs are
    the same whether computed with or without the interpreter (here, under TRITON_INTERPRET=1)."""
    got = json.loads(_run_compiled(_JIT_VS_SPEC).strip().splitlines()[-1])
    here = {m.__name__: sorted(repr(s.key()) for s in m.aot_specs()) for m in _aot.kernel_modules()}
    assert set(got["checked"]) == set(here) >= {f"clipfast.kernels.{name}" for name in (
        "attention", "attention_pool", "contrastive_loss", "fused_adam", "quick_gelu", "sigmoid_loss")}
    for name, n in got["checked"].items():  # every launch of every call, on both archs
        assert n >= 2 * len(here[name]), (name, n)
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


def _divisibility(spec, ptr, ints):
    """How ``spec`` is specialised on ``ptr`` and the ints ``ints``: "one" if one of those ints is the constant 1,
    "aligned" if all are marked divisible by 16, "odd" if none is, else "mixed"."""
    if any(spec.constexprs.get(name) == 1 for name in ints):
        return "one"
    got = [name in spec.aligned for name in (ptr, *ints)]
    return "aligned" if all(got) else "odd" if not any(got) else "mixed"


def _assert_covers(table, specs, config_of, ptr, ints, want=("aligned", "odd")):
    """Every launch config of ``table`` (a set) is among the specs (``config_of(spec)``: its config, or None),
    in each specialisation of ``want``; and the specs hold no config the table can't pick."""
    seen = {}
    for spec in specs:
        seen.setdefault(config_of(spec), set()).add(_divisibility(spec, ptr, ints))
    missing = {c: sorted(set(want) - seen.get(c, set())) for c in table if not set(want) <= seen.get(c, set())}
    assert not missing, missing
    assert set(seen) <= set(table), sorted(set(seen) - set(table), key=repr)


def test_attention_specs_cover_the_tile_table():
    """Every (fwd, dK/dV, dQ) config ``table_configs`` lists for L <= MAX_SEQLEN, causal or not, on each arch, at
    each dtype and head dim, is compiled with CLIP's aligned specialisation and with an odd one."""
    from clipfast.kernels import _attention_tiles as T, attention as A

    table = set()
    for arch in _aot.ARCHS:
        for ty in A.GPU_DTYPES:
            for d in A.HEAD_DIMS:
                fwd, bwd = T.table_configs(d, A.MAX_SEQLEN, arch)
                table |= {("fwd", ty, d, *row) for row in fwd}
                table |= {("bwd", ty, d, *row[:5]) for row in bwd}
                table |= {("dq", ty, d, *row[1:3], *row[5:]) for row in bwd if not row[0]}

    def config_of(s):
        c = s.constexprs
        kind = {A._attn_fwd_kernel: "fwd", A._attn_bwd_kernel: "bwd", A._attn_bwd_dq_kernel: "dq"}[s.kernel]
        single = (c["SINGLE"],) if kind == "bwd" else ()
        return (kind, s.signature["q_ptr"][1:], c["BLOCK_D"] + c["BLOCK_DT"], *single, c["BLOCK_M"], c["BLOCK_N"],
                s.num_warps, s.num_stages)
    _assert_covers(table, A.aot_specs(), config_of, "q_ptr", ("stride_l", "stride_lse_h"))


def test_attention_pool_specs_cover_the_tables():
    from clipfast.kernels import attention_pool as P

    table = {(kind, ty, *tiles[bd][:2], bd, tiles[bd][2]) for kind, tiles in (("fwd", P._FWD_TILES), ("bwd", P._BWD_TILES))
             for ty in _aot_dtypes() for bd in tiles}

    def config_of(s):
        kind = "fwd" if s.kernel is P._attention_pool_fwd_kernel else "bwd"
        c = s.constexprs
        return kind, s.signature["q_ptr"][1:], c["HEADS"], c["BLOCK_N"], c["BLOCK_D"], s.num_warps
    _assert_covers(table, P.aot_specs(), config_of, "q_ptr", ("head_dim", "stride_qb"))


def test_fused_adam_specs_cover_every_variant():
    """param dtype x state dtype x master (16-bit params) x stochastic rounding (bf16 params without a master),
    each for an aligned tensor, an odd misaligned one and a 1-element one."""
    from clipfast.kernels import fused_adam as F

    modes = {"fp32": 0, "fp16": 1, "bf16": 2}
    table = {(p, modes[st], master, sr) for p in _aot_dtypes() for st in _aot_dtypes()
             for master in ((False,) if p == "fp32" else (False, True))
             for sr in ((False, True) if p == "bf16" and not master else (False,))}
    assert len(table) == 18

    def config_of(s):
        c = s.constexprs
        assert (s.num_warps, s.num_stages, c["BLOCK"]) == (F.NUM_WARPS, F.NUM_STAGES, F.BLOCK)
        return s.signature["p_ptr"][1:], c["STATE_MODE"], c["HAS_MASTER"], c["PARAM_SR"]
    _assert_covers(table, F.aot_specs(), config_of, "p_ptr", ("n_elements",), want=("aligned", "odd", "one"))


def _aot_dtypes():
    from clipfast.kernels._common import DTYPE_NAMES

    return tuple(DTYPE_NAMES.values())


def test_attention_capture_reads_the_table_of_its_arch(monkeypatch):
    """Under ``capture(arch)`` a meta-tensor launch picks its tiles for that arch (``specs_from_launches(...,
    arch=ARCHS)`` then holds every arch's rows), as a launch on a CUDA device does for the device's."""
    from clipfast.kernels import attention as A

    asked = []
    for name in ("fwd_config", "bwd_config", "bwd_dq_config"):
        real = getattr(A, name)
        monkeypatch.setattr(A, name, lambda *a, _real=real, **k: asked.append(a[3]) or _real(*a, **k))
    call = next(c for c in A.aot_launches() if " B128 L77 " in c[0] and c[0].endswith("bwd"))
    for arch in _aot.ARCHS:
        asked.clear()
        with _aot.capture(arch) as launches:
            call[1](*call[2], **call[3])
        assert asked == [arch, arch] and len(launches) == 2, (arch, asked)  # bwd_config, bwd_dq_config


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
