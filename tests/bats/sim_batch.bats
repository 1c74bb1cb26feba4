#!/usr/bin/env bats
# nbsim's Files API and Batch API, driven with curl: resumable uploads,
# batch life cycle and timing, results, paging, cancel, the batch.*
# scenario keys, and what the log and /_sim/stats say.

load helpers

setup() {
    setup_workdir
}

teardown() {
    stop_sim
}

TYPES=type.googleapis.com/google.ai.generativelanguage.v1main
FAST='batch.pending_ms = 50
batch.run_ms = 150'

# js FILE EXPR: evaluates EXPR with `a` = the JSON in FILE.
js() {
    node -e 'const a = JSON.parse(require("fs").readFileSync(
        process.argv[1], "utf8")); console.log(eval(process.argv[2]))' \
        "$1" "$2"
}

# call METHOD PATH [CURL-ARGS...]: a request with the good key; the body
# lands in $WORK/body, the headers in $WORK/headers, the status in $code.
call() {
    local method=$1 path=$2
    shift 2
    code=$(curl -s -X "$method" -o "$WORK/body" -D "$WORK/headers" \
        -w '%{http_code}' -H 'x-goog-api-key: sim-key' "$@" \
        "$GEMINI_BASE_URL$path")
}

# hdr NAME: a header of the last answer (case-insensitive), no CR.
hdr() {
    grep -i "^$1:" "$WORK/headers" | head -1 | cut -d' ' -f2- | tr -d '\r'
}

# jsonl N [PREFIX] [EXTRA]: N input lines key-I with prompt "PREFIX I".
jsonl() {
    node -e 'const [n, prefix, extra] = process.argv.slice(1);
        for (let i = 1; i <= +n; i++)
            console.log(JSON.stringify({key: "key-" + i, request:
                {contents: [{parts: [{text: prefix + " " + i + extra}]}],
                 generation_config: {responseModalities: ["IMAGE"]}}}))' \
        "$1" "${2:-a batch picture}" "${3:-}"
}

# upload FILE: a resumable upload in one go; sets FILE_NAME (files/ID).
upload() {
    call POST /upload/v1beta/files -H 'X-Goog-Upload-Protocol: resumable' \
        -H 'X-Goog-Upload-Command: start' \
        -H "X-Goog-Upload-Header-Content-Length: $(stat -c %s "$1")" \
        -H 'X-Goog-Upload-Header-Content-Type: application/jsonl' \
        -H 'Content-Type: application/json' \
        -d '{"file": {"display_name": "input"}}'
    [ "$code" = 200 ]
    UPLOAD_URL=$(hdr X-Goog-Upload-URL)
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' \
        -H 'x-goog-api-key: sim-key' -H 'X-Goog-Upload-Offset: 0' \
        -H 'X-Goog-Upload-Command: upload, finalize' \
        --data-binary @"$1" "$UPLOAD_URL")
    [ "$code" = 200 ]
    FILE_NAME=$(js "$WORK/body" a.file.name)
}

# create MODEL NAME [INPUT-JSON]: a batch of the uploaded file (or of
# INPUT-JSON as inputConfig); sets BATCH (the id).
create() {
    local input=${3:-"{\"file_name\": \"$FILE_NAME\"}"}
    call POST "/v1beta/models/$1:batchGenerateContent" \
        -d "{\"batch\": {\"display_name\": \"$2\", \"input_config\": $input}}"
    [ "$code" = 200 ]
    BATCH=$(js "$WORK/body" 'a.name.split("/")[1]')
}

# batch_url MODEL: the batchGenerateContent URL of MODEL.
batch_url() {
    echo "$GEMINI_BASE_URL/v1beta/models/$1:batchGenerateContent"
}

# wait_done: polls $BATCH until done (at most 5 s).
wait_done() {
    local i
    for i in $(seq 1 100); do
        call GET "/v1beta/batches/$BATCH"
        [ "$(js "$WORK/body" 'a.done === true')" = true ] && return 0
        sleep 0.05
    done
    return 1
}

