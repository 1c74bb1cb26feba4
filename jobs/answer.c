/*
 * answer.c - reading a generateContent answer as it streams in, and
 * sorting the outcome into the classes of the wire reference.
 *
 * answer_feed() runs a small JSON scanner over the bytes, a state machine
 * that does not care where the chunks are cut.  It copies every byte into
 * the "skeleton" except the contents of one kind of string: the value of
 * a key "data" that sits directly in an object which is itself the value
 * of a key "inlineData" or "inline_data".  Such a string (a base64 image,
 * 10-30 MB at 4K) is un-escaped, read in either base64 alphabet (standard
 * or url-safe), decoded as it arrives and written through a 192 KiB buffer
 * to an unlinked temporary file, one file ("blob") per string; in the
 * skeleton its contents become "@nbblob:N".  A "data" string anywhere else
 * stays in the skeleton whatever its size.
 *
 * The decoding has two paths.  The fast one takes a run of plain base64
 * in the caller's buffer four characters at a time, through four 256-entry
 * tables that give each character's bits already shifted into place (and
 * a flag bit for anything else), and writes three bytes per group
 * straight into the write buffer; it stops before the first group with
 * another byte in it.  The slow one takes what is left a character at a
 * time into a small holding buffer: escapes, white space, padding, bad
 * bytes and groups cut by the end of a chunk.  A group in the holding
 * buffer is decoded as soon as it is whole, so the fast path starts again
 * at the next group.  Both paths use the same tables.  Padding is checked
 * here and may be left out.  The write buffer is a multiple of three bytes
 * and of the page size, so every write() but the last is whole pages.
 *
 * Invariants: the skeleton is NUL-terminated and at most 4 MiB; an answer
 * holds at most 32 blobs; the memory of an answer is its skeleton plus the
 * write buffer, taken with its first blob.  Between calls the holding
 * buffer has 0 to 3 characters.  Bad base64 marks its blob and never
 * stops the feed.  The scanner checks no JSON grammar:
 * jansson does that on the skeleton in answer_classify().  Every string
 * written to an answer_result is one NUL-terminated line of valid UTF-8.
 * Nothing here prints, exits or sleeps.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "jobs/answer.h"
#include "queue/nberr.h"

#define SKEL_MAX        (4u * 1024 * 1024)
#define SKEL_START      4096
#define MAX_BLOBS       32
#define MAX_DEPTH       64
#define KEY_MAX         16
#define WBUF_SIZE       (3 * 64 * 1024) /* decoded bytes per write() */
#define BLOB_MARK       "@nbblob:"
#define QUOTA_LONG_MS   (120 * 1000)    /* longer waits: per-day quota */
#define SECONDS_DIGITS  12              /* Duration max: 315576000000 s */

enum key_kind { KEY_OTHER, KEY_DATA, KEY_INLINE };
enum str_mode { STR_NONE, STR_VALUE, STR_KEY, STR_BLOB };
enum esc_state { ESC_NONE, ESC_BACKSLASH, ESC_HEX };

/* Base64 byte classes in b64_map[]; above them, the character to keep. */
#define B64_BAD     0x00    /* no base64 character */
#define B64_SKIP    0x01    /* white space */
#define B64_STOP    0x02    /* '"' or '\\': the slow path decides */
#define B64_PAD     0x03    /* '=': the slow path checks where it is */

#define KEEP(c) [c] = c
static const unsigned char b64_map[256] = {
    KEEP('A'), KEEP('B'), KEEP('C'), KEEP('D'), KEEP('E'), KEEP('F'),
    KEEP('G'), KEEP('H'), KEEP('I'), KEEP('J'), KEEP('K'), KEEP('L'),
    KEEP('M'), KEEP('N'), KEEP('O'), KEEP('P'), KEEP('Q'), KEEP('R'),
    KEEP('S'), KEEP('T'), KEEP('U'), KEEP('V'), KEEP('W'), KEEP('X'),
    KEEP('Y'), KEEP('Z'), KEEP('a'), KEEP('b'), KEEP('c'), KEEP('d'),
    KEEP('e'), KEEP('f'), KEEP('g'), KEEP('h'), KEEP('i'), KEEP('j'),
    KEEP('k'), KEEP('l'), KEEP('m'), KEEP('n'), KEEP('o'), KEEP('p'),
    KEEP('q'), KEEP('r'), KEEP('s'), KEEP('t'), KEEP('u'), KEEP('v'),
    KEEP('w'), KEEP('x'), KEEP('y'), KEEP('z'), KEEP('0'), KEEP('1'),
    KEEP('2'), KEEP('3'), KEEP('4'), KEEP('5'), KEEP('6'), KEEP('7'),
    KEEP('8'), KEEP('9'), KEEP('+'), KEEP('/'),
    ['-'] = '+', ['_'] = '/',                   /* the url-safe alphabet */
    [' '] = B64_SKIP, ['\t'] = B64_SKIP, ['\n'] = B64_SKIP,
    ['\r'] = B64_SKIP, ['='] = B64_PAD, ['"'] = B64_STOP,
    ['\\'] = B64_STOP,
};
#undef KEEP

/*
 * The decoding tables: b64_bits[k][c] is the six bits of character c
 * (either alphabet) shifted to where the k-th character of a group puts
 * them in the group's 24 bits, or B64_NOT_ALPHABET.  Made by the
 * preprocessor from one definition, so the four cannot disagree.
 */
#define B64_NOT_ALPHABET 0x80000000u
#define B64_VALUE(c) \
    ((c) >= 'A' && (c) <= 'Z' ? (c) - 'A' : \
     (c) >= 'a' && (c) <= 'z' ? (c) - 'a' + 26 : \
     (c) >= '0' && (c) <= '9' ? (c) - '0' + 52 : \
     (c) == '+' || (c) == '-' ? 62 : \
     (c) == '/' || (c) == '_' ? 63 : -1)
