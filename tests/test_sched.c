/*
 * test_sched.c - the scheduler's decisions, one mechanism at a time and
 * then together in two simulations on a fake clock.
 *
 * The simulations drive the breaker, the concurrency limit and the quota
 * pacing the way runner/run.c does (dispatch while allowed, then wait for
 * the next answer or the next instant something may go) against a fake
 * server: one that answers 502 through an outage, one that enforces its
 * own 120-a-minute sliding window with a clock 100 ms behind and 20 to
 * 200 ms of network delay.  Their figures are printed with the results.
 *
 * US daylight-saving dates used (2026): Mar 8 10:00 UTC (02:00 PST ->
 * 03:00 PDT), Nov 1 09:00 UTC (02:00 PDT -> 01:00 PST).
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

#include "jobs/answer.h"
#include "queue/nberr.h"
#include "runner/config.h"
#include "runner/sched.h"

#define SEC 1000LL
#define MIN (60 * SEC)


static struct config_breaker
defaults(void)
{
    struct config cfg;

    config_init(&cfg);
    return cfg.breaker;
}

static void
parse_config(const char *text, struct config *cfg)
{
    char err[256];

    config_init(cfg);
    if (config_parse(text, strlen(text), "test.conf", cfg, err,
                     sizeof(err)) != 0)
        fail_msg("config_parse: %s", err);
}

/* ---- outcomes ---------------------------------------------------- */

static int
outcome(int cls, int http_status, int per_day, int per_minute)
{
    struct answer_result r;

    memset(&r, 0, sizeof(r));
    r.cls = cls;
    r.http_status = http_status;
    r.quota_per_day = per_day;
    r.quota_per_minute = per_minute;
    r.retry_after_ms = -1;
    return sched_outcome_of(&r);
}

static void
test_outcome_of(void **state)
{
    assert_int_equal(outcome(ANSWER_OK, 200, 0, 0), SCHED_SUCCESS);
    assert_int_equal(outcome(ANSWER_TRANSIENT, 500, 0, 0), SCHED_FAILURE);
    assert_int_equal(outcome(ANSWER_TRANSIENT, 504, 0, 0), SCHED_FAILURE);
    assert_int_equal(outcome(ANSWER_TRANSIENT, 0, 0, 0), SCHED_FAILURE);
    assert_int_equal(outcome(ANSWER_TRANSIENT, 502, 0, 0), SCHED_OVERLOAD);
    assert_int_equal(outcome(ANSWER_TRANSIENT, 503, 0, 0), SCHED_OVERLOAD);
    assert_int_equal(outcome(ANSWER_TRANSIENT, 429, 0, 1), SCHED_QUOTA);
    assert_int_equal(outcome(ANSWER_TRANSIENT, 429, 0, 0), SCHED_QUOTA);
    assert_int_equal(outcome(ANSWER_FATAL, 429, 1, 0), SCHED_QUOTA);
    assert_int_equal(outcome(ANSWER_FATAL, 400, 0, 0), SCHED_NEUTRAL);
    assert_int_equal(outcome(ANSWER_PERMANENT, 400, 0, 0), SCHED_NEUTRAL);
    assert_int_equal(outcome(ANSWER_PERMANENT, 200, 0, 0), SCHED_NEUTRAL);
    assert_int_equal(outcome(ANSWER_SOFT, 200, 0, 0), SCHED_NEUTRAL);
}

/* ---- breaker ------------------------------------------------------ */

/* Feeds one answer, sent 100 ms before it came. */
static int
answer(struct sched_breaker *b, const struct config_breaker *cfg,
       int what, int64_t now)
{
    return sched_breaker_outcome(b, cfg, what, now - 100, now);
}

/* Opens a fresh breaker at t with five failures in a row. */
static void
open_at(struct sched_breaker *b, const struct config_breaker *cfg,
        int64_t t)
{
    sched_breaker_init(b);
    for (int i = 0; i < 4; i++)
        assert_int_equal(answer(b, cfg, SCHED_FAILURE, t),
                         SCHED_BREAKER_SAME);
    assert_int_equal(answer(b, cfg, SCHED_OVERLOAD, t),
                     SCHED_BREAKER_OPENED);
}

