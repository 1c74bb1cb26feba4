#!/usr/bin/env bats
# Run windows and off-peak jobs, with the clock faked by libfaketime.

load helpers

setup() {
    setup_workdir
    prompts 6 > p.txt
}

teardown() {
    stop_sim
}

# fake TIME CMD...: runs CMD with the wall clock starting at TIME (UTC).
fake() {
    local t=$1
    shift
    TZ=UTC FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f "@$t" "$@"
}

@test "window: a window that excludes now sends nothing and exits 75" {
    start_sim "seed = 1"
    "$NBBATCH" add --out "$WORK/out" p.txt
    run fake "2026-06-01 12:00:00" "$NBBATCH" run --window 22:00-06:00 --tz UTC
    echo "$output"
    [ "$status" -eq 75 ]
    [[ "$output" == *"opens at 2026-06-01 22:00 UTC"* ]]
    [ ! -s "$SIM_LOG" ]
}

@test "window: inside a window across midnight the batch runs" {
    start_sim "seed = 1"
    "$NBBATCH" add --out "$WORK/out" p.txt
    run fake "2026-06-02 01:30:00" "$NBBATCH" run --window 22:00-06:00 --tz Europe/Berlin
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(sim_count '"image":true')" -eq 6 ]
}

@test "window: the zone decides (06:30 in Berlin is 04:30 UTC, closed there)" {
    start_sim "seed = 1"
    "$NBBATCH" add --out "$WORK/out" p.txt
    run fake "2026-06-02 04:30:00" "$NBBATCH" run --window 22:00-06:00 --tz Europe/Berlin
    [ "$status" -eq 75 ]
    run fake "2026-06-02 04:30:00" "$NBBATCH" run --window 22:00-06:00 --tz UTC
    [ "$status" -eq 0 ]
}

@test "window: on the spring-forward night in Berlin 01:30-02:30 closes at 03:00" {
    start_sim "seed = 1"
    "$NBBATCH" add --out "$WORK/out" p.txt
    # 2026-03-29 01:10 UTC = 03:10 CEST: the window ended at 03:00.
    run fake "2026-03-29 01:10:00" "$NBBATCH" run --window 01:30-02:30 --tz Europe/Berlin
    [ "$status" -eq 75 ]
    # 00:45 UTC = 01:45 CET: open.
    run fake "2026-03-29 00:45:00" "$NBBATCH" run --window 01:30-02:30 --tz Europe/Berlin
    [ "$status" -eq 0 ]
}

@test "window: when the window closes the run stops dispatching and exits 75" {
    start_sim "seed = 1
latency_ms = 700"
    prompts 40 > many.txt
    "$NBBATCH" add --out "$WORK/out" many.txt
    run fake "2026-06-01 05:59:58" "$NBBATCH" run --workers 2 --window 22:00-06:00 --tz UTC
    echo "$output"
    [ "$status" -eq 75 ]
    [[ "$output" == *"window closed"* ]]
    done=$(sim_count '"image":true')
    [ "$done" -ge 2 ]
    [ "$done" -le 8 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"running":0'* ]]
}

@test "offpeak: off-peak jobs wait for the configured windows" {
    start_sim "seed = 1"
    "$NBBATCH" add --out "$WORK/out" --offpeak --batch night p.txt
    prompts 2 day > d.txt
    "$NBBATCH" add --out "$WORK/out-day" --batch day d.txt
    # No [offpeak] windows: only the day jobs run.
    run fake "2026-06-01 23:00:00" "$NBBATCH" run
    echo "$output"
    [ "$status" -eq 75 ]
    [[ "$output" == *"no [offpeak] windows are configured"* ]]
    [ "$(sim_count '"image":true')" -eq 2 ]
    mkdir -p "$XDG_CONFIG_HOME/nbbatch"
    printf '[offpeak]\nwindows = 22:00-06:00\ntz = UTC\n' > "$XDG_CONFIG_HOME/nbbatch/config"
    run fake "2026-06-01 12:00:00" "$NBBATCH" run
    [ "$status" -eq 75 ]
    [[ "$output" == *"off-peak jobs wait for the window at 2026-06-01 22:00 UTC"* ]]
    run fake "2026-06-01 23:00:00" "$NBBATCH" run
    [ "$status" -eq 0 ]
    [ "$(sim_count '"image":true')" -eq 8 ]
}
