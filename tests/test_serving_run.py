"""The one command (serving/run.py): config expansion, resumability, the smoke chain GPU -> CPU."""
import json

import pandas as pd
import torch
import pytest
import yaml

from serving.run import decode_steadiness, expand_runs, load_config, main, window_plan

SMALL = {
    "name": "mini",
    "defaults": {"device": "cpu", "dtype": "float32", "model": "tiny", "num_blocks": 64, "block_size": 16,
                 "init_range": 0.05, "warmup_iterations": 1},
    "runs": [
        {"kind": "window", "id": "w-{scheduler[name]}-{backend}", "workload": {"kind": "fixed", "n": 10, "total": 96, "pd_ratio": 5},
         "skip_completed": 2, "iterations": 8,
         "matrix": {"scheduler": [{"name": "sarathi", "chunk_size": 32}, {"name": "vllm", "max_tokens": 128}],
                    "backend": ["FA_Serial"]}},
        {"kind": "online", "id": "on", "backend": "FA_Serial", "scheduler": {"name": "sarathi", "chunk_size": 32},
         "workload": {"kind": "explicit", "lengths": [[40, 5], [60, 3], [25, 7], [50, 4]], "qps": 30.0}},
        {"kind": "calibrate", "sources": ["mini"]},
        {"kind": "validate", "runs_from": "mini", "calibration": "mini"},
        {"kind": "simulate", "id": "s-{backend}", "calibration": "mini", "backend": "FA_Serial",
         "scheduler": {"name": "sarathi", "chunk_size": 32},
         "workload": {"kind": "fixed", "n": 12, "total": 96, "pd_ratio": 5, "qps": {"capacity_fraction": 0.8}}},
    ],
}


def test_expand_matrix_each_and_ids(tmp_path):
    doc = {"defaults": {"a": 1, "scheduler": {"name": "sarathi", "max_batch_size": 9}},
           "runs": [{"kind": "simulate", "id": "{model}-{scheduler[chunk_size]}-{backend}",
                     "matrix": {"each": [{"model": "m1", "scheduler": {"chunk_size": 512}},
                                         {"model": "m2", "scheduler": {"chunk_size": 1024}}],
                                "backend": ["A", "B"]}}]}
    runs = expand_runs(doc)
    assert [r["id"] for r in runs] == ["m1-512-A", "m1-512-B", "m2-1024-A", "m2-1024-B"]
    assert runs[0]["scheduler"] == {"name": "sarathi", "max_batch_size": 9, "chunk_size": 512} and runs[0]["a"] == 1
    with pytest.raises(ValueError, match="duplicate"):
        expand_runs({"runs": [{"kind": "simulate", "id": "x", "matrix": {"backend": ["A", "B"]}}]})


def test_every_shipped_config_expands(tmp_path):
    from pathlib import Path

    from serving.run import CPU_KINDS, GPU_KINDS

    paths = sorted(Path("experiments/serving").glob("*.yaml"))
    assert paths
    for path in paths:
        for smoke in (False, True):
            runs = expand_runs(load_config(path, smoke))
            assert runs, path
            assert all(r["kind"] in GPU_KINDS + CPU_KINDS for r in runs)


@pytest.mark.parametrize("sched", [{"name": "sarathi", "chunk_size": 256, "max_batch_size": 999},
                                   {"name": "vllm", "max_tokens": 4096, "max_batch_size": 999}], ids=["sarathi", "vllm"])
