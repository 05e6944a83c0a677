localrules:
    aggregate,
    aggregate_timeline,


rule aggregate:
    """Raw shards -> wide per-batch table (filter, speedups, physical limit) and summary."""
    input:
        experiment=experiment_yaml_of,
        raw=raw_csvs,
        ncu=ncu_csv,
    output:
        table=update(f"{RESULTS}/tables/{{exp}}.csv"),
        summary=update(f"{RESULTS}/tables/{{exp}}_summary.csv"),
    log:
        f"{LOGS}/aggregate/{{exp}}.log",
    wildcard_constraints:
        exp=one_of(EXPERIMENTS),
    params:
        flags=SMOKE_FLAG,
        ncu=lambda wildcards, input: f"--ncu {input.ncu}" if input.ncu else "",
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m analysis.aggregate --experiment {input.experiment} --raw {input.raw} "
        "--out-table {output.table} --out-summary {output.summary} {params.flags} {params.ncu} > {log} 2>&1"


rule aggregate_timeline:
    """CTA trace -> running prefill and decode CTAs over time per (hybrid batch, method), and per
    launch its makespan, time with only prefill / only decode / both running, CTAs per SM."""
    input:
        f"{RESULTS}/raw/{{exp}}/timeline/ctas.csv.gz",
    output:
        table=update(f"{RESULTS}/tables/{{exp}}_timeline.csv"),
        summary=update(f"{RESULTS}/tables/{{exp}}_timeline_summary.csv"),
    log:
        f"{LOGS}/aggregate/{{exp}}_timeline.log",
    wildcard_constraints:
        exp=one_of(TIMELINE_EXPERIMENTS),
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m analysis.timeline --ctas {input} --out-table {output.table} "
        "--out-summary {output.summary} > {log} 2>&1"


# Only if an experiment were named <exp>_timeline could both rules make tables/<exp>_timeline.csv.
ruleorder: aggregate_timeline > aggregate
