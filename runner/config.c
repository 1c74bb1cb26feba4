/*
 * config.c - the configuration file: INI-like text into struct config.
 *
 * One pass over the lines.  A header switches the current section (and,
 * for [endpoint NAME] and [model ID], claims the next slot); a key line is
 * looked up in one table of {section, key, kind, field, range}, so that
 * adding a key is one row and every value of a kind is checked the same
 * way.  Checks that need the whole file (max_cooldown against cooldown,
 * fallback loops, a section that says nothing) run at the end.
 *
 * Invariants: the first problem stops the parse with "FILE:LINE: KEY:
 * message" and NB_EINVAL; the caller's record is written only when the
 * whole file is good.  Nothing here prints, and no API key ever passes
 * through: the file names key files, it does not hold keys.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobs/models.h"
#include "queue/nberr.h"
#include "runner/config.h"

#define LINE_MAX_LEN 4096

enum section { S_NONE, S_DEFAULTS, S_ENDPOINT, S_MODEL, S_OFFPEAK,
               S_BREAKER, S_BATCH };

enum kind {
    K_INT,          /* whole number in [lo, hi] */
    K_NUMBER,       /* decimal in [lo, hi], or (lo, hi] with open_lo */
    K_SECONDS,      /* duration into int seconds */
    K_MILLIS,       /* duration into int64_t milliseconds */
    K_PATH,         /* "~/" and relative paths resolved */
    K_URL,
    K_MODEL,        /* a plausible model id */
    K_TZ,           /* a zone in the tz database */
    K_WINDOWS       /* "HH:MM-HH:MM, ..." into a struct window_set */
};

struct key_def {
    enum section section;
    const char *key;
    enum kind kind;
    size_t offset;          /* in struct config, config_endpoint or _model */
    size_t size;            /* of the field, for strings */
    double lo, hi;
    int open_lo;
};

#define IN(type, field) offsetof(struct type, field), \
                        sizeof(((struct type *)0)->field)

static const struct key_def keys[] = {
    {S_DEFAULTS, "model", K_MODEL, IN(config, model), 0, 0, 0},
    {S_DEFAULTS, "workers", K_INT, IN(config, workers), 1, 4096, 0},
    {S_DEFAULTS, "timeout", K_SECONDS, IN(config, timeout_s), 1, 86400, 0},
    {S_DEFAULTS, "key_file", K_PATH, IN(config, key_file), 0, 0, 0},
    {S_DEFAULTS, "budget", K_NUMBER, IN(config, budget_usd), 0, 1e6, 1},
    {S_DEFAULTS, "tz", K_TZ, IN(config, tz), 0, 0, 0},

    {S_ENDPOINT, "base_url", K_URL, IN(config_endpoint, base_url), 0, 0, 0},
    {S_ENDPOINT, "key_file", K_PATH, IN(config_endpoint, key_file), 0, 0, 0},

    {S_MODEL, "rpm", K_INT, IN(config_model, rpm), 1, 1e6, 0},
    {S_MODEL, "rpd", K_INT, IN(config_model, rpd), 1, 1e9, 0},
    {S_MODEL, "fallback", K_MODEL, IN(config_model, fallback), 0, 0, 0},
    {S_MODEL, "price_512", K_NUMBER, IN(config_model, price_512), 0, 100, 0},
    {S_MODEL, "price_1K", K_NUMBER, IN(config_model, price_1k), 0, 100, 0},
    {S_MODEL, "price_2K", K_NUMBER, IN(config_model, price_2k), 0, 100, 0},
    {S_MODEL, "price_4K", K_NUMBER, IN(config_model, price_4k), 0, 100, 0},
    {S_MODEL, "input_price_per_mtok", K_NUMBER,
     IN(config_model, input_price_per_mtok), 0, 10000, 0},
    {S_MODEL, "output_price_per_mtok", K_NUMBER,
     IN(config_model, output_price_per_mtok), 0, 10000, 0},
    {S_MODEL, "batch_discount", K_NUMBER, IN(config_model, batch_discount),
     0, 1, 0},

    {S_OFFPEAK, "windows", K_WINDOWS, IN(config, offpeak), 0, 0, 0},
    {S_OFFPEAK, "tz", K_TZ, IN(config, offpeak_tz), 0, 0, 0},

    {S_BREAKER, "failures", K_INT, IN(config, breaker.failures), 1, 1000, 0},
    {S_BREAKER, "window", K_INT, IN(config, breaker.window), 1, 10000, 0},
    {S_BREAKER, "failure_rate", K_NUMBER, IN(config, breaker.failure_rate),
     0, 1, 1},
    {S_BREAKER, "cooldown", K_MILLIS, IN(config, breaker.cooldown_ms),
     1, 86400, 0},
    {S_BREAKER, "max_cooldown", K_MILLIS,
     IN(config, breaker.max_cooldown_ms), 1, 7 * 86400, 0},

    {S_BATCH, "poll", K_MILLIS, IN(config, batch_poll_ms), 1, 86400, 0},
    {S_BATCH, "chunk", K_INT, IN(config, batch_chunk), 1, 100000, 0},
};

