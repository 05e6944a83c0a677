"""The workflow passes `snakemake --lint` and plans the expected DAGs in every mode."""
import shutil

from workflow_helpers import REPO, copy_checkout, snakemake


def test_lint():
    result = snakemake(["--lint"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_all_from_shipped_results():
    result = snakemake(["-n", "all", "--config", "use_shipped_results=true"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule build" not in result.stdout and "rule sweep_shard" not in result.stdout


def test_all_is_the_paper_targets_and_studies_are_their_own_group():
    """`all`: the paper targets and results/REPORT.md, no study; `studies`: every study and
    results/STUDIES.md; a study keeps a target of its name, read from experiments/studies/."""
    result = snakemake(["-n", "-p", "--forceall", "all", "--config", "use_shipped_results=true"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "results/REPORT.md" in result.stdout and "results/figures/figure11.png" in result.stdout
    assert "pod_knobs" not in result.stdout and "STUDIES.md" not in result.stdout
    result = snakemake(["-n", "-p", "--forceall", "studies", "--config", "use_shipped_results=true"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "results/STUDIES.md" in result.stdout and "figure11.png" not in result.stdout
    assert "--experiment experiments/studies/pod_ctas_ds3.yaml" in result.stdout
    result = snakemake(["-n", "-p", "pod_ctas_ds3", "--config", "shards=1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "experiments.run experiments/studies/pod_ctas_ds3.yaml" in result.stdout


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


def test_dry_run_shipped_without_trace_plots_without_timeline(tmp_path):
    """Shipped timed lines but no committed CTA trace: the figure is still drawn (and says so)."""
    work = copy_checkout(tmp_path / "checkout")
    raw = work / "results" / "raw" / "pod_timeline"
    raw.mkdir(parents=True)
    shutil.copy(REPO / "results" / "raw" / "pod_timeline" / "shard-0-of-1.csv", raw)
    result = snakemake(["-n", "-p", "pod_timeline", "--config", "use_shipped_results=true"], cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--timeline" not in _shell_line(result.stdout, "figures.plot")
    assert "aggregate_timeline" not in result.stdout


def _shell_line(stdout, script):
    """The planned shell command that runs ``python -m <script>``."""
    lines = [line for line in stdout.splitlines() if f"python -m {script} " in line]
    assert len(lines) == 1, stdout[-4000:]
    return lines[0]


def test_dry_run_timeline_from_shipped_trace():
    # --forceall: plan every job even where results/ is up to date
    result = snakemake(["-n", "-p", "--forceall", "pod_timeline", "figure11", "--config", "use_shipped_results=true"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule trace_timeline" not in result.stdout  # the shipped trace is an input, never rebuilt
    assert ("analysis.timeline --ctas results/raw/pod_timeline/timeline/ctas.csv.gz "
            "--out-table results/tables/pod_timeline_timeline.csv "
            "--out-summary results/tables/pod_timeline_timeline_summary.csv") in result.stdout
    plots = [line for line in result.stdout.splitlines() if "python -m figures.plot " in line]
    timeline_plot = [line for line in plots if "pod_timeline.yaml" in line]
    assert len(plots) == 2 and len(timeline_plot) == 1
    assert ("--timeline results/tables/pod_timeline_timeline.csv "
            "--timeline-summary results/tables/pod_timeline_timeline_summary.csv") in timeline_plot[0]
    assert all("--timeline" not in line for line in plots if line not in timeline_plot)


def test_dry_run_timeline_traced_on_gpu_and_in_smoke_runs():
    result = snakemake(["-n", "-p", "--forceall", "pod_timeline"])
    assert result.returncode == 0, result.stdout + result.stderr
    trace = _shell_line(result.stdout, "experiments.timeline").removeprefix("Shell command: ")
    assert trace.startswith("exec python -m experiments.gpu_slot --gpus 1 -- python -m experiments.timeline "
                            "experiments/studies/pod_timeline.yaml "
                            "--journal results-new/journal/pod_timeline/timeline/ctas.csv.gz "
                            "--out results-new/raw/pod_timeline/timeline/ctas.csv.gz --stop-with-parent --device cuda")
    assert ".partial" not in trace and "&& mv" not in trace
    result = snakemake(["-n", "-p", "--forceall", "pod_timeline", "--config", "smoke=true"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--smoke --device cpu" in _shell_line(result.stdout, "experiments.timeline")
    assert "--timeline results-smoke/tables/pod_timeline_timeline.csv" in _shell_line(result.stdout, "figures.plot")
    # experiments without a timeline: section trace nothing
    result = snakemake(["-n", "--forceall", "figure11"])
    assert result.returncode == 0 and "trace_timeline" not in result.stdout and "aggregate_timeline" not in result.stdout
