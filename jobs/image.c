/*
 * image.c - from answer bytes to the final PNG file.
 *
 * The answer's bytes arrive in a temporary file and are read once, front to
 * back, through a 256 KiB buffer.  The format is decided from the magic
 * bytes alone.  A PNG passes through libpng, which inflates and unfilters
 * every row in its own buffer (so a corrupt file is refused; no row is
 * copied out to us), while a "tee" beside the read callback follows the
 * chunk structure of the very same bytes.  The pixels are never
 * re-encoded, and the PNG reaches its place in one of two ways:
 *
 * - in place, the common case: the runner's temporary file is an unlinked
 *   O_TMPFILE file in the output folder.  If it holds a PNG with nothing
 *   after IEND and no "parameters" or "nbbatch" text chunk of its own, that
 *   file becomes the image: it is linked at the temporary name through
 *   /proc/self/fd, and once validated its IEND is overwritten with our two
 *   iTXt chunks and a new IEND.  Nothing is copied.
 * - copied, for everything else (a pipe, another file system, trailing
 *   bytes, older text chunks of ours, no /proc): the tee writes each chunk
 *   to a new file as it passes, our two iTXt chunks go in right after
 *   IHDR, and any older "parameters" or "nbbatch" text chunk is dropped so
 *   ours are the only ones.
 *
 * Either way every original chunk is kept byte for byte and in order.  A
 * JPEG is decoded by libjpeg one scanline at a time and each line is
 * handed to libpng's writer at once.  No path ever holds a whole image in
 * memory, except that libjpeg needs its coefficients for a progressive
 * JPEG (capped at JPEG_MEMORY_MAX).
 *
 * Both libraries report errors through callbacks that longjmp to one
 * jmp_buf in a context struct; everything that must be released after a
 * jump lives in that struct, never in a local of the function that called
 * setjmp.  Neither library may print: warnings are swallowed (libpng) or
 * turned into errors (libjpeg's "corrupt data" warnings).
 *
 * Limits: IMAGE_MAX_SIDE per side for either format; a PNG text or
 * profile chunk may not claim more than HELD_CHUNK_MAX (libpng allocates
 * the claimed length up front); libjpeg may use JPEG_MEMORY_MAX.
 *
 * The file appears atomically: "<path>.tmp-<job>" is written (or linked),
 * fsynced and renamed over path, then the folder is fsynced.  On any
 * failure the temporary name is removed and path is left as it was.
 * image_job_id() finds our chunk in either place without reading image
 * data.  Nothing here prints or exits; the caller gets a code and a
 * one-line message.
 *
 * Deliberately not done: WebP is refused rather than converted, and a
 * JPEG's ICC profile and EXIF orientation are not carried into the PNG
 * (the pixels are written as decoded).
 */
#include "jobs/image.h"

#include "jobs/naming.h"
#include "queue/nberr.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <zlib.h>

#define IMAGE_MAX_SIDE      16384          /* pixels, either side */
#define READ_BUF_SIZE       (256u << 10)   /* the answer, read */
#define IO_BUF_SIZE         65536          /* the PNG, written */
#define TAIL_MAX            65536          /* image_job_id's look at the end */
#define MAGIC_LEN           12             /* enough for RIFF....WEBP */
#define KEYWORD_PREFIX      80             /* a keyword (<= 79) and NUL */
#define PNG_CHUNK_MAX       0x7fffffffu    /* PNG's 31-bit chunk length */
#define META_CHUNK_MAX      (1u << 20)     /* our "nbbatch" chunk, read */
#define HELD_CHUNK_MAX      (8u << 20)     /* chunks libpng holds whole */
#define JPEG_MEMORY_MAX     (128L << 20)   /* libjpeg's working memory */
#define PNG_WRITE_LEVEL     3              /* zlib level, JPEG -> PNG */

