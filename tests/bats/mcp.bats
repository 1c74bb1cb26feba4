#!/usr/bin/env bats
# nbbatch mcp: the official MCP SDK client against the simulator, a bad key,
# and malformed input answered with JSON-RPC errors.

load helpers

MCP_DIR=$BATS_TEST_DIRNAME/../mcp

setup_file() {
    # The pinned SDK, installed from the lockfile once.
    if [ ! -d "$MCP_DIR/node_modules/@modelcontextprotocol/sdk" ]; then
        (cd "$MCP_DIR" && npm ci --no-audit --no-fund --silent) >&3 2>&1
    fi
}

setup() {
    setup_workdir
}

teardown() {
    stop_sim
}

# mcp_lines: sends stdin to `nbbatch mcp` and keeps its answers in out.jsonl.
mcp_lines() {
    "$NBBATCH" mcp --db "$WORK/nbbatch.db" >"$WORK/out.jsonl" \
        2>"$WORK/mcp.err"
}

# answer ID: the answer line with that id.
answer() {
    grep -- "\"id\":$1," "$WORK/out.jsonl"
}

@test "mcp: the SDK client gets 10 valid images of 10 prompts, 30% faults" {
    start_sim "seed = 7
latency_ms = 20
latency_jitter_ms = 60
fault.500 = 0.05
fault.502 = 0.05
fault.503 = 0.05
fault.429 = 0.03
fault.reset = 0.04
fault.truncate = 0.03
fault.malformed = 0.02
fault.badbase64 = 0.01
fault.corrupt = 0.02
retry_delay_ms = 200"
    prompts 10 "an agent's picture" > p.txt
    run node "$MCP_DIR/client.mjs" generate "$NBBATCH" "$WORK/nbbatch.db" \
        p.txt
    echo "$output" | tail -5
    [ "$status" -eq 0 ]
    [[ "$output" == *'"ok":true'* ]]
    # Progress was reported while the images came.
    [[ "$output" == *'"progress":['[1-9]* ]]
    run "$PNGCHECK" --dir "$WORK/out/sdk" --expect 10 --prompts p.txt
    echo "$output"
    [ "$status" -eq 0 ]
    echo "requests: $(wc -l < "$SIM_LOG"), faulty answers:" \
         "$(sim_count '"kind":"fault')"
    [ "$(sim_count '"kind":"fault')" -gt 0 ]
}

@test "mcp: a bad key is an error result naming the fix; serving goes on" {
    start_sim "seed = 1"
    export GEMINI_API_KEY=not-the-key-4711
    run node "$MCP_DIR/client.mjs" badkey "$NBBATCH" "$WORK/nbbatch.db"
    echo "$output" | tail -5
    [ "$status" -eq 0 ]
    [[ "$output" == *'"isError":true'* ]]
    [[ "$output" != *not-the-key-4711* ]]
    # The job waits in the queue for a good key.
    [ "$(db_state_count queued)" -eq 1 ]
}

@test "mcp: malformed input gets JSON-RPC errors and later requests answers" {
    {
        echo 'not json at all'
        echo '{"jsonrpc":"2.0","id":1,"method":"no/such/method"}'
        echo '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"nope"}}'
        echo '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":[1]}'
        echo '[{"jsonrpc":"2.0","id":4,"method":"ping"}]'
        echo '{"jsonrpc":"1.0","id":5,"method":"ping"}'
        echo '{"jsonrpc":"2.0","id":6,"method":"initialize","params":{}}'
        echo '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"generate_images","arguments":{"prompts":["a"],"aspect_ratio":"7:3"}}}'
        echo '{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"job_status","arguments":{"job_ids":[99]}}}'
        echo '{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"generate_images","arguments":{"prompt":"b","reference_images":["/no/such/ref.png"]}}}'
        echo '{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"cancel","arguments":{"job_ids":[1],"batch":"x"}}}'
        echo '{"jsonrpc":"2.0","method":"notifications/initialized"}'
        echo '{"jsonrpc":"2.0","id":11,"method":"initialize","params":{"protocolVersion":"1999-01-01","capabilities":{}}}'
        head -c 17000000 /dev/zero | tr '\0' 'x'
        echo
        echo '{"jsonrpc":"2.0","id":12,"method":"ping"}'
    } | mcp_lines
    cat "$WORK/out.jsonl" | cut -c1-300
    [ "$(wc -l < "$WORK/out.jsonl")" -eq 14 ]
    [ "$(grep -c '"id":null,"error":{"code":-32700' "$WORK/out.jsonl")" -eq 1 ]
    answer 1 | grep -q '"code":-32601'
    answer 2 | grep -q '"code":-32602'
    answer 3 | grep -q '"code":-32602'
    [ "$(grep -c '"id":null,"error":{"code":-32600' "$WORK/out.jsonl")" -eq 2 ]
    answer 5 | grep -q '"code":-32600'
    answer 6 | grep -q '"code":-32602'
    answer 7 | grep -q '"isError":true'
    answer 7 | grep -q 'aspect_ratio'
    answer 8 | grep -q '"isError":true'
    answer 8 | grep -q 'no job 99'
    answer 9 | grep -q 'reference_images\[0\]: cannot read /no/such/ref.png'
    answer 10 | grep -q 'either job_ids or batch'
    answer 11 | grep -q '"protocolVersion":"2025-11-25"'
    answer 12 | grep -q '"result":{}'
    # Nothing was queued by the refused calls.
    [ "$("$NBBATCH" status --json | grep -c '"name"')" -eq 0 ]
}

@test "mcp: protocol version negotiation and the tool list" {
    {
        echo '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}'
        echo '{"jsonrpc":"2.0","method":"notifications/initialized"}'
        echo '{"jsonrpc":"2.0","id":"two","method":"tools/list"}'
    } | mcp_lines
    answer 1 | grep -q '"protocolVersion":"2024-11-05"'
    answer 1 | grep -q '"serverInfo":{"name":"nbbatch"'
    answer '"two"' | grep -q '"name":"generate_images"'
    for tool in job_status list_batches cancel; do
        answer '"two"' | grep -q "\"name\":\"$tool\""
    done
    # stdout holds protocol messages only.
    [ "$(wc -l < "$WORK/out.jsonl")" -eq 2 ]
}

@test "mcp: runs alongside nbbatch run on one database" {
    start_sim "seed = 2
latency_ms = 1500"
    prompts 6 "from the command line" > cli.txt
    "$NBBATCH" add --out "$WORK/out/cli" cli.txt
    "$NBBATCH" run --workers 2 > run.log 2>&1 &
    local run_pid=$!
    {
        echo '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_images","arguments":{"prompts":["mcp one","mcp two","mcp three"],"wait_seconds":60}}}'
        sleep 0.3
        echo '{"jsonrpc":"2.0","id":2,"method":"ping"}'
        # Keep stdin open until the call is answered.
        for _ in $(seq 100); do
            grep -q '"id":1,' "$WORK/out.jsonl" 2>/dev/null && break
            sleep 0.1
        done
    } | mcp_lines
    wait "$run_pid"
    answer 1 | grep -q '"done":3'
    answer 2 | grep -q '"result":{}'
    # The ping came back before the images.
    [ "$(grep -n '"id":2,' "$WORK/out.jsonl" | cut -d: -f1)" -lt \
      "$(grep -n '"id":1,' "$WORK/out.jsonl" | cut -d: -f1)" ]
    printf 'mcp one\nmcp two\nmcp three\n' > mcp.txt
    run "$PNGCHECK" --dir "$WORK/out/mcp" --expect 3 --prompts mcp.txt
    [ "$status" -eq 0 ]
    run "$PNGCHECK" --dir "$WORK/out/cli" --expect 6 --prompts cli.txt
    [ "$status" -eq 0 ]
}

@test "mcp: a used-up daily quota is an error result saying when jobs go" {
    start_sim "seed = 1
rpd = 2"
    {
        echo '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_images","arguments":{"prompts":["q one","q two","q three","q four"],"batch":"quota","wait_seconds":60}}}'
        for _ in $(seq 100); do
            grep -q '"id":1,' "$WORK/out.jsonl" 2>/dev/null && break
            sleep 0.1
        done
        echo '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"job_status","arguments":{"batch":"quota"}}}'
    } | mcp_lines
    cut -c1-600 "$WORK/out.jsonl"
    answer 1 | grep -q '"isError":true'
    answer 1 | grep -q '"done":2'
    answer 1 | grep -q 'Not finished: 2 jobs.  Jobs wait for a daily quota to reset at 00:00 America/Los_Angeles'
    answer 2 | grep -q '"queued":2'
    answer 2 | grep -q '"done":2'
}

# call ID ARGS: a generate_images request line.
gen_call() {
    echo "{\"jsonrpc\":\"2.0\",\"id\":$1,\"method\":\"tools/call\",\"params\":{\"name\":\"generate_images\",\"arguments\":$2}}"
}

# wait_answer ID: keeps stdin open until the answer with that id is out.
wait_answer() {
    for _ in $(seq 200); do
        grep -q "\"id\":$1," "$WORK/out.jsonl" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

@test "mcp: the same prompt twice, one queued elsewhere, a cancelled one" {
    start_sim "seed = 3
latency_ms = 300"
    printf 'from the cli\n' > cli.txt
    "$NBBATCH" add --batch cli --out "$WORK/out/cli" cli.txt
    "$NBBATCH" add --batch gone --out "$WORK/out/gone" - <<<'cancelled once'
    "$NBBATCH" cancel --batch gone
    {
        # Two calls at once in one batch: one run serves both.
        gen_call 1 '{"prompts":["twice","twice","from the cli"],"batch":"b"}'
        gen_call 2 '{"prompts":["other"],"batch":"b"}'
        wait_answer 1 && wait_answer 2
        gen_call 3 '{"prompt":"cancelled once","batch":"b"}'
        wait_answer 3
    } | mcp_lines
    cut -c1-400 "$WORK/out.jsonl"
    # "twice" is one job; "from the cli" is the job of batch cli.
    answer 1 | grep -q '"total":2,"done":2'
    answer 1 | grep -q "$WORK/out/cli/"
    answer 2 | grep -q '"done":1'
    # Asking again for a cancelled job makes it.
    answer 3 | grep -q '"done":1'
    [ "$(grep -c 'started nbbatch run for batch b ' "$WORK/mcp.err")" -eq 1 ]
    [ "$(ls "$WORK"/out/b/*.png | wc -l)" -eq 2 ]
    [ "$(ls "$WORK"/out/gone/*.png | wc -l)" -eq 1 ]
}

@test "mcp: a paused batch, a FIFO, a cut UTF-8 text, quiet notifications" {
    mkfifo "$WORK/fifo"
    "$NBBATCH" add --batch held --out "$WORK/out/held" - <<<'held prompt'
    "$NBBATCH" pause held
    long=$(printf 'é%.0s' $(seq 40))
    {
        gen_call 1 '{"prompt":"held prompt","batch":"held"}'
        gen_call 2 "{\"prompt\":\"p\",\"reference_images\":[\"$WORK/fifo\"]}"
        echo "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"list_batches\",\"arguments\":{\"a$long\":1}}}"
        gen_call 4 '{"prompt":"p","batch":"../up"}'
        echo '{"jsonrpc":"2.0","method":"notifications/x","params":[1]}'
        echo '{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"x"}}'
        echo '{"jsonrpc":"2.0","id":5,"method":"ping"}'
        wait_answer 1
    } | mcp_lines
    cut -c1-400 "$WORK/out.jsonl"
    answer 1 | grep -q '"isError":true'
    answer 1 | grep -q 'is paused.*nbbatch resume held'
    answer 2 | grep -q 'not a regular file'
    answer 3 | grep -q '"isError":true'
    answer 3 | grep -q 'unknown argument'
    answer 4 | grep -q 'batch: a name for a folder'
    answer 5 | grep -q '"result":{}'
    # Five answers: nothing for the notification or the response.
    [ "$(wc -l < "$WORK/out.jsonl")" -eq 5 ]
    # No run was started for the paused batch.
    ! grep -q 'started nbbatch run' "$WORK/mcp.err"
}
