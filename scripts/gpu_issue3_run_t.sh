#!/usr/bin/env bash
# Twenty-first issue-3 lease: figure11_same_machine, 400 kept figure-11 batches with the best
# peers' parts and ours timed on one machine (FlashInfer JIT-compiled first by the build step).
#   scripts/gpu_issue3_run_t.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/figure11_same_machine/clocks" "$out/logs"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
python -m kernels.build experiments/figure11_same_machine.yaml --out "$out/logs/build.json" > "$out/logs/build.log" 2>&1
log "build rc=$?"
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 1000 > "$out/raw/figure11_same_machine/clocks/nvidia-smi-$(date +%H%M%S).csv" 2>&1 &
smi=$!
python -m experiments.run experiments/figure11_same_machine.yaml --no-progress \
  --out "$out/raw/figure11_same_machine/shard-0-of-1.csv" > "$out/logs/run.log" 2>&1
log "run rc=$?: $(tail -n 1 "$out/logs/run.log")"
kill $smi
log done
