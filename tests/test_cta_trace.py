"""experiments.timeline on the CPU (Triton interpreter): one line per CTA of the traced launch,
every logical CTA of each part exactly once, gzip output, resume without duplicates, a YAML
mistake in the timeline: section named, and a two-launch method recorded as unavailable."""
import gzip
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# the study's YAML (experiments/studies/ since the YAMLs were sorted; experiments/ before)
POD_TIMELINE = next(p for p in (ROOT / "experiments" / "studies" / "pod_timeline.yaml",
                                ROOT / "experiments" / "pod_timeline.yaml") if p.exists())


def _timeline(yaml, out, *extra):
    return subprocess.run([sys.executable, "-m", "experiments.timeline", str(yaml), "--smoke", "--device", "cpu",
                           "--no-progress", "--warmup", "0", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT)


def test_one_line_per_cta_and_resume(tmp_path):
    out = tmp_path / "ctas.csv.gz"
    r = _timeline(POD_TIMELINE, out, "--methods", "OURS_CTA,POD_progress")
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
    r = _timeline(POD_TIMELINE, out)
    assert r.returncode == 0, r.stderr[-3000:]
    with gzip.open(out, "rt") as f:
        again = pd.read_csv(f)
    assert set(again["method"]) == {"OURS_CTA", "POD", "POD_resident", "POD_progress"}
    assert len(again) > n and not again.duplicated(["row_key", "method", "pid"]).any()
    assert again.iloc[:n].equals(df)


def test_timeline_section_errors_name_the_field(tmp_path):
    yaml = tmp_path / "bad" / "pod_timeline.yaml"   # the loader wants the file named after the experiment
    yaml.parent.mkdir()
    text = POD_TIMELINE.read_text()
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


def _read_any(path):
    with (gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)) as f:
        return pd.read_csv(f)


def _assert_whole_launches(df):
    """Every (row, method) launch has all its lines once: pids 0..n-1 and launch_lines == n."""
    for key, g in df.groupby(["row_key", "method"]):
        assert g["pid"].tolist() == list(range(len(g))), key
        assert (g["launch_lines"] == len(g)).all(), key


def test_resume_after_a_kill_keeps_whole_launches(tmp_path):
    yaml = POD_TIMELINE
    out = tmp_path / "ctas.csv.gz"
    r = _timeline(yaml, out, "--methods", "OURS_CTA,POD")
    assert r.returncode == 0, r.stderr[-3000:]
    full = _read_any(out)
    _assert_whole_launches(full)
    # a kill mid-write: the gzip stream loses its end (and with it part of the last launch)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 200])
    r = _timeline(yaml, out, "--methods", "OURS_CTA,POD")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cut short" in r.stderr
    again = _read_any(out)
    _assert_whole_launches(again)
    assert sorted(again["method"].unique()) == ["OURS_CTA", "POD"]
    assert len(again) == len(full)

    # a plain CSV whose last launch has only some of its lines: that launch is traced again
    plain = tmp_path / "ctas.csv"
    full.to_csv(plain, index=False)
    lines = plain.read_text().splitlines(keepends=True)
    plain.write_text("".join(lines[:-3]))
    r = _timeline(yaml, plain, "--methods", "OURS_CTA,POD")
    assert r.returncode == 0, r.stderr[-3000:]
    fixed = pd.read_csv(plain)
    _assert_whole_launches(fixed)
    assert len(fixed) == len(full)
    assert fixed.iloc[: full["method"].eq("OURS_CTA").sum()].equals(full[full["method"] == "OURS_CTA"])


def test_resume_of_a_file_without_launch_lines(tmp_path):
    """Traces written before launch_lines existed: complete launches stay, nothing is traced again."""
    yaml = POD_TIMELINE
    out = tmp_path / "ctas.csv"
    r = _timeline(yaml, out, "--methods", "OURS_CTA")
    assert r.returncode == 0, r.stderr[-3000:]
    old = pd.read_csv(out).drop(columns=["launch_lines"])
    old.to_csv(out, index=False)
    r = _timeline(yaml, out, "--methods", "OURS_CTA")
    assert r.returncode == 0, r.stderr[-3000:]
    again = pd.read_csv(out)
    assert again.drop(columns=["launch_lines"]).equals(old)
    assert again["launch_lines"].isna().all()