static const unsigned char png_magic[8] = {
    0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static char *format_alloc(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void
seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A freshly allocated formatted string, or NULL when out of memory. */
static char *
format_alloc(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    s = malloc((size_t)n + 1);
    if (s == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* 1 when s is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
static int
utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p != 0) {
        uint32_t cp, min;
        int n, i;

        if (*p < 0x80) {
            p++;
            continue;
        }
        if (*p >= 0xc2 && *p <= 0xdf) {
            n = 1, cp = *p & 0x1fu, min = 0x80;
        } else if ((*p & 0xf0) == 0xe0) {
            n = 2, cp = *p & 0x0fu, min = 0x800;
        } else if (*p >= 0xf0 && *p <= 0xf4) {
            n = 3, cp = *p & 0x07u, min = 0x10000;
        } else {
            return 0;
        }
        for (i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        p += n + 1;
    }
    return 1;
}

/* --- reading: an fd or a memory block behind one small buffer --------- */

struct source {
    int fd;                     /* -1: the bytes are all in memory */
    const unsigned char *data;  /* next byte not yet consumed */
    size_t avail;               /* bytes at data */
    unsigned char *buf;         /* fd only: READ_BUF_SIZE bytes, owned */
    int eof;
    int read_errno;             /* set when read() failed */
};

static void
source_init_mem(struct source *s, const void *buf, size_t len)
{
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->data = buf;
    s->avail = len;
    s->eof = 1;
}

static int
source_init_fd(struct source *s, int fd)
{
    memset(s, 0, sizeof *s);
    s->fd = fd;
    s->buf = malloc(READ_BUF_SIZE);
    if (s->buf == NULL)
        return NB_ENOMEM;
    s->data = s->buf;
    return 0;
}

/* Starts reading again from the start of the (regular) file. */
static int
source_rewind(struct source *s)
{
    if (lseek(s->fd, 0, SEEK_SET) != 0) {
        s->read_errno = errno;
        return NB_EIO;
    }
    s->data = s->buf;
    s->avail = 0;
    s->eof = 0;
    s->read_errno = 0;
    return 0;
}

static void
source_free(struct source *s)
{
    free(s->buf);
    s->buf = NULL;
}

/*
 * Reads until at least want bytes are buffered (want <= READ_BUF_SIZE) or
 * the input ends.  Returns 0, or NB_EIO with read_errno set.
 */
static int
source_fill(struct source *s, size_t want)
{
    if (s->avail >= want || s->eof)
        return 0;
    if (s->data != s->buf)
        memmove(s->buf, s->data, s->avail);
    s->data = s->buf;

    while (s->avail < want) {
        ssize_t n = read(s->fd, s->buf + s->avail,
                         READ_BUF_SIZE - s->avail);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            s->read_errno = errno;
            s->eof = 1;
            return NB_EIO;
        }
        if (n == 0) {
            s->eof = 1;
            break;
        }
        s->avail += (size_t)n;
    }
    return 0;
}

static void
source_consume(struct source *s, size_t n)
{
    s->data += n;
    s->avail -= n;
}

/* --- writing: one buffered output file ------------------------------- */

struct sink {
    int fd;
    unsigned char *buf;         /* IO_BUF_SIZE bytes, owned */
    size_t len;
    int64_t bytes;              /* everything accepted so far */
    int write_errno;            /* set when write() failed */
};

static int
sink_flush(struct sink *o)
{
    size_t done = 0;

    while (done < o->len) {
        ssize_t n = write(o->fd, o->buf + done, o->len - done);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            o->write_errno = errno;
            return NB_EIO;
        }
        done += (size_t)n;
    }
    o->len = 0;
    return 0;
}

static int
sink_write(struct sink *o, const void *data, size_t n)
{
    const unsigned char *p = data;

    if (o->write_errno != 0)
        return NB_EIO;
    while (n > 0) {
        size_t room = IO_BUF_SIZE - o->len;
        size_t take = n < room ? n : room;

        memcpy(o->buf + o->len, p, take);
        o->len += take;
        o->bytes += (int64_t)take;
        p += take;
        n -= take;
        if (o->len == IO_BUF_SIZE && sink_flush(o) < 0)
            return NB_EIO;
    }
    return 0;
}

/*
 * Writes one uncompressed iTXt chunk: keyword, NUL, compression flag and
 * method (0, 0), empty language tag and translated keyword, UTF-8 text.
 */
static int
sink_itxt(struct sink *o, const char *keyword, const char *text)
{
    static const unsigned char fields[5] = { 0, 0, 0, 0, 0 };
    size_t klen = strlen(keyword), tlen = strlen(text);
    unsigned char head[8], tail[4];
    uLong crc;

    if (tlen > PNG_CHUNK_MAX - klen - sizeof fields)
        return NB_ELIMIT;
    put_be32(head, (uint32_t)(klen + sizeof fields + tlen));
    memcpy(head + 4, "iTXt", 4);

    crc = crc32(0L, head + 4, 4);
    crc = crc32(crc, (const Bytef *)keyword, (uInt)klen);
    crc = crc32(crc, fields, sizeof fields);
    crc = crc32_z(crc, (const Bytef *)text, tlen);
    put_be32(tail, (uint32_t)crc);

    if (sink_write(o, head, 8) < 0 || sink_write(o, keyword, klen) < 0 ||
        sink_write(o, fields, sizeof fields) < 0 ||
        sink_write(o, text, tlen) < 0 || sink_write(o, tail, 4) < 0)
        return NB_EIO;
    return 0;
}

/* --- the two text chunks --------------------------------------------- */

struct texts {
    char *parameters;           /* prompt + settings line, owned */
    char *json;                 /* the "nbbatch" JSON, owned */
};

static void
texts_free(struct texts *t)
{
    free(t->parameters);
    free(t->json);
    t->parameters = NULL;
    t->json = NULL;
}

static json_t *
json_string_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

/* Adds key = v to o; v is stolen, NULL (a failed constructor) fails. */
static int
json_put(json_t *o, const char *key, json_t *v)
{
    if (v == NULL)
        return -1;
    return json_object_set_new(o, key, v);
}

static json_t *
usage_json(const struct image_meta *m)
{
    json_t *u = json_object();

    if (u == NULL)
        return NULL;
    if (json_put(u, "prompt_tokens", json_integer(m->prompt_tokens)) < 0 ||
        json_put(u, "output_tokens", json_integer(m->output_tokens)) < 0 ||
        json_put(u, "thought_tokens",
                 json_integer(m->thought_tokens)) < 0 ||
        json_put(u, "total_tokens", json_integer(m->total_tokens)) < 0) {
        json_decref(u);
        return NULL;
    }
    return u;
}

static char *
meta_json(const struct image_meta *m, const char *format, uint32_t width,
          uint32_t height)
{
    json_t *o = json_object();
    char *s = NULL;

    if (o == NULL)
        return NULL;
    if (json_put(o, "job_id", json_integer(m->job_id)) < 0 ||
        json_put(o, "batch", json_string_or_null(m->batch)) < 0 ||
        json_put(o, "prompt", json_string(m->prompt)) < 0 ||
        json_put(o, "model", json_string(m->model)) < 0 ||
        json_put(o, "aspect_ratio", json_string_or_null(m->aspect)) < 0 ||
        json_put(o, "image_size", json_string_or_null(m->size)) < 0 ||
        json_put(o, "response_id",
                 json_string_or_null(m->response_id)) < 0 ||
        json_put(o, "model_version",
                 json_string_or_null(m->model_version)) < 0 ||
        json_put(o, "usage", usage_json(m)) < 0 ||
        json_put(o, "source_format", json_string(format)) < 0 ||
        json_put(o, "width", json_integer(width)) < 0 ||
        json_put(o, "height", json_integer(height)) < 0)
        goto fail;

    s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
fail:
    json_decref(o);
    return s;
}

/* Builds both texts; NB_ENOMEM when any allocation fails. */
static int
texts_build(struct texts *t, const struct image_meta *m, const char *format,
            uint32_t width, uint32_t height)
{
    t->parameters = format_alloc(
        "%s\nModel: %s, Size: %ux%u%s%s%s%s, Generator: nbbatch",
        m->prompt, m->model, (unsigned)width, (unsigned)height,
        m->aspect != NULL ? ", Aspect ratio: " : "",
        m->aspect != NULL ? m->aspect : "",
        m->size != NULL ? ", Image size: " : "",
        m->size != NULL ? m->size : "");
    t->json = meta_json(m, format, width, height);
    if (t->parameters == NULL || t->json == NULL) {
        texts_free(t);
        return NB_ENOMEM;
    }
    return 0;
}

/* NB_EINVAL with a message when a field cannot go into a text chunk. */
static int
meta_check(const struct image_meta *m, char *err, size_t errlen)
{
    const char *names[7] = {
        "prompt", "model", "batch", "aspect", "size", "response_id",
        "model_version"
    };
    const char *values[7];
    int i;

    if (m == NULL || m->prompt == NULL || m->model == NULL) {
        seterr(err, errlen, "image metadata lacks the prompt or model");
        return NB_EINVAL;
    }
    values[0] = m->prompt, values[1] = m->model, values[2] = m->batch;
    values[3] = m->aspect, values[4] = m->size, values[5] = m->response_id;
    values[6] = m->model_version;
    for (i = 0; i < 7; i++) {
        if (values[i] != NULL && !utf8_valid(values[i])) {
            seterr(err, errlen, "image metadata: %s is not valid UTF-8",
                   names[i]);
            return NB_EINVAL;
        }
    }
    return 0;
}

/* --- PNG: validate with libpng while the tee copies the chunks -------- */

enum tee_state { TEE_SIG, TEE_HEAD, TEE_PREFIX, TEE_BODY, TEE_DONE };

/*
 * Follows the chunk structure of the bytes libpng reads.  A chunk is
 * written as it passes unless it is a text chunk we replace; to decide,
 * the first KEYWORD_PREFIX bytes of text chunks (and all of IHDR) are held
 * back until they are complete.  With no output the tee only checks the
 * structure: IHDR first, IEND reached, and no chunk that libpng would
 * read whole into memory (text, ICC profile, ...) over HELD_CHUNK_MAX,
 * since libpng allocates what the length field claims before reading.
 * Either way it notes what the in-place path must know: whether a text
 * chunk of ours is there, and where IEND ends.
 */
struct tee {
    struct sink *out;           /* NULL: check only */
    const struct image_meta *meta;
    enum tee_state state;
    size_t sig_left;
    unsigned char head[8];      /* length and type of the current chunk */
    size_t head_len;
    unsigned char prefix[KEYWORD_PREFIX];
    size_t prefix_len, prefix_want;
    uint64_t body_left;         /* data and CRC bytes still to pass */
    int keep;                   /* write the current chunk */
    long chunks;                /* chunks completed */
    uint64_t fed;               /* bytes passed so far */
    uint64_t end;               /* offset just past IEND (0: not yet) */
    uint32_t iend_len;          /* IEND's length field */
    int ours_seen;              /* a "parameters" or "nbbatch" text chunk */
    uint32_t width, height;     /* from IHDR */
    int code;                   /* NB_E code once the tee failed */
    char msg[120];
};

static void
tee_init(struct tee *t, struct sink *out, const struct image_meta *meta)
{
    memset(t, 0, sizeof *t);
    t->out = out;
    t->meta = meta;
    t->state = TEE_SIG;
    t->sig_left = 8;
    t->keep = 1;
}

static int
is_text_chunk(const unsigned char *type)
{
    return memcmp(type, "tEXt", 4) == 0 || memcmp(type, "zTXt", 4) == 0 ||
           memcmp(type, "iTXt", 4) == 0;
}

/* Chunks that libpng allocates in full before parsing them. */
static int
is_held_chunk(const unsigned char *type)
{
    static const char held[][5] = {
        "tEXt", "zTXt", "iTXt", "iCCP", "eXIf", "sPLT", "pCAL", "sCAL"
    };
    size_t i;

    for (i = 0; i < sizeof held / sizeof held[0]; i++)
        if (memcmp(type, held[i], 4) == 0)
            return 1;
    return 0;
}

static int
is_our_keyword(const unsigned char *p, size_t len)
{
    const char *ours[2] = { "parameters", "nbbatch" };
    int i;

    for (i = 0; i < 2; i++) {
        size_t klen = strlen(ours[i]);

        if (len > klen && memcmp(p, ours[i], klen) == 0 && p[klen] == 0)
            return 1;
    }
    return 0;
}

static void
tee_fail(struct tee *t, int code, const char *msg)
{
    if (t->code == 0) {
        t->code = code;
        snprintf(t->msg, sizeof t->msg, "%s", msg);
    }
}

static void
tee_emit(struct tee *t, const void *p, size_t n)
{
    if (t->keep && t->out != NULL && t->code == 0 &&
        sink_write(t->out, p, n) < 0)
        tee_fail(t, NB_EIO, "cannot write the image");
}

/* A chunk's length and type are in: decide what to hold back. */
static void
tee_head_done(struct tee *t)
{
    uint32_t len = be32(t->head);
    const unsigned char *type = t->head + 4;

    if (len > PNG_CHUNK_MAX) {
        tee_fail(t, NB_EIMAGE, "PNG chunk length out of range");
        return;
    }
    if (len > HELD_CHUNK_MAX && is_held_chunk(type)) {
        tee_fail(t, NB_EIMAGE, "PNG text or profile chunk over 8 MiB");
        return;
    }
    t->prefix_len = 0;
    t->prefix_want = 0;
    if (t->chunks == 0) {
        if (memcmp(type, "IHDR", 4) != 0 || len != 13) {
            tee_fail(t, NB_EIMAGE, "PNG does not start with IHDR");
            return;
        }
        t->prefix_want = 13;
    } else if (is_text_chunk(type)) {
        t->prefix_want = len < KEYWORD_PREFIX ? len : KEYWORD_PREFIX;
    }
    t->body_left = (uint64_t)len - t->prefix_want + 4;
    t->keep = 1;
    if (t->prefix_want > 0) {
        t->state = TEE_PREFIX;
        return;
    }
    tee_emit(t, t->head, 8);
    t->state = TEE_BODY;
}

/* The held-back start of a chunk is complete. */
static void
tee_prefix_done(struct tee *t)
{
    if (t->chunks == 0) {
        t->width = be32(t->prefix);
        t->height = be32(t->prefix + 4);
    } else if (is_our_keyword(t->prefix, t->prefix_len)) {
        t->keep = 0;
        t->ours_seen = 1;
    }
    tee_emit(t, t->head, 8);
    tee_emit(t, t->prefix, t->prefix_len);
    t->state = TEE_BODY;
}

/* The current chunk's CRC has passed. */
static void
tee_chunk_done(struct tee *t)
{
    struct texts texts = { NULL, NULL };
    int rc;

    t->chunks++;
    t->state = TEE_HEAD;
    t->head_len = 0;
    if (memcmp(t->head + 4, "IEND", 4) == 0) {
        t->iend_len = be32(t->head);
        t->state = TEE_DONE;
        return;
    }
    if (t->chunks != 1 || t->code != 0 || t->out == NULL)
        return;

    if (texts_build(&texts, t->meta, "png", t->width, t->height) < 0) {
        tee_fail(t, NB_ENOMEM, "out of memory");
        return;
    }
    rc = sink_itxt(t->out, "parameters", texts.parameters);
    if (rc == 0)
        rc = sink_itxt(t->out, "nbbatch", texts.json);
    if (rc < 0)
        tee_fail(t, rc, rc == NB_ELIMIT ? "image metadata too large"
                                        : "cannot write the image");
    texts_free(&texts);
}

static size_t
take_into(unsigned char *dst, size_t *have, size_t want,
          const unsigned char *p, size_t n)
{
    size_t take = want - *have;

    if (take > n)
        take = n;
    memcpy(dst + *have, p, take);
    *have += take;
    return take;
}

/* Passes n more bytes of the PNG through the tee. */
static void
tee_feed(struct tee *t, const unsigned char *p, size_t n)
{
    while (n > 0 && t->code == 0) {
        size_t used = n;

        switch (t->state) {
        case TEE_SIG:
            used = n < t->sig_left ? n : t->sig_left;
            tee_emit(t, p, used);
            if ((t->sig_left -= used) == 0)
                t->state = TEE_HEAD;
            break;
        case TEE_HEAD:
            used = take_into(t->head, &t->head_len, 8, p, n);
            if (t->head_len == 8)
                tee_head_done(t);
            break;
        case TEE_PREFIX:
            used = take_into(t->prefix, &t->prefix_len, t->prefix_want,
                             p, n);
            if (t->prefix_len == t->prefix_want)
                tee_prefix_done(t);
            break;
        case TEE_BODY:
            if (used > t->body_left)
                used = (size_t)t->body_left;
            tee_emit(t, p, used);
            if ((t->body_left -= used) == 0)
                tee_chunk_done(t);
            break;
        case TEE_DONE:
            break;
        }
        if (t->state == TEE_DONE && t->end == 0)
            t->end = t->fed + used;
        t->fed += used;
        p += used;
        n -= used;
    }
}

/* Everything a libpng reader needs, including after a longjmp. */
struct pngread {
    png_structp png;
    png_infop info;
    struct source *src;
    struct tee *tee;            /* follows (and maybe copies) the bytes */
    jmp_buf jmp;
    int armed;                  /* jmp is set */
    int code;                   /* NB_E code of the failure */
    int sys_errno;              /* with NB_EIO: the failed call's errno */
    char msg[160];
    char warning[120];          /* libpng's last warning, often the why */
    uint32_t width, height;
};

static void
png_on_error(png_structp png, png_const_charp msg)
{
    struct pngread *r = png_get_error_ptr(png);

    if (r->code == 0)
        r->code = NB_EIMAGE;
    if (r->msg[0] == '\0')
        snprintf(r->msg, sizeof r->msg, "%s", msg);
    if (!r->armed)
        png_longjmp(png, 1);
    longjmp(r->jmp, 1);
}

/* Warnings are never printed; the last one explains a later error. */
static void
png_on_warning(png_structp png, png_const_charp msg)
{
    struct pngread *r = png_get_error_ptr(png);

    snprintf(r->warning, sizeof r->warning, "%s", msg);
}

static void
png_ignore_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void
png_read_cb(png_structp png, png_bytep data, size_t length)
{
    struct pngread *r = png_get_io_ptr(png);
    struct source *s = r->src;

    while (length > 0) {
        size_t take;

        if (s->avail == 0 && source_fill(s, 1) < 0) {
            r->code = NB_EIO;
            r->sys_errno = s->read_errno;
            png_error(png, "cannot read the answer image");
        }
        if (s->avail == 0)
            png_error(png, "PNG ends early (truncated)");
        take = length < s->avail ? length : s->avail;
        memcpy(data, s->data, take);
        tee_feed(r->tee, s->data, take);
        if (r->tee->code != 0) {
            r->code = r->tee->code;
            if (r->tee->out != NULL)
                r->sys_errno = r->tee->out->write_errno;
            png_error(png, r->tee->msg);
        }
        source_consume(s, take);
        data += take;
        length -= take;
    }
}

/*
 * Reads the whole PNG through libpng; jumps back here on any error.  Every
 * row is inflated and unfiltered in libpng's own buffer; no row buffer is
 * passed, so libpng does not copy each row out to us as well.
 */
static int
png_decode_all(struct pngread *r)
{
    int passes, pass;
    uint32_t y;

    if (setjmp(r->jmp))
        return r->code != 0 ? r->code : NB_EIMAGE;
    r->armed = 1;

    png_set_read_fn(r->png, r, png_read_cb);
    png_set_user_limits(r->png, IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);
    png_set_crc_action(r->png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    png_read_info(r->png, r->info);

    r->width = png_get_image_width(r->png, r->info);
    r->height = png_get_image_height(r->png, r->info);
    passes = png_set_interlace_handling(r->png);
    png_read_update_info(r->png, r->info);

    for (pass = 0; pass < passes; pass++)
        for (y = 0; y < r->height; y++)
            png_read_row(r->png, NULL, NULL);
    png_read_end(r->png, NULL);
    return 0;
}

/* Validates the PNG in src, copying it to tee when tee is not NULL. */
static int
png_run(struct source *src, struct tee *tee, uint32_t *width,
        uint32_t *height, char *err, size_t errlen)
{
    struct pngread *r;
    int rc;

    r = calloc(1, sizeof *r);
    if (r == NULL)
        return NB_ENOMEM;
    r->src = src;
    r->tee = tee;
    r->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, r, png_on_error,
                                    png_on_warning);
    if (r->png != NULL)
        r->info = png_create_info_struct(r->png);
    if (r->png == NULL || r->info == NULL) {
        rc = NB_ENOMEM;
        goto fail;
    }

    rc = png_decode_all(r);
    if (rc == 0 && tee->state != TEE_DONE) {
        snprintf(r->msg, sizeof r->msg, "no IEND chunk");
        rc = NB_EIMAGE;
    }
    if (rc == 0) {
        *width = r->width;
        *height = r->height;
    } else if (rc == NB_EIMAGE && r->warning[0] != '\0') {
        seterr(err, errlen, "answer PNG is corrupt: %s (%s)", r->msg,
               r->warning);
    } else if (rc == NB_EIMAGE) {
        seterr(err, errlen, "answer PNG is corrupt: %s", r->msg);
    } else if (rc == NB_EIO) {
        seterr(err, errlen, "%s: %s", r->msg, strerror(r->sys_errno));
        errno = r->sys_errno;
    } else {
        seterr(err, errlen, "%s", r->msg);
    }
fail:
    if (r->png != NULL)
        png_destroy_read_struct(&r->png, r->info ? &r->info : NULL, NULL);
    free(r);
    return rc;
}

/* --- JPEG: decode line by line into libpng's writer ------------------- */

struct convert {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr jerr;
    struct jpeg_source_mgr srcmgr;
    int jpeg_created;
    png_structp png;
    png_infop info;
    struct source *src;
    struct sink *out;
    const struct image_meta *meta;
    struct texts texts;
    unsigned char *row;
    int cmyk;                   /* rows come as CMYK, made RGB here */
    jmp_buf jmp;
    int armed;
    int code;
    int sys_errno;              /* with NB_EIO: the failed call's errno */
    char msg[JMSG_LENGTH_MAX + 40];
    uint32_t width, height;
};

static struct convert *
convert_of(j_common_ptr cinfo)
{
    return (struct convert *)((char *)cinfo -
                              offsetof(struct convert, cinfo));
}

static void
jpeg_on_error(j_common_ptr cinfo)
{
    struct convert *c = convert_of(cinfo);
    char text[JMSG_LENGTH_MAX];

    if (c->code == 0) {
        (*cinfo->err->format_message)(cinfo, text);
        c->code = NB_EIMAGE;
        snprintf(c->msg, sizeof c->msg, "answer JPEG is corrupt: %s", text);
    }
    longjmp(c->jmp, 1);
}

/*
 * Warnings (level -1) mostly mean the data is damaged and libjpeg guessed;
 * the image would be silently wrong, so they fail the conversion.  Only
 * the two that say nothing about the pixels are let through.
 */
static void
jpeg_on_message(j_common_ptr cinfo, int msg_level)
{
    int code = cinfo->err->msg_code;

    if (msg_level >= 0 || code == JWRN_JFIF_MAJOR ||
        code == JWRN_ADOBE_XFORM)
        return;
    jpeg_on_error(cinfo);
}

static void
jpeg_on_output(j_common_ptr cinfo)
{
    (void)cinfo;
}

static void
jsrc_init(j_decompress_ptr cinfo)
{
    (void)cinfo;
}

/* Hands libjpeg the next buffer; the end of input is an error here. */
static boolean
jsrc_fill(j_decompress_ptr cinfo)
{
    struct convert *c = convert_of((j_common_ptr)cinfo);
    struct source *s = c->src;

    if (s->avail == 0 && source_fill(s, 1) < 0) {
        c->code = NB_EIO;
        c->sys_errno = s->read_errno;
        snprintf(c->msg, sizeof c->msg, "cannot read the answer image: %s",
                 strerror(s->read_errno));
        longjmp(c->jmp, 1);
    }
    if (s->avail == 0) {
        c->code = NB_EIMAGE;
        snprintf(c->msg, sizeof c->msg,
                 "answer JPEG is corrupt: it ends early (truncated)");
        longjmp(c->jmp, 1);
    }
    c->srcmgr.next_input_byte = s->data;
    c->srcmgr.bytes_in_buffer = s->avail;
    source_consume(s, s->avail);
    return TRUE;
}

static void
jsrc_skip(j_decompress_ptr cinfo, long num_bytes)
{
    struct jpeg_source_mgr *m = cinfo->src;

    if (num_bytes <= 0)
        return;
    while ((size_t)num_bytes > m->bytes_in_buffer) {
        num_bytes -= (long)m->bytes_in_buffer;
        jsrc_fill(cinfo);
    }
    m->next_input_byte += num_bytes;
    m->bytes_in_buffer -= (size_t)num_bytes;
}

static void
jsrc_term(j_decompress_ptr cinfo)
{
    (void)cinfo;
}

static void
pngw_on_error(png_structp png, png_const_charp msg)
{
    struct convert *c = png_get_error_ptr(png);

    if (c->code == 0) {
        c->code = NB_EIMAGE;
        snprintf(c->msg, sizeof c->msg, "cannot encode the PNG: %s", msg);
    }
    if (!c->armed)
        png_longjmp(png, 1);
    longjmp(c->jmp, 1);
}

static void
pngw_write_cb(png_structp png, png_bytep data, size_t length)
{
    struct convert *c = png_get_io_ptr(png);

    if (sink_write(c->out, data, length) < 0) {
        c->code = NB_EIO;
        c->sys_errno = c->out->write_errno;
        snprintf(c->msg, sizeof c->msg, "cannot write the image: %s",
                 strerror(c->out->write_errno));
        longjmp(c->jmp, 1);
    }
}

static void
pngw_flush_cb(png_structp png)
{
    (void)png;
}

/*
 * CMYK to RGB in place (the RGB row is shorter).  Adobe's JPEGs store the
 * inks inverted (255 = no ink), which is what the APP14 marker says.
 */
static void
cmyk_to_rgb(unsigned char *row, uint32_t width, int inverted)
{
    uint32_t x;

    for (x = 0; x < width; x++) {
        unsigned c = row[4 * x], m = row[4 * x + 1];
        unsigned y = row[4 * x + 2], k = row[4 * x + 3];

        if (!inverted) {
            c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
        }
        row[3 * x] = (unsigned char)((c * k + 127) / 255);
        row[3 * x + 1] = (unsigned char)((m * k + 127) / 255);
        row[3 * x + 2] = (unsigned char)((y * k + 127) / 255);
    }
}

/* Reads the JPEG header and chooses the output colour space. */
static void
jpeg_begin(struct convert *c)
{
    struct jpeg_decompress_struct *ci = &c->cinfo;

    ci->err = jpeg_std_error(&c->jerr);
    c->jerr.error_exit = jpeg_on_error;
    c->jerr.emit_message = jpeg_on_message;
    c->jerr.output_message = jpeg_on_output;
    jpeg_create_decompress(ci);
    c->jpeg_created = 1;
    ci->mem->max_memory_to_use = JPEG_MEMORY_MAX;

    c->srcmgr.init_source = jsrc_init;
    c->srcmgr.fill_input_buffer = jsrc_fill;
    c->srcmgr.skip_input_data = jsrc_skip;
    c->srcmgr.resync_to_restart = jpeg_resync_to_restart;
    c->srcmgr.term_source = jsrc_term;
    ci->src = &c->srcmgr;

    if (jpeg_read_header(ci, TRUE) != JPEG_HEADER_OK)
        ERREXIT(ci, JERR_NO_IMAGE);
    if (ci->image_width > IMAGE_MAX_SIDE ||
        ci->image_height > IMAGE_MAX_SIDE) {
        c->code = NB_EIMAGE;
        snprintf(c->msg, sizeof c->msg, "answer JPEG is %ux%u, over the "
                 "limit of %d per side", (unsigned)ci->image_width,
                 (unsigned)ci->image_height, IMAGE_MAX_SIDE);
        longjmp(c->jmp, 1);
    }
    if (ci->jpeg_color_space == JCS_GRAYSCALE) {
        ci->out_color_space = JCS_GRAYSCALE;
    } else if (ci->jpeg_color_space == JCS_CMYK ||
               ci->jpeg_color_space == JCS_YCCK) {
        ci->out_color_space = JCS_CMYK;
        c->cmyk = 1;
    } else {
        ci->out_color_space = JCS_RGB;
    }
    jpeg_start_decompress(ci);
    c->width = ci->output_width;
    c->height = ci->output_height;
}

/* Sets up libpng's writer with IHDR and our two text chunks. */
static void
png_begin(struct convert *c)
{
    png_text text[2];
    int gray = c->cinfo.out_color_space == JCS_GRAYSCALE;

    memset(text, 0, sizeof text);
    text[0].compression = PNG_ITXT_COMPRESSION_NONE;
    text[0].key = "parameters";
    text[0].text = c->texts.parameters;
    text[1].compression = PNG_ITXT_COMPRESSION_NONE;
    text[1].key = "nbbatch";
    text[1].text = c->texts.json;

    png_set_write_fn(c->png, c, pngw_write_cb, pngw_flush_cb);
    png_set_compression_level(c->png, PNG_WRITE_LEVEL);
    png_set_IHDR(c->png, c->info, c->width, c->height, 8,
                 gray ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_set_text(c->png, c->info, text, 2);
    png_write_info(c->png, c->info);
}

/* The whole conversion; jumps back here on any error. */
static int
jpeg_convert_all(struct convert *c)
{
    JSAMPROW rows[1];
    uint32_t y;

    if (setjmp(c->jmp))
        return c->code != 0 ? c->code : NB_EIMAGE;
    c->armed = 1;

    jpeg_begin(c);
    if (texts_build(&c->texts, c->meta, "jpeg", c->width, c->height) < 0 ||
        (c->row = malloc((size_t)c->width *
                         (size_t)c->cinfo.output_components)) == NULL) {
        c->code = NB_ENOMEM;
        snprintf(c->msg, sizeof c->msg, "out of memory");
        return NB_ENOMEM;
    }
    png_begin(c);

    rows[0] = c->row;
    for (y = 0; y < c->height; y++) {
        if (jpeg_read_scanlines(&c->cinfo, rows, 1) != 1)
            ERREXIT(&c->cinfo, JERR_INPUT_EOF);
        if (c->cmyk)
            cmyk_to_rgb(c->row, c->width, c->cinfo.saw_Adobe_marker);
        png_write_row(c->png, c->row);
    }
    png_write_end(c->png, c->info);
    jpeg_finish_decompress(&c->cinfo);
    return 0;
}

static int
jpeg_run(struct source *src, struct sink *out, const struct image_meta *m,
         uint32_t *width, uint32_t *height, char *err, size_t errlen)
{
    struct convert *c;
    int rc;

    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NB_ENOMEM;
    c->src = src;
    c->out = out;
    c->meta = m;
    c->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c,
                                     pngw_on_error, png_ignore_warning);
    if (c->png != NULL)
        c->info = png_create_info_struct(c->png);
    if (c->png == NULL || c->info == NULL) {
        rc = NB_ENOMEM;
        goto fail;
    }

    rc = jpeg_convert_all(c);
    if (rc == 0) {
        *width = c->width;
        *height = c->height;
    } else {
        seterr(err, errlen, "%s", c->msg);
    }
    if (rc == NB_EIO)
        errno = c->sys_errno;
fail:
    if (c->jpeg_created)
        jpeg_destroy_decompress(&c->cinfo);
    if (c->png != NULL)
        png_destroy_write_struct(&c->png, c->info ? &c->info : NULL);
    texts_free(&c->texts);
    free(c->row);
    free(c);
    return rc;
}

/* --- deciding the format --------------------------------------------- */

enum format { FMT_PNG, FMT_JPEG };

/* Looks at the first bytes in src; NB_EIMAGE with a message if unusable. */
static int
sniff(struct source *src, enum format *fmt, char *err, size_t errlen)
{
    const unsigned char *p = src->data;
    size_t n = src->avail, i, off = 0;
    char hex[3 * MAGIC_LEN + 1] = "";

    if (n >= 8 && memcmp(p, png_magic, 8) == 0) {
        *fmt = FMT_PNG;
        return 0;
    }
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) {
        *fmt = FMT_JPEG;
        return 0;
    }
    if (n == 0) {
        seterr(err, errlen, "answer image is empty");
        return NB_EIMAGE;
    }
    if (n >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0) {
        seterr(err, errlen, "answer image is WebP, which nbbatch cannot "
               "convert");
        return NB_EIMAGE;
    }
    for (i = 0; i < n && i < 8; i++)
        off += (size_t)snprintf(hex + off, sizeof hex - off, "%s%02x",
                                i > 0 ? " " : "", p[i]);
    seterr(err, errlen, "answer is not an image (first bytes %s)", hex);
    return NB_EIMAGE;
}

