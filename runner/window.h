/*
 * window.h - off-peak windows: daily wall-clock stretches in a time zone.
 *
 * A window "22:00-06:00" opens every local day at 22:00 and closes at
 * 06:00 the next day (its end is before its start, so it crosses
 * midnight); "00:00-24:00" is open all day.  Boundaries follow the zone's
 * wall clock across daylight-saving changes by one rule: a boundary is the
 * first instant at which the clock reads that time or later.
 *
 *   - A time skipped by a spring-forward jump falls on the jump itself:
 *     in Europe/Berlin on 2026-03-29 (02:00 -> 03:00), "01:30-02:30" is
 *     open from 01:30 until the clock jumps to 03:00.  A window lying
 *     wholly inside the skipped hour does not open that day.
 *   - A time repeated after a fall-back counts at its first pass: on
 *     2026-10-25 (03:00 -> 02:00) "02:30-03:30" opens at the first 02:30
 *     and stays open two hours; "01:30-02:30" closes at the first 02:30
 *     and does not reopen when the clock shows 02:30 again.
 *
 * So each window opens once and closes once per local day, however the
 * clocks move.  Zones are read through runner/tzone (system tz database,
 * no TZ switching): every function here is safe from any thread.
 */
#ifndef NB_WINDOW_H
#define NB_WINDOW_H

#include <stddef.h>
#include <stdint.h>

#define WINDOW_MAX 16                   /* windows in one set */
#define WINDOW_TEXT_MAX (WINDOW_MAX * 12)  /* window_format() output */
#define WINDOW_FOREVER INT64_MAX        /* the windows never close */

/* One window, in minutes after local midnight. */
struct window_span {
    int start_min;      /* 0..1439 */
    int end_min;        /* 1..1440, != start; < start crosses midnight */
};

/* A plain value record; windows may overlap (they add up). */
struct window_set {
    int n;
    struct window_span span[WINDOW_MAX];
};

/*
 * Parses "HH:MM-HH:MM[, HH:MM-HH:MM ...]" (24-hour clock, one- or
 * two-digit hours, spaces allowed around ',' and '-'; 24:00 only as an
 * end) into *set.  NB_EINVAL with err naming the bad part, NB_ELIMIT for
 * more than WINDOW_MAX windows; *set is untouched then.
 */
int window_parse(const char *text, struct window_set *set, char *err,
                 size_t errlen);

/* Writes the canonical text ("22:00-06:00,12:30-13:30": no spaces, safe
 * in a shell word) into buf.  NB_ELIMIT when it does not fit. */
int window_format(const struct window_set *set, char *buf, size_t len);

/*
 * Whether t_ms is inside a window of set in zone tz (IANA name; NULL or
 * "" is the process's local zone).  Returns 1 when open, setting
 * *until_ms (may be NULL) to the instant the stretch of open time around
 * t closes, overlapping and touching windows taken together
 * (WINDOW_FOREVER when the windows cover the whole day); 0 when closed
 * (an empty set is always closed); NB_EINVAL for an unknown zone (check
 * the name once with tzone_get() for a message), NB_ENOMEM.
 */
int window_open_at(const struct window_set *set, const char *tz,
                   int64_t t_ms, int64_t *until_ms);

/*
 * The next instant at or after t_ms that a window is open, into
 * *open_ms: t_ms itself when open now.  NB_ENOTFOUND when the set is
 * empty; NB_EINVAL or NB_ENOMEM as window_open_at().
 */
int window_next_open(const struct window_set *set, const char *tz,
                     int64_t t_ms, int64_t *open_ms);

/*
 * The first midnight in America/Los_Angeles strictly after t_ms (when
 * Google resets daily quotas), as epoch milliseconds.  Without the tz
 * database it falls back to the US rule "PST8PDT,M3.2.0,M11.1.0", so it
 * cannot fail.
 */
int64_t window_next_la_midnight(int64_t t_ms);

#endif
