# End-to-end serving experiments (serving/, experiments/serving/<target>.yaml): figure12, table5
# (= the artifact's table6), figure15, figure4. Each target: GPU stage (the engine; skipped with
# shipped results) -> CPU stage (calibration, simulator, validation) -> plot/table.
# Everything lives under <results>/serving/ so that no path meets the kernel experiments' rules.
from pathlib import Path


wildcard_constraints:
    target=one_of(SERVING_TARGETS),
    sfig=one_of(SERVING_FIGURES),


if not SHIPPED:

    rule serving_build:
        """Compile every kernel the serving configs' GPU runs call (FlashInfer JIT, Triton), in
        parallel, once per machine, before anything is timed."""
        input:
            configs=expand("experiments/serving/{target}.yaml", target=SERVING_TARGETS),
        output:
            f"{SERVING}/build/serving_kernels.json",
        log:
            f"{LOGS}/serving/build.log",
        params:
            flags=SERVING_FLAGS,
            prebuilt=PREBUILT_FLAG,
            root=lambda wildcards, output: str(Path(output[0]).parent.parent),
        resources:
            gpu=GPU_JOB,
        conda:
            "../envs/harness.yaml"
        shell:
            "exec python -m experiments.gpu_slot --gpus {resources.gpu} -- "
            "python -m serving.run {input.configs} --out {params.root} --stage build {params.flags} {params.prebuilt} "
            "> {log} 2>&1"

    rule serving_gpu:
        """The engine's runs of one config (resumable: finished runs are skipped)."""
        input:
            config="experiments/serving/{target}.yaml",
            build=f"{SERVING}/build/serving_kernels.json",
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
            "exec python -m experiments.gpu_slot --gpus {resources.gpu} -- "
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
