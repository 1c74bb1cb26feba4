#!/usr/bin/env bats
# nbsim, the Gemini API simulator, checked from outside with curl: the
# wire format, the images, the faults, the quotas, the log, the signals.

load helpers

setup() {
    setup_workdir
}

teardown() {
    stop_sim
}

# gen MODEL: the generateContent URL of MODEL.
gen() {
    echo "$GEMINI_BASE_URL/v1beta/models/$1:generateContent"
}

# post MODEL PROMPT [CURL-ARGS...]: POSTs a generateContent for PROMPT with
# the good key (unless the args say otherwise); the body lands in
# $WORK/body, the HTTP status in $code.
post() {
    local model=$1 prompt=$2
    shift 2
    node -e 'process.stdout.write(JSON.stringify({contents: [{parts:
        [{text: process.argv[1]}]}]}))' "$prompt" > "$WORK/req.json"
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' \
        -H 'Content-Type: application/json' --data-binary @"$WORK/req.json" \
        "$@" "$(gen "$model")")
}

post_key() {
    local model=$1 prompt=$2
    shift 2
    post "$model" "$prompt" -H "x-goog-api-key: sim-key" "$@"
}

# post_raw MODEL JSON: POSTs JSON as it is, with the good key.
post_raw() {
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' \
        -H "x-goog-api-key: sim-key" -d "$2" "$(gen "$1")")
}

# with_config CONFIG: a one-prompt body whose generation config is CONFIG
# (JSON text, including its own key, camelCase or snake_case).
with_config() {
    echo '{"contents":[{"parts":[{"text":"x"}]}],'"$1"'}'
}

# js EXPR: evaluates EXPR with `a` = the JSON in $WORK/body.
js() {
    node -e 'const a = JSON.parse(require("fs").readFileSync(
        process.argv[1], "utf8")); console.log(eval(process.argv[2]))' \
        "$WORK/body" "$1"
}

# image N FILE: writes the bytes of inlineData part N (-1: the last part
# that is not a thought) to FILE and prints its mimeType.
image() {
    node -e 'const fs = require("fs");
        const a = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
        const parts = a.candidates[0].content.parts;
        const imgs = parts.filter(p => p.inlineData);
        let n = +process.argv[2], p;
        if (n < 0) p = imgs.filter(q => !q.thought).pop(); else p = imgs[n];
        fs.writeFileSync(process.argv[3],
                         Buffer.from(p.inlineData.data, "base64"));
        console.log(p.inlineData.mimeType)' "$WORK/body" "$1" "$2"
}

# color PROMPT: the first three bytes of SHA-256 of PROMPT, as hex.
color() {
    printf '%s' "$1" | sha256sum | cut -c1-6
}

# complement HEX: the bitwise complement of an rrggbb color.
complement() {
    printf '%06x' $(( 0xffffff ^ 0x$1 ))
}

# near HEX1 HEX2: every channel within 3 (JPEG rounding).
near() {
    local i a b
    for i in 0 2 4; do
        a=$((0x${1:$i:2}))
        b=$((0x${2:$i:2}))
        [ $((a > b ? a - b : b - a)) -le 3 ] || return 1
    done
}

@test "sim: listens on the port it wrote, says so on stdout" {
    start_sim "seed = 1"
    [ "$SIM_PORT" -gt 0 ]
    grep -q "^nbsim listening on http://127.0.0.1:$SIM_PORT$" "$WORK/sim.out"
    # The port file was renamed into place, no temporary left behind.
    [ -z "$(ls "$WORK" | grep 'sim.port.tmp')" ]
}