static void
test_breaker_consecutive(void **state)
{
    struct config_breaker cfg = defaults();
    struct sched_breaker b;
    int64_t t = 1000 * SEC, until = -1;

    sched_breaker_init(&b);
    assert_int_equal(sched_breaker_check(&b), 0);
    assert_int_equal(sched_breaker_state(&b, &cfg, t), SCHED_CLOSED);
    assert_int_equal(sched_breaker_allow(&b, &cfg, t, &until), 1);
    assert_int_equal(until, -1);
    assert_int_equal(sched_breaker_sent(&b, &cfg, t, 60 * SEC), 0);

    /* Four failures, a success: the run starts again. */
    for (int i = 0; i < 4; i++)
        answer(&b, &cfg, SCHED_FAILURE, t);
    assert_int_equal(b.consecutive_failures, 4);
    assert_int_equal(answer(&b, &cfg, SCHED_SUCCESS, t), SCHED_BREAKER_SAME);
    assert_int_equal(b.consecutive_failures, 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(answer(&b, &cfg, SCHED_FAILURE, t),
                         SCHED_BREAKER_SAME);
    assert_int_equal(b.state, SCHED_CLOSED);

    /* The fifth in a row opens it for the 30 s cool-down. */
    assert_int_equal(answer(&b, &cfg, SCHED_FAILURE, t + 5),
                     SCHED_BREAKER_OPENED);
    assert_int_equal(b.state, SCHED_OPEN);
    assert_int_equal(b.opened_at_ms, t + 5);
    assert_int_equal(b.cooldown_ms, 30 * SEC);
    assert_int_equal(sched_breaker_allow(&b, &cfg, t + 5, &until), 0);
    assert_int_equal(until, t + 5 + 30 * SEC);
    assert_int_equal(sched_breaker_allow(&b, &cfg, t + 30 * SEC + 4, NULL),
                     0);
    assert_int_equal(sched_breaker_state(&b, &cfg, t + 30 * SEC + 4),
                     SCHED_OPEN);
    assert_int_equal(sched_breaker_sent(&b, &cfg, t + 6, 60 * SEC), 0);
    assert_int_equal(b.state, SCHED_OPEN);

    /* Cooled down: half-open, one request may go. */
    assert_int_equal(sched_breaker_state(&b, &cfg, t + 30 * SEC + 5),
                     SCHED_HALF_OPEN);
    assert_int_equal(sched_breaker_allow(&b, &cfg, t + 30 * SEC + 5, NULL),
                     1);
    assert_string_equal(sched_breaker_state_name(SCHED_HALF_OPEN),
                        "half-open");
    assert_string_equal(sched_breaker_state_name(SCHED_OPEN), "open");
    assert_string_equal(sched_breaker_state_name(SCHED_CLOSED), "closed");
    assert_string_equal(sched_breaker_state_name(7), "?");
}

static void
test_breaker_failure_rate(void **state)
{
    struct config_breaker cfg = defaults();
    struct sched_breaker b;
    int64_t t = 1000 * SEC;

    /* Every other answer fails: 10 of 20 is not above 0.5. */
    sched_breaker_init(&b);
    for (int i = 0; i < 60; i++)
        assert_int_equal(answer(&b, &cfg, i % 2 ? SCHED_FAILURE :
                                SCHED_SUCCESS, t), SCHED_BREAKER_SAME);
    assert_int_equal(b.window_count, 20);

    /* Four failures and a success, over and over: never five in a row,
     * and 16 of 19 does not count before the window is full. */
    sched_breaker_init(&b);
    for (int i = 0; i < 19; i++) {
        int what = i % 5 == 4 ? SCHED_SUCCESS : SCHED_FAILURE;

        assert_int_equal(answer(&b, &cfg, what, t), SCHED_BREAKER_SAME);
    }
    assert_int_equal(b.window_count, 19);
    /* A success fills the window (16 of 20) but opens nothing; the next
     * failure does. */
    assert_int_equal(answer(&b, &cfg, SCHED_SUCCESS, t), SCHED_BREAKER_SAME);
    assert_int_equal(answer(&b, &cfg, SCHED_FAILURE, t),
                     SCHED_BREAKER_OPENED);

    /* With runs of failures out of play: 10 of 20 is not above half,
     * 11 of 20 is. */
    cfg.failures = 1000;
    sched_breaker_init(&b);
    for (int i = 0; i < 20; i++)
        assert_int_equal(answer(&b, &cfg, i < 10 ? SCHED_SUCCESS :
                                SCHED_FAILURE, t), SCHED_BREAKER_SAME);
    assert_int_equal(b.consecutive_failures, 10);
    assert_int_equal(answer(&b, &cfg, SCHED_FAILURE, t),
                     SCHED_BREAKER_OPENED);

    /* A window longer than the record can hold is cut to 64. */
    cfg = defaults();
    cfg.window = 1000;
    cfg.failures = 1000;
    sched_breaker_init(&b);
    for (int i = 0; i < 63; i++)
        answer(&b, &cfg, i % 3 ? SCHED_FAILURE : SCHED_SUCCESS, t);
    assert_int_equal(b.state, SCHED_CLOSED);
    assert_int_equal(answer(&b, &cfg, SCHED_FAILURE, t),
                     SCHED_BREAKER_OPENED);
    assert_int_equal(b.window_count, SCHED_WINDOW_MAX);
}

static void
test_breaker_one_probe(void **state)
{
    struct config_breaker cfg = defaults();
    struct sched_breaker b;
    int64_t t = 1000 * SEC, half = t + 30 * SEC, until = -1;

    open_at(&b, &cfg, t);

    /* The first request after the cool-down is the probe... */
    assert_int_equal(sched_breaker_allow(&b, &cfg, half, NULL), 1);
    assert_int_equal(sched_breaker_sent(&b, &cfg, half, 60 * SEC), 1);
    assert_int_equal(b.state, SCHED_HALF_OPEN);

    /* ...and nothing else goes while it is out. */
    assert_int_equal(sched_breaker_allow(&b, &cfg, half, &until), 0);
    assert_int_equal(until, half + 60 * SEC);
    assert_int_equal(sched_breaker_allow(&b, &cfg, half + 59 * SEC, NULL),
                     0);
    assert_int_equal(sched_breaker_sent(&b, &cfg, half + 1, 60 * SEC), 0);
    assert_int_equal(b.probe_sent_ms, half);

    /* A straggler sent before the opening changes nothing. */
    assert_int_equal(sched_breaker_outcome(&b, &cfg, SCHED_SUCCESS, t - 50,
                                           half + 10), SCHED_BREAKER_SAME);
    assert_int_equal(sched_breaker_outcome(&b, &cfg, SCHED_FAILURE, t - 50,
                                           half + 10), SCHED_BREAKER_SAME);
    assert_int_equal(b.state, SCHED_HALF_OPEN);

    /* A probe whose answer never came: another may go at its timeout,
     * and the first one's late answer is then ignored. */
    assert_int_equal(sched_breaker_allow(&b, &cfg, half + 60 * SEC, NULL),
                     1);
    assert_int_equal(sched_breaker_sent(&b, &cfg, half + 60 * SEC, 60 * SEC),
                     1);
    assert_int_equal(sched_breaker_outcome(&b, &cfg, SCHED_FAILURE, half,
                                           half + 61 * SEC),
                     SCHED_BREAKER_SAME);
    assert_int_equal(b.state, SCHED_HALF_OPEN);

    /* A neutral answer to the probe frees the slot for another probe. */
    assert_int_equal(sched_breaker_outcome(&b, &cfg, SCHED_NEUTRAL,
                                           half + 60 * SEC, half + 62 * SEC),
                     SCHED_BREAKER_SAME);
    assert_int_equal(sched_breaker_allow(&b, &cfg, half + 62 * SEC, NULL),
                     1);
    assert_int_equal(sched_breaker_sent(&b, &cfg, half + 62 * SEC, 60 * SEC),
                     1);
    assert_int_equal(sched_breaker_outcome(&b, &cfg, SCHED_QUOTA,
                                           half + 62 * SEC, half + 63 * SEC),
                     SCHED_BREAKER_SAME);
    assert_int_equal(sched_breaker_allow(&b, &cfg, half + 63 * SEC, NULL),
                     1);
}

static void
test_breaker_probe_closes(void **state)
{
    struct config_breaker cfg = defaults();
    struct sched_breaker b;
    int64_t t = 1000 * SEC, half = t + 30 * SEC, closed;

    open_at(&b, &cfg, t);
    assert_int_equal(sched_breaker_sent(&b, &cfg, half, 60 * SEC), 1);
    closed = half + 2 * SEC;
    assert_int_equal(sched_breaker_outcome(&b, &cfg, SCHED_SUCCESS, half,
                                           closed), SCHED_BREAKER_CLOSED);
    assert_int_equal(b.state, SCHED_CLOSED);
    assert_int_equal(b.consecutive_failures, 0);
    assert_int_equal(b.window_count, 0);
    assert_int_equal(b.closed_at_ms, closed);
    assert_int_equal(sched_breaker_allow(&b, &cfg, closed, NULL), 1);
    assert_int_equal(sched_breaker_sent(&b, &cfg, closed, 60 * SEC), 0);

    /* Stragglers sent before the closing do not reopen it. */
    for (int i = 0; i < 10; i++)
        assert_int_equal(sched_breaker_outcome(&b, &cfg, SCHED_FAILURE,
                                               closed - 1, closed + 100),
                         SCHED_BREAKER_SAME);
    assert_int_equal(b.state, SCHED_CLOSED);

    /* The next opening starts from the base cool-down again. */
    for (int i = 0; i < 4; i++)
        answer(&b, &cfg, SCHED_FAILURE, closed + SEC);
    assert_int_equal(answer(&b, &cfg, SCHED_FAILURE, closed + SEC),
                     SCHED_BREAKER_OPENED);
    assert_int_equal(b.cooldown_ms, 30 * SEC);
}

static void
test_breaker_cooldown_doubles(void **state)
{
    struct config_breaker cfg = defaults();
    struct sched_breaker b;
    int64_t t = 1000 * SEC, until = 0;
    static const int64_t expect_s[] = {60, 120, 240, 480, 600, 600, 600};

    open_at(&b, &cfg, t);
    for (size_t i = 0; i < sizeof(expect_s) / sizeof(expect_s[0]); i++) {
        int64_t probe = b.opened_at_ms + b.cooldown_ms;

        assert_int_equal(sched_breaker_allow(&b, &cfg, probe - 1, &until),
                         0);
        assert_int_equal(until, probe);
        assert_int_equal(sched_breaker_sent(&b, &cfg, probe, 60 * SEC), 1);
        assert_int_equal(sched_breaker_outcome(&b, &cfg, SCHED_OVERLOAD,
                                               probe, probe + 100),
                         SCHED_BREAKER_REOPENED);
        assert_int_equal(b.state, SCHED_OPEN);
        assert_int_equal(b.opened_at_ms, probe + 100);
        assert_int_equal(b.cooldown_ms, expect_s[i] * SEC);
    }

    /* A record stored under a longer cap obeys the current one. */
    cfg.max_cooldown_ms = 2 * MIN;
    assert_int_equal(sched_breaker_allow(&b, &cfg, b.opened_at_ms, &until),
                     0);
    assert_int_equal(until, b.opened_at_ms + 2 * MIN);
}

static void
test_breaker_neutral_and_quota(void **state)
{
    struct config_breaker cfg = defaults();
    struct sched_breaker b;
    int64_t t = 1000 * SEC;

    /* Quota and neutral answers neither count nor break a run. */
    sched_breaker_init(&b);
    for (int i = 0; i < 4; i++) {
        answer(&b, &cfg, SCHED_FAILURE, t);
        for (int j = 0; j < 50; j++) {
            assert_int_equal(answer(&b, &cfg, SCHED_QUOTA, t),
                             SCHED_BREAKER_SAME);
            assert_int_equal(answer(&b, &cfg, SCHED_NEUTRAL, t),
                             SCHED_BREAKER_SAME);
        }
    }
    assert_int_equal(b.consecutive_failures, 4);
    assert_int_equal(b.window_count, 4);
    assert_int_equal(answer(&b, &cfg, SCHED_FAILURE, t),
                     SCHED_BREAKER_OPENED);

    /* While open, nothing moves it: not even a success. */
    assert_int_equal(answer(&b, &cfg, SCHED_SUCCESS, t + SEC),
                     SCHED_BREAKER_SAME);
    assert_int_equal(answer(&b, &cfg, SCHED_FAILURE, t + SEC),
                     SCHED_BREAKER_SAME);
    assert_int_equal(b.state, SCHED_OPEN);
    assert_int_equal(b.opened_at_ms, t);
    assert_int_equal(b.cooldown_ms, 30 * SEC);
}

/* The record survives storage: a run a minute later sees it open. */
static void
test_breaker_stored(void **state)
{
    struct config_breaker cfg = defaults();
    struct sched_breaker b, loaded;
    int64_t t = 1000 * SEC, probe = t + 30 * SEC;
    int64_t row[9];

    open_at(&b, &cfg, t);
    sched_breaker_sent(&b, &cfg, probe, 60 * SEC);
    sched_breaker_outcome(&b, &cfg, SCHED_FAILURE, probe, probe + 100);

    /* As the queue would: every field a column, bits as signed. */
    row[0] = b.state;
    row[1] = b.consecutive_failures;
    row[2] = b.window_count;
    row[3] = (int64_t)b.window_bits;
    row[4] = b.opened_at_ms;
    row[5] = b.cooldown_ms;
    row[6] = b.probe_sent_ms;
    row[7] = b.probe_out_until_ms;
    row[8] = b.closed_at_ms;
    sched_breaker_init(&loaded);
    loaded.state = (int)row[0];
    loaded.consecutive_failures = (int)row[1];
    loaded.window_count = (int)row[2];
    loaded.window_bits = (uint64_t)row[3];
    loaded.opened_at_ms = row[4];
    loaded.cooldown_ms = row[5];
    loaded.probe_sent_ms = row[6];
    loaded.probe_out_until_ms = row[7];
    loaded.closed_at_ms = row[8];
    assert_int_equal(sched_breaker_check(&loaded), 0);
    assert_int_equal(loaded.state, SCHED_OPEN);
    assert_int_equal(loaded.window_bits, b.window_bits);
    assert_int_equal(loaded.cooldown_ms, 60 * SEC);

    assert_int_equal(sched_breaker_allow(&loaded, &cfg, probe + MIN, NULL),
                     0);
    assert_int_equal(sched_breaker_allow(&loaded, &cfg,
                                         probe + 100 + MIN, NULL), 1);

    loaded.state = 3;
    assert_int_equal(sched_breaker_check(&loaded), NB_EINVAL);
    loaded.state = SCHED_OPEN;
    loaded.window_count = SCHED_WINDOW_MAX + 1;
    assert_int_equal(sched_breaker_check(&loaded), NB_EINVAL);
    loaded.window_count = 0;
    loaded.cooldown_ms = -1;
    assert_int_equal(sched_breaker_check(&loaded), NB_EINVAL);
}

/* ---- adaptive concurrency ----------------------------------------- */

static void
test_aimd(void **state)
{
    struct sched_aimd a;
    int64_t t = 1000 * SEC;

    sched_aimd_init(&a, 16);
    assert_int_equal(a.limit, 16);
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_SUCCESS, t, t), 0);
    assert_int_equal(a.limit, 16);

    /* Sixteen 429s of one burst: one halving. */
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_QUOTA, t, t + 100), 1);
    assert_int_equal(a.limit, 8);
    for (int i = 0; i < 15; i++)
        assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_QUOTA, t + i,
                                            t + 101 + i), 0);
    assert_int_equal(a.limit, 8);

    /* A request of the next round halves again; 503 and 502 too. */
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_OVERLOAD, t + 100,
                                        t + 200), 1);
    assert_int_equal(a.limit, 4);
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_OVERLOAD, t + 150,
                                        t + 300), 0);
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_QUOTA, t + 200,
                                        t + 300), 1);
    assert_int_equal(a.limit, 2);
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_QUOTA, t + 400,
                                        t + 500), 1);
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_QUOTA, t + 600,
                                        t + 700), 1);
    assert_int_equal(a.limit, 1);      /* never below one */

    /* Other failures do not move it; successes add one each. */
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_FAILURE, t + 800,
                                        t + 900), 0);
    assert_int_equal(sched_aimd_outcome(&a, 16, SCHED_NEUTRAL, t + 800,
                                        t + 900), 0);
    assert_int_equal(a.limit, 1);
    for (int i = 0; i < 40; i++)
        sched_aimd_outcome(&a, 16, SCHED_SUCCESS, t + 800, t + 900);
    assert_int_equal(a.limit, 16);

    /* A stored limit above a smaller --workers comes down to it. */
    sched_aimd_outcome(&a, 6, SCHED_NEUTRAL, t + 800, t + 900);
    assert_int_equal(a.limit, 6);
    sched_aimd_init(&a, 0);
    assert_int_equal(a.limit, 1);
}

