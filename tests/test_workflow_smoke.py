"""The whole workflow (build -> sweep -> aggregate -> plot) on figure11's smoke section, on the CPU."""
import pandas as pd
import pytest

from workflow_helpers import copy_checkout, snakemake


@pytest.mark.slow
def test_figure11_smoke_run(tmp_path):
    work = copy_checkout(tmp_path / "checkout")
    result = snakemake(["--cores", "2", "--show-failed-logs", "figure11", "--config", "smoke=true"],
                       cwd=work, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]

    out = work / "results-smoke"
    png = out / "figures" / "figure11.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    table = pd.read_csv(out / "tables" / "figure11.csv")
    summary = pd.read_csv(out / "tables" / "figure11_summary.csv")
    assert len(table) > 0 and len(summary) > 0
    assert "speedup_POD" in table and table["ms_FA_Serial"].notna().any()
    assert not (work / "results").exists(), "a smoke run must not write into results/"