#define B64_BITS(c, shift) \
    (B64_VALUE(c) < 0 ? B64_NOT_ALPHABET : (uint32_t)B64_VALUE(c) << (shift))
#define B64_ROW4(c, s) \
    B64_BITS(c, s), B64_BITS((c) + 1, s), B64_BITS((c) + 2, s), \
    B64_BITS((c) + 3, s)
#define B64_ROW16(c, s) \
    B64_ROW4(c, s), B64_ROW4((c) + 4, s), B64_ROW4((c) + 8, s), \
    B64_ROW4((c) + 12, s)
#define B64_ROW64(c, s) \
    B64_ROW16(c, s), B64_ROW16((c) + 16, s), B64_ROW16((c) + 32, s), \
    B64_ROW16((c) + 48, s)
#define B64_TABLE(s) \
    { B64_ROW64(0, s), B64_ROW64(64, s), B64_ROW64(128, s), \
      B64_ROW64(192, s) }
static const uint32_t b64_bits[4][256] = {
    B64_TABLE(18), B64_TABLE(12), B64_TABLE(6), B64_TABLE(0)
};
#undef B64_TABLE
#undef B64_ROW64
#undef B64_ROW16
#undef B64_ROW4
#undef B64_BITS
#undef B64_VALUE

/* One open container of the JSON being scanned. */
struct level {
    unsigned char is_object;
    unsigned char expect_key;   /* objects: the next string is a key */
    unsigned char is_inline;    /* the value of inlineData/inline_data */
    unsigned char key;          /* enum key_kind of the member at hand */
};

/* One decoded data string. */
struct blob {
    int fd;
    int bad;                    /* 1: not valid base64 */
    int64_t bytes;              /* decoded bytes written */
};

struct answer {
    char *tmpdir;
    char *skel;                 /* NUL-terminated */
    size_t skel_len;
    size_t skel_cap;
    int failed;                 /* sticky NB_E code of answer_feed() */
    int failed_errno;

    struct level levels[MAX_DEPTH];
    size_t depth;               /* may pass MAX_DEPTH: deeper is ignored */
    int str;                    /* enum str_mode */
    int esc;                    /* enum esc_state */
    unsigned hex_value;
    int hex_digits;
    char key[KEY_MAX];
    size_t key_len;
    int key_odd;                /* 1: the key cannot be one we look for */

    struct blob blobs[MAX_BLOBS];
    size_t n_blobs;
    unsigned char b64_in[4];    /* a group begun on the slow path */
    size_t b64_in_len;          /* 0 to 3 between calls */
    unsigned b64_pads;          /* '=' seen at the end of the blob */
    unsigned char *wbuf;        /* WBUF_SIZE bytes */
    size_t wbuf_len;
};

/* ---- one-line text for answer_result ---------------------------------- */

/* Length of the valid UTF-8 character at s (n bytes left), 0 if invalid. */
static size_t
utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (n < len)
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

/* Cuts dst (of capacity cap) to end in "..." at a character boundary. */
static void
line_cut(char *dst, size_t cap, size_t len)
{
    size_t at;

    if (cap < 4) {
        dst[0] = '\0';
        return;
    }
    at = len < cap - 4 ? len : cap - 4;
    while (at > 0 && ((unsigned char)dst[at] & 0xc0) == 0x80)
        at--;
    memcpy(dst + at, "...", 4);
}

/*
 * Appends n bytes of src to the NUL-terminated dst as one line: control
 * characters turn into spaces, runs of spaces into one, bytes that are no
 * UTF-8 into '?'.  What does not fit is cut, and "..." says so.
 */
static void
line_addn(char *dst, size_t cap, const char *src, size_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t len = strlen(dst);
    size_t i = 0;

    while (i < n) {
        size_t unit = utf8_len(s + i, n - i);
        const char *put = (const char *)s + i;

        if (s[i] < 0x20 || s[i] == 0x7f || s[i] == ' ') {
            if (len == 0 || dst[len - 1] == ' ') {
                i++;
                continue;
            }
            put = " ";
            unit = 1;
        } else if (unit == 0) {
            put = "?";
            unit = 1;
        }
        if (len + unit >= cap) {
            line_cut(dst, cap, len);
            return;
        }
        memcpy(dst + len, put, unit);
        len += unit;
        dst[len] = '\0';
        i += unit;
    }
}

static void
line_add(char *dst, size_t cap, const char *src)
{
    if (src != NULL)
        line_addn(dst, cap, src, strlen(src));
}

