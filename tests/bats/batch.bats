#!/usr/bin/env bats
# Batch mode: jobs handed to the (simulated) Batch API and brought home.

load helpers

setup() {
    setup_workdir
}

teardown() {
    stop_sim
}

FAST="batch.pending_ms = 200
batch.run_ms = 800"
RUN_OPTS="--batch-poll 0.1 --batch-chunk 20"

# creates: remote batches the simulator created.
creates() {
    sim_count '"kind":"batch_create"'
}

@test "batch: 45 jobs in 3 remote batches, each a valid PNG of its prompt" {
    start_sim "$FAST"
    prompts 45 "batch mode" > p.txt
    "$NBBATCH" add --via batch --batch night --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS
    echo "$output"
    [ "$status" -eq 0 ]
    run "$PNGCHECK" --dir "$WORK/out" --expect 45 --prompts p.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(creates)" -eq 3 ]
    # Not one generateContent call: it all went through the Batch API.
    [ "$(sim_count '"kind":"image"')" -eq 0 ]
    # Status shows each remote batch, done, with its counts.
    run "$NBBATCH" status
    echo "$output"
    [ "$(echo "$output" | grep -c ' done .*SUCCEEDED')" -eq 3 ]
    echo "$output" | grep -q 'batches/'
    # The ledger has the Batch API's price: half of $0.039 an image.
    spent=$("$NBBATCH" status --json night |
            grep -o '"spent_usd":[0-9.e-]*' | head -1 | cut -d: -f2)
    awk -v s="$spent" 'BEGIN { exit !(s > 45 * 0.0190 && s < 45 * 0.0200) }'
}

@test "batch: direct and Batch-mode jobs in one queue, one run" {
    start_sim "$FAST"
    prompts 10 "direct one" > d.txt
    prompts 10 "batched one" > b.txt
    cat d.txt b.txt > all.txt
    "$NBBATCH" add --out "$WORK/out" d.txt
    "$NBBATCH" add --via batch --out "$WORK/out" b.txt
    run "$NBBATCH" run $RUN_OPTS
    [ "$status" -eq 0 ]
    run "$PNGCHECK" --dir "$WORK/out" --expect 20 --prompts all.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(sim_count '"kind":"image"')" -eq 10 ]
    [ "$(creates)" -eq 1 ]
}

@test "batch: an expired batch's jobs are sent again once, then done" {
    start_sim "$FAST
batch.expire = 1"
    prompts 15 "expiring" > p.txt
    "$NBBATCH" add --via batch --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS
    echo "$output"
    [ "$status" -eq 0 ]
    echo "$output" | grep -q 'EXPIRED'
    run "$PNGCHECK" --dir "$WORK/out" --expect 15 --prompts p.txt
    [ "$status" -eq 0 ]
    [ "$(creates)" -eq 2 ]
    # Every key went into exactly two remote batches: once, then again.
    keys=$(grep '"kind":"batch_create"' "$SIM_LOG" |
           grep -o '"job-[0-9]*"' | sort | uniq -c | awk '{print $1}' |
           sort -u | tr '\n' ' ')
    [ "$keys" = "2 " ]
    run "$NBBATCH" status
    echo "$output" | grep -q 'resubmitted .*EXPIRED'
}

@test "batch: a failed batch and failed lines are retried until done" {
    start_sim "$FAST
batch.fail = 1
batch.line_fault = 0.2"
    prompts 12 "unlucky" > p.txt
    "$NBBATCH" add --via batch --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS
    echo "$output"
    [ "$status" -eq 0 ]
    echo "$output" | grep -q 'FAILED'
    run "$PNGCHECK" --dir "$WORK/out" --expect 12 --prompts p.txt
    [ "$status" -eq 0 ]
    [ "$(creates)" -ge 3 ]
}

@test "batch: a lost create is found by its display name, not created twice" {
    start_sim "$FAST
batch.create_lost = 1"
    prompts 30 "lost create" > p.txt
    "$NBBATCH" add --via batch --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS
    echo "$output"
    [ "$status" -eq 0 ]
    echo "$output" | grep -q 'found batches/'
    [ "$(creates)" -eq 2 ]
    run "$PNGCHECK" --dir "$WORK/out" --expect 30 --prompts p.txt
    [ "$status" -eq 0 ]
}

@test "batch: JOB_STATE_ names are read like BATCH_STATE_ ones" {
    start_sim "$FAST
batch.state_names = job"
    prompts 5 "job state" > p.txt
    "$NBBATCH" add --via batch --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS
    [ "$status" -eq 0 ]
    run "$PNGCHECK" --dir "$WORK/out" --expect 5 --prompts p.txt
    [ "$status" -eq 0 ]
}

@test "batch: blocked prompts are blocked, the rest done" {
    start_sim "$FAST"
    printf 'a fine picture\na [sim:safety] picture\nanother fine one\n' > p.txt
    "$NBBATCH" add --via batch --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS
    [ "$status" -eq 1 ]
    [ "$(db_state_count done)" -eq 2 ]
    [ "$(db_state_count blocked)" -eq 1 ]
}

@test "batch: --detach leaves a submitted batch; the next run collects it" {
    start_sim "batch.pending_ms = 200
batch.run_ms = 3000"
    prompts 6 "detached" > p.txt
    "$NBBATCH" add --via batch --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS --detach
    echo "$output"
    [ "$status" -eq 75 ]
    [ "$(creates)" -eq 1 ]
    "$NBBATCH" status | grep -q 'submitted'
    run "$NBBATCH" run $RUN_OPTS
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(creates)" -eq 1 ]
    run "$PNGCHECK" --dir "$WORK/out" --expect 6 --prompts p.txt
    [ "$status" -eq 0 ]
}