#define N_KEYS (sizeof(keys) / sizeof(keys[0]))
_Static_assert(N_KEYS <= 64, "a section's keys are one bit each");

static const char *const section_names[] = {
    "", "defaults", "endpoint", "model", "offpeak", "breaker", "batch"
};

struct parser {
    struct config *cfg;
    const char *name;               /* the file, for messages */
    char dir[CONFIG_PATH_LEN];      /* its folder, for relative paths */
    long line;
    enum section section;
    char *base;                     /* the current section's record */
    char label[CONFIG_NAME_LEN + 16];   /* "[model ID]", for messages */
    long section_line;
    unsigned long long seen;        /* keys set in this section */
    long seen_line[N_KEYS];
    long single_line[S_BATCH + 1];  /* sections allowed once */
    long model_fallback_line[CONFIG_MAX_MODELS];
    long cooldown_line, max_cooldown_line;
    char *err;
    size_t errlen;
};

/* ---- messages ------------------------------------------------------- */

static int
fail(struct parser *p, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
fail(struct parser *p, const char *what, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (what != NULL)
        snprintf(p->err, p->errlen, "%s:%ld: %s: %s", p->name, p->line,
                 what, msg);
    else
        snprintf(p->err, p->errlen, "%s:%ld: %s", p->name, p->line, msg);
    return NB_EINVAL;
}

/* ---- values --------------------------------------------------------- */

int
config_parse_duration(const char *text, int64_t *ms)
{
    const char *s = text;
    int64_t v = 0, unit = 1000;
    int digits = 0;

    /* 12 digits of hours still fit in int64_t milliseconds */
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s++ - '0');
        digits++;
    }
    if (digits == 0 || digits > 12)
        return NB_EINVAL;
    if (*s == 's' || *s == 'm' || *s == 'h') {
        unit = *s == 's' ? 1000 : *s == 'm' ? 60000 : 3600000;
        s++;
    }
    if (*s != '\0')
        return NB_EINVAL;
    *ms = v * unit;
    return 0;
}

static int
set_int(struct parser *p, const struct key_def *k, const char *v, void *f)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(v, &end, 10);
    if (end == v || *end != '\0' || errno != 0)
        return fail(p, k->key, "\"%s\" is not a whole number", v);
    if (n < (long)k->lo || n > (long)k->hi)
        return fail(p, k->key, "%ld is out of range (%.0f to %.0f)", n,
                    k->lo, k->hi);
    *(int *)f = (int)n;
    return 0;
}

static int
set_number(struct parser *p, const struct key_def *k, const char *v,
           void *f)
{
    char *end;
    double d;

    errno = 0;
    d = strtod(v, &end);
    if (end == v || *end != '\0' || errno != 0 || !isfinite(d) ||
        strchr(v, 'x') != NULL || strchr(v, 'X') != NULL)
        return fail(p, k->key, "\"%s\" is not a number", v);
    if (k->open_lo && (d <= k->lo || d > k->hi))
        return fail(p, k->key, "%s is out of range (more than %.10g, at "
                    "most %.10g)", v, k->lo, k->hi);
    if (d < k->lo || d > k->hi)
        return fail(p, k->key, "%s is out of range (%.10g to %.10g)", v,
                    k->lo, k->hi);
    *(double *)f = d;
    return 0;
}

