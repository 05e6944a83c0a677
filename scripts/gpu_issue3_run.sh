#!/usr/bin/env bash
# One GPU lease of the issue-3 follow-up, as run for the committed results: the close calls between
# POD and OURS_Serial timed again with more samples, then our parts alone on the figure-11 grid
# (extra-shard files beside the committed rows of the other methods).
#   scripts/gpu_issue3_run.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_close_calls" "$out/raw/figure11" "$out/logs"
log() { echo "[$(date +%T)] $*" >> "$out/logs/progress.log"; }
log start
python3 -m experiments.run experiments/pod_close_calls.yaml --out "$out/raw/pod_close_calls/shard-0-of-1.csv" \
  --no-progress > "$out/logs/close-calls.log" 2>&1
log "close calls: $(tail -1 "$out/logs/close-calls.log")"
for m in OURS_prefill OURS_decode; do
  for i in 0 1 2 3 4 5 6 7; do
    python3 -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods "$m" --no-progress \
      --out "$out/raw/figure11/extra-$m-shard-$i-of-8.csv" > "$out/logs/fig11-$m-$i.log" 2>&1
    log "figure11 $m shard $i: $(tail -1 "$out/logs/fig11-$m-$i.log")"
  done
done
log done
