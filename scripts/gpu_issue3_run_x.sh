#!/usr/bin/env bash
# Twenty-third issue-3 lease: after the proportional policy's cap (at most half an SM's CTAs for
# prefill; pod_policy_cps4), the 22 figure-11 batches whose plan it changed, every method of the
# same-machine files on them (dropped by scripts/drop_stale_plans.py; the runner resumes the copies
# in SRC_DIR and times only the missing lines), FlashInfer compiled first.
#   scripts/gpu_issue3_run_x.sh SRC_DIR OUT_DIR
set -u
src=${1:?dir with same-machine-*.csv}
out=${2:?out dir}
mkdir -p "$out/figure11" "$out/logs"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
cp "$src"/same-machine-*.csv "$out/figure11/"
python -m kernels.build experiments/figure11_same_machine.yaml --out "$out/logs/build.json" > "$out/logs/build.log" 2>&1
log "build rc=$?"
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/figure11/nvidia-smi-policy-cap-$(date +%H%M%S).csv" 2>&1 &
smi=$!
for i in 0 1 2 3 4 5 6 7; do
  python -m experiments.run experiments/figure11.yaml --shard "$i/8" --no-progress \
    --methods FA_prefill,FA_decode,FI_prefill_auto,FI_decode,FI_POD,OURS_Serial,POD \
    --out "$out/figure11/same-machine-shard-$i-of-8.csv" > "$out/logs/a-$i.log" 2>&1
  log "shard $i a rc=$?: $(tail -n 1 "$out/logs/a-$i.log")"
  python -m experiments.run experiments/figure11.yaml --shard "$i/8" --no-progress \
    --methods OURS_prefill,OURS_decode,OURS_CTA,HFuse \
    --out "$out/figure11/same-machine-b-shard-$i-of-8.csv" > "$out/logs/b-$i.log" 2>&1
  log "shard $i b rc=$?: $(tail -n 1 "$out/logs/b-$i.log")"
done
kill $smi
log done
