#!/usr/bin/env bash
# Third issue-3 lease: POD, OURS_Serial and OURS_Streams on the figure-11 grid on one machine (the
# second lease had sporadic slow samples), so that POD and our serial variants share a machine.
# The same per-(method, shard) loop as the re-timing script, over every shard.
#   scripts/gpu_issue3_run_c.sh OUT_DIR
set -u
out=${1:?out dir}
pairs=""
for m in POD OURS_Serial OURS_Streams; do for i in 0 1 2 3 4 5 6 7; do pairs="$pairs $m:$i"; done; done
exec "$(dirname "$0")/gpu_issue3_retime.sh" "$out" "$pairs"