/* printf into the end of dst, as one line. */
static void
line_addf(char *dst, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
line_addf(char *dst, size_t cap, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    line_addn(dst, cap, buf, (size_t)n < sizeof(buf) ? (size_t)n
                                                      : sizeof(buf) - 1);
}

static void
line_set(char *dst, size_t cap, const char *src)
{
    dst[0] = '\0';
    line_add(dst, cap, src);
}

/* Drops trailing spaces. */
static void
line_trim(char *dst)
{
    size_t len = strlen(dst);

    while (len > 0 && dst[len - 1] == ' ')
        dst[--len] = '\0';
}

/* ---- small parsers ----------------------------------------------------- */

/*
 * Reads "[0-9]+(\.[0-9]+)?" at s into milliseconds, rounded up; *end is
 * set past it.  At most SECONDS_DIGITS whole digits and max_frac
 * fractional ones.  Returns 0 or NB_EINVAL.
 */
static int
parse_seconds(const char *s, const char **end, int max_frac, int64_t *ms)
{
    int64_t whole = 0, frac_ms = 0;
    int digits = 0, frac = 0, rest = 0;

    while (isdigit((unsigned char)*s)) {
        if (++digits > SECONDS_DIGITS)
            return NB_EINVAL;
        whole = whole * 10 + (*s++ - '0');
    }
    if (digits == 0)
        return NB_EINVAL;
    if (*s == '.') {
        s++;
        while (isdigit((unsigned char)*s)) {
            if (++frac > max_frac)
                return NB_EINVAL;
            if (frac <= 3)
                frac_ms = frac_ms * 10 + (*s - '0');
            else if (*s != '0')
                rest = 1;
            s++;
        }
        if (frac == 0)
            return NB_EINVAL;
        for (int i = frac; i < 3; i++)
            frac_ms *= 10;
    }
    *end = s;
    *ms = whole * 1000 + frac_ms + rest;
    return 0;
}

int
answer_parse_duration(const char *s, int64_t *ms)
{
    const char *end;
    int64_t v;

    if (s == NULL || ms == NULL)
        return NB_EINVAL;
    if (parse_seconds(s, &end, 9, &v) != 0)
        return NB_EINVAL;
    if (end[0] != 's' || end[1] != '\0')
        return NB_EINVAL;
    *ms = v;
    return 0;
}

/* An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as a time_t, or -1. */
static time_t
parse_http_date(const char *s)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    struct tm tm;
    char mon[4], zone[4], tail;
    const char *comma = strchr(s, ',');
    const char *m;
    int n;

    if (comma == NULL)
        return -1;
    memset(&tm, 0, sizeof(tm));
    n = sscanf(comma + 1, " %2d %3s %4d %2d:%2d:%2d %3s %c", &tm.tm_mday,
               mon, &tm.tm_year, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, zone,
               &tail);
    if (n != 7 || strcmp(zone, "GMT") != 0 || strlen(mon) != 3)
        return -1;
    m = strstr(months, mon);
    if (m == NULL || (m - months) % 3 != 0)
        return -1;
    if (tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_year < 1970 ||
        tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60 ||
        tm.tm_hour < 0 || tm.tm_min < 0 || tm.tm_sec < 0)
        return -1;
    tm.tm_mon = (int)((m - months) / 3);
    tm.tm_year -= 1900;
    return timegm(&tm);
}

/* The Retry-After header (seconds or an HTTP date) in ms, or -1. */
static int64_t
retry_after_ms(const char *h)
{
    const char *end;
    int64_t ms;
    time_t when, now;

    if (h == NULL)
        return -1;
    while (*h == ' ' || *h == '\t')
        h++;
    if (isdigit((unsigned char)*h)) {
        if (parse_seconds(h, &end, 0, &ms) != 0)
            return -1;
        while (*end == ' ' || *end == '\t')
            end++;
        return *end == '\0' ? ms : -1;
    }
    when = parse_http_date(h);
    if (when == (time_t)-1)
        return -1;
    now = time(NULL);
    return when > now ? (int64_t)(when - now) * 1000 : 0;
}

/* "Please retry in 7.96s." in an error message, in ms, or -1. */
static int64_t
message_retry_ms(const char *msg)
{
    static const char lead[] = "Please retry in ";
    const char *p = msg != NULL ? strstr(msg, lead) : NULL;
    const char *end;
    int64_t ms;

    if (p == NULL)
        return -1;
    if (parse_seconds(p + sizeof(lead) - 1, &end, 18, &ms) != 0)
        return -1;
    if (end[0] == 'm' && end[1] == 's')
        return (ms + 999) / 1000;
    return end[0] == 's' ? ms : -1;
}

/* ---- the streaming scanner ------------------------------------------- */

struct answer *
answer_new(const char *tmpdir)
{
    struct answer *a = calloc(1, sizeof(*a));

    if (a == NULL)
        return NULL;
    if (tmpdir == NULL || tmpdir[0] == '\0')
        tmpdir = getenv("TMPDIR");
    if (tmpdir == NULL || tmpdir[0] == '\0')
        tmpdir = "/tmp";
    a->tmpdir = strdup(tmpdir);
    a->skel = malloc(SKEL_START);
    if (a->tmpdir == NULL || a->skel == NULL) {
        answer_free(a);
        return NULL;
    }
    a->skel_cap = SKEL_START;
    a->skel[0] = '\0';
    return a;
}

void
answer_free(struct answer *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->n_blobs; i++)
        if (a->blobs[i].fd >= 0)
            close(a->blobs[i].fd);
    free(a->wbuf);
    free(a->skel);
    free(a->tmpdir);
    free(a);
}

static int
feed_fail(struct answer *a, int code)
{
    if (a->failed == 0) {
        a->failed = code;
        a->failed_errno = errno;
    }
    return code;
}


/* Appends to the skeleton; past SKEL_MAX keeps what fits: NB_ELIMIT. */
static int
skel_add(struct answer *a, const void *p, size_t n)
{
    size_t keep = SKEL_MAX - a->skel_len;

    if (keep > n)
        keep = n;
    if (a->skel_len + keep + 1 > a->skel_cap) {
        size_t cap = a->skel_cap;
        char *grown;

        while (cap < a->skel_len + keep + 1)
            cap *= 2;
        if (cap > SKEL_MAX + 1)
            cap = SKEL_MAX + 1;
        grown = realloc(a->skel, cap);
        if (grown == NULL)
            return feed_fail(a, NB_ENOMEM);
        a->skel = grown;
        a->skel_cap = cap;
    }
    if (keep > 0)
        memcpy(a->skel + a->skel_len, p, keep);
    a->skel_len += keep;
    a->skel[a->skel_len] = '\0';
    return keep < n ? feed_fail(a, NB_ELIMIT) : 0;
}

/* An unlinked file in dir, open for reading and writing, or -1. */
static int
tmp_open(const char *dir)
{
    char path[4096];
    int fd, n;

#ifdef O_TMPFILE
    fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
#endif
    n = snprintf(path, sizeof(path), "%s/nbbatch-answer-XXXXXX", dir);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0)
        unlink(path);
    return fd;
}

static struct blob *
blob_cur(struct answer *a)
{
    return &a->blobs[a->n_blobs - 1];
}

/* Opens the next blob and puts its marker, with the quote, in the
 * skeleton. */
