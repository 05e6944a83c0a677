"""POD's measured plan (plan: measured): each candidate (our serial, fused with 2 or 4 CTAs per SM)
is timed once per batch key and the fastest runs; the decision is reused for the key, said in
``impl``, and POD stays correct whichever candidate wins."""
import pytest
import torch

from kernels.pod.plan import PodConfig, measured_choice, plan_key
from kernels.reference import check_outputs, reference_outputs
from kernels.registry import create
from kernels.workload import BatchSpec, HybridBatch, ModelShape

# GQA 3, head dim 64, lengths off every tile and page
SPEC = BatchSpec(ModelShape("t", 6, 2, 64), "float16", prefill_len=37, prefill_kv_len=101, decode_batch=5,
                 decode_ctx=77)


def test_measured_choice_takes_the_fastest_beyond_the_margin():
    assert measured_choice({"serial": 1.0, "fused2": 0.9, "fused4": 0.8}).ctas_per_sm == 4
    assert measured_choice({"serial": 1.0, "fused2": 0.7, "fused4": 0.8}).ctas_per_sm == 2
    # a near tie (within the 2% margin) runs serial: never slower than our own serial for noise
    c = measured_choice({"serial": 1.0, "fused2": 0.99, "fused4": 1.3}, margin=0.02)
    assert (c.kind, c.ctas_per_sm, c.rule) == ("serial", 0, "measured")
    assert measured_choice({"serial": 1.0, "fused2": 0.99, "fused4": 1.3}, margin=0.0).kind == "fused"
    assert "measured serial 1 vs fused2 0.99 ms" in c.describe()
    with pytest.raises(ValueError, match="serial"):
        measured_choice({"fused2": 1.0})


def test_plan_key_exact_and_pow2():
    other = SPEC.replace(decode_ctx=80)
    assert plan_key(SPEC) != plan_key(other)
    assert plan_key(SPEC, "pow2") == plan_key(other, "pow2")          # both 128 keys per decode
    assert plan_key(SPEC, "pow2")[-4:] == (64, 128, 8, 128)
    assert plan_key(SPEC.replace(decode_batch=0, decode_ctx=0), "pow2")[-2:] == (0, 0)
    assert plan_key(SPEC) != plan_key(SPEC.replace(dtype="bfloat16"))
    with pytest.raises(ValueError, match="plan_key"):
        PodConfig(plan="measured", plan_key="round")


def fake_measure(times, calls):
    """A timer that says ``times[candidate]`` ms; which candidate a callable is, from its launches."""
    def measure(fns, device):
        measure.seen = dict(fns)
        out = {}
        for label, fn in fns.items():
            if getattr(fn, "hopper", False):
                name = "hopper"
            else:
                name = "serial" if hasattr(fn, "launch_states") else f"fused{fn.launch_state.plan.ctas_per_sm}"
            assert name == label
            calls.append(name)
            out[label] = times[name]
        return out
    return measure


@pytest.mark.parametrize("winner", ["serial", "fused2", "fused4"])
def test_pod_runs_the_measured_winner_correctly(winner):
    batch = HybridBatch.allocate(SPEC, "cpu", seed=5)
    times = {"serial": 1.0, "fused2": 1.1, "fused4": 1.2}
    times[winner] = 0.5
    calls = []
    pod = create("POD", plan="measured")
    pod.measure = fake_measure(times, calls)
    run = pod.prepare(batch)
    assert sorted(calls) == ["fused2", "fused4", "serial"]
    assert run is pod.measure.seen[winner]          # the timed candidate runs; it is not prepared twice
    impl = pod.info()["impl"]
    assert "plan measured" in impl
    if winner == "serial":
        assert impl.startswith("triton serial") and len(run.launch_states) == 2
    else:
        assert impl.startswith(f"triton cps{winner[-1]} ") and run.launch_state.plan.ctas_per_sm == int(winner[-1])
    chk = check_outputs(run(), reference_outputs(batch), SPEC.dtype)
    assert chk.ok, chk.reason
    # the same key again: the decision is reused, nothing is timed, and the new batch's launch
    # (prepared afresh) says the same plan
    run2 = pod.prepare(batch2 := HybridBatch.allocate(SPEC, "cpu", seed=6))
    assert len(calls) == 3 and pod.info()["impl"] == impl and run2 is not run
    assert check_outputs(run2(), reference_outputs(batch2), SPEC.dtype).ok


def test_pod_measured_serial_is_our_serial():
    batch = HybridBatch.allocate(SPEC, "cpu", seed=2)
    pod, ours = create("POD", plan="measured"), create("OURS_Serial")
    pod.measure = fake_measure({"serial": 1.0, "fused2": 1.5, "fused4": 1.5}, [])
    a, b = pod.prepare(batch)(), ours.prepare(batch)()
    for part in a:
        assert torch.equal(a[part], b[part])


