"""analysis.timeline on synthetic CTA traces with known overlaps, and figures.pod_timeline's PNG
from them (a GPU-like trace, an all-zero CPU trace, no trace at all)."""
import gzip

import numpy as np
import pandas as pd
import pytest

from analysis.timeline import main as timeline_main
from analysis.timeline import running_series, summarize
from experiments.sweep import open_csv
from figures.plot import main as plot_main

R1, R2 = "m|float16|p64@128|d2x256|ps16", "m|float16|p32@64|d4x128|ps16"

# Launch (R1, M1) on 2 SMs, times in us; over its makespan of 20:
#   [0, 4)   two prefill CTAs, no decode          -> only prefill 4
#   [4, 10)  one prefill CTA, one decode CTA     -> both 6 (decode D1 ends at 8 as D2 starts)
#   [10, 15) decode D2 alone                     -> only decode 5
#   [15, 18) nothing                             -> idle 3
#   [18, 20) decode D3 alone                     -> only decode 2 (7 in all)
CTAS_R1_M1 = [  # (op, sm, start, end)
    (0, 0, 0.0, 10.0), (0, 1, 0.0, 4.0),
    (1, 1, 4.0, 8.0), (1, 1, 8.0, 15.0), (1, 0, 18.0, 20.0),
]


def _line(row_key, method, status="ok", pid=None, op=None, sm=None, start=None, end=None, sm_count=2):
    return {"experiment": "exp", "row_key": row_key, "method": method, "status": status,
            "reason": "" if status == "ok" else "output differs", "impl": "triton test", "pid": pid,
            "op": op, "cta": pid, "sm": sm, "start_us": start, "end_us": end,
            "gpu_name": "NVIDIA H100 80GB HBM3", "sm_count": sm_count}


def synthetic_ctas() -> pd.DataFrame:
    """(R1, M1) as above, (R1, M2) failed its check (no CTAs), (R2, M1) shorter and overlapping."""
    lines = [_line(R1, "M1", pid=i, op=op, sm=sm, start=s, end=e) for i, (op, sm, s, e) in enumerate(CTAS_R1_M1)]
    lines.append(_line(R1, "M2", status="failed_check"))
    # (R2, M1): prefill 0-6 and decode 2-6 -> only prefill 2, both 4, makespan 6
    lines += [_line(R2, "M1", pid=0, op=0, sm=0, start=0.0, end=6.0),
              _line(R2, "M1", pid=1, op=1, sm=1, start=2.0, end=6.0)]
    return pd.DataFrame(lines)


def zero_ctas() -> pd.DataFrame:
    """What the Triton interpreter records on the CPU: every time 0, no SM count."""
    return pd.DataFrame([_line(R1, m, pid=i, op=i % 2, sm=i, start=0.0, end=0.0, sm_count=np.nan)
                         for m in ("M1", "M2") for i in range(3)])


def _brute_running(ctas: pd.DataFrame, row_key, method, t):
    """Running CTAs per part at time t, CTA by CTA (start <= t < end)."""
    g = ctas[(ctas["row_key"] == row_key) & (ctas["method"] == method) & (ctas["status"] == "ok")]
    running = (g["start_us"] <= t) & (t < g["end_us"])
    return int((running & (g["op"] == 0)).sum()), int((running & (g["op"] == 1)).sum())


def test_summary_known_overlaps():
    s = summarize(synthetic_ctas()).set_index(["row_key", "method"])
    a = s.loc[(R1, "M1")]
    assert a["status"] == "ok" and not a["zero_times"]
    assert a["makespan_us"] == pytest.approx(20.0)
    assert (a["only_prefill_us"], a["both_us"], a["only_decode_us"], a["idle_us"]) == pytest.approx((4, 6, 7, 3))
    assert (a["only_prefill_frac"], a["both_frac"], a["only_decode_frac"]) == pytest.approx((0.2, 0.3, 0.35))
    assert (a["prefill_ctas"], a["decode_ctas"], a["sm_count"]) == (2, 3, 2)
    assert (a["decode_start_us"], a["decode_end_us"], a["prefill_end_us"]) == pytest.approx((4, 20, 10))
    assert a["prefill_busy_us"] == pytest.approx(14) and a["decode_busy_us"] == pytest.approx(13)
    # running CTAs per SM, averaged over the makespan: busy / (makespan x SMs)
    assert a["prefill_mean_ctas_per_sm"] == pytest.approx(14 / 40)
    assert a["decode_mean_ctas_per_sm"] == pytest.approx(13 / 40)

    b = s.loc[(R2, "M1")]
    assert (b["makespan_us"], b["only_prefill_us"], b["both_us"], b["only_decode_us"]) == pytest.approx((6, 2, 4, 0))

    failed = s.loc[(R1, "M2")]
    assert failed["status"] == "failed_check" and np.isnan(failed["makespan_us"])
    assert list(s.index) == [(R1, "M1"), (R1, "M2"), (R2, "M1")]  # trace order kept


