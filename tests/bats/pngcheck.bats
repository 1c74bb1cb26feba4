#!/usr/bin/env bats
# The checker every end-to-end test relies on must itself catch what it is
# there to catch.  Fixtures: tests/data/images (see make-fixtures.py).

load helpers

setup() {
    FIX=$BATS_TEST_DIRNAME/../data/images
    OUT=$BATS_TEST_TMPDIR/out
    mkdir -p "$OUT"
}

@test "pngcheck: good images pass" {
    run "$PNGCHECK" "$FIX/good-fox.png" "$FIX/good-kitsune.png"
    [ "$status" -eq 0 ]
    [ "$output" = "pngcheck: 2 ok" ]
}

@test "pngcheck: a folder of exactly N good images passes" {
    cp "$FIX/good-fox.png" "$FIX/good-kitsune.png" "$OUT/"
    run "$PNGCHECK" --dir "$OUT" --expect 2 --prompts "$FIX/prompts.txt"
    [ "$status" -eq 0 ]
    [ "$output" = "pngcheck: 2 ok" ]
}

@test "pngcheck: wrong count, leftover temporary file" {
    cp "$FIX/good-fox.png" "$OUT/"
    run "$PNGCHECK" --dir "$OUT" --expect 2
    [ "$status" -eq 1 ]
    [[ "$output" == *"holds 1 entries, expected 2"* ]]

    : >"$OUT/good-kitsune.png.tmp-2"
    run "$PNGCHECK" --dir "$OUT" --expect 2
    [ "$status" -eq 1 ]
    [[ "$output" == *"good-kitsune.png.tmp-2: not a PNG file"* ]]
}

@test "pngcheck: thought colour, wrong colour, no chunk, corrupt" {
    for f in thought wrong-colour no-chunk corrupt; do
        run "$PNGCHECK" "$FIX/$f.png"
        [ "$status" -eq 1 ]
        [ "${#lines[@]}" -eq 1 ]
    done
    run "$PNGCHECK" "$FIX/thought.png"
    [[ "$output" == *"thought image"* ]]
    run "$PNGCHECK" "$FIX/corrupt.png"
    [[ "$output" == *"not a valid PNG"* ]]
}

@test "pngcheck: the same job twice" {
    cp "$FIX/good-fox.png" "$FIX/dup-fox.png" "$OUT/"
    run "$PNGCHECK" --dir "$OUT" --expect 2
    [ "$status" -eq 1 ]
    [[ "$output" == *"same job 1 and prompt"* ]]
}

@test "pngcheck: a prompt without its image, an image without its prompt" {
    run "$PNGCHECK" --prompts "$FIX/prompts.txt" "$FIX/good-fox.png"
    [ "$status" -eq 1 ]
    [[ "$output" == *"prompts.txt:4: prompt has 0 image(s), expected 1"* ]]

    run "$PNGCHECK" --prompts "$FIX/prompts.txt" "$FIX/good-fox.png" \
        "$FIX/good-kitsune.png" "$FIX/wrong-colour.png"
    [ "$status" -eq 1 ]
    [[ "$output" == *"wrong-colour.png: its prompt is not in"* ]]
}

@test "pngcheck: usage errors" {
    run "$PNGCHECK"
    [ "$status" -eq 2 ]
    run "$PNGCHECK" --dir "$OUT"
    [ "$status" -eq 2 ]
    run "$PNGCHECK" --dir "$OUT" --expect x
    [ "$status" -eq 2 ]
}