/* --- files: folder, temporary file, rename ----------------------------- */

static int
fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int saved;

    if (fd < 0)
        return NB_EIO;
    if (fsync(fd) < 0 && errno != EINVAL) {
        saved = errno;
        close(fd);
        errno = saved;
        return NB_EIO;
    }
    close(fd);
    return 0;
}

/* The folder part of path into dir ("." when there is none). */
static int
dir_of(const char *path, char *dir, size_t len)
{
    const char *slash = strrchr(path, '/');
    size_t n;

    if (slash == NULL)
        return snprintf(dir, len, ".") < (int)len ? 0 : NB_ELIMIT;
    n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= len)
        return NB_ELIMIT;
    memcpy(dir, path, n);
    dir[n] = '\0';
    return 0;
}

/* mkdir -p dir (0755), fsyncing the parent of each folder it creates. */
static int
make_folder(const char *dir, char *err, size_t errlen)
{
    char buf[PATH_MAX], parent[PATH_MAX];
    struct stat st;
    size_t len = strlen(dir), i;

    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    if (len >= sizeof buf) {
        errno = ENAMETOOLONG;
        goto fail;
    }
    memcpy(buf, dir, len + 1);
    for (i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        buf[i] = '\0';
        if (mkdir(buf, 0755) == 0) {
            if (dir_of(buf, parent, sizeof parent) < 0 ||
                fsync_dir(parent) < 0)
                goto fail;
        } else if (errno != EEXIST) {
            goto fail;
        }
        buf[i] = dir[i];
    }
    if (stat(dir, &st) < 0)
        goto fail;
    if (S_ISDIR(st.st_mode))
        return 0;
    errno = ENOTDIR;
fail:
    seterr(err, errlen, "cannot create folder %s: %s", dir, strerror(errno));
    return NB_EIO;
}

