"""HFuse (kernels/hfuse, Gluon) on a CPU-only machine.

Gluon kernels cannot run in Triton's CPU interpreter (``gluon.jit`` never becomes an
InterpretedFunction and Gluon builtins need the compiler's semantic), so correctness is checked
on a GPU by experiments/studies/hfuse_check.yaml. Here: the kernel is compiled ahead of time for sm_90,
specialised exactly as the JIT would for real (CPU-allocated) batches, and its PTX is checked for
what HFuse means (two warp groups, each on its own 128-thread named barrier, mma.sync, cp.async
with zero fill, setmaxnreg, shared memory within the limits); plus the planning logic.
"""
from __future__ import annotations

import re
import subprocess

import pytest
import torch

from kernels.common.splitkv import flash_split_heuristic, kv_split_range
from kernels.hfuse.launch import aot_compile, prepare_launch
from kernels.hfuse.plan import HFuseConfig, decode_rows_for, default_tiles, make_plan, smem_budget
from kernels.registry import MethodUnavailable, create, load_all
from kernels.workload import BatchSpec, HybridBatch, ModelShape
from tests.clean_process import call_in_clean_process

CPU = torch.device("cpu")
SMEM_PER_BLOCK = 227 * 1024


def _spec(hq, hkv, d, dtype="float16", lq=77, lk=300, bs=5, ctx=333):
    return BatchSpec(ModelShape(f"t{hq}-{hkv}-{d}", hq, hkv, d), dtype, lq, lk, bs, ctx)


C0 = _spec(16, 4, 128, lq=1024, lk=12288, bs=80, ctx=12288)
YI = _spec(32, 4, 128, lq=512, lk=8192, bs=54, ctx=16384)


