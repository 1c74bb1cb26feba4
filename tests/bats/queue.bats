#!/usr/bin/env bats
# The queue commands: status, list, show, cancel, retry, pause, resume.

load helpers

setup() {
    setup_workdir
}

teardown() {
    stop_sim
}

# js EXPR: evaluates EXPR with d = the JSON document on stdin (node).
js() {
    node -e 'const d = JSON.parse(require("fs").readFileSync(0, "utf8"));
             console.log(eval(process.argv[1]))' "$1"
}

# three_jobs: batch "p" with three queued jobs.
three_jobs() {
    prompts 3 >p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
}

@test "queue: status of an empty queue" {
    run "$NBBATCH" status
    [ "$status" -eq 0 ]
    [[ "$output" == *"no batches yet"* ]]
    run "$NBBATCH" status --json
    [ "$status" -eq 0 ]
    [ "$(echo "$output" | js 'd.batches.length')" -eq 0 ]
    [ "$(echo "$output" | js 'd.total.total')" -eq 0 ]
}

@test "queue: the database is created with mode 0600" {
    run "$NBBATCH" status
    [ "$status" -eq 0 ]
    [ "$(stat -c %a "$NBBATCH_DB")" = 600 ]
}

@test "queue: status shows counts, images and folder per batch" {
    three_jobs
    prompts 2 other >q.txt
    "$NBBATCH" add --batch second --out "$WORK/o2" q.txt
    run "$NBBATCH" status
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == BATCH*QUEUED*RUNNING*DONE*FAILED*BLOCKED*SPENT*FOLDER ]]
    [[ "${lines[1]}" =~ ^p\ +3\ +0\ +0\ +0\ +0\ +0\ +0/3\ +\$0\.00\ +no\ +$WORK/out$ ]]
    [[ "${lines[2]}" == second*"0/2"*"$WORK/o2" ]]
    [[ "${lines[3]}" == total*"0/5"*'$0.00' ]]
    run "$NBBATCH" status second
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 2 ]
    [[ "${lines[1]}" == second* ]]
}

@test "queue: status --json is one stable object" {
    three_jobs
    run "$NBBATCH" status --json
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 1 ]
    [[ "$output" == *'"queued":3'* ]]
    [ "$(echo "$output" | js 'd.batches[0].name')" = p ]
    [ "$(echo "$output" | js 'd.batches[0].total')" -eq 3 ]
    [ "$(echo "$output" | js 'd.batches[0].paused')" = false ]
    [ "$(echo "$output" | js 'd.batches[0].out_dir')" = "$WORK/out" ]
    [ "$(echo "$output" | js 'd.total.queued')" -eq 3 ]
    # A time both as milliseconds and as ISO-8601 UTC.
    [ "$(echo "$output" | js 'd.batches[0].created_ms > 1.6e12')" = true ]
    iso=$(echo "$output" | js 'd.batches[0].created')
    [[ "$iso" =~ ^20[0-9-]+T[0-9:.]+Z$ ]]
}

@test "queue: status of an unknown batch is a data error" {
    three_jobs
    run "$NBBATCH" status nope
    [ "$status" -eq 65 ]
    [[ "$output" == *"no batch named 'nope'"* ]]
}

@test "queue: list shows one line per job, filters and limits" {
    three_jobs
    prompts 2 other >q.txt
    "$NBBATCH" add --batch second --out "$WORK/o2" q.txt
    run "$NBBATCH" list
    echo "$output"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 6 ]
    [[ "${lines[0]}" == *ID*BATCH*STATE*TRIES*PROMPT*RESULT* ]]
    [[ "${lines[1]}" =~ ^\ +1\ +p\ +queued\ +0\ +a\ test\ image\ number\ 1 ]]
    [[ "${lines[1]}" == *"$WORK/out/000001-a-test-image-number-1.png" ]]
    run "$NBBATCH" list --batch second
    [ "${#lines[@]}" -eq 3 ]
    [[ "${lines[1]}" == *"other number 1"* ]]
    run "$NBBATCH" list --limit 2
    [ "${#lines[@]}" -eq 3 ]
    run "$NBBATCH" list --state done
    [ "$status" -eq 0 ]
    [ "$output" = "nbbatch: info: list: no jobs match" ]
}

