#!/usr/bin/env bash
# Fourth issue-3 lease (run twice): the resident, then also the progress binding. Odd-shape correctness of the POD variants, the
# pod_binding sweep (44 figure-11 batches, ticket vs resident binding, 2 vs 4 CTAs per SM), the
# pod_timeline sweep and its CTA timelines.
#   scripts/gpu_issue3_run_d.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
python scripts/gpu_check_pod.py --out "$out/pod_check.csv" --configs C0 --variants POD,POD_resident,POD_2cta_resident,POD_progress \
  > "$out/pod_check.log" 2>&1; log "pod_check rc=$?"
python -m experiments.run experiments/pod_binding.yaml --out "$out/pod_binding.csv" --no-progress \
  > "$out/pod_binding.log" 2>&1; log "pod_binding rc=$?"
python -m experiments.run experiments/pod_timeline.yaml --out "$out/pod_timeline.csv" --no-progress \
  > "$out/pod_timeline.log" 2>&1; log "pod_timeline rc=$?"
python -m experiments.timeline experiments/pod_timeline.yaml --out "$out/ctas.csv.gz" --no-progress \
  > "$out/ctas.log" 2>&1; log "timeline rc=$?"
log done
