#!/usr/bin/env bash
# Second GPU lease of the issue-4 runs (after scripts/gpu_issue4_run.sh): the HFuse-style kernel's
# check, the figure-7 micro-benchmark, figure 6, and the figure-11 rows still missing.
#   scripts/gpu_issue4_run_b.sh OUT_DIR
# FlashInfer's JIT build (CPU-bound; only with WITH_FLASHINFER=1, for FI_Batched_auto) overlaps only
# the HFuse check, never a timed sweep.
set -u
out=${1:?out dir}
mkdir -p "$out/raw/figure11" "$out/raw/figure6" "$out/build" "$out/logs" "$out/checks"
log() { echo "[$(date +%T)] $*" >> "$out/logs/progress.log"; }
log start
build=""
if [ -n "${WITH_FLASHINFER:-}" ]; then
  MAX_JOBS=12 python3 -m kernels.build experiments/figure11.yaml --out "$out/build/figure11.json" \
    > "$out/logs/build-figure11.log" 2>&1 &
  build=$!
fi
if [ -e scripts/gpu_check_hfuse.py ]; then
  timeout 300 python3 scripts/gpu_check_hfuse.py --out "$out/checks" > "$out/logs/hfuse-check.log" 2>&1
  log "hfuse check exit $?"
fi
if [ -n "$build" ]; then wait $build; log "built figure11: $(tail -1 "$out/logs/build-figure11.log")"; fi
if [ -e scripts/gpu_figure7.sh ]; then
  OUT="$out/checks" timeout 300 bash scripts/gpu_figure7.sh > "$out/logs/figure7.log" 2>&1
  log "figure7 exit $?"
fi
python3 -m kernels.build experiments/figure6.yaml --out "$out/build/figure6.json" > "$out/logs/build-figure6.log" 2>&1
python3 -m experiments.run experiments/figure6.yaml --out "$out/raw/figure6/shard-0-of-1.csv" --no-progress \
  > "$out/logs/run-figure6.log" 2>&1; log "ran figure6: $(tail -1 "$out/logs/run-figure6.log")"
fig11() {  # method, shards...
  local m=$1; shift
  for i in "$@"; do
    python3 -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods "$m" --no-progress \
      --out "$out/raw/figure11/extra-$m-shard-$i-of-8.csv" > "$out/logs/fig11-$m-$i.log" 2>&1
    log "figure11 $m shard $i: $(tail -1 "$out/logs/fig11-$m-$i.log")"
  done
}
if grep -q "^  - HFuse$" experiments/figure11.yaml; then fig11 HFuse 0 1 2 3 4 5 6 7; fi
fig11 FA_BackToBack ${B2B_SHARDS:-5 6 7}
if [ -n "$build" ]; then fig11 FI_Batched_auto 0 1 2 3 4 5 6 7; fi
log done
