# End-to-end serving experiments (serving/, experiments/serving/<target>.yaml): figure12, table5
# (= the artifact's table6), figure15, figure4. Each target: GPU stage (the engine; skipped with
# shipped results) -> CPU stage (calibration, simulator, validation) -> plot/table.
# Everything lives under <results>/serving/ so that no path meets the kernel experiments' rules.
from pathlib import Path

from snakemake.exceptions import WorkflowError

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


wildcard_constraints:
    target=one_of(SERVING_TARGETS),
    sfig=one_of(SERVING_FIGURES),


if not SHIPPED:

    rule serving_gpu:
        """The engine's runs of one config (resumable: finished runs are skipped)."""
        input:
            config="experiments/serving/{target}.yaml",
            needs=lambda wildcards: [f"{SERVING}/{t}/gpu.done" for t in SERVING_GPU_NEEDS[wildcards.target]],
        output:
            touch(f"{SERVING}/{{target}}/gpu.done"),
        log:
            f"{LOGS}/serving/{{target}}-gpu.log",
        params:
            flags=SERVING_FLAGS,
            root=lambda wildcards, output: str(Path(output[0]).parent.parent),
        resources:
            gpu=GPU_JOB,
        conda:
            "../envs/harness.yaml"
        shell:
            "python -m serving.run {input.config} --out {params.root} --stage gpu {params.flags} > {log} 2>&1"


rule serving_cpu:
    """Calibration, simulator runs and validation of one config (recomputed every time)."""
    input:
        serving_cpu_inputs,
        config="experiments/serving/{target}.yaml",
    output:
        touch(f"{SERVING}/{{target}}/cpu.done"),
    log:
        f"{LOGS}/serving/{{target}}-cpu.log",
    params:
        flags=SERVING_FLAGS,
        root=lambda wildcards, output: str(Path(output[0]).parent.parent),
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m serving.run {input.config} --out {params.root} --stage cpu --force {params.flags} > {log} 2>&1"


rule serving_figure:
    """Figure and its table from a config's results (figures/<target>.py)."""
    input:
        done=f"{SERVING}/{{sfig}}/cpu.done",
        module="figures/{sfig}.py",
    output:
        png=f"{SERVING}/figures/{{sfig}}.png",
        table=f"{SERVING}/tables/{{sfig}}.csv",
    log:
        f"{LOGS}/serving/{{sfig}}-plot.log",
    params:
        root=lambda wildcards, output: str(Path(output[0]).parent.parent),
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m figures.{wildcards.sfig} --root {params.root} --out {output.png} --table {output.table} > {log} 2>&1"


rule serving_table5:
    """Table 5 (and the stand-in tables 4/6) with the simulator's validation."""
    input:
        done=f"{SERVING}/table5/cpu.done",
        module="figures/table5.py",
    output:
        csv=f"{SERVING}/tables/table5.csv",
        md=f"{SERVING}/tables/table5.md",
    log:
        f"{LOGS}/serving/table5-table.log",
    params:
        root=lambda wildcards, output: str(Path(output[0]).parent.parent),
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m figures.table5 --root {params.root} --out {output.csv} --markdown {output.md} > {log} 2>&1"


localrules:
    serving_cpu,
    serving_figure,
    serving_table5,


rule figure12:
    input:
        serving_outputs("figure12"),


rule table5:
    input:
        serving_outputs("table5"),


rule table6:
    """The artifact's name for the paper's Table 5."""
    input:
        serving_outputs("table5"),


rule figure15:
    input:
        serving_outputs("figure15"),


rule figure4:
    input:
        serving_outputs("figure4"),
