#!/usr/bin/env bats
# nbbatch schedule: off-peak windows now and next, crontab lines and
# systemd units.  The clock is moved with libfaketime (the `faketime`
# command); HOME and XDG_CONFIG_HOME point into the test's folder so the
# user's own config, crontab and units are never touched.

load helpers

setup() {
    setup_workdir
    export HOME=$WORK/home
    mkdir -p "$HOME"
    unset XDG_CONFIG_HOME TZ
    command -v faketime >/dev/null || skip "faketime is not installed"
}

# at UTC-TIME ARGS...: runs nbbatch with the clock at UTC-TIME.
at() {
    local when=$1
    shift
    run env TZ=UTC faketime "$when" "$NBBATCH" "$@"
    echo "$output"
}

# crontab_stub: a `crontab` on PATH that keeps the table in $WORK/crontab.
crontab_stub() {
    mkdir -p "$WORK/bin"
    cat >"$WORK/bin/crontab" <<'EOF'
#!/bin/sh
case "$1" in
-l) [ -f "$CRONTAB_FILE" ] || { echo "no crontab for $USER" >&2; exit 1; }
    cat "$CRONTAB_FILE" ;;
-) cat >"$CRONTAB_FILE" ;;
*) exit 2 ;;
esac
EOF
    chmod +x "$WORK/bin/crontab"
    export PATH=$WORK/bin:$PATH CRONTAB_FILE=$WORK/crontab
}

@test "schedule: open now, with its close in the zone and in UTC" {
    at '2026-03-28 23:00:00' schedule --window 22:00-06:00 \
        --tz Europe/Berlin
    [ "$status" -eq 0 ]
    [[ "$output" == *"now           2026-03-29 00:00 CET     2026-03-28 23:00 UTC"* ]]
    [[ "$output" == *"state         open"* ]]
    # the spring-forward night: 06:00 CEST is 04:00 UTC
    [[ "$output" == *"closes        2026-03-29 06:00 CEST    2026-03-29 04:00 UTC"* ]]
    [[ "$output" == *"next opens    2026-03-29 22:00 CEST    2026-03-29 20:00 UTC"* ]]
}

@test "schedule: closed now, with the next start and end" {
    at '2026-03-29 12:00:00' schedule --window '22:00-06:00, 12:30-13:30' \
        --tz Europe/Berlin
    [ "$status" -eq 0 ]
    [[ "$output" == *"windows       22:00-06:00,12:30-13:30"* ]]
    [[ "$output" == *"state         closed"* ]]
    [[ "$output" == *"opens         2026-03-29 22:00 CEST    2026-03-29 20:00 UTC"* ]]
    [[ "$output" == *"closes        2026-03-30 06:00 CEST    2026-03-30 04:00 UTC"* ]]
    # daily quotas reset at midnight in Los Angeles (PDT since Mar 8)
    [[ "$output" == *"quota reset   2026-03-30 09:00 CEST    2026-03-30 07:00 UTC"* ]]
}

@test "schedule: spring-forward night, a window ending in the skipped hour" {
    at '2026-03-29 00:45:00' schedule --window 01:30-02:30 \
        --tz Europe/Berlin
    [ "$status" -eq 0 ]
    [[ "$output" == *"state         open"* ]]
    [[ "$output" == *"closes        2026-03-29 03:00 CEST    2026-03-29 01:00 UTC"* ]]
}

@test "schedule: fall-back night, the repeated hour does not reopen" {
    # 01:30 UTC is 02:30 CET, the second pass of 02:30
    at '2026-10-25 01:15:00' schedule --window 01:30-02:30 \
        --tz Europe/Berlin
    [ "$status" -eq 0 ]
    [[ "$output" == *"now           2026-10-25 02:15 CET     2026-10-25 01:15 UTC"* ]]
    [[ "$output" == *"state         closed"* ]]
    [[ "$output" == *"opens         2026-10-26 01:30 CET     2026-10-26 00:30 UTC"* ]]
}

@test "schedule: the clock keeps running under faketime -f" {
    run env TZ=UTC faketime -f '@2026-06-01 05:59:59' "$NBBATCH" schedule \
        --window 09:00-15:00 --tz Asia/Tokyo
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"state         open"* ]]
    [[ "$output" == *"closes        2026-06-01 15:00 JST     2026-06-01 06:00 UTC"* ]]
}

