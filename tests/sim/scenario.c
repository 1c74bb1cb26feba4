/*
 * scenario.c - the scenario file parser of nbsim.
 *
 * One pass over the file, one line at a time: blank lines and lines whose
 * first non-blank character is '#' are skipped, every other line must be
 * "key = value".  Keys are looked up in one table that says how to read
 * the value, so the list of keys and their checks live in one place.  A
 * value is taken whole (there are no trailing comments, since an API key
 * may hold any character).  Any unknown key, bad value or a sum of fault
 * rates above 1 stops the parse with "FILE:LINE: ..." naming the key.
 * The parser never allocates into the record; it only fills fixed fields.
 */
#include "tests/sim/scenario.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY_MS    86400000L     /* the longest delay a scenario may ask */

static const char *const fault_names[SCENARIO_NFAULTS] = {
    [SCENARIO_F500] = "500",
    [SCENARIO_F502] = "502",
    [SCENARIO_F503] = "503",
    [SCENARIO_F504] = "504",
    [SCENARIO_F408] = "408",
    [SCENARIO_F429] = "429",
    [SCENARIO_F429BARE] = "429bare",
    [SCENARIO_FRESET] = "reset",
    [SCENARIO_FTRUNCATE] = "truncate",
    [SCENARIO_FHANG] = "hang",
    [SCENARIO_FSLOW] = "slow",
    [SCENARIO_FMALFORMED] = "malformed",
    [SCENARIO_FBADBASE64] = "badbase64",
    [SCENARIO_FCORRUPT] = "corrupt",
    [SCENARIO_FNOIMAGE] = "noimage",
    [SCENARIO_FTEXTONLY] = "textonly",
    [SCENARIO_FSAFETY] = "safety",
    [SCENARIO_FBLOCKED] = "blocked",
};

static const char *const default_models[] = {
    "gemini-2.5-flash-image",
    "gemini-2.5-flash-image-preview",
    "gemini-3-pro-image-preview",
    "gemini-3-pro-image",
    "gemini-3.1-flash-image-preview",
    "gemini-3.1-flash-image",
    "gemini-3.1-flash-lite-image",
};

/* Where the current line came from, for messages. */
struct where {
    const char *path;
    long line;
    const char *key;
    char *err;
    size_t errlen;
};

static int fail(const struct where *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
fail(const struct where *w, const char *fmt, ...)
{
    char what[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (w->key)
        snprintf(w->err, w->errlen, "%s:%ld: key '%s': %s",
                 w->path, w->line, w->key, what);
    else
        snprintf(w->err, w->errlen, "%s:%ld: %s", w->path, w->line, what);
    return -1;
}

const char *
scenario_fault_name(enum scenario_fault f)
{
    if ((unsigned)f >= SCENARIO_NFAULTS)
        return "?";
    return fault_names[f];
}

int
scenario_has_model(const struct scenario *sc, const char *model)
{
    for (size_t i = 0; i < sc->nmodels; i++)
        if (strcmp(sc->models[i], model) == 0)
            return 1;
    return 0;
}

void
scenario_init(struct scenario *sc)
{
    size_t n = sizeof default_models / sizeof default_models[0];

    memset(sc, 0, sizeof *sc);
    sc->seed = 1;
    snprintf(sc->key, sizeof sc->key, "%s", "sim-key");
    for (size_t i = 0; i < n; i++)
        snprintf(sc->models[i], SCENARIO_MODEL_LEN, "%s", default_models[i]);
    sc->nmodels = n;
    sc->dims = SCENARIO_DIMS_TINY;
    sc->format = SCENARIO_FORMAT_PNG;
    sc->jpeg_rate = 0.3;
    sc->thoughts = SCENARIO_THOUGHTS_AUTO;
    sc->retry_delay_ms = 1000;
    sc->hang_ms = 600000;
    sc->slow_ms = 3000;
    sc->batch_pending_ms = 200;
    sc->batch_run_ms = 1000;
    sc->batch_state_names = SCENARIO_STATES_BATCH;
}

/* --- value readers ------------------------------------------------- */

static int
read_long(const struct where *w, const char *v, long max, long *out)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < 0 || n > max)
        return fail(w, "bad value '%s' (expected an integer from 0 to "
                    "%ld)", v, max);
    *out = n;
    return 0;
}

static int
read_u64(const struct where *w, const char *v, uint64_t *out)
{
    char *end;
    unsigned long long n;

    errno = 0;
    if (*v == '-')
        return fail(w, "bad value '%s' (expected an unsigned integer)", v);
    n = strtoull(v, &end, 0);
    if (errno || end == v || *end)
        return fail(w, "bad value '%s' (expected an unsigned integer)", v);
    *out = n;
    return 0;
}

