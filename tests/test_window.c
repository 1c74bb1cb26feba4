/*
 * test_window.c - off-peak windows and the time zones under them.
 *
 * Expected instants are written as UTC text and turned into epoch
 * milliseconds with glibc's timegm(), so they do not lean on tzone's own
 * calendar.  Daylight-saving dates used (all 2026):
 *   Europe/Berlin     Mar 29 01:00 UTC (02:00 -> 03:00), Oct 25 01:00 UTC
 *                     (03:00 -> 02:00)
 *   America/New_York  Mar 8 07:00 UTC (02:00 -> 03:00), Nov 1 06:00 UTC
 *                     (02:00 -> 01:00)
 *   Australia/Lord_Howe  Apr 4 15:00 UTC (02:00 -> 01:30), Oct 3 15:30 UTC
 *                     (02:00 -> 02:30)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "tests/testutil.h"

#include "queue/nberr.h"
#include "runner/tzone.h"
#include "runner/window.h"


static struct window_set
windows(const char *text)
{
    struct window_set set;
    char err[256];

    if (window_parse(text, &set, err, sizeof(err)) != 0)
        fail_msg("window_parse(\"%s\"): %s", text, err);
    return set;
}

/* Open at t, closing at until. */
static void
expect_open(const char *w, const char *tz, int64_t t, int64_t until)
{
    struct window_set set = windows(w);
    int64_t got = -1, next = -1;

    assert_int_equal(window_open_at(&set, tz, t, &got), 1);
    assert_int_equal(got, until);
    assert_int_equal(window_next_open(&set, tz, t, &next), 0);
    assert_int_equal(next, t);
}

/* Closed at t, opening next at open and then closing at until. */
static void
expect_closed(const char *w, const char *tz, int64_t t, int64_t open,
              int64_t until)
{
    struct window_set set = windows(w);
    int64_t got = -1, close = -1;

    assert_int_equal(window_open_at(&set, tz, t, &got), 0);
    assert_int_equal(got, -1);
    assert_int_equal(window_next_open(&set, tz, t, &got), 0);
    assert_int_equal(got, open);
    assert_int_equal(window_open_at(&set, tz, open, &close), 1);
    assert_int_equal(close, until);
    assert_int_equal(window_open_at(&set, tz, open - 1, NULL), 0);
}

/* ---- parsing -------------------------------------------------------- */

static void
test_parse(void **state)
{
    struct window_set set;
    char text[WINDOW_TEXT_MAX];

    set = windows("22:00-06:00");
    assert_int_equal(set.n, 1);
    assert_int_equal(set.span[0].start_min, 22 * 60);
    assert_int_equal(set.span[0].end_min, 6 * 60);

    set = windows(" 9:05 - 17:00 ,12:30-13:30,  00:00-24:00 ");
    assert_int_equal(set.n, 3);
    assert_int_equal(set.span[0].start_min, 9 * 60 + 5);
    assert_int_equal(set.span[2].end_min, 24 * 60);
    assert_int_equal(window_format(&set, text, sizeof(text)), 0);
    assert_string_equal(text, "09:05-17:00,12:30-13:30,00:00-24:00");
    assert_int_equal(window_format(&set, text, 20), NB_ELIMIT);

    /* an end of 00:00 is the same instant as 24:00 */
    set = windows("22:00-00:00");
    assert_int_equal(set.span[0].end_min, 24 * 60);
    assert_int_equal(window_format(&set, text, sizeof(text)), 0);
    assert_string_equal(text, "22:00-24:00");
}

