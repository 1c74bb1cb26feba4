/*
 * tzone.c - time zones from TZif files (RFC 8536), without TZ or tzset().
 *
 * A zone is its transitions (ascending instants, each naming the local
 * time type that starts there), its types (offset, daylight-saving flag,
 * abbreviation) and an optional POSIX rule ("CET-1CEST,M3.5.0,M10.5.0/3")
 * for instants after the last transition.  Type 0 applies before the first
 * transition; a zone without transitions follows its rule throughout.
 * Debian ships "fat" files (transitions up to 2037), other systems "slim"
 * ones (few transitions, the rule does the rest): both work.
 *
 * Invariants: offsets are within 26 hours and instants are clamped to
 * about +-300,000 years, so no sum below can overflow; every index read
 * from a file is checked before use.  Leap-second records ("right/" zones)
 * are ignored, which puts those zones up to half a minute off.
 *
 * Loaded zones sit in one list under a mutex and are never freed, so a
 * borrowed pointer stays good.  The local zone is cached under a key made
 * from $TZ, so a program that changes TZ gets the matching zone; a TZif
 * file changed on disk is not noticed until the process restarts.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/nberr.h"
#include "runner/tzone.h"

#define TZ_DIR_DEFAULT "/usr/share/zoneinfo"
#define TZ_FILE_MAX (512 * 1024)
#define TZ_MAX_TRANS 100000
#define TZ_MAX_TYPES 256
#define TZ_MAX_CHARS 4096
#define TZ_MAX_UTOFF (26 * 3600)
#define TZ_T_LIMIT 10000000000000LL     /* seconds, about 317,000 years */
#define TZ_RULE_MAX 255
#define TZ_RULE_US "M3.2.0,M11.1.0"     /* POSIX's default, as glibc's */

struct tz_type {
    int32_t utoff;
    int is_dst;
    char abbr[16];
};

/* When a POSIX rule switches: a day of the year and a local time. */
struct tz_date {
    char kind;          /* 'J' 1..365 without Feb 29, 'D' 0..365, 'M' */
    int n;              /* for 'J' and 'D' */
    int month, week, wday;      /* for 'M': week 5 is the last */
    int32_t time_s;     /* local time of day, -167h..167h */
};

struct tz_rule {
    struct tz_type std, dst;
    int has_dst;
    struct tz_date start, end;
};

