#!/usr/bin/env bash
# Seventh issue-3 lease: the new CTAs-per-SM rule against the fixed 4 CTAs per SM and OURS_Serial
# on the 180 figure-11 batches where the rule changed, all on one machine (pod_ctas_rule).
#   scripts/gpu_issue3_run_g.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
# Clocks, power and temperature beside the timings: the same batch timed 0.93 and 1.18 of OURS_Serial
# on two machines, and the provenance columns read the clock only once, at idle.
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 500 > "$out/smi.csv" 2>&1 &
smi=$!
python -m experiments.run experiments/pod_ctas_rule.yaml --out "$out/pod_ctas_rule.csv" --no-progress \
  > "$out/pod_ctas_rule.log" 2>&1; log "pod_ctas_rule rc=$?"
kill $smi
log done
