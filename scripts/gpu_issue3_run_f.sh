#!/usr/bin/env bash
# Sixth issue-3 lease (and the ninth): re-time POD, OURS_CTA and OURS_Serial on the figure-11 batches whose POD or
# OURS_CTA plan changed with the new CTAs-per-SM rule, or (ninth) where one of their lines had an IQR
# above 5% of its median (scripts/drop_stale_plans.py [--noisy 0.05] removed their
# lines); the resumable runner fills in exactly those, shard by shard.
#   scripts/gpu_issue3_run_f.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/figure11"
for m in POD OURS_CTA OURS_Serial; do cp results/raw/figure11/extra-$m-shard-*-of-8.csv "$out/raw/figure11/"; done
pairs=""
for m in POD OURS_CTA OURS_Serial; do for i in 0 1 2 3 4 5 6 7; do pairs="$pairs $m:$i"; done; done
exec "$(dirname "$0")/gpu_issue3_retime.sh" "$out" "$pairs"