@test "queue: list shortens long prompts to the width, keeps paths whole" {
    printf '%s\n' "$(printf 'word%.0s ' $(seq 1 60))end" >long.txt
    "$NBBATCH" add --out "$WORK/out" long.txt
    COLUMNS=80 run "$NBBATCH" list
    echo "$output"
    # 80 columns leave (80 - 38) / 2 = 21 for the prompt.
    [[ "${lines[1]}" == *" word word word wor...  $WORK/out/"* ]]
    [[ "${lines[1]}" != *"end"* ]]
    [[ "${lines[1]}" == *"$WORK/out/000001-word-word"*".png" ]]
}

@test "queue: list --json is an array of job objects" {
    three_jobs
    run "$NBBATCH" list --json
    [ "$status" -eq 0 ]
    [ "$(echo "$output" | js 'd.length')" -eq 3 ]
    [ "$(echo "$output" | js 'd[2].id')" -eq 3 ]
    [ "$(echo "$output" | js 'd[0].state')" = queued ]
    [ "$(echo "$output" | js 'd[0].prompt')" = "a test image number 1" ]
    [ "$(echo "$output" | js 'd[0].error')" = null ]
    [ "$(echo "$output" | js 'd[0].key.length')" -eq 64 ]
    run "$NBBATCH" list --json --state done
    [ "$output" = "[]" ]
}

@test "queue: list rejects an unknown state and a bad limit" {
    run "$NBBATCH" list --state finished
    [ "$status" -eq 64 ]
    [[ "$output" == *"unknown state 'finished'"* ]]
    run "$NBBATCH" list --limit -3
    [ "$status" -eq 64 ]
    run "$NBBATCH" list --batch nope
    [ "$status" -eq 65 ]
}

@test "queue: show prints every field of a job" {
    three_jobs
    run "$NBBATCH" show 2
    echo "$output"
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "job 2 of batch p (#2)" ]
    [[ "$output" == *"state         queued"* ]]
    [[ "$output" == *"prompt        a test image number 2"* ]]
    out=$WORK/out/000002-a-test-image-number-2.png
    [[ "$output" == *"output        $out"* ]]
    [[ "$output" == *"(no attempts yet)"* ]]
    run "$NBBATCH" show --json 2
    [ "$status" -eq 0 ]
    [ "$(echo "$output" | js 'd.id')" -eq 2 ]
    [ "$(echo "$output" | js 'd.history.length')" -eq 0 ]
    [ "$(echo "$output" | js 'd.model')" = gemini-2.5-flash-image ]
}

@test "queue: show of a missing or malformed job" {
    three_jobs
    run "$NBBATCH" show 99
    [ "$status" -eq 65 ]
    [[ "$output" == *"no job 99"* ]]
    run "$NBBATCH" show abc
    [ "$status" -eq 64 ]
    run "$NBBATCH" show
    [ "$status" -eq 64 ]
    [[ "$output" == *"usage: nbbatch show"* ]]
}

@test "queue: cancel a job, then a batch" {
    three_jobs
    run "$NBBATCH" cancel 2
    [ "$status" -eq 0 ]
    [ "$output" = "cancelled job 2" ]
    run "$NBBATCH" cancel 2
    [ "$status" -eq 0 ]
    [ "$output" = "cancelled 0 jobs: job 2 is cancelled" ]
    run "$NBBATCH" cancel --batch p
    [ "$output" = "cancelled 2 jobs of batch p" ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"cancelled":3'* ]]
    [[ "$output" == *'"queued":0'* ]]
}

@test "queue: cancel needs exactly one of a job and a batch" {
    three_jobs
    run "$NBBATCH" cancel
    [ "$status" -eq 64 ]
    run "$NBBATCH" cancel 1 --batch p
    [ "$status" -eq 64 ]
    run "$NBBATCH" cancel --batch nope
    [ "$status" -eq 65 ]
    run "$NBBATCH" cancel 42
    [ "$status" -eq 65 ]
    [ "$(db_state_count queued)" -eq 3 ]
}

@test "queue: pause and resume a batch" {
    three_jobs
    run "$NBBATCH" pause p
    [ "$status" -eq 0 ]
    [ "$output" = "paused batch p" ]
    run "$NBBATCH" status --json
    [ "$(echo "$output" | js 'd.batches[0].paused')" = true ]
    run "$NBBATCH" status
    [[ "${lines[1]}" == *" yes "* ]]
    run "$NBBATCH" resume p
    [ "$output" = "resumed batch p" ]
    run "$NBBATCH" status --json
    [ "$(echo "$output" | js 'd.batches[0].paused')" = false ]
    run "$NBBATCH" pause nope
    [ "$status" -eq 65 ]
    run "$NBBATCH" resume
    [ "$status" -eq 64 ]
}

@test "queue: --db overrides NBBATCH_DB" {
    three_jobs
    run "$NBBATCH" status --db "$WORK/other.db" --json
    [ "$status" -eq 0 ]
    [ "$(echo "$output" | js 'd.batches.length')" -eq 0 ]
    [ -e "$WORK/other.db" ]
}

@test "queue: a database from a newer nbbatch is refused" {
    command -v sqlite3 >/dev/null || skip "no sqlite3 command"
    three_jobs
    sqlite3 "$NBBATCH_DB" 'PRAGMA user_version = 999'
    run "$NBBATCH" status
    [ "$status" -eq 78 ]
    [[ "$output" == *"newer"* ]]
}

@test "queue: unknown options are usage errors" {
    run "$NBBATCH" status --bogus
    [ "$status" -eq 64 ]
    [[ "$output" == *"usage: nbbatch status"* ]]
    run "$NBBATCH" retry --state done
    [ "$status" -eq 64 ]
    run "$NBBATCH" retry 1 --all
    [ "$status" -eq 64 ]
    run "$NBBATCH" status --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"usage: nbbatch status"* ]]
}

