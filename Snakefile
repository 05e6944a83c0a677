# POD-Attention artifact workflow: build -> sweep shards -> aggregate -> plot -> report, per experiment.
# `snakemake figure11` builds one experiment (experiments/figure11.yaml); `snakemake` (= `all`) the
# paper targets and results/REPORT.md; `snakemake studies` the tuning studies (experiments/studies/)
# and results/STUDIES.md (workflow/profiles/default supplies the cores).
# Modes (config/config.yaml): GPU (default), use_shipped_results=true, smoke=true; see README.md.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# `--config smoke=true` arrives as the string "true": Snakemake parses only True/False as booleans.
for _key in ("smoke", "use_shipped_results"):
    if str(config.get(_key)).lower() in ("true", "false"):
        config[_key] = str(config[_key]).lower() == "true"

validate(config, "workflow/schemas/config.schema.yaml")

# GPU jobs (build, sweep shards, ...) declare gpu=1 and start through experiments/gpu_slot.py,
# which pins each to a GPU no other job holds. On one machine they queue for its GPUs even when no
# profile says how many there are (`snakemake figure11` as written): one slot per GPU that
# CUDA_VISIBLE_DEVICES or else `nvidia-smi -L` lists (counted without CUDA), 1 where none is found;
# `--resources gpu=1` uses one GPU. A cluster executor schedules GPUs itself.
if workflow.local_exec and "gpu" not in workflow.global_resources:
    from experiments.gpu_slot import gpu_count

    workflow.register_resource("gpu", gpu_count())


include: "workflow/rules/common.smk"


# With shipped results the raw CSVs are inputs, not outputs: no rule may offer to rebuild them.
if not config["use_shipped_results"]:

    include: "workflow/rules/build.smk"
    include: "workflow/rules/sweep.smk"


include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plot.smk"
include: "workflow/rules/microbench.smk"
include: "workflow/rules/serving.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets() + microbench_targets() + serving_targets(),
        f"{RESULTS}/REPORT.md",


onstart:
    require_gpu_if_needed()
