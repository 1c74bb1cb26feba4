#!/bin/bash
# bench_add.sh - how fast `nbbatch add` is at a million prompts.
#
# usage: tests/bench/bench_add.sh [NBBATCH]   (default: $NBBATCH or ./nbbatch)
#
# Adds a 1,000,000-line prompt file (distinct prompts) to a fresh database,
# adds it again (nothing new may be added), times `nbbatch status` (best of
# 5), and adds a 10,000-line file with one broken line to another fresh
# database (exit 65, the line named, no job added).  Prints one figure per
# line and exits 1 when a target is missed:
#   add < 10 s, peak RSS < 150 MB, re-add < 10 s and 0 new jobs,
#   status < 100 ms, broken file: exit 65 and 0 jobs.
set -u

NBBATCH=${1:-${NBBATCH:-./nbbatch}}
HERE=$(cd "$(dirname "$0")" && pwd)
case $NBBATCH in /*) ;; *) NBBATCH=$PWD/$NBBATCH ;; esac
# A relative MEASURE is taken from here, before the cd below.
case ${MEASURE:-} in /*|'') ;; *) MEASURE=$PWD/$MEASURE ;; esac
[ -x "$NBBATCH" ] || { echo "bench_add: no binary at $NBBATCH" >&2; exit 2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench_add.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
cd "$TMP" || exit 2
unset NBBATCH_DB

# Peak memory comes from measure.c (wait4's rusage), built by make bench.
MEASURE=${MEASURE:-}
if [ -z "$MEASURE" ]; then
    ${CC:-cc} -O2 -o "$TMP/measure" "$HERE/measure.c" || exit 2
    MEASURE=$TMP/measure
fi
peak() {
    local f=$1 rc; shift
    "$MEASURE" "$f.raw" "$@"; rc=$?
    tr ' ' '\n' <"$f.raw" | sed -n 's/^maxrss_mb=//p' |
        awk '{ printf "%d\n", $1 * 1024 }' >"$f"
    return $rc
}

TIMEFORMAT=%3R

# job_count DB: jobs in DB (nbbatch list, or sqlite3 when list is missing).
job_count() {
    local out
    if out=$("$NBBATCH" list --json --db "$1" 2>/dev/null); then
        printf '%s\n' "$out" | grep -o '"id":' | wc -l
    else
        sqlite3 "$1" 'SELECT count(*) FROM jobs' 2>/dev/null || echo -1
    fi
}

fail=0
miss() { echo "bench_add: target missed: $*" >&2; fail=1; }
less() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

awk 'BEGIN { for (i = 1; i <= 1000000; i++)
    printf "a watercolour of fox number %d crossing a snowy field\n", i }' \
    >million.txt

# ---- the first add --------------------------------------------------------
{ time peak add.kb "$NBBATCH" add --db q.db million.txt >add.out \
    2>add.err; } 2>add.sec
add_rc=$?
add_s=$(cat add.sec)
add_mb=$(awk '{ printf "%.1f", $1 / 1024 }' add.kb)
# CPU seconds of both threads: steadier than wall time on a busy machine.
add_cpu=$(tr ' ' '\n' <add.kb.raw | sed -n 's/^cpu_s=//p')
echo "add_1m_seconds=$add_s"
echo "add_1m_cpu_seconds=${add_cpu:-?}"
echo "add_1m_peak_mb=$add_mb"
[ $add_rc -eq 0 ] || { cat add.err >&2; miss "add exited $add_rc"; }
grep -q '^added 1000000 jobs' add.out || miss "add said: $(cat add.out)"
less "$add_s" 10 || miss "add took ${add_s}s"
less "$add_mb" 150 || miss "add peaked at ${add_mb} MB"

# ---- adding it again ------------------------------------------------------
{ time "$NBBATCH" add --db q.db million.txt >readd.out 2>readd.err; } \
    2>readd.sec
readd_s=$(cat readd.sec)
readd_new=$(sed -n 's/^added \([0-9]*\) job.*/\1/p' readd.out)
echo "readd_1m_seconds=$readd_s"
echo "readd_new_jobs=${readd_new:-?}"
less "$readd_s" 10 || miss "re-add took ${readd_s}s"
[ "${readd_new:-x}" = 0 ] || miss "re-add said: $(cat readd.out)"

# ---- status, best of 5 ----------------------------------------------------
best=
for i in 1 2 3 4 5; do
    { time "$NBBATCH" status --db q.db >status.out 2>status.err; } \
        2>status.sec || { cat status.err >&2; miss "status failed"; break; }
    ms=$(awk '{ printf "%d", $1 * 1000 + 0.5 }' status.sec)
    if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
done
echo "status_ms=${best:-?}"
[ -n "$best" ] && [ "$best" -lt 100 ] || miss "status took ${best:-?} ms"

# ---- one broken line among 10,000 -------------------------------------------
head -n 10000 million.txt >broken.txt
sed -i '6789s/.*/--aspect 7:3 this line is broken/' broken.txt
"$NBBATCH" add --db broken.db broken.txt >broken.out 2>broken.err
broken_exit=$?
broken_jobs=$(job_count broken.db)
echo "broken_exit=$broken_exit"
echo "broken_jobs=$broken_jobs"
[ $broken_exit -eq 65 ] || miss "broken file exited $broken_exit"
grep -q 'broken.txt:6789: aspect_ratio' broken.err ||
    miss "broken file message: $(cat broken.err)"
[ "$broken_jobs" = 0 ] || miss "broken file left $broken_jobs jobs"

exit $fail
