/*
 * window.c - off-peak windows: parsing them, and whether one is open.
 *
 * A window of a set is instantiated once per local day D: it opens at
 * tzone_first_at(D + start) and closes at tzone_first_at(D + end), with
 * one day added to the end of a window that crosses midnight.  Because
 * that mapping never runs backwards, an instance can be empty (wholly
 * inside a skipped hour) but never inverted, and instances start in the
 * order of their local days and start times.  An instant can only lie in
 * instances of the local days around its own reading; three days either
 * side covers any offset change on record (Samoa skipped a whole day at
 * the end of 2011).
 *
 * Everything works on instants in seconds (zone offsets are whole
 * seconds) and compares with the caller's milliseconds.  Nothing here
 * keeps state: the zones are tzone's, immutable and shared.
 */
#include <stdio.h>
#include <string.h>

#include "queue/nberr.h"
#include "runner/tzone.h"
#include "runner/window.h"

#define LA_ZONE "America/Los_Angeles"
#define LA_RULE "PST8PDT,M3.2.0,M11.1.0"
#define DAY_S 86400
#define NO_END INT64_MIN

/* ---- text ----------------------------------------------------------- */

static int
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static const char *
skip_spaces(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* H:MM or HH:MM, 00:00 to 24:00, into minutes after midnight. */
static int
parse_clock(const char **sp, int *minutes)
{
    const char *s = *sp;
    int h = 0, m, digits = 0;

    while (is_digit(*s) && digits < 2) {
        h = h * 10 + (*s++ - '0');
        digits++;
    }
    if (digits == 0 || s[0] != ':' || !is_digit(s[1]) || !is_digit(s[2]) ||
        is_digit(s[3]))
        return -1;
    m = (s[1] - '0') * 10 + (s[2] - '0');
    if (m > 59 || h > 24 || (h == 24 && m != 0))
        return -1;
    *minutes = h * 60 + m;
    *sp = s + 3;
    return 0;
}

/* Writes "ITEM: why" about the window text that starts at item. */
static int
item_error(const char *item, const char *why, char *err, size_t errlen)
{
    const char *end = strchr(item, ',');
    size_t n = end != NULL ? (size_t)(end - item) : strlen(item);

    while (n > 0 && (item[n - 1] == ' ' || item[n - 1] == '\t'))
        n--;
    snprintf(err, errlen, "\"%.*s\": %s", (int)n, item, why);
    return NB_EINVAL;
}

/* One "HH:MM-HH:MM" at *sp. */
static int
parse_span(const char **sp, struct window_span *w, char *err, size_t errlen)
{
    const char *item = *sp;
    const char *s = item;

    if (parse_clock(&s, &w->start_min) != 0)
        return item_error(item, "not a window (HH:MM-HH:MM, 24-hour "
                          "clock, 00:00 to 24:00)", err, errlen);
    s = skip_spaces(s);
    if (*s != '-')
        return item_error(item, "expected '-' after the start time",
                          err, errlen);
    s = skip_spaces(s + 1);
    if (parse_clock(&s, &w->end_min) != 0)
        return item_error(item, "not a window (HH:MM-HH:MM, 24-hour "
                          "clock, 00:00 to 24:00)", err, errlen);
    if (w->start_min == 24 * 60)
        return item_error(item, "a window cannot start at 24:00 (use "
                          "00:00)", err, errlen);
    if (w->end_min == w->start_min)
        return item_error(item, "start and end are equal (use "
                          "00:00-24:00 for all day)", err, errlen);
    if (w->end_min == 0)
        w->end_min = 24 * 60;   /* the same instant, kept on its day */
    *sp = s;
    return 0;
}

int
window_parse(const char *text, struct window_set *set, char *err,
             size_t errlen)
{
    struct window_set out = {0};
    const char *s = skip_spaces(text);
    int rc;

    if (*s == '\0') {
        snprintf(err, errlen, "no window given (HH:MM-HH:MM, ...)");
        return NB_EINVAL;
    }
    for (;;) {
        struct window_span w;

        if (out.n == WINDOW_MAX) {
            snprintf(err, errlen, "more than %d windows", WINDOW_MAX);
            return NB_ELIMIT;
        }
        rc = parse_span(&s, &w, err, errlen);
        if (rc != 0)
            return rc;
        out.span[out.n++] = w;

        s = skip_spaces(s);
        if (*s == '\0')
            break;
        if (*s != ',')
            return item_error(s, "unexpected text after a window",
                              err, errlen);
        s = skip_spaces(s + 1);
        if (*s == '\0') {
            snprintf(err, errlen, "a ',' with no window after it");
            return NB_EINVAL;
        }
    }
    *set = out;
    return 0;
}

int
window_format(const struct window_set *set, char *buf, size_t len)
{
    size_t used = 0;

    if (len == 0)
        return NB_ELIMIT;
    buf[0] = '\0';
    for (int i = 0; i < set->n; i++) {
        const struct window_span *w = &set->span[i];
        int n = snprintf(buf + used, len - used, "%s%02d:%02d-%02d:%02d",
                         i > 0 ? "," : "", w->start_min / 60,
                         w->start_min % 60, w->end_min / 60,
                         w->end_min % 60);

        if (n < 0 || (size_t)n >= len - used)
            return NB_ELIMIT;
        used += (size_t)n;
    }
    return 0;
}

/* ---- instants ------------------------------------------------------- */

static int64_t
floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* 1 when the windows together cover every minute of the day. */
static int
covers_all(const struct window_set *set)
{
    unsigned char covered[24 * 60] = {0};

    for (int i = 0; i < set->n; i++) {
        const struct window_span *w = &set->span[i];
        int end = w->end_min > w->start_min ? w->end_min
                                            : w->end_min + 24 * 60;

        for (int m = w->start_min; m < end; m++)
            covered[m % (24 * 60)] = 1;
    }
    for (int m = 0; m < 24 * 60; m++) {
        if (!covered[m])
            return 0;
    }
    return 1;
}

/* The instance of window w on local day: [*open_ms, *close_ms). */
static void
instance(const struct tzone *z, int64_t day, const struct window_span *w,
         int64_t *open_ms, int64_t *close_ms)
{
    int end = w->end_min > w->start_min ? w->end_min : w->end_min + 24 * 60;

    *open_ms = tzone_first_at(z, day * DAY_S + w->start_min * 60) * 1000;
    *close_ms = tzone_first_at(z, day * DAY_S + end * 60) * 1000;
}

static int64_t
local_day(const struct tzone *z, int64_t t_ms)
{
    return floor_div(tzone_local(z, floor_div(t_ms, 1000)), DAY_S);
}

/* The latest close of the instances holding t_ms, else NO_END. */
static int64_t
latest_close(const struct tzone *z, const struct window_set *set,
             int64_t t_ms)
{
    int64_t day0 = local_day(z, t_ms);
    int64_t best = NO_END;

    for (int64_t day = day0 - 3; day <= day0 + 2; day++) {
        for (int i = 0; i < set->n; i++) {
            int64_t open_ms, close_ms;

            instance(z, day, &set->span[i], &open_ms, &close_ms);
            if (open_ms <= t_ms && t_ms < close_ms && close_ms > best)
                best = close_ms;
        }
    }
    return best;
}

static int
get_zone(const char *tz, const struct tzone **z)
{
    char err[256];

    return tzone_get(tz, z, err, sizeof(err));
}

/*
 * The stretch goes on while the close of one instance lies inside
 * another; unless the windows cover the whole day (checked first) a
 * minute of each day is closed, so it ends within a few instances.  The
 * bound only guards against the unforeseen: stopping early makes the
 * caller look again, never run outside a window.
 */
int
window_open_at(const struct window_set *set, const char *tz, int64_t t_ms,
               int64_t *until_ms)
{
    const struct tzone *z;
    int64_t until = t_ms;
    int open = 0, rc;

    rc = get_zone(tz, &z);
    if (rc != 0)
        return rc;
    if (set->n == 0)
        return 0;
    if (covers_all(set)) {
        if (until_ms != NULL)
            *until_ms = WINDOW_FOREVER;
        return 1;
    }

    for (int step = 0; step < 4 * WINDOW_MAX + 8; step++) {
        int64_t close_ms = latest_close(z, set, until);

        if (close_ms == NO_END)
            break;
        open = 1;
        until = close_ms;
    }
    if (open && until_ms != NULL)
        *until_ms = until;
    return open;
}

/*
 * Instances start in order of (day, start time), so the first day with a
 * non-empty instance opening after t holds the answer.  A day can lack
 * one only when its windows all fall in a skipped hour: a week ahead is
 * far more than enough.
 */
int
window_next_open(const struct window_set *set, const char *tz, int64_t t_ms,
                 int64_t *open_ms)
{
    const struct tzone *z;
    int64_t day0;
    int rc;

    if (set->n == 0)
        return NB_ENOTFOUND;
    rc = window_open_at(set, tz, t_ms, NULL);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        *open_ms = t_ms;
        return 0;
    }

    rc = get_zone(tz, &z);
    if (rc != 0)
        return rc;
    day0 = local_day(z, t_ms);
    for (int64_t day = day0 - 1; day <= day0 + 7; day++) {
        int64_t best = INT64_MAX;

        for (int i = 0; i < set->n; i++) {
            int64_t start_ms, close_ms;

            instance(z, day, &set->span[i], &start_ms, &close_ms);
            if (start_ms < close_ms && start_ms > t_ms && start_ms < best)
                best = start_ms;
        }
        if (best != INT64_MAX) {
            *open_ms = best;
            return 0;
        }
    }
    return NB_ENOTFOUND;
}

int64_t
window_next_la_midnight(int64_t t_ms)
{
    const struct tzone *z;
    int64_t day;

    if (get_zone(LA_ZONE, &z) != 0 && tzone_from_rule(LA_RULE, &z) != 0) {
        /* out of memory: standard time is at most an hour off */
        return (floor_div(floor_div(t_ms, 1000) - 8 * 3600, DAY_S) + 1) *
               DAY_S * 1000 + 8 * 3600 * 1000;
    }
    day = local_day(z, t_ms) + 1;
    for (int i = 0; i < 4; i++, day++) {
        int64_t midnight_ms = tzone_first_at(z, day * DAY_S) * 1000;

        if (midnight_ms > t_ms)
            return midnight_ms;
    }
    return (t_ms / 1000 + DAY_S) * 1000;
}
