rule sweep_shard:
    """Time every method on shard {i} of {n} of the experiment's hybrid batches (one GPU job)."""
    input:
        experiment=experiment_yaml_of,
        build=f"{RESULTS}/build/{{exp}}.json",
    output:
        f"{RESULTS}/raw/{{exp}}/shard-{{i}}-of-{{n}}.csv",
    log:
        f"{LOGS}/sweep/{{exp}}/shard-{{i}}-of-{{n}}.log",
    params:
        flags=RUN_FLAGS,
        journal=f"{RESULTS}/journal/{{exp}}/shard-{{i}}-of-{{n}}.csv",
    resources:
        gpu=GPU_JOB,
    conda:
        "../envs/harness.yaml"
    shell:
        # Rows go to a journal Snakemake does not own and never deletes (not even when it throws
        # away an incomplete shard CSV): a rerun resumes from it and recomputes no finished row.
        # exec makes the runner Snakemake's own child, so --stop-with-parent sees a killed workflow;
        # gpu_slot pins it to a GPU no other job holds and execs it in turn (the same process).
        "exec python -m experiments.gpu_slot --gpus {resources.gpu} -- "
        "python -m experiments.run {input.experiment} --shard {wildcards.i}/{wildcards.n} "
        "--journal {params.journal} --out {output} --stop-with-parent {params.flags} > {log} 2>&1"


rule profile_ncu:
    """Nsight Compute counters of one call per (hybrid batch, method), for experiments with a
    profile: section (one GPU job; every call in a child process under ncu)."""
    input:
        experiment=experiment_yaml_of,
        build=f"{RESULTS}/build/{{exp}}.json",
    output:
        f"{RESULTS}/raw/{{exp}}/ncu/profile.csv",
    log:
        f"{LOGS}/profile/{{exp}}.log",
    params:
        journal=f"{RESULTS}/journal/{{exp}}/ncu/profile.csv",
    resources:
        gpu=GPU_JOB,
    conda:
        "../envs/harness.yaml"
    shell:
        # as sweep_shard: lines go to a journal Snakemake never deletes, --out is written whole at the end
        "exec python -m experiments.gpu_slot --gpus {resources.gpu} -- "
        "python -m experiments.profile {input.experiment} --journal {params.journal} --out {output} "
        "--stop-with-parent --no-progress > {log} 2>&1"


rule trace_timeline:
    """CTA timeline (part, SM, start and end of every CTA) of one traced launch per (hybrid batch,
    method), for experiments with a timeline: section (one GPU job; smoke runs trace on the CPU,
    where the Triton interpreter records every time as 0)."""
    input:
        experiment=experiment_yaml_of,
        build=f"{RESULTS}/build/{{exp}}.json",
    output:
        f"{RESULTS}/raw/{{exp}}/timeline/ctas.csv.gz",
    log:
        f"{LOGS}/timeline/{{exp}}.log",
    params:
        flags=RUN_FLAGS,
        journal=f"{RESULTS}/journal/{{exp}}/timeline/ctas.csv.gz",
    resources:
        gpu=GPU_JOB,
    conda:
        "../envs/harness.yaml"
    shell:
        # as sweep_shard: launches go to a (gzipped) journal Snakemake never deletes, --out is
        # written whole at the end, so a rerun traces no launch that had finished
        "exec python -m experiments.gpu_slot --gpus {resources.gpu} -- "
        "python -m experiments.timeline {input.experiment} --journal {params.journal} --out {output} "
        "--stop-with-parent {params.flags} --no-progress > {log} 2>&1"
