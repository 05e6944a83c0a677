#!/usr/bin/env bash
# Nineteenth issue-3 lease, after POD's prefill split default became "two_waves": pod_split_kept
# (two passes) and the figure-11 lines of OURS_Serial, OURS_CTA and POD on the 2475 batches whose
# plan changed (dropped from results/raw/figure11 by scripts/drop_stale_plans.py; the runner
# resumes each shard file and times only the missing lines), with nvidia-smi clocks.
#   scripts/gpu_issue3_run_r.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_split_kept/clocks" "$out/raw/figure11/clocks" "$out/logs"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/raw/pod_split_kept/clocks/nvidia-smi-$(date +%H%M%S).csv" 2>&1 &
smi=$!
for pass in 1 2; do
  python -m experiments.run experiments/pod_split_kept.yaml --no-progress \
    --out "$out/raw/pod_split_kept/pass$pass.csv" > "$out/logs/split-kept-$pass.log" 2>&1
  log "pod_split_kept pass $pass rc=$?: $(tail -n 1 "$out/logs/split-kept-$pass.log")"
done
kill $smi
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/raw/figure11/clocks/nvidia-smi-ours-two-waves-$(date +%H%M%S).csv" 2>&1 &
smi=$!
for i in 0 1 2 3 4 5 6 7; do
  f=ours-shard-$i-of-8.csv
  cp "results/raw/figure11/$f" "$out/raw/figure11/$f"
  python -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods OURS_Serial,OURS_CTA,POD --no-progress \
    --out "$out/raw/figure11/$f" > "$out/logs/ours-$i.log" 2>&1
  log "figure11 ours shard $i rc=$?: $(tail -n 1 "$out/logs/ours-$i.log")"
done
kill $smi
log done