static int
blob_start(struct answer *a)
{
    struct blob *b;
    char mark[32];
    int n;

    if (a->n_blobs == MAX_BLOBS)
        return feed_fail(a, NB_ELIMIT);
    if (a->wbuf == NULL)
        a->wbuf = malloc(WBUF_SIZE);
    if (a->wbuf == NULL)
        return feed_fail(a, NB_ENOMEM);
    b = &a->blobs[a->n_blobs];
    b->bad = 0;
    b->bytes = 0;
    b->fd = tmp_open(a->tmpdir);
    if (b->fd < 0)
        return feed_fail(a, NB_EIO);
    n = snprintf(mark, sizeof(mark), "\"%s%zu", BLOB_MARK, a->n_blobs);
    a->n_blobs++;
    a->b64_in_len = 0;
    a->b64_pads = 0;
    a->wbuf_len = 0;
    return skel_add(a, mark, (size_t)n);
}

/* Writes the decoded bytes held in wbuf to the blob's file. */
static int
blob_flush(struct answer *a)
{
    struct blob *b = blob_cur(a);
    size_t off = 0;

    while (off < a->wbuf_len) {
        ssize_t n = write(b->fd, a->wbuf + off, a->wbuf_len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = ENOSPC;
            return feed_fail(a, NB_EIO);
        }
        off += (size_t)n;
    }
    b->bytes += (int64_t)a->wbuf_len;
    a->wbuf_len = 0;
    return 0;
}

/*
 * Decodes up to groups groups of four characters from in to out, three
 * bytes each, and stops before the first group holding a byte outside
 * both alphabets.  Returns the groups decoded.
 */
static size_t
b64_decode(unsigned char *restrict out, const unsigned char *restrict in,
           size_t groups)
{
    size_t done;

    for (done = 0; done < groups; done++) {
        uint32_t bits = b64_bits[0][in[0]] | b64_bits[1][in[1]] |
                        b64_bits[2][in[2]] | b64_bits[3][in[3]];

        if (bits & B64_NOT_ALPHABET)
            break;
        out[0] = (unsigned char)(bits >> 16);
        out[1] = (unsigned char)(bits >> 8);
        out[2] = (unsigned char)bits;
        in += 4;
        out += 3;
    }
    return done;
}

/*
 * Decodes the group in b64_in, characters missing taken as 'A' (zero
 * bits), into wbuf and keeps its first keep bytes; empties b64_in.
 */
static int
blob_group(struct answer *a, size_t keep)
{
    struct blob *b = blob_cur(a);

    memset(a->b64_in + a->b64_in_len, 'A', 4 - a->b64_in_len);
    a->b64_in_len = 0;
    if (b->bad)
        return 0;
    if (WBUF_SIZE - a->wbuf_len < 3 && blob_flush(a) != 0)
        return a->failed;
    /* b64_in holds only characters of the alphabet, so this holds. */
    if (b64_decode(a->wbuf + a->wbuf_len, a->b64_in, 1) != 1)
        b->bad = 1;
    else
        a->wbuf_len += keep;
    return 0;
}

/* One character of the alphabet for b64_in; a whole group is decoded. */
static int
blob_put(struct answer *a, unsigned char ch)
{
    a->b64_in[a->b64_in_len++] = ch;
    return a->b64_in_len == 4 ? blob_group(a, 3) : 0;
}

/* One un-escaped character of a blob (-1: none that base64 has). */
static int
blob_char(struct answer *a, int ch)
{
    unsigned char m = ch < 0 || ch > 0x7f ? B64_BAD : b64_map[ch];

    if (m == B64_SKIP)
        return 0;
    if (m == B64_PAD) {
        a->b64_pads++;
        return 0;
    }
    if (m == B64_BAD || m == B64_STOP || a->b64_pads > 0) {
        blob_cur(a)->bad = 1;       /* text after the padding is bad too */
        return 0;
    }
    return blob_put(a, m);
}

/*
 * The fast path proper: decodes the whole groups of plain base64 at
 * p[*at..len) straight into wbuf, up to the first group with another
 * byte in it.  Call it only between groups (b64_in empty).
 */
static int
blob_run(struct answer *a, const unsigned char *p, size_t len, size_t *at)
{
    size_t pos = *at;

    while (len - pos >= 4) {
        size_t want = (len - pos) / 4;
        size_t room = (WBUF_SIZE - a->wbuf_len) / 3;
        size_t got;

        if (room == 0) {
            if (blob_flush(a) != 0)
                return a->failed;
            continue;
        }
        if (want > room)
            want = room;
        got = b64_decode(a->wbuf + a->wbuf_len, p + pos, want);
        a->wbuf_len += 3 * got;
        pos += 4 * got;
        if (got < want)
            break;
    }
    *at = pos;
    return 0;
}

/*
 * Reads blob text from p[*i..len) up to the next byte the slow path must
 * see ('"', '\\' or '='): whole groups by blob_run(), and a character at
 * a time what stops it - white space, a bad byte, a group cut by the end
 * of the chunk or begun by the slow path - until the next group starts.
 */
static int
blob_scan(struct answer *a, const unsigned char *p, size_t len, size_t *i)
{
    struct blob *b = blob_cur(a);
    size_t at = *i;
    int rc = 0;

    while (at < len && rc == 0) {
        unsigned char m;

        if (b->bad) {
            /* Nothing more gets decoded: only the slow path's bytes. */
            while (at < len && (m = b64_map[p[at]]) != B64_STOP &&
                   m != B64_PAD)
                at++;
            break;
        }
        if (a->b64_in_len == 0) {
            rc = blob_run(a, p, len, &at);
            if (rc != 0 || at == len)
                break;
        }
        m = b64_map[p[at]];
        if (m == B64_STOP || m == B64_PAD)
            break;
        if (m == B64_BAD)
            b->bad = 1;
        else if (m != B64_SKIP)
            rc = blob_put(a, m);
        at++;
    }
    *i = at;
    return rc;
}