# ------------------------------------------------------------------------------------------
# planning
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [C0, YI, _spec(12, 4, 128), _spec(10, 2, 256, "bfloat16"), _spec(4, 4, 64)])
@pytest.mark.parametrize("sms", [8, 108, 132])
def test_grid_is_max_of_both_sides(spec, sms):
    plan = make_plan(spec, sms)
    t, m = plan.tiles, spec.model
    assert plan.n_mblocks == -(-spec.prefill_len // t.block_m)
    assert plan.n_prefill_ctas == m.q_heads * plan.n_mblocks * plan.n_splits_p
    assert plan.n_hblocks == -(-m.group_size // t.decode_rows)
    assert plan.n_decode_ctas == spec.decode_batch * m.kv_heads * plan.n_hblocks * plan.n_splits_d
    assert plan.grid == max(plan.n_prefill_ctas, plan.n_decode_ctas)
    assert plan.as_dict()["grid"] == plan.grid


def test_paper_configs_need_no_split_on_h100():
    # C0 on 132 SMs: 16 heads x 8 row blocks = 128 prefill CTAs, 80 x 4 = 320 decode CTAs
    plan = make_plan(C0, 132)
    assert (plan.n_prefill_ctas, plan.n_decode_ctas, plan.grid) == (128, 320, 320)
    assert (plan.n_splits_p, plan.n_splits_d) == (1, 1)
    plan = make_plan(YI, 132)
    assert (plan.n_prefill_ctas, plan.n_decode_ctas, plan.grid) == (128, 216, 216)


def test_splits_follow_the_sm_count():
    """A small decode batch is split to fill the GPU it runs on: more SMs, more splits."""
    spec = _spec(8, 2, 128, lq=64, lk=8192, bs=2, ctx=8192)
    few, many = make_plan(spec, 16), make_plan(spec, 132)
    assert 1 < few.n_splits_d < many.n_splits_d
    assert 1 < few.n_splits_p < many.n_splits_p
    assert few.num_sms == 16 and many.num_sms == 132
    # FlashDecoding's heuristic over the fused-CTA slots of this GPU: SMs x CTAs per SM
    for sms in (8, 16, 108, 132):
        for cps in (1, 2):
            plan = make_plan(spec, sms, HFuseConfig(ctas_per_sm=cps))
            t = plan.tiles
            assert plan.n_splits_d == flash_split_heuristic(2 * 2 * 1, sms * cps, -(-8192 // t.decode_n))
            assert plan.n_splits_p == flash_split_heuristic(8 * 1, sms * cps, -(-8192 // t.block_n))


def test_fixed_splits_and_missing_parts():
    spec = _spec(12, 4, 128)
    plan = make_plan(spec, 132, HFuseConfig(prefill_split=3, decode_split=2))
    assert (plan.n_splits_p, plan.n_splits_d) == (3, 2)
    assert plan.n_decode_ctas == 5 * 4 * 1 * 2
    p_only = make_plan(spec.replace(decode_batch=0), 132)
    d_only = make_plan(spec.replace(prefill_len=0, prefill_kv_len=0), 132)
    assert p_only.n_decode_ctas == 0 and p_only.grid == p_only.n_prefill_ctas > 0
    assert d_only.n_prefill_ctas == 0 and d_only.grid == d_only.n_decode_ctas > 0


@pytest.mark.parametrize("n_blocks", [1, 5, 7, 64, 193])
@pytest.mark.parametrize("n_splits", [1, 2, 3, 4, 6, 11])
def test_splits_cover_every_key_block_once(n_blocks, n_splits):
    seen = []
    for s in range(n_splits):
        lo, hi = kv_split_range(n_blocks, n_splits, s)
        seen += list(range(lo, hi))
    assert seen == list(range(n_blocks))


@pytest.mark.parametrize("group,rows,hblocks", [(1, 16, 1), (3, 16, 1), (5, 16, 1), (8, 16, 1), (16, 16, 1),
                                                (24, 32, 1), (48, 64, 1), (64, 64, 1), (80, 64, 2)])
def test_decode_rows_pack_the_gqa_group(group, rows, hblocks):
    assert decode_rows_for(group) == rows
    plan = make_plan(_spec(group * 2, 2, 128), 132)
    assert plan.tiles.decode_rows == rows and plan.n_hblocks == hblocks


@pytest.mark.parametrize("cps", [1, 2])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("group", [1, 4, 32, 64])
def test_tiles_fit_shared_memory(cps, d, group):
    t = default_tiles(d, group, cps)
    assert t.smem_bytes(d) <= smem_budget(cps)
    assert t.block_m >= 64 and t.block_m % 64 == 0   # 4 prefill warps x 16 rows
    assert t.decode_regs % 8 == 0 and 24 <= t.decode_regs <= 256
    if cps == 1:
        assert (t.block_m, t.block_n) == ((64, 32) if d == 256 else (128, 64))  # FA2's tiles
    else:
        assert 2 * (t.smem_bytes(d) + 1024) <= 228 * 1024 and t.maxnreg == 128


def test_bad_options_are_rejected():
    for bad in (dict(ctas_per_sm=3), dict(decode_split=0), dict(block_m=32), dict(decode_regs=100),
                dict(prefill_stages=5), dict(maxnreg=100)):
        with pytest.raises(ValueError):
            HFuseConfig(**bad)
    with pytest.raises(ValueError, match="registers"):   # 2 x 128 - 256 leaves nothing to the prefill
        make_plan(_spec(12, 4, 128), 132, HFuseConfig(ctas_per_sm=2, decode_regs=256))
    with pytest.raises(ValueError, match="shared memory"):
        make_plan(_spec(12, 4, 256), 132, HFuseConfig(block_m=256, prefill_stages=4))


# ------------------------------------------------------------------------------------------
# the method
# ------------------------------------------------------------------------------------------
def test_method_is_registered_and_says_why_not_on_cpu():
    assert "HFuse" in load_all()
    m = create("HFuse")
    assert m.parts == ("prefill", "decode") and m.devices == ("cuda",)
    reason = m.unavailable_reason(CPU)
    assert reason and "cuda" in reason.lower()
    batch = HybridBatch.allocate(_spec(6, 2, 64, lq=37, lk=101, bs=3, ctx=50), CPU)
    with pytest.raises(MethodUnavailable):
        m.prepare(batch)
    assert m.info()["impl"].startswith("gluon hfuse")


def test_figures_order_lists_hfuse_after_fi_pod():
    from figures.common import METHOD_ORDER

    assert METHOD_ORDER.index("HFuse") == METHOD_ORDER.index("FI_POD") + 1
    assert "FA_HFuse" not in METHOD_ORDER


# ------------------------------------------------------------------------------------------
# ahead-of-time compilation for sm_90 (no GPU)
# ------------------------------------------------------------------------------------------
_BAR_NAMED = re.compile(r"\b(?:bar|barrier)\.sync(?:\.aligned)?\s+(\d+)\s*,\s*(\d+)\s*;")
_BAR_CTA = re.compile(r"\b(?:bar|barrier)\.sync(?:\.aligned)?\s+(\d+)\s*;")
_MMA = re.compile(r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(\w+)\.(\w+)\.f32")
_CP_ASYNC_ZFILL = re.compile(r"cp\.async\.cg\.shared\.global\s*\[[^\]]+\],\s*\[[^\]]+\],\s*0x10,\s*%r\d+;")


def _compile(hq, hkv, d, dtype="float16", ctas_per_sm=None) -> dict:
    return call_in_clean_process("tests.hfuse_aot.compile_hfuse", hq=hq, hkv=hkv, d=d, dtype=dtype,
                                 ctas_per_sm=ctas_per_sm)


def _ptxas_spills(ptx: str, tmp_path) -> int | None:
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(90).path
    except Exception:  # noqa: BLE001
        return None
    src = tmp_path / "k.ptx"
    src.write_text(ptx)
    log = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(src), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True, check=True).stderr
    return int(re.search(r"(\d+) bytes spill stores", log).group(1))


def _check_hfuse_ptx(ptx: str, dtype: str):
    named = [(int(i), int(n)) for i, n in _BAR_NAMED.findall(ptx)]
    cta = {int(i) for i in _BAR_CTA.findall(ptx)}
    # every barrier with a thread count is a 128-thread (4-warp) named barrier of one partition
    assert named, "no named barriers"
    assert {n for _, n in named} == {128}, named
    ids = {i for i, _ in named}
    assert len(ids) >= 2 and any(i != 0 for i in ids), ids      # prefill and decode each have theirs
    # no partition barrier is ever used CTA-wide; the CTA-wide ones are the warp-specialise handshake
    assert not (ids & cta), (ids, cta)
    assert ".reqntid 256" in ptx                               # 4 prefill + 4 decode warps
    assert "setmaxnreg" in ptx
    types = set(_MMA.findall(ptx))
    want = {"float16": "f16", "bfloat16": "bf16"}[dtype]
    assert types == {(want, want)}, types
    assert "ldmatrix.sync.aligned" in ptx
    assert _CP_ASYNC_ZFILL.search(ptx), "cp.async must zero-fill masked rows (src-size operand)"
    assert "cp.async.wait_group" in ptx and "cp.async.commit_group" in ptx


@pytest.mark.parametrize("d,dtype,hq,hkv", [
    (64, "float16", 4, 4),      # MHA: GROUP == 1 specialises to a constant
    (64, "bfloat16", 6, 2),     # GQA 3
    (128, "float16", 12, 4),    # GQA 3, the paper's head dim
    (128, "bfloat16", 10, 2),   # GQA 5
    (256, "float16", 8, 1),     # MQA: HKV == 1
    (256, "bfloat16", 16, 4),   # GQA 4
    (128, "float16", 64, 1),    # GQA 64: 64-row decode tiles (4 x 1 warps instead of 1 x 4)
])
def test_compiles_for_sm90_with_named_barriers(d, dtype, hq, hkv, tmp_path):
    ck = _compile(hq, hkv, d, dtype)
    ptx = ck["ptx"]
    _check_hfuse_ptx(ptx, dtype)
    assert ".maxnreg 256" in ptx                # one 8-warp CTA per SM owns the register file
    assert ck["num_warps"] == 8
    assert ck["tile_smem"] <= ck["shared"] <= SMEM_PER_BLOCK
    assert ck["cubin_bytes"] > 0                 # ptxas accepted it
    spills = _ptxas_spills(ptx, tmp_path)
    if spills is not None:
        assert spills <= 512, f"{spills} bytes of register spills"


def test_two_ctas_per_sm_redistributes_registers(tmp_path):
    ck = _compile(12, 4, 128, ctas_per_sm=2)
    ptx = ck["ptx"]
    _check_hfuse_ptx(ptx, "float16")
    assert ".maxnreg 128" in ptx
    # 8 warps x 128 registers, redistributed in the warp-specialised region: decode 80, prefill 176
    # (outside it the idle worker warps sit at 24 and the default warps at 232)
    regs = {int(r) for r in re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+);", ptx)}
    assert {80, 176} <= regs and 4 * 80 + 4 * 176 == 8 * 128, regs
    assert 2 * (ck["shared"] + 1024) <= 228 * 1024
    spills = _ptxas_spills(ptx, tmp_path)
    if spills is not None:
        assert spills == 0


def test_older_arch_is_refused_not_aborted():
    spec = _spec(4, 4, 64)
    batch = HybridBatch.allocate(spec, CPU)
    with pytest.raises(ValueError, match="sm_90"):
        aot_compile(prepare_launch(batch, make_plan(spec, 8)), arch=80)
