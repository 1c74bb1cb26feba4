/*
 * promptfile.c - prompt files, line by line, into validated job entries.
 *
 * A file is read one line at a time (getline, or a memory buffer), so a
 * file of a million prompts costs one line of memory.  Each line picks its
 * own format from its first non-blank bytes: '{' is one JSON object (JSON
 * Lines, parsed with jansson), "--" starts per-line options followed by
 * the prompt, anything else is a prompt; '#' starts a comment and a blank
 * line is skipped.  The line number counts every physical line.
 *
 * An entry starts as the command line's defaults, the line overrides
 * fields, and the whole is validated before the callback sees it: valid
 * UTF-8 everywhere (no overlong forms, no surrogates), no NUL, a prompt of
 * 1..PROMPTFILE_MAX_PROMPT bytes, a model id, an aspect ratio and size the
 * model accepts (sizes normalized to the API's spelling), a count, a
 * priority, times, and no more reference images than the model takes.
 * The first bad line stops the parse with its line number, the field (the
 * JSON key's name in every format) and a message.  Strings in an entry
 * point into the line buffer, the JSON value or static tables; they live
 * until the callback returns.  Reference images are named, never opened.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <time.h>

#include <jansson.h>

#include "jobs/models.h"
#include "jobs/promptfile.h"
#include "queue/nberr.h"

#define PRIORITY_MIN -1000
#define PRIORITY_MAX 1000
#define SHOW_MAX 48            /* bytes of a bad value quoted in messages */

struct parser {
    const struct promptfile_defaults *defaults;
    promptfile_cb cb;
    void *arg;
    struct promptfile_error *err;
    long line;
};

/* An entry being filled from one line. */
struct draft {
    struct promptfile_entry e;
    const char *images[PROMPTFILE_MAX_IMAGES];
};

/* ---- errors --------------------------------------------------------- */

static int
fail(struct parser *p, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
fail(struct parser *p, int code, const char *field, const char *fmt, ...)
{
    va_list ap;

    if (p->err == NULL)
        return code;
    p->err->line = p->line;
    snprintf(p->err->field, sizeof(p->err->field), "%s", field);
    va_start(ap, fmt);
    vsnprintf(p->err->message, sizeof(p->err->message), fmt, ap);
    va_end(ap);
    return code;
}

/*
 * Copies at most SHOW_MAX bytes of s into out, cut on a character
 * boundary, with "..." when cut, for quoting a bad value in a message.
 */
static const char *
show(const char *s, char out[SHOW_MAX + 4])
{
    size_t len = strlen(s);

    if (len <= SHOW_MAX) {
        memcpy(out, s, len + 1);
        return out;
    }
    len = SHOW_MAX;
    while (len > 0 && ((unsigned char)s[len] & 0xc0) == 0x80)
        len--;
    memcpy(out, s, len);
    memcpy(out + len, "...", 4);
    return out;
}

/* ---- UTF-8 ---------------------------------------------------------- */

/*
 * Offset of the first byte of s[0..n) that is not part of well-formed
 * UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above
 * U+10FFFF), or n when all of it is.  ASCII runs go eight bytes a step.
 */
static size_t
utf8_check(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        unsigned char lo = 0x80, hi = 0xbf;
        size_t need;

        if (c < 0x80) {
            uint64_t w;

            while (i + 8 <= n) {
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            if (i < n && s[i] < 0x80)
                i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0)
                lo = 0xa0;         /* shorter forms are overlong */
            else if (c == 0xed)
                hi = 0x9f;         /* U+D800..U+DFFF are surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;         /* nothing above U+10FFFF */
        } else {
            return i;
        }
        if (n - i <= need)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
        }
        i += need + 1;
    }
    return n;
}

