#!/usr/bin/env bash
# Tenth issue-3 lease: prefill-loop variants and tile shapes (scripts/prefill_variants.py) on nine
# figure-11 prefill shapes. Every variant is compiled first, in parallel processes sharing Triton's
# cache, so the timed pass runs one process alone on the GPU.
#   scripts/gpu_issue3_run_i.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/compile"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
labels=$(python -c "import sys; sys.path.insert(0, 'scripts'); import prefill_variants as p; print(' '.join(v[0] for v in p.VARIANTS))")
for v in $labels; do
  python scripts/prefill_variants.py --shapes 1 --variants "$v" --out "$out/compile/$v.csv" > "$out/compile/$v.log" 2>&1 &
done
wait
log compiled
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 500 > "$out/smi.csv" 2>&1 &
smi=$!
python scripts/prefill_variants.py --out "$out/prefill_variants.csv" > "$out/prefill_variants.log" 2>&1
log "timed rc=$?"
kill $smi
log done