def test_window_over_one_cycle_estimates_the_full_run(sched):
    """Memory-bound admission makes the schedule oscillate; a window spread over one cycle of the
    exact schedule gives the full run's rate (here with a made-up latency), within 5%."""
    from serving.metrics import summarize, window_throughput
    from serving.scheduler import BlockPool, make_scheduler, serve_loop
    from serving.simulator import simulate
    from serving.trace import build_workload

    lat = lambda b, i: 0.008 + 2.5e-5 * b.num_tokens + 4e-12 * b.features()["prefill_pairs"] + 6e-9 * b.features()["decode_kv"]  # noqa: E731
    specs = build_workload({"kind": "fixed", "n": 240, "total": 2048, "pd_ratio": 8})
    blocks = 12 * 2048 // 16                      # 12 requests at once
    full = summarize(simulate(specs, sched, blocks, 16, lat).requests)["requests_per_minute"]
    plan = window_plan({"scheduler": sched, "iterations": 60, "warmup_iterations": 5}, specs, blocks, 16)
    assert plan["concurrency"] == 12 and abs(len(plan["window"]) - 60) <= 10 and plan["warmup"][-1] == plan["cycle_start"] - 1
    chosen = set(plan["window"])
    res = serve_loop(specs, make_scheduler(sched, BlockPool(blocks, 16)), lat, select=lambda f, i: i in chosen,
                     max_iterations=len(chosen))
    its = [dict(it, weight=plan["weights"][it["iteration"]]) for it in res.iterations if it["measured"]]
    assert sum(it["weight"] for it in its) == plan["cycle_iterations"]
    w = window_throughput(its, 1820, 228, plan["cycle_slots"])["window_requests_per_minute"]
    assert abs(w / full - 1) < 0.05, (w, full)


def test_smoke_chain_resumes_and_validates(tmp_path, capsys):
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "out"
    assert main([str(cfg), "--out", str(out), "--stage", "gpu"]) == 0
    runs = out / "mini" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["on", "w-sarathi-FA_Serial", "w-vllm-FA_Serial"]
    its = pd.read_csv(runs / "w-sarathi-FA_Serial" / "iterations.csv.gz")
    ws = pd.read_csv(runs / "w-sarathi-FA_Serial" / "summary.csv").iloc[0]
    # the sampled iterations stand for the whole cycle; warm-up ones for nothing
    assert its["weight"].sum() == ws["cycle_iterations"] and (its[its["warmup"]]["weight"] == 0).all()
    assert its["measured"].sum() == (its["weight"] > 0).sum() + its["warmup"].sum()
    assert ws["window_requests_per_minute"] > 0 and ws["concurrency"] == 10
    assert {"gpu_name", "torch", "git_commit", "timestamp", "run_id", "backend"} <= set(its.columns)
    reqs = pd.read_csv(runs / "on" / "requests.csv")
    assert len(reqs) == 4 and reqs["finished"].all() and (reqs["ttft"] > 0).all()
    # resumable: a second GPU pass skips what is done
    capsys.readouterr()
    assert main([str(cfg), "--out", str(out), "--stage", "gpu"]) == 0
    assert capsys.readouterr().out.count("[skip]") == 3
    assert main([str(cfg), "--out", str(out), "--stage", "cpu"]) == 0
    cal = json.loads((out / "mini" / "calibration.json").read_text())
    assert "tiny|FA_Serial" in cal["models"] and cal["kv"]["tiny"] == {"num_blocks": 64, "block_size": 16}
    val = pd.read_csv(out / "mini" / "validation.csv")
    replay = val[val["check"] == "replay"]
    assert len(replay) == 1 and replay["pass"].all()            # the simulator reproduces the engine exactly
    steady = pd.read_csv(out / "mini" / "steadiness.csv")
    assert list(steady["run_id"]) == ["on"] and steady["decode_iterations"].iloc[0] > 0
    assert set(val[val["check"] == "calibrated_model"]["metric"]) >= {"request_throughput", "ttft_p50", "e2el_p99"}
    assert not (runs / "s-FA_Serial").exists()       # derived: the simulations live apart from the measured runs
    s = pd.read_csv(out / "mini" / "sim" / "s-FA_Serial" / "summary.csv").iloc[0]
    assert s["completed"] == 12 and s["capacity_qps"] > 0 and s["qps"] == pytest.approx(0.8 * s["capacity_qps"])
    summary = pd.read_csv(out / "mini" / "summary.csv")
    assert set(summary["run_id"]) == {"w-sarathi-FA_Serial", "w-vllm-FA_Serial", "on", "s-FA_Serial"}

    # an earlier run of the same id under repeats_from: compared metric by metric, measured to measured
    import shutil

    earlier = out / "earlier" / "runs" / "on"
    shutil.copytree(runs / "on", earlier)
    s_earlier = pd.read_csv(earlier / "summary.csv")
    s_earlier["request_throughput"] *= 1.5      # far off: must fail the 5% limit
    s_earlier.to_csv(earlier / "summary.csv", index=False)
    doc = dict(SMALL, runs=[{"kind": "validate", "runs_from": "mini", "calibration": "mini", "repeats_from": "earlier"}])
    cfg.write_text(yaml.safe_dump(doc))
    assert main([str(cfg), "--out", str(out), "--stage", "cpu"]) == 0
    rep = pd.read_csv(out / "mini" / "validation.csv").query("check == 'repeat:earlier'").set_index("metric")
    assert len(rep) == 7 and not rep.loc["request_throughput", "pass"]
    assert rep.loc["request_throughput", "rel_err"] == pytest.approx(0.5)
    assert rep.drop("request_throughput")["pass"].all() and (rep.drop("request_throughput")["rel_err"] == 0).all()
    # the model against the repeat: measured = the repeat's own metrics, simulated at its load
    val = pd.read_csv(out / "mini" / "validation.csv")
    at = val.query("check == 'calibrated_model@earlier'").set_index("metric")
    own = val.query("check == 'calibrated_model'").set_index("metric")
    assert len(at) == 7
    assert at.loc["request_throughput", "measured"] == pytest.approx(1.5 * own.loc["request_throughput", "measured"])
    assert (at["simulated"] == own["simulated"]).all()   # same QPS and blocks: the same simulation