/* Checks that s is UTF-8 without NUL; field names it in the error. */
static int
check_text(struct parser *p, const char *field, const char *s, size_t len)
{
    size_t bad = utf8_check((const unsigned char *)s, len);

    if (bad < len)
        return fail(p, NB_EPARSE, field,
                    "invalid UTF-8 (byte 0x%02x at offset %zu)",
                    (unsigned char)s[bad], bad);
    return 0;
}

/* ---- values --------------------------------------------------------- */

/* Parses all of s as a decimal integer within lo..hi into *v. */
static int
parse_int(struct parser *p, const char *field, const char *s, long lo,
          long hi, int *v)
{
    char shown[SHOW_MAX + 4];
    char *end;
    long n;

    errno = 0;
    n = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE ||
        isspace((unsigned char)*s))
        return fail(p, NB_EINVAL, field, "\"%s\" is not a whole number",
                    show(s, shown));
    if (n < lo || n > hi)
        return fail(p, NB_EINVAL, field, "%ld is out of range (%ld..%ld)",
                    n, lo, hi);
    *v = (int)n;
    return 0;
}

static int
set_count(struct parser *p, struct draft *d, long long n)
{
    if (n < 1 || n > PROMPTFILE_MAX_COUNT)
        return fail(p, NB_EINVAL, "count", "%lld is out of range (1..%d)",
                    n, PROMPTFILE_MAX_COUNT);
    d->e.count = (int)n;
    return 0;
}

static int
set_priority(struct parser *p, struct draft *d, long long n)
{
    if (n < PRIORITY_MIN || n > PRIORITY_MAX)
        return fail(p, NB_EINVAL, "priority", "%lld is out of range "
                    "(%d..%d)", n, PRIORITY_MIN, PRIORITY_MAX);
    d->e.priority = (int)n;
    return 0;
}

static int
set_time(struct parser *p, struct draft *d, const char *s)
{
    char shown[SHOW_MAX + 4];

    if (promptfile_parse_time(s, &d->e.not_before_ms) != 0)
        return fail(p, NB_EINVAL, "not_before", "\"%s\" is not a time "
                    "(YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM] or epoch seconds)",
                    show(s, shown));
    return 0;
}

static int
add_image(struct parser *p, struct draft *d, const char *path)
{
    if (d->e.n_images == PROMPTFILE_MAX_IMAGES)
        return fail(p, NB_ELIMIT, "images", "more than %d reference images",
                    PROMPTFILE_MAX_IMAGES);
    if (*path == '\0')
        return fail(p, NB_EINVAL, "images", "empty image path");
    d->images[d->e.n_images++] = path;
    return 0;
}

/* A string field that must not be empty (name, model, out...). */
static int
set_string(struct parser *p, const char *field, const char *s,
           const char **dst)
{
    if (*s == '\0')
        return fail(p, NB_EINVAL, field, "empty value");
    *dst = s;
    return 0;
}

/* ---- whole-entry validation ----------------------------------------- */

/* Writes "a, b, c" of a NULL-terminated list into buf. */
static const char *
join_list(const char *const *list, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (; *list != NULL; list++) {
        int n = snprintf(buf + used, len - used, "%s%s",
                         used > 0 ? ", " : "", *list);

        if (n < 0 || (size_t)n >= len - used)
            break;
        used += (size_t)n;
    }
    return buf;
}

static int
check_model(struct parser *p, struct draft *d)
{
    struct promptfile_entry *e = &d->e;
    const struct model_info *m = models_find(e->model);
    char shown[SHOW_MAX + 4], list[128];
    const char *size;

    if (m == NULL)
        return fail(p, NB_EINVAL, "model", "\"%s\" is not a model id "
                    "(lowercase letters, digits, '.', '-')",
                    show(e->model, shown));
    if (e->aspect != NULL && !models_aspect_ok(m, e->aspect))
        return fail(p, NB_EINVAL, "aspect_ratio", "\"%s\" is not an aspect "
                    "ratio %s accepts (%s)", show(e->aspect, shown),
                    e->model, join_list(m->aspects, list, sizeof(list)));
    if (e->size != NULL) {
        size = models_size_spelling(m, e->size);
        if (size == NULL)
            return fail(p, NB_EINVAL, "image_size", "\"%s\" is not a size "
                        "%s accepts (%s)", show(e->size, shown), e->model,
                        join_list(m->sizes, list, sizeof(list)));
        e->size = size;
    }
    if (e->n_images > (size_t)m->max_refs)
        return fail(p, NB_ELIMIT, "images", "%zu reference images; %s "
                    "takes at most %d", e->n_images, e->model, m->max_refs);
    return 0;
}

