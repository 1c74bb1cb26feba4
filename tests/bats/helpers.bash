# Shared set-up for the command-line tests: binaries, a private database
# and working folder per test, and the API simulator on 127.0.0.1.

NBBATCH=${NBBATCH:-$PWD/nbbatch}
NBSIM=${NBSIM:-$PWD/build/rel/nbsim}
PNGCHECK=${PNGCHECK:-$PWD/build/rel/tests/pngcheck}

setup_workdir() {
    WORK=$BATS_TEST_TMPDIR/w
    mkdir -p "$WORK"
    cd "$WORK"
    export NBBATCH_DB=$WORK/nbbatch.db
    # No user configuration leaks into the tests.
    export XDG_CONFIG_HOME=$WORK/config HOME=$WORK
    unset GEMINI_API_KEY GOOGLE_API_KEY GEMINI_BASE_URL \
        GOOGLE_GEMINI_BASE_URL NBBATCH_LOG_LEVEL LOG_LEVEL
}

# start_sim [SCENARIO-TEXT]: starts nbsim with the scenario given on stdin
# or as $1, exports GEMINI_BASE_URL and GEMINI_API_KEY, sets SIM_LOG.
start_sim() {
    local scenario=$WORK/scenario.conf
    printf '%s\n' "${1:-}" >"$scenario"
    SIM_LOG=$WORK/sim.log
    rm -f "$WORK/sim.port"
    "$NBSIM" --port 0 --port-file "$WORK/sim.port" --scenario "$scenario" \
        --log "$SIM_LOG" >"$WORK/sim.out" 2>&1 &
    SIM_PID=$!
    local i=0
    while [ ! -s "$WORK/sim.port" ]; do
        i=$((i + 1))
        if [ $i -gt 100 ]; then
            cat "$WORK/sim.out" >&2
            return 1
        fi
        sleep 0.05
    done
    SIM_PORT=$(cat "$WORK/sim.port")
    export GEMINI_BASE_URL=http://127.0.0.1:$SIM_PORT
    export GEMINI_API_KEY=sim-key
}

stop_sim() {
    if [ -n "${SIM_PID:-}" ]; then
        kill "$SIM_PID" 2>/dev/null || :
        wait "$SIM_PID" 2>/dev/null || :
        SIM_PID=
    fi
}

# prompts N [PREFIX]: N distinct prompts, one per line.
prompts() {
    local i
    for i in $(seq 1 "$1"); do
        echo "${2:-a test image} number $i"
    done
}

# sim_count PATTERN: lines of the simulator log matching PATTERN.
sim_count() {
    grep -c -- "$1" "$SIM_LOG" || :
}

# db_state_count STATE: jobs in STATE, from `nbbatch list`.
db_state_count() {
    "$NBBATCH" list --state "$1" --json | grep -o '"id":' | wc -l
}