def test_series_matches_cta_by_cta_counts():
    ctas = synthetic_ctas()
    series = running_series(ctas, points=21)
    assert set(zip(series["row_key"], series["method"])) == {(R1, "M1"), (R2, "M1")}  # no failed launch
    a = series[(series["row_key"] == R1) & (series["method"] == "M1")]
    assert a["t_us"].tolist() == pytest.approx(list(range(21)))  # 21 points over [0, 20]
    assert a["running_prefill"].tolist() == [2] * 4 + [1] * 6 + [0] * 11
    assert a["running_decode"].tolist() == [0] * 4 + [1] * 11 + [0] * 3 + [1] * 2 + [0]
    for (row_key, method), g in series.groupby(["row_key", "method"]):
        for t, p, d in zip(g["t_us"], g["running_prefill"], g["running_decode"]):
            assert (p, d) == _brute_running(ctas, row_key, method, t)


def test_random_trace_agrees_with_brute_force():
    rng = np.random.default_rng(3)
    n = 300
    start = rng.uniform(0, 50, n).round(1)  # rounded: many ties between starts and ends
    ctas = pd.DataFrame([_line(R1, "M1", pid=i, op=int(rng.integers(2)), sm=int(rng.integers(8)), start=s,
                               end=s + round(float(rng.uniform(0, 20)), 1), sm_count=8)
                         for i, s in enumerate(start)])
    series = running_series(ctas, points=57)
    for t, p, d in zip(series["t_us"], series["running_prefill"], series["running_decode"]):
        assert (p, d) == _brute_running(ctas, R1, "M1", t)
    # time shares from a fine sampling of the makespan (midpoints of 0.1 us steps, as times are rounded)
    s = summarize(ctas).iloc[0]
    lo, hi = ctas["start_us"].min(), ctas["end_us"].max()
    mids = np.arange(lo, hi, 0.1) + 0.05
    counts = np.array([_brute_running(ctas, R1, "M1", t) for t in mids])
    p, d = counts[:, 0] > 0, counts[:, 1] > 0
    assert s["only_prefill_us"] == pytest.approx(0.1 * (p & ~d).sum(), abs=1e-6)
    assert s["both_us"] == pytest.approx(0.1 * (p & d).sum(), abs=1e-6)
    assert s["only_decode_us"] == pytest.approx(0.1 * (~p & d).sum(), abs=1e-6)
    assert s["prefill_mean_ctas_per_sm"] == pytest.approx(counts[:, 0].sum() * 0.1 / ((hi - lo) * 8))


def test_all_zero_times_are_flagged_not_divided():
    s = summarize(zero_ctas())
    assert s["zero_times"].tolist() == [True, True]
    assert s["makespan_us"].isna().all() and s["both_frac"].isna().all()
    assert s["prefill_mean_ctas_per_sm"].isna().all()
    assert s["prefill_ctas"].tolist() == [2, 2] and s["decode_ctas"].tolist() == [1, 1]
    series = running_series(zero_ctas(), points=5)
    assert len(series) == 10 and (series[["running_prefill", "running_decode"]] == 0).all().all()


def test_partial_gz_file_is_gzip(tmp_path):
    path = str(tmp_path / "ctas.csv.gz.partial")
    with open_csv(path, "w") as f:
        f.write("a,b\n1,2\n")
    with gzip.open(path, "rt") as f:
        assert f.read() == "a,b\n1,2\n"


