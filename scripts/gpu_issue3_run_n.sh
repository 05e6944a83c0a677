#!/usr/bin/env bash
# Fifteenth issue-3 lease: key-block size, pipeline depth and residency of POD's decode loop
# (pod_decode_blocks, 112 figure-11 batches), timed twice on one machine (the second pass checks
# repeatability), with nvidia-smi clocks beside it. FlashInfer is not needed.
#   scripts/gpu_issue3_run_n.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_decode_blocks/clocks" "$out/repeat"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 500 > "$out/raw/pod_decode_blocks/clocks/nvidia-smi.csv" 2>&1 &
smi=$!
python -m experiments.run experiments/pod_decode_blocks.yaml --out "$out/raw/pod_decode_blocks/shard-0-of-1.csv" \
  --no-progress > "$out/run.log" 2>&1; log "run rc=$?"
python -m experiments.run experiments/pod_decode_blocks.yaml --out "$out/repeat/pod_decode_blocks_pass2.csv" \
  --no-progress > "$out/run2.log" 2>&1; log "pass 2 rc=$?"
kill $smi
log done
