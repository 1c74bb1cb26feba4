#!/usr/bin/env bats
# The scheduler: breaker, quotas, budget, fallbacks (issue "Scheduling").

load helpers

setup() {
    setup_workdir
    mkdir -p "$XDG_CONFIG_HOME/nbbatch"
}

teardown() {
    stop_sim
    if [ -n "${SIM2_PID:-}" ]; then kill "$SIM2_PID" 2>/dev/null || :; fi
}

config() {
    printf '%s\n' "$1" > "$XDG_CONFIG_HOME/nbbatch/config"
}

# requests_between LOG FROM_MS TO_MS: requests that reached the server in
# [FROM, TO] (start = end time - latency).
requests_between() {
    awk -v a="$2" -v b="$3" '/generateContent/ {
        match($0, /"t_ms":[0-9]+/); t = substr($0, RSTART + 7, RLENGTH - 7)
        match($0, /"latency_ms":[0-9]+/); l = substr($0, RSTART + 13, RLENGTH - 13)
        s = t - l; if (s >= a && s <= b) n++ } END { print n + 0 }' "$1"
}

@test "breaker: a 30 s outage of 502s during a 16-worker run: at most 10 requests sent in it, all done after" {
    # Default breaker: 5 failures in a row open it for 30 s.
    start_sim "seed = 2
latency_ms = 300"
    prompts 300 "outage" > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    "$NBBATCH" run --workers 16 > run.log 2>&1 &
    pid=$!
    sleep 2
    t0=$(date +%s%3N)
    curl -s -X POST "$GEMINI_BASE_URL/_sim/outage?seconds=30&status=502" > /dev/null
    t1=$((t0 + 30000))
    rc=0
    wait $pid || rc=$?
    cat run.log | grep -E "breaker|ended" >&3 || :
    [ "$rc" -eq 0 ]
    n=$(requests_between "$SIM_LOG" "$t0" "$t1")
    echo "requests during the outage: $n" >&3
    [ "$n" -le 10 ]
    grep -q "circuit breaker opened" run.log
    grep -q "circuit breaker closed" run.log
    run "$PNGCHECK" --dir "$WORK/out" --expect 300 --prompts p.txt
    [ "$status" -eq 0 ]
}

@test "breaker: its state is in the database, so the next run knows it is open" {
    config "[breaker]
failures = 3
cooldown = 60s"
    start_sim "seed = 1
fault.502 = 1"
    prompts 5 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    "$NBBATCH" run --workers 1 --max-jobs 3 > /dev/null 2>&1 || :
    [ "$(wc -l < "$SIM_LOG")" -eq 3 ]
    # A second run a moment later sends nothing while the breaker is open.
    run timeout 3 "$NBBATCH" run --workers 1
    [ "$(wc -l < "$SIM_LOG")" -eq 3 ]
}

@test "quota: 240 jobs against a server limited to 120 rpm: within 1.1 x the ideal, at most 2% 429s" {
    start_sim "seed = 3
rpm = 120
latency_ms = 200"
    prompts 240 "paced" > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    t0=$(date +%s)
    run "$NBBATCH" run --workers 32 --rpm 120
    t1=$(date +%s)
    [ "$status" -eq 0 ]
    elapsed=$((t1 - t0))
    n429=$(sim_count '"status":429')
    total=$(wc -l < "$SIM_LOG")
    echo "elapsed ${elapsed}s (ideal 120 s), $n429 of $total requests answered 429" >&3
    [ "$elapsed" -le 132 ]
    [ $((n429 * 50)) -le "$total" ]
    run "$PNGCHECK" --dir "$WORK/out" --expect 240
    [ "$status" -eq 0 ]
}

@test "quota: a per-day 429 parks the model: one request, exit 75, jobs queued, next run sends nothing" {
    start_sim "seed = 1
rpd = 3"
    prompts 8 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 1
    [ "$status" -eq 75 ]
    [[ "$output" == *"daily quota"* ]]
    [ "$(sim_count 'quota-day')" -eq 1 ]
    run "$NBBATCH" run --workers 1
    [ "$status" -eq 75 ]
    [ "$(sim_count 'quota-day')" -eq 1 ]
    [ "$(wc -l < "$SIM_LOG")" -eq 4 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"done":3'* ]]
    [[ "$output" == *'"queued":5'* ]]
}

@test "budget: a budget of 5 images' worth gives exactly 5 images, then exit 75" {
    start_sim "seed = 1"
    prompts 12 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    # gemini-2.5-flash-image: $0.039 an image in the price table.
    run "$NBBATCH" run --workers 4 --budget 0.195
    echo "$output"
    [ "$status" -eq 75 ]
    [[ "$output" == *"budget"* ]]
    [ "$(sim_count '"image":true')" -eq 5 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"done":5'* ]]
    [[ "$output" == *'"queued":7'* ]]
}

@test "fallback: while the primary endpoint's breaker is open, the configured fallback endpoint is used" {
    start_sim "seed = 1
fault.502 = 1"
    printf 'seed = 2\n' > s2.conf
    "$NBSIM" --port 0 --port-file s2.port --scenario s2.conf --log s2.log > s2.out 2>&1 &
    SIM2_PID=$!
    for _ in $(seq 100); do [ -s s2.port ] && break; sleep 0.05; done
    unset GEMINI_BASE_URL
    config "[endpoint]
base_url = http://127.0.0.1:$SIM_PORT
[endpoint backup]
base_url = http://127.0.0.1:$(cat s2.port)
[breaker]
failures = 3
cooldown = 60s"
    prompts 10 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 1
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(wc -l < "$SIM_LOG")" -eq 3 ]
    [ "$(grep -c '"image":true' s2.log)" -eq 10 ]
}

@test "fallback: a fallback model is used while the model's breaker is open" {
    start_sim "seed = 1"
    config "[model gemini-3-pro-image-preview]
fallback = gemini-2.5-flash-image
[breaker]
failures = 2
cooldown = 60s"
    # The first three requests with this prompt fail with 503, whatever
    # the model: two open gemini-3-pro's breaker, the rest go elsewhere.
    echo "[sim:fail-first=3] a fox in the snow" > p.txt
    "$NBBATCH" add --model gemini-3-pro-image-preview --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 1
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(grep -c '"model":"gemini-3-pro-image-preview"' "$SIM_LOG")" -eq 2 ]
    grep '"image":true' "$SIM_LOG" | grep -q '"model":"gemini-2.5-flash-image"'
    run "$PNGCHECK" --dir "$WORK/out" --expect 1
    [ "$status" -eq 0 ]
}

@test "budget: a batch budget stops the run at its cap; status shows the spend" {
    start_sim "seed = 1"
    prompts 10 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" budget p 0.117
    [ "$status" -eq 0 ]
    run "$NBBATCH" run --workers 2
    [ "$status" -eq 75 ]
    [ "$(sim_count '"image":true')" -eq 3 ]
    run "$NBBATCH" status
    echo "$output"
    [[ "$output" == *'$0.12/0.12'* ]]
    run "$NBBATCH" status --json
    [[ "$output" == *'"spent_usd":0.116'* ]]
    run "$NBBATCH" budget nosuch 1
    [ "$status" -eq 65 ]
}
