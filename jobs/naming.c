/*
 * naming.c - the names of output files.
 *
 * Every image lands inside its batch's folder (or the folder its line
 * names): a name given by the user may not hold a '/', may not start with
 * '.' (so neither ".." nor a hidden file), and may hold no control
 * characters; a name made by nbbatch is "<seq>-<slug>.png" where seq is
 * unique within the batch, so two jobs of one batch never share a file.
 * Whether a path is already taken by another job is the queue's business
 * (out_path is unique there); this module only builds strings and never
 * touches the file system.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "jobs/naming.h"
#include "queue/nberr.h"

#define SLUG_MAX 48
#define NAME_MAX_BYTES 200

/* Lowercase ASCII letters and digits of prompt joined by single '-'. */
static void
make_slug(const char *prompt, char slug[SLUG_MAX + 1])
{
    size_t n = 0;
    int gap = 0;

    for (const char *p = prompt != NULL ? prompt : ""; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;

        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            gap = n > 0;
            continue;
        }
        if (n + (size_t)gap + 1 > SLUG_MAX)
            break;
        if (gap)
            slug[n++] = '-';
        slug[n++] = (char)c;
        gap = 0;
    }
    slug[n] = '\0';
    if (n == 0)
        memcpy(slug, "image", sizeof("image"));
}

static int
name_ok(const char *name)
{
    size_t len = strlen(name);

    if (len == 0 || len > NAME_MAX_BYTES || name[0] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];

        if (c == '/' || c < 0x20 || c == 0x7f)
            return 0;
    }
    return 1;
}

static int
has_png_suffix(const char *name)
{
    size_t len = strlen(name);

    return len >= 4 && strcasecmp(name + len - 4, ".png") == 0;
}

/* Decimal digits of v >= 0 printed with at least 6, as "%06" does. */
static size_t
seq_width(int64_t v)
{
    size_t w = 1;

    while (v >= 10) {
        v /= 10;
        w++;
    }
    return w < 6 ? 6 : w;
}

static char *
put(char *p, const char *s, size_t len)
{
    memcpy(p, s, len);
    return p + len;
}

/* Writes v >= 0 in decimal with at least 6 digits, as "%06" would. */
static char *
put_seq(char *p, int64_t v)
{
    char digits[24];
    int n = 0;

    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    while (n < 6)
        digits[n++] = '0';
    while (n > 0)
        *p++ = digits[--n];
    return p;
}

int
naming_path(const char *out, int64_t seq, const char *name,
            const char *prompt, char *path, size_t len)
{
    char slug[SLUG_MAX + 1];
    const char *ext = "";
    size_t out_len, need;
    char *p;

    if (out == NULL || out[0] != '/' || seq < 0)
        return NB_EINVAL;
    if (name != NULL && !name_ok(name))
        return NB_EINVAL;

    out_len = strlen(out);
    while (out_len > 1 && out[out_len - 1] == '/')
        out_len--;
    if (out_len == 1)
        out_len = 0;           /* "/" joins as "/name", not "//name" */

    /* Measured first so that path is untouched when it is too small. */
    if (name != NULL) {
        if (!has_png_suffix(name))
            ext = ".png";
        need = out_len + 1 + strlen(name) + strlen(ext);
    } else {
        make_slug(prompt, slug);
        need = out_len + 1 + seq_width(seq) + 1 + strlen(slug) + 4;
    }
    if (need >= len)
        return NB_ELIMIT;

    /* put together by hand: adding a million jobs calls this a million
     * times, and snprintf was a visible share of it */
    p = put(path, out, out_len);
    *p++ = '/';
    if (name != NULL) {
        p = put(p, name, strlen(name));
        p = put(p, ext, strlen(ext));
    } else {
        p = put_seq(p, seq);
        *p++ = '-';
        p = put(p, slug, strlen(slug));
        p = put(p, ".png", 4);
    }
    *p = '\0';
    return 0;
}

int
naming_with_index(const char *name, int index, char *buf, size_t len)
{
    size_t stem;
    int n;

    if (name == NULL || !name_ok(name) || index < 0)
        return NB_EINVAL;
    stem = strlen(name);
    if (has_png_suffix(name))
        stem -= 4;
    n = snprintf(NULL, 0, "%.*s-%d%s", (int)stem, name, index, name + stem);
    if (n < 0 || (size_t)n >= len)
        return NB_ELIMIT;
    snprintf(buf, len, "%.*s-%d%s", (int)stem, name, index, name + stem);
    return 0;
}

int
naming_tmp_path(const char *path, int64_t job_id, char *tmp, size_t len)
{
    int n = snprintf(NULL, 0, "%s.tmp-%" PRId64, path, job_id);

    if (n < 0 || (size_t)n >= len)
        return NB_ELIMIT;
    snprintf(tmp, len, "%s.tmp-%" PRId64, path, job_id);
    return 0;
}
