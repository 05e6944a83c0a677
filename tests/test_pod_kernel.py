"""Our Triton POD kernel family on the CPU (Triton interpreter): correctness of every way to run it,
and the SM-aware scheduler's guarantee that each logical CTA runs exactly once."""
import pytest
import torch

from kernels.adapters.pod_triton import smid_trace
import math

from kernels.common.splitkv import flash_split_heuristic
from kernels.pod.plan import (BINDINGS, DEFAULT_MACHINE_BALANCE, PREFILL_DOMINANCE, PodConfig, choose_ctas_per_sm,
                              default_tiles, make_plan, policy_ratio)
from kernels.pod.plan import MODE_DECODE, MODE_POD
from kernels.registry import create
from kernels.workload import BatchSpec, HybridBatch, ModelShape

METHODS = ["OURS_prefill", "OURS_decode", "OURS_Serial", "OURS_CTA", "POD"]


def naive_attention(batch):
    """float64 reference written independently of kernels/reference.py: one head at a time."""
    s, m = batch.spec, batch.spec.model
    out = {}
    if s.has_prefill:
        o = torch.empty(s.prefill_len, m.q_heads, m.head_dim, dtype=torch.float64)
        for h in range(m.q_heads):
            q, k, v = (batch.q_p[:, h].double(), batch.k_p[:, h // m.group_size].double(),
                       batch.v_p[:, h // m.group_size].double())
            sc = q @ k.T * s.sm_scale
            i = torch.arange(s.prefill_len)[:, None]
            j = torch.arange(s.prefill_kv_len)[None, :]
            sc = sc.masked_fill(j > s.prefill_kv_len - s.prefill_len + i, float("-inf"))
            o[:, h] = sc.softmax(-1) @ v
        out["prefill"] = o
    if s.has_decode:
        o = torch.empty(s.decode_batch, m.q_heads, m.head_dim, dtype=torch.float64)
        for b in range(s.decode_batch):
            for h in range(m.q_heads):
                k = batch.k_d[b, : s.decode_ctx, h // m.group_size].double()
                v = batch.v_d[b, : s.decode_ctx, h // m.group_size].double()
                o[b, h] = ((batch.q_d[b, h].double() @ k.T) * s.sm_scale).softmax(-1) @ v
        out["decode"] = o
    return out


TOL = {"float16": 2e-3, "bfloat16": 1.5e-2}

SHAPES = [
    # q heads, kv heads, head dim, dtype, chunk, chunk's KV, decodes, decode context, options
    (6, 2, 64, "float16", 37, 101, 5, 77, {}),
    (4, 4, 128, "bfloat16", 20, 20, 3, 40, {"kv_layout": "paged"}),
    (5, 1, 64, "float16", 19, 50, 2, 33, {"prefill_split": 3, "decode_split": 2}),
    (6, 2, 256, "float16", 9, 45, 3, 29, {"ctas_per_sm": 4, "kv_layout": "paged", "policy": "50:50"}),
    (8, 2, 128, "bfloat16", 33, 70, 7, 18, {"ctas_per_sm": 2, "virtual_decode_ctas": 4, "decode_split": 3}),
    # prefill K/V through tensor descriptors: rows past the chunk's KV come back as zeros
    (6, 2, 64, "bfloat16", 37, 101, 3, 29, {"prefill_loads": "tma"}),
    (10, 2, 128, "float16", 21, 83, 2, 17, {"prefill_loads": "tma", "prefill_split": 2, "ctas_per_sm": 4}),
    (3, 3, 256, "float16", 17, 40, 2, 20, {"prefill_loads": "tma", "ctas_per_sm": 2}),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}q{s[1]}kv-d{s[2]}-{s[3]}-{s[8]}")
def test_methods_match_reference(shape):
    hq, hkv, d, dt, lq, lk, bs, cl, opts = shape
    spec = BatchSpec(ModelShape("t", hq, hkv, d), dt, prefill_len=lq, prefill_kv_len=lk, decode_batch=bs,
                     decode_ctx=cl, page_size=16)
    batch = HybridBatch.allocate(spec, "cpu", seed=hash(shape[:8]) % 1000)
    ref = naive_attention(batch)
    for name in METHODS:
        method = create(name, **opts)
        run = method.prepare(batch)
        for part, out in run().items():
            err = ((out.double() - ref[part]).norm() / ref[part].norm()).item()
            assert err < TOL[dt], f"{name} {part}: relative error {err:.2e}"
        assert set(run()) == set(method.parts)


def test_prefill_only_and_decode_only_batches():
    m = ModelShape("t", 4, 2, 64)
    for spec in (BatchSpec(m, prefill_len=17, prefill_kv_len=40),
                 BatchSpec(m, decode_batch=3, decode_ctx=21)):
        batch = HybridBatch.allocate(spec, "cpu")
        ref = naive_attention(batch)
        out = create("POD").prepare(batch)()
        assert set(out) == set(ref)
        for part in out:
            assert ((out[part].double() - ref[part]).norm() / ref[part].norm()) < 2e-3


@pytest.mark.parametrize("binding", BINDINGS)
@pytest.mark.parametrize("policy", ["proportional", "50:50"])
@pytest.mark.parametrize("ctas_per_sm", [2, 4])
def test_every_logical_cta_runs_once_under_any_sm_mapping(policy, ctas_per_sm, binding):
    spec = BatchSpec(ModelShape("t", 4, 2, 64), prefill_len=40, prefill_kv_len=90, decode_batch=9,
                     decode_ctx=50)
    batch = HybridBatch.allocate(spec, "cpu")
    cfg = PodConfig(policy=policy, ctas_per_sm=ctas_per_sm, prefill_split=2, decode_split=2, binding=binding)
    ref = naive_attention(batch)
    gen = torch.Generator().manual_seed(ctas_per_sm)
    plan = make_plan(spec, 3, 8, cfg)
    n = plan.n_prefill_ctas + plan.n_decode_ctas
    mappings = [None, torch.zeros(n, dtype=torch.int32), torch.randint(0, 8, (n,), generator=gen, dtype=torch.int32),
                torch.arange(n, dtype=torch.int32).flip(0) % 3]
    for table in mappings:
        plan, trace, out, run = smid_trace(batch, cfg, table)
        ops, ctas = trace[:, 0], trace[:, 1]
        assert (ops >= 0).all(), "a physical CTA recorded no work"
        assert sorted(ctas[ops == 0].tolist()) == list(range(plan.n_prefill_ctas))
        assert sorted(ctas[ops == 1].tolist()) == list(range(plan.n_decode_ctas))
        for part in out:
            assert ((out[part].double() - ref[part]).norm() / ref[part].norm()) < 2e-3
        assert (trace[:, 4] >= trace[:, 3]).all()  # end not before start (both 0 in the interpreter)
        # counters were zeroed by the last CTA (running counts by each CTA's own decrement): a
        # second launch schedules correctly again
        sched = run.launch_state.sched
        assert int(sched.abs().sum()) == 0
        run()
        assert int(sched.abs().sum()) == 0


def test_policy_changes_assignment_per_sm():
    spec = BatchSpec(ModelShape("t", 4, 2, 64), prefill_len=64, prefill_kv_len=64, decode_batch=16,
                     decode_ctx=20)
    batch = HybridBatch.allocate(spec, "cpu")
    n_sms = 8
    table = None
    half = smid_trace(batch, PodConfig(policy="50:50", ctas_per_sm=4, prefill_split=1, decode_split=1), table)[1]
    plan = make_plan(spec, 3, n_sms, PodConfig(policy="50:50", ctas_per_sm=4, prefill_split=1, decode_split=1))
    # with 50:50 each SM's first two CTAs are one prefill and one decode (both have work left)
    first = {}
    for pid in range(min(2 * n_sms, plan.n_prefill_ctas + plan.n_decode_ctas)):
        first.setdefault(int(half[pid, 2]), []).append(int(half[pid, 0]))
    assert all(sorted(v[:2]) == [0, 1] for v in first.values() if len(v) >= 2)


def test_plan_knobs():
    spec = BatchSpec(ModelShape("t", 16, 4, 128), prefill_len=1024, prefill_kv_len=12288, decode_batch=80,
                     decode_ctx=12288)
    assert policy_ratio("50:50", 10, 90, 4) == (1, 1)
    assert policy_ratio("proportional", 30, 10, 4) == (2, 2)  # prefill gets at most half an SM
    assert policy_ratio("3:1", 30, 10, 4) == (3, 1)
    assert policy_ratio("proportional", 10, 90, 4) == (1, 3)
    assert policy_ratio("proportional", 10, 10, 2) == (1, 1)
    assert flash_split_heuristic(300, 132, 100) == 1
    assert flash_split_heuristic(16, 132, 192) > 1
    lim = make_plan(spec.replace(decode_batch=1), 3, 132, PodConfig(prefill_split="limited", ctas_per_sm=2))
    van = make_plan(spec.replace(decode_batch=1), 3, 132, PodConfig(prefill_split="vanilla", ctas_per_sm=2))
    assert lim.n_splits_p <= van.n_splits_p
    assert lim.n_prefill_ctas <= max(2 * 132, lim.n_prefill_ctas // lim.n_splits_p)
    # a few long prefill CTAs beside decodes that fill two waves: "limited" leaves them unsplit,
    # "two_waves" splits them within two waves like the paper
    long_kv = spec.replace(prefill_len=512, prefill_kv_len=20480, decode_batch=200)
    assert make_plan(long_kv, 3, 132, PodConfig(ctas_per_sm=4, prefill_split="limited")).n_splits_p == 1
    waves = make_plan(long_kv, 3, 132, PodConfig(ctas_per_sm=4))
    assert 1 < waves.n_splits_p and waves.n_prefill_ctas <= 2 * 132
    # "auto" keeps "limited" for 2 CTAs/SM
    assert make_plan(long_kv, 3, 132, PodConfig(ctas_per_sm=2)).n_splits_p == 1
    assert make_plan(long_kv, 3, 132, PodConfig(ctas_per_sm=2, prefill_split="two_waves")).n_splits_p > 1
    with pytest.raises(ValueError, match="prefill_split"):
        PodConfig(prefill_split="three_waves")
    auto = make_plan(spec, 3, 132, PodConfig())
    assert auto.ctas_per_sm in (2, 4) and auto.tiles.decode_rows == 16
    # the former rule, kept as ``plan: thresholds`` (the calibrated rule: tests/test_pod_calibration.py)
    rule = PodConfig(plan="thresholds")
    heavy = spec.replace(prefill_len=12288, decode_batch=8)
    assert make_plan(heavy, 3, 132, rule).ctas_per_sm == 2
    light = spec.replace(prefill_len=128, prefill_kv_len=128, decode_batch=200)
    assert make_plan(light, 3, 132, rule).ctas_per_sm == 4
    with pytest.raises(ValueError, match="ctas_per_sm"):
        PodConfig(ctas_per_sm=3)
    with pytest.raises(ValueError, match="policy"):
        PodConfig(policy="round-robin")


def test_prefill_loads_knob():
    spec = BatchSpec(ModelShape("t", 16, 4, 128), prefill_len=1024, prefill_kv_len=12288, decode_batch=80,
                     decode_ctx=12288)
    assert not make_plan(spec, 3, 132, PodConfig()).prefill_tma
    assert make_plan(spec, 0, 132, PodConfig(prefill_loads="tma")).prefill_tma
    assert make_plan(spec, 3, 132, PodConfig(prefill_loads="tma")).prefill_tma
    with pytest.raises(ValueError, match="dense"):
        PodConfig(prefill_loads="tma", kv_layout="paged")
    with pytest.raises(ValueError, match="prefill_loads"):
        PodConfig(prefill_loads="bulk")


def test_decode_stages_knob():
    spec = BatchSpec(ModelShape("t", 16, 4, 128), prefill_len=64, prefill_kv_len=640, decode_batch=8,
                     decode_ctx=512)
    assert make_plan(spec, 3, 132, PodConfig(ctas_per_sm=4)).tiles.decode_stages is None
    assert make_plan(spec, 3, 132, PodConfig(ctas_per_sm=4, decode_stages=2)).tiles.decode_stages == 2
    # the 2-CTA tile set pipelines its decode loop one deeper than its prefill loop by default
    two = make_plan(spec, 3, 132, PodConfig(ctas_per_sm=2)).tiles
    assert (two.num_stages, two.decode_stages) == (2, 3)
    pod = create("POD", ctas_per_sm=2)
    pod.last_plan = make_plan(spec, 3, 132, pod.config).as_dict()
    assert pod.info()["impl"].endswith(" ds3")
    with pytest.raises(ValueError, match="decode_stages"):
        PodConfig(decode_stages=0)


def test_longer_decode_blocks_keep_the_default_ring():
    """Figure 10's 128-key decode blocks at the decode tiles' default depth would need 272 KB of
    shared memory (over Hopper's 227 KB, an OutOfResources on the H200): the ring keeps its keys."""
    spec = BatchSpec(ModelShape("t", 32, 8, 128), decode_batch=8, decode_ctx=4096)
    base = make_plan(spec, MODE_DECODE, 132, PodConfig(decode_split=1)).tiles
    wide = make_plan(spec, MODE_DECODE, 132, PodConfig(decode_q_tile=64, decode_n=128, decode_split=1)).tiles
    assert wide.decode_n == 2 * base.decode_n
    assert wide.decode_stages * wide.decode_n == (base.decode_stages or base.num_stages) * base.decode_n
    assert wide.num_stages == wide.decode_stages
    pinned = make_plan(spec, MODE_DECODE, 132, PodConfig(decode_n=128, decode_stages=3, decode_split=1)).tiles
    assert pinned.decode_stages == 3                     # a given depth is kept
    narrow = make_plan(spec, MODE_DECODE, 132, PodConfig(decode_n=32, decode_split=1)).tiles
    assert (narrow.num_stages, narrow.decode_stages) == (base.num_stages, base.decode_stages)


def test_longer_decode_blocks_take_the_deepest_ring_the_device_holds():
    """With the device's shared memory known, a decode-alone launch of 128-key blocks runs as deep
    as it fits: on Hopper (232,448 B per CTA) 3 deep at head dim 128 (4 deep asked 278,528 B on the
    H200), 4 (the default) at head dim 64; on a 99 KB GPU 1 deep. A fused launch keeps the ring."""
    from kernels.pod.plan import decode_smem_bytes
    hopper, ampere_consumer = 232_448, 101_376
    assert decode_smem_bytes(64, 128, 128, 4) == 278_528

    def depth(head_dim, limit, kind=None, mode=MODE_DECODE, **cfg):
        spec = BatchSpec(ModelShape("t", 32, 8, head_dim), decode_batch=8, decode_ctx=4096, prefill_len=256, prefill_kv_len=256)
        t = make_plan(spec, mode, 132, PodConfig(decode_q_tile=64, decode_n=128, decode_split=1, **cfg),
                      kind, smem_limit=limit).tiles
        return t.num_stages, t.decode_stages

    assert depth(128, hopper) == (3, 3) and depth(128, None) == (2, 2)
    assert depth(64, hopper) == (4, 4) and depth(128, ampere_consumer) == (1, 1)
    assert depth(128, hopper, decode_stages=2) == (3, 2)          # a given depth is kept
    assert depth(128, 10 ** 9) == (4, 4)                          # never deeper than the default
    fused = make_plan(BatchSpec(ModelShape("t", 32, 8, 128), decode_batch=8, decode_ctx=4096, prefill_len=256, prefill_kv_len=256),
                      MODE_POD, 132, PodConfig(ctas_per_sm=2, decode_n=128, decode_split=1), smem_limit=hopper).tiles
    assert fused.decode_stages == 1                               # 3 x 64 keys kept: one 128-key block


def _ops_in_launch_order(batch, cfg, table=None):
    """Part of each physical CTA in launch order (the interpreter runs CTAs one after another)."""
    plan, trace, _, run = smid_trace(batch, cfg, table)
    return plan, trace[:, 0].tolist(), run


def test_progress_binding_keeps_both_parts_running_to_the_end():
    spec = BatchSpec(ModelShape("t", 4, 2, 64), prefill_len=40, prefill_kv_len=90, decode_batch=9,
                     decode_ctx=50)
    batch = HybridBatch.allocate(spec, "cpu")
    plan, ops, _ = _ops_in_launch_order(batch, PodConfig(binding="progress", prefill_split=2, decode_split=3))
    n_p, n_d = plan.n_prefill_ctas, plan.n_decode_ctas
    assert n_p != n_d and min(n_p, n_d) > 1
    handed = [0, 0]
    for op in ops:
        handed[op] += 1
        # the handed-out fractions never drift apart by more than one CTA of either part
        assert abs(handed[0] * n_d - handed[1] * n_p) <= max(n_p, n_d)
    # ticket binding with a 1:1 policy hands out prefill and decode alternately instead
    _, ticket_ops, _ = _ops_in_launch_order(batch, PodConfig(policy="50:50", prefill_split=2, decode_split=3))
    assert ticket_ops != ops


def test_resident_binding_follows_the_running_ctas_of_the_sm():
    spec = BatchSpec(ModelShape("t", 4, 2, 64), prefill_len=40, prefill_kv_len=90, decode_batch=9,
                     decode_ctx=50)
    batch = HybridBatch.allocate(spec, "cpu")
    cfg = PodConfig(binding="resident", policy="50:50", prefill_split=2, decode_split=2)
    plan = make_plan(spec, 3, 8, cfg)
    n = plan.n_prefill_ctas + plan.n_decode_ctas
    table = (torch.arange(n, dtype=torch.int32) % 2)  # CTAs alternate between SM 0 and SM 1
    plan, ops, run = _ops_in_launch_order(batch, cfg, table)
    # CTAs run one at a time here: nothing else is running on the SM, so each takes prefill first
    assert ops[:plan.n_prefill_ctas] == [0] * plan.n_prefill_ctas
    # pretend SM 0 holds many running prefill CTAs and SM 1 many running decode CTAs
    sched = run.launch_state.sched
    slots = (sched.numel() - 4) // 3
    sched[slots + 4 + 0] = 100           # running prefill CTAs on SM 0
    sched[2 * slots + 4 + 1] = 100       # running decode CTAs on SM 1
    run()
    trace = run.launch_state.trace
    first = trace[:4, 0].tolist()  # SM 0, SM 1, SM 0, SM 1
    assert first == [1, 0, 1, 0], first
    # the seeded counts are untouched: each CTA's own increment and decrement cancel
    assert int(sched[slots + 4]) == 100 and int(sched[2 * slots + 5]) == 100


def test_ctas_per_sm_rule_threshold():
    spec = BatchSpec(ModelShape("t", 32, 8, 128), prefill_len=1024, prefill_kv_len=16384, decode_batch=25,
                     decode_ctx=16384)
    # the balance at which the prefill FLOPs are exactly PREFILL_DOMINANCE x the decode bytes' worth
    edge = spec.flops()["prefill"] / (PREFILL_DOMINANCE * spec.bytes_moved()["decode"])
    assert choose_ctas_per_sm(spec, edge * 0.99) == 2
    assert choose_ctas_per_sm(spec, edge * 1.01) == 4
    assert choose_ctas_per_sm(spec.replace(decode_batch=0, decode_ctx=0), 1e9) == 2
    assert choose_ctas_per_sm(spec.replace(prefill_len=0, prefill_kv_len=0), 1e-9) == 4
    # this figure-11 batch sits above the threshold with the default balance: 2 CTAs per SM
    assert make_plan(spec, 3, 132, PodConfig(plan="thresholds")).ctas_per_sm == 2
    assert make_plan(spec, 3, 132, PodConfig(plan="thresholds", machine_balance=edge * 1.01)).ctas_per_sm == 4
    assert DEFAULT_MACHINE_BALANCE > 0


@pytest.mark.parametrize("ctas_per_sm", [2, 4])
def test_decode_split_counts_ctas_of_virtual_items(ctas_per_sm):
    spec = BatchSpec(ModelShape("t", 32, 8, 128), prefill_len=1024, prefill_kv_len=16384, decode_batch=20,
                     decode_ctx=20480)
    plan = make_plan(spec, 3, 132, PodConfig(ctas_per_sm=ctas_per_sm))
    t = plan.tiles
    base = spec.decode_batch * spec.model.kv_heads * plan.n_hblocks
    assert t.virtual == default_tiles("fused", 128, ctas_per_sm).virtual
    want = flash_split_heuristic(math.ceil(base / t.virtual), 132 * ctas_per_sm, math.ceil(spec.decode_ctx / t.decode_n))
    assert plan.n_splits_d == want
    assert plan.n_decode_ctas == math.ceil(base * want / t.virtual)
    if t.virtual > 1 and ctas_per_sm == 2:
        # 160 items in 80 CTAs of 2 fill less than 0.8 of the 264 slots: the decode is split
        assert plan.n_splits_d > 1


@pytest.mark.parametrize("extra", [{"PF_SOFTMAX": 1}, {"PF_SOFTMAX": 1, "PF_WS": True}], ids=["fma", "fma-ws"])
@pytest.mark.parametrize("name,opts", [("OURS_prefill", {"prefill_split": 2}), ("POD", {"ctas_per_sm": 4})])
def test_prefill_loop_switches_match_reference(extra, name, opts):
    """The prefill-loop variants experiments/prefill_variants.py times (scale folded into exp2, automatic
    warp specialisation of the unmasked loop) compute the same attention."""
    spec = BatchSpec(ModelShape("t", 6, 2, 64), "float16", prefill_len=37, prefill_kv_len=101, decode_batch=3,
                     decode_ctx=29)
    batch = HybridBatch.allocate(spec, "cpu", seed=5)
    ref = naive_attention(batch)
    run = create(name, **opts).prepare(batch)
    run.launch_state.meta.update(extra)
    for part, out in run().items():
        err = ((out.double() - ref[part]).norm() / ref[part].norm()).item()
        assert err < TOL["float16"], f"{name} {part}: relative error {err:.2e}"