/* Removes what a crash may have left at tmp. */
static int
remove_stale(const char *tmp, char *err, size_t errlen)
{
    if (unlink(tmp) < 0 && errno != ENOENT) {
        seterr(err, errlen, "cannot remove stale %s: %s", tmp,
               strerror(errno));
        return NB_EIO;
    }
    return 0;
}

/* Opens a new temporary file at tmp, removing a stale one first. */
static int
open_tmp(const char *tmp, char *err, size_t errlen)
{
    int fd;

    if (remove_stale(tmp, err, errlen) < 0)
        return NB_EIO;
    fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
        seterr(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return NB_EIO;
    }
    return fd;
}

/* Flushes, fsyncs and closes the temporary file; closes it in any case. */
static int
finish_tmp(struct sink *out, const char *tmp, char *err, size_t errlen)
{
    int rc = sink_flush(out);

    if (rc < 0)
        errno = out->write_errno;
    else if (fsync(out->fd) < 0)
        rc = NB_EIO;
    if (rc < 0) {
        int saved = errno;

        seterr(err, errlen, "cannot write %s: %s", tmp, strerror(saved));
        close(out->fd);
        out->fd = -1;
        errno = saved;
        return rc;
    }
    rc = close(out->fd);
    out->fd = -1;
    if (rc < 0) {
        seterr(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        return NB_EIO;
    }
    return 0;
}

/* Writes the image in src as a PNG into out (an open temporary file). */
static int
write_image(struct source *src, enum format fmt, struct sink *out,
            const struct image_meta *m, uint32_t *width, uint32_t *height,
            char *err, size_t errlen)
{
    struct tee tee;

    if (fmt == FMT_JPEG)
        return jpeg_run(src, out, m, width, height, err, errlen);
    tee_init(&tee, out, m);
    return png_run(src, &tee, width, height, err, errlen);
}

/* Moves tmp to path and makes the rename durable. */
static int
publish(const char *tmp, const char *path, const char *dir, char *err,
        size_t errlen)
{
    int saved;

    if (rename(tmp, path) < 0) {
        seterr(err, errlen, "cannot rename %s to %s: %s", tmp, path,
               strerror(errno));
        return NB_EIO;
    }
    if (fsync_dir(dir) < 0) {
        saved = errno;
        seterr(err, errlen, "cannot sync folder %s: %s", dir,
               strerror(saved));
        unlink(path);
        errno = saved;
        return NB_EIO;
    }
    return 0;
}

/* Opens tmp, writes the image into it and publishes it at path. */
static int
write_file(struct source *src, enum format fmt, const char *path,
           const char *tmp, const char *dir, const struct image_meta *m,
           struct image_info *info, char *err, size_t errlen)
{
    struct sink out;
    uint32_t width = 0, height = 0;
    int rc, saved;

    memset(&out, 0, sizeof out);
    out.buf = malloc(IO_BUF_SIZE);
    if (out.buf == NULL)
        return NB_ENOMEM;
    out.fd = open_tmp(tmp, err, errlen);
    if (out.fd < 0) {
        rc = out.fd;
        free(out.buf);
        return rc;
    }

    rc = write_image(src, fmt, &out, m, &width, &height, err, errlen);
    if (rc == 0)
        rc = finish_tmp(&out, tmp, err, errlen);
    if (rc == 0)
        rc = publish(tmp, path, dir, err, errlen);
    if (rc == 0 && info != NULL) {
        info->source_format = fmt == FMT_PNG ? "png" : "jpeg";
        info->width = width;
        info->height = height;
        info->bytes = out.bytes;
    }

    saved = errno;
    if (out.fd >= 0)
        close(out.fd);
    if (rc < 0)
        unlink(tmp);
    free(out.buf);
    errno = saved;
    return rc;
}

/* --- PNG in place: the answer's own file becomes the image ----------- */

/*
 * The runner decodes an answer into an unlinked O_TMPFILE file in the
 * output folder.  When that file holds a PNG that needs nothing removed,
 * no byte of it is copied: the file is linked at the temporary name
 * through /proc/self/fd, validated as usual (one pass, every CRC, every
 * row), its IEND is overwritten with our two chunks and a new IEND, and it
 * is fsynced and renamed into place like a copied one.  Whenever the file
 * does not qualify, LINK_DECLINED sends image_write() down the copying
 * path with the source rewound, and nothing is left at the temporary name.
 */
#define LINK_DECLINED 1         /* positive: never an NB_E code */

static const unsigned char iend_chunk[12] = {
    0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82
};

/* What the in-place path knows about its file before reading it. */
struct inplace {
    int fd;
    char proc[32];              /* "/proc/self/fd/N", names the file */
    off_t size;
    mode_t mode;                /* 0644 less the umask, like open() */
};

/*
 * The process's umask, read without changing it: umask() can only read it
 * by setting it, which would race with other threads creating files.
 */
static int
read_umask(mode_t *mask)
{
    char buf[512], *p, *end;
    ssize_t n;
    long v;
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    do
        n = read(fd, buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    p = strstr(buf, "\nUmask:\t");
    if (p == NULL)
        return -1;
    v = strtol(p + 8, &end, 8);
    if (end == p + 8 || v < 0 || v > 0777)
        return -1;
    *mask = (mode_t)v;
    return 0;
}

/*
 * 1 when the file behind fd may become the image in place: an unlinked
 * regular file, open for reading and writing (not appending), on the same
 * file system as dir, that /proc/self/fd reaches.  Fills ip.
 */
static int
inplace_possible(int fd, const char *dir, struct inplace *ip)
{
    struct stat st, dst, pst;
    mode_t mask;
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || (flags & O_ACCMODE) != O_RDWR || (flags & O_APPEND))
        return 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 0)
        return 0;
    if (stat(dir, &dst) < 0 || dst.st_dev != st.st_dev)
        return 0;
    snprintf(ip->proc, sizeof ip->proc, "/proc/self/fd/%d", fd);
    if (stat(ip->proc, &pst) < 0 || pst.st_dev != st.st_dev ||
        pst.st_ino != st.st_ino)
        return 0;
    if (read_umask(&mask) < 0)
        return 0;
    ip->fd = fd;
    ip->size = st.st_size;
    ip->mode = 0644 & ~mask;
    return 1;
}

