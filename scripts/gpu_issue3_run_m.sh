#!/usr/bin/env bash
# Fourteenth issue-3 lease: the 2-CTA tile set now pipelines POD's decode loop 3 deep. The figure-11
# lines of the 180 batches whose plan changed (POD, OURS_CTA and their OURS_Serial pair, deleted by
# scripts/drop_stale_plans.py) are timed again through the runner's resume; then POD_2cta on the
# pod_decode_heavy batches, timed beside POD and OURS_Serial and under ncu.
#   scripts/gpu_issue3_run_m.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/figure11/clocks" "$out/logs"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 500 > "$out/raw/figure11/clocks/nvidia-smi-retime-ds3.csv" 2>&1 &
smi=$!
for i in 0 1 2 3 4 5 6 7; do
  for m in POD OURS_CTA OURS_Serial; do
    f="extra-$m-shard-$i-of-8.csv"
    cp "results/raw/figure11/$f" "$out/raw/figure11/$f"
    python -m experiments.run experiments/figure11.yaml --shard "$i/8" --methods "$m" --no-progress \
      --out "$out/raw/figure11/$f" > "$out/logs/retime-$m-$i.log" 2>&1
    log "figure11 $m shard $i rc=$?: $(tail -1 "$out/logs/retime-$m-$i.log")"
  done
done
python -m experiments.run experiments/pod_decode_heavy.yaml --out "$out/pod_decode_heavy_same_machine.csv" \
  --methods OURS_decode,OURS_Serial,POD,POD_2cta --no-progress > "$out/logs/decode-heavy.log" 2>&1
log "pod_decode_heavy same machine rc=$?"
kill $smi
python -m experiments.profile experiments/pod_decode_heavy.yaml --out "$out/pod_decode_heavy_ncu_2cta.csv" \
  --methods POD_2cta --no-progress > "$out/logs/ncu.log" 2>&1; log "ncu rc=$?"
log done