struct tzone {
    struct tzone *next;         /* in the cache */
    char *key;
    size_t n_trans;
    int64_t *trans;
    unsigned char *trans_type;
    size_t n_types;             /* at least 1 */
    struct tz_type *types;
    int has_rule;
    struct tz_rule rule;
    int32_t max_utoff;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tzone *cache;

/* ---- calendar ------------------------------------------------------- */

static int64_t
floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

static int64_t
clamp_t(int64_t t)
{
    if (t > TZ_T_LIMIT)
        return TZ_T_LIMIT;
    return t < -TZ_T_LIMIT ? -TZ_T_LIMIT : t;
}

static int
is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/*
 * Years are counted from March so that the leap day ends a year: the day
 * number is then 365 per year plus the leap days before it, plus the days
 * of the months since March (153 days every 5 months).  719468 is the
 * number of days from 0000-03-01 to 1970-01-01.
 */
int64_t
tzone_days_from_civil(int64_t year, int month, int day)
{
    int64_t y = month <= 2 ? year - 1 : year;
    int64_t m = month <= 2 ? month + 9 : month - 3;

    return 365 * y + floor_div(y, 4) - floor_div(y, 100) +
           floor_div(y, 400) + (153 * m + 2) / 5 + day - 1 - 719468;
}

void
tzone_civil_from_days(int64_t days, int64_t *year, int *month, int *day)
{
    int64_t z = days + 719468;
    int64_t era = floor_div(z, 146097);        /* 400-year cycles */
    int64_t doe = z - era * 146097;           /* 0..146096 */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;          /* 0 = March */

    *day = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = era * 400 + yoe + (*month <= 2);
}

/* ---- POSIX rules ---------------------------------------------------- */

/* The day (since the epoch) on which date falls in year. */
static int64_t
rule_day(const struct tz_date *d, int64_t year)
{
    int64_t jan1 = tzone_days_from_civil(year, 1, 1);
    int64_t first, next_month, day;
    int wday_first;

    if (d->kind == 'J')
        return jan1 + d->n - 1 + (is_leap(year) && d->n >= 60);
    if (d->kind == 'D')
        return jan1 + d->n;

    first = tzone_days_from_civil(year, d->month, 1);
    next_month = d->month == 12 ? tzone_days_from_civil(year + 1, 1, 1)
                                : tzone_days_from_civil(year, d->month + 1, 1);
    wday_first = (int)(first + 4 - floor_div(first + 4, 7) * 7);  /* Thu */
    day = first + (d->wday - wday_first + 7) % 7 + 7 * (d->week - 1);
    while (day >= next_month)
        day -= 7;
    return day;
}

struct rule_event {
    int64_t t;
    int to_dst;
};

/*
 * The rule's state at t (is_dst) and the next instant it changes
 * (INT64_MAX: never).  Switches of the year around t and the years on
 * either side are enough, whatever the times' ranges.  At equal instants
 * an end sorts before a start, so that "DST all year" rules whose end
 * meets the next start stay in DST.
 */
static void
rule_state(const struct tz_rule *r, int64_t t, int *is_dst, int64_t *next)
{
    struct rule_event ev[6];
    int64_t year, days = floor_div(t + r->std.utoff, 86400);
    int month, mday, n = 0, cur;

    *next = INT64_MAX;
    *is_dst = 0;
    if (!r->has_dst)
        return;

    tzone_civil_from_days(days, &year, &month, &mday);
    for (int64_t y = year - 1; y <= year + 1; y++) {
        ev[n].t = rule_day(&r->start, y) * 86400 + r->start.time_s -
                  r->std.utoff;
        ev[n++].to_dst = 1;
        ev[n].t = rule_day(&r->end, y) * 86400 + r->end.time_s -
                  r->dst.utoff;
        ev[n++].to_dst = 0;
    }
    for (int i = 1; i < n; i++) {
        struct rule_event e = ev[i];
        int j = i;

        while (j > 0 && (ev[j - 1].t > e.t ||
                         (ev[j - 1].t == e.t && ev[j - 1].to_dst > e.to_dst))) {
            ev[j] = ev[j - 1];
            j--;
        }
        ev[j] = e;
    }

    cur = !ev[0].to_dst;
    for (int i = 0; i < n && ev[i].t <= t; i++)
        cur = ev[i].to_dst;
    *is_dst = cur;

    for (int i = 0; i < n; i++) {
        int after;

        if (ev[i].t <= t)
            continue;
        while (i + 1 < n && ev[i + 1].t == ev[i].t)
            i++;
        after = ev[i].to_dst;
        if (after != cur) {
            *next = ev[i].t;
            return;
        }
    }
}

/* [+-]h[h[h]][:mm[:ss]] with hours up to max_h, into seconds. */
static int
parse_hms(const char **sp, int max_h, int32_t *out)
{
    const char *s = *sp;
    int sign = 1, h = 0, m = 0, sec = 0, digits = 0;

    if (*s == '+' || *s == '-')
        sign = *s++ == '-' ? -1 : 1;
    while (*s >= '0' && *s <= '9' && digits < 3) {
        h = h * 10 + (*s++ - '0');
        digits++;
    }
    if (digits == 0 || h > max_h)
        return -1;
    for (int part = 0; part < 2 && *s == ':'; part++) {
        int v;

        if (!(s[1] >= '0' && s[1] <= '9' && s[2] >= '0' && s[2] <= '9'))
            return -1;
        v = (s[1] - '0') * 10 + (s[2] - '0');
        if (v > 59)
            return -1;
        if (part == 0)
            m = v;
        else
            sec = v;
        s += 3;
    }
    *out = sign * (h * 3600 + m * 60 + sec);
    *sp = s;
    return 0;
}

/* An abbreviation: three or more letters, or <...> of [A-Za-z0-9+-]. */
static int
parse_abbr(const char **sp, char *out, size_t len)
{
    const char *s = *sp;
    size_t n = 0;
    int quoted = *s == '<';

    if (quoted)
        s++;
    for (;; s++) {
        char c = *s;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');

        if (quoted)
            ok = ok || (c >= '0' && c <= '9') || c == '+' || c == '-';
        if (!ok)
            break;
        if (n + 1 >= len)
            return -1;
        out[n++] = c;
    }
    out[n] = '\0';
    if (n < 3 || (quoted && *s++ != '>'))
        return -1;
    *sp = s;
    return 0;
}

static int
parse_num(const char **sp, int lo, int hi, int *out)
{
    const char *s = *sp;
    int v = 0, digits = 0;

    while (*s >= '0' && *s <= '9' && digits < 4) {
        v = v * 10 + (*s++ - '0');
        digits++;
    }
    if (digits == 0 || v < lo || v > hi)
        return -1;
    *out = v;
    *sp = s;
    return 0;
}

/* Jn, n or Mm.w.d, then an optional /time (default 02:00). */
static int
parse_date(const char **sp, struct tz_date *d)
{
    const char *s = *sp;

    memset(d, 0, sizeof(*d));
    d->time_s = 2 * 3600;
    if (*s == 'J') {
        s++;
        d->kind = 'J';
        if (parse_num(&s, 1, 365, &d->n) != 0)
            return -1;
    } else if (*s == 'M') {
        s++;
        d->kind = 'M';
        if (parse_num(&s, 1, 12, &d->month) != 0 || *s++ != '.' ||
            parse_num(&s, 1, 5, &d->week) != 0 || *s++ != '.' ||
            parse_num(&s, 0, 6, &d->wday) != 0)
            return -1;
    } else {
        d->kind = 'D';
        if (parse_num(&s, 0, 365, &d->n) != 0)
            return -1;
    }
    if (*s == '/') {
        s++;
        if (parse_hms(&s, 167, &d->time_s) != 0)
            return -1;
    }
    *sp = s;
    return 0;
}

/* A POSIX TZ string: std offset [dst [offset] [,start[/time],end[/time]]]. */
static int
parse_rule(const char *s, struct tz_rule *r)
{
    int32_t off;

    memset(r, 0, sizeof(*r));
    if (parse_abbr(&s, r->std.abbr, sizeof(r->std.abbr)) != 0 ||
        parse_hms(&s, 24, &off) != 0)
        return -1;
    r->std.utoff = -off;
    if (*s == '\0')
        return 0;

    if (parse_abbr(&s, r->dst.abbr, sizeof(r->dst.abbr)) != 0)
        return -1;
    r->has_dst = 1;
    r->dst.is_dst = 1;
    r->dst.utoff = r->std.utoff + 3600;
    if (*s != ',' && *s != '\0') {
        if (parse_hms(&s, 24, &off) != 0)
            return -1;
        r->dst.utoff = -off;
    }
    if (*s == '\0')
        s = "," TZ_RULE_US;
    if (*s++ != ',' || parse_date(&s, &r->start) != 0 || *s++ != ',' ||
        parse_date(&s, &r->end) != 0 || *s != '\0')
        return -1;
    return 0;
}

/* ---- the zone's state at an instant --------------------------------- */

/* The type in effect at t and the next instant a type starts (INT64_MAX:
 * none known). */
static const struct tz_type *
zone_state(const struct tzone *z, int64_t t, int64_t *next)
{
    size_t lo, hi;

    if (z->n_trans == 0 || t >= z->trans[z->n_trans - 1]) {
        int is_dst;

        if (z->has_rule) {
            rule_state(&z->rule, t, &is_dst, next);
            return is_dst ? &z->rule.dst : &z->rule.std;
        }
        *next = INT64_MAX;
        if (z->n_trans == 0)
            return &z->types[0];
        return &z->types[z->trans_type[z->n_trans - 1]];
    }
    if (t < z->trans[0]) {
        *next = z->trans[0];
        return &z->types[0];
    }

    lo = 0;                     /* trans[lo] <= t < trans[hi] */
    hi = z->n_trans - 1;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;

        if (z->trans[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    *next = z->trans[hi];
    return &z->types[z->trans_type[lo]];
}

void
tzone_at(const struct tzone *z, int64_t t_s, struct tzone_info *info)
{
    int64_t next;
    const struct tz_type *type = zone_state(z, clamp_t(t_s), &next);

    info->utoff_s = type->utoff;
    info->is_dst = type->is_dst;
    memcpy(info->abbr, type->abbr, sizeof(info->abbr));
}

int64_t
tzone_local(const struct tzone *z, int64_t t_s)
{
    int64_t next;

    t_s = clamp_t(t_s);
    return t_s + zone_state(z, t_s, &next)->utoff;
}

/*
 * Walks the stretches of constant offset from the last instant whose
 * reading cannot yet be local_s (local_s minus the largest offset): the
 * first stretch whose readings reach local_s holds the answer, either at
 * its start (the reading jumped past local_s) or at local_s - offset.
 */
int64_t
tzone_first_at(const struct tzone *z, int64_t local_s)
{
    int64_t local = clamp_t(local_s);
    int64_t t = local - z->max_utoff;

    for (int i = 0; i < 10000; i++) {
        int64_t next;
        const struct tz_type *type = zone_state(z, t, &next);

        if (local < t + type->utoff)
            return t;
        if (next == INT64_MAX || local < next + type->utoff)
            return local - type->utoff;
        t = next;
    }
    return t;
}

static int
same_date(const struct tz_date *a, const struct tz_date *b)
{
    return a->kind == b->kind && a->n == b->n && a->month == b->month &&
           a->week == b->week && a->wday == b->wday && a->time_s == b->time_s;
}

int
tzone_same(const struct tzone *a, const struct tzone *b)
{
    if (a == b)
        return 1;
    if (a->n_trans != b->n_trans || a->has_rule != b->has_rule ||
        a->types[0].utoff != b->types[0].utoff)
        return 0;
    for (size_t i = 0; i < a->n_trans; i++) {
        if (a->trans[i] != b->trans[i] ||
            a->types[a->trans_type[i]].utoff !=
            b->types[b->trans_type[i]].utoff)
            return 0;
    }
    if (!a->has_rule)
        return 1;
    if (a->rule.std.utoff != b->rule.std.utoff ||
        a->rule.has_dst != b->rule.has_dst)
        return 0;
    return !a->rule.has_dst ||
           (a->rule.dst.utoff == b->rule.dst.utoff &&
            same_date(&a->rule.start, &b->rule.start) &&
            same_date(&a->rule.end, &b->rule.end));
}

/* ---- building zones ------------------------------------------------- */

static void
zone_free(struct tzone *z)
{
    if (z == NULL)
        return;
    free(z->key);
    free(z->trans);
    free(z->trans_type);
    free(z->types);
    free(z);
}

static void
zone_finish(struct tzone *z)
{
    z->max_utoff = z->types[0].utoff;
    for (size_t i = 1; i < z->n_types; i++) {
        if (z->types[i].utoff > z->max_utoff)
            z->max_utoff = z->types[i].utoff;
    }
    if (z->has_rule && z->rule.std.utoff > z->max_utoff)
        z->max_utoff = z->rule.std.utoff;
    if (z->has_rule && z->rule.has_dst && z->rule.dst.utoff > z->max_utoff)
        z->max_utoff = z->rule.dst.utoff;
}

/* A zone that follows a POSIX rule at every instant; NULL when s is not
 * one (or on allocation failure: *nomem then says so). */
static struct tzone *
zone_from_rule(const char *s, int *nomem)
{
    struct tzone *z = calloc(1, sizeof(*z));

    *nomem = z == NULL;
    if (z == NULL)
        return NULL;
    z->types = calloc(1, sizeof(*z->types));
    if (z->types == NULL) {
        *nomem = 1;
        goto fail;
    }
    if (strlen(s) > TZ_RULE_MAX || parse_rule(s, &z->rule) != 0)
        goto fail;
    if (z->rule.std.utoff < -TZ_MAX_UTOFF || z->rule.std.utoff > TZ_MAX_UTOFF ||
        z->rule.dst.utoff < -TZ_MAX_UTOFF || z->rule.dst.utoff > TZ_MAX_UTOFF)
        goto fail;
    z->has_rule = 1;
    z->n_types = 1;
    z->types[0] = z->rule.std;
    zone_finish(z);
    return z;

fail:
    zone_free(z);
    return NULL;
}

static uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}

static int64_t
be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

struct tzif_counts {
    uint32_t isut, isstd, leap, time, type, chars;
};

/* The counts of the header at p; the size of the data block after it. */
static int
tzif_header(const unsigned char *p, size_t avail, int tsize,
            struct tzif_counts *c, size_t *block)
{
    if (avail < 44 || memcmp(p, "TZif", 4) != 0)
        return -1;
    c->isut = be32(p + 20);
    c->isstd = be32(p + 24);
    c->leap = be32(p + 28);
    c->time = be32(p + 32);
    c->type = be32(p + 36);
    c->chars = be32(p + 40);
    if (c->time > TZ_MAX_TRANS || c->type == 0 || c->type > TZ_MAX_TYPES ||
        c->chars == 0 || c->chars > TZ_MAX_CHARS || c->leap > TZ_MAX_TRANS ||
        (c->isut != 0 && c->isut != c->type) ||
        (c->isstd != 0 && c->isstd != c->type))
        return -1;
    *block = (size_t)c->time * (size_t)(tsize + 1) + (size_t)c->type * 6 +
             c->chars + (size_t)c->leap * (size_t)(tsize + 4) + c->isstd +
             c->isut;
    return avail - 44 < *block ? -1 : 0;
}

/* Transitions and types of the data block at p into z. */
static int
tzif_block(const unsigned char *p, const struct tzif_counts *c, int tsize,
           struct tzone *z)
{
    const unsigned char *idx = p + (size_t)c->time * (size_t)tsize;
    const unsigned char *ttinfo = idx + c->time;
    const unsigned char *chars = ttinfo + (size_t)c->type * 6;

    z->n_trans = c->time;
    z->n_types = c->type;
    z->trans = malloc(sizeof(*z->trans) * (c->time ? c->time : 1));
    z->trans_type = malloc(c->time ? c->time : 1);
    z->types = calloc(c->type, sizeof(*z->types));
    if (z->trans == NULL || z->trans_type == NULL || z->types == NULL)
        return NB_ENOMEM;

    for (uint32_t i = 0; i < c->time; i++) {
        const unsigned char *tp = p + (size_t)i * (size_t)tsize;

        z->trans[i] = tsize == 8 ? be64(tp) : (int32_t)be32(tp);
        z->trans_type[i] = idx[i];
        if (idx[i] >= c->type || (i > 0 && z->trans[i] <= z->trans[i - 1]))
            return NB_EINVAL;
    }
    for (uint32_t i = 0; i < c->type; i++) {
        const unsigned char *tp = ttinfo + (size_t)i * 6;
        struct tz_type *type = &z->types[i];
        int32_t utoff = (int32_t)be32(tp);
        size_t n = 0;

        if (utoff < -TZ_MAX_UTOFF || utoff > TZ_MAX_UTOFF || tp[4] > 1 ||
            tp[5] >= c->chars)
            return NB_EINVAL;
        type->utoff = utoff;
        type->is_dst = tp[4];
        for (size_t k = tp[5]; k < c->chars && chars[k] != '\0'; k++) {
            if (n + 1 < sizeof(type->abbr))
                type->abbr[n++] = (char)chars[k];
        }
        type->abbr[n] = '\0';
    }
    return 0;
}

/* The footer "\nRULE\n" at p (version 2 and later). */
static int
tzif_footer(const unsigned char *p, size_t avail, struct tzone *z)
{
    char text[TZ_RULE_MAX + 1];
    const unsigned char *end;
    size_t len;

    if (avail < 2 || p[0] != '\n')
        return NB_EINVAL;
    end = memchr(p + 1, '\n', avail - 1);
    if (end == NULL)
        return NB_EINVAL;
    len = (size_t)(end - p - 1);
    if (len == 0)
        return 0;
    if (len > TZ_RULE_MAX)
        return NB_EINVAL;
    memcpy(text, p + 1, len);
    text[len] = '\0';
    if (memchr(text, '\0', len) != NULL || parse_rule(text, &z->rule) != 0)
        return NB_EINVAL;
    if (z->rule.std.utoff < -TZ_MAX_UTOFF || z->rule.std.utoff > TZ_MAX_UTOFF ||
        z->rule.dst.utoff < -TZ_MAX_UTOFF || z->rule.dst.utoff > TZ_MAX_UTOFF)
        return NB_EINVAL;
    z->has_rule = 1;
    return 0;
}

/* A zone from the bytes of a TZif file: NB_EINVAL when they are not one. */
static int
zone_from_tzif(const unsigned char *buf, size_t len, struct tzone **out)
{
    struct tzone *z = calloc(1, sizeof(*z));
    struct tzif_counts c;
    size_t block;
    int rc;

    if (z == NULL)
        return NB_ENOMEM;
    rc = NB_EINVAL;
    if (tzif_header(buf, len, 4, &c, &block) != 0)
        goto fail;
    if (buf[4] == '\0') {
        rc = tzif_block(buf + 44, &c, 4, z);
    } else {
        const unsigned char *p2 = buf + 44 + block;
        size_t left = len - 44 - block;

        if (tzif_header(p2, left, 8, &c, &block) != 0)
            goto fail;
        rc = tzif_block(p2 + 44, &c, 8, z);
        if (rc == 0)
            rc = tzif_footer(p2 + 44 + block, left - 44 - block, z);
    }
    if (rc != 0)
        goto fail;
    zone_finish(z);
    *out = z;
    return 0;

fail:
    zone_free(z);
    return rc;
}

/* Reads a whole regular file of at most TZ_FILE_MAX bytes. */
static int
read_file(const char *path, unsigned char **buf, size_t *len)
{
    struct stat st;
    unsigned char *data = NULL;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return NB_ENOTFOUND;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size > TZ_FILE_MAX)
        goto fail;
    data = malloc((size_t)st.st_size + 1);
    if (data == NULL)
        goto fail;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, data + got, (size_t)st.st_size - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        got += (size_t)n;
    }
    close(fd);
    *buf = data;
    *len = got;
    return 0;

fail:
    free(data);
    close(fd);
    return NB_ENOTFOUND;
}

