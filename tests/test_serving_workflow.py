"""workflow/rules/serving.smk: the DAG in every mode, and a real CPU smoke build of two targets."""
from workflow_helpers import copy_checkout, snakemake

INCLUDE = 'include: "workflow/rules/serving.smk"'


def _checkout(tmp_path):
    """A copy of the checkout whose Snakefile includes the serving rules (added if not yet there)."""
    work = copy_checkout(tmp_path / "checkout")
    snakefile = work / "Snakefile"
    text = snakefile.read_text()
    if INCLUDE not in text:
        anchor = 'include: "workflow/rules/microbench.smk"'
        assert anchor in text
        snakefile.write_text(text.replace(anchor, anchor + "\n" + INCLUDE))
    return work


def test_gpu_mode_plans_engine_then_simulator(tmp_path):
    work = _checkout(tmp_path)
    r = snakemake(["-n", "-p", "figure12", "table6", "figure15", "figure4"], cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for t in ("figure12", "table5", "figure4"):
        assert f"results-new/serving/{t}/gpu.done" in out
    assert "results-new/serving/figure15/gpu.done" not in out      # figure 15 has no GPU runs of its own
    assert "--stage gpu" in out and "--stage cpu --force" in out and "--smoke" not in out


def test_shipped_mode_needs_shipped_gpu_runs(tmp_path):
    work = _checkout(tmp_path)
    r = snakemake(["-n", "table6", "--config", "use_shipped_results=true"], cwd=work)
    assert r.returncode != 0 and "holds no GPU runs" in r.stdout + r.stderr
    # with shipped GPU runs (here: made by a smoke run, moved into results/) no GPU job is planned
    r = snakemake(["-c1", "figure4", "--config", "smoke=true"], cwd=work, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (work / "results" / "serving").mkdir(parents=True)
    (work / "results-smoke" / "serving" / "figure4").rename(work / "results" / "serving" / "figure4")
    r = snakemake(["-n", "-p", "figure4", "--config", "use_shipped_results=true"], cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "serving_gpu" not in r.stdout and "serving_cpu" in r.stdout


def test_smoke_build_of_table6(tmp_path):
    work = _checkout(tmp_path)
    r = snakemake(["-c1", "table6", "--config", "smoke=true"], cwd=work, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    md = (work / "results-smoke" / "serving" / "tables" / "table5.md").read_text()
    assert "Sarathi" in md and "vLLM" in md and "replay" in md
    assert not (work / "results-new").exists() and not (work / "results" / "serving").exists()
