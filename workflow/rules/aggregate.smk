localrules:
    aggregate,


rule aggregate:
    """Raw shards -> wide per-batch table (filter, speedups, physical limit) and summary."""
    input:
        experiment="experiments/{exp}.yaml",
        raw=raw_csvs,
        ncu=ncu_csv,
    output:
        table=f"{RESULTS}/tables/{{exp}}.csv",
        summary=f"{RESULTS}/tables/{{exp}}_summary.csv",
    log:
        f"{RESULTS}/logs/aggregate/{{exp}}.log",
    params:
        flags=SMOKE_FLAG,
        ncu=lambda wildcards, input: f"--ncu {input.ncu}" if input.ncu else "",
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m analysis.aggregate --experiment {input.experiment} --raw {input.raw} "
        "--out-table {output.table} --out-summary {output.summary} {params.flags} {params.ncu} > {log} 2>&1"