# bstat NAME: a counter of /_sim/stats "batches".
bstat() {
    curl -s "$GEMINI_BASE_URL/_sim/stats" > "$WORK/stats"
    js "$WORK/stats" "a.batches.$1"
}

@test "sim batch: resumable upload in two chunks, query, bad offset" {
    start_sim "seed = 1"
    jsonl 3 > in.jsonl
    size=$(stat -c %s in.jsonl)
    head -c 100 in.jsonl > part1
    tail -c +101 in.jsonl > part2
    call POST /upload/v1beta/files -H 'X-Goog-Upload-Protocol: resumable' \
        -H 'X-Goog-Upload-Command: start' \
        -H "X-Goog-Upload-Header-Content-Length: $size" \
        -H 'X-Goog-Upload-Header-Content-Type: application/jsonl' \
        -d '{"file": {"displayName": "two chunks"}}'
    [ "$code" = 200 ]
    [ "$(hdr X-Goog-Upload-Status)" = active ]
    url=$(hdr X-Goog-Upload-URL)
    [[ "$url" == "$GEMINI_BASE_URL/upload/v1beta/files?upload_id="* ]]
    # The URL is used verbatim, as the SDKs do.
    up() {
        code=$(curl -s -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' \
            -H 'x-goog-api-key: sim-key' "$@" "$url")
    }
    up -H 'X-Goog-Upload-Command: upload' -H 'X-Goog-Upload-Offset: 0' \
        --data-binary @part1
    [ "$code" = 200 ]
    [ "$(hdr X-Goog-Upload-Status)" = active ]
    # A wrong offset is refused and changes nothing.
    up -H 'X-Goog-Upload-Command: upload' -H 'X-Goog-Upload-Offset: 7' \
        --data-binary @part2
    [ "$code" = 400 ]
    [ "$(js "$WORK/body" a.error.status)" = INVALID_ARGUMENT ]
    up -X POST -H 'X-Goog-Upload-Command: query'
    [ "$code" = 200 ]
    [ "$(hdr X-Goog-Upload-Size-Received)" = 100 ]
    # Finalizing short of the announced size is refused too.
    up -X POST -H 'X-Goog-Upload-Command: finalize'
    [ "$code" = 400 ]
    up -H 'X-Goog-Upload-Command: upload, finalize' \
        -H 'X-Goog-Upload-Offset: 100' --data-binary @part2
    [ "$code" = 200 ]
    [ "$(hdr X-Goog-Upload-Status)" = final ]
    [ "$(js "$WORK/body" a.file.sizeBytes)" = "$size" ]
    [ "$(js "$WORK/body" a.file.state)" = ACTIVE ]
    [ "$(js "$WORK/body" a.file.source)" = UPLOADED ]
    [ "$(js "$WORK/body" a.file.displayName)" = "two chunks" ]
    [ "$(js "$WORK/body" a.file.mimeType)" = application/jsonl ]
    sha=$(sha256sum in.jsonl | cut -c1-64)
    [ "$(js "$WORK/body" 'Buffer.from(a.file.sha256Hash, "base64")
                            .toString("hex")')" = "$sha" ]
    id=$(js "$WORK/body" 'a.file.name.split("/")[1]')
    [ "$(js "$WORK/body" a.file.uri)" = "$GEMINI_BASE_URL/v1beta/files/$id" ]
    call GET "/v1beta/files/$id"
    [ "$code" = 200 ]
    [ "$(js "$WORK/body" a.name)" = "files/$id" ]
    # An uploaded file cannot be downloaded.
    call GET "/v1beta/files/$id:download?alt=media"
    [ "$code" = 400 ]
    call DELETE "/v1beta/files/$id"
    [ "$code" = 200 ]
    call GET "/v1beta/files/$id"
    [ "$code" = 404 ]
    [ "$(bstat uploads)" = 1 ]
}

@test "sim batch: a file batch goes PENDING, RUNNING, SUCCEEDED on time" {
    start_sim "batch.pending_ms = 500
batch.run_ms = 900"
    jsonl 4 > in.jsonl
    upload in.jsonl
    create gemini-2.5-flash-image "run one"
    cp "$WORK/body" created.json
    # Answers are kept and checked later, so slow checks cannot blur the
    # timing.
    call GET "/v1beta/batches/$BATCH"
    cp "$WORK/body" early.json
    sleep 0.6
    call GET "/v1beta/batches/$BATCH"
    cp "$WORK/body" later.json
    wait_done
    # One node per answer: fields joined with |, undefined ones empty.
    [ "$(js created.json '[a.metadata.state, a.done, a.metadata.model,
        a.metadata.displayName, a.metadata.inputConfig.fileName,
        a.metadata.batchStats.requestCount, a.metadata["@type"]]
        .join("|")')" = "BATCH_STATE_PENDING||models/gemini-2.5-flash-image|\
run one|$FILE_NAME|4|$TYPES.GenerateContentBatch" ]
    [ "$(js early.json a.metadata.state)" = BATCH_STATE_PENDING ]
    [ "$(js later.json '[a.metadata.state, a.done].join("|")')" = \
      "BATCH_STATE_RUNNING|" ]
    [ "$(js "$WORK/body" '[a.metadata.state, a.metadata.output.responsesFile,
        a.response.responsesFile, a.metadata.batchStats.successfulRequestCount,
        a.metadata.batchStats.failedRequestCount,
        a.metadata.endTime > a.metadata.createTime].join("|")')" = \
      "BATCH_STATE_SUCCEEDED|files/batch-$BATCH|files/batch-$BATCH|4||true" ]
    [ "$(bstat succeeded)" = 1 ]
    [ "$(bstat polls)" -ge 3 ]
}

@test "sim batch: results on both download paths, images checked by probe" {
    start_sim "$FAST"
    jsonl 3 "a bicycle" > in.jsonl
    upload in.jsonl
    create gemini-3-pro-image "imgs"
    wait_done
    call GET "/download/v1beta/files/batch-$BATCH:download?alt=media"
    [ "$code" = 200 ]
    [[ "$(hdr Content-Type)" == application/jsonl* ]]
    cp "$WORK/body" one.jsonl
    call GET "/v1beta/files/batch-$BATCH:download?alt=media"
    [ "$code" = 200 ]
    # The same bytes every time.
    cmp one.jsonl "$WORK/body"
    [ "$(wc -l < one.jsonl)" = 3 ]
    # One line per input line, in order; each final image has the color
    # of its prompt, each thought image the complement.
    node -e 'const fs = require("fs");
        fs.readFileSync("one.jsonl", "utf8").trim().split("\n")
          .forEach((l, i) => {
            const o = JSON.parse(l);
            if (o.key !== "key-" + (i + 1)) throw new Error("key " + o.key);
            const parts = o.response.candidates[0].content.parts;
            const imgs = parts.filter(p => p.inlineData);
            fs.writeFileSync("final" + i,
                Buffer.from(imgs.filter(p => !p.thought).pop()
                            .inlineData.data, "base64"));
            fs.writeFileSync("thought" + i,
                Buffer.from(imgs.find(p => p.thought).inlineData.data,
                            "base64"));
          })'
    for i in 0 1 2; do
        want=$(printf 'a bicycle %d' $((i + 1)) | sha256sum | cut -c1-6)
        read -r fmt dims rgb band <<< "$("$NBSIM" --probe "final$i")"
        [ "$fmt" = png ]
        [ "$rgb" = "$want" ]
        [ "${band#band=}" -ge 16 ]
        read -r fmt dims rgb band <<< "$("$NBSIM" --probe "thought$i")"
        [ "$rgb" = "$(printf '%06x' $(( 0xffffff ^ 0x$want )))" ]
    done
    [ "$(bstat downloads)" = 2 ]
    [ "$(sim_count '"kind":"batch_download"')" = 2 ]
    # The create's log line names the batch, its keys and prompt hashes.
    grep '"kind":"batch_create"' "$SIM_LOG" > create.log
    [ "$(js create.log a.batch)" = "batches/$BATCH" ]
    [ "$(js create.log a.display_name)" = imgs ]
    [ "$(js create.log a.model)" = gemini-3-pro-image ]
    [ "$(js create.log 'a.keys.join()')" = key-1,key-2,key-3 ]
    [ "$(js create.log 'a.prompt_sha256[1]')" = \
      "$(printf 'a bicycle 2' | sha256sum | cut -c1-64)" ]
    [ "$(js create.log a.lost)" = false ]
    # Result lines are not generate images.
    curl -s "$GEMINI_BASE_URL/_sim/stats" > stats
    [ "$(js stats a.images)" = 0 ]
}

@test "sim batch: inline requests come back inlined, twice, with triggers" {
    start_sim "$FAST"
    create gemini-2.5-flash-image inl '{"requests": {"requests": [
        {"request": {"contents": [{"parts": [{"text": "a cat"}]}]},
         "metadata": {"key": "k1"}},
        {"request": {"contents": [{"parts": [{"text": "x [sim:block]"}]}]},
         "metadata": {"key": "k2"}},
        {"request": {"contents": [{"parts": [{"text": "[sim:badrequest]"}]}]},
         "metadata": {"key": "k3"}}]}}'
    [ "$(js "$WORK/body" a.metadata.inputConfig)" = undefined ]
    wait_done
    [ "$(js "$WORK/body" 'a.metadata.output.inlinedResponses.inlinedResponses
        .map(x => x.metadata.key + ":" + (x.error ? x.error.code
            : x.response.promptFeedback ? "blocked" : "image")).join()')" = \
      k1:image,k2:blocked,k3:400 ]
    [ "$(js "$WORK/body" 'JSON.stringify(a.response.inlinedResponses) ===
        JSON.stringify(a.metadata.output.inlinedResponses)')" = true ]
    [ "$(js "$WORK/body" a.metadata.batchStats.failedRequestCount)" = 1 ]
    # No results file for inline input.
    call GET "/v1beta/files/batch-$BATCH:download?alt=media"
    [ "$code" = 404 ]
}

@test "sim batch: list pages newest first; delete removes from get and list" {
    start_sim "$FAST"
    for i in 1 2 3 4 5; do
        create gemini-2.5-flash-image "b$i" '{"requests": {"requests": [
            {"request": {"contents": [{"parts": [{"text": "p"}]}]}}]}}'
    done
    names=
    token=
    pages=0
    while :; do
        call GET "/v1beta/batches?pageSize=2${token:+&pageToken=$token}"
        [ "$code" = 200 ]
        names="$names$(js "$WORK/body" \
            'a.operations.map(o => o.metadata.displayName).join(" ")') "
        pages=$((pages + 1))
        token=$(js "$WORK/body" 'a.nextPageToken || ""')
        [ -n "$token" ] || break
    done
    [ "$pages" = 3 ]
    [ "$names" = "b5 b4 b3 b2 b1 " ]
    call GET "/v1beta/batches?pageSize=abc"
    [ "$code" = 400 ]
    call DELETE "/v1beta/batches/$BATCH"
    [ "$code" = 200 ]
    call GET "/v1beta/batches/$BATCH"
    [ "$code" = 404 ]
    call GET "/v1beta/batches"
    [ "$(js "$WORK/body" \
        'a.operations.map(o => o.metadata.displayName).join(" ")')" = \
      "b4 b3 b2 b1" ]
}