def test_decode_steadiness_compares_iterations_of_the_same_work():
    def it(n, dur, prefills=0):
        return {"num_prefills": prefills, "num_decodes": n, "duration": dur, "measured": True}
    # 1 decode: 10 iterations at 10 ms, one of them 20 ms; 4 decodes: steady at 30 ms (their own median,
    # not 1 decode's); a hybrid iteration does not count
    its = [it(1, 0.010)] * 9 + [it(1, 0.020)] + [it(4, 0.030)] * 10 + [it(4, 0.5, prefills=1)]
    got = decode_steadiness(its)
    assert got["decode_iterations"] == 20
    p90 = pd.Series([0.010] * 9 + [0.020]).quantile(0.9) / 0.010
    assert got["p90_over_median"] == pytest.approx((p90 * 10 + 1.0 * 10) / 20)
    assert got["share_over_1.3x_median"] == pytest.approx(1 / 20)
    assert decode_steadiness([it(0, 0.1, prefills=1)]) == {"decode_iterations": 0}
    assert decode_steadiness([]) == {"decode_iterations": 0}


def test_time_budget_leaves_runs_for_the_next_call(tmp_path, capsys):
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    assert main([str(cfg), "--out", str(tmp_path / "o"), "--stage", "gpu", "--time-budget", "0"]) == 0
    assert "not started" in capsys.readouterr().out
    assert not (tmp_path / "o" / "mini" / "runs").exists()


