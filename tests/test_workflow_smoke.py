"""The whole workflow (build -> sweep -> aggregate -> plot) on the smoke sections of figure11 and
pod_timeline (its CTA timeline chain), on the CPU."""
import pandas as pd
import pytest

from workflow_helpers import copy_checkout, snakemake


def smoke_run(tmp_path, target, timeout):
    """Run ``target`` with smoke=true in a copy of the checkout; returns the copy and its
    results-smoke/, after checking that the target's figure is a PNG."""
    work = copy_checkout(tmp_path / "checkout")
    result = snakemake(["--cores", "2", "--show-failed-logs", target, "--config", "smoke=true"],
                       cwd=work, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]
    out = work / "results-smoke"
    png = out / "figures" / f"{target}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    return work, out


@pytest.mark.slow
def test_figure11_smoke_run(tmp_path):
    work, out = smoke_run(tmp_path, "figure11", timeout=1800)
    table = pd.read_csv(out / "tables" / "figure11.csv")
    summary = pd.read_csv(out / "tables" / "figure11_summary.csv")
    assert len(table) > 0 and len(summary) > 0
    assert "speedup_POD" in table and table["ms_FA_Serial"].notna().any()
    assert not (work / "results").exists(), "a smoke run must not write into results/"


@pytest.mark.slow
def test_pod_timeline_smoke_run(tmp_path):
    """The timeline chain (trace on the CPU, all times 0 -> tables -> figure that says so)."""
    _, out = smoke_run(tmp_path, "pod_timeline", timeout=900)
    ctas = pd.read_csv(out / "raw" / "pod_timeline" / "timeline" / "ctas.csv.gz")  # gzip despite the .partial
    assert set(ctas["method"]) == {"OURS_CTA", "POD", "POD_resident", "POD_progress"}
    summary = pd.read_csv(out / "tables" / "pod_timeline_timeline_summary.csv")
    assert len(summary) == 4 and summary["zero_times"].all() and (summary["prefill_ctas"] > 0).all()
    assert len(pd.read_csv(out / "tables" / "pod_timeline_timeline.csv")) == 4 * 200
