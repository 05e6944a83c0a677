"""Scheduler and index math of the Hopper POD kernel (kernels/hopper), on the CPU.

* plan: variants, splits, grid, shared-memory and register budgets for every head dim / mode;
* scheduler: ``plan.simulate`` replays CTAs starting in random orders on random SMs, taking
  launch-order ranks, each pipeline walking ``rank, rank + grid, ...``: every prefill and decode
  item exactly once, for many SM counts and shapes, counters reset for the next launch;
* producer/consumer agreement: the ring (stage, phase) sequences both sides derive agree, and
  no stage is refilled before both consumers released it;
* the kernel's algorithm replayed in torch (kernels/hopper/emulate.py: same items, TMA zero
  fill, masks, base-2 online softmax, split merge) against kernels/reference.py on odd shapes:
  head dims 64/128/256, fp16/bf16, GQA 1..8 incl. 5 and 7, MHA, MQA, lengths off every tile and
  page, prefill-only and decode-only batches.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from kernels.hopper.emulate import emulate
from kernels.hopper.plan import (BLOCK_M, MODE_DECODE, MODE_POD, MODE_PREFILL, HopperConfig, decode_item,
                                 default_tiles, kv_split_range, make_plan, mode_for, prefill_item, ring_sequence,
                                 simulate, split_heuristic)
from kernels.reference import check_outputs, reference_outputs
from kernels.workload import BatchSpec, HybridBatch, ModelShape


def _spec(hq, hkv, d, dtype="float16", lq=77, lk=300, bs=5, ctx=333, ps=16):
    return BatchSpec(ModelShape(f"t{hq}-{hkv}-{d}", hq, hkv, d), dtype, lq, lk, bs, ctx, page_size=ps)


SHAPES = [_spec(32, 8, 128, lq=1024, lk=12288, bs=80, ctx=12288), _spec(32, 4, 128, lq=512, lk=8192, bs=54, ctx=16384),
          _spec(8, 2, 64), _spec(7, 1, 128, lq=1, lk=1, bs=1, ctx=1), _spec(10, 2, 64, lq=129, lk=4097, bs=3, ctx=17),
          _spec(40, 8, 128, lq=300, lk=300, bs=0, ctx=0), _spec(16, 16, 64, lq=0, lk=0, bs=77, ctx=5000),
          _spec(32, 1, 128, lq=64, lk=640, bs=9, ctx=100), _spec(4, 4, 256, lq=200, lk=450, bs=3, ctx=100)]


# ------------------------------------------------------------------------------------------
# plan
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("mode", [MODE_PREFILL, MODE_DECODE, MODE_POD])
def test_default_tiles_fit(d, mode):
    if mode == MODE_POD and d == 256:
        with pytest.raises(ValueError):
            default_tiles(mode, d)
        return
    t = default_tiles(mode, d)
    t.validate(d)
    assert t.smem_bytes(d) <= t.smem_budget()
    assert t.launch_regs() * t.warps() * 32 * t.ctas_per_sm <= 65536


def test_mode_for_single_part_batches():
    assert mode_for(_spec(8, 2, 64, bs=0), MODE_POD) == MODE_PREFILL
    assert mode_for(_spec(8, 2, 64, lq=0, lk=0), MODE_POD) == MODE_DECODE
    assert mode_for(_spec(8, 2, 64), MODE_POD) == MODE_POD


@pytest.mark.parametrize("items,slots,blocks", list(itertools.product([1, 7, 64, 131, 132, 500], [8, 132], [1, 3, 100])))
def test_split_heuristic_bounds(items, slots, blocks):
    s = split_heuristic(items, slots, blocks)
    assert 1 <= s <= max(1, blocks)
    if items >= 2 * slots or blocks <= 1:
        assert s == 1


@pytest.mark.parametrize("n,s", list(itertools.product([0, 1, 2, 5, 17, 64], [1, 2, 3, 7, 16])))
def test_kv_splits_partition_the_blocks(n, s):
    covered = []
    for split in range(s):
        lo, hi = kv_split_range(n, s, split)
        assert hi >= lo
        covered += range(lo, hi)
    assert covered == list(range(n))


def test_prefill_items_are_longest_first():
    spec = _spec(8, 2, 128, lq=1000, lk=3000, bs=0)
    plan = make_plan(spec, 132, MODE_PREFILL, HopperConfig(prefill_split=1))
    work = [prefill_item(t, plan, spec)["hi"] for t in range(plan.n_prefill_items)]
    assert work == sorted(work, reverse=True)
    assert prefill_item(0, plan, spec)["mb"] == plan.n_mblocks - 1


# ------------------------------------------------------------------------------------------
# scheduler
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sms", [1, 2, 7, 16, 108, 132, 133])
@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: f"{s.model.name}-{s.prefill_len}-{s.decode_batch}")
def test_every_item_exactly_once(spec, sms):
    for mode in (MODE_PREFILL, MODE_DECODE, MODE_POD):
        m = mode_for(spec, mode)
        if (m == MODE_PREFILL and not spec.has_prefill) or (m == MODE_DECODE and not spec.has_decode):
            continue
        try:
            plan = make_plan(spec, sms, m)
        except ValueError:
            assert spec.model.head_dim == 256 and m == MODE_POD
            continue
        assert 1 <= plan.grid <= sms * plan.tiles.ctas_per_sm
        for seed in range(3):
            r = simulate(plan, spec, seed=seed)   # asserts exactly-once coverage itself
            assert (r["counter_after"], r["done_after"]) == (0, 0)
            assert len(r["prefill"]) == plan.n_prefill_items and len(r["decode"]) == plan.n_decode_items


def test_items_cover_every_query_row_and_head():
    spec = _spec(10, 2, 64, lq=129, lk=4097, bs=3, ctx=17)
    plan = make_plan(spec, 16, MODE_POD)
    rows = set()
    for t in range(plan.n_prefill_items):
        c = prefill_item(t, plan, spec)
        if c["split"] == 0:
            rows |= {(r, c["h"]) for r in range(c["mb"] * BLOCK_M, min(spec.prefill_len, (c["mb"] + 1) * BLOCK_M))}
    assert rows == {(r, h) for r in range(spec.prefill_len) for h in range(10)}
    heads = set()
    for i in range(plan.n_decode_items):
        c = decode_item(i, plan, spec)
        g = spec.model.group_size
        heads |= {(c["b"], c["kvh"] * g + r) for r in range(c["hb"] * 16, min(g, c["hb"] * 16 + 16))}
    assert heads == {(b, h) for b in range(3) for h in range(10)}


@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_ring_producer_never_overtakes_consumers(stages):
    # blocks per item as one CTA's pipeline sees them, empty splits included
    per_item = [3, 0, 1, 5, 2, 0, 7]
    seq = ring_sequence(per_item, stages)
    assert len(seq) == sum(per_item)
    # block k reuses the stage of block k - stages; the producer waits for the 'empty' phase
    # the consumers completed when they released block k - stages: phases alternate per reuse
    for k, (st, ph) in enumerate(seq):
        assert st == k % stages
        if k >= stages:
            assert seq[k - stages][0] == st and seq[k - stages][1] != ph


# ------------------------------------------------------------------------------------------
# the kernel's algorithm against the reference
# ------------------------------------------------------------------------------------------
ODD = [
    # (hq, hkv, d, dtype, lq, lk, bs, ctx, page_size, sms)
    (8, 2, 64, "float16", 300, 700, 5, 333, 16, 132),
    (7, 1, 128, "bfloat16", 129, 129, 3, 65, 16, 8),       # GQA 7, prefill = whole context
    (10, 2, 128, "float16", 0, 0, 4, 1000, 16, 20),        # GQA 5, decode only
    (6, 6, 64, "float16", 77, 77, 0, 0, 16, 5),            # MHA, prefill only
    (32, 1, 64, "bfloat16", 65, 1000, 2, 17, 3, 11),       # MQA (2 head blocks), odd page size
    (4, 4, 256, "float16", 200, 450, 3, 100, 16, 7),       # head dim 256 (prefill + decode variants)
    (3, 3, 128, "float16", 1, 1, 1, 1, 1, 132),            # one query, one key
    (16, 4, 128, "bfloat16", 255, 2049, 7, 129, 16, 16),   # lengths one off every tile
    (24, 3, 64, "float16", 64, 4096, 30, 2047, 16, 132),   # GQA 8
]


@pytest.mark.parametrize("case", ODD, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("mode", [MODE_POD, "separate"])
def test_emulated_kernel_matches_reference(case, mode):
    hq, hkv, d, dt, lq, lk, bs, ctx, ps, sms = case
    spec = _spec(hq, hkv, d, dt, lq, lk, bs, ctx, ps)
    batch = HybridBatch.allocate(spec, device="cpu", seed=1)
    ref = reference_outputs(batch)
    out = {}
    modes = [MODE_PREFILL, MODE_DECODE] if mode == "separate" or d == 256 else [mode_for(spec, MODE_POD)]
    for m in modes:
        m = mode_for(spec, m) if m == MODE_POD else m
        if (m == MODE_PREFILL and not spec.has_prefill) or (m == MODE_DECODE and not spec.has_decode):
            continue
        plan = make_plan(spec, sms, m)
        # a random launch order of the CTAs must not change the result
        order = torch.randperm(plan.grid, generator=torch.Generator().manual_seed(sms)).tolist()
        out.update(emulate(batch, plan, rank_order=order))
    res = check_outputs(out, ref, dt)
    assert res.ok, res.reason


def test_forced_splits_match_reference():
    spec = _spec(8, 2, 64, "float16", 130, 1000, 3, 500)
    batch = HybridBatch.allocate(spec, device="cpu", seed=2)
    ref = reference_outputs(batch)
    for sp, sd in [(1, 1), (2, 3), (7, 16), (16, 7)]:   # 16 splits of 8 key blocks: empty splits
        plan = make_plan(spec, 132, MODE_POD, HopperConfig(prefill_split=sp, decode_split=sd))
        res = check_outputs(emulate(batch, plan), ref, "float16")
        assert res.ok, (sp, sd, res.reason)


def test_pingpong_is_a_config_knob_of_the_tiles():
    from kernels.hopper.launch import kernel_meta
    spec = BatchSpec(ModelShape("m", 8, 2, 128), dtype="float16", prefill_len=300, prefill_kv_len=700,
                     decode_batch=5, decode_ctx=333)
    off = make_plan(spec, 132, MODE_PREFILL)
    on = make_plan(spec, 132, MODE_PREFILL, HopperConfig(pingpong=True))
    assert not off.tiles.pingpong and on.tiles.pingpong
    assert kernel_meta(on, 128, True, False)["PINGPONG"] and not kernel_meta(off, 128, True, False)["PINGPONG"]
    # a decode-only launch has no prefill warpgroups to alternate
    dec = make_plan(spec, 132, MODE_DECODE, HopperConfig(pingpong=True))
    assert not kernel_meta(dec, 128, False, True)["PINGPONG"]
    with pytest.raises(ValueError, match="pingpong"):
        HopperConfig(pingpong="yes")