static int
read_rate(const struct where *w, const char *v, double *out)
{
    char *end;
    double d;

    errno = 0;
    d = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(d) || d < 0 || d > 1)
        return fail(w, "bad value '%s' (expected a rate from 0 to 1)", v);
    *out = d;
    return 0;
}

static int
read_choice(const struct where *w, const char *v,
            const char *const *names, int *out)
{
    char expected[128] = "";
    size_t used = 0;

    for (int i = 0; names[i]; i++) {
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
        used += (size_t)snprintf(expected + used, sizeof expected - used,
                                 "%s%s", i ? ", " : "", names[i]);
        if (used >= sizeof expected)
            break;
    }
    return fail(w, "bad value '%s' (expected one of: %s)", v, expected);
}

static int
is_outage_status(long s)
{
    return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 ||
           s == 504;
}

/* "START-END[:STATUS]", seconds after start, END > START. */
static int
read_outage(const struct where *w, const char *v, struct scenario *sc)
{
    struct scenario_outage o = { 0, 0, 503 };
    char *end;

    if (sc->noutages == SCENARIO_MAX_OUTAGES)
        return fail(w, "more than %d outages", SCENARIO_MAX_OUTAGES);
    errno = 0;
    o.start_s = strtod(v, &end);
    if (errno || end == v || *end != '-' || !isfinite(o.start_s) ||
        o.start_s < 0)
        goto bad;
    v = end + 1;
    o.end_s = strtod(v, &end);
    if (errno || end == v || !isfinite(o.end_s) || o.end_s <= o.start_s)
        goto bad;
    if (*end == ':') {
        long status;

        v = end + 1;
        status = strtol(v, &end, 10);
        if (errno || end == v || !is_outage_status(status))
            goto bad;
        o.status = (int)status;
    }
    if (*end)
        goto bad;
    sc->outages[sc->noutages++] = o;
    return 0;
bad:
    return fail(w, "bad value (expected START-END[:STATUS], seconds, "
                "END > START, STATUS one of 408 429 500 502 503 504)");
}

/* A list of model ids separated by commas and/or blanks. */
static int
read_models(const struct where *w, const char *v, struct scenario *sc)
{
    size_t n = 0;

    while (*v) {
        size_t len = strcspn(v, ", \t");

        if (len == 0) {
            v++;
            continue;
        }
        if (n == SCENARIO_MAX_MODELS)
            return fail(w, "more than %d models", SCENARIO_MAX_MODELS);
        if (len >= SCENARIO_MODEL_LEN)
            return fail(w, "model id longer than %d bytes",
                        SCENARIO_MODEL_LEN - 1);
        for (size_t i = 0; i < len; i++)
            if (!isalnum((unsigned char)v[i]) && !strchr("-._", v[i]))
                return fail(w, "bad model id '%.*s'", (int)len, v);
        memcpy(sc->models[n], v, len);
        sc->models[n][len] = '\0';
        n++;
        v += len;
    }
    if (n == 0)
        return fail(w, "empty model list");
    sc->nmodels = n;
    return 0;
}

/* --- the key table -------------------------------------------------- */

enum kind { K_SEED, K_KEY, K_MODELS, K_DIMS, K_FORMAT, K_THOUGHTS,
            K_RATE, K_MS, K_COUNT, K_OUTAGE, K_STATE_NAMES };

struct keydef {
    const char *name;
    enum kind kind;
    size_t offset;              /* of the field in struct scenario */
    long max;                   /* for K_MS and K_COUNT */
};

#define F(field) offsetof(struct scenario, field)

static const struct keydef keys[] = {
    { "seed", K_SEED, F(seed), 0 },
    { "key", K_KEY, 0, 0 },
    { "models", K_MODELS, 0, 0 },
    { "dims", K_DIMS, 0, 0 },
    { "format", K_FORMAT, 0, 0 },
    { "jpeg_rate", K_RATE, F(jpeg_rate), 0 },
    { "thoughts", K_THOUGHTS, 0, 0 },
    { "latency_ms", K_MS, F(latency_ms), DAY_MS },
    { "latency_jitter_ms", K_MS, F(latency_jitter_ms), DAY_MS },
    { "retry_delay_ms", K_MS, F(retry_delay_ms), DAY_MS },
    { "hang_ms", K_MS, F(hang_ms), DAY_MS },
    { "slow_ms", K_MS, F(slow_ms), DAY_MS },
    /* Each model keeps one timestamp per rpm slot. */
    { "rpm", K_COUNT, F(rpm), 1000000 },
    { "rpd", K_COUNT, F(rpd), 1000000000 },
    { "outage", K_OUTAGE, 0, 0 },
    { "batch.pending_ms", K_MS, F(batch_pending_ms), DAY_MS },
    { "batch.run_ms", K_MS, F(batch_run_ms), DAY_MS },
    { "batch.expire", K_COUNT, F(batch_expire), 1000000000 },
    { "batch.fail", K_COUNT, F(batch_fail), 1000000000 },
    { "batch.line_fault", K_RATE, F(batch_line_fault), 0 },
    { "batch.create_lost", K_RATE, F(batch_create_lost), 0 },
    { "batch.http_fault", K_RATE, F(batch_http_fault), 0 },
    { "batch.state_names", K_STATE_NAMES, 0, 0 },
};