@test "schedule: windows and zone from the config file" {
    mkdir -p "$HOME/.config/nbbatch"
    printf '[offpeak]\nwindows = 01:00-05:00\ntz = America/New_York\n' \
        >"$HOME/.config/nbbatch/config"
    at '2026-11-01 05:30:00' schedule
    [ "$status" -eq 0 ]
    [[ "$output" == *"time zone     America/New_York"* ]]
    [[ "$output" == *"now           2026-11-01 01:30 EDT     2026-11-01 05:30 UTC"* ]]
    # 01:00 EDT to 05:00 EST: five hours across the fall-back
    [[ "$output" == *"closes        2026-11-01 05:00 EST     2026-11-01 10:00 UTC"* ]]

    # flags win over the file
    at '2026-11-01 05:30:00' schedule --tz UTC
    [[ "$output" == *"opens         2026-11-02 01:00 UTC"* ]]
}

@test "schedule: bad windows, zones and config files are refused" {
    run "$NBBATCH" schedule --window 22:00-25:00
    echo "$output"
    [ "$status" -eq 64 ]
    [[ "$output" == *'--window: "22:00-25:00": not a window'* ]]

    run "$NBBATCH" schedule --window 22:00-06:00 --tz Europe/Atlantis
    [ "$status" -eq 64 ]
    [[ "$output" == *'unknown time zone "Europe/Atlantis"'* ]]

    run "$NBBATCH" schedule
    [ "$status" -eq 64 ]
    [[ "$output" == *"no windows"* ]]

    printf '[offpeak]\nwindows = 22:00-06:00\n\n[breaker]\ncooldown = soon\n' \
        >bad.conf
    run "$NBBATCH" schedule --config bad.conf
    echo "$output"
    [ "$status" -eq 78 ]
    [[ "$output" == *'bad.conf:5: cooldown: "soon" is not a duration'* ]]

    run "$NBBATCH" schedule --config missing.conf
    [ "$status" -eq 66 ]
    [[ "$output" == *"missing.conf: No such file"* ]]

    run "$NBBATCH" schedule --window 22:00-06:00 --install
    [ "$status" -eq 64 ]
}

@test "schedule --cron: one line per window start, absolute paths" {
    printf '[defaults]\nkey_file = ~/key\n' >nb.conf
    run "$NBBATCH" schedule --window '22:00-06:00,12:30-13:30' \
        --tz Asia/Tokyo --batch night --db ./q.db --config nb.conf \
        --cron
    echo "$output"
    [ "$status" -eq 0 ]
    exe=$(readlink -f "$NBBATCH")
    line="flock -n $WORK/q.db.night.lock $exe run --window 22:00-06:00,12:30-13:30 --tz Asia/Tokyo --db $WORK/q.db --batch night --config $WORK/nb.conf"
    [[ "$output" == *"CRON_TZ=Asia/Tokyo"* ]]
    [[ "$output" == *"Debian's cron ignores CRON_TZ"* ]]
    [[ "$output" == *"30 12 * * * $line"* ]]
    [[ "$output" == *"0 22 * * * $line"* ]]
    [[ "$output" != *"GEMINI_API_KEY"* ]]       # the config names a key
}

@test "schedule --cron: no CRON_TZ in the system's own zone" {
    sys=$(readlink /etc/localtime | sed -n 's|.*zoneinfo/||p')
    [ -n "$sys" ] || skip "/etc/localtime does not name a zone"
    run "$NBBATCH" schedule --window 22:00-06:00 --tz "$sys" --cron
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"CRON_TZ"* ]]
    [[ "$output" == *"0 22 * * * flock -n $WORK/nbbatch.db.default.lock "* ]]
    [[ "$output" == *"GEMINI_API_KEY"* ]]
}

@test "schedule --cron: quoting for the shell and for cron's %" {
    run "$NBBATCH" schedule --window 22:00-06:00 --tz UTC --cron \
        --db "$WORK/it's 100%.db"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"--db '$WORK/it'\\''s 100\\%.db'"* ]]
}

