localrules:
    plot,


rule plot:
    """Draw the experiment's figure with figures/<plot>.py (the YAML's plot: field)."""
    input:
        experiment="experiments/{exp}.yaml",
        table=f"{RESULTS}/tables/{{exp}}.csv",
        summary=f"{RESULTS}/tables/{{exp}}_summary.csv",
    output:
        f"{RESULTS}/figures/{{exp}}.png",
    log:
        f"{RESULTS}/logs/plot/{{exp}}.log",
    params:
        flags=SMOKE_FLAG,
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m figures.plot --experiment {input.experiment} --table {input.table} "
        "--summary {input.summary} --out {output} {params.flags} > {log} 2>&1"
