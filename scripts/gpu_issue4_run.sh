#!/usr/bin/env bash
# One GPU lease's worth of the issue-4 experiments, as run for the committed results (no Snakemake
# on the GPU image until the wheels are installed; these are the commands its rules run).
#   scripts/gpu_issue4_run.sh OUT_DIR "EXPERIMENTS" "PROFILED" "FIG11_METHODS"
# Builds figure 11's kernels (FlashInfer JIT) while Nsight Compute profiles experiments that need
# no FlashInfer, then times each experiment, profiles the rest, and adds FIG11_METHODS to the
# figure-11 grid into extra-shard files (the other methods' rows are already committed).
set -u
out=${1:?out dir}; exps=${2:-}; profiled=${3:-}; fig11=${4:-}
mkdir -p "$out/raw" "$out/build" "$out/logs"
log() { echo "[$(date +%T)] $*" >> "$out/logs/progress.log"; }
log start
python3 -m kernels.build experiments/figure11.yaml --out "$out/build/figure11.json" > "$out/logs/build-figure11.log" 2>&1 &
build=$!
if [ -n "${EARLY_PROFILE:-}" ]; then
  for e in $EARLY_PROFILE; do
    mkdir -p "$out/raw/$e/ncu"
    python3 -m experiments.profile "experiments/$e.yaml" --out "$out/raw/$e/ncu/profile.csv" --no-progress \
      > "$out/logs/profile-$e.log" 2>&1; log "profiled $e: $(tail -1 "$out/logs/profile-$e.log")"
  done
fi
wait $build; log "built figure11: $(tail -1 "$out/logs/build-figure11.log")"
for e in $exps; do
  python3 -m kernels.build "experiments/$e.yaml" --out "$out/build/$e.json" > "$out/logs/build-$e.log" 2>&1
  mkdir -p "$out/raw/$e"
  python3 -m experiments.run "experiments/$e.yaml" --out "$out/raw/$e/shard-0-of-1.csv" --no-progress \
    > "$out/logs/run-$e.log" 2>&1; log "ran $e: $(tail -1 "$out/logs/run-$e.log")"
done
for e in $profiled; do
  mkdir -p "$out/raw/$e/ncu"
  python3 -m experiments.profile "experiments/$e.yaml" --out "$out/raw/$e/ncu/profile.csv" --no-progress \
    > "$out/logs/profile-$e.log" 2>&1; log "profiled $e: $(tail -1 "$out/logs/profile-$e.log")"
done
mkdir -p "$out/raw/figure11"
for m in $fig11; do
  for i in 0 1 2 3 4 5 6 7; do
    python3 -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods "$m" --no-progress \
      --out "$out/raw/figure11/extra-$m-shard-$i-of-8.csv" > "$out/logs/fig11-$m-$i.log" 2>&1
    log "figure11 $m shard $i: $(tail -1 "$out/logs/fig11-$m-$i.log")"
  done
done
log done
