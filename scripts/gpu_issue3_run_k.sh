#!/usr/bin/env bash
# Twelfth issue-3 lease: POD with 2 CTAs/SM (128-row prefill tiles, half the L2 traffic per
# prefill FLOP) on the pod_decode_heavy batches: timing, CTA timeline and ncu counters with L2
# throughput. The runner, the tracer and the profiler resume the committed files, so only the
# POD_2cta lines are measured (FlashInfer is not needed).
#   scripts/gpu_issue3_run_k.sh OUT_DIR
set -u
out=${1:?out dir}
mkdir -p "$out/raw/pod_decode_heavy/ncu" "$out/raw/pod_decode_heavy/timeline" "$out/l2"
log() { echo "$(date +%T) $*" | tee -a "$out/progress.log"; }
log start
cp results/raw/pod_decode_heavy/shard-0-of-1.csv "$out/raw/pod_decode_heavy/"
cp results/raw/pod_decode_heavy/ncu/profile.csv "$out/raw/pod_decode_heavy/ncu/"
cp results/raw/pod_decode_heavy/timeline/ctas.csv.gz "$out/raw/pod_decode_heavy/timeline/"
cp results/gpu_checks/l2/decode_heavy_l2.csv "$out/l2/"
python -m experiments.run experiments/pod_decode_heavy.yaml --out "$out/raw/pod_decode_heavy/shard-0-of-1.csv" \
  --methods OURS_Serial,POD,POD_2cta --no-progress > "$out/run.log" 2>&1; log "run rc=$?"
# all three again on this one machine, side by side (the committed POD and OURS_Serial lines are from another)
python -m experiments.run experiments/pod_decode_heavy.yaml --out "$out/same_machine.csv" \
  --methods OURS_decode,OURS_Serial,POD,POD_2cta --no-progress > "$out/run-same.log" 2>&1; log "run same-machine rc=$?"
python -m experiments.timeline experiments/pod_decode_heavy.yaml --out "$out/raw/pod_decode_heavy/timeline/ctas.csv.gz" \
  --no-progress > "$out/timeline.log" 2>&1; log "timeline rc=$?"
python -m experiments.profile experiments/pod_decode_heavy.yaml --out "$out/raw/pod_decode_heavy/ncu/profile.csv" \
  --methods POD_2cta --no-progress > "$out/ncu.log" 2>&1; log "ncu rc=$?"
# the same counters plus L2 (lts) throughput, as results/gpu_checks/l2 has them for POD
M='sm__warps_active.avg.pct_of_peak_sustained_active'
X='lts__throughput.avg.pct_of_peak_sustained_elapsed, l1tex__throughput.avg.pct_of_peak_sustained_elapsed, lts__t_sector_hit_rate.pct'
sed -e "s/$M\]/$M, $X]/" -e "s/^name: pod_decode_heavy/name: pod_decode_heavy_l2/" experiments/pod_decode_heavy.yaml \
  > experiments/pod_decode_heavy_l2.yaml
python -m experiments.profile experiments/pod_decode_heavy_l2.yaml --out "$out/l2/decode_heavy_l2.csv" \
  --methods POD_2cta --no-progress > "$out/ncu-l2.log" 2>&1; log "ncu l2 rc=$?"
rm experiments/pod_decode_heavy_l2.yaml
log done