/* ---- quota pacing ------------------------------------------------- */

static void
test_quota_minute(void **state)
{
    int64_t t = utc("2026-05-04 12:00");
    int64_t sent[3] = {t, t + 10 * SEC, t + 20 * SEC};
    int64_t next = -1;

    /* No limit at all. */
    assert_int_equal(sched_quota_room(0, 0, 0, NULL, 0, t, &next),
                     SCHED_UNLIMITED);
    assert_int_equal(sched_quota_room(0, 0, 0, sent, 3, t + 20 * SEC, &next),
                     SCHED_UNLIMITED);
    assert_int_equal(next, -1);
    assert_int_equal(sched_quota_room(5, 0, 0, NULL, 0, t, &next), 5);
    assert_int_equal(sched_quota_room(5, 0, 0, sent, 3, t + 20 * SEC, &next),
                     2);

    /* Three a minute: full until the first send is 60.25 s old. */
    assert_int_equal(sched_quota_room(3, 0, 0, sent, 3, t + 20 * SEC, &next),
                     0);
    assert_int_equal(next, t + SCHED_MINUTE_MS);
    assert_int_equal(sched_quota_room(3, 0, 0, sent, 3, t + 60 * SEC, NULL),
                     0);
    assert_int_equal(sched_quota_room(3, 0, 0, sent, 3,
                                      t + SCHED_MINUTE_MS - 1, &next), 0);
    assert_int_equal(next, t + SCHED_MINUTE_MS);
    assert_int_equal(sched_quota_room(3, 0, 0, sent, 3, t + SCHED_MINUTE_MS,
                                      &next), 1);

    /* Two a minute with three sent: the second send must age out. */
    assert_int_equal(sched_quota_room(2, 0, 0, sent, 3, t + 30 * SEC, &next),
                     0);
    assert_int_equal(next, t + 10 * SEC + SCHED_MINUTE_MS);
    assert_int_equal(sched_quota_room(2, 0, 0, sent, 3,
                                      t + 10 * SEC + SCHED_MINUTE_MS, NULL),
                     1);

    /* Only the sends of the last minute are needed. */
    assert_int_equal(sched_quota_since(0, t), t - SCHED_MINUTE_MS);
    assert_int_equal(sched_quota_room(3, 0, 0, sent + 1, 2, t + 20 * SEC,
                                      NULL), 1);

    /* Parked: nothing until the parking ends, then the minute rules. */
    assert_int_equal(sched_quota_room(0, 0, t + 90 * SEC, sent, 3,
                                      t + 30 * SEC, &next), 0);
    assert_int_equal(next, t + 90 * SEC);
    assert_int_equal(sched_quota_room(5, 0, t + 90 * SEC, sent, 3,
                                      t + 90 * SEC, &next), 5);
    assert_int_equal(sched_quota_room(3, 0, t + 40 * SEC, sent, 3,
                                      t + 30 * SEC, &next), 0);
    assert_int_equal(next, t + SCHED_MINUTE_MS);
}