static int
zone_from_file(const char *path, struct tzone **out)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len);

    if (rc == 0)
        rc = zone_from_tzif(buf, len, out);
    free(buf);
    return rc;
}

/* A relative path inside the database: [A-Za-z0-9._+-] parts, no "..". */
static int
name_ok(const char *name)
{
    size_t len = strlen(name);
    const char *part = name;

    if (len == 0 || len > TZONE_NAME_MAX)
        return 0;
    for (const char *s = name;; s++) {
        if (*s == '/' || *s == '\0') {
            size_t n = (size_t)(s - part);

            if (n == 0 || (n == 1 && part[0] == '.') ||
                (n == 2 && part[0] == '.' && part[1] == '.'))
                return 0;
            if (*s == '\0')
                return 1;
            part = s + 1;
        } else if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                     (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' ||
                     *s == '+' || *s == '-')) {
            return 0;
        }
    }
}

static const char *
tz_dir(void)
{
    const char *dir = getenv("TZDIR");

    return dir != NULL && dir[0] == '/' ? dir : TZ_DIR_DEFAULT;
}

static int
zone_from_name(const char *name, struct tzone **out)
{
    char path[TZONE_NAME_MAX + 512];
    int w = snprintf(path, sizeof(path), "%s/%s", tz_dir(), name);

    if (w < 0 || (size_t)w >= sizeof(path))
        return NB_EINVAL;
    return zone_from_file(path, out);
}