@test "batch: cancel cancels the remote batch too" {
    start_sim "batch.pending_ms = 200
batch.run_ms = 60000"
    prompts 8 "cancelled" > p.txt
    "$NBBATCH" add --via batch --batch gone --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS --detach
    [ "$status" -eq 75 ]
    run "$NBBATCH" cancel --batch gone
    echo "$output"
    [ "$status" -eq 0 ]
    echo "$output" | grep -q 'cancelled 1 remote batch'
    [ "$(sim_count '"kind":"batch_cancel"')" -eq 1 ]
    run "$NBBATCH" status
    echo "$output" | grep -q ' cancelled '
    run "$NBBATCH" run $RUN_OPTS
    [ "$status" -eq 0 ]
    [ "$(creates)" -eq 1 ]
    [ "$(db_state_count cancelled)" -eq 8 ]
}

@test "batch: a cancel refused for a bad key keeps the remote batch" {
    start_sim "batch.pending_ms = 200
batch.run_ms = 60000"
    prompts 8 "kept" > p.txt
    "$NBBATCH" add --via batch --batch gone --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS --detach
    [ "$status" -eq 75 ]
    GEMINI_API_KEY=wrong-key run "$NBBATCH" cancel --batch gone
    echo "$output"
    [ "$status" -ne 0 ]
    echo "$output" | grep -q 'To fix'
    ! echo "$output" | grep -q 'cancelled 1 remote batch'
    [ "$(sim_count '"kind":"batch_cancel"')" -eq 0 ]
    "$NBBATCH" status | grep -q ' submitted '
    # With the right key, the same command cancels it there, then here.
    run "$NBBATCH" cancel --batch gone
    echo "$output"
    [ "$status" -eq 0 ]
    echo "$output" | grep -q 'cancelled 1 remote batch'
    [ "$(sim_count '"kind":"batch_cancel"')" -eq 1 ]
    "$NBBATCH" status | grep -q ' cancelled '
}

@test "batch: a chunk maybe created is not ended by a cancel without a key" {
    command -v sqlite3 >/dev/null || skip "no sqlite3 command"
    start_sim "batch.pending_ms = 200
batch.run_ms = 60000"
    prompts 4 "maybe made" > p.txt
    "$NBBATCH" add --via batch --batch gone --out "$WORK/out" p.txt
    run "$NBBATCH" run $RUN_OPTS --detach
    [ "$status" -eq 75 ]
    # As after a create that got no answer.
    sqlite3 "$NBBATCH_DB" "UPDATE remote_batches SET phase = 'creating',
        remote_name = NULL"
    run env -u GEMINI_API_KEY "$NBBATCH" cancel --batch gone
    echo "$output"
    [ "$status" -ne 0 ]
    echo "$output" | grep -q 'cannot be looked up without an API key'
    "$NBBATCH" status | grep -q ' creating '
    # With the key it is found by its display name and cancelled.
    run "$NBBATCH" cancel --batch gone
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(sim_count '"kind":"batch_cancel"')" -eq 1 ]
    "$NBBATCH" status | grep -q ' cancelled '
}

@test "batch: a chunk cancelled during its upload is not created after" {
    start_sim "$FAST"
    prompts 6 "cancelled in flight" > p.txt
    "$NBBATCH" add --via batch --batch gone --out "$WORK/out" p.txt
    # The simulator stopped: the upload stays on the wire.
    kill -STOP "$SIM_PID"
    "$NBBATCH" run $RUN_OPTS > run.out 2>&1 &
    run_pid=$!
    i=0
    until "$NBBATCH" status | grep -q ' new '; do
        i=$((i + 1))
        [ "$i" -lt 100 ] || { kill -CONT "$SIM_PID"; false; }
        sleep 0.1
    done
    run "$NBBATCH" cancel --batch gone
    echo "$output"
    [ "$status" -eq 0 ]
    kill -CONT "$SIM_PID"
    wait "$run_pid" || :
    cat run.out
    [ "$(creates)" -eq 0 ]
    "$NBBATCH" status | grep -q ' cancelled '
    [ "$(db_state_count cancelled)" -eq 6 ]
}

@test "batch: a bad key stops with exit 78 and every job stays queued" {
    start_sim "$FAST"
    prompts 5 "bad key" > p.txt
    "$NBBATCH" add --via batch --out "$WORK/out" p.txt
    GEMINI_API_KEY=wrong-key run "$NBBATCH" run $RUN_OPTS
    echo "$output"
    [ "$status" -eq 78 ]
    echo "$output" | grep -q 'To fix'
    [ "$(creates)" -eq 0 ]
    [ "$(db_state_count queued)" -eq 5 ]
    # With the right key the same jobs go through.
    run "$NBBATCH" run $RUN_OPTS
    [ "$status" -eq 0 ]
    [ "$(db_state_count done)" -eq 5 ]
}

@test "batch: chaos: 200 jobs, 5 SIGKILLs at random moments" {
    export NBBATCH NBSIM PNGCHECK
    run "$BATS_TEST_DIRNAME/../chaos_batch.sh" "$WORK/chaos" 200 5 20
    echo "$output"
    [ "$status" -eq 0 ]
}
