# Figure 7: the fusion micro-benchmark (CUDA C++, kernels/microbench/fusion_bench.cu), its own
# build -> run -> aggregate -> plot chain beside the attention experiments.
if not SHIPPED:

    rule build_microbench:
        """Compile the micro-benchmark with nvcc for the GPU present (smoke runs: sm_80 and sm_90,
        a compile check only)."""
        input:
            FIG7_SOURCE,
        output:
            f"{RESULTS}/build/fusion_bench",
        log:
            f"{LOGS}/build/fusion_bench.log",
        params:
            arch=("-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90" if SMOKE else
                  "-arch=sm_$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)"),
        conda:
            "../envs/nvcc.yaml"
        shell:
            "nvcc -O3 {params.arch} -o {output} {input} > {log} 2>&1"

    rule run_microbench:
        """Every fusion variant at every compute share (one GPU job)."""
        input:
            config=FIG7_CONFIG,
            binary=f"{RESULTS}/build/fusion_bench",
        output:
            f"{RESULTS}/raw/figure7/figure7.csv",
        log:
            f"{LOGS}/sweep/figure7.log",
        resources:
            gpu=GPU_JOB,
        conda:
            "../envs/harness.yaml"
        shell:
            "exec python -m experiments.gpu_slot --gpus {resources.gpu} -- "
            "python -m experiments.microbench_run {input.config} --binary {input.binary} --out {output} > {log} 2>&1"


rule aggregate_microbench:
    """Raw micro-benchmark CSV -> per-compute-share table and per-variant summary."""
    input:
        f"{RESULTS}/raw/figure7/figure7.csv",
    output:
        table=update(f"{RESULTS}/tables/figure7.csv"),
        summary=update(f"{RESULTS}/tables/figure7_summary.csv"),
    log:
        f"{LOGS}/aggregate/figure7.log",
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m analysis.microbench --raw {input} --out-table {output.table} "
        "--out-summary {output.summary} > {log} 2>&1"


rule plot_microbench:
    """Figure 7 from its table."""
    input:
        f"{RESULTS}/tables/figure7.csv",
    output:
        update(f"{RESULTS}/figures/figure7.png"),
    log:
        f"{LOGS}/plot/figure7.log",
    conda:
        "../envs/harness.yaml"
    shell:
        "python -m figures.figure7 --table {input} --out {output} > {log} 2>&1"


ruleorder: aggregate_microbench > aggregate
ruleorder: plot_microbench > plot


localrules:
    aggregate_microbench,
    plot_microbench,


rule figure7:
    input:
        microbench_targets(),