/* UTC when nothing better is at hand. */
static int
zone_utc(struct tzone **out)
{
    int nomem;

    *out = zone_from_rule("UTC0", &nomem);
    return *out != NULL ? 0 : NB_ENOMEM;
}

/* The local zone from the value of TZ (NULL: unset), as glibc reads it;
 * anything unusable is UTC. */
static int
zone_local(const char *tz, struct tzone **out)
{
    const char *name;
    int rc, nomem;

    if (tz == NULL) {
        rc = zone_from_file("/etc/localtime", out);
        return rc == NB_ENOMEM || rc == 0 ? rc : zone_utc(out);
    }
    name = tz[0] == ':' ? tz + 1 : tz;
    if (name[0] == '\0')
        return zone_utc(out);
    if (name[0] == '/')
        rc = zone_from_file(name, out);
    else
        rc = name_ok(name) ? zone_from_name(name, out) : NB_EINVAL;
    if (rc == 0 || rc == NB_ENOMEM)
        return rc;
    *out = zone_from_rule(name, &nomem);
    if (*out != NULL)
        return 0;
    return nomem ? NB_ENOMEM : zone_utc(out);
}

/* ---- the cache ------------------------------------------------------ */

static const struct tzone *
cache_find(const char *key)
{
    for (const struct tzone *z = cache; z != NULL; z = z->next) {
        if (strcmp(z->key, key) == 0)
            return z;
    }
    return NULL;
}