static int
check_prompt(struct parser *p, const char *prompt)
{
    size_t len = strlen(prompt);
    size_t i;

    for (i = 0; i < len && isspace((unsigned char)prompt[i]); i++)
        continue;
    if (i == len)
        return fail(p, NB_EINVAL, "prompt", "empty prompt");
    if (len > PROMPTFILE_MAX_PROMPT)
        return fail(p, NB_ELIMIT, "prompt", "%zu bytes; at most %d", len,
                    PROMPTFILE_MAX_PROMPT);
    return check_text(p, "prompt", prompt, len);
}

/* Checks the finished draft and hands it to the callback. */
static int
emit(struct parser *p, struct draft *d)
{
    int rc;

    d->e.line = p->line;
    d->e.images = d->images;
    rc = check_prompt(p, d->e.prompt);
    if (rc == 0)
        rc = check_model(p, d);
    if (rc == 0)
        rc = p->cb(&d->e, p->arg, p->err);
    return rc;
}

static void
draft_init(struct parser *p, struct draft *d)
{
    const struct promptfile_defaults *def = p->defaults;

    memset(&d->e, 0, sizeof(d->e));
    d->e.model = def->model;
    d->e.aspect = def->aspect;
    d->e.size = def->size;
    d->e.count = def->count;
    d->e.priority = def->priority;
    d->e.not_before_ms = def->not_before_ms;
    d->e.offpeak = def->offpeak;
    d->e.via = def->via;
}

/* ---- JSON Lines ------------------------------------------------------ */

static const char json_keys[] = "prompt, name, model, aspect_ratio, "
    "image_size, count, images, priority, not_before, offpeak, out";

/* The string value of v for key into *out, checked as UTF-8. */
static int
json_text(struct parser *p, const char *key, json_t *v, const char **out)
{
    if (!json_is_string(v))
        return fail(p, NB_EINVAL, key, "must be a string");
    *out = json_string_value(v);
    return check_text(p, key, *out, json_string_length(v));
}

static int
json_whole(struct parser *p, const char *key, json_t *v, long long *out)
{
    if (!json_is_integer(v))
        return fail(p, NB_EINVAL, key, "must be a whole number");
    *out = json_integer_value(v);
    return 0;
}