static void
test_quota_la_day(void **state)
{
    /* Spring forward: Mar 8 begins at 08:00 UTC (PST), Mar 9 at 07:00
     * UTC (PDT), a 23-hour Pacific day. */
    int64_t mar8 = utc("2026-03-08 08:00"), mar9 = utc("2026-03-09 07:00");
    int64_t spring[4] = {mar8 - 1, mar8, mar8 + 3600 * SEC,
                         utc("2026-03-08 20:00")};
    /* Fall back: Nov 1 begins at 07:00 UTC (PDT), Nov 2 at 08:00 UTC
     * (PST), 25 hours later. */
    int64_t nov1 = utc("2026-11-01 07:00"), nov2 = utc("2026-11-02 08:00");
    int64_t fall[3] = {nov1 - SEC, nov1 + 5 * SEC, utc("2026-11-02 07:30")};
    int64_t next = -1, now;

    assert_int_equal(sched_la_day_start(mar8), mar8);
    assert_int_equal(sched_la_day_start(mar8 - 1), utc("2026-03-07 08:00"));
    assert_int_equal(sched_la_day_start(mar9 - 1), mar8);
    assert_int_equal(sched_la_day_start(mar9), mar9);
    assert_int_equal(sched_la_day_start(nov2 - 1), nov1);
    assert_int_equal(sched_la_day_start(nov2), nov2);
    assert_int_equal(sched_quota_since(100, utc("2026-03-08 20:00")), mar8);
    assert_int_equal(sched_quota_since(100, mar8 + 30 * SEC),
                     mar8 + 30 * SEC - SCHED_MINUTE_MS);

    /* Three a day: the send a millisecond before midnight is yesterday's;
     * the day is full until 07:00 UTC (midnight PDT). */
    now = utc("2026-03-08 21:00");
    assert_int_equal(sched_quota_room(0, 4, 0, spring, 4, now, &next), 1);
    assert_int_equal(sched_quota_room(0, 3, 0, spring, 4, now, &next), 0);
    assert_int_equal(next, mar9);
    assert_int_equal(sched_quota_room(0, 3, 0, spring, 4, mar9 - 1, &next),
                     0);
    assert_int_equal(sched_quota_room(0, 3, 0, spring, 4, mar9, &next), 3);

    /* The 25-hour day: 07:30 UTC on Nov 2 is still Nov 1 in LA. */
    now = utc("2026-11-02 07:30");
    assert_int_equal(sched_quota_room(0, 2, 0, fall, 3, now, &next), 0);
    assert_int_equal(next, nov2);
    assert_int_equal(sched_quota_room(0, 2, 0, fall, 3, nov2, NULL), 2);

    /* Both limits: the later of the two instants. */
    assert_int_equal(sched_quota_room(1, 2, 0, fall, 3, now + SEC, &next),
                     0);
    assert_int_equal(next, nov2);
    assert_int_equal(sched_quota_room(1, 3, 0, fall, 3, now + SEC, &next),
                     0);
    assert_int_equal(next, fall[2] + SCHED_MINUTE_MS);
}

