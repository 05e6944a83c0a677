rule build:
    """Compile and warm every kernel the experiment uses (FlashInfer JIT, Triton) before timing."""
    input:
        experiment="experiments/{exp}.yaml",
    output:
        f"{RESULTS}/build/{{exp}}.json",
    log:
        f"{RESULTS}/logs/build/{{exp}}.log",
    params:
        flags=RUN_FLAGS,
    resources:
        gpu=1,
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m kernels.build {input.experiment} --out {output} {params.flags} > {log} 2>&1"
