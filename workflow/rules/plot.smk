localrules:
    plot,


rule plot:
    """Draw the experiment's figure with figures/<plot>.py (the YAML's plot: field); experiments
    with a timeline: section also get their CTA timeline tables."""
    input:
        unpack(timeline_plot_inputs),
        experiment=experiment_yaml_of,
        table=f"{RESULTS}/tables/{{exp}}.csv",
        summary=f"{RESULTS}/tables/{{exp}}_summary.csv",
    output:
        update(f"{RESULTS}/figures/{{exp}}.png"),
    log:
        f"{LOGS}/plot/{{exp}}.log",
    params:
        flags=SMOKE_FLAG,
        timeline=lambda wildcards, input: (
            f"--timeline {input.timeline} --timeline-summary {input.timeline_summary}"
            if "timeline" in input.keys() else ""
        ),
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m figures.plot --experiment {input.experiment} --table {input.table} "
        "--summary {input.summary} --out {output} {params.flags} {params.timeline} > {log} 2>&1"