static void
test_parse_errors(void **state)
{
    static const struct {
        const char *text;
        const char *says;
    } bad[] = {
        {"", "no window"},
        {"   ", "no window"},
        {"22:00", "expected '-'"},
        {"22:00-", "not a window"},
        {"25:00-06:00", "\"25:00-06:00\": not a window"},
        {"22:60-06:00", "not a window"},
        {"24:00-06:00", "cannot start at 24:00"},
        {"22:00-24:01", "not a window"},
        {"10:00-10:00", "start and end are equal"},
        {"00:00-00:00", "start and end are equal"},
        {"2200-0600", "not a window"},
        {"22:000-06:00", "not a window"},
        {"22:00-06:00,", "no window after it"},
        {"22:00-06:00, 12:30-13:30 x", "\"x\": unexpected text"},
        {"22:00-06:00;12:00-13:00", "unexpected text"},
        {"-1:00-06:00", "not a window"},
        {"12:30-13:30, 7:00-7:00", "\"7:00-7:00\": start and end"},
    };
    struct window_set set = windows("01:00-02:00");
    char err[256], many[512] = "";

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(window_parse(bad[i].text, &set, err, sizeof(err)),
                         NB_EINVAL);
        if (strstr(err, bad[i].says) == NULL)
            fail_msg("\"%s\" says \"%s\"", bad[i].text, err);
        assert_int_equal(set.n, 1);         /* untouched */
    }

    for (int i = 0; i <= WINDOW_MAX; i++) {
        size_t n = strlen(many);

        snprintf(many + n, sizeof(many) - n, "%s%02d:00-%02d:30",
                 i > 0 ? "," : "", i, i);
    }
    assert_int_equal(window_parse(many, &set, err, sizeof(err)), NB_ELIMIT);
    *strrchr(many, ',') = '\0';
    assert_int_equal(window_parse(many, &set, err, sizeof(err)), 0);
    assert_int_equal(set.n, WINDOW_MAX);
}

/* ---- plain days ----------------------------------------------------- */

static void
test_midnight_crossing(void **state)
{
    const char *w = "22:00-06:00";

    expect_open(w, "UTC", utc("2026-01-10 23:00"), utc("2026-01-11 06:00"));
    expect_open(w, "UTC", utc("2026-01-11 05:59:59") + 999,
                utc("2026-01-11 06:00"));
    expect_open(w, "UTC", utc("2026-01-10 22:00"), utc("2026-01-11 06:00"));
    expect_closed(w, "UTC", utc("2026-01-11 06:00"), utc("2026-01-11 22:00"),
                  utc("2026-01-12 06:00"));
    expect_closed(w, "UTC", utc("2026-01-10 21:59:59") + 999,
                  utc("2026-01-10 22:00"), utc("2026-01-11 06:00"));
    /* a leap day and a year end */
    expect_open(w, "UTC", utc("2028-02-28 23:00"), utc("2028-02-29 06:00"));
    expect_open(w, "UTC", utc("2026-12-31 23:59"), utc("2027-01-01 06:00"));
    /* whole day: never closes */
    expect_open("00:00-24:00", "UTC", utc("2026-05-01 12:00"),
                WINDOW_FOREVER);
}

static void
test_several_windows_tokyo(void **state)
{
    const char *w = "01:00-02:00, 12:30-13:30, 13:30-14:00, 23:00-01:00";
    const char *tz = "Asia/Tokyo";           /* +09:00, no DST */

    /* 12:45 JST: two touching windows make one stretch to 14:00 */
    expect_open(w, tz, utc("2026-06-01 03:45"), utc("2026-06-01 05:00"));
    /* 23:30 JST: 23:00-01:00 then 01:00-02:00, to 02:00 JST */
    expect_open(w, tz, utc("2026-06-01 14:30"), utc("2026-06-01 17:00"));
    /* 10:00 JST: next 12:30 JST */
    expect_closed(w, tz, utc("2026-06-01 01:00"), utc("2026-06-01 03:30"),
                  utc("2026-06-01 05:00"));
    /* 14:00 JST is the end, not inside */
    expect_closed(w, tz, utc("2026-06-01 05:00"), utc("2026-06-01 14:00"),
                  utc("2026-06-01 17:00"));
    expect_open("09:00-17:00", tz, utc("2026-06-01 00:00"),
                utc("2026-06-01 08:00"));
}

/* ---- daylight saving ------------------------------------------------ */

