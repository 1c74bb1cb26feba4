#!/bin/bash
# Chaos test: a batch against a faulty simulator, nbbatch killed with
# SIGKILL at random moments, then run to the end.  Checks that every prompt
# has exactly one valid image of its own, that nothing else is in the
# folder, and that the simulator answered a prompt with an image twice only
# where a kill cut that very request short.
# Usage: chaos.sh WORKDIR JOBS KILLS [WORKERS]   (env NBBATCH NBSIM PNGCHECK)
set -eu
work=$1 jobs=$2 kills=$3 workers=${4:-16}
: "${NBBATCH:?}" "${NBSIM:?}" "${PNGCHECK:?}"
mkdir -p "$work"
cd "$work"
export NBBATCH_DB=$work/nbbatch.db
unset NBBATCH_LOG_LEVEL LOG_LEVEL GOOGLE_API_KEY GOOGLE_GEMINI_BASE_URL

cat > scenario.conf <<CONF
seed = ${CHAOS_SEED:-11}
format = mixed
latency_ms = 150
latency_jitter_ms = 300
fault.500 = 0.03
fault.502 = 0.03
fault.503 = 0.03
fault.429 = 0.02
fault.reset = 0.02
fault.truncate = 0.03
fault.slow = 0.02
fault.malformed = 0.01
fault.corrupt = 0.01
fault.noimage = 0.01
retry_delay_ms = 100
slow_ms = 800
CONF
"$NBSIM" --port 0 --port-file sim.port --scenario scenario.conf \
    --log sim.log > sim.out 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || :' EXIT
for _ in $(seq 100); do [ -s sim.port ] && break; sleep 0.05; done
export GEMINI_BASE_URL=http://127.0.0.1:$(cat sim.port)
export GEMINI_API_KEY=sim-key

for i in $(seq 1 "$jobs"); do echo "chaos prompt $i"; done > prompts.txt
"$NBBATCH" add --out "$work/out" prompts.txt > /dev/null

: > kills.txt
for k in $(seq 1 "$kills"); do
    "$NBBATCH" run --workers "$workers" --timeout 5 >> run.log 2>&1 &
    pid=$!
    # 0.2 to 1.2 s into the run: mid-request, mid-decode, mid-write.
    sleep "0.$((RANDOM % 10 + 2))"
    kill -9 $pid 2>/dev/null || :
    wait $pid 2>/dev/null || :
    date +%s%3N >> kills.txt
done
rc=0
"$NBBATCH" run --workers "$workers" --timeout 5 >> run.log 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
    echo "chaos: final run exited $rc" >&2
    tail -20 run.log >&2
    exit 1
fi
"$PNGCHECK" --dir "$work/out" --expect "$jobs" --prompts prompts.txt

# Each repeated good image answer for a prompt (broken ones - truncated,
# corrupt - are retried by design) must be covered by a kill that came
# after it started and before the next request for that prompt.
awk -v killfile=kills.txt '
BEGIN { while ((getline k < killfile) > 0) kill[++nk] = k }
/"image":true/ && /"kind":"(image|fault:slow)"/ {
    match($0, /"prompt_sha256":"[0-9a-f]+"/); p = substr($0, RSTART + 17, RLENGTH - 18)
    match($0, /"t_ms":[0-9]+/); t = substr($0, RSTART + 7, RLENGTH - 7) + 0
    match($0, /"latency_ms":[0-9]+/); l = substr($0, RSTART + 13, RLENGTH - 13) + 0
    n[p]++; start[p, n[p]] = t - l
}
END {
    bad = 0; twice = 0
    for (p in n) {
        if (n[p] < 2) continue
        twice++
        # sort starts
        for (i = 1; i <= n[p]; i++) s[i] = start[p, i]
        for (i = 1; i <= n[p]; i++) for (j = i + 1; j <= n[p]; j++)
            if (s[j] < s[i]) { x = s[i]; s[i] = s[j]; s[j] = x }
        for (i = 1; i < n[p]; i++) {
            ok = 0
            for (k = 1; k <= nk; k++) if (kill[k] >= s[i] && kill[k] <= s[i + 1]) ok = 1
            if (!ok) { print "chaos: prompt " p " got an image twice with no kill between"; bad++ }
        }
    }
    printf "chaos: %d prompts answered with an image more than once, all explained by a kill\n", twice
    exit (bad > 0 ? 1 : 0)
}' sim.log
echo "chaos: $jobs images, $kills kills: ok"
