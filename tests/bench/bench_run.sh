#!/bin/bash
# Run-loop figures for `make bench` (issues 3 and 4):
#   - throughput with 256 in flight against 1K answers that take 2 s;
#   - client CPU per 1K image, nbbatch next to the official JS SDK;
#   - peak memory with 64 concurrent 4K answers, nbbatch and the SDK;
#   - time to the first request on a 1,000,000-job queue, fresh and after
#     a crash.
# Usage: bench_run.sh NBBATCH NBSIM MEASURE WORKDIR
# Prints KEY=VALUE figures and a PASS/MISS line per target.
set -eu
nbbatch=$1 nbsim=$2 measure=$3 work=$4
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work"
mkdir -p "$work"
cd "$work"
unset NBBATCH_LOG_LEVEL LOG_LEVEL GOOGLE_API_KEY GOOGLE_GEMINI_BASE_URL
export GEMINI_API_KEY=sim-key
misses=0

sim_pid=
start_sim() {   # start_sim NAME SCENARIO-TEXT
    stop_sim
    printf '%s\n' "$2" > "$1.conf"
    rm -f "$1.port"
    "$nbsim" --port 0 --port-file "$1.port" --scenario "$1.conf" \
        --log "$1.simlog" > "$1.simout" 2>&1 &
    sim_pid=$!
    for _ in $(seq 200); do [ -s "$1.port" ] && break; sleep 0.05; done
    export GEMINI_BASE_URL=http://127.0.0.1:$(cat "$1.port")
}
stop_sim() {
    if [ -n "$sim_pid" ]; then
        kill "$sim_pid" 2>/dev/null || :
        wait "$sim_pid" 2>/dev/null || :
        sim_pid=
    fi
}
trap stop_sim EXIT

# sim_span_s LOG: seconds from the first request's start to the last
# answer's end, as the simulator saw them (the run without its start-up).
sim_span_s() {
    awk '{ match($0, /"t_ms":[0-9]+/); t = substr($0, RSTART + 7, RLENGTH - 7)
        match($0, /"latency_ms":[0-9]+/); l = substr($0, RSTART + 13, RLENGTH - 13)
        s = t - l; if (NR == 1 || s < a) a = s; if (NR == 1 || t > b) b = t }
        END { printf "%.3f", (b - a) / 1000 }' "$1"
}
sim_cpu_s() {   # CPU seconds the simulator used so far
    awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$sim_pid/stat"
}
field() {   # field FILE KEY
    tr ' ' '\n' < "$1" | sed -n "s/^$2=//p"
}
target() {  # target NAME OK(0/1) TEXT
    if [ "$2" = 1 ]; then echo "PASS $1: $3"; else echo "MISS $1: $3"; misses=$((misses + 1)); fi
}
prompts() { for i in $(seq 1 "$1"); do echo "$2 $i"; done; }

# --- throughput: 256 in flight, 1K answers after 2 s ----------------------
n=2048
start_sim tp "seed = 1
dims = real
latency_ms = 2000"
export NBBATCH_DB=$work/tp.db
prompts $n "throughput prompt" > tp.txt
"$nbbatch" add --out "$work/tp-out" tp.txt > /dev/null
"$measure" tp.measure "$nbbatch" run --workers 256 > tp.log 2>&1
sim_cpu=$(sim_cpu_s)
wall=$(field tp.measure wall_s)
rate=$(awk -v n=$n -v w="$wall" 'BEGIN { printf "%.1f", n / w }')
span=$(sim_span_s tp.simlog)
ideal=128
echo "run_256_images=$n run_256_wall_s=$wall run_256_images_per_s=$rate" \
     "run_256_server_span_s=$span" \
     "ideal_images_per_s=$ideal run_256_peak_mb=$(field tp.measure maxrss_mb)" \
     "run_256_cpu_s=$(field tp.measure cpu_s) sim_cpu_s=$sim_cpu"
target throughput "$(awk -v r="$rate" -v i=$ideal 'BEGIN { print (r >= 0.95 * i) ? 1 : 0 }')" \
    "$rate images/s with 256 in flight (ideal $ideal, need >= 95%)"
rm -rf "$work/tp-out"
sync
# The same with small images: what the run loop does when the decoding
# of big images does not share the two cores with the simulator.
start_sim tpt "seed = 1
latency_ms = 2000"
export NBBATCH_DB=$work/tpt.db
"$nbbatch" add --out "$work/tpt-out" tp.txt > /dev/null
"$measure" tpt.measure "$nbbatch" run --workers 256 > tpt.log 2>&1
wall=$(field tpt.measure wall_s)
rate=$(awk -v n=$n -v w="$wall" 'BEGIN { printf "%.1f", n / w }')
span=$(sim_span_s tpt.simlog)
srate=$(awk -v n=$n -v w="$span" 'BEGIN { printf "%.1f", n / w }')
echo "run_256_small_images_per_s=$rate run_256_small_wall_s=$wall" \
     "run_256_small_server_span_s=$span run_256_small_server_rate=$srate" \
     "run_256_small_peak_mb=$(field tpt.measure maxrss_mb)"
target throughput-small "$(awk -v r="$srate" 'BEGIN { print (r >= 0.95 * 128) ? 1 : 0 }')" \
    "$srate images/s with 256 in flight and small images, first request to last answer (need >= 121.6)"
rm -rf "$work/tpt-out"

