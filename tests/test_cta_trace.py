"""experiments.timeline on the CPU (Triton interpreter): one line per CTA of the traced launch,
every logical CTA of each part exactly once, gzip output, resume without duplicates, a YAML
mistake in the timeline: section named, and a two-launch method recorded as unavailable."""
import gzip
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _timeline(yaml, out, *extra):
    return subprocess.run([sys.executable, "-m", "experiments.timeline", str(yaml), "--smoke", "--device", "cpu",
                           "--no-progress", "--warmup", "0", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT)


def test_one_line_per_cta_and_resume(tmp_path):
    out = tmp_path / "ctas.csv.gz"
    r = _timeline(ROOT / "experiments" / "pod_timeline.yaml", out, "--methods", "OURS_CTA,POD_progress")
    assert r.returncode == 0, r.stderr[-3000:]
    with gzip.open(out, "rt") as f:
        df = pd.read_csv(f)
    assert set(df["method"]) == {"OURS_CTA", "POD_progress"} and (df["status"] == "ok").all()
    for _, g in df.groupby("method"):
        assert g["pid"].tolist() == list(range(len(g)))
        for op in (0, 1):
            ctas = sorted(g.loc[g["op"] == op, "cta"])
            assert ctas == list(range(len(ctas))) and ctas, f"part {op}: {ctas}"
    # OURS_CTA splits by block index: the prefill CTAs come first
    cta = df[df["method"] == "OURS_CTA"]
    assert cta["op"].is_monotonic_increasing
    n = len(df)
    r = _timeline(ROOT / "experiments" / "pod_timeline.yaml", out)
    assert r.returncode == 0, r.stderr[-3000:]
    with gzip.open(out, "rt") as f:
        again = pd.read_csv(f)
    assert set(again["method"]) == {"OURS_CTA", "POD", "POD_resident", "POD_progress"}
    assert len(again) > n and not again.duplicated(["row_key", "method", "pid"]).any()
    assert again.iloc[:n].equals(df)


def test_timeline_section_errors_name_the_field(tmp_path):
    yaml = tmp_path / "bad.yaml"
    text = (ROOT / "experiments" / "pod_timeline.yaml").read_text()
    yaml.write_text(text.replace("methods: [OURS_CTA, POD, POD_resident, POD_progress]",
                                 "methods: [OURS_CTA, POD_typo]"))
    r = _timeline(yaml, tmp_path / "x.csv")
    assert r.returncode == 2
    assert "timeline.methods" in r.stderr and "POD_typo" in r.stderr
    # a two-launch method has no single launch to trace: one line says so, nothing is traced
    yaml.write_text(text.replace("methods: [OURS_CTA, POD, POD_resident, POD_progress]", "methods: [OURS_Serial]"))
    r = _timeline(yaml, tmp_path / "x.csv")
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(tmp_path / "x.csv")
    assert df[["method", "status"]].values.tolist() == [["OURS_Serial", "unavailable"]]
    assert "two launches" in df["reason"].iloc[0]