/* The closing quote: the last 2 or 3 characters, then the file. */
static int
blob_end(struct answer *a)
{
    struct blob *b = blob_cur(a);
    size_t rest = a->b64_in_len;

    /* Padding is optional, but when there it must fit the text. */
    if (rest == 1 || (a->b64_pads > 0 && (rest == 0 ||
                                          a->b64_pads + rest > 4)))
        b->bad = 1;
    if (rest > 0 && blob_group(a, rest - 1) != 0)
        return a->failed;
    if (b->bad) {
        a->wbuf_len = 0;
        return 0;
    }
    return blob_flush(a);
}

/* The container the scanner is in, or NULL (top level, or too deep). */
static struct level *
top_level(struct answer *a)
{
    if (a->depth == 0 || a->depth > MAX_DEPTH)
        return NULL;
    return &a->levels[a->depth - 1];
}

static int
key_kind(const struct answer *a)
{
    if (a->key_odd)
        return KEY_OTHER;
    if (a->key_len == 4 && memcmp(a->key, "data", 4) == 0)
        return KEY_DATA;
    if ((a->key_len == 10 && memcmp(a->key, "inlineData", 10) == 0) ||
        (a->key_len == 11 && memcmp(a->key, "inline_data", 11) == 0))
        return KEY_INLINE;
    return KEY_OTHER;
}

/* An opening quote: is this a key, an image, or another value? */
static int
string_start(struct answer *a)
{
    struct level *top = top_level(a);

    a->esc = ESC_NONE;
    if (top != NULL && top->is_object && top->expect_key) {
        a->key_len = 0;
        a->key_odd = 0;
        a->str = STR_KEY;
    } else if (top != NULL && top->is_object && top->is_inline &&
               top->key == KEY_DATA) {
        a->str = STR_BLOB;
    } else {
        a->str = STR_VALUE;
    }
    return a->str;
}

static int
string_end(struct answer *a)
{
    struct level *top = top_level(a);
    int mode = a->str;

    a->str = STR_NONE;
    a->esc = ESC_NONE;
    if (top != NULL)
        top->key = mode == STR_KEY ? key_kind(a) : KEY_OTHER;
    return mode == STR_BLOB ? blob_end(a) : 0;
}

/* One character of a string after un-escaping (-1: an odd one). */
static int
string_char(struct answer *a, int ch)
{
    if (a->str == STR_BLOB)
        return blob_char(a, ch);
    if (a->str == STR_KEY) {
        if (ch <= 0 || ch > 0x7f || a->key_len == KEY_MAX - 1)
            a->key_odd = 1;
        else
            a->key[a->key_len++] = (char)ch;
    }
    return 0;
}

static int
unescape(unsigned char c)
{
    switch (c) {
    case '"':  return '"';
    case '\\': return '\\';
    case '/':  return '/';
    case 'b':  return '\b';
    case 'f':  return '\f';
    case 'n':  return '\n';
    case 'r':  return '\r';
    case 't':  return '\t';
    }
    return -1;
}

static int
hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One byte inside a string; *closed says it was the closing quote. */
static int
string_byte(struct answer *a, unsigned char c, int *closed)
{
    int rc, d;

    *closed = 0;
    if (a->esc == ESC_BACKSLASH) {
        a->esc = ESC_NONE;
        if (c != 'u')
            return string_char(a, unescape(c));
        a->esc = ESC_HEX;
        a->hex_value = 0;
        a->hex_digits = 0;
        return 0;
    }
    if (a->esc == ESC_HEX) {
        d = hex_digit(c);
        if (d >= 0) {
            a->hex_value = a->hex_value * 16 + (unsigned)d;
            if (++a->hex_digits < 4)
                return 0;
            a->esc = ESC_NONE;
            return string_char(a, a->hex_value < 0x80 ? (int)a->hex_value
                                                      : -1);
        }
        /* A broken \u escape; the byte is read afresh. */
        a->esc = ESC_NONE;
        rc = string_char(a, -1);
        if (rc != 0)
            return rc;
    }
    if (c == '\\') {
        a->esc = ESC_BACKSLASH;
        return 0;
    }
    if (c == '"') {
        *closed = 1;
        return 0;
    }
    return string_char(a, c);
}

/* A byte outside strings (but not a quote): tracks the nesting. */
static void
structure_byte(struct answer *a, unsigned char c)
{
    struct level *top = top_level(a);

    switch (c) {
    case '{':
    case '[':
        if (a->depth < MAX_DEPTH) {
            struct level *l = &a->levels[a->depth];

            l->is_object = c == '{';
            l->expect_key = l->is_object;
            l->is_inline = top != NULL && top->is_object &&
                           !top->expect_key && top->key == KEY_INLINE;
            l->key = KEY_OTHER;
        }
        if (top != NULL)
            top->key = KEY_OTHER;
        if (a->depth < SIZE_MAX)
            a->depth++;
        break;
    case '}':
    case ']':
        if (a->depth > 0)
            a->depth--;
        break;
    case ',':
        if (top != NULL && top->is_object) {
            top->expect_key = 1;
            top->key = KEY_OTHER;
        }
        break;
    case ':':
        if (top != NULL && top->is_object)
            top->expect_key = 0;
        break;
    }
}

int
answer_feed(struct answer *a, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t i = 0, span = 0;
    int rc = 0, closed;

    if (a == NULL || (p == NULL && len > 0))
        return NB_EINVAL;
    if (a->failed != 0)
        return a->failed;
    while (i < len && rc == 0) {
        if (a->str == STR_BLOB && a->esc == ESC_NONE && a->b64_pads == 0) {
            rc = blob_scan(a, p, len, &i);
            if (rc != 0 || i == len)
                break;
        }
        if (a->str != STR_NONE) {
            int mode = a->str;

            rc = string_byte(a, p[i], &closed);
            if (rc == 0 && closed) {
                rc = string_end(a);
                if (mode == STR_BLOB)
                    span = i;       /* the skeleton goes on from here */
            }
        } else if (p[i] == '"') {
            if (string_start(a) == STR_BLOB) {
                rc = skel_add(a, p + span, i - span);
                if (rc == 0)
                    rc = blob_start(a);
            }
        } else {
            structure_byte(a, p[i]);
        }
        i++;
    }
    if (rc == 0 && a->str != STR_BLOB && span < len)
        rc = skel_add(a, p + span, len - span);
    return rc;
}

