#!/usr/bin/env bash
# Eighteenth issue-3 lease: POD on decode-dominated figure-11 batches (pod_decode_dominant), two
# passes into two files, with nvidia-smi clocks. The runner resumes its file, so a second call with
# the same OUT_DIR finishes a cut-short run.
#   scripts/gpu_issue3_run_q.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_decode_dominant/clocks"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/raw/pod_decode_dominant/clocks/nvidia-smi-$(date +%H%M%S).csv" 2>&1 &
smi=$!
for pass in 1 2; do
  python -m experiments.run experiments/pod_decode_dominant.yaml --no-progress \
    --out "$out/raw/pod_decode_dominant/pass$pass.csv" > "$out/run-$pass.log" 2>&1
  log "pass $pass rc=$?: $(tail -1 "$out/run-$pass.log")"
done
kill $smi
log done