static void
test_berlin_spring_forward(void **state)
{
    const char *tz = "Europe/Berlin";

    /* 01:30 CET until the jump at 02:00 CET = 03:00 CEST */
    expect_open("01:30-02:30", tz, utc("2026-03-29 00:30"),
                utc("2026-03-29 01:00"));
    expect_closed("01:30-02:30", tz, utc("2026-03-29 00:29"),
                  utc("2026-03-29 00:30"), utc("2026-03-29 01:00"));
    expect_closed("01:30-02:30", tz, utc("2026-03-29 01:00"),
                  utc("2026-03-29 23:30"), utc("2026-03-30 00:30"));
    /* wholly inside the skipped hour: does not open that night */
    expect_closed("02:00-02:30", tz, utc("2026-03-28 23:00"),
                  utc("2026-03-30 00:00"), utc("2026-03-30 00:30"));
    /* starting in the gap: opens at the jump */
    expect_closed("02:30-04:00", tz, utc("2026-03-29 00:00"),
                  utc("2026-03-29 01:00"), utc("2026-03-29 02:00"));
    /* across midnight: 22:00 CET to 06:00 CEST, seven hours */
    expect_open("22:00-06:00", tz, utc("2026-03-28 23:00"),
                utc("2026-03-29 04:00"));
    expect_closed("22:00-06:00", tz, utc("2026-03-28 20:59"),
                  utc("2026-03-28 21:00"), utc("2026-03-29 04:00"));
    expect_closed("22:00-06:00", tz, utc("2026-03-29 04:00"),
                  utc("2026-03-29 20:00"), utc("2026-03-30 04:00"));
}

static void
test_berlin_fall_back(void **state)
{
    const char *tz = "Europe/Berlin";

    /* 02:30 first pass (CEST) to 03:30 CET: two hours */
    expect_closed("02:30-03:30", tz, utc("2026-10-24 22:00"),
                  utc("2026-10-25 00:30"), utc("2026-10-25 02:30"));
    /* closes at the first 02:30 and does not reopen on the second */
    expect_open("01:30-02:30", tz, utc("2026-10-25 00:00"),
                utc("2026-10-25 00:30"));
    expect_closed("01:30-02:30", tz, utc("2026-10-25 01:15"),
                  utc("2026-10-26 00:30"), utc("2026-10-26 01:30"));
    /* across midnight: 22:00 CEST to 06:00 CET, nine hours */
    expect_open("22:00-06:00", tz, utc("2026-10-25 00:45"),
                utc("2026-10-25 05:00"));
    expect_open("22:00-06:00", tz, utc("2026-10-25 01:45"),
                utc("2026-10-25 05:00"));
    expect_closed("22:00-06:00", tz, utc("2026-10-24 19:00"),
                  utc("2026-10-24 20:00"), utc("2026-10-25 05:00"));
}

static void
test_new_york(void **state)
{
    const char *tz = "America/New_York";

    /* spring: 23:00 EST to 03:00 EDT, three hours */
    expect_closed("23:00-03:00", tz, utc("2026-03-08 00:00"),
                  utc("2026-03-08 04:00"), utc("2026-03-08 07:00"));
    /* fall: 01:00 EDT until 02:00 EST, the repeated hour inside */
    expect_open("01:00-02:00", tz, utc("2026-11-01 05:00"),
                utc("2026-11-01 07:00"));
    expect_open("01:00-02:00", tz, utc("2026-11-01 06:30"),
                utc("2026-11-01 07:00"));
    /* a window in the repeated hour opens on its first pass only */
    expect_closed("01:30-01:45", tz, utc("2026-11-01 05:00"),
                  utc("2026-11-01 05:30"), utc("2026-11-01 05:45"));
    expect_closed("01:30-01:45", tz, utc("2026-11-01 06:35"),
                  utc("2026-11-02 06:30"), utc("2026-11-02 06:45"));
}

static void
test_lord_howe(void **state)
{
    const char *tz = "Australia/Lord_Howe";  /* +10:30, DST +11:00 */

    /* spring: 02:00 -> 02:30, so 02:00-03:00 lasts half an hour */
    expect_closed("02:00-03:00", tz, utc("2026-10-03 12:00"),
                  utc("2026-10-03 15:30"), utc("2026-10-03 16:00"));
    /* fall: 02:00 -> 01:30, so 01:30-02:00 lasts an hour */
    expect_closed("01:30-02:00", tz, utc("2026-04-04 12:00"),
                  utc("2026-04-04 14:30"), utc("2026-04-04 15:30"));
    /* an ordinary day */
    expect_closed("01:30-02:00", tz, utc("2026-06-01 00:00"),
                  utc("2026-06-01 15:00"), utc("2026-06-01 15:30"));
}

/* Walks open and close instants from `from` to `to`, recording each
 * stretch's length in minutes. */
