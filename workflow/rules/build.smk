rule build:
    """Compile and warm every kernel the experiment uses (FlashInfer JIT, Triton) before timing."""
    input:
        experiment=experiment_yaml_of,
    output:
        f"{RESULTS}/build/{{exp}}.json",
    log:
        f"{LOGS}/build/{{exp}}.log",
    params:
        flags=RUN_FLAGS,
        prebuilt=PREBUILT_FLAG,
    resources:
        gpu=GPU_JOB,
    conda:
        "../envs/harness.yaml"
    shell:
        # progress lines (what compiles, for which shapes) go to the console and to the log; gpu_slot
        # pins the build to a GPU of its own (builds of two experiments may run side by side)
        "python -m experiments.gpu_slot --gpus {resources.gpu} -- "
        "python -u -m experiments.build {input.experiment} --out {output} {params.flags} {params.prebuilt} 2>&1 | tee {log}"