def test_pod_measured_times_with_the_harness_timer_on_the_cpu():
    """Without a stand-in timer the candidates really run (interpreter) and are timed."""
    spec = SPEC.replace(prefill_len=16, prefill_kv_len=40, decode_batch=2, decode_ctx=20)
    batch = HybridBatch.allocate(spec, "cpu", seed=1)
    pod = create("POD", plan="measured", plan_key="pow2")
    out = pod.prepare(batch)()
    (choice,) = pod.measured.values()
    assert set(choice.predicted_ms) == {"serial", "fused2", "fused4"} and all(t > 0 for t in choice.predicted_ms.values())
    assert check_outputs(out, reference_outputs(batch), spec.dtype).ok


def _hopper_stand_in(monkeypatch, seen):
    """Make ``prepare_hopper`` (the Gluon Hopper kernel, sm_90 only) available on the CPU: its launch
    is stood in for by the reference outputs of the parts it computes, its plan is the real Hopper
    plan of the batch."""
    import kernels.adapters.pod_triton as adapter
    from kernels.hopper.plan import make_plan, mode_for

    def prepare_hopper(batch, mode="prefill", config=None):
        plan = make_plan(batch.spec, 132, mode_for(batch.spec, mode))

        def run():
            seen.append(f"hopper {mode}")
            ref = reference_outputs(batch)
            parts = ("prefill",) if mode == "prefill" else ("prefill", "decode")
            return {p: ref[p].to(batch.q.dtype) for p in parts}
        run.hopper = True
        return run, plan.as_dict()
    monkeypatch.setattr(adapter, "prepare_hopper", prepare_hopper)


def test_prefill_kernel_picks_the_hopper_prefill_where_it_runs(monkeypatch):
    """prefill_kernel auto: the serial path's prefill is the Gluon Hopper one where it runs (its impl
    says so, and our Triton decode follows it), the Triton one where it does not (here: the CPU)."""
    batch = HybridBatch.allocate(SPEC, "cpu", seed=5)
    pre = create("OURS_prefill")
    pre.prepare(batch)
    assert pre.info()["impl"].startswith("triton")          # no sm_90 GPU here: the portable prefill
    with pytest.raises(Exception, match="prefill_kernel 'hopper'.*sm_90"):
        create("OURS_Serial", prefill_kernel="hopper").prepare(batch)
    with pytest.raises(ValueError, match="prefill_kernel"):
        PodConfig(prefill_kernel="cuda")

    seen = []
    _hopper_stand_in(monkeypatch, seen)
    pre = create("OURS_prefill")
    out = pre.prepare(batch)()
    assert seen == ["hopper prefill"] and set(out) == {"prefill"}
    assert pre.info()["impl"].startswith("gluon hopper prefill bn")
    ser = create("OURS_Serial")
    run = ser.prepare(batch)
    assert ser.info()["impl"].startswith("serial gluon hopper prefill bn") and ser.info()["impl"].endswith("triton decode")
    assert len(run.launch_states) == 1 and run.launch_states[0].plan.mode == 1   # only the decode is ours
    chk = check_outputs(run(), reference_outputs(batch), SPEC.dtype)
    assert chk.ok and seen == ["hopper prefill"] * 2, chk.reason
    # prefill_kernel triton keeps the Triton prefill even where the Hopper one runs, and so does
    # auto when an option of the Triton prefill is set (a YAML tuning its tile)
    tri = create("OURS_Serial", prefill_kernel="triton")
    assert len(tri.prepare(batch).launch_states) == 2 and tri.info()["impl"] == "triton"
    tuned = create("OURS_prefill", block_n=32)
    assert tuned.prepare(batch).launch_state.plan.tiles.block_n == 32 and tuned.info()["impl"].startswith("triton")
    assert create("OURS_Serial", decode_split=2).prepare(batch).launch_states[0].plan.mode == 0
    assert PodConfig(decode_split=2, plan="measured", fuse_margin=0.05).tuned_options() == ["decode_split"]
    with pytest.raises(ValueError, match="takes none of the Triton prefill's options; set: block_n, kv_layout"):
        PodConfig(prefill_kernel="hopper", block_n=32, kv_layout="paged")


