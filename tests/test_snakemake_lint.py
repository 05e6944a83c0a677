"""The workflow passes `snakemake --lint` and plans the expected DAGs in every mode."""
from workflow_helpers import snakemake


def test_lint():
    result = snakemake(["--lint"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_all_from_shipped_results():
    result = snakemake(["-n", "all", "--config", "use_shipped_results=true"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule build" not in result.stdout and "rule sweep_shard" not in result.stdout


def test_dry_run_gpu_mode_plans_build_and_shards():
    # A dry run never needs the GPU: the GPU check runs only when jobs are about to start.
    result = snakemake(["-n", "figure11", "--config", "shards=3"])
    assert result.returncode == 0, result.stdout + result.stderr
    for i in range(3):
        assert f"results-new/raw/figure11/shard-{i}-of-3.csv" in result.stdout
    assert "results-new/build/figure11.json" in result.stdout


def test_dry_run_smoke_writes_only_results_smoke():
    result = snakemake(["-n", "-p", "figure11", "--config", "smoke=true"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--smoke --device cpu" in result.stdout
    assert "results-smoke/figures/figure11.png" in result.stdout
    assert " results/" not in result.stdout


def test_smoke_and_shipped_exclude_each_other():
    result = snakemake(["-n", "all", "--config", "smoke=true", "use_shipped_results=true"])
    assert result.returncode != 0
    assert "exclude each other" in result.stdout + result.stderr
