#!/usr/bin/env bash
# Sixteenth issue-3 lease: 2 vs 4 CTAs per SM on the 1268 figure-11 batches where the automatic rule
# picks 4, now that the 2-CTA set's decode loop is 3 deep (pod_ctas_ds3), with nvidia-smi clocks.
# The runner resumes its file, so a second call with the same OUT_DIR finishes a cut-short run.
#   scripts/gpu_issue3_run_o.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_ctas_ds3/clocks"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/raw/pod_ctas_ds3/clocks/nvidia-smi-$(date +%H%M%S).csv" 2>&1 &
smi=$!
python -m experiments.run experiments/pod_ctas_ds3.yaml --out "$out/raw/pod_ctas_ds3/shard-0-of-1.csv" \
  --no-progress > "$out/run.log" 2>&1; log "run rc=$?"
kill $smi
log done
