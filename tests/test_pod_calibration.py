"""The calibrated plan of our Triton POD kernel (kernels/pod/calibration.py, plan.choose_execution):
the fit recovers a known model, the chooser follows the predictions, calibrations travel as JSON and
are found per device, and POD is correct whichever way it runs."""
import dataclasses
import json
import random

import pytest
import torch

from kernels.pod import calibration as calmod
from kernels.pod.calibration import (DEFAULT_SHAPES, Calibration, CalibrationShape, FusedParams, ShapeParams, fit,
                                     for_device, measure, nominal, probes)
from kernels.pod.plan import MODE_POD, PodConfig, choose_execution, make_plan
from kernels.reference import check_outputs, reference_outputs
from kernels.registry import create
from kernels.workload import BatchSpec, HybridBatch, ModelShape

# A known model per calibrated shape, each unlike the nominal one and unlike the others.
TRUE = {
    "d128-q32-kv8": ShapeParams(0.012, 1e3 / 450, 0.008, 1e3 / 4200,
                                {2: FusedParams(0.004, 1.12, 1.06, 0.30), 4: FusedParams(0.006, 1.40, 0.98, 0.18)}),
    "d128-q4-kv1": ShapeParams(0.020, 1e3 / 300, 0.010, 1e3 / 3800,
                               {2: FusedParams(0.003, 1.30, 1.10, 0.55), 4: FusedParams(0.005, 1.60, 1.02, 0.45)}),
    "d256-q8-kv1": ShapeParams(0.015, 1e3 / 380, 0.009, 1e3 / 4000,
                               {2: FusedParams(0.008, 2.10, 1.50, 1.20), 4: FusedParams(0.010, 2.40, 1.30, 1.40)}),
}


def synthetic_timer(truth, noise=0.0, seed=0):
    """probe -> ms from a known model, times (1 + uniform noise)."""
    rng = random.Random(seed)

    def timer(probe):
        p = truth[probe.shape]
        tflop, gb = calmod.work(probe.spec)
        tp, td = p.prefill_time(tflop), p.decode_time(gb)
        t = {"prefill": tp, "decode": td, "serial": tp + td}.get(probe.kind)
        if probe.kind == "fused":
            t = p.fused[probe.ctas_per_sm].predict(tp, td)
        return t * (1 + rng.uniform(-noise, noise))
    return timer


def _close(got, want, rel, abs_=0.0):
    return abs(got - want) <= rel * abs(want) + abs_


