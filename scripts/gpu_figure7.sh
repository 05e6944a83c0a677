#!/usr/bin/env bash
# The figure-7 micro-benchmark on this machine's GPU without Snakemake: build for the GPU present,
# run the YAML's sweep into $OUT/figure7.csv.
set -eu
out=${OUT:?set OUT to an output folder}
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
mkdir -p "$out"
nvcc -O3 -arch="sm_${cap}" -o "$out/fusion_bench" kernels/microbench/fusion_bench.cu
python3 -m experiments.microbench_run experiments/microbench/figure7.yaml --binary "$out/fusion_bench" \
  --out "$out/figure7.csv"
cat "$out/figure7.csv"