static void
test_quota_park(void **state)
{
    int64_t t = utc("2026-03-08 06:00");   /* Mar 7 22:00 PST */
    int64_t mar8 = utc("2026-03-08 08:00");

    /* Per day: until the next Pacific midnight. */
    assert_int_equal(sched_quota_park(0, 1, -1, t), mar8);
    assert_int_equal(sched_quota_park(0, 1, 38 * SEC, t), mar8);
    /* Per minute with the server's delay. */
    assert_int_equal(sched_quota_park(0, 0, 38500, t), t + 38500);
    /* Without a delay: no parking. */
    assert_int_equal(sched_quota_park(0, 0, -1, t), 0);
    /* Never shortened. */
    assert_int_equal(sched_quota_park(mar8, 0, 38 * SEC, t), mar8);
    assert_int_equal(sched_quota_park(t + 10 * SEC, 0, 5 * SEC, t),
                     t + 10 * SEC);
}

/* ---- budget ------------------------------------------------------- */

static void
test_price_and_cost(void **state)
{
    struct config cfg;

    /* The models table, standard and Batch mode. */
    assert_true(sched_price(NULL, "gemini-2.5-flash-image", NULL, 0) ==
                0.039);
    assert_true(sched_price(NULL, "gemini-2.5-flash-image", "1K", 1) ==
                0.0195);
    assert_true(sched_price(NULL, "gemini-3-pro-image", "4K", 0) == 0.24);
    assert_true(sched_price(NULL, "gemini-2.5-flash-image", "4K", 0) < 0);
    assert_true(sched_price(NULL, "gemini-future-image", NULL, 0) < 0);
    assert_true(sched_price(NULL, NULL, NULL, 0) < 0);

    /* The configuration wins, size by size, with its own discount. */
    parse_config("[model gemini-3-pro-image]\nprice_2K = 0.2\n"
                 "batch_discount = 0.25\n"
                 "output_price_per_mtok = 100\n"
                 "[model gemini-future-image]\nprice_1K = 0.1\n", &cfg);
    assert_true(sched_price(&cfg, "gemini-3-pro-image", "2K", 0) == 0.2);
    assert_true(sched_price(&cfg, "gemini-3-pro-image", "2K", 1) ==
                0.2 * 0.75);
    assert_true(sched_price(&cfg, "gemini-3-pro-image", "4K", 0) == 0.24);
    assert_true(sched_price(&cfg, "gemini-future-image", NULL, 0) == 0.1);
    assert_true(sched_price(&cfg, "gemini-future-image", NULL, 1) == 0.05);

    /* Cost from tokens: 1290 output tokens at $30/M, 100 input at
     * $0.30/M. */
    assert_float_equal(sched_cost(NULL, "gemini-2.5-flash-image", 100,
                                  1290, 0), 0.03873, 1e-12);
    assert_float_equal(sched_cost(NULL, "gemini-2.5-flash-image", 100,
                                  1290, 1), 0.03873 / 2, 1e-12);
    assert_float_equal(sched_cost(&cfg, "gemini-3-pro-image", 1000, 1120,
                                  0), 0.112 + 0.002, 1e-12);
    assert_float_equal(sched_cost(&cfg, "gemini-3-pro-image", 1000, 1120,
                                  1), (0.112 + 0.002) * 0.75, 1e-12);
    /* No input price known: the prompt is free, as in models_cost(). */
    assert_float_equal(sched_cost(NULL, "gemini-3.1-flash-image", 5000,
                                  1000, 0), 0.06, 1e-12);
    assert_true(sched_cost(NULL, "gemini-future-image", 10, 10, 0) < 0);
    assert_true(sched_cost(NULL, "gemini-2.5-flash-image", -1, 10, 0) < 0);
}

/* Reserves and settles one at a time until refused: images made. */
static int
images_within(double cap_usd, double price, double cost)
{
    struct sched_budget b;
    int n = 0;

    sched_budget_init(&b, cap_usd);
    while (sched_budget_reserve(&b, price) == 0) {
        sched_budget_settle(&b, price, cost);
        n++;
        assert_true(n < 100000);
    }
    assert_true(b.spent_micro <= b.cap_micro);
    return n;
}