static int
set_duration(struct parser *p, const struct key_def *k, const char *v,
             void *f)
{
    int64_t ms;

    if (config_parse_duration(v, &ms) != 0)
        return fail(p, k->key, "\"%s\" is not a duration (like 30s, 5m, 2h "
                    "or plain seconds)", v);
    if (ms < (int64_t)k->lo * 1000 || ms > (int64_t)k->hi * 1000)
        return fail(p, k->key, "%s is out of range (%.0fs to %.0fs)", v,
                    k->lo, k->hi);
    if (k->kind == K_SECONDS)
        *(int *)f = (int)(ms / 1000);
    else
        *(int64_t *)f = ms;
    return 0;
}

/* "~" and "~/x" from $HOME; a relative path from the file's folder. */
static int
set_path(struct parser *p, const struct key_def *k, const char *v, void *f)
{
    const char *home = getenv("HOME");
    int w;

    if (v[0] == '~' && v[1] != '\0' && v[1] != '/')
        return fail(p, k->key, "\"%s\": ~user is not supported, write the "
                    "whole path", v);
    if (v[0] == '~' && (home == NULL || home[0] == '\0'))
        return fail(p, k->key, "\"%s\": ~ needs HOME to be set", v);

    if (v[0] == '~')
        w = snprintf(f, k->size, "%s%s", home, v + 1);
    else if (v[0] == '/' || p->dir[0] == '\0')
        w = snprintf(f, k->size, "%s", v);
    else
        w = snprintf(f, k->size, "%s/%s", p->dir, v);
    if (w < 0 || (size_t)w >= k->size)
        return fail(p, k->key, "path longer than %zu bytes", k->size - 1);
    return 0;
}

static int
set_url(struct parser *p, const struct key_def *k, const char *v, void *f)
{
    size_t len = strlen(v);

    if (strncasecmp(v, "http://", 7) != 0 &&
        strncasecmp(v, "https://", 8) != 0)
        return fail(p, k->key, "\"%s\" does not start with http:// or "
                    "https://", v);
    if (len == (v[4] == ':' ? 7u : 8u))
        return fail(p, k->key, "\"%s\" has no host", v);
    for (const char *s = v; *s != '\0'; s++) {
        if ((unsigned char)*s <= ' ' || *s == 0x7f)
            return fail(p, k->key, "\"%s\": spaces and control characters "
                        "are not allowed in a URL", v);
    }
    if (len >= k->size)
        return fail(p, k->key, "URL longer than %zu bytes", k->size - 1);
    memcpy(f, v, len + 1);
    return 0;
}

static int
set_model(struct parser *p, const struct key_def *k, const char *v, void *f)
{
    if (models_find(v) == NULL || strlen(v) >= k->size)
        return fail(p, k->key, "\"%s\" is not a model id (lowercase "
                    "letters, digits, '.' and '-', like %s)", v,
                    MODELS_DEFAULT);
    if (p->section == S_MODEL &&
        strcmp(v, ((struct config_model *)(void *)p->base)->id) == 0)
        return fail(p, k->key, "a model cannot fall back to itself");
    memcpy(f, v, strlen(v) + 1);
    return 0;
}

static int
set_tz(struct parser *p, const struct key_def *k, const char *v, void *f)
{
    const struct tzone *zone;
    char msg[256];

    if (tzone_get(v, &zone, msg, sizeof(msg)) != 0)
        return fail(p, k->key, "%s", msg);
    snprintf(f, k->size, "%s", v);
    return 0;
}

static int
set_windows(struct parser *p, const struct key_def *k, const char *v,
            void *f)
{
    char msg[256];

    if (window_parse(v, f, msg, sizeof(msg)) != 0)
        return fail(p, k->key, "%s", msg);
    return 0;
}