const char *
answer_skeleton(const struct answer *a, size_t *len)
{
    if (len != NULL)
        *len = a != NULL ? a->skel_len : 0;
    return a != NULL ? a->skel : "";
}

/* ---- classification --------------------------------------------------- */

const char *
answer_class_name(int cls)
{
    switch (cls) {
    case ANSWER_OK:        return "ok";
    case ANSWER_TRANSIENT: return "transient";
    case ANSWER_SOFT:      return "soft";
    case ANSWER_PERMANENT: return "permanent";
    case ANSWER_FATAL:     return "fatal";
    }
    return "unknown";
}

static void
result_init(struct answer_result *r, int http_status)
{
    memset(r, 0, sizeof(*r));
    r->cls = ANSWER_TRANSIENT;
    r->http_status = http_status;
    r->retry_after_ms = -1;
    r->image_fd = -1;
}

/* A string member of obj, or NULL (obj may be NULL or no object). */
static const char *
get_str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

/* A token count: a number, or a decimal string (int64 in proto JSON). */
static int64_t
get_count(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    const char *s = json_string_value(v);
    char *end;
    long long n;

    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (s == NULL || !isdigit((unsigned char)s[0]))
        return 0;
    errno = 0;
    n = strtoll(s, &end, 10);
    return errno == 0 && *end == '\0' ? (int64_t)n : 0;
}

static int
ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), t = strlen(tail);

    return n >= t && strcmp(s + n - t, tail) == 0;
}

static void
read_usage(const json_t *root, struct answer_result *r)
{
    const json_t *u = json_object_get(root, "usageMetadata");

    line_set(r->response_id, sizeof(r->response_id),
             get_str(root, "responseId"));
    line_set(r->model_version, sizeof(r->model_version),
             get_str(root, "modelVersion"));
    r->prompt_tokens = get_count(u, "promptTokenCount");
    r->output_tokens = get_count(u, "candidatesTokenCount");
    r->thought_tokens = get_count(u, "thoughtsTokenCount");
    r->total_tokens = get_count(u, "totalTokenCount");
}

static int
is_block_finish(const char *fr)
{
    static const char *const blocked[] = {
        "SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION",
        "IMAGE_RECITATION", NULL
    };

    for (const char *const *b = blocked; *b != NULL; b++)
        if (strcmp(fr, *b) == 0)
            return 1;
    return 0;
}

static const json_t *
part_inline(const json_t *part)
{
    const json_t *in = json_object_get(part, "inlineData");

    if (!json_is_object(in))
        in = json_object_get(part, "inline_data");
    return json_is_object(in) ? in : NULL;
}

/* The last part with inline data not marked thought: true, or NULL. */
static const json_t *
final_image(const json_t *parts)
{
    const json_t *part, *found = NULL;
    size_t i;

    json_array_foreach(parts, i, part) {
        if (part_inline(part) != NULL &&
            !json_is_true(json_object_get(part, "thought")))
            found = part;
    }
    return found;
}

/* The first text part not marked thought: true, or NULL. */
static const char *
first_text(const json_t *parts)
{
    const json_t *part;
    size_t i;

    json_array_foreach(parts, i, part) {
        const char *text = get_str(part, "text");

        if (text != NULL && !json_is_true(json_object_get(part, "thought")))
            return text;
    }
    return NULL;
}

/* The blob a "@nbblob:N" marker names, or NULL. */
static struct blob *
marker_blob(struct answer *a, const char *s)
{
    size_t mark = strlen(BLOB_MARK), n = 0;

    if (s == NULL || strncmp(s, BLOB_MARK, mark) != 0)
        return NULL;
    s += mark;
    if (!isdigit((unsigned char)*s) || strlen(s) > 3)
        return NULL;
    for (; isdigit((unsigned char)*s); s++)
        n = n * 10 + (size_t)(*s - '0');
    if (*s != '\0' || n >= a->n_blobs)
        return NULL;
    return &a->blobs[n];
}

static void
take_image(struct answer *a, const json_t *part, struct answer_result *r)
{
    char *msg = r->message;
    size_t cap = sizeof(r->message);
    struct blob *b = marker_blob(a, get_str(part_inline(part), "data"));

    if (b == NULL || b->fd < 0) {
        line_set(msg, cap, "the image part carries no data");
    } else if (b->bad) {
        line_set(msg, cap, "bad base64 in the image data");
    } else if (b->bytes == 0) {
        line_set(msg, cap, "the image data is empty");
    } else if (lseek(b->fd, 0, SEEK_SET) != 0) {
        char ebuf[128];

        line_addf(msg, cap, "cannot rewind the image file: %s",
                  strerror_r(errno, ebuf, sizeof(ebuf)));
    } else {
        r->cls = ANSWER_OK;
        r->image_fd = b->fd;
        r->image_bytes = b->bytes;
        line_addf(msg, cap, "image received (%lld bytes)",
                  (long long)b->bytes);
    }
}