static int
walk(const char *w, const char *tz, int64_t from, int64_t to,
     int64_t *minutes, int max)
{
    struct window_set set = windows(w);
    int64_t t = from;
    int n = 0;

    while (n < max) {
        int64_t open, close;

        assert_int_equal(window_next_open(&set, tz, t, &open), 0);
        if (open >= to)
            break;
        assert_int_equal(window_open_at(&set, tz, open, &close), 1);
        assert_true(close > open);
        minutes[n++] = (close - open) / 60000;
        t = close;
    }
    return n;
}

static void
test_once_per_night(void **state)
{
    int64_t m[8];
    int n;

    n = walk("22:00-06:00", "Europe/Berlin", utc("2026-03-27 12:00"),
             utc("2026-03-31 12:00"), m, 8);
    assert_int_equal(n, 4);
    assert_int_equal(m[0], 480);
    assert_int_equal(m[1], 420);
    assert_int_equal(m[2], 480);
    assert_int_equal(m[3], 480);

    n = walk("22:00-06:00", "Europe/Berlin", utc("2026-10-23 12:00"),
             utc("2026-10-26 12:00"), m, 8);
    assert_int_equal(n, 3);
    assert_int_equal(m[0], 480);
    assert_int_equal(m[1], 540);
    assert_int_equal(m[2], 480);

    n = walk("00:30-03:00", "America/New_York", utc("2026-10-31 00:00"),
             utc("2026-11-03 00:00"), m, 8);
    assert_int_equal(n, 3);
    assert_int_equal(m[0], 150);
    assert_int_equal(m[1], 210);
    assert_int_equal(m[2], 150);
}

/* Random windows and instants in several zones: what open_at and
 * next_open say agrees with itself around every boundary. */
static void
test_consistency(void **state)
{
    static const char *const zones[] = {
        "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
        "Asia/Tokyo", "America/Santiago", "Pacific/Apia", "UTC", NULL
    };
    unsigned seed = 12345;

    for (int round = 0; round < 3000; round++) {
        struct window_set set;
        const char *tz = zones[round % 7];
        int64_t t, until, open, close;
        char text[64];
        int s1, e1, s2, e2;

        seed = seed * 1103515245u + 12345u;
        s1 = (int)(seed >> 8) % 96 * 15;
        e1 = (s1 + 15 + (int)(seed >> 16) % 90 * 15) % 1440;
        seed = seed * 1103515245u + 12345u;
        s2 = (int)(seed >> 8) % 96 * 15;
        e2 = (s2 + 15 + (int)(seed >> 16) % 40 * 15) % 1440;
        snprintf(text, sizeof(text), "%02d:%02d-%02d:%02d,%02d:%02d-%02d:%02d",
                 s1 / 60, s1 % 60, e1 / 60, e1 % 60, s2 / 60, s2 % 60,
                 e2 / 60, e2 % 60);
        set = windows(text);
        seed = seed * 1103515245u + 12345u;
        t = utc("2011-01-01 00:00") + (int64_t)(seed % 600000) * 1000 *
            1000;

        if (window_open_at(&set, tz, t, &until) == 1) {
            if (until == WINDOW_FOREVER)
                continue;
            assert_true(until > t);
            assert_int_equal(window_open_at(&set, tz, until - 1, NULL), 1);
            assert_int_equal(window_open_at(&set, tz, until, NULL), 0);
            assert_int_equal(window_open_at(&set, tz, (t + until) / 2,
                                            NULL), 1);
        } else {
            assert_int_equal(window_next_open(&set, tz, t, &open), 0);
            assert_true(open > t);
            assert_true(open - t <= 3LL * 86400 * 1000);
            assert_int_equal(window_open_at(&set, tz, open - 1, NULL), 0);
            assert_int_equal(window_open_at(&set, tz, (t + open) / 2,
                                            NULL), 0);
            assert_int_equal(window_open_at(&set, tz, open, &close), 1);
            assert_true(close > open);
        }
    }
}

/* ---- Los Angeles midnight ------------------------------------------- */

