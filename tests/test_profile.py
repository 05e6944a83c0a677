"""Nsight Compute output parsing, per-call reduction and the join into the aggregated table."""
import pandas as pd
import pytest

from analysis.aggregate import ncu_columns
from experiments.profile import TIME_METRIC, parse_ncu_csv, reduce_metrics

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
          '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def _line(kid, kernel, metric, unit, value):
    return (f'"{kid}","1","python3","h","{kernel}","1","7","(128, 1, 1)","(264, 1, 1)","0","9.0",'
            f'"Command line profiler metrics","{metric}","{unit}","{value}"')


LOG = "\n".join([
    "==PROF== Connected to process 1",  # ncu's own lines come before the CSV header
    HEADER,
    _line(0, "prefill_kernel", TIME_METRIC, "ns", "3,000"),
    _line(0, "prefill_kernel", "sm__throughput.avg.pct_of_peak_sustained_elapsed", "%", "80"),
    _line(0, "prefill_kernel", "dram__throughput.avg.pct_of_peak_sustained_elapsed", "%", "10"),
    _line(1, "combine_kernel", TIME_METRIC, "ns", "1000"),
    _line(1, "combine_kernel", "sm__throughput.avg.pct_of_peak_sustained_elapsed", "%", "20"),
    _line(1, "combine_kernel", "dram__throughput.avg.pct_of_peak_sustained_elapsed", "%", "n/a"),
])


def test_reduce_weights_percentages_by_kernel_time():
    rows = parse_ncu_csv(LOG)
    assert len(rows) == 6
    values, kernels = reduce_metrics(rows, ["sm__throughput.avg.pct_of_peak_sustained_elapsed",
                                            "dram__throughput.avg.pct_of_peak_sustained_elapsed",
                                            "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed"])
    assert kernels == 2
    assert values["ncu_time_ms"] == pytest.approx(4e-3)
    assert values["sm__throughput.avg.pct_of_peak_sustained_elapsed"] == pytest.approx((3000 * 80 + 1000 * 20) / 4000)
    # "n/a" on one kernel: the mean is over the kernels that report it
    assert values["dram__throughput.avg.pct_of_peak_sustained_elapsed"] == pytest.approx(10)
    assert "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed" not in values


def test_no_header_means_no_rows():
    assert parse_ncu_csv("==ERROR== the application returned an error code (1)") == []
    assert reduce_metrics([], ["x__y"]) == ({}, 0)


def test_ncu_columns_join():
    long = pd.DataFrame([
        {"row_key": "r1", "method": "POD", "metric": "sm__throughput.avg.pct_of_peak_sustained_elapsed", "value": 70.0, "status": "ok"},
        {"row_key": "r1", "method": "POD", "metric": "ncu_time_ms", "value": 1.5, "status": "ok"},
        {"row_key": "r1", "method": "FA_decode", "metric": None, "value": None, "status": "unavailable"},
        {"row_key": "r2", "method": "POD", "metric": None, "value": None, "status": "error"},
    ])
    wide = ncu_columns(long)
    assert wide.loc["r1", "ncu_sm__throughput_POD"] == 70.0
    assert wide.loc["r1", "ncu_time_ms_POD"] == 1.5
    assert pd.isna(wide.loc["r2", "ncu_sm__throughput_POD"])
    assert wide.loc["r2", "ncu_status_POD"] == "error" and wide.loc["r1", "ncu_status_FA_decode"] == "unavailable"


EXPERIMENT = """\
name: profile_resume
description: two tiny batches, three methods, for the resume test
plot: generic
baseline: OURS_prefill
configs:
  - {model: {name: tiny-gqa2, q_heads: 4, kv_heads: 2, head_dim: 64}, dtype: float16, prefill_len: 16,
     prefill_kv_len: 48, decode_batch: 2, decode_ctx: 32}
  - {model: {name: tiny-gqa2, q_heads: 4, kv_heads: 2, head_dim: 64}, dtype: float16, prefill_len: 32,
     prefill_kv_len: 64, decode_batch: 3, decode_ctx: 32}
methods: [OURS_prefill, OURS_decode, POD]
timing: {warmup: 0, repeats: 1, calls: 1}
filter: {min_part_fraction: 0.0}
profile:
  ncu_metrics: [sm__throughput.avg.pct_of_peak_sustained_elapsed]
"""


def test_profile_resumes_from_its_journal(tmp_path, monkeypatch):
    """With --journal a killed profile keeps its finished calls; the rerun profiles only the rest and
    writes --out whole from the journal (ncu and the GPU replaced by fakes)."""
    from types import SimpleNamespace

    import torch

    import experiments.profile as P
    import experiments.provenance as prov

    yaml = tmp_path / "profile_resume.yaml"
    yaml.write_text(EXPERIMENT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda dev: SimpleNamespace(total_memory=80e9, multi_processor_count=132))
    monkeypatch.setattr(prov, "provenance", lambda dev: {c: "" for c in prov.COLUMNS})
    monkeypatch.setattr(P, "ncu_binary", lambda ncu: "ncu")
    monkeypatch.setattr(P, "known_metric_bases", lambda ncu: None)
    calls, kill_after = [], [4]

    def fake_profile_one(ncu, experiment, row_key, label, metrics):
        if len(calls) == kill_after[0]:
            raise KeyboardInterrupt  # the job is killed while this call runs
        calls.append((row_key, label))
        return "ok", "", {"ncu_time_ms": 0.5, metrics[0]: 60.0}, 2

    monkeypatch.setattr(P, "_profile_one", fake_profile_one)
    journal, out = tmp_path / "journal" / "profile.csv", tmp_path / "raw" / "profile.csv"
    with pytest.raises(KeyboardInterrupt):
        P.profile_experiment(str(yaml), str(out), progress=False, journal=str(journal))
    assert not out.exists() and len(pd.read_csv(journal)) == 4 * 2   # 4 calls of 2 lines each
    first = list(calls)

    kill_after[0] = None
    counts = P.profile_experiment(str(yaml), str(out), progress=False, journal=str(journal))
    assert counts == {"ok": 2} and not set(calls[4:]) & set(first)   # only the 2 calls not finished
    df = pd.read_csv(out)
    assert len(df) == 6 * 2 and set(map(tuple, df[["row_key", "method"]].values)) == set(calls)
    assert df.equals(pd.read_csv(journal))

    # a complete journal: nothing is profiled again, --out is written again from it
    out.unlink()
    assert P.profile_experiment(str(yaml), str(out), progress=False, journal=str(journal)) == {}
    assert len(calls) == 6 and pd.read_csv(out).equals(df)