@test "sim batch: cancel ends a pending batch CANCELLED with no output" {
    start_sim "batch.pending_ms = 5000
batch.run_ms = 10000"
    jsonl 2 > in.jsonl
    upload in.jsonl
    create gemini-2.5-flash-image tocancel
    call POST "/v1beta/batches/$BATCH:cancel"
    [ "$code" = 200 ]
    [ "$(js "$WORK/body" 'JSON.stringify(a)')" = '{}' ]
    call GET "/v1beta/batches/$BATCH"
    [ "$(js "$WORK/body" a.metadata.state)" = BATCH_STATE_CANCELLED ]
    [ "$(js "$WORK/body" a.done)" = true ]
    [ "$(js "$WORK/body" a.response)" = undefined ]
    [ "$(js "$WORK/body" a.metadata.output)" = undefined ]
    call GET "/v1beta/files/batch-$BATCH:download?alt=media"
    [ "$code" = 404 ]
    [ "$(bstat cancelled)" = 1 ]
    [ "$(sim_count '"kind":"batch_cancel"')" = 1 ]
}

@test "sim batch: batch.expire and batch.fail decide the first batches" {
    start_sim "$FAST
batch.expire = 1
batch.fail = 1"
    for want in EXPIRED FAILED SUCCEEDED; do
        create gemini-2.5-flash-image "$want" '{"requests": {"requests": [
            {"request": {"contents": [{"parts": [{"text": "p"}]}]}}]}}'
        wait_done
        [ "$(js "$WORK/body" a.metadata.state)" = "BATCH_STATE_$want" ]
        case $want in
        EXPIRED) [ "$(js "$WORK/body" a.response)" = undefined ] ;;
        FAILED) [ "$(js "$WORK/body" a.error.code)" = 500 ] ;;
        SUCCEEDED) [ "$(js "$WORK/body" a.error)" = undefined ] ;;
        esac
    done
    [ "$(bstat expired),$(bstat failed),$(bstat succeeded)" = 1,1,1 ]
}

