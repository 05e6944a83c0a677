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
    resources:
        gpu=GPU_JOB,
    conda:
        "../envs/harness.yaml"
    shell:
        # progress lines (what compiles, for which shapes) go to the console and to the log
        "python -u -m experiments.build {input.experiment} --out {output} {params.flags} 2>&1 | tee {log}"