static void
test_la_midnight(void **state)
{
    assert_int_equal(window_next_la_midnight(utc("2026-01-15 12:00")),
                     utc("2026-01-16 08:00"));
    assert_int_equal(window_next_la_midnight(utc("2026-07-15 12:00")),
                     utc("2026-07-16 07:00"));
    /* exactly at midnight: the next one */
    assert_int_equal(window_next_la_midnight(utc("2026-01-16 08:00")),
                     utc("2026-01-17 08:00"));
    assert_int_equal(window_next_la_midnight(utc("2026-01-16 07:59:59") +
                                             999),
                     utc("2026-01-16 08:00"));
    /* the 23-hour day when DST starts (Mar 8) */
    assert_int_equal(window_next_la_midnight(utc("2026-03-07 20:00")),
                     utc("2026-03-08 08:00"));
    assert_int_equal(window_next_la_midnight(utc("2026-03-08 09:00")),
                     utc("2026-03-09 07:00"));
    /* the 25-hour day when it ends (Nov 1) */
    assert_int_equal(window_next_la_midnight(utc("2026-11-01 08:00")),
                     utc("2026-11-02 08:00"));
    assert_int_equal(window_next_la_midnight(utc("2026-10-31 08:00")),
                     utc("2026-11-01 07:00"));
    /* past the last transition of the file: the rule takes over */
    assert_int_equal(window_next_la_midnight(utc("2040-07-01 12:00")),
                     utc("2040-07-02 07:00"));
    assert_int_equal(window_next_la_midnight(utc("2040-12-01 12:00")),
                     utc("2040-12-02 08:00"));
}

/* ---- zones ---------------------------------------------------------- */

static void
test_zones(void **state)
{
    const struct tzone *a, *b;
    struct tzone_info info;
    struct window_set set = windows("22:00-06:00");
    char err[256];
    int64_t t;

    assert_int_equal(tzone_get("Europe/Berlin", &a, err, sizeof(err)), 0);
    tzone_at(a, utc("2026-07-01 12:00") / 1000, &info);
    assert_int_equal(info.utoff_s, 7200);
    assert_int_equal(info.is_dst, 1);
    assert_string_equal(info.abbr, "CEST");
    tzone_at(a, utc("2050-01-01 12:00") / 1000, &info);
    assert_string_equal(info.abbr, "CET");

    assert_int_equal(tzone_get("Europe/Berlin", &b, err, sizeof(err)), 0);
    assert_ptr_equal(a, b);                 /* cached */
    assert_int_equal(tzone_get("UTC", &a, err, sizeof(err)), 0);
    assert_int_equal(tzone_get("Etc/UTC", &b, err, sizeof(err)), 0);
    assert_true(tzone_same(a, b));
    assert_int_equal(tzone_get("Asia/Tokyo", &b, err, sizeof(err)), 0);
    assert_false(tzone_same(a, b));

    assert_int_equal(tzone_get("Mars/Olympus_Mons", &a, err, sizeof(err)),
                     NB_EINVAL);
    assert_non_null(strstr(err, "unknown time zone \"Mars/Olympus_Mons\""));
    assert_int_equal(tzone_get("../../etc/passwd", &a, err, sizeof(err)),
                     NB_EINVAL);
    assert_non_null(strstr(err, "not a time zone name"));
    assert_int_equal(tzone_get("/etc/localtime", &a, err, sizeof(err)),
                     NB_EINVAL);
    assert_int_equal(tzone_get("Europe", &a, err, sizeof(err)), NB_EINVAL);
    assert_int_equal(tzone_get("zone.tab", &a, err, sizeof(err)),
                     NB_EINVAL);
    assert_non_null(strstr(err, "not a usable time zone file"));
    assert_int_equal(window_open_at(&set, "Nowhere/Atall", 0, NULL),
                     NB_EINVAL);
    assert_int_equal(window_next_open(&set, "Nowhere/Atall", 0, &t),
                     NB_EINVAL);
    set.n = 0;
    assert_int_equal(window_open_at(&set, "UTC", 0, NULL), 0);
    assert_int_equal(window_next_open(&set, "UTC", 0, &t), NB_ENOTFOUND);

    assert_int_equal(tzone_from_rule("<+0930>-9:30", &a), 0);
    tzone_at(a, 0, &info);
    assert_int_equal(info.utoff_s, 34200);
    assert_string_equal(info.abbr, "+0930");
    /* "DST all year": each year's end meets the next year's start */
    assert_int_equal(tzone_from_rule("EST5EDT,0/0,J365/25", &a), 0);
    tzone_at(a, utc("2027-01-01 04:59:59") / 1000, &info);
    assert_int_equal(info.utoff_s, -4 * 3600);
    tzone_at(a, utc("2027-01-01 05:00") / 1000, &info);
    assert_int_equal(info.utoff_s, -4 * 3600);
    assert_string_equal(info.abbr, "EDT");
    tzone_at(a, utc("2026-07-01 12:00") / 1000, &info);
    assert_int_equal(info.utoff_s, -4 * 3600);
    assert_int_equal(tzone_first_at(a, utc("2027-01-01 00:00") / 1000),
                     utc("2027-01-01 04:00") / 1000);
    assert_int_equal(tzone_from_rule("EST5EDT,M3.2.0,M11.1.0x", &a),
                     NB_EINVAL);
    assert_int_equal(tzone_from_rule("XY5", &a), NB_EINVAL);
}