static int
set_value(struct parser *p, const struct key_def *k, const char *v)
{
    void *field = p->base + k->offset;

    switch (k->kind) {
    case K_INT:     return set_int(p, k, v, field);
    case K_NUMBER:  return set_number(p, k, v, field);
    case K_SECONDS:
    case K_MILLIS:  return set_duration(p, k, v, field);
    case K_PATH:    return set_path(p, k, v, field);
    case K_URL:     return set_url(p, k, v, field);
    case K_MODEL:   return set_model(p, k, v, field);
    case K_TZ:      return set_tz(p, k, v, field);
    case K_WINDOWS: return set_windows(p, k, v, field);
    }
    return NB_EINVAL;
}

/* ---- sections ------------------------------------------------------- */

/* Checks that need the whole section: run when it ends. */
static int
end_section(struct parser *p)
{
    long here = p->line;
    int rc = 0;

    p->line = p->section_line;
    if (p->section == S_ENDPOINT) {
        const struct config_endpoint *e = (const void *)p->base;

        if (e->name[0] != '\0' && e->base_url[0] == '\0' &&
            e->key_file[0] == '\0')
            rc = fail(p, p->label, "sets neither base_url nor key_file");
    } else if (p->section == S_OFFPEAK && p->cfg->offpeak.n == 0) {
        rc = fail(p, p->label, "windows is missing (like windows = "
                  "22:00-06:00)");
    }
    p->line = here;
    return rc;
}

/* A name for [endpoint NAME]: letters, digits, '.', '_', '-'. */
static int
name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n >= CONFIG_NAME_LEN)
        return 0;
    for (; *s != '\0'; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' ||
              *s == '-'))
            return 0;
    }
    return 1;
}

static int
open_endpoint(struct parser *p, const char *arg)
{
    struct config *cfg = p->cfg;
    struct config_endpoint *e;

    if (arg[0] == '\0') {
        if (p->single_line[S_ENDPOINT] != 0)
            return fail(p, p->label, "given twice (first at line %ld)",
                        p->single_line[S_ENDPOINT]);
        p->single_line[S_ENDPOINT] = p->line;
        p->base = (char *)&cfg->endpoints[0];
        return 0;
    }
    if (!name_ok(arg))
        return fail(p, p->label, "\"%s\" is not an endpoint name (letters, "
                    "digits, '.', '_', '-')", arg);
    for (int i = 1; i < cfg->n_endpoints; i++) {
        if (strcmp(cfg->endpoints[i].name, arg) == 0)
            return fail(p, p->label, "given twice");
    }
    if (cfg->n_endpoints == CONFIG_MAX_ENDPOINTS)
        return fail(p, p->label, "more than %d fallback endpoints",
                    CONFIG_MAX_ENDPOINTS - 1);
    e = &cfg->endpoints[cfg->n_endpoints++];
    snprintf(e->name, sizeof(e->name), "%s", arg);
    p->base = (char *)e;
    return 0;
}

static int
open_model(struct parser *p, const char *arg)
{
    struct config *cfg = p->cfg;
    struct config_model *m;

    if (arg[0] == '\0')
        return fail(p, p->label, "needs a model id, like [model %s]",
                    MODELS_DEFAULT);
    if (models_find(arg) == NULL || strlen(arg) >= CONFIG_NAME_LEN)
        return fail(p, p->label, "\"%s\" is not a model id (lowercase "
                    "letters, digits, '.' and '-')", arg);
    if (config_model(cfg, arg) != NULL)
        return fail(p, p->label, "given twice");
    if (cfg->n_models == CONFIG_MAX_MODELS)
        return fail(p, p->label, "more than %d model sections",
                    CONFIG_MAX_MODELS);
    p->model_fallback_line[cfg->n_models] = 0;
    m = &cfg->models[cfg->n_models++];
    snprintf(m->id, sizeof(m->id), "%s", arg);
    m->price_512 = m->price_1k = m->price_2k = m->price_4k = -1;
    m->input_price_per_mtok = m->output_price_per_mtok = -1;
    m->batch_discount = -1;
    p->base = (char *)m;
    return 0;
}

