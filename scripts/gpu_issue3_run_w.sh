#!/usr/bin/env bash
# Twenty-second issue-3 lease: pod_policy_cps4, two passes into two files, with nvidia-smi clocks.
#   scripts/gpu_issue3_run_w.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_policy_cps4/clocks"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/raw/pod_policy_cps4/clocks/nvidia-smi-$(date +%H%M%S).csv" 2>&1 &
smi=$!
for pass in 1 2; do
  python -m experiments.run experiments/pod_policy_cps4.yaml --no-progress \
    --out "$out/raw/pod_policy_cps4/pass$pass.csv" > "$out/run-$pass.log" 2>&1
  log "pass $pass rc=$?: $(tail -n 1 "$out/run-$pass.log")"
done
kill $smi
log done
