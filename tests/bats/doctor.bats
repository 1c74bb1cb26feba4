#!/usr/bin/env bats
# nbbatch doctor against the simulator: each failure named with its fix.

load helpers

setup() {
    setup_workdir
}

teardown() {
    stop_sim
}

@test "doctor: everything fine, exit 0, the key shown only as set" {
    start_sim "seed = 1"
    run "$NBBATCH" doctor
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"key        ok    set (from GEMINI_API_KEY)"* ]]
    [[ "$output" == *"dns        ok"* ]]
    [[ "$output" == *"connect    ok"* ]]
    [[ "$output" == *"model      ok"* ]]
    [[ "$output" == *"batch      ok    gemini-2.5-flash-image takes Batch mode"* ]]
    [[ "$output" == *"generate   skip"* ]]
    [[ "$output" != *"sim-key"* ]]
    # models.get only: nothing was generated (nothing billed).
    [ "$(sim_count ':generateContent')" -eq 0 ]
}

@test "doctor --generate makes one real image" {
    start_sim "seed = 1"
    run "$NBBATCH" doctor --generate
    [ "$status" -eq 0 ]
    [[ "$output" == *"generate   ok    one image"* ]]
    [ "$(sim_count ':generateContent')" -eq 1 ]
}

@test "doctor: no key" {
    start_sim "seed = 1"
    unset GEMINI_API_KEY
    run "$NBBATCH" doctor
    [ "$status" -eq 78 ]
    [[ "$output" == *"key        FAIL  no API key: set GEMINI_API_KEY"* ]]
}

@test "doctor: a bad key is named with its fix" {
    start_sim "seed = 1"
    export GEMINI_API_KEY=wrong-key-123
    run "$NBBATCH" doctor
    echo "$output"
    [ "$status" -eq 78 ]
    [[ "$output" == *"key        FAIL"*"API key not valid"*"To fix: the API key is not valid"* ]]
    [[ "$output" != *"wrong-key-123"* ]]
}

@test "doctor: an unknown model is named with its fix" {
    start_sim "seed = 1
models = gemini-2.5-flash-image"
    run "$NBBATCH" doctor --model gemini-3-pro-image-preview
    [ "$status" -eq 78 ]
    [[ "$output" == *"model      FAIL"*"not found"*"check the model name"* ]]
}

@test "doctor: nothing listening" {
    export GEMINI_API_KEY=sim-key
    export GEMINI_BASE_URL=http://127.0.0.1:9
    run "$NBBATCH" doctor
    [ "$status" -eq 78 ]
    [[ "$output" == *"connect    FAIL"*"check the network"* ]]
}

@test "doctor: a base URL that is not http(s)" {
    export GEMINI_API_KEY=sim-key
    export GEMINI_BASE_URL=ftp://example.invalid
    run "$NBBATCH" doctor
    [ "$status" -eq 78 ]
    [[ "$output" == *"endpoint   FAIL"* ]]
}
