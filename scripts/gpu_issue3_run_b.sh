#!/usr/bin/env bash
# Second issue-3 lease: the decode pipeline-depth round, then the figure-11 methods whose code path
# changed with the decode-alone default (4 stages): OURS_decode, OURS_Serial, OURS_Streams.
#   scripts/gpu_issue3_run_b.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_decode_stages" "$out/raw/figure11" "$out/logs"
log() { echo "[$(date +%T)] $*" >> "$out/logs/progress.log"; }
log start
python3 -m experiments.run experiments/pod_decode_stages.yaml --out "$out/raw/pod_decode_stages/shard-0-of-1.csv" \
  --no-progress > "$out/logs/decode-stages.log" 2>&1
log "decode stages: $(tail -1 "$out/logs/decode-stages.log")"
for m in OURS_decode OURS_Serial OURS_Streams; do
  for i in 0 1 2 3 4 5 6 7; do
    python3 -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods "$m" --no-progress \
      --out "$out/raw/figure11/extra-$m-shard-$i-of-8.csv" > "$out/logs/fig11-$m-$i.log" 2>&1
    log "figure11 $m shard $i: $(tail -1 "$out/logs/fig11-$m-$i.log")"
  done
done
log done