/* Adds z under key unless another thread was first; returns the one kept. */
static const struct tzone *
cache_add(struct tzone *z, const char *key)
{
    const struct tzone *old;

    pthread_mutex_lock(&cache_lock);
    old = cache_find(key);
    if (old == NULL) {
        z->key = strdup(key);
        if (z->key != NULL) {
            z->next = cache;
            cache = z;
            old = z;
            z = NULL;
        }
    }
    pthread_mutex_unlock(&cache_lock);
    zone_free(z);
    return old;
}

static const struct tzone *
cache_get(const char *key)
{
    const struct tzone *z;

    pthread_mutex_lock(&cache_lock);
    z = cache_find(key);
    pthread_mutex_unlock(&cache_lock);
    return z;
}

int
tzone_get(const char *name, const struct tzone **zone, char *err,
          size_t errlen)
{
    char key[TZONE_NAME_MAX + 520];
    const char *tz = NULL;
    struct tzone *z = NULL;
    int rc;

    if (name == NULL || name[0] == '\0') {
        tz = getenv("TZ");
        snprintf(key, sizeof(key), "\001local\001%s",
                 tz != NULL ? tz : "\002");
    } else {
        snprintf(key, sizeof(key), "%s", name);
    }
    *zone = cache_get(key);
    if (*zone != NULL)
        return 0;

    if (name == NULL || name[0] == '\0') {
        rc = zone_local(tz, &z);
    } else if (!name_ok(name)) {
        snprintf(err, errlen, "\"%s\" is not a time zone name (like "
                 "Europe/Berlin)", name);
        return NB_EINVAL;
    } else {
        rc = zone_from_name(name, &z);
        if (rc != 0 && rc != NB_ENOMEM &&
            (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0))
            rc = zone_utc(&z);
    }
    if (rc == NB_ENOTFOUND)
        snprintf(err, errlen, "unknown time zone \"%s\" (no file %s/%s)",
                 name, tz_dir(), name);
    else if (rc == NB_EINVAL)
        snprintf(err, errlen, "%s/%s: not a usable time zone file",
                 tz_dir(), name);
    else if (rc == NB_ENOMEM)
        snprintf(err, errlen, "out of memory");
    if (rc != 0)
        return rc == NB_ENOMEM ? NB_ENOMEM : NB_EINVAL;

    *zone = cache_add(z, key);
    if (*zone == NULL) {
        snprintf(err, errlen, "out of memory");
        return NB_ENOMEM;
    }
    return 0;
}

