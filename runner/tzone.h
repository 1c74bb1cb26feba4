/*
 * tzone.h - IANA time zones read from the system tz database.
 *
 * Zones come from the TZif files under $TZDIR, else /usr/share/zoneinfo,
 * including the POSIX rule at a file's end for years past its last
 * transition.  Nothing here sets TZ or calls tzset(): other threads'
 * localtime_r() and mktime() are never disturbed.  A loaded zone is
 * immutable and kept until the process ends, so every function is safe
 * from any thread.
 *
 * Times are seconds: instants since the epoch (UTC), and "local seconds",
 * the wall-clock reading counted as if it were UTC (local midnight of
 * 1970-01-01 is 0), so that local day D starts at D * 86400.
 */
#ifndef NB_TZONE_H
#define NB_TZONE_H

#include <stddef.h>
#include <stdint.h>

struct tzone;

/* Longest zone name accepted ("America/Argentina/ComodRivadavia" is 32). */
#define TZONE_NAME_MAX 128

/*
 * The zone named name ("Europe/Berlin", "UTC"), or the process's local
 * zone when name is NULL or "": $TZ as glibc reads it (a zone name, a
 * path, or a POSIX string like "EST5EDT,M3.2.0,M11.1.0"; "" is UTC), else
 * /etc/localtime, else UTC.  A name must be a relative path inside the
 * database (no "..", no leading '/') naming a TZif file.  *zone is
 * borrowed and lives until the process ends.  NB_EINVAL with err saying
 * why when name is not a zone; NB_ENOMEM.
 */
int tzone_get(const char *name, const struct tzone **zone, char *err,
              size_t errlen);

/* A zone following the POSIX TZ rule text ("PST8PDT,M3.2.0,M11.1.0")
 * at every instant.  NB_EINVAL when text is not one, NB_ENOMEM. */
int tzone_from_rule(const char *text, const struct tzone **zone);

/*
 * Parses buf as a TZif file image (starting "TZif") or a POSIX rule,
 * converts t_s there and back, and frees it: nothing is kept.  For the
 * fuzzer and tests.  0, NB_EINVAL or NB_ENOMEM.
 */
int tzone_check(const void *buf, size_t len, int64_t t_s);

/* The system's own zone (/etc/localtime, else UTC), ignoring $TZ: the
 * one cron uses.  Same errors as tzone_get(). */
int tzone_system(const struct tzone **zone, char *err, size_t errlen);

/* What the zone's clocks say at an instant. */
struct tzone_info {
    int utoff_s;        /* local minus UTC, in seconds */
    int is_dst;
    char abbr[16];      /* "CEST", "+1030"; "" when the data has none */
};

/* The offset, daylight-saving flag and abbreviation in effect at t_s. */
void tzone_at(const struct tzone *z, int64_t t_s, struct tzone_info *info);

/* The local seconds reading of instant t_s. */
int64_t tzone_local(const struct tzone *z, int64_t t_s);

/*
 * The first instant at which the zone's wall clock reads local_s or
 * later.  A reading skipped by a spring-forward jump gives the instant of
 * the jump; a reading repeated after a fall-back gives its first pass.
 * Monotonic: a later reading never gives an earlier instant.
 */
int64_t tzone_first_at(const struct tzone *z, int64_t local_s);

/* 1 when a and b keep the same time at every instant (aliases such as
 * "UTC" and "Etc/UTC"), else 0. */
int tzone_same(const struct tzone *a, const struct tzone *b);

/* Days since 1970-01-01 of a proleptic Gregorian date, and back. */
int64_t tzone_days_from_civil(int64_t year, int month, int day);
void tzone_civil_from_days(int64_t days, int64_t *year, int *month,
                           int *day);

#endif