@test "sim: an image answer in the documented shape with the prompt's color" {
    start_sim "seed = 1"
    post_key gemini-2.5-flash-image "a red bicycle"
    [ "$code" -eq 200 ]
    [ "$(js 'a.candidates[0].finishReason')" = STOP ]
    [ "$(js 'a.candidates[0].index')" = 0 ]
    [ "$(js 'a.candidates[0].content.role')" = model ]
    [ "$(js 'a.candidates[0].content.parts.length')" = 1 ]
    [ "$(js 'a.usageMetadata.candidatesTokenCount')" = 1290 ]
    [ "$(js 'a.usageMetadata.totalTokenCount ==
             a.usageMetadata.promptTokenCount + 1290')" = true ]
    [ "$(js 'a.modelVersion')" = gemini-2.5-flash-image ]
    [[ "$(js 'a.responseId')" =~ ^[A-Za-z0-9_-]{24}$ ]]
    # Standard base64 on one line, no line breaks.
    [ "$(js '/^[A-Za-z0-9+\/]+=*$/.test(
             a.candidates[0].content.parts[0].inlineData.data)')" = true ]
    [ "$(image -1 "$WORK/img")" = image/png ]
    [ "$(head -c 8 "$WORK/img" | od -An -tx1 | tr -d ' \n')" = \
      89504e470d0a1a0a ]
    run "$NBSIM" --probe "$WORK/img"
    [ "$status" -eq 0 ]
    echo "$output"
    read -r fmt dims rgb band <<< "$output"
    [ "$fmt" = png ]
    [ "$dims" = 64x64 ]
    [ "$rgb" = "$(color "a red bicycle")" ]
    [ "${band#band=}" -ge 16 ]
}

@test "sim: gemini-3 answers put a thought image of the complement first" {
    start_sim "seed = 1"
    post_key gemini-3-pro-image-preview "a thinking cat"
    [ "$code" -eq 200 ]
    [ "$(js 'a.candidates[0].content.parts.map(p =>
        (p.thought ? "T" : "") + (p.text !== undefined ? "text" : "img") +
        (p.thoughtSignature ? "S" : "")).join(",")')" = \
      "Ttext,Timg,textS,imgS" ]
    [ "$(js 'a.usageMetadata.thoughtsTokenCount > 0')" = true ]
    image 0 "$WORK/thought"
    image -1 "$WORK/final"
    read -r _ tdims trgb _ <<< "$("$NBSIM" --probe "$WORK/thought")"
    read -r _ fdims frgb _ <<< "$("$NBSIM" --probe "$WORK/final")"
    [ "$frgb" = "$(color "a thinking cat")" ]
    [ "$trgb" = "$(complement "$frgb")" ]
    [ "$tdims" = 32x32 ]
    [ "$fdims" = 64x64 ]
}

@test "sim: thoughts = off leaves gemini-3 answers with one image" {
    start_sim "thoughts = off"
    post_key gemini-3-pro-image "plain"
    [ "$code" -eq 200 ]
    [ "$(js 'a.candidates[0].content.parts.length')" = 1 ]
}

@test "sim: bad key 400 API_KEY_INVALID, no key 403, ?key= accepted" {
    start_sim "seed = 1"
    post gemini-2.5-flash-image "x" -H "x-goog-api-key: wrong"
    [ "$code" -eq 400 ]
    [ "$(js 'a.error.status')" = INVALID_ARGUMENT ]
    [ "$(js 'a.error.details[0].reason')" = API_KEY_INVALID ]
    [ "$(js 'a.error.message')" = \
      "API key not valid. Please pass a valid API key." ]
    post gemini-2.5-flash-image "x"
    [ "$code" -eq 403 ]
    [ "$(js 'a.error.status')" = PERMISSION_DENIED ]
    [[ "$(js 'a.error.message')" == "Method doesn't allow unregistered"* ]]
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' \
        -d '{"contents":[{"parts":[{"text":"q"}]}]}' \
        "$(gen gemini-2.5-flash-image)?key=sim-key")
    [ "$code" -eq 200 ]
    # The key is never logged, only whether it was good.
    ! grep -q "sim-key\|wrong" "$SIM_LOG"
    [ "$(sim_count '"auth":"invalid"')" -eq 1 ]
    [ "$(sim_count '"auth":"missing"')" -eq 1 ]
    [ "$(sim_count '"auth":"ok"')" -eq 1 ]
}

@test "sim: an unknown model is 404; models.get describes a known one" {
    start_sim "models = gemini-2.5-flash-image, gemini-3-pro-image"
    post_key gemini-3.1-flash-image "x"
    [ "$code" -eq 404 ]
    [ "$(js 'a.error.status')" = NOT_FOUND ]
    [[ "$(js 'a.error.message')" == \
       "models/gemini-3.1-flash-image is not found for API version v1beta"* ]]
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' \
        -H "x-goog-api-key: sim-key" \
        "$GEMINI_BASE_URL/v1beta/models/gemini-3-pro-image")
    [ "$code" -eq 200 ]
    [ "$(js 'a.name')" = models/gemini-3-pro-image ]
    [ "$(js 'a.supportedGenerationMethods.includes("generateContent") &&
             a.supportedGenerationMethods.includes("batchGenerateContent")')" \
      = true ]
    [ "$(js 'a.thinking')" = true ]
    [ "$(js 'a.inputTokenLimit > 0 && a.outputTokenLimit > 0')" = true ]
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' \
        -H "x-goog-api-key: sim-key" \
        "$GEMINI_BASE_URL/v1beta/models/gemini-9-image")
    [ "$code" -eq 404 ]
}

@test "sim: bad JSON, unknown fields, aspect ratio and size are 400" {
    start_sim "seed = 1"
    m=gemini-2.5-flash-image
    post_raw $m '{oops'
    [ "$code" -eq 400 ]
    [[ "$(js 'a.error.message')" == "Invalid JSON payload received."* ]]
    post_raw $m "$(with_config '"bogus":1')"
    [ "$code" -eq 400 ]
    [[ "$(js 'a.error.message')" == *'Unknown name "bogus"'* ]]
    post_raw $m "$(with_config \
        '"generationConfig":{"imageConfig":{"aspectRatio":"1:8"}}')"
    [ "$code" -eq 400 ]
    [ "$(js 'a.error.status')" = INVALID_ARGUMENT ]
    post_raw $m "$(with_config \
        '"generationConfig":{"imageConfig":{"imageSize":"4K"}}')"
    [ "$code" -eq 400 ]
    # snake_case is accepted too, and the ratio shapes the image.
    post_raw $m "$(with_config \
        '"generation_config":{"image_config":{"aspect_ratio":"16:9"}}')"
    [ "$code" -eq 200 ]
    image -1 "$WORK/img"
    read -r _ dims _ <<< "$("$NBSIM" --probe "$WORK/img")"
    [ "$dims" = 112x64 ]
}

@test "sim: fault.502 = 1 answers Google's HTML error page" {
    start_sim "fault.502 = 1"
    run curl -s -D "$WORK/headers" -o "$WORK/body" -w '%{http_code}' \
        -H "x-goog-api-key: sim-key" \
        -d '{"contents":[{"parts":[{"text":"x"}]}]}' \
        "$GEMINI_BASE_URL/v1beta/models/gemini-2.5-flash-image:generateContent"
    [ "$output" = 502 ]
    grep -qi '^content-type: text/html' "$WORK/headers"
    grep -q '<title>Error 502 (Server Error)!!1</title>' "$WORK/body"
    [ "$(sim_count '"kind":"fault:502"')" -eq 1 ]
}

@test "sim: rpm = 2 makes the third request a 429 with RetryInfo" {
    start_sim "rpm = 2"
    post_key gemini-2.5-flash-image "one"
    [ "$code" -eq 200 ]
    post_key gemini-2.5-flash-image "two"
    [ "$code" -eq 200 ]
    post_key gemini-2.5-flash-image "three"
    [ "$code" -eq 429 ]
    [ "$(js 'a.error.status')" = RESOURCE_EXHAUSTED ]
    [ "$(js 'a.error.details.find(d => d["@type"].endsWith("QuotaFailure"))
             .violations[0].quotaId')" = \
      GenerateRequestsPerMinutePerProjectPerModel ]
    delay=$(js 'a.error.details.find(d =>
        d["@type"] == "type.googleapis.com/google.rpc.RetryInfo").retryDelay')
    [[ "$delay" =~ ^[0-9]+(\.[0-9]+)?s$ ]]
    [[ "$(js 'a.error.message')" == *"Please retry in $delay." ]]
    [ "$(sim_count '"kind":"quota-minute"')" -eq 1 ]
    # Another model has its own window; a reset empties them all.
    post_key gemini-3-pro-image "four"
    [ "$code" -eq 200 ]
    curl -s -X POST "$GEMINI_BASE_URL/_sim/reset-quota" > /dev/null
    post_key gemini-2.5-flash-image "five"
    [ "$code" -eq 200 ]
}

@test "sim: rpd = 1 gives the per-day 429 on the second request" {
    start_sim "rpd = 1"
    post_key gemini-2.5-flash-image "one"
    [ "$code" -eq 200 ]
    post_key gemini-2.5-flash-image "two"
    [ "$code" -eq 429 ]
    [ "$(js 'a.error.details[1].violations[0].quotaId')" = \
      GenerateRequestsPerDayPerProjectPerModel ]
    [ "$(sim_count '"kind":"quota-day"')" -eq 1 ]
}

@test "sim: prompt triggers answer the same way every time" {
    start_sim "seed = 1"
    post_key gemini-2.5-flash-image "x [sim:block]"
    [ "$code" -eq 200 ]
    [ "$(js 'a.promptFeedback.blockReason')" = SAFETY ]
    [ "$(js 'a.candidates === undefined')" = true ]
    post_key gemini-2.5-flash-image "x [sim:safety]"
    [ "$(js 'a.candidates[0].finishReason')" = IMAGE_SAFETY ]
    [ "$(js 'a.candidates[0].content.parts === undefined')" = true ]
    [ -n "$(js 'a.candidates[0].finishMessage')" ]
    post_key gemini-2.5-flash-image "x [sim:noimage]"
    [ "$(js 'a.candidates[0].finishReason')" = NO_IMAGE ]
    post_key gemini-2.5-flash-image "x [sim:badrequest]"
    [ "$code" -eq 400 ]
    post_key gemini-2.5-flash-image "x [sim:jpeg]"
    [ "$code" -eq 200 ]
    [ "$(image -1 "$WORK/img")" = image/png ]
    [ "$(head -c 3 "$WORK/img" | od -An -tx1 | tr -d ' \n')" = ffd8ff ]
    read -r fmt _ rgb band <<< "$("$NBSIM" --probe "$WORK/img")"
    [ "$fmt" = jpeg ]
    near "$rgb" "$(color "x [sim:jpeg]")"
    [ "${band#band=}" -ge 16 ]
    for want in 503 503 200 200; do
        post_key gemini-2.5-flash-image "y [sim:fail-first=2]"
        [ "$code" -eq "$want" ]
    done
}

@test "sim: a bad scenario line exits 2 naming the file, line and key" {
    printf 'seed = 4\n# fine\n\ncolour = red\n' > "$WORK/bad.conf"
    run "$NBSIM" --scenario "$WORK/bad.conf"
    [ "$status" -eq 2 ]
    [[ "$output" == *"bad.conf:4:"*"colour"* ]]
    printf 'fault.502 = 0.7\nfault.503 = 0.5\n' > "$WORK/bad.conf"
    run "$NBSIM" --scenario "$WORK/bad.conf"
    [ "$status" -eq 2 ]
    [[ "$output" == *"bad.conf:2:"*"fault.503"*"more than 1"* ]]
    printf 'dims = huge\n' > "$WORK/bad.conf"
    run "$NBSIM" --scenario "$WORK/bad.conf"
    [ "$status" -eq 2 ]
    [[ "$output" == *"bad.conf:1:"*"dims"*"huge"* ]]
    printf 'outage = 10-5\n' > "$WORK/bad.conf"
    run "$NBSIM" --scenario "$WORK/bad.conf"
    [ "$status" -eq 2 ]
    [[ "$output" == *"bad.conf:1:"*"outage"* ]]
    run "$NBSIM" --port 70000
    [ "$status" -eq 2 ]
}

@test "sim: every example scenario loads" {
    for f in "$BATS_TEST_DIRNAME"/../sim/scenarios/*.conf; do
        "$NBSIM" --port 0 --scenario "$f" > "$WORK/ex.out" 2>&1 &
        pid=$!
        for _ in $(seq 50); do
            grep -q listening "$WORK/ex.out" && break
            sleep 0.05
        done
        kill -TERM "$pid"
        wait "$pid"
        cat "$WORK/ex.out"
        grep -q listening "$WORK/ex.out"
    done
}

@test "sim: SIGTERM exits 0 with answers still waiting, log flushed" {
    start_sim "latency_ms = 30000"
    curl -s -m 20 -H "x-goog-api-key: sim-key" \
        -d '{"contents":[{"parts":[{"text":"w"}]}]}' \
        "$(gen gemini-2.5-flash-image)" > /dev/null &
    client=$!
    sleep 0.5
    kill -TERM "$SIM_PID"
    rc=0
    wait "$SIM_PID" || rc=$?
    SIM_PID=
    [ "$rc" -eq 0 ]
    wait "$client" || :
    [ "$(sim_count '"delivered":false')" -eq 1 ]
}

@test "sim: 64 answers delayed 1 s each, all at once, finish together" {
    start_sim "latency_ms = 1000"
    for i in $(seq 64); do
        echo '{"contents":[{"parts":[{"text":"c'"$i"'"}]}]}' > "$WORK/c$i.json"
    done
    for i in $(seq 64); do
        echo "url = \"$(gen gemini-2.5-flash-image)\""
        echo "data-binary = \"@$WORK/c$i.json\""
        echo 'header = "x-goog-api-key: sim-key"'
        echo 'output = /dev/null'
        echo 'write-out = "%{http_code}\n"'
        [ "$i" -eq 64 ] || echo next
    done > "$WORK/par.cfg"
    start=$(date +%s%N)
    run curl -s --parallel --parallel-max 64 --parallel-immediate \
        -K "$WORK/par.cfg"
    took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    echo "took ${took_ms} ms"
    [ "$(echo "$output" | grep -c '^200$')" -eq 64 ]
    [ "$took_ms" -lt 5000 ]
    [ "$(sim_count '"delivered":true')" -eq 64 ]
}

@test "sim: keep-alive connections are reused across answers" {
    start_sim "latency_ms = 100"
    u="$GEMINI_BASE_URL/v1beta/models/gemini-2.5-flash-image:generateContent"
    run curl -sv -o /dev/null -o /dev/null -o /dev/null \
        -H "x-goog-api-key: sim-key" \
        -d '{"contents":[{"parts":[{"text":"k"}]}]}' "$u" "$u" "$u"
    [ "$(echo "$output" | grep -c 'Re-using existing connection')" -eq 2 ]
}

@test "sim: truncated, reset, slow and hung answers" {
    u=v1beta/models/gemini-2.5-flash-image:generateContent
    start_sim "fault.truncate = 1"
    run curl -s -o "$WORK/body" -H "x-goog-api-key: sim-key" \
        -d '{"contents":[{"parts":[{"text":"t"}]}]}' "$GEMINI_BASE_URL/$u"
    [ "$status" -eq 18 ]            # curl: partial file
    grep -q '"kind":"fault:truncate".*"delivered":false' "$SIM_LOG"
    stop_sim
    start_sim "fault.reset = 1"
    run curl -s -o /dev/null -H "x-goog-api-key: sim-key" \
        -d '{"contents":[{"parts":[{"text":"r"}]}]}' "$GEMINI_BASE_URL/$u"
    [ "$status" -eq 56 ]            # curl: connection reset
    stop_sim
    start_sim "fault.slow = 1
slow_ms = 700"
    post_key gemini-2.5-flash-image "s"
    [ "$code" -eq 200 ]
    [ "$(image -1 "$WORK/img")" = image/png ]
    # Trickled over about 0.7 s, not sent at once.
    ms=$(tail -1 "$SIM_LOG" | grep -o '"latency_ms":[0-9]*' | cut -d: -f2)
    [ "$ms" -ge 600 ]
    grep -q '"fault:slow".*"delivered":true' "$SIM_LOG"
    stop_sim
    start_sim "fault.hang = 1
hang_ms = 60000"
    run curl -s -m 1 -o /dev/null -H "x-goog-api-key: sim-key" \
        -d '{"contents":[{"parts":[{"text":"h"}]}]}' \
        "$GEMINI_BASE_URL/v1beta/models/gemini-2.5-flash-image:generateContent"
    [ "$status" -eq 28 ]            # curl: timeout
    # The simulator notices the client leaving within a second or so.
    for _ in $(seq 40); do
        grep -q '"kind":"fault:hang"' "$SIM_LOG" && break
        sleep 0.1
    done
    grep -q '"kind":"fault:hang".*"delivered":false' "$SIM_LOG"
}

@test "sim: an outage, a corrupt PNG and the stats endpoint" {
    start_sim "fault.corrupt = 1"
    post_key gemini-2.5-flash-image "damaged"
    [ "$code" -eq 200 ]
    image -1 "$WORK/img"
    run "$NBSIM" --probe "$WORK/img"
    [ "$status" -ne 0 ]
    curl -s -X POST "$GEMINI_BASE_URL/_sim/outage?seconds=30&status=503" \
        > /dev/null
    post_key gemini-2.5-flash-image "down"
    [ "$code" -eq 503 ]
    [ "$(js 'a.error.message')" = \
      "The model is overloaded. Please try again later." ]
    curl -s -o "$WORK/body" "$GEMINI_BASE_URL/_sim/stats"
    [ "$(js 'a.requests')" = 2 ]
    [ "$(js 'a.by_status["503"]')" = 1 ]
    [ "$(js 'a.by_kind.outage')" = 1 ]
    [ "$(js 'a.images_delivered')" = 0 ]
}

@test "sim: dims = real gives the documented pixel sizes" {
    start_sim "dims = real"
    post_raw gemini-2.5-flash-image '{"contents":[{"parts":[{"text":"big"}]}],
        "generationConfig":{"imageConfig":{"aspectRatio":"16:9"}}}'
    image -1 "$WORK/img"
    read -r _ dims rgb _ <<< "$("$NBSIM" --probe "$WORK/img")"
    [ "$dims" = 1344x768 ]
    [ "$rgb" = "$(color big)" ]
    size=$(stat -c %s "$WORK/img")
    echo "1K PNG: $size bytes"
    [ "$size" -gt 1000000 ]
    [ "$size" -lt 3000000 ]
}