#undef F

static const char *const dims_names[] = { "tiny", "real", NULL };
static const char *const format_names[] = { "png", "jpeg", "mixed", NULL };
static const char *const thoughts_names[] = { "auto", "on", "off", NULL };
static const char *const state_names[] = { "batch", "job", NULL };

static int
apply_key(const struct where *w, const struct keydef *k, const char *v,
          struct scenario *sc)
{
    char *field = (char *)sc + k->offset;
    int choice;

    /* The enums' values are the indexes of their name lists. */
    switch (k->kind) {
    case K_SEED:
        return read_u64(w, v, (uint64_t *)(void *)field);
    case K_KEY:
        if (!*v || strlen(v) >= SCENARIO_KEY_LEN)
            return fail(w, "bad value (expected 1 to %d bytes)",
                        SCENARIO_KEY_LEN - 1);
        snprintf(sc->key, sizeof sc->key, "%s", v);
        return 0;
    case K_MODELS:
        return read_models(w, v, sc);
    case K_DIMS:
        if (read_choice(w, v, dims_names, &choice) < 0)
            return -1;
        sc->dims = (enum scenario_dims)choice;
        return 0;
    case K_FORMAT:
        if (read_choice(w, v, format_names, &choice) < 0)
            return -1;
        sc->format = (enum scenario_format)choice;
        return 0;
    case K_THOUGHTS:
        if (read_choice(w, v, thoughts_names, &choice) < 0)
            return -1;
        sc->thoughts = (enum scenario_thoughts)choice;
        return 0;
    case K_RATE:
        return read_rate(w, v, (double *)(void *)field);
    case K_MS:
    case K_COUNT:
        return read_long(w, v, k->max, (long *)(void *)field);
    case K_OUTAGE:
        return read_outage(w, v, sc);
    case K_STATE_NAMES:
        if (read_choice(w, v, state_names, &choice) < 0)
            return -1;
        sc->batch_state_names = (enum scenario_state_names)choice;
        return 0;
    }
    return fail(w, "internal: unhandled key kind");
}

static int
apply_fault(const struct where *w, const char *name, const char *v,
            struct scenario *sc)
{
    for (int f = 0; f < SCENARIO_NFAULTS; f++)
        if (strcmp(name, fault_names[f]) == 0)
            return read_rate(w, v, &sc->fault[f]);
    return fail(w, "unknown fault (see tests/sim/README.md)");
}

/* --- lines ------------------------------------------------------------ */

static char *
trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

static double
fault_sum(const struct scenario *sc)
{
    double sum = 0;

    for (int f = 0; f < SCENARIO_NFAULTS; f++)
        sum += sc->fault[f];
    return sum;
}

static int
parse_line(struct where *w, char *line, struct scenario *sc)
{
    char *eq, *key, *value;

    line = trim(line);
    if (!*line || *line == '#')
        return 0;
    eq = strchr(line, '=');
    if (!eq)
        return fail(w, "expected 'key = value'");
    *eq = '\0';
    key = trim(line);
    value = trim(eq + 1);
    w->key = key;

    if (strncmp(key, "fault.", 6) == 0) {
        if (apply_fault(w, key + 6, value, sc) < 0)
            return -1;
        /* A little slack for rates like 0.1 + 0.2 + 0.7. */
        if (fault_sum(sc) > 1.0 + 1e-9)
            return fail(w, "fault rates add up to more than 1");
        return 0;
    }
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(key, keys[i].name) == 0)
            return apply_key(w, &keys[i], value, sc);
    return fail(w, "unknown key");
}

int
scenario_load(struct scenario *sc, const char *path, char *err,
              size_t errlen)
{
    struct where w = { path, 0, NULL, err, errlen };
    FILE *f = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = -1;

    f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    while ((len = getline(&line, &cap, f)) >= 0) {
        w.line++;
        w.key = NULL;
        if ((size_t)len != strlen(line)) {
            fail(&w, "NUL byte in line");
            goto fail;
        }
        if (parse_line(&w, line, sc) < 0)
            goto fail;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        goto fail;
    }
    rc = 0;
fail:
    free(line);
    if (f)
        fclose(f);
    return rc;
}