@test "schedule --cron --install: adds to the crontab once" {
    crontab_stub
    printf 'MAILTO=me\n5 4 * * * backup' >"$CRONTAB_FILE"
    run "$NBBATCH" schedule --window 22:00-06:00 --tz Europe/Berlin --cron \
        --install
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"added to your crontab"* ]]
    [ "$(sed -n 1p "$CRONTAB_FILE")" = "MAILTO=me" ]
    [ "$(sed -n 2p "$CRONTAB_FILE")" = "5 4 * * * backup" ]
    grep -q '^# nbbatch schedule default:' "$CRONTAB_FILE"
    [ "$(grep -c '^0 22 \* \* \* flock -n ' "$CRONTAB_FILE")" -eq 1 ]

    run "$NBBATCH" schedule --window 22:00-06:00 --tz Europe/Berlin --cron \
        --install
    echo "$output"
    [ "$status" -eq 78 ]
    [[ "$output" == *"already has"* ]]
    [ "$(grep -c '^0 22 \* \* \* flock -n ' "$CRONTAB_FILE")" -eq 1 ]

    # another name is another schedule
    run "$NBBATCH" schedule --window 23:00-06:00 --tz Europe/Berlin --cron \
        --install --name late
    [ "$status" -eq 0 ]
    grep -q '^0 23 \* \* \* flock -n .*nbbatch.db.late.lock' "$CRONTAB_FILE"
}

@test "schedule --cron --install: an empty crontab and a failing crontab" {
    crontab_stub
    run "$NBBATCH" schedule --window 22:00-06:00 --cron --install
    [ "$status" -eq 0 ]
    [ "$(sed -n 1p "$CRONTAB_FILE" | cut -c1-27)" = "# nbbatch schedule default:" ]

    printf '#!/bin/sh\nexit 1\n' >"$WORK/bin/crontab"
    run "$NBBATCH" schedule --window 22:00-06:00 --cron --install --name x
    echo "$output"
    [ "$status" -eq 74 ]
    [[ "$output" == *'`crontab -` failed'* ]]
}

@test "schedule --systemd: a service and a timer" {
    run "$NBBATCH" schedule --window '22:00-06:00,12:30-13:30' \
        --tz Europe/Berlin --batch "night shift" --systemd
    echo "$output"
    [ "$status" -eq 0 ]
    exe=$(readlink -f "$NBBATCH")
    [[ "$output" == *"# $HOME/.config/systemd/user/nbbatch-night-shift.service"* ]]
    [[ "$output" == *"ExecStart=$exe run --window 22:00-06:00,12:30-13:30 --tz Europe/Berlin --db $WORK/nbbatch.db --batch \"night shift\""* ]]
    [[ "$output" == *"OnCalendar=*-*-* 12:30:00 Europe/Berlin"* ]]
    [[ "$output" == *"OnCalendar=*-*-* 22:00:00 Europe/Berlin"* ]]
    [[ "$output" == *"Persistent=true"* ]]
    [[ "$output" == *"systemctl --user enable --now nbbatch-night-shift.timer"* ]]
}

@test "schedule --systemd --install: writes the units, refuses to clobber" {
    export XDG_CONFIG_HOME=$WORK/xdg
    run "$NBBATCH" schedule --window 22:00-06:00 --tz UTC --systemd --install
    echo "$output"
    [ "$status" -eq 0 ]
    dir=$XDG_CONFIG_HOME/systemd/user
    grep -qx 'OnCalendar=\*-\*-\* 22:00:00 UTC' "$dir/nbbatch-default.timer"
    grep -q '^ExecStart=.* run --window 22:00-06:00 --tz UTC' \
        "$dir/nbbatch-default.service"
    [[ "$output" == *"systemctl --user daemon-reload && systemctl --user enable --now nbbatch-default.timer"* ]]

    run "$NBBATCH" schedule --window 22:00-06:00 --tz UTC --systemd --install
    [ "$status" -eq 0 ]
    [[ "$output" == *"unchanged $dir/nbbatch-default.timer"* ]]

    run "$NBBATCH" schedule --window 21:00-06:00 --tz UTC --systemd --install
    [ "$status" -eq 78 ]
    [[ "$output" == *"exists with other content"* ]]
    grep -q '22:00:00' "$dir/nbbatch-default.timer"
}

@test "schedule: help" {
    run "$NBBATCH" schedule --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"usage: nbbatch schedule [--window W]"* ]]
    run "$NBBATCH" schedule --cron --systemd --window 01:00-02:00
    [ "$status" -eq 64 ]
}
