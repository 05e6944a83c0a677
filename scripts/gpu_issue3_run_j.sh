#!/usr/bin/env bash
# Eleventh issue-3 lease: why POD trails FlashInfer's POD on decode-dominated batches
# (pod_decode_heavy: timing, Nsight Compute counters, CTA timeline) and FlashInfer's fa3 prefill
# counters beside ours (FI_prefill_auto added to pod_prefill_heavy; the runner and the profiler
# resume the committed CSVs, so only the new lines are measured).
#   scripts/gpu_issue3_run_j.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_decode_heavy/ncu" "$out/raw/pod_decode_heavy/timeline" "$out/raw/pod_prefill_heavy/ncu" "$out/logs"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
cp results/raw/pod_prefill_heavy/shard-0-of-1.csv "$out/raw/pod_prefill_heavy/"
cp results/raw/pod_prefill_heavy/ncu/profile.csv "$out/raw/pod_prefill_heavy/ncu/"
python -m kernels.build experiments/pod_decode_heavy.yaml --out "$out/logs/build-decode-heavy.json" \
  > "$out/logs/build-decode-heavy.log" 2>&1; log "build decode_heavy rc=$?"
python -m kernels.build experiments/pod_prefill_heavy.yaml --out "$out/logs/build-prefill-heavy.json" \
  > "$out/logs/build-prefill-heavy.log" 2>&1; log "build prefill_heavy rc=$?"
python -m experiments.run experiments/pod_decode_heavy.yaml --out "$out/raw/pod_decode_heavy/shard-0-of-1.csv" \
  --no-progress > "$out/logs/run-decode-heavy.log" 2>&1; log "run decode_heavy rc=$?"
python -m experiments.run experiments/pod_prefill_heavy.yaml --out "$out/raw/pod_prefill_heavy/shard-0-of-1.csv" \
  --no-progress > "$out/logs/run-prefill-heavy.log" 2>&1; log "run prefill_heavy rc=$?"
python -m experiments.timeline experiments/pod_decode_heavy.yaml --out "$out/raw/pod_decode_heavy/timeline/ctas.csv.gz" \
  --no-progress > "$out/logs/timeline-decode-heavy.log" 2>&1; log "timeline decode_heavy rc=$?"
python -m experiments.profile experiments/pod_decode_heavy.yaml --out "$out/raw/pod_decode_heavy/ncu/profile.csv" \
  --no-progress > "$out/logs/ncu-decode-heavy.log" 2>&1; log "ncu decode_heavy rc=$?"
python -m experiments.profile experiments/pod_prefill_heavy.yaml --out "$out/raw/pod_prefill_heavy/ncu/profile.csv" \
  --methods FI_prefill_auto --no-progress > "$out/logs/ncu-prefill-heavy.log" 2>&1; log "ncu prefill_heavy rc=$?"
log done
