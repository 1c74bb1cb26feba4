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

/* Each byte as it goes into a slug: lowercase letter or digit, else 0. */
static const char slug_char[256] = {
    ['0'] = '0', ['1'] = '1', ['2'] = '2', ['3'] = '3', ['4'] = '4',
    ['5'] = '5', ['6'] = '6', ['7'] = '7', ['8'] = '8', ['9'] = '9',
    ['a'] = 'a', ['b'] = 'b', ['c'] = 'c', ['d'] = 'd', ['e'] = 'e',
    ['f'] = 'f', ['g'] = 'g', ['h'] = 'h', ['i'] = 'i', ['j'] = 'j',
    ['k'] = 'k', ['l'] = 'l', ['m'] = 'm', ['n'] = 'n', ['o'] = 'o',
    ['p'] = 'p', ['q'] = 'q', ['r'] = 'r', ['s'] = 's', ['t'] = 't',
    ['u'] = 'u', ['v'] = 'v', ['w'] = 'w', ['x'] = 'x', ['y'] = 'y',
    ['z'] = 'z',
    ['A'] = 'a', ['B'] = 'b', ['C'] = 'c', ['D'] = 'd', ['E'] = 'e',
    ['F'] = 'f', ['G'] = 'g', ['H'] = 'h', ['I'] = 'i', ['J'] = 'j',
    ['K'] = 'k', ['L'] = 'l', ['M'] = 'm', ['N'] = 'n', ['O'] = 'o',
    ['P'] = 'p', ['Q'] = 'q', ['R'] = 'r', ['S'] = 's', ['T'] = 't',
    ['U'] = 'u', ['V'] = 'v', ['W'] = 'w', ['X'] = 'x', ['Y'] = 'y',
    ['Z'] = 'z',
};

/*
 * Lowercase ASCII letters and digits of prompt joined by single '-', in
 * slug; returns its length.  A table lookup per byte: adding a million
 * jobs makes a million slugs.
 */
static size_t
make_slug(const char *prompt, char slug[SLUG_MAX + 1])
{
    const unsigned char *p = (const unsigned char *)(prompt ? prompt : "");
    size_t n = 0;
    int gap = 0;

    for (; *p != '\0'; p++) {
        char c = slug_char[*p];

        if (c == 0) {
            gap = n > 0;
            continue;
        }
        if (n + (size_t)gap + 1 > SLUG_MAX)
            break;
        if (gap)
            slug[n++] = '-';
        slug[n++] = c;
        gap = 0;
    }
    if (n == 0) {
        memcpy(slug, "image", sizeof("image"));
        return sizeof("image") - 1;
    }
    slug[n] = '\0';
    return n;
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
    size_t out_len, need, slug_len = 0;
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
        slug_len = make_slug(prompt, slug);
        need = out_len + 1 + seq_width(seq) + 1 + slug_len + 4;
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
        p = put(p, slug, slug_len);
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