@test "sim batch: batch.state_names = job spells JOB_STATE_*" {
    start_sim "$FAST
batch.state_names = job"
    create gemini-2.5-flash-image j '{"requests": {"requests": [
        {"request": {"contents": [{"parts": [{"text": "p"}]}]}}]}}'
    [ "$(js "$WORK/body" a.metadata.state)" = JOB_STATE_PENDING ]
    wait_done
    [ "$(js "$WORK/body" a.metadata.state)" = JOB_STATE_SUCCEEDED ]
}

@test "sim batch: a lost create still makes the batch, found in the list" {
    start_sim "$FAST
batch.create_lost = 1"
    for i in 1 2 3; do
        code=$(curl -s -o "$WORK/body" -w '%{http_code}' \
            -H 'x-goog-api-key: sim-key' -d '{"batch": {"displayName":
            "lost-'$i'", "inputConfig": {"requests": {"requests": [
            {"request": {"contents": [{"parts": [{"text": "p"}]}]},
             "metadata": {"key": "only"}}]}}}}' \
            "$(batch_url gemini-2.5-flash-image)" || :)
        # A 503, or the connection reset (curl says 000).
        [ "$code" = 503 ] || [ "$code" = 000 ]
    done
    call GET /v1beta/batches
    [ "$(js "$WORK/body" \
        'a.operations.map(o => o.metadata.displayName).join(" ")')" = \
      "lost-3 lost-2 lost-1" ]
    [ "$(sim_count '"lost":true')" = 3 ]
    [ "$(bstat created)" = 3 ]
}

