#!/usr/bin/env bash
# Third issue-3 lease: POD, OURS_Serial and OURS_Streams on the figure-11 grid on one machine (the
# second lease had sporadic slow samples), so that POD and our serial variants share a machine.
#   scripts/gpu_issue3_run_c.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/figure11" "$out/logs"
log() { echo "[$(date +%T)] $*" >> "$out/logs/progress.log"; }
log start
for m in POD OURS_Serial OURS_Streams; do
  for i in 0 1 2 3 4 5 6 7; do
    python3 -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods "$m" --no-progress \
      --out "$out/raw/figure11/extra-$m-shard-$i-of-8.csv" > "$out/logs/fig11-$m-$i.log" 2>&1
    log "figure11 $m shard $i: $(tail -1 "$out/logs/fig11-$m-$i.log")"
  done
done
log done