/* "[name]" or "[name ARG]" (ARG may be in double quotes). */
static int
parse_header(struct parser *p, char *s)
{
    char *close = strchr(s, ']');
    char *arg;
    enum section sect = S_NONE;
    int rc;

    if (close == NULL || (close[1 + strspn(close + 1, " \t")] != '\0' &&
                          close[1 + strspn(close + 1, " \t")] != '#'))
        return fail(p, NULL, "a section header is \"[name]\" or \"[name "
                    "ID]\" alone on its line");
    *close = '\0';
    s++;
    s += strspn(s, " \t");
    arg = s + strcspn(s, " \t");
    if (*arg != '\0')
        *arg++ = '\0';
    arg += strspn(arg, " \t");
    for (size_t n = strlen(arg); n > 0 && (arg[n - 1] == ' ' ||
                                           arg[n - 1] == '\t'); n--)
        arg[n - 1] = '\0';
    if (arg[0] == '"' && strlen(arg) >= 2 && arg[strlen(arg) - 1] == '"') {
        arg[strlen(arg) - 1] = '\0';
        arg++;
    }

    rc = end_section(p);        /* the previous section, under its label */
    if (rc != 0)
        return rc;
    snprintf(p->label, sizeof(p->label), "[%s%s%.*s]", s,
             arg[0] != '\0' ? " " : "", CONFIG_NAME_LEN, arg);
    for (int i = S_DEFAULTS; i <= S_BATCH; i++) {
        if (strcasecmp(s, section_names[i]) == 0)
            sect = (enum section)i;
    }
    if (sect == S_NONE)
        return fail(p, p->label, "unknown section (defaults, endpoint, "
                    "model, offpeak, breaker, batch)");
    if (arg[0] != '\0' && sect != S_ENDPOINT && sect != S_MODEL)
        return fail(p, p->label, "[%s] takes no name", section_names[sect]);

    p->section = sect;
    p->section_line = p->line;
    p->seen = 0;
    p->base = (char *)p->cfg;
    if (sect == S_ENDPOINT)
        return open_endpoint(p, arg);
    if (sect == S_MODEL)
        return open_model(p, arg);
    if (p->single_line[sect] != 0)
        return fail(p, p->label, "given twice (first at line %ld)",
                    p->single_line[sect]);
    p->single_line[sect] = p->line;
    return 0;
}

/* ---- key lines ------------------------------------------------------ */

/* Cuts a " #" comment outside quotes, trims, drops enclosing quotes. */
static char *
clean_value(char *v)
{
    int quoted = 0;
    size_t n;

    for (char *s = v; *s != '\0'; s++) {
        if (*s == '"')
            quoted = !quoted;
        else if (*s == '#' && !quoted && s > v &&
                 (s[-1] == ' ' || s[-1] == '\t')) {
            *s = '\0';
            break;
        }
    }
    v += strspn(v, " \t");
    n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        v[--n] = '\0';
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v[n - 1] = '\0';
        v++;
    }
    return v;
}

/* The allowed keys of the current section, for a message. */
static void
list_keys(const struct parser *p, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < N_KEYS && used < len; i++) {
        if (keys[i].section != p->section)
            continue;
        used += (size_t)snprintf(buf + used, len - used, "%s%s",
                                 used > 0 ? ", " : "", keys[i].key);
    }
}

