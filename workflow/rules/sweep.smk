rule sweep_shard:
    """Time every method on shard {i} of {n} of the experiment's hybrid batches (one GPU job)."""
    input:
        experiment="experiments/{exp}.yaml",
        build=f"{RESULTS}/build/{{exp}}.json",
    output:
        f"{RESULTS}/raw/{{exp}}/shard-{{i}}-of-{{n}}.csv",
    log:
        f"{RESULTS}/logs/sweep/{{exp}}/shard-{{i}}-of-{{n}}.log",
    params:
        flags=RUN_FLAGS,
    resources:
        gpu=1,
    conda:
        "../envs/harness.yaml"
    shell:
        # Rows go to a .partial file Snakemake does not own: a killed job leaves it in place and
        # the rerun resumes from it (experiments.run skips rows already there).
        "python -m experiments.run {input.experiment} --shard {wildcards.i}/{wildcards.n} "
        "--out {output}.partial {params.flags} > {log} 2>&1 && mv {output}.partial {output}"


rule profile_ncu:
    """Nsight Compute counters of one call per (hybrid batch, method), for experiments with a
    profile: section (one GPU job; every call in a child process under ncu)."""
    input:
        experiment="experiments/{exp}.yaml",
        build=f"{RESULTS}/build/{{exp}}.json",
    output:
        f"{RESULTS}/raw/{{exp}}/ncu/profile.csv",
    log:
        f"{RESULTS}/logs/profile/{{exp}}.log",
    resources:
        gpu=1,
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m experiments.profile {input.experiment} --out {output}.partial --no-progress > {log} 2>&1 "
        "&& mv {output}.partial {output}"


rule trace_timeline:
    """CTA timeline (part, SM, start and end of every CTA) of one traced launch per (hybrid batch,
    method), for experiments with a timeline: section (one GPU job; smoke runs trace on the CPU,
    where the Triton interpreter records every time as 0)."""
    input:
        experiment="experiments/{exp}.yaml",
        build=f"{RESULTS}/build/{{exp}}.json",
    output:
        f"{RESULTS}/raw/{{exp}}/timeline/ctas.csv.gz",
    log:
        f"{RESULTS}/logs/timeline/{{exp}}.log",
    params:
        flags=RUN_FLAGS,
    resources:
        gpu=1,
    conda:
        "../envs/harness.yaml"
    shell:
        # experiments.timeline gzips a .gz.partial file too and resumes from it like the sweep.
        "python -m experiments.timeline {input.experiment} --out {output}.partial {params.flags} --no-progress "
        "> {log} 2>&1 && mv {output}.partial {output}"