def test_probes_cover_the_required_batches():
    ps = probes()
    assert {p.shape for p in ps} == {s.name for s in DEFAULT_SHAPES}
    assert len({s.head_dim for s in DEFAULT_SHAPES}) >= 2 and len({s.q_heads // s.kv_heads for s in DEFAULT_SHAPES}) >= 2
    for s in DEFAULT_SHAPES:
        kinds = {(p.kind, p.ctas_per_sm, p.spec.has_prefill, p.spec.has_decode) for p in ps if p.shape == s.name}
        assert {("prefill", 0, True, False), ("decode", 0, False, True), ("serial", 0, True, True),
                ("fused", 2, True, False), ("fused", 4, False, True), ("fused", 2, True, True),
                ("fused", 4, True, True)} <= kinds
        # the hybrids span prefill:decode ratios from below 0.05 to above 5 (at the nominal rates)
        nom = nominal()
        ratios = [nom.predict(p.spec).prefill / nom.predict(p.spec).decode for p in ps
                  if p.shape == s.name and p.kind == "serial"]
        assert min(ratios) < 0.1 and max(ratios) > 5


def test_fit_recovers_a_known_model_exactly_without_noise():
    cal = measure(torch.device("cpu"), timer=synthetic_timer(TRUE))
    for name, want in TRUE.items():
        got = cal.params[name]
        for f in ("prefill_ms", "prefill_ms_per_tflop", "decode_ms", "decode_ms_per_gb"):
            assert _close(getattr(got, f), getattr(want, f), 1e-6, 1e-9), (name, f)
        for c in (2, 4):
            for f in ("overhead_ms", "prefill_slowdown", "decode_slowdown", "beta"):
                assert _close(getattr(got.fused[c], f), getattr(want.fused[c], f), 1e-6, 1e-9), (name, c, f)
        assert max(cal.fit_error[name].values()) < 1e-6


def test_fit_recovers_a_known_model_with_noise():
    cal = measure(torch.device("cpu"), timer=synthetic_timer(TRUE, noise=0.02, seed=3))
    for name, want in TRUE.items():
        got = cal.params[name]
        assert _close(got.prefill_ms_per_tflop, want.prefill_ms_per_tflop, 0.05)
        assert _close(got.decode_ms_per_gb, want.decode_ms_per_gb, 0.05)
        assert _close(got.prefill_ms, want.prefill_ms, 0.0, 0.006)
        assert _close(got.decode_ms, want.decode_ms, 0.0, 0.006)
        for c in (2, 4):
            g, w = got.fused[c], want.fused[c]
            assert _close(g.prefill_slowdown, w.prefill_slowdown, 0.06)
            assert _close(g.decode_slowdown, w.decode_slowdown, 0.06)
            assert _close(g.beta, w.beta, 0.0, 0.12)
        # the fitted model predicts every measured launch within a few per cent
        assert max(cal.fit_error[name].values()) < 0.05
    # and, batch by batch, it makes the choice the true model makes wherever the two differ clearly
    truth = dataclasses.replace(cal, params=TRUE)
    for p in probes():
        if p.kind != "serial":
            continue
        t, f = truth.predict(p.spec), cal.predict(p.spec)
        gap = min(t.fused.values()) / t.serial - 1
        if abs(gap) > 0.1:
            assert (min(f.fused.values()) < f.serial) == (gap < 0), (p, gap)


def test_fit_needs_both_parts_alone():
    recs = [calmod.measurement(p, 1.0) for p in probes(DEFAULT_SHAPES[:1]) if p.kind != "decode"]
    with pytest.raises(ValueError, match="decode-alone"):
        fit(recs, DEFAULT_SHAPES[:1])


def calibration_with(fused2: FusedParams, fused4: FusedParams, shape=("any", 32, 8, 128)) -> Calibration:
    s = CalibrationShape(*shape)
    cal = nominal()
    return dataclasses.replace(cal, nominal=False, gpu_name="Test GPU", sm_count=8, shapes=[dataclasses.asdict(s)],
                               params={s.name: ShapeParams(0.01, 2.5, 0.01, 0.3, {2: fused2, 4: fused4})})


HYBRID = BatchSpec(ModelShape("m", 32, 8, 128), prefill_len=1024, prefill_kv_len=8192, decode_batch=64,
                   decode_ctx=8192)


def test_chooser_picks_serial_when_fused_is_predicted_slower():
    slow = calibration_with(FusedParams(0.01, 1.2, 1.1, 1.3), FusedParams(0.01, 1.5, 1.0, 1.1))
    pred = slow.predict(HYBRID)
    assert min(pred.fused.values()) > pred.serial
    choice = choose_execution(HYBRID, PodConfig(plan="model"), slow)
    assert (choice.kind, choice.ctas_per_sm, choice.rule) == ("serial", 0, "model")
    assert choice.predicted_ms["serial"] == pytest.approx(pred.serial)
    # a fixed CTA count or the former rule always fuses, whatever the model says
    assert choose_execution(HYBRID, PodConfig(ctas_per_sm=4), slow).kind == "fused"
    assert choose_execution(HYBRID, PodConfig(plan="thresholds"), slow).kind == "fused"


@pytest.mark.parametrize("best", [2, 4])
def test_chooser_picks_the_faster_fused_set(best):
    good, worse = FusedParams(0.005, 1.1, 1.0, 0.2), FusedParams(0.005, 1.3, 1.2, 0.5)
    cal = calibration_with(*((good, worse) if best == 2 else (worse, good)))
    choice = choose_execution(HYBRID, PodConfig(plan="model"), cal)
    assert (choice.kind, choice.ctas_per_sm) == ("fused", best)
    # make_plan's own CTA choice agrees with it
    assert make_plan(HYBRID, MODE_POD, 132, PodConfig(plan="model"), calibration=cal).ctas_per_sm == best
    assert f"fused{best}" in choice.describe() and cal.ident in choice.describe()


def test_chooser_margin_keeps_near_ties_serial():
    cal = calibration_with(FusedParams(0.0, 1.0, 1.0, 0.98), FusedParams(0.0, 1.0, 1.0, 0.99))
    pred = cal.predict(HYBRID)
    assert 0.98 < min(pred.fused.values()) / pred.serial < 1.0  # predicted a little faster fused
    assert choose_execution(HYBRID, PodConfig(plan="model"), cal).kind == "serial"
    assert choose_execution(HYBRID, PodConfig(plan="model", fuse_margin=0.0), cal).kind == "fused"
    with pytest.raises(ValueError, match="timing"):
        choose_execution(HYBRID, PodConfig(), cal)      # the default plan is measured, not predicted
    with pytest.raises(ValueError, match="fuse_margin"):
        PodConfig(fuse_margin=1.5)
    with pytest.raises(ValueError, match="plan"):
        PodConfig(plan="guess")


def test_nearest_calibrated_shape_is_used():
    cal = measure(torch.device("cpu"), timer=synthetic_timer(TRUE))
    assert cal.params_for(ModelShape("a", 32, 8, 128))[0] == "d128-q32-kv8"
    assert cal.params_for(ModelShape("b", 4, 1, 128))[0] == "d128-q4-kv1"
    assert cal.params_for(ModelShape("c", 8, 2, 128))[0] == "d128-q4-kv1"
    assert cal.params_for(ModelShape("d", 32, 1, 256))[0] == "d256-q8-kv1"   # same tile set first
    assert cal.params_for(ModelShape("e", 64, 8, 64))[0] == "d128-q32-kv8"


def test_json_round_trip(tmp_path):
    cal = measure(torch.device("cpu"), timer=synthetic_timer(TRUE, noise=0.01))
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal and back.ident == cal.ident and not back.nominal
    path = cal.save(tmp_path / "c.json")
    assert Calibration.load(path) == cal
    assert Calibration.load(path).predict(HYBRID) == cal.predict(HYBRID)
    assert len(cal.measurements) == len(probes()) and cal.code_hash == calmod.code_hash()
    other = dataclasses.replace(cal, params={**cal.params, "d128-q32-kv8": TRUE["d128-q4-kv1"]})
    assert other.ident != cal.ident
    bad = cal.to_dict() | {"format": 99}
    with pytest.raises(ValueError, match="format"):
        Calibration.from_dict(bad)
    assert nominal().ident == "nominal" and any("nominal" in line for line in nominal().describe())


def test_for_device_reads_the_file_named_by_the_environment(tmp_path, monkeypatch):
    calmod.clear_memo()
    cal = calibration_with(FusedParams(0.01, 1.2, 1.1, 1.3), FusedParams(0.01, 1.5, 1.0, 1.1))
    path = cal.save(tmp_path / "mine.json")
    monkeypatch.setenv("POD_CALIBRATION", str(path))
    assert for_device(torch.device("cpu")) == cal
    monkeypatch.setenv("POD_CALIBRATION", str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        for_device(torch.device("cpu"))
    monkeypatch.delenv("POD_CALIBRATION")
    assert for_device(torch.device("cpu")).nominal
    calmod.clear_memo()


def test_for_device_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    calmod.clear_memo()
    monkeypatch.delenv("POD_CALIBRATION", raising=False)
    monkeypatch.setenv("POD_CALIBRATION_CACHE", str(tmp_path))
    monkeypatch.setattr(calmod, "device_identity", lambda device: ("Fake GPU 9", 7))
    calls = []

    def fake_measure(device, log=None, **kw):
        calls.append(device)
        return dataclasses.replace(measure(device, timer=synthetic_timer(TRUE)), gpu_name="Fake GPU 9", sm_count=7)
    monkeypatch.setattr(calmod, "measure", fake_measure)
    first = for_device("cuda:0", log=None)
    assert len(calls) == 1 and first.gpu_name == "Fake GPU 9"
    path = calmod.cache_path("Fake GPU 9", 7)
    assert path.parent == tmp_path and path.exists() and "Fake-GPU-9-7sm" in path.name
    assert for_device("cuda:0", log=None) is first   # memoised in the process
    calmod.clear_memo()
    assert for_device("cuda:0", log=None) == first   # read back from the cache file, not measured
    assert len(calls) == 1
    calmod.clear_memo()


SMALL = BatchSpec(ModelShape("t", 6, 2, 64), "float16", prefill_len=37, prefill_kv_len=101, decode_batch=5,
                  decode_ctx=77)


@pytest.mark.parametrize("fused", [False, True], ids=["serial", "fused"])
def test_pod_matches_reference_whichever_way_it_runs(fused):
    batch = HybridBatch.allocate(SMALL, "cpu", seed=11)
    ref = reference_outputs(batch)
    pod = create("POD", plan="model")
    pod.calibration = (calibration_with(FusedParams(0.0, 1.0, 1.0, 0.1), FusedParams(0.0, 1.0, 1.0, 0.5))
                       if fused else
                       calibration_with(FusedParams(0.01, 1.2, 1.1, 1.3), FusedParams(0.01, 1.5, 1.0, 1.1)))
    run = pod.prepare(batch)
    impl = pod.info()["impl"]
    if fused:
        assert impl.startswith("triton cps2 ") and "plan model" in impl and hasattr(run, "launch_state")
    else:
        assert impl.startswith("triton serial (plan model") and len(run.launch_states) == 2
    assert pod.calibration.ident in impl
    out = run()
    assert set(out) == {"prefill", "decode"}
    chk = check_outputs(out, ref, SMALL.dtype)
    assert chk.ok, chk.reason


def test_pod_serial_plan_is_our_serial():
    batch = HybridBatch.allocate(SMALL, "cpu", seed=2)
    pod, ours = create("POD", plan="model"), create("OURS_Serial")
    pod.calibration = calibration_with(FusedParams(0.01, 1.2, 1.1, 1.3), FusedParams(0.01, 1.5, 1.0, 1.1))
    a, b = pod.prepare(batch)(), ours.prepare(batch)()
    for part in a:
        assert torch.equal(a[part], b[part])
    plan = dict(pod.last_plan)
    plan.pop("choice")
    assert plan == ours.last_plan


def test_thresholds_plan_runs_the_former_rule():
    batch = HybridBatch.allocate(SMALL, "cpu", seed=4)
    pod = create("POD", plan="thresholds")
    out = pod.prepare(batch)()
    assert pod.info()["impl"].startswith("triton cps") and pod.info()["impl"].endswith("(plan thresholds)")
    assert check_outputs(out, reference_outputs(batch), SMALL.dtype).ok


def test_build_step_calibrates_only_for_methods_that_ask_the_model(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from experiments.build import calibrate_pod, calibration_path
    from kernels.registry import load_all

    calmod.clear_memo()
    monkeypatch.delenv("POD_CALIBRATION", raising=False)
    monkeypatch.setenv("POD_CALIBRATION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calmod, "device_identity", lambda device: ("Fake GPU", 7))
    monkeypatch.setattr(calmod, "measure", lambda device, log=None, **kw: measure("cpu", timer=synthetic_timer(TRUE)))
    registry, gpu = load_all(), torch.device("cuda")

    def exp(*methods):
        return SimpleNamespace(methods=[SimpleNamespace(label=f"{m}{i}", method=m, options=o)
                                        for i, (m, o) in enumerate(methods)])
    out = calibration_path(tmp_path / "build" / "figure11.json")
    assert out == tmp_path / "build" / "figure11.calibration.json"
    fixed = exp(("OURS_Serial", {}), ("POD", {"ctas_per_sm": 2}), ("POD", {"plan": "thresholds"}), ("POD", {}),
                ("FA_prefill", {}))
    assert calibrate_pod(fixed, registry, gpu, out) is None and not out.exists()
    assert calibrate_pod(exp(("POD", {"plan": "model"})), registry, torch.device("cpu"), out) is None
    rec = calibrate_pod(exp(("OURS_Serial", {}), ("POD", {"plan": "model"})), registry, gpu, out)
    assert rec["status"] == "ok" and rec["methods"] == ["POD1"] and rec["source"] == "measured now"
    assert Calibration.load(out).ident == rec["ident"]
    calmod.clear_memo()
    again = calibrate_pod(exp(("OURS_CTA", {"plan": "model"})), registry, gpu, out)
    assert again["source"].startswith("cache") and again["ident"] == rec["ident"]
    calmod.clear_memo()