int
tzone_system(const struct tzone **zone, char *err, size_t errlen)
{
    struct tzone *z = NULL;
    int rc;

    *zone = cache_get("\001system");
    if (*zone != NULL)
        return 0;
    rc = zone_local(NULL, &z);
    if (rc == 0)
        *zone = cache_add(z, "\001system");
    if (rc != 0 || *zone == NULL) {
        snprintf(err, errlen, "out of memory");
        return NB_ENOMEM;
    }
    return 0;
}

int
tzone_from_rule(const char *text, const struct tzone **zone)
{
    char key[TZ_RULE_MAX + 16];
    struct tzone *z;
    int nomem;

    if (strlen(text) > TZ_RULE_MAX)
        return NB_EINVAL;
    snprintf(key, sizeof(key), "\001rule\001%s", text);
    *zone = cache_get(key);
    if (*zone != NULL)
        return 0;
    z = zone_from_rule(text, &nomem);
    if (z == NULL)
        return nomem ? NB_ENOMEM : NB_EINVAL;
    *zone = cache_add(z, key);
    return *zone != NULL ? 0 : NB_ENOMEM;
}

int
tzone_check(const void *buf, size_t len, int64_t t_s)
{
    struct tzone *z = NULL;
    char rule[TZ_RULE_MAX + 1];
    int nomem = 0, rc;

    if (len >= 4 && memcmp(buf, "TZif", 4) == 0) {
        rc = zone_from_tzif(buf, len, &z);
    } else {
        if (len > TZ_RULE_MAX || memchr(buf, '\0', len) != NULL)
            return NB_EINVAL;
        memcpy(rule, buf, len);
        rule[len] = '\0';
        z = zone_from_rule(rule, &nomem);
        rc = z != NULL ? 0 : nomem ? NB_ENOMEM : NB_EINVAL;
    }
    if (rc != 0)
        return rc;
    (void)tzone_first_at(z, tzone_local(z, t_s));
    zone_free(z);
    return 0;
}
