import glob
import re
import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

SMOKE = config["smoke"]
SHIPPED = config["use_shipped_results"]
if SMOKE and SHIPPED:
    raise WorkflowError("smoke=true and use_shipped_results=true exclude each other: pick one")

# Smoke outputs go elsewhere so that a CPU run never overwrites GPU results.
RESULTS = (config["smoke_results_dir"] if SMOKE else config["shipped_results_dir"] if SHIPPED
           else config["results_dir"])
SHARDS = config["shards"]
# Logs of a run beside its results; a rebuild from the shipped results logs outside the tracked
# results/ (git-ignored logs/), so that `make figures` changes no tracked file but a table or figure.
LOGS = "logs/shipped" if SHIPPED else f"{RESULTS}/logs"
# GPUs a GPU rule's job holds: the local profile's `gpu` slot, and --gpus=1 under SLURM. Smoke jobs
# run on the CPU and hold none, so that they also run where there is no GPU at all (a cluster's CPU
# partition, CI).
GPU_JOB = 0 if SMOKE else 1

# Flags of the GPU-side commands (experiments.build and experiments.run).
RUN_FLAGS = "--smoke --device cpu" if SMOKE else f"--device {config['device']}"
# The build steps' flag installing FlashInfer modules compiled ahead of time (none in smoke runs:
# FlashInfer does not run on the CPU).
PREBUILT_FLAG = (f"--flashinfer-modules {config['flashinfer_modules']}"
                 if config["flashinfer_modules"] and not SMOKE else "")
# The same smoke flag for analysis and plotting (they read the experiment's smoke overrides).
SMOKE_FLAG = "--smoke" if SMOKE else ""

NO_GPU_MESSAGE = (
    "no CUDA GPU found. Without a GPU, use `make figures` (rebuild every figure and table from the "
    "shipped results: --config use_shipped_results=true) or `--config smoke=true` (the whole "
    "workflow on tiny shapes on the CPU)."
)

# Two groups of experiments, each YAML one experiment with a target of its name: the paper's
# targets (experiments/<name>.yaml but the model catalogue; `all`) and the tuning studies
# (experiments/studies/<name>.yaml; `studies`). Rules find a YAML by name: experiment_yaml().
PAPER_TARGETS = sorted(
    Path(p).stem for p in glob.glob("experiments/*.yaml") if Path(p).name != "models.yaml"
)
STUDIES = sorted(Path(p).stem for p in glob.glob("experiments/studies/*.yaml"))
if set(PAPER_TARGETS) & set(STUDIES):
    raise WorkflowError(f"experiments/ and experiments/studies/ both define {sorted(set(PAPER_TARGETS) & set(STUDIES))}")
EXPERIMENTS = PAPER_TARGETS + STUDIES


def experiment_yaml(exp):
    """The YAML of experiment (paper target or study) ``exp``."""
    return f"experiments/studies/{exp}.yaml" if exp in STUDIES else f"experiments/{exp}.yaml"


def experiment_yaml_of(wildcards):
    """Input function: the YAML of the job's experiment."""
    return experiment_yaml(wildcards.exp)


wildcard_constraints:
    exp="[A-Za-z0-9_.-]+",
    i=r"\d+",
    n=r"\d+",


def shipped_raw(exp):
    """Committed raw CSVs of an experiment, whatever shards were run."""
    return sorted(glob.glob(f"{RESULTS}/raw/{exp}/*.csv"))


def raw_csvs(wildcards):
    """Input of aggregate: the shipped CSVs, or the shards this run produces."""
    if SHIPPED:
        files = shipped_raw(wildcards.exp)
        if not files:
            raise WorkflowError(
                f"use_shipped_results=true but {RESULTS}/raw/{wildcards.exp}/ holds no CSV: "
                f"this experiment has no shipped results; run it on a GPU (`make {wildcards.exp}`)."
            )
        return files
    return [f"{RESULTS}/raw/{wildcards.exp}/shard-{i}-of-{SHARDS}.csv" for i in range(SHARDS)]


