#!/usr/bin/env bash
# The figure-11 run as it was made for the committed results: the Snakemake workflow on one GPU
# machine, split into shards so that a lease that ends mid-sweep keeps every finished shard and a
# later run resumes the rest (rows already in a shard's .partial file are skipped).
#   scripts/gpu_pipeline.sh RESULTS_DIR [SHARDS] [GATE_FILE]
# With GATE_FILE, the kernels are built first and the sweep waits until that file exists, so that
# other GPU work can finish before timing starts.
set -u
res=${1:?results dir}; shards=${2:-8}; gate=${3:-}
mkdir -p "$res"
smk() { python3 -m snakemake "$@" --profile profiles/local --config shards="$shards" results_dir="$res"; }
smk "$res/build/figure11.json" > "$res/snakemake-build.log" 2>&1
if [ -n "$gate" ]; then
  while [ ! -e "$gate" ]; do sleep 5; done
fi
smk figure11 > "$res/snakemake-sweep.log" 2>&1
echo "pipeline exit $?" >> "$res/snakemake-sweep.log"
