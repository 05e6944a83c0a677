#!/usr/bin/env bash
# Re-time the figure-11 lines of this session's noisy leases: lines whose IQR exceeded 5% of their
# median were deleted from the extra-shard files, and the resumable runner fills in exactly those.
#   scripts/gpu_issue3_retime.sh OUT_DIR "METHOD:SHARD ..."   (OUT_DIR/raw/figure11 holds the files)
set -u
out=${1:?out dir}; pairs=${2:?pairs}
mkdir -p "$out/raw/figure11" "$out/logs"
log() { echo "[$(date +%T)] $*" >> "$out/logs/progress.log"; }
log start
for p in $pairs; do
  m=${p%%:*}; i=${p##*:}
  python3 -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods "$m" --no-progress \
    --out "$out/raw/figure11/extra-$m-shard-$i-of-8.csv" > "$out/logs/retime-$m-$i.log" 2>&1
  log "figure11 $m shard $i: $(tail -1 "$out/logs/retime-$m-$i.log")"
done
log done