static void
test_budget(void **state)
{
    static const double prices[] = {0.039, 0.0195, 0.067, 0.134, 0.1, 0.24,
                                    0.151, 1.0 / 3};
    struct sched_budget b;

    /* N images' worth is exactly N images, for awkward prices too. */
    for (size_t p = 0; p < sizeof(prices) / sizeof(prices[0]); p++) {
        for (int n = 1; n <= 300; n++)
            assert_int_equal(images_within(n * prices[p], prices[p],
                                           prices[p]), n);
    }
    /* Cost unknown: the estimate is charged. */
    assert_int_equal(images_within(10 * 0.039, 0.039, -1), 10);
    /* Cheaper than estimated: the savings buy more, never too many. */
    assert_int_equal(images_within(10 * 0.039, 0.039, 0.0387), 10);
    assert_int_equal(images_within(200 * 0.039, 0.039, 0.0387), 201);

    /* With 16 in flight the reservations alone stop the seventeenth. */
    sched_budget_init(&b, 16 * 0.067);
    for (int i = 0; i < 16; i++)
        assert_int_equal(sched_budget_reserve(&b, 0.067), 0);
    assert_int_equal(sched_budget_reserve(&b, 0.067), NB_ELIMIT);
    assert_int_equal(sched_budget_reserve(&b, 0.001), NB_ELIMIT);
    assert_int_equal(b.reservations, 16);
    assert_int_equal(b.reserved_micro, 16 * 67000);

    /* Errors are not billed: their reservation comes back. */
    sched_budget_release(&b, 0.067);
    sched_budget_release(&b, 0.067);
    for (int i = 0; i < 14; i++)
        sched_budget_settle(&b, 0.067, 0.067);
    assert_int_equal(b.reservations, 0);
    assert_int_equal(b.reserved_micro, 0);
    assert_int_equal(b.spent_micro, 14 * 67000);
    assert_float_equal(sched_budget_spent(&b), 14 * 0.067, 1e-9);
    assert_int_equal(sched_budget_reserve(&b, 0.067), 0);
    assert_int_equal(sched_budget_reserve(&b, 0.067), 0);
    assert_int_equal(sched_budget_reserve(&b, 0.067), NB_ELIMIT);

    /* A cap needs a price; no cap needs nothing. */
    sched_budget_init(&b, 1.0);
    assert_int_equal(sched_budget_reserve(&b, -1), NB_EINVAL);
    assert_int_equal(b.reservations, 0);
    sched_budget_init(&b, 0);
    assert_int_equal(b.cap_micro, 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(sched_budget_reserve(&b, i % 2 ? -1 : 0.24), 0);
    assert_int_equal(b.reservations, 1000);
}

/* ---- fallback routes ---------------------------------------------- */

static struct sched_link
link_open(const char *endpoint, const char *model, int64_t opened_at)
{
    struct sched_link l;
    struct config_breaker cfg = defaults();

    memset(&l, 0, sizeof(l));
    snprintf(l.endpoint, sizeof(l.endpoint), "%s", endpoint);
    snprintf(l.model, sizeof(l.model), "%s", model);
    open_at(&l.breaker, &cfg, opened_at);
    return l;
}

static void
test_route(void **state)
{
    struct config cfg;
    struct sched_link links[8];
    struct sched_route r;
    int64_t t = 1000 * SEC;
    size_t n = 0;

    parse_config("[endpoint]\nbase_url = https://a.example\n"
                 "[endpoint spare]\nbase_url = https://b.example\n"
                 "[model gemini-3-pro-image]\nfallback = gemini-x-image\n"
                 "[model gemini-x-image]\n"
                 "fallback = gemini-2.5-flash-image\n", &cfg);

    /* Nothing stored: the primary. */
    assert_int_equal(sched_route(&cfg, "gemini-3-pro-image", NULL, 0, t, &r),
                     0);
    assert_int_equal(r.endpoint, 0);
    assert_string_equal(r.model, "gemini-3-pro-image");

    /* Primary endpoint open: the next endpoint, same model. */
    links[n++] = link_open("", "gemini-3-pro-image", t);
    assert_int_equal(sched_route(&cfg, "gemini-3-pro-image", links, n, t,
                                 &r), 0);
    assert_int_equal(r.endpoint, 1);
    assert_string_equal(r.model, "gemini-3-pro-image");
    assert_ptr_equal(sched_link_find(links, n, "", "gemini-3-pro-image"),
                     &links[0]);
    assert_null(sched_link_find(links, n, "spare", "gemini-3-pro-image"));

    /* Both endpoints open for it: the fallback model, primary first. */
    links[n++] = link_open("spare", "gemini-3-pro-image", t + 10 * SEC);
    assert_int_equal(sched_route(&cfg, "gemini-3-pro-image", links, n, t,
                                 &r), 0);
    assert_int_equal(r.endpoint, 0);
    assert_string_equal(r.model, "gemini-x-image");

    /* Down the chain. */
    links[n++] = link_open("", "gemini-x-image", t + 20 * SEC);
    links[n++] = link_open("spare", "gemini-x-image", t + 20 * SEC);
    links[n++] = link_open("", "gemini-2.5-flash-image", t + 20 * SEC);
    assert_int_equal(sched_route(&cfg, "gemini-3-pro-image", links, n,
                                 t + 25 * SEC, &r), 0);
    assert_int_equal(r.endpoint, 1);
    assert_string_equal(r.model, "gemini-2.5-flash-image");

    /* All open: the earliest instant one lets a probe through. */
    links[n++] = link_open("spare", "gemini-2.5-flash-image", t + 5 * SEC);
    assert_int_equal(sched_route(&cfg, "gemini-3-pro-image", links, n,
                                 t + 25 * SEC, &r), NB_ENOTFOUND);
    assert_int_equal(r.until_ms, t + 30 * SEC);
    assert_null(r.model);

    /* The primary cools down first: back to it for the probe. */
    assert_int_equal(sched_route(&cfg, "gemini-3-pro-image", links, n,
                                 t + 30 * SEC, &r), 0);
    assert_int_equal(r.endpoint, 0);
    assert_string_equal(r.model, "gemini-3-pro-image");

    /* Its probe out: the next one that cooled down. */
    sched_breaker_sent(&links[0].breaker, &cfg.breaker, t + 30 * SEC,
                       60 * SEC);
    assert_int_equal(sched_route(&cfg, "gemini-3-pro-image", links, n,
                                 t + 35 * SEC, &r), 0);
    assert_int_equal(r.endpoint, 1);
    assert_string_equal(r.model, "gemini-2.5-flash-image");

    /* A model without a [model] section has no fallback. */
    assert_int_equal(sched_route(&cfg, "gemini-2.5-flash-image", links, 5,
                                 t + 25 * SEC, &r), 0);
    assert_int_equal(r.endpoint, 1);
    assert_int_equal(sched_route(&cfg, "gemini-2.5-flash-image", links, 6,
                                 t + 25 * SEC, &r), NB_ENOTFOUND);
    assert_int_equal(r.until_ms, t + 35 * SEC);
}

/* ---- simulations ------------------------------------------------- */

#define SIM_MAX_FLIGHT 64
#define SIM_MAX_JOBS 4096
#define SIM_MAX_SENDS 16384
#define SIM_PROBE_TIMEOUT (60 * SEC)
#define SIM_MAX_TRANSIENT 10

struct sim_req {
    int job;
    int64_t sent_ms;
    int64_t arrive_ms;          /* at the server, client clock */
    int64_t answer_ms;          /* -1 until the server has it */
    int status;
    int64_t retry_ms;           /* the server's delay; -1: none */
};

struct sim_job {
    int64_t ready_ms;
    int attempts;
    int done;
    int busy;
};

struct sim;

/* The fake server: delay to arrive, and the answer once it has. */
struct sim_server {
    int64_t (*latency)(struct sim *s);
    void (*serve)(struct sim *s, struct sim_req *r);
};

struct sim {
    const struct sim_server *server;
    int workers;
    int rpm;
    int64_t start;
    int64_t now;
    uint64_t rng;

    struct config_breaker bcfg;
    struct sched_breaker breaker;
    struct sched_aimd aimd;
    int64_t parked_until;
    int64_t sent[SIM_MAX_SENDS];
    size_t n_sent;

    struct sim_job jobs[SIM_MAX_JOBS];
    int n_jobs, n_done, n_failed, first_idle;
    struct sim_req req[SIM_MAX_FLIGHT];
    int n_req;
    int max_in_flight;
    int64_t done_at;

    /* what the server saw */
    int64_t outage_from, outage_to;     /* 502s answered in between */
    int64_t accepted[SIM_MAX_SENDS];    /* server clock, ascending */
    size_t n_accepted;
    int n_429, n_502, opened, closed;
};

/* xorshift64*, seeded per simulation: the runs are reproducible. */
static uint64_t
sim_rand(struct sim *s)
{
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 2685821657736338717ULL;
}

static int64_t
sim_between(struct sim *s, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(sim_rand(s) % (uint64_t)(hi - lo + 1));
}

static void
sim_init(struct sim *s, const struct sim_server *server, int workers,
         int rpm, int n_jobs)
{
    memset(s, 0, sizeof(*s));
    s->server = server;
    s->workers = workers;
    s->rpm = rpm;
    s->start = s->now = utc("2026-05-04 12:00");
    s->rng = 0x9e3779b97f4a7c15ULL;
    s->bcfg = defaults();
    sched_breaker_init(&s->breaker);
    sched_aimd_init(&s->aimd, workers);
    assert_true(n_jobs <= SIM_MAX_JOBS);
    s->n_jobs = n_jobs;
    for (int i = 0; i < n_jobs; i++)
        s->jobs[i].ready_ms = s->start;
}

/* Full-jitter backoff as run.c does, unless the server said when. */
static void
sim_retry(struct sim *s, struct sim_job *job, int64_t retry_ms)
{
    int64_t cap = SEC << (job->attempts < 6 ? job->attempts : 6);

    if (cap > MIN)
        cap = MIN;
    if (++job->attempts > SIM_MAX_TRANSIENT) {
        s->n_failed++;
        job->done = 1;
        return;
    }
    job->ready_ms = s->now + (retry_ms >= 0 ? retry_ms :
                              sim_between(s, 0, cap));
}

static void
sim_answer(struct sim *s, struct sim_req *r)
{
    struct answer_result ar;
    struct sim_job *job = &s->jobs[r->job];
    int what, change;

    memset(&ar, 0, sizeof(ar));
    ar.http_status = r->status;
    ar.retry_after_ms = r->retry_ms;
    ar.cls = r->status == 200 ? ANSWER_OK : ANSWER_TRANSIENT;
    ar.quota_per_minute = r->status == 429;
    what = sched_outcome_of(&ar);

    change = sched_breaker_outcome(&s->breaker, &s->bcfg, what, r->sent_ms,
                                   s->now);
    s->opened += change == SCHED_BREAKER_OPENED ||
                 change == SCHED_BREAKER_REOPENED;
    s->closed += change == SCHED_BREAKER_CLOSED;
    sched_aimd_outcome(&s->aimd, s->workers, what, r->sent_ms, s->now);
    if (what == SCHED_QUOTA)
        s->parked_until = sched_quota_park(s->parked_until, 0, r->retry_ms,
                                           s->now);

    job->busy = 0;
    if (what == SCHED_SUCCESS) {
        job->done = 1;
        s->n_done++;
        s->done_at = s->now;
    } else {
        sim_retry(s, job, r->retry_ms);
    }
}

/* Handles every arrival and answer due by now, in time order. */
static void
sim_events(struct sim *s)
{
    for (;;) {
        int first = -1, arrival = 0;
        int64_t at = INT64_MAX;

        for (int i = 0; i < s->n_req; i++) {
            struct sim_req *r = &s->req[i];
            int64_t t = r->answer_ms < 0 ? r->arrive_ms : r->answer_ms;

            if (t < at) {
                at = t;
                first = i;
                arrival = r->answer_ms < 0;
            }
        }
        if (first < 0 || at > s->now)
            return;
        if (arrival) {
            s->server->serve(s, &s->req[first]);
            continue;
        }
        sim_answer(s, &s->req[first]);
        s->req[first] = s->req[--s->n_req];
    }
}

/* The first job that may go now, or -1 with *wake its earliest time. */
static int
sim_ready_job(struct sim *s, int64_t *wake)
{
    while (s->first_idle < s->n_jobs && s->jobs[s->first_idle].done)
        s->first_idle++;
    for (int i = s->first_idle; i < s->n_jobs; i++) {
        struct sim_job *job = &s->jobs[i];

        if (job->done || job->busy)
            continue;
        if (job->ready_ms <= s->now)
            return i;
        if (job->ready_ms < *wake)
            *wake = job->ready_ms;
    }
    return -1;
}

/* Sends what the scheduler allows; returns when to look again. */
static int64_t
sim_dispatch(struct sim *s)
{
    int64_t wake = INT64_MAX;

    while (s->n_req < s->aimd.limit) {
        int64_t until = INT64_MAX;
        struct sim_req *r;
        int job = sim_ready_job(s, &wake);

        if (job < 0)
            break;
        if (!sched_breaker_allow(&s->breaker, &s->bcfg, s->now, &until)) {
            wake = until < wake ? until : wake;
            break;
        }
        if (sched_quota_room(s->rpm, 0, s->parked_until, s->sent, s->n_sent,
                             s->now, &until) == 0) {
            wake = until < wake ? until : wake;
            break;
        }

        sched_breaker_sent(&s->breaker, &s->bcfg, s->now, SIM_PROBE_TIMEOUT);
        assert_true(s->n_sent < SIM_MAX_SENDS);
        s->sent[s->n_sent++] = s->now;
        s->jobs[job].busy = 1;
        r = &s->req[s->n_req++];
        r->job = job;
        r->sent_ms = s->now;
        r->arrive_ms = s->now + s->server->latency(s);
        r->answer_ms = -1;
        r->status = 0;
        r->retry_ms = -1;
        if (s->n_req > s->max_in_flight)
            s->max_in_flight = s->n_req;
    }
    return wake;
}

static void
sim_run(struct sim *s, int64_t limit_ms)
{
    int spins = 0;

    for (;;) {
        int64_t next;

        sim_events(s);
        if (s->n_done + s->n_failed == s->n_jobs)
            return;
        next = sim_dispatch(s);
        for (int i = 0; i < s->n_req; i++) {
            int64_t t = s->req[i].answer_ms < 0 ? s->req[i].arrive_ms :
                        s->req[i].answer_ms;

            if (t < next)
                next = t;
        }
        assert_true(next != INT64_MAX);
        if (next <= s->now) {
            /* Only arrivals of what was just sent can be due now. */
            assert_true(++spins < 1000);
            continue;
        }
        spins = 0;
        s->now = next;
        assert_true(s->now - s->start < limit_ms);
    }
}

static int
sends_between(const struct sim *s, int64_t from, int64_t to)
{
    int n = 0;

    for (size_t i = 0; i < s->n_sent; i++)
        n += s->sent[i] >= from && s->sent[i] < to;
    return n;
}

/* Outage: ~100 ms answers, 502 for every answer given in the outage. */
static int64_t
outage_latency(struct sim *s)
{
    return 0;
}

static void
outage_serve(struct sim *s, struct sim_req *r)
{
    int64_t at = r->arrive_ms + sim_between(s, 80, 120);

    r->answer_ms = at;
    r->status = 200;
    if (at >= s->outage_from && at < s->outage_to) {
        r->status = 502;
        s->n_502++;
    }
}

static const struct sim_server outage_server = {
    outage_latency, outage_serve
};

static void
run_outage(int64_t outage_s, int *sent_in_outage, int64_t *done_s)
{
    static struct sim s;
    int64_t from, to;

    sim_init(&s, &outage_server, 16, 0, 2400);
    from = s.outage_from = s.start + 10 * SEC;
    to = s.outage_to = s.start + (10 + outage_s) * SEC;
    sim_run(&s, 30 * MIN);

    *sent_in_outage = sends_between(&s, from, to);
    *done_s = (s.done_at - s.start) / SEC;
    print_message("outage %llds: sent before %d, during %d, 502s %d, "
                  "breaker opened %d closed %d, all %d done at %.1f s, "
                  "in flight at most %d\n", (long long)outage_s,
                  sends_between(&s, s.start, from), *sent_in_outage,
                  s.n_502, s.opened, s.closed, s.n_done,
                  (double)(s.done_at - s.start) / SEC, s.max_in_flight);

    assert_int_equal(s.n_failed, 0);
    assert_int_equal(s.n_done, 2400);
    assert_true(sends_between(&s, s.start, from) > 1000);  /* saturated */
    assert_int_equal(s.max_in_flight, 16);
    assert_int_equal(s.breaker.state, SCHED_CLOSED);
    assert_true(s.done_at > to);
}

static void
test_sim_outage(void **state)
{
    int during;
    int64_t done_s;

    /* The case: 30 s of 502s in a 16-worker run. */
    run_outage(30, &during, &done_s);
    assert_true(during <= 10);
    assert_true(done_s < 60);

    /* Longer: probes at 30, 60, 120 s of cool-down, then recovery. */
    run_outage(200, &during, &done_s);
    assert_true(during <= 10);
}

/* Quota: 120 a minute over the server's own sliding window, its clock
 * 100 ms behind ours, 20-200 ms to get there, 1.5-2.5 s to draw. */
#define SERVER_RPM 120
#define SERVER_BEHIND_MS 100

static int64_t
quota_latency(struct sim *s)
{
    return sim_between(s, 20, 200);
}

static void
quota_serve(struct sim *s, struct sim_req *r)
{
    int64_t server_now = r->arrive_ms - SERVER_BEHIND_MS;
    size_t first = 0;
    int64_t in_window;

    while (first < s->n_accepted &&
           s->accepted[first] <= server_now - MIN)
        first++;
    in_window = (int64_t)(s->n_accepted - first);

    if (in_window >= SERVER_RPM) {
        /* Full: 429 with "Please retry in" the time until a slot. */
        r->status = 429;
        r->retry_ms = s->accepted[first] + MIN - server_now;
        r->answer_ms = r->arrive_ms + 50;
        s->n_429++;
        return;
    }
    assert_true(s->n_accepted < SIM_MAX_SENDS);
    s->accepted[s->n_accepted++] = server_now;
    r->status = 200;
    r->answer_ms = r->arrive_ms + sim_between(s, 1500, 2500);
}

static const struct sim_server quota_server = {
    quota_latency, quota_serve
};

static void
test_sim_quota(void **state)
{
    static struct sim s;
    int64_t ideal = 2 * MIN;

    sim_init(&s, &quota_server, 32, SERVER_RPM, 240);
    sim_run(&s, 10 * MIN);

    print_message("quota 120/min, 240 jobs: %zu sent, %d answered 429 "
                  "(%.1f%%), all %d done at %.1f s (ideal %lld s)\n",
                  s.n_sent, s.n_429, 100.0 * s.n_429 / (double)s.n_sent,
                  s.n_done, (double)(s.done_at - s.start) / SEC,
                  (long long)(ideal / SEC));

    assert_int_equal(s.n_failed, 0);
    assert_int_equal(s.n_done, 240);
    assert_true(s.done_at - s.start <= ideal + ideal / 10);
    assert_true(s.n_429 * 50 <= (int)s.n_sent);
    /* Never more than 120 in any 60.25 s of our own sends. */
    for (size_t i = SERVER_RPM; i < s.n_sent; i++)
        assert_true(s.sent[i] - s.sent[i - SERVER_RPM] >= SCHED_MINUTE_MS);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outcome_of),
        cmocka_unit_test(test_breaker_consecutive),
        cmocka_unit_test(test_breaker_failure_rate),
        cmocka_unit_test(test_breaker_one_probe),
        cmocka_unit_test(test_breaker_probe_closes),
        cmocka_unit_test(test_breaker_cooldown_doubles),
        cmocka_unit_test(test_breaker_neutral_and_quota),
        cmocka_unit_test(test_breaker_stored),
        cmocka_unit_test(test_aimd),
        cmocka_unit_test(test_quota_minute),
        cmocka_unit_test(test_quota_la_day),
        cmocka_unit_test(test_quota_park),
        cmocka_unit_test(test_price_and_cost),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_sim_outage),
        cmocka_unit_test(test_sim_quota),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