static void
classify_soft(const json_t *cand, const char *fr, struct answer_result *r)
{
    const json_t *parts = json_object_get(json_object_get(cand, "content"),
                                          "parts");
    const char *fm = get_str(cand, "finishMessage");
    const char *text = first_text(parts);
    char *msg = r->message;
    size_t cap = sizeof(r->message);

    r->cls = ANSWER_SOFT;
    line_set(r->reason, sizeof(r->reason), fr);
    if (cand == NULL) {
        line_set(msg, cap, "no image: the answer has no candidates");
        return;
    }
    line_set(msg, cap, "no image in the answer (finishReason ");
    line_add(msg, cap, fr != NULL ? fr : "missing");
    line_add(msg, cap, ")");
    if (fm != NULL) {
        line_add(msg, cap, ": ");
        line_add(msg, cap, fm);
    }
    if (text != NULL) {
        line_add(msg, cap, "; the model wrote only text: \"");
        line_add(msg, cap, text);
        line_add(msg, cap, "\"");
    }
}

/*
 * A refusal: "what (why)", then the server's own words if it gave some;
 * with verbatim, the server's words alone (a finishMessage says it all).
 */
static void
classify_blocked(struct answer_result *r, const char *why, const char *what,
                 const char *server_msg, int verbatim)
{
    int has_msg = server_msg != NULL && server_msg[0] != '\0';

    r->cls = ANSWER_PERMANENT;
    line_set(r->reason, sizeof(r->reason), why);
    if (!has_msg || !verbatim)
        line_addf(r->message, sizeof(r->message), "%s (%s)%s", what, why,
                  has_msg ? ": " : "");
    if (has_msg)
        line_add(r->message, sizeof(r->message), server_msg);
}

static void
classify_success(struct answer *a, struct answer_result *r)
{
    json_error_t jerr;
    json_t *root = json_loadb(a->skel, a->skel_len, 0, &jerr);
    const json_t *feedback, *cand;
    const char *block, *fr, *fm;
    size_t cap = sizeof(r->message);

    if (!json_is_object(root)) {
        line_set(r->message, cap, "malformed answer: ");
        if (root == NULL)
            line_addf(r->message, cap, "%s (at byte %d)", jerr.text,
                      jerr.position);
        else
            line_add(r->message, cap, "not a JSON object");
        json_decref(root);
        return;
    }
    read_usage(root, r);
    feedback = json_object_get(root, "promptFeedback");
    block = get_str(feedback, "blockReason");
    cand = json_array_get(json_object_get(root, "candidates"), 0);
    fr = get_str(cand, "finishReason");
    fm = get_str(cand, "finishMessage");
    line_set(r->finish_reason, sizeof(r->finish_reason), fr);

    if (block != NULL && block[0] != '\0') {
        classify_blocked(r, block, "the prompt was blocked",
                         get_str(feedback, "blockReasonMessage"), 0);
    } else if (fr != NULL && is_block_finish(fr)) {
        classify_blocked(r, fr, "the image was blocked", fm, 1);
    } else {
        const json_t *parts = json_object_get(
            json_object_get(cand, "content"), "parts");
        const json_t *part = final_image(parts);

        if (part == NULL)
            classify_soft(cand, fr, r);
        else
            take_image(a, part, r);
    }
    json_decref(root);
}

/* answer_feed() stopped early: say why. */
static void
classify_feed_failure(const struct answer *a, struct answer_result *r)
{
    char *msg = r->message;
    size_t cap = sizeof(r->message);
    char ebuf[128];

    if (a->failed == NB_EIO) {
        line_addf(msg, cap, "cannot write the image to a temporary file "
                  "in %s: %s", a->tmpdir,
                  strerror_r(a->failed_errno, ebuf, sizeof(ebuf)));
    } else if (a->failed == NB_ELIMIT && a->skel_len < SKEL_MAX) {
        line_addf(msg, cap, "answer rejected: more than %d images",
                  MAX_BLOBS);
    } else if (a->failed == NB_ELIMIT) {
        line_addf(msg, cap, "answer rejected: more than %u MiB of JSON "
                  "besides the images", SKEL_MAX >> 20);
    } else {
        line_addf(msg, cap, "answer not read: %s", nb_strerror(a->failed));
    }
}

void
answer_classify(struct answer *a, int http_status, int transport_error,
                const char *transport_msg,
                const char *retry_after_header,
                struct answer_result *r)
{
    size_t cap = sizeof(r->message);

    if (r == NULL)
        return;
    result_init(r, http_status);
    if (transport_error) {
        line_set(r->message, cap, "transfer failed");
        if (transport_msg != NULL && transport_msg[0] != '\0') {
            line_add(r->message, cap, ": ");
            line_add(r->message, cap, transport_msg);
        }
    } else if (http_status == 0) {
        line_set(r->message, cap, "no HTTP answer came");
    } else if (http_status < 200 || http_status > 299) {
        answer_classify_error(a != NULL ? a->skel : NULL,
                              a != NULL ? a->skel_len : 0, http_status,
                              retry_after_header, r);
    } else if (a == NULL) {
        line_set(r->message, cap, "no answer body was read");
    } else if (a->failed != 0) {
        classify_feed_failure(a, r);
    } else {
        classify_success(a, r);
    }
    line_trim(r->message);
}

/* ---- error bodies ---------------------------------------------------- */

/* What an error envelope says; strings borrowed from the JSON. */
struct error_facts {
    const char *message;
    const char *status;
    const char *info_reason;    /* ErrorInfo.reason */
    const char *quota_id;       /* a PerDay one if any, else the first */
    int per_day;
    int limit_zero;
    int64_t retry_info_ms;      /* RetryInfo.retryDelay, -1 if none */
};

static void
read_violations(const json_t *list, struct error_facts *f)
{
    const json_t *v;
    size_t i;

    json_array_foreach(list, i, v) {
        const char *id = get_str(v, "quotaId");
        const json_t *val = json_object_get(v, "quotaValue");

        if (id != NULL && strstr(id, "PerDay") != NULL) {
            if (!f->per_day)
                f->quota_id = id;
            f->per_day = 1;
        } else if (id != NULL && f->quota_id == NULL) {
            f->quota_id = id;
        }
        if ((json_is_string(val) && strcmp(json_string_value(val), "0") == 0)
            || (json_is_integer(val) && json_integer_value(val) == 0))
            f->limit_zero = 1;
    }
}