def experiment_section(exp, key):
    """The <key>: section of experiments/<exp>.yaml (with its smoke: override in smoke runs), or
    None, also for targets without such a YAML (figure 7's microbenchmark), which Snakemake may
    still test against the attention rules before the rule order picks its own."""
    from experiments.spec import section  # the one reader of experiment YAML (no torch)

    path = Path(experiment_yaml(exp))
    if exp not in EXPERIMENTS or not path.exists():
        return None
    return section(path, key, smoke=SMOKE)


def has_profile(exp):
    """True when experiments/<exp>.yaml asks for an Nsight Compute profile (profile: section)."""
    return bool(experiment_section(exp, "profile"))


def has_timeline(exp):
    """True when experiments/<exp>.yaml asks for a CTA timeline (timeline: section)."""
    return bool(experiment_section(exp, "timeline"))


def one_of(names):
    """Wildcard constraint matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# Experiments with a CTA timeline. The table rules match only their own experiments: else
# tables/pod_timeline_timeline.csv would also be aggregate's table of an experiment
# "pod_timeline_timeline", and tables/pod_timeline_summary.csv the timeline summary of "pod".
TIMELINE_EXPERIMENTS = [e for e in EXPERIMENTS if has_timeline(e)]


def timeline_ctas(exp):
    """The CTA trace of an experiment (experiments.timeline's CSV)."""
    return f"{RESULTS}/raw/{exp}/timeline/ctas.csv.gz"


def timeline_tables(exp):
    """{"timeline": table, "timeline_summary": summary} of analysis.timeline for an experiment
    with a timeline: section, else {}; shipped results have them only when the trace was committed."""
    if not has_timeline(exp) or (SHIPPED and not Path(timeline_ctas(exp)).exists()):
        return {}
    return {"timeline": f"{RESULTS}/tables/{exp}_timeline.csv",
            "timeline_summary": f"{RESULTS}/tables/{exp}_timeline_summary.csv"}


def timeline_plot_inputs(wildcards):
    """Optional inputs of plot (with unpack): the timeline tables of the experiment, if any."""
    return timeline_tables(wildcards.exp)


def ncu_csv(wildcards):
    """Optional input of aggregate: the ncu profile. Smoke runs have no GPU counters; shipped
    results use it when it was committed."""
    path = f"{RESULTS}/raw/{wildcards.exp}/ncu/profile.csv"
    if SMOKE or not has_profile(wildcards.exp):
        return []
    if SHIPPED and not Path(path).exists():
        return []
    return [path]


def experiment_targets(exp):
    """Final files of one experiment: its table, summary and figure (and its timeline tables)."""
    return [
        f"{RESULTS}/tables/{exp}.csv",
        f"{RESULTS}/tables/{exp}_summary.csv",
        *timeline_tables(exp).values(),
        f"{RESULTS}/figures/{exp}.png",
    ]


def with_results(names):
    """The experiments among ``names`` to build; with shipped results, only those that have some."""
    if not SHIPPED:
        return list(names)
    present = [e for e in names if shipped_raw(e)]
    skipped = sorted(set(names) - set(present))
    if skipped:
        logger.warning(f"no shipped results for {', '.join(skipped)}: skipped")
    return present


def all_targets():
    """Targets of `all`: the paper targets' tables and figures (figure 7: microbench_targets)."""
    return [f for e in with_results(PAPER_TARGETS) for f in experiment_targets(e)]


def study_targets():
    """Targets of `studies`: every tuning study's tables and figure."""
    return [f for e in with_results(STUDIES) for f in experiment_targets(e)]


def require_gpu_if_needed():
    """Fail before any job starts when this machine must run GPU jobs and has no CUDA GPU.

    Called from onstart, i.e. only for a real (not dry) run with jobs to do; cluster executors
    run the GPU jobs elsewhere, so only local execution is checked.
    """
    if SMOKE or SHIPPED or not config["device"].startswith("cuda") or not workflow.local_exec:
        return
    if not any(job.rule.name in ("build", "sweep_shard", "profile_ncu", "trace_timeline", "run_microbench",
                                                   "serving_build", "serving_gpu") for job in workflow.dag.needrun_jobs()):
        return
    import torch

    if not torch.cuda.is_available():
        raise WorkflowError(NO_GPU_MESSAGE)


# ---- serving (the end-to-end half): experiments/serving/<target>.yaml, outputs under <results>/serving/
SERVING = f"{RESULTS}/serving"
SERVING_TARGETS = ["figure12", "table5", "figure15", "figure4"]
SERVING_FLAGS = "--smoke" if SMOKE else ""
# configs whose GPU runs a config's GPU stage needs first (table5 sizes its load from figure12's)
SERVING_GPU_NEEDS = {"figure12": [], "table5": ["figure12"], "figure15": [], "figure4": []}
# configs whose GPU runs a config's CPU stage reads (calibration sources, runs to validate)
SERVING_CPU_NEEDS = {"figure12": ["figure12"], "table5": ["figure12", "table5"], "figure15": ["figure12"],
                     "figure4": ["figure4"]}
SERVING_FIGURES = ["figure12", "figure15", "figure4"]


def serving_shipped(target):
    """True when the shipped results hold GPU runs of ``target``."""
    return any(Path(f"{SERVING}/{target}/runs").glob("*/done.json"))


def serving_cpu_inputs(wildcards):
    needs = SERVING_CPU_NEEDS[wildcards.target]
    if SHIPPED:
        missing = [t for t in needs if not serving_shipped(t)]
        if missing:
            raise WorkflowError(
                f"use_shipped_results=true but {SERVING}/{', '.join(missing)} holds no GPU runs: "
                f"run them on a GPU (`snakemake {wildcards.target}`)."
            )
        return []
    return [f"{SERVING}/{t}/gpu.done" for t in needs]


def serving_outputs(target):
    if target == "table5":
        return [f"{SERVING}/tables/table5.csv", f"{SERVING}/tables/table5.md"]
    return [f"{SERVING}/figures/{target}.png", f"{SERVING}/tables/{target}.csv"]


def serving_targets():
    """Targets for `all` (the lead adds them to rule all); with shipped results only those whose
    GPU runs were shipped."""
    targets = SERVING_TARGETS
    if SHIPPED:
        targets = [t for t in SERVING_TARGETS if all(serving_shipped(s) for s in SERVING_CPU_NEEDS[t])]
    return [f for t in targets for f in serving_outputs(t)]



# A target per experiment, paper target or study, named after it (`snakemake figure11`, `snakemake pod_knobs`).
for _exp in EXPERIMENTS:

    rule:
        name:
            _exp
        input:
            experiment_targets(_exp),


# Figure 7: the fusion micro-benchmark (workflow/rules/microbench.smk).
FIG7_CONFIG = "experiments/microbench/figure7.yaml"
FIG7_SOURCE = "kernels/microbench/fusion_bench.cu"


def microbench_targets():
    """Targets of figure7: the table and figure; in smoke runs (no GPU) only a compile check of
    the CUDA source, and nothing when this machine has no nvcc."""
    if SMOKE:
        if shutil.which("nvcc") is None:
            logger.warning("figure7: no nvcc here, the micro-benchmark is not even compiled in this smoke run")
            return []
        return [f"{RESULTS}/build/fusion_bench"]
    if SHIPPED and not Path(f"{RESULTS}/raw/figure7/figure7.csv").exists():
        logger.warning("no shipped results for figure7: skipped")
        return []
    return [f"{RESULTS}/tables/figure7.csv", f"{RESULTS}/tables/figure7_summary.csv", f"{RESULTS}/figures/figure7.png"]


# Reports (workflow/rules/report.smk): the experiments whose tables each report reads.
def tabled(names, targets):
    """The experiments among ``names`` whose summary table is one of ``targets``."""
    return [e for e in names if f"{RESULTS}/tables/{e}_summary.csv" in targets]


def report_inputs(names):
    """The wide and summary tables of these experiments."""
    return [f"{RESULTS}/tables/{e}{suffix}.csv" for e in names for suffix in ("", "_summary")]


REPORT_NAMES = tabled(PAPER_TARGETS + ["figure7"], all_targets() + microbench_targets())
STUDY_REPORT_NAMES = tabled(STUDIES, study_targets())