def test_pod_measured_serial_candidate_uses_the_hopper_prefill(monkeypatch):
    """POD's serial candidate is our serial as it runs here, so with the Hopper prefill available the
    measured plan weighs the fused launches against it, and impl names the prefill that ran."""
    seen = []
    _hopper_stand_in(monkeypatch, seen)
    batch = HybridBatch.allocate(SPEC, "cpu", seed=5)
    calls = []
    pod = create("POD", plan="measured")
    pod.measure = fake_measure({"serial": 0.5, "fused2": 1.1, "fused4": 1.2, "hopper": 0.9}, calls)
    run = pod.prepare(batch)
    assert sorted(calls) == ["fused2", "fused4", "hopper", "serial"]
    impl = pod.info()["impl"]
    assert impl.startswith("serial gluon hopper prefill") and "plan measured: measured serial 0.5 vs hopper 0.9" in impl
    assert check_outputs(run(), reference_outputs(batch), SPEC.dtype).ok and seen[-1] == "hopper prefill"


def test_pod_measured_plan_runs_the_fused_hopper_kernel_when_it_wins(monkeypatch):
    """Where the Hopper kernel runs, its fused launch is a fourth candidate: when it is the fastest
    it runs, impl says so, and the decision is reused for the key; hopper_fused false leaves it out."""
    seen = []
    _hopper_stand_in(monkeypatch, seen)
    times = {"serial": 1.0, "fused2": 0.9, "fused4": 0.95, "hopper": 0.7}
    calls = []
    pod = create("POD", plan="measured")
    pod.measure = fake_measure(times, calls)
    run = pod.prepare(batch := HybridBatch.allocate(SPEC, "cpu", seed=5))
    impl = pod.info()["impl"]
    assert impl.startswith("gluon hopper pod bn") and "(plan measured: measured hopper 0.7 < serial 1 ms" in impl
    assert check_outputs(run(), reference_outputs(batch), SPEC.dtype).ok
    pod.prepare(batch2 := HybridBatch.allocate(SPEC, "cpu", seed=6))()
    assert len(calls) == 4 and pod.info()["impl"] == impl and seen[-1] == "hopper pod"
    # hopper_fused false, or a Triton knob set (table 7's split), leaves it out
    for options in ({"hopper_fused": False}, {"prefill_split": "vanilla"}):
        calls.clear()
        off = create("POD", plan="measured", **options)
        off.measure = fake_measure(times, calls)
        off.prepare(batch2)
        assert sorted(calls) == ["fused2", "fused4", "serial"] and off.info()["impl"].startswith("triton cps2 ")
    with pytest.raises(ValueError, match="hopper_fused"):
        PodConfig(hopper_fused="yes")


def test_measured_choice_names_the_hopper_kernel():
    c = measured_choice({"serial": 1.0, "fused2": 0.9, "hopper": 0.8})
    assert (c.kind, c.ctas_per_sm) == ("hopper", 0) and "measured hopper 0.8 < serial 1 ms" in c.describe()
    assert measured_choice({"serial": 1.0, "hopper": 0.99}).kind == "serial"


def test_measured_choice_never_takes_a_rejected_candidate():
    times = {"serial": 1.0, "fused2": 0.5, "fused4": 0.9}
    c = measured_choice(times, rejected={"fused2": 0.31})
    assert (c.kind, c.ctas_per_sm) == ("fused", 4) and "fused2" not in c.predicted_ms
    assert c.rejected == {"fused2": 0.31} and "; fused2 rejected (differs from serial by 0.31)" in c.describe()
    c = measured_choice(times, rejected={"fused2": 0.31, "fused4": float("inf")})
    assert c.kind == "serial" and c.describe().startswith("plan measured; fused2 rejected")


def test_pod_leaves_out_a_fast_candidate_that_computes_something_else(monkeypatch):
    """A candidate whose outputs differ from the serial path's is never chosen, however fast: the
    plan compares each candidate's outputs with serial's on the batch it times."""
    import kernels.adapters.pod_triton as adapter
    seen = []
    _hopper_stand_in(monkeypatch, seen)
    right = adapter.prepare_hopper

    def wrong_hopper(batch, mode="prefill", config=None):
        run, plan = right(batch, mode, config)
        if mode == "prefill":
            return run, plan

        def off_by_a_key():
            return {p: o * 0.9 for p, o in run().items()}
        off_by_a_key.hopper = True
        return off_by_a_key, plan
    monkeypatch.setattr(adapter, "prepare_hopper", wrong_hopper)
    pod = create("POD", plan="measured")
    pod.measure = fake_measure({"serial": 1.0, "fused2": 0.95, "fused4": 0.9, "hopper": 0.1}, [])
    batch = HybridBatch.allocate(SPEC, "cpu", seed=5)
    out = pod.prepare(batch)()
    (choice,) = pod.measured.values()
    assert choice.kind == "fused" and choice.ctas_per_sm == 4 and set(choice.rejected) == {"hopper"}
    assert choice.rejected["hopper"] > 0.05 and "hopper rejected" in pod.info()["impl"]
    assert check_outputs(out, reference_outputs(batch), SPEC.dtype).ok