static int
json_images(struct parser *p, struct draft *d, json_t *v)
{
    size_t i;
    json_t *item;
    const char *path;
    int rc;

    if (!json_is_array(v))
        return fail(p, NB_EINVAL, "images", "must be an array of paths");
    json_array_foreach(v, i, item) {
        rc = json_text(p, "images", item, &path);
        if (rc == 0)
            rc = add_image(p, d, path);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int
json_not_before(struct parser *p, struct draft *d, json_t *v)
{
    const char *s;
    int rc;

    if (json_is_integer(v)) {
        json_int_t secs = json_integer_value(v);

        if (secs < 0 || secs > 999999999999LL)   /* as parse_epoch() */
            return fail(p, NB_EINVAL, "not_before", "%lld is not a time",
                        (long long)secs);
        d->e.not_before_ms = (int64_t)secs * 1000;
        return 0;
    }
    rc = json_text(p, "not_before", v, &s);
    if (rc == 0)
        rc = set_time(p, d, s);
    return rc;
}

/* The entry's member for a string-valued key, or NULL. */
static const char **
string_slot(struct promptfile_entry *e, const char *key)
{
    if (strcmp(key, "name") == 0)
        return &e->name;
    if (strcmp(key, "model") == 0)
        return &e->model;
    if (strcmp(key, "aspect_ratio") == 0)
        return &e->aspect;
    if (strcmp(key, "image_size") == 0)
        return &e->size;
    if (strcmp(key, "out") == 0)
        return &e->out;
    return NULL;
}

/* Applies one key of a JSON line to the draft. */
static int
json_field(struct parser *p, struct draft *d, const char *key, json_t *v)
{
    struct promptfile_entry *e = &d->e;
    char shown[SHOW_MAX + 4];
    const char **dst, *s;
    long long n = 0;
    int rc;

    if (json_is_null(v) && strcmp(key, "prompt") != 0)
        return 0;                  /* null: as if the key were absent */
    if (strcmp(key, "prompt") == 0)
        return json_text(p, key, v, &e->prompt);
    if (strcmp(key, "images") == 0)
        return json_images(p, d, v);
    if (strcmp(key, "not_before") == 0)
        return json_not_before(p, d, v);
    if (strcmp(key, "offpeak") == 0) {
        if (!json_is_boolean(v))
            return fail(p, NB_EINVAL, key, "must be true or false");
        e->offpeak = json_is_true(v);
        return 0;
    }
    if (strcmp(key, "count") == 0 || strcmp(key, "priority") == 0) {
        rc = json_whole(p, key, v, &n);
        if (rc != 0)
            return rc;
        return key[0] == 'c' ? set_count(p, d, n) : set_priority(p, d, n);
    }

    dst = string_slot(e, key);
    if (dst == NULL)
        return fail(p, NB_EINVAL, key, "unknown key \"%s\" (keys: %s)",
                    show(key, shown), json_keys);
    rc = json_text(p, key, v, &s);
    if (rc == 0)
        rc = set_string(p, key, s, dst);
    return rc;
}

static int
parse_json_line(struct parser *p, const char *line, size_t len)
{
    struct draft d;
    json_error_t jerr;
    json_t *root, *v;
    const char *key;
    int rc = 0;

    root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return fail(p, NB_EPARSE, "json", "%s at column %d (a prompt that "
                    "starts with '{' needs \"-- \" before it)", jerr.text,
                    jerr.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(p, NB_EPARSE, "json", "not a JSON object");
    }

    draft_init(p, &d);
    json_object_foreach(root, key, v) {
        rc = json_field(p, &d, key, v);
        if (rc != 0)
            goto done;
    }
    if (d.e.prompt == NULL) {
        rc = fail(p, NB_EINVAL, "prompt", "missing (every line needs "
                  "\"prompt\")");
        goto done;
    }
    rc = emit(p, &d);
done:
    json_decref(root);
    return rc;
}

/* ---- per-line options ------------------------------------------------ */

enum line_opt {
    OPT_ASPECT, OPT_SIZE, OPT_COUNT, OPT_MODEL, OPT_PRIORITY, OPT_IMAGE,
    OPT_NAME, OPT_NOT_BEFORE, OPT_OFFPEAK, OPT_OUT
};

static const struct {
    const char *name;
    int id;
    const char *field;
} line_opts[] = {
    {"aspect", OPT_ASPECT, "aspect_ratio"},
    {"aspect-ratio", OPT_ASPECT, "aspect_ratio"},
    {"size", OPT_SIZE, "image_size"},
    {"image-size", OPT_SIZE, "image_size"},
    {"count", OPT_COUNT, "count"},
    {"model", OPT_MODEL, "model"},
    {"priority", OPT_PRIORITY, "priority"},
    {"image", OPT_IMAGE, "images"},
    {"name", OPT_NAME, "name"},
    {"not-before", OPT_NOT_BEFORE, "not_before"},
    {"offpeak", OPT_OFFPEAK, "offpeak"},
    {"out", OPT_OUT, "out"},
};

#define N_LINE_OPTS (sizeof(line_opts) / sizeof(line_opts[0]))

static int
is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static char *
skip_blanks(char *s)
{
    while (is_blank(*s))
        s++;
    return s;
}

/*
 * Reads the word at *pp, which is not blank, in place: a double-quoted
 * word loses its quotes and its backslash escapes (\" and \\), a bare word
 * ends at a blank.  The word is NUL-terminated and *pp moves past it.
 */
static int
take_word(struct parser *p, const char *field, char **pp, char **word)
{
    char *src = *pp, *dst;

    if (*src != '"') {
        *word = src;
        while (*src != '\0' && !is_blank(*src))
            src++;
        if (*src != '\0')
            *src++ = '\0';
        *pp = src;
        return 0;
    }

    *word = dst = src++;
    for (;;) {
        if (*src == '\0')
            return fail(p, NB_EPARSE, field, "missing closing quote");
        if (*src == '"')
            break;
        if (*src == '\\' && (src[1] == '"' || src[1] == '\\'))
            src++;
        *dst++ = *src++;
    }
    src++;
    if (*src != '\0' && !is_blank(*src))
        return fail(p, NB_EPARSE, field, "text right after a closing quote");
    *dst = '\0';
    *pp = src;
    return 0;
}

static int
apply_option(struct parser *p, struct draft *d, int id, const char *field,
             char *value)
{
    struct promptfile_entry *e = &d->e;
    int n, rc;

    rc = check_text(p, field, value, strlen(value));
    if (rc != 0)
        return rc;
    switch (id) {
    case OPT_COUNT:
        rc = parse_int(p, field, value, 1, PROMPTFILE_MAX_COUNT, &n);
        if (rc == 0)
            e->count = n;
        return rc;
    case OPT_PRIORITY:
        rc = parse_int(p, field, value, PRIORITY_MIN, PRIORITY_MAX, &n);
        if (rc == 0)
            e->priority = n;
        return rc;
    case OPT_IMAGE:
        return add_image(p, d, value);
    case OPT_NOT_BEFORE:
        return set_time(p, d, value);
    case OPT_ASPECT:
        return set_string(p, field, value, &e->aspect);
    case OPT_SIZE:
        return set_string(p, field, value, &e->size);
    case OPT_MODEL:
        return set_string(p, field, value, &e->model);
    case OPT_NAME:
        return set_string(p, field, value, &e->name);
    default:
        return set_string(p, field, value, &e->out);
    }
}

/* Reads one "--option [value]" at *pp (which points at the "--"). */
static int
take_option(struct parser *p, struct draft *d, char **pp)
{
    char *name = *pp + 2, *end = name, *value = NULL;
    char shown[SHOW_MAX + 4];
    size_t i;
    int rc;

    while (*end != '\0' && !is_blank(*end) && *end != '=')
        end++;
    for (i = 0; i < N_LINE_OPTS; i++) {
        if (strlen(line_opts[i].name) == (size_t)(end - name) &&
            memcmp(line_opts[i].name, name, (size_t)(end - name)) == 0)
            break;
    }
    if (i == N_LINE_OPTS) {
        *end = '\0';
        if (check_text(p, "option", name, strlen(name)) != 0)
            return NB_EPARSE;
        return fail(p, NB_EINVAL, "option", "unknown option \"--%s\"",
                    show(name, shown));
    }

    if (line_opts[i].id == OPT_OFFPEAK) {
        if (*end == '=')
            return fail(p, NB_EINVAL, "offpeak", "--offpeak takes no value");
        d->e.offpeak = 1;
        *pp = end;
        return 0;
    }
    *pp = *end == '=' ? end + 1 : skip_blanks(end);
    if (**pp == '\0')
        return fail(p, NB_EINVAL, line_opts[i].field, "--%s needs a value",
                    line_opts[i].name);
    rc = take_word(p, line_opts[i].field, pp, &value);
    if (rc == 0)
        rc = apply_option(p, d, line_opts[i].id, line_opts[i].field, value);
    return rc;
}

static int
parse_option_line(struct parser *p, char *line)
{
    struct draft d;
    char *s = line;
    int rc;

    draft_init(p, &d);
    for (;;) {
        s = skip_blanks(s);
        if (s[0] != '-' || s[1] != '-')
            break;                 /* the prompt starts here */
        if (s[2] == '\0' || is_blank(s[2])) {
            s = skip_blanks(s + 2);
            break;                 /* "--" ends the options */
        }
        rc = take_option(p, &d, &s);
        if (rc != 0)
            return rc;
    }
    if (*s == '\0')
        return fail(p, NB_EINVAL, "prompt", "missing after the options");
    d.e.prompt = s;
    return emit(p, &d);
}

/* ---- lines ---------------------------------------------------------- */

static int
parse_plain_line(struct parser *p, const char *line)
{
    struct draft d;

    draft_init(p, &d);
    d.e.prompt = line;
    return emit(p, &d);
}

/*
 * One physical line, without its '\n', NUL-terminated at line[len] and
 * writable (options are unquoted in place).
 */
static int
parse_line(struct parser *p, char *line, size_t len)
{
    char *s;

    if (len > 0 && line[len - 1] == '\r')
        line[--len] = '\0';
    if (p->line == 1 && len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
        /* a byte order mark from an editor would hide a first JSON line */
        line += 3;
        len -= 3;
    }
    if (len > PROMPTFILE_MAX_LINE)
        return fail(p, NB_ELIMIT, "line", "%zu bytes; at most %d", len,
                    PROMPTFILE_MAX_LINE);
    s = skip_blanks(line);
    if (*s == '\0' || *s == '#')
        return 0;
    if (*s == '{')
        return parse_json_line(p, s, len - (size_t)(s - line));

    /* A NUL would cut a C string short without anyone noticing. */
    if (memchr(s, '\0', len - (size_t)(s - line)) != NULL)
        return fail(p, NB_EPARSE, s[0] == '-' && s[1] == '-' ? "line" :
                    "prompt", "contains a NUL byte");
    while (len > 0 && is_blank(line[len - 1]))
        line[--len] = '\0';
    if (s[0] == '-' && s[1] == '-')
        return parse_option_line(p, s);
    return parse_plain_line(p, s);
}

static void
parser_init(struct parser *p, const struct promptfile_defaults *d,
            promptfile_cb cb, void *arg, struct promptfile_error *err)
{
    p->defaults = d;
    p->cb = cb;
    p->arg = arg;
    p->err = err;
    p->line = 0;
    if (err != NULL)
        memset(err, 0, sizeof(*err));
}

int
promptfile_parse(FILE *in, const struct promptfile_defaults *d,
                 promptfile_cb cb, void *arg, struct promptfile_error *err)
{
    struct parser p;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;

    parser_init(&p, d, cb, arg, err);
    while ((n = getline(&buf, &cap, in)) >= 0) {
        p.line++;
        if (n > 0 && buf[n - 1] == '\n')
            buf[--n] = '\0';
        rc = parse_line(&p, buf, (size_t)n);
        if (rc != 0)
            break;
    }
    if (rc == 0 && ferror(in)) {
        p.line++;
        rc = fail(&p, NB_EIO, "", "read error: %s", strerror(errno));
    }
    free(buf);
    return rc;
}

int
promptfile_parse_buf(const char *buf, size_t len,
                     const struct promptfile_defaults *d,
                     promptfile_cb cb, void *arg,
                     struct promptfile_error *err)
{
    struct parser p;
    char *line = NULL;
    size_t cap = 0, pos = 0;
    int rc = 0;

    parser_init(&p, d, cb, arg, err);
    while (pos < len && rc == 0) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t n = nl != NULL ? (size_t)(nl - (buf + pos)) : len - pos;

        if (n + 1 > cap) {
            char *grown = realloc(line, n + 1);

            if (grown == NULL) {
                rc = fail(&p, NB_ENOMEM, "", "out of memory");
                break;
            }
            line = grown;
            cap = n + 1;
        }
        memcpy(line, buf + pos, n);
        line[n] = '\0';
        p.line++;
        rc = parse_line(&p, line, n);
        pos += n + 1;
    }
    free(line);
    return rc;
}

/* ---- times ----------------------------------------------------------- */

/* Reads exactly width digits at *pp into *v. */
static int
digits(const char **pp, int width, int *v)
{
    int n = 0;

    for (int i = 0; i < width; i++) {
        if (!isdigit((unsigned char)(*pp)[i]))
            return -1;
        n = n * 10 + ((*pp)[i] - '0');
    }
    *pp += width;
    *v = n;
    return 0;
}

static int
days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30,
                               31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;

    return month == 2 && leap ? 29 : days[month - 1];
}