# --- CPU per 1K image, nbbatch and the SDK --------------------------------
n=300
start_sim cpu "seed = 2
dims = real"
export NBBATCH_DB=$work/cpu.db
prompts $n "cpu prompt" > cpu.txt
"$nbbatch" add --out "$work/cpu-out" cpu.txt > /dev/null
"$measure" cpu.measure "$nbbatch" run --workers 16 > cpu.log 2>&1
nb_cpu=$(awk -v c="$(field cpu.measure cpu_s)" -v n=$n 'BEGIN { printf "%.1f", c * 1000 / n }')
sdk_ok=0
if (cd "$here/sdk" && npm ci --no-audit --no-fund --silent > /dev/null 2>&1); then
    sdk_ok=1
fi
if [ $sdk_ok = 1 ]; then
    "$measure" cpu-sdk.measure node "$here/sdk/sdk_bench.mjs" $n 16 \
        gemini-2.5-flash-image 1K "$work/cpu-sdk-out" > cpu-sdk.out 2>&1
    sdk_cpu=$(awk -v c="$(field cpu-sdk.measure cpu_s)" -v n=$n 'BEGIN { printf "%.1f", c * 1000 / n }')
else
    sdk_cpu=nan
fi
echo "cpu_ms_per_1k_image_nbbatch=$nb_cpu cpu_ms_per_1k_image_sdk=$sdk_cpu" \
     "($(cat cpu-sdk.out 2>/dev/null || echo 'sdk not run'))"
target cpu "$(awk -v a="$nb_cpu" -v b="$sdk_cpu" 'BEGIN { print (b != "nan" && a <= b / 4) ? 1 : 0 }')" \
    "nbbatch ${nb_cpu} ms vs SDK ${sdk_cpu} ms CPU per 1K image (aim: a quarter)"
rm -rf "$work/cpu-out" "$work/cpu-sdk-out"

# --- peak memory, 64 concurrent 4K answers --------------------------------
n=64
start_sim mem "seed = 3
dims = real
latency_ms = 1500"
export NBBATCH_DB=$work/mem.db
prompts $n "4k prompt" > mem.txt
"$nbbatch" add --model gemini-3-pro-image-preview --size 4K \
    --out "$work/mem-out" mem.txt > /dev/null
"$measure" mem.measure "$nbbatch" run --workers 64 > mem.log 2>&1
nb_mem=$(field mem.measure maxrss_mb)
if [ $sdk_ok = 1 ]; then
    "$measure" mem-sdk.measure node "$here/sdk/sdk_bench.mjs" $n 64 \
        gemini-3-pro-image-preview 4K "$work/mem-sdk-out" > mem-sdk.out 2>&1
    sdk_mem=$(field mem-sdk.measure maxrss_mb)
else
    sdk_mem=nan
fi
echo "peak_mb_64x4k_nbbatch=$nb_mem peak_mb_64x4k_sdk=$sdk_mem" \
     "wall_64x4k_nbbatch_s=$(field mem.measure wall_s)" \
     "answer_mb_4k=$(awk '/"image":true/ { match($0, /"bytes":[0-9]+/); b = substr($0, RSTART + 8, RLENGTH - 8); s += b; n++ } END { if (n) printf "%.1f", s / n / 1048576 }' mem.simlog)"
target memory "$(awk -v m="$nb_mem" 'BEGIN { print (m < 200) ? 1 : 0 }')" \
    "nbbatch peak ${nb_mem} MB with 64 concurrent 4K answers (aim: < 200 MB; SDK ${sdk_mem} MB)"
rm -rf "$work/mem-out" "$work/mem-sdk-out"

# --- first request on a 1,000,000-job queue -------------------------------
n=1000000
export NBBATCH_DB=$work/big.db
prompts $n "a queue of a million, prompt" > big.txt
"$nbbatch" add --out "$work/big-out" big.txt > /dev/null
first_request_ms() {   # LOG START_MS: ms from START to the first request
    awk -v s="$2" 'NR == 1 { match($0, /"t_ms":[0-9]+/); t = substr($0, RSTART + 7, RLENGTH - 7)
        match($0, /"latency_ms":[0-9]+/); l = substr($0, RSTART + 13, RLENGTH - 13)
        print t - l - s; exit }' "$1"
}
wait_log() { for _ in $(seq 200); do [ -s "$1" ] && return; sleep 0.05; done; }
# Fresh: answers take 3 s, so the run is killed with 256 jobs leased.
start_sim big1 "seed = 4
latency_ms = 3000"
t0=$(date +%s%3N)
"$nbbatch" run --workers 256 > big1.log 2>&1 &
pid=$!
sleep 4
kill -9 $pid; wait $pid 2>/dev/null || :
wait_log big1.simlog
fresh=$(first_request_ms big1.simlog "$t0")
# After the crash: the next run reclaims the 256 and starts again.
start_sim big2 "seed = 5"
t0=$(date +%s%3N)
"$nbbatch" run --workers 256 --max-jobs 256 > big2.log 2>&1 || :
wait_log big2.simlog
crash=$(first_request_ms big2.simlog "$t0")
echo "first_request_ms_1m_queue=$fresh first_request_ms_1m_after_crash=$crash" \
     "($(grep -o 'reclaimed [0-9]* interrupted' big2.log || echo 'nothing reclaimed'))"
target start "$([ "$fresh" -le 500 ] && [ "$crash" -le 500 ] && echo 1 || echo 0)" \
    "first request after ${fresh} ms, ${crash} ms after a crash (need <= 500 ms)"
rm -rf "$work/big-out" big.txt

stop_sim
exit $((misses > 0))
