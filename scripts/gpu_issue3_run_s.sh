#!/usr/bin/env bash
# Twentieth issue-3 lease: the figure-11 lines of OURS_Serial, OURS_CTA and POD on all 4410 batches
# timed again in one lease with the final plan (prefill split "auto"), into fresh files, then a
# second pass into pass2/ (the noise between identical lines; cut short by the lease if it must).
#   scripts/gpu_issue3_run_s.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/figure11/clocks" "$out/pass2/figure11" "$out/logs"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/raw/figure11/clocks/nvidia-smi-ours-auto-$(date +%H%M%S).csv" 2>&1 &
smi=$!
for pass in raw pass2; do
  for i in 0 1 2 3 4 5 6 7; do
    python -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods OURS_Serial,OURS_CTA,POD --no-progress \
      --out "$out/$pass/figure11/ours-shard-$i-of-8.csv" > "$out/logs/$pass-$i.log" 2>&1
    log "figure11 $pass shard $i rc=$?: $(tail -n 1 "$out/logs/$pass-$i.log")"
  done
done
kill $smi
log done