def _experiment_files(tmp_path, ctas: pd.DataFrame):
    """Experiment YAML, its wide table and summary (timed medians), and analysis.timeline's tables."""
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("name: exp\nplot: pod_timeline\nbaseline: M0\n")
    table = pd.DataFrame({"row_key": [R1, R2], "model": "m", "prefill_len": [64, 32], "prefill_kv_len": [128, 64],
                          "decode_batch": [2, 4], "decode_ctx": [256, 128], "ms_M0": [0.05, 0.02],
                          "ms_M1": [0.021, 0.007], "ms_M2": [np.nan, 0.01], "kept": True,
                          "gpu_name": "NVIDIA H100 80GB HBM3", "sm_count": 132})
    paths = {name: tmp_path / f"{name}.csv" for name in ("table", "summary", "ctas", "tl", "tl_summary")}
    table.to_csv(paths["table"], index=False)
    pd.DataFrame({"method": ["M1"], "role": ["method"], "n": [2]}).to_csv(paths["summary"], index=False)
    ctas.to_csv(paths["ctas"], index=False)
    timeline_main(["--ctas", str(paths["ctas"]), "--out-table", str(paths["tl"]),
                   "--out-summary", str(paths["tl_summary"])])
    return experiment, paths


@pytest.mark.parametrize("ctas", [synthetic_ctas(), zero_ctas()], ids=["gpu_trace", "all_zero_times"])
def test_figure_renders(tmp_path, ctas):
    experiment, paths = _experiment_files(tmp_path, ctas)
    png = tmp_path / "fig" / "exp.png"
    plot_main(["--experiment", str(experiment), "--table", str(paths["table"]), "--summary", str(paths["summary"]),
               "--timeline", str(paths["tl"]), "--timeline-summary", str(paths["tl_summary"]), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


def test_figure_without_timeline_says_so(tmp_path):
    from figures.pod_timeline import plot

    fig = plot(pd.DataFrame({"row_key": [R1]}), pd.DataFrame(), {"name": "exp", "baseline": "M0"})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no CTA timeline" in t for t in texts)


def test_figure_panels_and_titles(tmp_path):
    """One panel per (batch, method); titles carry the timed median and the time shares."""
    from figures.pod_timeline import plot

    ctas = synthetic_ctas()
    experiment, paths = _experiment_files(tmp_path, ctas)
    meta = {"name": "exp", "baseline": "M0", "timeline": pd.read_csv(paths["tl"]),
            "timeline_summary": pd.read_csv(paths["tl_summary"])}
    fig = plot(pd.read_csv(paths["table"]), pd.read_csv(paths["summary"]), meta)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4  # 2 batches x 2 methods
    assert titles[0].startswith("M1: 0.021 ms") and "only P 20% | both 30% | only D 35%" in titles[0]
    assert titles[1].startswith("M2: not timed")
    assert any("failed_check" in t.get_text() for t in fig.axes[1].texts)
    assert "prefill 64 @ KV 128" in fig.axes[0].get_ylabel() and "M0 0.05 ms" in fig.axes[0].get_ylabel()


def test_trace_resumes_from_its_journal(tmp_path):
    """experiments.timeline --journal (the workflow's way): a kill leaves the journal with its whole
    launches; the rerun traces only the launch cut short and writes --out whole from the journal."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    journal, out = tmp_path / "journal" / "ctas.csv.gz", tmp_path / "raw" / "ctas.csv.gz"

    def trace():
        return subprocess.run([sys.executable, "-m", "experiments.timeline",
                               str(root / "experiments" / "studies" / "pod_timeline.yaml"), "--smoke",
                               "--device", "cpu", "--no-progress", "--warmup", "0", "--methods", "OURS_CTA,POD",
                               "--journal", str(journal), "--out", str(out)], capture_output=True, text=True, cwd=root)

    r = trace()
    assert r.returncode == 0, r.stderr[-3000:]
    full = pd.read_csv(out)
    assert sorted(full["method"].unique()) == ["OURS_CTA", "POD"] and full.equals(pd.read_csv(journal))
    assert r.stderr.strip().endswith("ok 2")
    # killed mid-write: the journal's gzip stream loses its end (part of the POD launch), no --out yet
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - 200])
    out.unlink()
    r = trace()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cut short" in r.stderr and r.stderr.strip().endswith("ok 1")   # only POD traced again
    again = pd.read_csv(out)
    assert len(again) == len(full) and again.equals(pd.read_csv(journal))
    for key, g in again.groupby(["row_key", "method"]):     # whole launches, each once
        assert g["pid"].tolist() == list(range(len(g))) and (g["launch_lines"] == len(g)).all(), key
    assert again[again["method"] == "OURS_CTA"].equals(full[full["method"] == "OURS_CTA"])