@test "queue: after a run, list and show tell results and errors; retry" {
    [ -x "$NBSIM" ] || skip "no simulator"
    start_sim "seed = 1
latency_ms = 10"
    printf 'a calm lake\n[sim:block] refused\n[sim:noimage] never\n' >p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 2
    [ "$status" -eq 1 ]
    run "$NBBATCH" list
    echo "$output"
    [[ "${lines[1]}" == *" done "*"$WORK/out/000001-a-calm-lake.png" ]]
    [[ "${lines[2]}" == *" blocked "*"SAFETY"* ]]
    [[ "${lines[3]}" == *" failed "*"no image"* ]]
    run "$NBBATCH" show 3
    echo "$output"
    [[ "$output" == *"last error"*"no image"* ]]
    [ "$(echo "$output" | grep -c '^  #')" -eq 3 ]
    run "$NBBATCH" show --json 1
    [ "$(echo "$output" | js 'd.history[0].outcome')" = done ]
    [ "$(echo "$output" | js 'd.history[0].output_path')" = \
      "$WORK/out/000001-a-calm-lake.png" ]
    run "$NBBATCH" retry 1
    [ "$output" = "retried 0 jobs: job 1 is done" ]
    run "$NBBATCH" retry 2
    [ "$output" = "retried job 2" ]
    run "$NBBATCH" retry --batch p
    [ "$output" = "retried 1 failed or blocked job" ]
    # A cancel is undone by naming the job, not by a batch-wide retry.
    "$NBBATCH" cancel 3
    run "$NBBATCH" retry --batch p
    [ "$output" = "retried 0 failed or blocked jobs" ]
    run "$NBBATCH" retry 3
    [ "$output" = "retried job 3" ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"queued":2'* ]]
    [[ "$output" == *'"done":1'* ]]
    run "$NBBATCH" show --json 3
    [ "$(echo "$output" | js 'd.attempts_soft')" -eq 0 ]
    [ "$(echo "$output" | js 'd.attempts')" -eq 3 ]
}

@test "queue: a paused batch is not run; resumed, it is" {
    [ -x "$NBSIM" ] || skip "no simulator"
    start_sim "seed = 1
latency_ms = 10"
    prompts 2 first >a.txt
    prompts 2 second >b.txt
    "$NBBATCH" add --out "$WORK/a" a.txt
    "$NBBATCH" add --out "$WORK/b" b.txt
    "$NBBATCH" pause a
    run "$NBBATCH" run --workers 2
    [ "$status" -eq 0 ]
    run "$NBBATCH" status --json
    [ "$(echo "$output" | js 'd.batches[0].queued')" -eq 2 ]
    [ "$(echo "$output" | js 'd.batches[1].done')" -eq 2 ]
    "$NBBATCH" resume a
    run "$NBBATCH" run --workers 2
    [ "$status" -eq 0 ]
    run "$NBBATCH" status --json
    [ "$(echo "$output" | js 'd.total.done')" -eq 4 ]
}
