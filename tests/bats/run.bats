#!/usr/bin/env bats
# nbbatch run against the simulator: images right, failures handled.

load helpers

setup() {
    setup_workdir
}

teardown() {
    stop_sim
}

@test "run: every prompt becomes one valid PNG of its own image" {
    start_sim "seed = 1"
    prompts 12 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 4
    [ "$status" -eq 0 ]
    run "$PNGCHECK" --dir "$WORK/out" --expect 12 --prompts p.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$(sim_count '"image":true')" -eq 12 ]
}

@test "run: 25% faulty answers of every kind still give exactly one image each" {
    start_sim "seed = 3
format = mixed
latency_ms = 20
fault.500 = 0.02
fault.502 = 0.03
fault.503 = 0.03
fault.504 = 0.02
fault.408 = 0.01
fault.429 = 0.02
fault.429bare = 0.01
fault.reset = 0.02
fault.truncate = 0.02
fault.hang = 0.01
fault.slow = 0.01
fault.malformed = 0.01
fault.badbase64 = 0.01
fault.corrupt = 0.01
fault.noimage = 0.01
fault.textonly = 0.01
retry_delay_ms = 200
hang_ms = 60000
slow_ms = 600"
    prompts 60 "a faulty day" > p.txt
    prompts 20 "a thinking model" > g3.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    "$NBBATCH" add --out "$WORK/out" --model gemini-3-pro-image-preview \
        --batch g3 g3.txt
    run "$NBBATCH" run --workers 8 --timeout 2
    echo "$output" | tail -20
    [ "$status" -eq 0 ]
    cat p.txt g3.txt > all.txt
    run "$PNGCHECK" --dir "$WORK/out" --expect 80 --prompts all.txt
    echo "$output"
    [ "$status" -eq 0 ]
    # Faults really happened.
    [ "$(sim_count '"kind":"fault')" -gt 5 ]
}

@test "run: a bad key stops after the first answer, exit 78, all jobs queued" {
    start_sim "seed = 1
latency_ms = 50"
    prompts 20 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    export GEMINI_API_KEY=not-the-key
    run "$NBBATCH" run --workers 1
    echo "$output"
    [ "$status" -eq 78 ]
    [[ "$output" == *"API key"* ]]
    [ "$(wc -l < "$SIM_LOG")" -eq 1 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"queued":20'* ]]
    [ ! -e "$WORK/out" ] || [ -z "$(ls -A "$WORK/out")" ]
}

@test "run: a bad key with 8 in flight sends no more once the first answer came" {
    start_sim "seed = 1
latency_ms = 300"
    prompts 50 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    export GEMINI_API_KEY=not-the-key
    run "$NBBATCH" run --workers 8
    [ "$status" -eq 78 ]
    [ "$(wc -l < "$SIM_LOG")" -le 8 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"queued":50'* ]]
}

@test "run: no key at all is a configuration error before any request" {
    start_sim "seed = 1"
    prompts 2 > p.txt
    "$NBBATCH" add p.txt
    unset GEMINI_API_KEY
    run "$NBBATCH" run
    [ "$status" -eq 78 ]
    [[ "$output" == *"GEMINI_API_KEY"* ]]
    [ ! -s "$SIM_LOG" ]
}

@test "run: an unknown model stops the run with exit 78" {
    start_sim "seed = 1
models = gemini-2.5-flash-image"
    prompts 3 > p.txt
    "$NBBATCH" add --model gemini-3-pro-image-preview p.txt
    run "$NBBATCH" run --workers 1
    [ "$status" -eq 78 ]
    [[ "$output" == *"model"* ]]
}

@test "run: a blocked prompt is blocked with the model's reason; others done" {
    start_sim "seed = 1"
    printf 'a calm lake\n[sim:block] something refused\na quiet forest\n[sim:safety] unsafe output\n' > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 2
    [ "$status" -eq 1 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"done":2'* ]]
    [[ "$output" == *'"blocked":2'* ]]
    run "$NBBATCH" list --state blocked
    [[ "$output" == *"SAFETY"* ]]
    [ "$(sim_count 'sim:block')" -eq 1 ]
}

@test "run: a prompt that never gets an image fails after three tries" {
    start_sim "seed = 1"
    printf 'fine one\n[sim:noimage] never an image\n' > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 2
    [ "$status" -eq 1 ]
    [ "$(sim_count 'sim:noimage')" -eq 3 ]
    run "$NBBATCH" list --state failed
    [[ "$output" == *"never an image"* ]]
}

@test "run: the per-day quota stops the run with exit 75, jobs stay queued" {
    start_sim "seed = 1
rpd = 3"
    prompts 8 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 1
    echo "$output"
    [ "$status" -eq 75 ]
    [[ "$output" == *"daily quota"* ]]
    [ "$(sim_count 'quota-day')" -eq 1 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"done":3'* ]]
    [[ "$output" == *'"queued":5'* ]]
}

@test "run: RetryInfo delay is honoured for a per-minute 429" {
    start_sim "seed = 3
retry_delay_ms = 1500
fault.429 = 0.5"
    prompts 6 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 6 --json
    [ "$status" -eq 0 ]
    [[ "$output" == *'"event":"retry"'*'"wait_ms":1500'* ]]
    run "$PNGCHECK" --dir "$WORK/out" --expect 6
    [ "$status" -eq 0 ]
    # After each 429, the same prompt came back no sooner than 1.5 s.
    awk '
    { match($0, /"prompt_sha256":"[0-9a-f]+"/); p = substr($0, RSTART, RLENGTH)
      match($0, /"t_ms":[0-9]+/); t = substr($0, RSTART + 7, RLENGTH - 7) + 0
      match($0, /"latency_ms":[0-9]+/); l = substr($0, RSTART + 13, RLENGTH - 13) + 0
      if ((p in after) && t - l < after[p]) { print "early retry"; bad = 1 }
      delete after[p]
      if ($0 ~ /"status":429/) { after[p] = t + 1450; n++ } }
    END { print n " answers were 429"; exit (bad || n == 0) }' "$SIM_LOG"
}

@test "run: the key never appears in output, database or logs" {
    start_sim "seed = 1
key = secret-key-4711
fault.503 = 0.3"
    export GEMINI_API_KEY=secret-key-4711
    prompts 6 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    run "$NBBATCH" run --workers 2 --log-level debug --json
    [ "$status" -eq 0 ]
    [[ "$output" != *"secret-key-4711"* ]]
    ! grep -r -q "secret-key-4711" "$WORK"/nbbatch.db* "$WORK/out" "$SIM_LOG"
}

@test "run: --key-file is refused when others can read it" {
    start_sim "seed = 1"
    unset GEMINI_API_KEY
    echo sim-key > key
    chmod 644 key
    prompts 1 > p.txt
    "$NBBATCH" add p.txt
    run "$NBBATCH" run --key-file key
    [ "$status" -eq 78 ]
    [[ "$output" == *"chmod 600"* ]]
    chmod 600 key
    run "$NBBATCH" run --key-file key
    [ "$status" -eq 0 ]
}

@test "run: reference images are sent and the prompt survives in UTF-8" {
    start_sim "seed = 1"
    cp "$BATS_TEST_DIRNAME/../data/images/good-fox.png" ref.png
    printf '{"prompt": "猫とソファ 🛋️ with the ref", "images": ["ref.png"], "name": "cat"}\n' > p.jsonl
    "$NBBATCH" add --out "$WORK/out" p.jsonl
    run "$NBBATCH" run
    [ "$status" -eq 0 ]
    [ -f "$WORK/out/cat.png" ]
    run "$PNGCHECK" "$WORK/out/cat.png"
    [ "$status" -eq 0 ]
    [ "$(sim_count '"refs":1')" -eq 1 ]
    [ "$(sim_count '"prompt":"猫とソファ')" -eq 1 ]
}

@test "run: a reference image changed after add blocks the job" {
    start_sim "seed = 1"
    cp "$BATS_TEST_DIRNAME/../data/images/good-fox.png" ref.png
    printf '{"prompt": "with a ref", "images": ["ref.png"]}\n' > p.jsonl
    "$NBBATCH" add --out "$WORK/out" p.jsonl
    printf 'x' >> ref.png
    run "$NBBATCH" run
    [ "$status" -eq 1 ]
    run "$NBBATCH" list --state blocked
    [[ "$output" == *"changed"* ]]
    [ ! -s "$SIM_LOG" ]
}

@test "run: SIGINT lets requests in flight finish, then exits 130" {
    start_sim "seed = 1
latency_ms = 1500"
    prompts 20 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    "$NBBATCH" run --workers 4 > run.out 2>&1 &
    pid=$!
    sleep 0.7
    kill -INT $pid
    rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 130 ]
    # The 4 in flight finished; nothing else was sent.
    [ "$(wc -l < "$SIM_LOG")" -eq 4 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"done":4'* ]]
    [[ "$output" == *'"queued":16'* ]]
    [[ "$output" == *'"running":0'* ]]
}

@test "run: a second SIGINT aborts at once and releases the jobs" {
    start_sim "seed = 1
latency_ms = 20000"
    prompts 5 > p.txt
    "$NBBATCH" add --out "$WORK/out" p.txt
    "$NBBATCH" run --workers 2 > run.out 2>&1 &
    pid=$!
    sleep 0.5
    kill -INT $pid
    sleep 0.3
    kill -INT $pid
    rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 130 ]
    run "$NBBATCH" status --json
    [[ "$output" == *'"queued":5'* ]]
}

@test "run: jobs added while a run is going are picked up" {
    start_sim "seed = 1
latency_ms = 400"
    prompts 4 first > a.txt
    prompts 4 second > b.txt
    "$NBBATCH" add --batch work --out "$WORK/out" a.txt
    "$NBBATCH" run --workers 2 > run.out 2>&1 &
    pid=$!
    sleep 0.5
    "$NBBATCH" add --batch work --out "$WORK/out" b.txt
    wait $pid
    cat a.txt b.txt > all.txt
    run "$PNGCHECK" --dir "$WORK/out" --expect 8 --prompts all.txt
    [ "$status" -eq 0 ]
}
