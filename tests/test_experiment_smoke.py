"""Every attention experiment end to end in smoke mode on the CPU (Triton interpreter): its smoke
section runs with every method correct or, for a part a batch lacks or a GPU-only method, recorded as
unavailable; then its rows aggregate (baseline and filter resolved) and plot, as `make smoke` does."""
import glob
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# figure11 and pod_knobs run the same way through the whole workflow (tests/test_workflow_smoke.py)
# and tests/test_runner.py; every YAML's smoke section is validated by tests/test_grid.py.
# Paper targets (experiments/*.yaml) and tuning studies (experiments/studies/*.yaml) alike; the
# Hopper-native studies' smoke methods need a GPU (tests/test_hopper_compile.py covers them on the CPU).
EXPERIMENTS = sorted(p for p in glob.glob("experiments/*.yaml") + glob.glob("experiments/studies/*.yaml")
                     if Path(p).stem not in ("models", "figure11", "pod_knobs", "hopper_check", "hopper_rate"))


def _run(args):
    # a process of its own, as in the workflow: the rows are measured by the same commands
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: Path(p).stem)
def test_smoke_rows_are_correct_and_aggregate(tmp_path, path):
    out = tmp_path / "raw.csv"
    _run(["experiments.run", path, "--smoke", "--device", "cpu", "--no-progress", "--out", str(out)])
    df = pd.read_csv(out)
    assert len(df) > 0
    bad = df[~df["status"].isin(["ok", "unavailable"])]
    assert bad.empty, bad[["row_key", "method", "status", "reason"]].to_string()
    assert (df["status"] == "ok").sum() >= len(df) // 2
    # a method is unavailable only where the batch lacks a part it computes
    una = df[df["status"] == "unavailable"].astype({"reason": str})
    assert una["reason"].str.contains("no prefill|no decode|runs on cuda").all(), una["reason"].tolist()

    table, summary, png = tmp_path / "table.csv", tmp_path / "summary.csv", tmp_path / "figure.png"
    _run(["analysis.aggregate", "--experiment", path, "--raw", str(out), "--out-table", str(table),
          "--out-summary", str(summary), "--smoke"])
    wide = pd.read_csv(table)
    assert len(wide) == df["row_key"].nunique()
    assert len(pd.read_csv(summary)) > 0
    _run(["figures.plot", "--experiment", path, "--table", str(table), "--summary", str(summary), "--out", str(png),
          "--smoke"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
