#!/usr/bin/env bash
# Eighth issue-3 lease: SM clock and board power while OURS_Serial, POD and the parts alone run
# sustained on the 44 pod_binding batches (19 where POD lost to OURS_Serial in figure 11).
#   scripts/gpu_issue3_run_h.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
python scripts/gpu_power_probe.py experiments/pod_binding.yaml --out "$out/power_probe.csv" \
  --methods OURS_prefill,OURS_decode,OURS_Serial,POD --seconds 1.0 > "$out/power_probe.log" 2>&1
log "power_probe rc=$?"
log done