/* "Z", "+HH:MM", "-HHMM" or "" (local) at s: *utc and *offset_s. */
static int
parse_zone(const char *s, int *utc, long *offset_s)
{
    int sign, hh, mm;

    *utc = 0;
    *offset_s = 0;
    if (*s == '\0')
        return 0;
    if ((s[0] == 'Z' || s[0] == 'z') && s[1] == '\0') {
        *utc = 1;
        return 0;
    }
    if (*s != '+' && *s != '-')
        return -1;
    sign = *s++ == '-' ? -1 : 1;
    if (digits(&s, 2, &hh) != 0)
        return -1;
    if (*s == ':')
        s++;
    if (digits(&s, 2, &mm) != 0 || *s != '\0' || hh > 23 || mm > 59)
        return -1;
    *utc = 1;
    *offset_s = sign * (hh * 3600L + mm * 60L);
    return 0;
}

static int
parse_epoch(const char *s, int64_t *ms)
{
    int64_t secs = 0;
    size_t len = strlen(s);

    if (len == 0 || len > 12)
        return NB_EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return NB_EINVAL;
        secs = secs * 10 + (s[i] - '0');
    }
    *ms = secs * 1000;
    return 0;
}

int
promptfile_parse_time(const char *s, int64_t *ms)
{
    struct tm tm;
    int year, mon, day, hh, mm, ss = 0, utc;
    long offset_s;
    time_t t;

    if (s == NULL)
        return NB_EINVAL;
    if (parse_epoch(s, ms) == 0)
        return 0;

    if (digits(&s, 4, &year) != 0 || *s++ != '-' ||
        digits(&s, 2, &mon) != 0 || *s++ != '-' ||
        digits(&s, 2, &day) != 0 || (*s != 'T' && *s != 't' && *s != ' '))
        return NB_EINVAL;
    s++;
    if (digits(&s, 2, &hh) != 0 || *s++ != ':' || digits(&s, 2, &mm) != 0)
        return NB_EINVAL;
    if (*s == ':') {
        s++;
        if (digits(&s, 2, &ss) != 0)
            return NB_EINVAL;
        if (*s == '.') {           /* fractions of a second: dropped */
            do {
                s++;
            } while (isdigit((unsigned char)*s));
        }
    }
    if (parse_zone(s, &utc, &offset_s) != 0)
        return NB_EINVAL;
    if (year < 1970 || mon < 1 || mon > 12 || day < 1 ||
        day > days_in_month(year, mon) || hh > 23 || mm > 59 || ss > 59)
        return NB_EINVAL;

    memset(&tm, 0, sizeof(tm));
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = ss;
    tm.tm_isdst = -1;
    t = utc ? timegm(&tm) : mktime(&tm);
    if (t == (time_t)-1)
        return NB_EINVAL;
    *ms = ((int64_t)t - offset_s) * 1000;
    return 0;
}