static int
parse_key_line(struct parser *p, char *s)
{
    char *eq = strchr(s, '=');
    char *key = s, *value;
    char allowed[512];
    size_t klen;
    int rc;

    if (eq == NULL)
        return fail(p, NULL, "expected \"key = value\" or a [section]");
    *eq = '\0';
    klen = strcspn(key, " \t");
    if (key[klen + strspn(key + klen, " \t")] != '\0' || klen == 0)
        return fail(p, NULL, "expected \"key = value\" or a [section]");
    key[klen] = '\0';
    value = clean_value(eq + 1);

    if (p->section == S_NONE)
        return fail(p, key, "outside any [section]");
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct key_def *k = &keys[i];

        if (k->section != p->section || strcasecmp(k->key, key) != 0)
            continue;
        if (p->seen & (1ULL << i))
            return fail(p, k->key, "given twice in %s (first at line %ld)",
                        p->label, p->seen_line[i]);
        if (value[0] == '\0')
            return fail(p, k->key, "empty value");
        rc = set_value(p, k, value);
        if (rc != 0)
            return rc;
        p->seen |= 1ULL << i;
        p->seen_line[i] = p->line;
        if (p->section == S_MODEL && strcmp(k->key, "fallback") == 0)
            p->model_fallback_line[p->cfg->n_models - 1] = p->line;
        if (strcmp(k->key, "cooldown") == 0)
            p->cooldown_line = p->line;
        if (strcmp(k->key, "max_cooldown") == 0)
            p->max_cooldown_line = p->line;
        return 0;
    }
    list_keys(p, allowed, sizeof(allowed));
    return fail(p, key, "unknown key in [%s] (%s)",
                section_names[p->section], allowed);
}

/* ---- the whole file ------------------------------------------------- */

/* A fallback chain that comes back to where it started. */
static int
check_fallbacks(struct parser *p)
{
    const struct config *cfg = p->cfg;

    for (int i = 0; i < cfg->n_models; i++) {
        const struct config_model *m = &cfg->models[i];

        for (int steps = 0; m != NULL && m->fallback[0] != '\0' &&
                            steps <= cfg->n_models; steps++) {
            m = config_model(cfg, m->fallback);
            if (m == &cfg->models[i]) {
                p->line = p->model_fallback_line[i];
                return fail(p, "fallback", "[model %s] falls back to "
                            "itself through other models", m->id);
            }
        }
    }
    return 0;
}

static int
check_whole(struct parser *p)
{
    const struct config_breaker *b = &p->cfg->breaker;

    if (b->max_cooldown_ms < b->cooldown_ms) {
        p->line = p->max_cooldown_line != 0 ? p->max_cooldown_line
                                            : p->cooldown_line;
        return fail(p, p->max_cooldown_line != 0 ? "max_cooldown"
                                                 : "cooldown",
                    "max_cooldown (%llds) is shorter than cooldown (%llds)",
                    (long long)(b->max_cooldown_ms / 1000),
                    (long long)(b->cooldown_ms / 1000));
    }
    return check_fallbacks(p);
}

/* One line, without its end of line. */
static int
parse_line(struct parser *p, char *s)
{
    size_t n;

    s += strspn(s, " \t");
    n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' ||
                     s[n - 1] == '\r'))
        s[--n] = '\0';
    if (n == 0 || s[0] == '#' || s[0] == ';')
        return 0;
    if (s[0] == '[')
        return parse_header(p, s);
    return parse_key_line(p, s);
}

/* The folder of name, made absolute when it can be. */
static void
folder_of(const char *name, char *dir, size_t len)
{
    const char *slash = strrchr(name, '/');
    char cwd[CONFIG_PATH_LEN];

    dir[0] = '\0';
    if (slash == name) {
        snprintf(dir, len, "/");
        return;
    }
    if (slash != NULL && name[0] == '/') {
        snprintf(dir, len, "%.*s", (int)(slash - name), name);
        return;
    }
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return;
    if (slash == NULL)
        snprintf(dir, len, "%s", cwd);
    else
        snprintf(dir, len, "%s/%.*s", cwd, (int)(slash - name), name);
}

static int
parse_lines(struct parser *p, const char *text, size_t len)
{
    char line[LINE_MAX_LEN + 1];
    size_t pos = 0;

    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
        pos = 3;
    while (pos < len) {
        const char *end = memchr(text + pos, '\n', len - pos);
        size_t n = end != NULL ? (size_t)(end - text - pos) : len - pos;
        int rc;

        p->line++;
        if (n > LINE_MAX_LEN)
            return fail(p, NULL, "line longer than %d bytes", LINE_MAX_LEN);
        memcpy(line, text + pos, n);
        line[n] = '\0';
        if (memchr(line, '\0', n) != NULL)
            return fail(p, NULL, "NUL byte in the line");
        rc = parse_line(p, line);
        if (rc != 0)
            return rc;
        pos += n + 1;
    }
    return 0;
}