static void
read_details(const json_t *details, struct error_facts *f)
{
    const json_t *d;
    size_t i;
    int64_t ms;

    json_array_foreach(details, i, d) {
        const char *type = get_str(d, "@type");

        if (type == NULL)
            continue;
        if (ends_with(type, "google.rpc.ErrorInfo")) {
            if (f->info_reason == NULL)
                f->info_reason = get_str(d, "reason");
        } else if (ends_with(type, "google.rpc.QuotaFailure")) {
            read_violations(json_object_get(d, "violations"), f);
        } else if (ends_with(type, "google.rpc.RetryInfo")) {
            if (f->retry_info_ms < 0 &&
                answer_parse_duration(get_str(d, "retryDelay"), &ms) == 0)
                f->retry_info_ms = ms;
        }
    }
}

/* "limit: 0" in a quota message, not "limit: 0.5" or "limit: 05". */
static int
says_limit_zero(const char *msg)
{
    const char *p = msg;

    while (p != NULL && (p = strstr(p, "limit: 0")) != NULL) {
        p += strlen("limit: 0");
        if (!isdigit((unsigned char)*p) && *p != '.')
            return 1;
    }
    return 0;
}

static int
key_invalid(const struct error_facts *f)
{
    if (f->info_reason != NULL && strcmp(f->info_reason, "API_KEY_INVALID")
        == 0)
        return 1;
    return f->message != NULL &&
           (strcasestr(f->message, "API key not valid") != NULL ||
            strcasestr(f->message, "API key not found") != NULL);
}

/* The class of an error answer; sets the quota flags of r. */
static int
error_class(int status, const struct error_facts *f,
            struct answer_result *r)
{
    if (status == 400) {
        if (key_invalid(f))
            return ANSWER_FATAL;
        if (f->status != NULL && strcmp(f->status, "FAILED_PRECONDITION")
            == 0)
            return ANSWER_FATAL;
        return ANSWER_PERMANENT;
    }
    if (status == 401 || status == 403 || status == 404)
        return ANSWER_FATAL;
    if (status == 429) {
        if (f->per_day || f->limit_zero || r->retry_after_ms > QUOTA_LONG_MS) {
            r->quota_per_day = 1;
            return ANSWER_FATAL;
        }
        r->quota_per_minute = 1;
        return ANSWER_TRANSIENT;
    }
    if (status != 408 && status >= 400 && status <= 499)
        return ANSWER_PERMANENT;
    return ANSWER_TRANSIENT;
}

/* Why a 429 stops the run, before the server's own words. */
static void
quota_note(const struct error_facts *f, struct answer_result *r)
{
    char *msg = r->message;
    size_t cap = sizeof(r->message);

    if (f->limit_zero) {
        line_add(msg, cap, "the project has no quota for this model "
                 "(limit: 0; free tier or no billing). ");
    } else if (f->per_day) {
        line_addf(msg, cap, "per-day quota used up (%s); it resets at "
                  "midnight Pacific time. ", f->quota_id);
    } else {
        line_addf(msg, cap, "the server asks to wait %lld s; taken as a "
                  "per-day quota. ", (long long)(r->retry_after_ms / 1000));
    }
}

/* A body with no error envelope: HTML, empty, or some other text. */
static void
describe_body(const char *body, size_t len, int status,
              struct answer_result *r)
{
    char *msg = r->message;
    size_t cap = sizeof(r->message);
    size_t at = 0;

    if (len >= 3 && memcmp(body, "\xef\xbb\xbf", 3) == 0)
        at = 3;
    while (at < len && isspace((unsigned char)body[at]))
        at++;
    if (at == len)
        line_addf(msg, cap, "HTTP %d from the server with an empty body",
                  status);
    else if (body[at] == '<')
        line_addf(msg, cap, "HTTP %d from the server (HTML page)", status);
    else {
        line_addf(msg, cap, "HTTP %d from the server: ", status);
        line_addn(msg, cap, body + at, len - at < 200 ? len - at : 200);
    }
}

void
answer_classify_error(const char *body, size_t len, int http_status,
                      const char *retry_after_header,
                      struct answer_result *r)
{
    struct error_facts f = { .retry_info_ms = -1 };
    json_t *root = NULL;
    const json_t *env = NULL;
    size_t cap = sizeof(r->message);

    if (r == NULL)
        return;
    result_init(r, http_status);
    if (body == NULL)
        len = 0;
    if (len > 0)
        root = json_loadb(body, len, 0, NULL);
    env = json_is_array(root) ? json_array_get(root, 0) : root;
    env = json_object_get(env, "error");
    if (json_is_object(env)) {
        f.message = get_str(env, "message");
        f.status = get_str(env, "status");
        read_details(json_object_get(env, "details"), &f);
        f.limit_zero |= says_limit_zero(f.message);
    } else {
        env = NULL;
    }

    r->retry_after_ms = f.retry_info_ms;
    if (r->retry_after_ms < 0)
        r->retry_after_ms = message_retry_ms(f.message);
    if (r->retry_after_ms < 0)
        r->retry_after_ms = retry_after_ms(retry_after_header);
    r->cls = error_class(http_status, &f, r);

    line_set(r->api_status, sizeof(r->api_status), f.status);
    line_set(r->reason, sizeof(r->reason),
             http_status == 429 && f.quota_id != NULL ? f.quota_id
                                                      : f.info_reason);
    if (env != NULL) {
        line_addf(r->message, cap, "HTTP %d", http_status);
        if (f.status != NULL) {
            line_add(r->message, cap, " ");
            line_add(r->message, cap, f.status);
        }
        line_add(r->message, cap, ": ");
        if (r->quota_per_day)
            quota_note(&f, r);
        line_add(r->message, cap,
                 f.message != NULL ? f.message : "(no message)");
    } else {
        describe_body(body != NULL ? body : "", len, http_status, r);
    }
    line_trim(r->message);
    json_decref(root);
}
