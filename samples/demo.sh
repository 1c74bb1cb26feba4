#!/bin/sh
# `make demo`: runs the samples through nbbatch against the bundled API
# simulator on 127.0.0.1, with some of its answers failing on purpose, and
# shows where the images went.  Usage: demo.sh NBBATCH NBSIM
set -eu
nbbatch=$1
nbsim=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(pwd)/build/demo
rm -rf "$work"
mkdir -p "$work"

"$nbsim" --port 0 --port-file "$work/port" --scenario "$here/demo.conf" \
    --log "$work/sim.log" >"$work/sim.out" 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || :' EXIT INT TERM
i=0
while [ ! -s "$work/port" ]; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
        echo "demo: the simulator did not start" >&2
        cat "$work/sim.out" >&2
        exit 1
    fi
    sleep 0.1
done
port=$(cat "$work/port")

export NBBATCH_DB="$work/nbbatch.db"
export GEMINI_BASE_URL="http://127.0.0.1:$port"
export GEMINI_API_KEY=sim-key
unset GOOGLE_API_KEY GOOGLE_GEMINI_BASE_URL

cd "$work"
echo "== simulator on $GEMINI_BASE_URL (about 1 answer in 4 fails on purpose)"
echo "== nbbatch add samples"
"$nbbatch" add --out "$work/out/prompts" "$here/prompts.txt"
"$nbbatch" add --out "$work/out/styles" --model gemini-3-pro-image-preview \
    "$here/styles.jsonl"
"$nbbatch" add --out "$work/out/options" "$here/options.txt"
"$nbbatch" add --out "$work/out/overnight" --via batch "$here/overnight.txt"
echo "== nbbatch run --workers 8 (direct requests and one remote batch)"
status=0
"$nbbatch" run --workers 8 --batch-poll 1 || status=$?
echo "== nbbatch status"
"$nbbatch" status
echo "== images"
find "$work/out" -name '*.png' | sort
echo "== the simulator answered $(wc -l <"$work/sim.log") requests;" \
    "$(grep -c '"image":true' "$work/sim.log" || :) direct answers carried an" \
    "image; $(grep -c '"kind":"batch_create"' "$work/sim.log" || :) remote" \
    "batch made the Batch-mode images"
exit $status