/*
 * Overwrites the IEND at iend_at with our two chunks and a new IEND, sets
 * the mode and fsyncs.  *bytes gets the new size.
 */
static int
inplace_finish(const struct inplace *ip, off_t iend_at,
               const struct image_meta *m, uint32_t width, uint32_t height,
               const char *tmp, int64_t *bytes, char *err, size_t errlen)
{
    struct texts texts = { NULL, NULL };
    struct sink out;
    int rc;

    memset(&out, 0, sizeof out);
    out.fd = ip->fd;
    out.buf = malloc(IO_BUF_SIZE);
    if (out.buf == NULL ||
        texts_build(&texts, m, "png", width, height) < 0) {
        free(out.buf);
        return NB_ENOMEM;
    }

    rc = lseek(ip->fd, iend_at, SEEK_SET) == iend_at ? 0 : NB_EIO;
    if (rc < 0)
        out.write_errno = errno;
    if (rc == 0)
        rc = sink_itxt(&out, "parameters", texts.parameters);
    if (rc == 0)
        rc = sink_itxt(&out, "nbbatch", texts.json);
    if (rc == 0)
        rc = sink_write(&out, iend_chunk, sizeof iend_chunk);
    if (rc == 0)
        rc = sink_flush(&out);
    if (rc == NB_EIO)
        errno = out.write_errno;
    if (rc == 0 && (fchmod(ip->fd, ip->mode) < 0 || fsync(ip->fd) < 0))
        rc = NB_EIO;

    if (rc == NB_ELIMIT)
        seterr(err, errlen, "image metadata too large");
    else if (rc < 0)
        seterr(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
    *bytes = (int64_t)iend_at + out.bytes;
    texts_free(&texts);
    free(out.buf);
    return rc;
}

/*
 * The PNG in ip's file, whose first bytes src holds, becomes path.  Returns
 * 0, an NB_E code (nothing left at tmp), or LINK_DECLINED with src
 * rewound.
 */
static int
inplace_write(struct source *src, const struct inplace *ip,
              const char *path, const char *tmp, const char *dir,
              const struct image_meta *m, struct image_info *info,
              char *err, size_t errlen)
{
    struct tee tee;
    uint32_t width = 0, height = 0;
    int64_t bytes = 0;
    int rc, saved;

    if (remove_stale(tmp, err, errlen) < 0)
        return NB_EIO;
    if (linkat(AT_FDCWD, ip->proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) < 0) {
        /* No /proc, another file system, or not an O_TMPFILE file. */
        if (errno == EXDEV || errno == ENOENT || errno == EPERM)
            return LINK_DECLINED;
        seterr(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return NB_EIO;
    }

    tee_init(&tee, NULL, NULL);
    rc = png_run(src, &tee, &width, &height, err, errlen);
    if (rc == 0 && (tee.ours_seen || tee.iend_len != 0 ||
                    tee.end != (uint64_t)ip->size))
        rc = LINK_DECLINED;
    if (rc == 0)
        rc = inplace_finish(ip, (off_t)tee.end - 12, m, width, height, tmp,
                            &bytes, err, errlen);
    if (rc == 0)
        rc = publish(tmp, path, dir, err, errlen);
    if (rc == 0 && info != NULL) {
        info->source_format = "png";
        info->width = width;
        info->height = height;
        info->bytes = bytes;
    }

    saved = errno;
    if (rc != 0)
        unlink(tmp);
    if (rc == LINK_DECLINED && source_rewind(src) < 0) {
        saved = src->read_errno;
        seterr(err, errlen, "cannot read the answer image: %s",
               strerror(saved));
        rc = NB_EIO;
    }
    errno = saved;
    return rc;
}

/*
 * Writes the image in src (which started at offset start of its file) at
 * path: in place when the source allows it, else by copying.
 */
static int
write_output(struct source *src, enum format fmt, off_t start,
             const char *path, const char *tmp, const char *dir,
             const struct image_meta *m, struct image_info *info, char *err,
             size_t errlen)
{
    struct inplace ip;
    int rc = LINK_DECLINED;

    if (fmt == FMT_PNG && start == 0 && inplace_possible(src->fd, dir, &ip))
        rc = inplace_write(src, &ip, path, tmp, dir, m, info, err, errlen);
    if (rc == LINK_DECLINED)
        rc = write_file(src, fmt, path, tmp, dir, m, info, err, errlen);
    return rc;
}

int
image_write(int src_fd, const char *path, const struct image_meta *meta,
            struct image_info *info, char *err, size_t errlen)
{
    struct source src;
    enum format fmt = FMT_PNG;
    char tmp[PATH_MAX], dir[PATH_MAX];
    off_t start;
    int rc;

    seterr(err, errlen, "%s", "");
    if (path == NULL || *path == '\0' || path[strlen(path) - 1] == '/') {
        seterr(err, errlen, "bad image path");
        return NB_EINVAL;
    }
    rc = meta_check(meta, err, errlen);
    if (rc < 0)
        return rc;
    rc = naming_tmp_path(path, meta->job_id, tmp, sizeof tmp);
    if (rc == 0)
        rc = dir_of(path, dir, sizeof dir);
    if (rc < 0) {
        seterr(err, errlen, "image path too long: %s", path);
        return rc;
    }

    start = lseek(src_fd, 0, SEEK_CUR);     /* -1 for a pipe */
    rc = source_init_fd(&src, src_fd);
    if (rc == 0)
        rc = source_fill(&src, MAGIC_LEN);
    if (rc == NB_EIO) {
        errno = src.read_errno;
        seterr(err, errlen, "cannot read the answer image: %s",
               strerror(src.read_errno));
    }
    if (rc == 0)
        rc = sniff(&src, &fmt, err, errlen);
    if (rc == 0)
        rc = make_folder(dir, err, errlen);
    if (rc == 0)
        rc = write_output(&src, fmt, start, path, tmp, dir, meta, info, err,
                          errlen);
    if (rc == NB_ENOMEM && err != NULL && errlen > 0 && err[0] == '\0')
        seterr(err, errlen, "out of memory while writing %s", path);
    source_free(&src);
    return rc;
}

/* --- reading our chunk back -------------------------------------------- */

static int
pread_full(int fd, void *buf, size_t len, off_t off)
{
    unsigned char *p = buf;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return NB_EIO;
        if (n == 0)
            return NB_EIMAGE;
        p += n;
        off += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * The JSON text of a "nbbatch" text chunk's data, or NULL when the chunk
 * has another keyword or is compressed.  Points into data.
 */
static const char *
nbbatch_text(const unsigned char *type, const char *data, size_t len)
{
    const char *end = data + len, *p;
    int i;

    if (len < 8 || memcmp(data, "nbbatch", 8) != 0)
        return NULL;
    if (memcmp(type, "tEXt", 4) == 0)
        return data + 8;
    if (len < 10 || data[8] != 0)
        return NULL;
    p = data + 10;
    for (i = 0; i < 2; i++) {
        p = memchr(p, 0, (size_t)(end - p));
        if (p == NULL)
            return NULL;
        p++;
    }
    return p;
}

/* Parses our chunk's data (type + data, CRC checked) for the job id. */
static int
parse_meta_chunk(const unsigned char *type_data, size_t len,
                 int64_t *job_id)
{
    const char *data = (const char *)type_data + 4;
    const char *text = nbbatch_text(type_data, data, len);
    json_t *root, *id;
    int rc = NB_EIMAGE;

    if (text == NULL)
        return NB_ENOTFOUND;
    if (crc32(0L, type_data, (uInt)len + 4) != be32(type_data + 4 + len))
        return NB_EIMAGE;
    root = json_loadb(text, (size_t)(data + len - text), 0, NULL);
    id = json_object_get(root, "job_id");
    if (json_is_integer(id)) {
        *job_id = json_integer_value(id);
        rc = 0;
    }
    json_decref(root);
    return rc;
}

/* Reads one text chunk at off; NB_ENOTFOUND when it is not ours. */
static int
read_text_chunk(int fd, off_t off, uint32_t len, int64_t *job_id)
{
    unsigned char *buf;
    int rc;

    if (len > META_CHUNK_MAX)
        return NB_ENOTFOUND;
    buf = malloc((size_t)len + 8);
    if (buf == NULL)
        return NB_ENOMEM;
    rc = pread_full(fd, buf, (size_t)len + 8, off + 4);
    if (rc == 0)
        rc = parse_meta_chunk(buf, len, job_id);
    free(buf);
    return rc;
}

static int
is_plain_text_type(const unsigned char *type)
{
    return memcmp(type, "iTXt", 4) == 0 || memcmp(type, "tEXt", 4) == 0;
}

/*
 * Walks the chunk headers from off, reading the text chunks, until our
 * chunk, IEND or, when idat_at is not NULL, the first IDAT, whose offset
 * then goes to *idat_at (else it is -1).  Image data is skipped over,
 * never read.  Returns 0 with *job_id set, NB_ENOTFOUND, or an error.
 */
static int
walk_for_job_id(int fd, off_t off, off_t *idat_at, int64_t *job_id)
{
    unsigned char head[8];
    int rc;

    if (idat_at != NULL)
        *idat_at = -1;
    for (;;) {
        uint32_t len;

        rc = pread_full(fd, head, 8, off);
        if (rc < 0)
            return rc;
        len = be32(head);
        if (len > PNG_CHUNK_MAX)
            return NB_EIMAGE;
        if (memcmp(head + 4, "IEND", 4) == 0)
            return NB_ENOTFOUND;
        if (idat_at != NULL && memcmp(head + 4, "IDAT", 4) == 0) {
            *idat_at = off;
            return NB_ENOTFOUND;
        }
        if (is_plain_text_type(head + 4)) {
            rc = read_text_chunk(fd, off, len, job_id);
            if (rc != NB_ENOTFOUND)
                return rc;
        }
        off += (off_t)len + 12;
    }
}

/* 1 when the chunks from at lead exactly to an empty IEND at len. */
static int
chunks_reach_end(const unsigned char *buf, size_t len, size_t at)
{
    while (len - at >= 12) {
        uint32_t n = be32(buf + at);

        if (n > len - at - 12)
            return 0;
        if (memcmp(buf + at + 4, "IEND", 4) == 0)
            return n == 0 && at + 12 == len;
        at += 12 + (size_t)n;
    }
    return 0;
}

/*
 * Looks for our chunk in the last TAIL_MAX bytes of the file, where the
 * in-place path puts it: a "nbbatch" text chunk whose CRC holds and from
 * which the chunk headers lead exactly to IEND at the end of the file (so
 * bytes inside image data that merely look like one do not count).
 * NB_ENOTFOUND when there is none there.
 */
static int
tail_job_id(int fd, int64_t *job_id)
{
    static const char key[8] = "nbbatch";      /* with its NUL */
    struct stat st;
    unsigned char *buf, *p, *hit;
    size_t len;
    int rc;

    if (fstat(fd, &st) < 0)
        return NB_EIO;
    len = st.st_size < TAIL_MAX ? (size_t)st.st_size : TAIL_MAX;
    if (len < 12 + sizeof key)
        return NB_ENOTFOUND;
    buf = malloc(len);
    if (buf == NULL)
        return NB_ENOMEM;
    rc = pread_full(fd, buf, len, st.st_size - (off_t)len);
    if (rc == NB_EIMAGE)
        rc = NB_ENOTFOUND;              /* shrank meanwhile: walk instead */
    if (rc == 0)
        rc = NB_ENOTFOUND;

    for (p = buf; rc == NB_ENOTFOUND; p = hit + 1) {
        size_t at;

        hit = memmem(p, len - (size_t)(p - buf), key, sizeof key);
        if (hit == NULL)
            break;
        if (hit - buf < 8 || !is_plain_text_type(hit - 4))
            continue;
        at = (size_t)(hit - buf) - 8;
        if (chunks_reach_end(buf, len, at) &&
            parse_meta_chunk(buf + at + 4, be32(buf + at), job_id) == 0)
            rc = 0;
    }
    free(buf);
    return rc;
}

/*
 * A copied file carries our chunk right after IHDR, a file made in place
 * just before IEND: the chunks before the first IDAT are looked at, then
 * the end of the file, and only then every chunk header in between.
 */
static int
scan_for_job_id(int fd, int64_t *job_id)
{
    unsigned char magic[8];
    off_t idat_at;
    int rc;

    rc = pread_full(fd, magic, 8, 0);
    if (rc < 0)
        return rc;
    if (memcmp(magic, png_magic, 8) != 0)
        return NB_EIMAGE;

    rc = walk_for_job_id(fd, 8, &idat_at, job_id);
    if (rc != NB_ENOTFOUND || idat_at < 0)
        return rc;
    rc = tail_job_id(fd, job_id);
    if (rc != NB_ENOTFOUND)
        return rc;
    return walk_for_job_id(fd, idat_at, NULL, job_id);
}

int
image_job_id(const char *path, int64_t *job_id)
{
    int64_t id = 0;
    int fd, rc, saved;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? NB_ENOTFOUND : NB_EIO;
    rc = scan_for_job_id(fd, &id);
    saved = errno;
    close(fd);
    errno = saved;
    if (rc == 0)
        *job_id = id;
    return rc;
}

/* --- the rest of the contract ------------------------------------------ */

int
image_check_png(const void *buf, size_t len, uint32_t *width,
                uint32_t *height)
{
    struct source src;
    struct tee tee;
    uint32_t w = 0, h = 0;
    int rc;

    if (buf == NULL || len < 8 || memcmp(buf, png_magic, 8) != 0)
        return NB_EIMAGE;
    source_init_mem(&src, buf, len);
    tee_init(&tee, NULL, NULL);
    rc = png_run(&src, &tee, &w, &h, NULL, 0);
    if (rc < 0)
        return rc == NB_ENOMEM ? NB_ENOMEM : NB_EIMAGE;
    if (width != NULL)
        *width = w;
    if (height != NULL)
        *height = h;
    return 0;
}

int
image_remove_tmp(const char *path, int64_t job_id)
{
    char tmp[PATH_MAX];
    int rc;

    rc = naming_tmp_path(path, job_id, tmp, sizeof tmp);
    if (rc < 0)
        return rc;
    if (unlink(tmp) < 0 && errno != ENOENT)
        return NB_EIO;
    return 0;
}
