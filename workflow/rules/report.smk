# Results reports generated from the tables (analysis/report.py): results/REPORT.md for the paper
# targets (part of `all`), results/STUDIES.md for the tuning studies (part of `studies`). Every
# number is read from results/tables/, so a report cannot disagree with the figures.


localrules:
    report,
    studies_report,


rule report:
    """The paper targets' headline numbers, read from their tables."""
    input:
        report_inputs(REPORT_NAMES),
        serving_targets(),
    output:
        update(f"{RESULTS}/REPORT.md"),
    log:
        f"{LOGS}/report/REPORT.log",
    params:
        names=" ".join(REPORT_NAMES),
        tables=lambda wildcards, output: Path(output[0]).parent / "tables",
        serving=lambda wildcards, output: f"--serving {Path(output[0]).parent / 'serving'}" if serving_targets() else "",
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m analysis.report {params.names} --tables {params.tables} {params.serving} --out {output} > {log} 2>&1"


rule studies_report:
    """Every tuning study's summary, what it measures and how to rerun it."""
    input:
        report_inputs(STUDY_REPORT_NAMES),
    output:
        update(f"{RESULTS}/STUDIES.md"),
    log:
        f"{LOGS}/report/STUDIES.log",
    params:
        names=" ".join(STUDY_REPORT_NAMES),
        tables=lambda wildcards, output: Path(output[0]).parent / "tables",
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m analysis.report --studies {params.names} --tables {params.tables} --out {output} > {log} 2>&1"


rule studies:
    """Every tuning study (experiments/studies/) and its report; `all` builds the paper targets."""
    input:
        study_targets(),
        f"{RESULTS}/STUDIES.md",
