#!/usr/bin/env bash
# Thirteenth issue-3 lease: the depth of POD's decode pipeline (pod_decode_pipeline: 180 figure-11
# batches with 2 CTAs/SM, 60 sampled with 4), timed twice on one machine (the second pass checks
# repeatability), with nvidia-smi clocks beside it. FlashInfer is not needed.
#   scripts/gpu_issue3_run_l.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_decode_pipeline/clocks" "$out/repeat"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 500 > "$out/raw/pod_decode_pipeline/clocks/nvidia-smi.csv" 2>&1 &
smi=$!
python -m experiments.run experiments/pod_decode_pipeline.yaml --out "$out/raw/pod_decode_pipeline/shard-0-of-1.csv" \
  --no-progress > "$out/run.log" 2>&1; log "run rc=$?"
python -m experiments.run experiments/pod_decode_pipeline.yaml --out "$out/repeat/pod_decode_pipeline_pass2.csv" \
  --methods OURS_Serial,POD,POD_ds3,POD_ds4,POD_v1_ds3,POD_dn32_ds5 --no-progress > "$out/run2.log" 2>&1
log "pass 2 rc=$?"
kill $smi
log done
