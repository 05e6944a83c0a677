localrules:
    aggregate,


rule aggregate:
    """Raw shards -> wide per-batch table (filter, speedups, physical limit) and summary."""
    input:
        experiment="experiments/{exp}.yaml",
        raw=raw_csvs,
    output:
        table=f"{RESULTS}/tables/{{exp}}.csv",
        summary=f"{RESULTS}/tables/{{exp}}_summary.csv",
    log:
        f"{RESULTS}/logs/aggregate/{{exp}}.log",
    params:
        flags=SMOKE_FLAG,
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m analysis.aggregate --experiment {input.experiment} --raw {input.raw} "
        "--out-table {output.table} --out-summary {output.summary} {params.flags} > {log} 2>&1"
