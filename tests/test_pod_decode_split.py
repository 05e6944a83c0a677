"""decode_split "measured": the decode-alone launch times a few split counts once per decode shape on
the GPU at hand and keeps the fastest; every candidate is correct, the decision is reused and shared
by the family's methods, and ``impl`` says it was measured."""
import pytest

import kernels.adapters.pod_triton as pod_triton
from kernels.common.splitkv import flash_split_heuristic, split_candidates
from kernels.pod.launch import MODE_DECODE, MODE_POD
from kernels.pod.plan import PodConfig, decode_split_candidates, make_plan
from kernels.reference import check_outputs, reference_outputs
from kernels.registry import create
from kernels.workload import BatchSpec, HybridBatch, ModelShape

# GQA 3, head dim 64 (64-key decode blocks): 517 keys are 9 blocks, off every tile and page
SPEC = BatchSpec(ModelShape("t", 6, 2, 64), "float16", prefill_len=37, prefill_kv_len=101, decode_batch=3,
                 decode_ctx=517)


@pytest.fixture(autouse=True)
def fresh_decisions():
    pod_triton.DECODE_SPLITS.clear()
    yield
    pod_triton.DECODE_SPLITS.clear()


def test_split_candidates():
    # an H200-sized decode (256 key blocks): none, and 2-8 splits
    assert split_candidates(256, 1) == [1, 2, 3, 4, 5, 6, 7, 8]
    # every split keeps at least 4 blocks: 10 blocks take 2 (5 each) and 3 (4 each), not 4 (3 each)
    assert split_candidates(10, 1) == [1, 2, 3]
    # 9 blocks: 3 splits of 3 blocks are too short
    assert split_candidates(9, 1) == [1, 2]
    # the heuristic's own count is always a candidate, however short its splits
    assert split_candidates(9, 7) == [1, 2, 7]
    # a count that leaves the blocks per split unchanged is no new candidate (30 blocks: 6 and 7 both 5)
    assert split_candidates(30, 1) == [1, 2, 3, 4, 5, 6, 8]
    assert split_candidates(1, 1) == [1] and split_candidates(1, 3) == [3]


def test_decode_split_option():
    assert PodConfig().decode_split == "measured"
    with pytest.raises(ValueError, match="decode_split must be 'measured', 'auto' or a positive int, got 'fast'"):
        PodConfig(decode_split="fast")
    # how the count is chosen belongs to the plan; a fixed count tunes the Triton launch
    assert PodConfig(decode_split="auto").tuned_options() == []
    assert PodConfig(decode_split=2).tuned_options() == ["decode_split"]


def test_plans_made_without_timing_take_the_heuristic():
    spec = BatchSpec(ModelShape("llama", 32, 8, 128), "float16", decode_batch=53, decode_ctx=16384)
    for mode in (MODE_DECODE, MODE_POD):
        measured = make_plan(spec, mode, 132, PodConfig())
        auto = make_plan(spec, mode, 132, PodConfig(decode_split="auto"))
        assert measured == auto
    plan = make_plan(spec, MODE_DECODE, 132, PodConfig())
    assert plan.n_splits_d == flash_split_heuristic(53 * 8, 132 * 4, 16384 // 64) == 1
    assert decode_split_candidates(spec, plan) == [1, 2, 3, 4, 5, 6, 7, 8]
    fixed = make_plan(spec, MODE_DECODE, 132, PodConfig(decode_split=4))
    assert decode_split_candidates(spec, fixed) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert fixed.n_items == 4 * plan.n_items and fixed.n_decode_ctas == 4 * plan.n_decode_ctas


def split_timer(times, calls, reference=None):
    """A timer that says ``times[split]`` ms and checks each candidate's outputs against ``reference``."""
    def measure(fns, device):
        out = {}
        for splits, fn in fns.items():
            assert fn.launch_state.plan.n_splits_d == splits
            if reference is not None:
                chk = check_outputs(fn(), reference, SPEC.dtype, parts=["decode"])
                assert chk.ok, f"split {splits}: {chk.reason}"
            calls.append(splits)
            out[splits] = times.get(splits, 1.0)
        return out
    return measure


def test_the_fastest_split_runs_and_is_reused():
    batch = HybridBatch.allocate(SPEC, "cpu", seed=3)
    ref = reference_outputs(batch)
    calls = []
    dec = create("OURS_decode")
    dec.measure_split = split_timer({2: 0.5}, calls, ref)
    run = dec.prepare(batch)
    assert len(calls) >= 2 and 1 in calls and 2 in calls          # every candidate timed (and correct)
    assert run.launch_state.plan.n_splits_d == 2
    impl = dec.info()["impl"]
    assert "split 1/2" in impl and "(decode split measured of " in impl
    assert check_outputs(run(), ref, SPEC.dtype, parts=["decode"]).ok
    # the same decode part in another batch, for another method of the family: nothing timed again
    timed = len(calls)
    serial = create("OURS_Serial")
    serial.measure_split = split_timer({}, calls)
    other = HybridBatch.allocate(SPEC.replace(prefill_len=20, prefill_kv_len=64), "cpu", seed=4)
    run2 = serial.prepare(other)
    assert len(calls) == timed
    assert run2.launch_states[1].plan.n_splits_d == 2
    assert serial.info()["impl"] == "triton; decode split 2 (measured of 1,2,5)"
    assert check_outputs(run2(), reference_outputs(other), SPEC.dtype).ok


def test_off_a_gpu_without_a_timer_the_heuristic_runs():
    batch = HybridBatch.allocate(SPEC, "cpu", seed=3)
    dec = create("OURS_decode")
    run = dec.prepare(batch)
    plan = make_plan(SPEC, MODE_DECODE, run.launch_state.plan.num_sms, PodConfig(decode_split="auto"))
    assert run.launch_state.plan.n_splits_d == plan.n_splits_d
    assert "decode split measured" not in dec.info()["impl"]
    assert not pod_triton.DECODE_SPLITS


@pytest.mark.parametrize("model,dtype,ctx", [
    (ModelShape("gqa7", 14, 2, 64), "bfloat16", 700),     # GQA 7, 11 key blocks of 64
    (ModelShape("mqa", 8, 1, 128), "float16", 529),       # MQA, 9 blocks, the last one partial
    (ModelShape("gqa5", 10, 2, 256), "bfloat16", 530),    # GQA 5, head dim 256: 17 blocks of 32 keys
])
def test_every_candidate_split_is_correct_on_odd_shapes(model, dtype, ctx):
    spec = BatchSpec(model, dtype, decode_batch=3, decode_ctx=ctx)
    batch = HybridBatch.allocate(spec, "cpu", seed=11)
    ref = reference_outputs(batch)
    calls = []
    dec = create("OURS_decode")

    def measure(fns, device):
        out = {}
        for splits, fn in fns.items():
            assert fn.launch_state.plan.n_splits_d == splits
            chk = check_outputs(fn(), ref, dtype, parts=["decode"])
            assert chk.ok, f"{model.name} split {splits}: {chk.reason}"
            calls.append(splits)
            out[splits] = 1.0 / splits          # the most splits wins: the longest merge runs
        return out

    dec.measure_split = measure
    run = dec.prepare(batch)
    assert len(calls) >= 2 and run.launch_state.plan.n_splits_d == max(calls)
    assert check_outputs(run(), ref, dtype, parts=["decode"]).ok
