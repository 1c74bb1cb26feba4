#!/bin/bash
# Chaos test of Batch mode: jobs handed to the simulator's Batch API in
# chunks, nbbatch killed with SIGKILL at random moments (mid-upload,
# mid-create, mid-poll, mid-download, mid-write), then run to the end.
# Checks that every prompt has exactly one valid image of its own, that
# exactly one remote batch was created per chunk (no display name twice),
# and that no job went into a new remote batch while its last one lived.
# Usage: chaos_batch.sh WORKDIR JOBS KILLS [CHUNK]  (env NBBATCH NBSIM
# PNGCHECK; CHAOS_SEED)
set -eu
work=$1 jobs=$2 kills=$3 chunk=${4:-20}
: "${NBBATCH:?}" "${NBSIM:?}" "${PNGCHECK:?}"
run_ms=1500
mkdir -p "$work"
cd "$work"
export NBBATCH_DB=$work/nbbatch.db
unset NBBATCH_LOG_LEVEL LOG_LEVEL GOOGLE_API_KEY GOOGLE_GEMINI_BASE_URL

# Creates that are lost (the batch exists, the answer says 503), flaky
# polls and downloads, and a few failed lines: every way a step can fail.
cat > scenario.conf <<CONF
seed = ${CHAOS_SEED:-7}
format = mixed
batch.pending_ms = 300
batch.run_ms = $run_ms
batch.create_lost = 0.25
batch.http_fault = 0.05
batch.line_fault = 0.03
CONF
"$NBSIM" --port 0 --port-file sim.port --scenario scenario.conf \
    --log sim.log > sim.out 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || :' EXIT
for _ in $(seq 100); do [ -s sim.port ] && break; sleep 0.05; done
export GEMINI_BASE_URL=http://127.0.0.1:$(cat sim.port)
export GEMINI_API_KEY=sim-key

for i in $(seq 1 "$jobs"); do echo "batch chaos prompt $i"; done > prompts.txt
"$NBBATCH" add --via batch --out "$work/out" prompts.txt > /dev/null

opts="--batch-poll 0.2 --batch-chunk $chunk"
for _ in $(seq 1 "$kills"); do
    # shellcheck disable=SC2086
    "$NBBATCH" run $opts >> run.log 2>&1 &
    pid=$!
    # 0.1 to 2.5 s into the run: any step of any chunk.
    sleep "$((RANDOM % 3)).$((RANDOM % 10))$((RANDOM % 10))"
    kill -9 $pid 2>/dev/null || :
    wait $pid 2>/dev/null || :
done
rc=0
# shellcheck disable=SC2086
"$NBBATCH" run $opts >> run.log 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
    echo "chaos: final run exited $rc" >&2
    tail -20 run.log >&2
    exit 1
fi
"$PNGCHECK" --dir "$work/out" --expect "$jobs" --prompts prompts.txt

# The chunks the database knows, and the creates the simulator saw.
"$NBBATCH" status --json > status.json
chunks=$(grep -o '"display_name":"nbbatch-[0-9a-f]*"' status.json | sort -u |
         wc -l)
awk -v chunks="$chunks" -v run_ms="$run_ms" '
/"kind":"batch_create"/ {
    match($0, /"display_name":"[^"]*"/); d = substr($0, RSTART + 16, RLENGTH - 17)
    match($0, /"t_ms":[0-9]+/); t = substr($0, RSTART + 7, RLENGTH - 7) + 0
    creates++
    if (d in seen) { print "chaos: remote batch " d " created twice"; bad++ }
    seen[d] = 1
    match($0, /"keys":\[[^]]*\]/); k = substr($0, RSTART + 8, RLENGTH - 9)
    n = split(k, keys, ",")
    for (i = 1; i <= n; i++) {
        key = keys[i]
        # Sent again while the batch it was in still ran?
        if ((key in last) && t < last[key] + run_ms) {
            print "chaos: " key " sent again " (t - last[key]) " ms after its batch began"
            bad++
        }
        if (key in last) again++
        last[key] = t
    }
}
END {
    printf "chaos: %d chunks, %d remote batches created, %d jobs sent again after their batch ended\n", chunks, creates, again
    if (creates != chunks) { print "chaos: creates and chunks differ"; bad++ }
    exit (bad > 0 ? 1 : 0)
}' sim.log
lost=$(grep -c '"kind":"batch_create".*"lost":true' sim.log || :)
found=$(grep -c 'created before the last stop' run.log || :)
echo "chaos: $lost creates made the batch but answered 503 or reset;" \
     "$found remote batches found again by display name (after such an" \
     "answer or a kill)"
echo "chaos: $(grep -c '"kind":"batch_download"' sim.log || :) downloads," \
     "$(grep -c 'image already on disk' run.log || :) images written before" \
     "a kill and recorded after it"
echo "chaos: $jobs images via Batch mode, $kills kills: ok"
