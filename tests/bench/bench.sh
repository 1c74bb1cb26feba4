#!/bin/bash
# `make bench`: every figure the issues ask for, measured in one run on this
# machine.  Each part prints KEY=VALUE figures; the run parts also print a
# PASS or MISS line per target.  Exit status 1 when any target is missed.
# Usage: bench.sh NBBATCH BUILD-DIR
set -u
nbbatch=$1 build=$2
here=$(cd "$(dirname "$0")" && pwd)
work=${BENCH_DIR:-$(pwd)/build/bench}
mkdir -p "$work"
status=0

echo "== machine: $(nproc) cores, $(free -m | awk '/^Mem:/ { print $2 }') MB," \
     "$(date -u +%Y-%m-%dT%H:%MZ)"
echo "== nbbatch add at a million prompts (issue 2)"
MEASURE=$build/tests/measure bash "$here/bench_add.sh" "$nbbatch" || status=1
echo "== queue at a million jobs (issue 2)"
(cd "$work" && "$build/tests/queue_bench") || status=1
echo "== answer streaming decode (issue 3)"
"$build/tests/answer_bench" || status=1
echo "== image validation and JPEG to PNG (issue 3)"
"$build/tests/image_bench" || status=1
echo "== the run loop against the simulator (issues 3 and 4)"
bash "$here/bench_run.sh" "$nbbatch" "$build/nbsim" "$build/tests/measure" \
    "$work/run" || status=1
echo "== Batch mode under SIGKILL (issue 6): 1000 jobs, 20 kills, chunks of 50"
rm -rf "$work/batch"
NBBATCH=$nbbatch NBSIM=$build/nbsim PNGCHECK=$build/tests/pngcheck \
    CHAOS_SEED=$RANDOM bash "$here/../chaos_batch.sh" "$work/batch" 1000 20 50 ||
    status=1
exit $status
