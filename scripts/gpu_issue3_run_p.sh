#!/usr/bin/env bash
# Seventeenth issue-3 lease: the figure-11 lines of our three one-kernel-family methods, all 4410
# batches, timed again with the final kernel (decode loop 3 deep with 2 CTAs/SM, rule threshold
# 0.25): OURS_Serial, OURS_CTA and POD of one batch back to back in one runner call per shard, so
# that POD and its own serial time share the machine state. The old per-method files were removed
# from results/raw/figure11; the runner resumes, so a second call with the same OUT_DIR finishes.
#   scripts/gpu_issue3_run_p.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/figure11/clocks" "$out/logs"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/raw/figure11/clocks/nvidia-smi-ours-$(date +%H%M%S).csv" 2>&1 &
smi=$!
for i in 0 1 2 3 4 5 6 7; do
  python -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods OURS_Serial,OURS_CTA,POD --no-progress \
    --out "$out/raw/figure11/ours-shard-$i-of-8.csv" > "$out/logs/ours-$i.log" 2>&1
  log "figure11 ours shard $i rc=$?: $(tail -1 "$out/logs/ours-$i.log")"
done
kill $smi
log done