def test_run_tags_fill_but_never_overwrite_a_tables_columns(tmp_path):
    """check.csv has one row per backend: the run's (absent) backend tag must not blank it (the
    figure-12 GPU check came back with an empty backend column); a breakdown table has no
    backend column and takes the run's."""
    from serving.run import _write_run

    check = pd.DataFrame([{"backend": "FA_Serial", "ok": True}, {"backend": "POD", "ok": False}])
    _write_run(tmp_path / "c", {"id": "c", "kind": "check", "model": "tiny"}, {"gpu_name": "g"}, {"backends": 2},
               extra_csv=("check.csv", check))
    out = pd.read_csv(tmp_path / "c" / "check.csv")
    assert out["backend"].tolist() == ["FA_Serial", "POD"] and out["kind"].tolist() == ["check"] * 2
    assert out["gpu_name"].tolist() == ["g"] * 2
    _write_run(tmp_path / "b", {"id": "b", "kind": "breakdown", "backend": "POD"}, {}, {"contexts": 1},
               extra_csv=("breakdown.csv", pd.DataFrame([{"context": 1024, "total_s": 0.1}])))
    assert pd.read_csv(tmp_path / "b" / "breakdown.csv")["backend"].tolist() == ["POD"]


def test_profile_times_the_grid_and_feeds_the_calibration(tmp_path):
    doc = {"name": "prof", "defaults": SMALL["defaults"],
           "runs": [{"kind": "profile", "id": "p-{backend}", "backend": "FA_Serial", "repeats": 1, "passes": 2,
                     "prefill": [[0, 0], [16, 16], [32, 200]], "decodes": [[0, 0], [3, 40], [40, 300]],
                     "points": [[100, 100, 0, 0], [16, 900, 0, 0]]},
                    {"kind": "calibrate", "sources": ["prof"]}]}
    cfg = tmp_path / "prof.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main([str(cfg), "--out", str(out)]) == 0
    run = out / "prof" / "runs" / "p-FA_Serial"
    its = pd.read_csv(run / "iterations.csv.gz")
    summ = pd.read_csv(run / "summary.csv").iloc[0]
    # 3 x 3 grid minus the empty batch; 40 decodes of 300 keys (40 x 19 blocks) and a 900-key prefill
    # do not fit 64 blocks of 16 tokens: skipped, and said so
    assert summ["skipped_not_fitting"] == 3 and summ["points"] == len(its) == 3 * 3 - 1 - 2 + 1
    assert set(zip(its["prefill_tokens"], its["num_decodes"])) == {(0, 3), (16, 0), (16, 3), (32, 0), (32, 3), (100, 0)}
    assert (its["duration"] > 0).all() and its["measured"].all() and not its["warmup"].any()
    # two passes over the grid, one run of each point per pass: the median of 2
    assert (its["repeats"] == 2).all() and summ["passes"] == 2
    assert ((its["duration_min"] <= its["duration"]) & (its["duration"] <= its["duration_max"])).all()
    assert (its["kind"] == "profile").all() and (its[its["prefill_tokens"] == 32]["prefill_kv"] == 200).all()
    cal = json.loads((out / "prof" / "calibration.json").read_text())
    assert "tiny|FA_Serial" in cal["models"] and cal["models"]["tiny|FA_Serial"]["stats"]["n"] == len(its)


def test_build_stage_writes_its_marker_and_compiles_nothing_on_the_cpu(tmp_path, capsys):
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    assert main([str(cfg), "--out", str(tmp_path / "o"), "--stage", "build", "--device", "cpu"]) == 0
    marker = json.loads((tmp_path / "o" / "build" / "serving_kernels.json").read_text())
    assert marker["device"] == "cpu" and marker["methods"] == {} and "nothing to compile" in capsys.readouterr().out


