#!/usr/bin/env bash
# Fifth issue-3 lease: check the new automatic CTAs-per-SM rule (PREFILL_DOMINANCE 0.4) and the
# decode split counted in CTAs on the pod_binding batches, beside the fixed 2 and 4 CTAs per SM.
#   scripts/gpu_issue3_run_e.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
python -m experiments.run experiments/pod_binding.yaml --out "$out/pod_ctas_rule.csv" --no-progress \
  --methods OURS_prefill,OURS_decode,OURS_Serial,POD,POD_4cta,POD_2cta,POD_2cta_v1_resident \
  > "$out/pod_ctas_rule.log" 2>&1; log "pod_ctas_rule rc=$?"
log done