int
config_parse(const char *text, size_t len, const char *name,
             struct config *cfg, char *err, size_t errlen)
{
    struct parser *p = NULL;
    struct config *out = NULL;
    int rc = NB_ENOMEM;

    p = calloc(1, sizeof(*p));
    out = malloc(sizeof(*out));
    if (p == NULL || out == NULL) {
        snprintf(err, errlen, "%s: out of memory", name);
        goto fail;
    }
    config_init(out);
    snprintf(out->path, sizeof(out->path), "%s", name);
    p->cfg = out;
    p->name = name;
    p->err = err;
    p->errlen = errlen;
    folder_of(name, p->dir, sizeof(p->dir));

    rc = parse_lines(p, text, len);
    if (rc == 0) {
        p->line++;
        rc = end_section(p);
    }
    if (rc == 0)
        rc = check_whole(p);
    if (rc == 0)
        *cfg = *out;

fail:
    free(out);
    free(p);
    return rc;
}

/* ---- files ---------------------------------------------------------- */

void
config_init(struct config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->n_endpoints = 1;
    cfg->breaker.failures = 5;
    cfg->breaker.window = 20;
    cfg->breaker.failure_rate = 0.5;
    cfg->breaker.cooldown_ms = 30 * 1000;
    cfg->breaker.max_cooldown_ms = 10 * 60 * 1000;
}

int
config_default_path(char *buf, size_t len)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");
    int w;

    if (xdg != NULL && xdg[0] == '/')
        w = snprintf(buf, len, "%s/nbbatch/config", xdg);
    else if (home != NULL && home[0] != '\0')
        w = snprintf(buf, len, "%s/.config/nbbatch/config", home);
    else
        return NB_ENOTFOUND;
    return w < 0 || (size_t)w >= len ? NB_ELIMIT : 0;
}

/* The whole file into *text (owned, NUL-terminated). */
static int
read_text(const char *path, char **text, size_t *len, char *err,
          size_t errlen)
{
    struct stat st;
    char *buf = NULL;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc = NB_EIO;

    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT || errno == ENOTDIR ? NB_ENOTFOUND : NB_EIO;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size > CONFIG_FILE_MAX) {
        snprintf(err, errlen, "%s: larger than %d bytes", path,
                 CONFIG_FILE_MAX);
        rc = NB_ELIMIT;
        goto fail;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = NB_ENOMEM;
        goto fail;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "%s: %s", path,
                     n < 0 ? strerror(errno) : "shorter than expected");
            goto fail;
        }
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    *text = buf;
    *len = got;
    return 0;

fail:
    free(buf);
    close(fd);
    return rc;
}

int
config_load(const char *path, struct config *cfg, char *err, size_t errlen)
{
    char def[CONFIG_PATH_LEN];
    char *text = NULL;
    size_t len = 0;
    int given = path != NULL && path[0] != '\0';
    int rc;

    if (!given) {
        rc = config_default_path(def, sizeof(def));
        if (rc == NB_ENOTFOUND) {
            config_init(cfg);
            return 0;
        }
        if (rc != 0) {
            snprintf(err, errlen, "the default config path is too long");
            return rc;
        }
        path = def;
    }
    rc = read_text(path, &text, &len, err, errlen);
    if (rc == NB_ENOTFOUND && !given) {
        config_init(cfg);
        return 0;
    }
    if (rc != 0)
        return rc;
    rc = config_parse(text, len, path, cfg, err, errlen);
    free(text);
    return rc;
}

const struct config_model *
config_model(const struct config *cfg, const char *id)
{
    for (int i = 0; i < cfg->n_models; i++) {
        if (strcmp(cfg->models[i].id, id) == 0)
            return &cfg->models[i];
    }
    return NULL;
}

const char *
config_offpeak_tz(const struct config *cfg)
{
    if (cfg->offpeak_tz[0] != '\0')
        return cfg->offpeak_tz;
    return cfg->tz[0] != '\0' ? cfg->tz : NULL;
}
