#!/usr/bin/env bats
# nbbatch add: prompt files into the queue, all or nothing.

load helpers

setup() {
    setup_workdir
}

# job_count: jobs in the database, through `nbbatch list` (sqlite3 when
# the command is not available).
job_count() {
    local out
    if out=$("$NBBATCH" list --json 2>/dev/null); then
        printf '%s\n' "$out" | grep -o '"id":' | wc -l
    else
        sqlite3 "$NBBATCH_DB" 'SELECT count(*) FROM jobs'
    fi
}

# png_stub PATH: a file that starts like a PNG (enough to be hashed).
png_stub() {
    mkdir -p "$(dirname "$1")"
    printf '\211PNG\r\n\032\n%s' "$1" >"$1"
}

@test "add: a text file, comments and blank lines skipped" {
    printf '# my prompts\na fox in the snow\n\n  \na cat on a sofa\r\n' \
        >p.txt
    echo "a dog" >>p.txt
    run "$NBBATCH" add p.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "added 3 jobs to batch p (0 already queued)" ]
    [ "$(job_count)" -eq 3 ]
}

@test "add: JSON Lines with count, name and settings" {
    cat >p.jsonl <<'EOF'
{"prompt": "a fox", "count": 2, "name": "fox.png", "aspect_ratio": "16:9"}
{"prompt": "a cat", "model": "gemini-3-pro-image", "image_size": "2k"}
EOF
    run "$NBBATCH" add --batch animals p.jsonl
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "added 3 jobs to batch animals (0 already queued)" ]
    [ "$(job_count)" -eq 3 ]
}

@test "add: per-line options with quoted values" {
    png_stub "refs/my ref.png"
    cat >opts.txt <<'EOF'
--aspect 9:16 --count 2 a tall fox
--image "refs/my ref.png" --name "fox with ref" a fox like this one
-- --this is a prompt, not an option
EOF
    run "$NBBATCH" add opts.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "added 4 jobs to batch opts (0 already queued)" ]
}

@test "add: adding the same file again adds nothing" {
    prompts 5 >p.txt
    run "$NBBATCH" add p.txt
    [ "$status" -eq 0 ]
    run "$NBBATCH" add p.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "added 0 jobs to batch p (5 already queued)" ]
    [ "$(job_count)" -eq 5 ]
}

@test "add: one broken line among 10,000 adds nothing (exit 65)" {
    prompts 10000 >big.txt
    sed -i '7321s/.*/--aspect 7:3 a broken line/' big.txt
    run "$NBBATCH" add big.txt
    echo "$output"
    [ "$status" -eq 65 ]
    [[ "$output" == *"big.txt:7321: aspect_ratio: \"7:3\" is not an aspect"* ]]
    [ "$(job_count)" -eq 0 ]
}

@test "add: a bad line in the second file rolls back the first" {
    prompts 3 >a.txt
    printf 'fine\n{"prompt": "x", "colour": "red"}\n' >b.txt
    run "$NBBATCH" add a.txt b.txt
    echo "$output"
    [ "$status" -eq 65 ]
    [[ "$output" == *"b.txt:2: colour: unknown key"* ]]
    [ "$(job_count)" -eq 0 ]
}

@test "add: a missing reference image fails naming file, line and field" {
    png_stub refs/ok.png
    printf -- '--image refs/ok.png one\n--image refs/gone.png two\n' >p.txt
    run "$NBBATCH" add p.txt
    echo "$output"
    [ "$status" -eq 65 ]
    [[ "$output" == *"p.txt:2: images: cannot read"*"gone.png"* ]]
    [ "$(job_count)" -eq 0 ]
}

@test "add: reference images are found next to the prompt file" {
    png_stub sub/refs/a.png
    printf '{"prompt": "x", "images": ["refs/a.png"]}\n' >sub/p.jsonl
    mkdir elsewhere
    cd elsewhere
    run "$NBBATCH" add ../sub/p.jsonl
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "added 1 job to batch p (0 already queued)" ]
}

@test "add: a reference image that is not an image is refused" {
    echo "not an image" >notes.png
    printf -- '--image notes.png x\n' >p.txt
    run "$NBBATCH" add p.txt
    echo "$output"
    [ "$status" -eq 65 ]
    [[ "$output" == *"p.txt:1: images:"*"not a PNG"* ]]
}

@test "add: --dry-run adds nothing and shows the cost" {
    prompts 3 >p.txt
    echo "--model gemini-3-pro-image --size 4K a big one" >>p.txt
    run "$NBBATCH" add --dry-run p.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"would add 4 jobs to batch p"* ]]
    [[ "$output" == *"gemini-2.5-flash-image 1K: 3 images, about \$0.12"* ]]
    [[ "$output" == *"gemini-3-pro-image 4K: 1 image, about \$0.24"* ]]
    [[ "$output" == *"total: 4 images, about \$0.36"* ]]
    [ "$(job_count)" -eq 0 ]
    run "$NBBATCH" add --dry-run --via batch p.txt
    [[ "$output" == *"total: 4 images, about \$0.18 at Batch API prices"* ]]
}

@test "add: stdin with '-' goes to batch stdin" {
    run bash -c 'printf "one\ntwo\n" | "$NBBATCH" add -'
    echo "$output"
    [ "$status" -eq 0 ]
    [ "$output" = "added 2 jobs to batch stdin (0 already queued)" ]
    [ "$(job_count)" -eq 2 ]
}

@test "add: an unreadable file exits 66 and adds nothing" {
    prompts 2 >p.txt
    run "$NBBATCH" add p.txt missing.txt
    echo "$output"
    [ "$status" -eq 66 ]
    [[ "$output" == *"missing.txt: No such file"* ]]
    [ ! -e "$NBBATCH_DB" ]     # checked before anything is opened

    # a folder opens but cannot be read: found after p.txt was parsed
    mkdir folder
    run "$NBBATCH" add p.txt folder
    echo "$output"
    [ "$status" -eq 66 ]
    [[ "$output" == *"folder: read error"* ]]
    [ "$(job_count)" -eq 0 ]
}

@test "add: two lines asking for the same output name" {
    printf -- '--name fox a fox\n--name fox.png another fox\n' >p.txt
    run "$NBBATCH" add p.txt
    echo "$output"
    [ "$status" -eq 65 ]
    [[ "$output" == *"p.txt:2: name:"*"fox.png is already the output"* ]]
    [ "$(job_count)" -eq 0 ]
}

@test "add: a name that would leave the folder is refused" {
    printf '{"prompt": "x", "name": "../escape.png"}\n' >p.jsonl
    run "$NBBATCH" add p.jsonl
    echo "$output"
    [ "$status" -eq 65 ]
    [[ "$output" == *"p.jsonl:1: name: not a usable file name"* ]]
}

@test "add: bad command lines exit 64" {
    prompts 1 >p.txt
    run "$NBBATCH" add
    [ "$status" -eq 64 ]
    run "$NBBATCH" add --count 0 p.txt
    [ "$status" -eq 64 ]
    run "$NBBATCH" add --aspect 1:4 p.txt
    [ "$status" -eq 64 ]
    [[ "$output" == *"--aspect"* ]]
    run "$NBBATCH" add --via carrier-pigeon p.txt
    [ "$status" -eq 64 ]
    run "$NBBATCH" add --not-before someday p.txt
    [ "$status" -eq 64 ]
    run "$NBBATCH" add --model "Not A Model" p.txt
    [ "$status" -eq 64 ]
    [ ! -e "$NBBATCH_DB" ]     # refused before the database is opened
}
