#!/usr/bin/env bats
# Crash-proof runs: SIGKILL at random moments, and two runs on one queue.

load helpers

setup() {
    setup_workdir
}

teardown() {
    stop_sim
}

@test "chaos: 300 jobs, 10 SIGKILLs at random moments, then run to the end" {
    export NBBATCH NBSIM PNGCHECK
    run "$BATS_TEST_DIRNAME/../chaos.sh" "$WORK/chaos" 300 10 16
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "two runs on one database request each prompt exactly once" {
    start_sim "seed = 5
latency_ms = 50
latency_jitter_ms = 100"
    prompts 200 "shared queue" > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    "$NBBATCH" run --workers 8 > a.log 2>&1 &
    a=$!
    "$NBBATCH" run --workers 8 > b.log 2>&1 &
    b=$!
    wait $a
    wait $b
    run "$PNGCHECK" --dir "$WORK/out" --expect 200 --prompts p.txt
    [ "$status" -eq 0 ]
    [ "$(wc -l < "$SIM_LOG")" -eq 200 ]
    dups=$(grep -o '"prompt_sha256":"[0-9a-f]*"' "$SIM_LOG" | sort | uniq -d | wc -l)
    [ "$dups" -eq 0 ]
    # Both runs did part of the work.
    grep -q "run ended: [1-9]" a.log
    grep -q "run ended: [1-9]" b.log
}

@test "an image on disk that carries its job id is not paid for again" {
    start_sim "seed = 1"
    prompts 3 > p.txt
    "$NBBATCH" add --batch one --out "$WORK/out" p.txt
    "$NBBATCH" run
    [ "$(wc -l < "$SIM_LOG")" -eq 3 ]
    # A file in the way that this job did not write blocks it instead of
    # being overwritten.
    prompts 1 other > q.txt
    "$NBBATCH" add --batch two --out "$WORK/out2" q.txt
    mkdir -p "$WORK/out2"
    cp "$WORK"/out/000001-*.png "$WORK/out2/000001-other-number-1.png"
    run "$NBBATCH" run
    [ "$status" -eq 1 ]
    [ "$(wc -l < "$SIM_LOG")" -eq 3 ]
    run "$NBBATCH" list --state blocked
    [[ "$output" == *"not written by this job"* ]]
}