/* NULL and "" follow $TZ as glibc does, including POSIX rule strings. */
static void
test_local_zone(void **state)
{
    struct window_set set = windows("22:00-06:00");
    const struct tzone *z, *sys;
    struct tzone_info info;
    char err[256];
    int64_t until;

    setenv("TZ", "Asia/Tokyo", 1);
    assert_int_equal(window_open_at(&set, NULL, utc("2026-06-01 14:00"),
                                    &until), 1);
    assert_int_equal(until, utc("2026-06-01 21:00"));

    setenv("TZ", ":America/New_York", 1);
    assert_int_equal(window_open_at(&set, "", utc("2026-06-02 03:00"),
                                    &until), 1);
    assert_int_equal(until, utc("2026-06-02 10:00"));

    setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3", 1);
    assert_int_equal(tzone_get(NULL, &z, err, sizeof(err)), 0);
    tzone_at(z, utc("2026-03-29 01:00") / 1000, &info);
    assert_int_equal(info.utoff_s, 7200);
    tzone_at(z, utc("2026-03-29 00:59:59") / 1000, &info);
    assert_int_equal(info.utoff_s, 3600);
    assert_string_equal(info.abbr, "CET");

    setenv("TZ", "", 1);
    assert_int_equal(tzone_get(NULL, &z, err, sizeof(err)), 0);
    tzone_at(z, 0, &info);
    assert_int_equal(info.utoff_s, 0);

    setenv("TZ", "No/Such_Zone", 1);    /* glibc falls back to UTC too */
    assert_int_equal(tzone_get(NULL, &z, err, sizeof(err)), 0);
    tzone_at(z, utc("2026-06-01 00:00") / 1000, &info);
    assert_int_equal(info.utoff_s, 0);

    unsetenv("TZ");
    assert_int_equal(tzone_get(NULL, &z, err, sizeof(err)), 0);
    assert_int_equal(tzone_system(&sys, err, sizeof(err)), 0);
    assert_true(tzone_same(z, sys));
}

static void
test_calendar(void **state)
{
    int64_t y;
    int m, d;

    assert_int_equal(tzone_days_from_civil(1970, 1, 1), 0);
    assert_int_equal(tzone_days_from_civil(2000, 3, 1), 11017);
    assert_int_equal(tzone_days_from_civil(1969, 12, 31), -1);
    for (int64_t day = -800000; day < 800000; day += 997) {
        tzone_civil_from_days(day, &y, &m, &d);
        assert_int_equal(tzone_days_from_civil(y, m, d), day);
        assert_true(m >= 1 && m <= 12 && d >= 1 && d <= 31);
    }
    tzone_civil_from_days(tzone_days_from_civil(2028, 2, 29), &y, &m, &d);
    assert_int_equal(y, 2028);
    assert_int_equal(m, 2);
    assert_int_equal(d, 29);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_midnight_crossing),
        cmocka_unit_test(test_several_windows_tokyo),
        cmocka_unit_test(test_berlin_spring_forward),
        cmocka_unit_test(test_berlin_fall_back),
        cmocka_unit_test(test_new_york),
        cmocka_unit_test(test_lord_howe),
        cmocka_unit_test(test_once_per_night),
        cmocka_unit_test(test_consistency),
        cmocka_unit_test(test_la_midnight),
        cmocka_unit_test(test_zones),
        cmocka_unit_test(test_local_zone),
        cmocka_unit_test(test_calendar),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