def test_build_stage_lists_every_gpu_runs_kernels(tmp_path, monkeypatch):
    import experiments.build as kernel_build
    import serving.run as srun

    seen = {}
    monkeypatch.setattr(kernel_build, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    doc = {"name": "b", "defaults": {"model": "llama-3-8b"},
           "runs": [{"kind": "window", "id": "w-{backend}", "matrix": {"backend": ["FA_Serial", "FI_POD"]}},
                    {"kind": "check", "id": "c", "model": "yi-6b", "backends": ["POD"]},
                    {"kind": "simulate", "id": "s", "backend": "FI_Batched"}]}   # CPU stage: nothing to build
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert srun.build_kernels([str(cfg)], tmp_path / "o", device="cuda") == 0
    exp = yaml.safe_load((tmp_path / "o" / "build" / "serving_kernels.yaml").read_text())
    assert exp["methods"] == ["FA_prefill", "FA_decode", "FI_POD", "FI_prefill_fa2", "FI_decode",
                              "OURS_prefill", "OURS_decode", "POD"]
    assert [(c["model"]["q_heads"], c["model"]["kv_heads"]) for c in exp["configs"]] == [(32, 8), (32, 4)]
    assert seen["argv"][0].endswith("serving_kernels.yaml")
    from experiments.grid import load_experiment

    assert load_experiment(str(tmp_path / "o" / "build" / "serving_kernels.yaml")).name == "serving_kernels"


def test_profile_decode_sets_of_unequal_lengths(tmp_path):
    from serving.engine import Engine
    from serving.kv_cache import KVCache
    from serving.model import MODELS

    eng = Engine(MODELS["tiny"], "FA_Serial", "cpu", torch.float32, cache=KVCache(MODELS["tiny"], 64, 16,
                                                                                 torch.float32, "cpu"))
    f = eng.synthetic_batch(0, 0, 4, 100, shortest=10).features()
    assert (f["num_decodes"], f["decode_kv_max"], f["decode_kv"]) == (4, 100, 10 + 40 + 70 + 100)
    assert eng.synthetic_batch(0, 0, 3, 50).features()["decode_kv"] == 150
    with pytest.raises(ValueError, match="shortest"):
        eng.synthetic_batch(0, 0, 3, 50, shortest=60)
    doc = {"name": "prof", "defaults": SMALL["defaults"],
           "runs": [{"kind": "profile", "id": "p-{backend}", "backend": "FA_Serial", "repeats": 1,
                     "prefill": [[0, 0], [16, 16]], "decodes": [[3, 90, 30], [2, 40]], "points": [[0, 0, 5, 80, 8]]}]}
    cfg = tmp_path / "prof.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main([str(cfg), "--out", str(tmp_path / "out")]) == 0
    its = pd.read_csv(tmp_path / "out" / "prof" / "runs" / "p-FA_Serial" / "iterations.csv.gz")
    assert sorted(zip(its["num_decodes"], its["decode_kv"], its["decode_kv_max"])) == [
        (2, 80, 40), (2, 80, 40), (3, 180, 90), (3, 180, 90), (5, 8 + 26 + 44 + 62 + 80, 80)]
    doc["runs"][0]["points"] = [[0, 0, 5]]
    cfg.write_text(yaml.safe_dump(doc))
    assert main([str(cfg), "--out", str(tmp_path / "out2")]) != 0


def test_same_load_as_repeats_an_online_run_at_its_recorded_qps(tmp_path, capsys):
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    first, again = tmp_path / "first", tmp_path / "again"
    assert main([str(cfg), "--out", str(first), "--stage", "gpu", "--only", "on"]) == 0
    f = first / "mini" / "runs" / "on" / "summary.csv"
    s = pd.read_csv(f)
    s["qps"] = 7.25            # not the YAML's load: the repeat must take this one
    s.to_csv(f, index=False)
    assert main([str(cfg), "--out", str(again), "--stage", "gpu", "--only", "on", "--same-load-as", str(first)]) == 0
    r = pd.read_csv(again / "mini" / "runs" / "on" / "summary.csv").iloc[0]
    assert r["qps"] == 7.25 and r["qps_from"].endswith("first/mini/runs/on/summary.csv")
    # nothing to take the load from: that run fails, said so
    capsys.readouterr()
    assert main([str(cfg), "--out", str(tmp_path / "third"), "--stage", "gpu", "--only", "on", "--force",
                 "--same-load-as", str(tmp_path / "none")]) == 1
    assert "--same-load-as: no" in capsys.readouterr().err