@test "sim batch: batch.http_fault answers 502 or 503 and changes nothing" {
    start_sim "$FAST
batch.http_fault = 1"
    create gemini-2.5-flash-image f '{"requests": {"requests": [
        {"request": {"contents": [{"parts": [{"text": "p"}]}]}}]}}'
    for path in "/v1beta/batches/$BATCH" /v1beta/batches \
        "/v1beta/files/batch-$BATCH:download?alt=media"; do
        call GET "$path"
        [ "$code" = 502 ] || [ "$code" = 503 ]
    done
    call POST /upload/v1beta/files -H 'X-Goog-Upload-Protocol: resumable' \
        -H 'X-Goog-Upload-Command: start' -d '{}'
    [ "$code" = 502 ] || [ "$code" = 503 ]
    [ "$(bstat uploads),$(bstat polls)" = 0,0 ]
    grep -q '"kind":"http_fault"' "$SIM_LOG"
}

@test "sim batch: line faults alternate 500 and 503; fail-first per prompt" {
    start_sim "$FAST
batch.line_fault = 1"
    jsonl 4 > in.jsonl
    upload in.jsonl
    create gemini-2.5-flash-image faults
    wait_done
    [ "$(js "$WORK/body" a.metadata.batchStats.failedRequestCount)" = 4 ]
    call GET "/v1beta/files/batch-$BATCH:download?alt=media"
    [ "$(node -e 'require("fs").readFileSync(process.argv[1], "utf8")
        .trim().split("\n").forEach(l => { const o = JSON.parse(l);
        process.stdout.write(o.key + "=" + o.error.code + " ") })' \
        "$WORK/body")" = "key-1=500 key-2=503 key-3=500 key-4=503 " ]
    stop_sim
    start_sim "$FAST"
    jsonl 2 "retry me" " [sim:fail-first=1]" > in.jsonl
    upload in.jsonl
    for want in 503,503 ok,ok; do
        create gemini-2.5-flash-image ff
        wait_done
        call GET "/v1beta/files/batch-$BATCH:download?alt=media"
        [ "$(node -e 'const r = require("fs").readFileSync(process.argv[1],
            "utf8").trim().split("\n").map(l => JSON.parse(l));
            console.log(r.map(o => o.error ? o.error.code : "ok").join())' \
            "$WORK/body")" = "$want" ]
    done
}

@test "sim batch: key checks, unknown model and file, bad body, outage" {
    start_sim "$FAST"
    url=$GEMINI_BASE_URL/v1beta/batches
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 403 ]
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-goog-api-key: no' \
        "$url")" = 400 ]
    call POST /v1beta/models/no-such-model:batchGenerateContent -d '{}'
    [ "$code" = 404 ]
    call POST /v1beta/models/gemini-2.5-flash-image:batchGenerateContent \
        -d '{"batch": {"inputConfig": {"fileName": "files/nope"}}}'
    [ "$code" = 400 ]
    call POST /v1beta/models/gemini-2.5-flash-image:batchGenerateContent \
        -d '{not json'
    [ "$code" = 400 ]
    printf '%s\n' '{"key": "a", "request": {"contents": []}}' \
        'this is not json' > bad.jsonl
    upload bad.jsonl
    call POST /v1beta/models/gemini-2.5-flash-image:batchGenerateContent \
        -d "{\"batch\": {\"inputConfig\": {\"fileName\": \"$FILE_NAME\"}}}"
    [ "$code" = 400 ]
    [[ "$(js "$WORK/body" a.error.message)" == *"line 2"* ]]
    [ "$(bstat created)" = 0 ]
    curl -s -X POST "$GEMINI_BASE_URL/_sim/outage?seconds=30&status=503"
    call GET /v1beta/batches
    [ "$code" = 503 ]
    curl -s -X POST "$GEMINI_BASE_URL/_sim/outage?seconds=0"
    call GET /v1beta/batches
    [ "$code" = 200 ]
}

@test "sim batch: a bad batch scenario value names the file, line and key" {
    printf 'batch.line_fault = 2\n' > bad.conf
    run "$NBSIM" --scenario bad.conf
    [ "$status" -eq 2 ]
    [[ "$output" == *"bad.conf:1: key 'batch.line_fault'"* ]]
    printf 'batch.state_names = jobs\n' > bad.conf
    run "$NBSIM" --scenario bad.conf
    [ "$status" -eq 2 ]
    [[ "$output" == *"key 'batch.state_names'"* ]]
}
