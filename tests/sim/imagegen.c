/*
 * imagegen.c - images for nbsim, built to be cheap per request.
 *
 * A PNG answer is 8-bit RGB.  Its zlib stream is cut in two at a byte
 * boundary: the band rows (the prompt's color) are deflated per request
 * and end with a sync flush; the rows below, the filler, were deflated
 * once per image size by an independent deflate stream whose matches
 * never reach back into the band, so the two concatenate into one valid
 * stream.  The Adler-32 of the whole is combined from the two halves'.
 * The image is thus three segments: a small head (signature, IHDR, the
 * band's IDAT), the shared filler IDAT chunks, a small tail (an IDAT with
 * the Adler-32, IEND).  Nothing but the head and tail is written per
 * request, whatever the size.
 *
 * The filler mixes incompressible noise rows with flat ones in a share
 * chosen so that file sizes come close to real answers (about 1.5 MB at
 * 1K, 8 MB at 4K).  JPEG answers (libjpeg, quality 95, no chroma
 * subsampling so the band stays within a unit or two of its color) are
 * encoded in full per request.
 *
 * Invariants: a filler, once ready, is immutable until imagegen_free, so
 * images read it without locks; images never outlive their imagegen.
 */
#include "tests/sim/imagegen.h"

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <openssl/evp.h>
#include <png.h>
#include <zlib.h>

#define IDAT_DATA_MAX  (64u * 1024)    /* data bytes per filler chunk */
#define JPEG_QUALITY   95
#define JPEG_TOLERANCE 3

enum filler_state { FILLER_BUILDING, FILLER_READY, FILLER_FAILED };

/* The compressed rows below the band, for one width x height. */
struct filler {
    unsigned width;
    unsigned height;
    unsigned char *chunks;      /* complete IDAT chunks */
    size_t chunks_len;
    uLong adler;                /* Adler-32 of the raw rows */
    uint64_t raw_len;
    enum filler_state state;
    struct filler *next;
};

struct imagegen {
    pthread_mutex_t lock;
    pthread_cond_t changed;     /* a filler left FILLER_BUILDING */
    struct filler *fillers;
};

#define IMAGE_SEGMENTS 3

struct imagegen_image {
    const unsigned char *seg[IMAGE_SEGMENTS];
    size_t seg_len[IMAGE_SEGMENTS];
    unsigned char *owned[IMAGE_SEGMENTS];   /* freed with the image */
    uint64_t size;
};

/* --- sizes ------------------------------------------------------------ */

/* 1K pixel sizes; zero where a table lacks the ratio. */
struct ratio {
    const char *name;
    unsigned w25, h25;
    unsigned w3, h3;
};

static const struct ratio ratios[] = {
    { "1:1", 1024, 1024, 1024, 1024 },
    { "2:3", 832, 1248, 848, 1264 },
    { "3:2", 1248, 832, 1264, 848 },
    { "3:4", 864, 1184, 896, 1200 },
    { "4:3", 1184, 864, 1200, 896 },
    { "4:5", 896, 1152, 928, 1152 },
    { "5:4", 1152, 896, 1152, 928 },
    { "9:16", 768, 1344, 768, 1376 },
    { "16:9", 1344, 768, 1376, 768 },
    { "21:9", 1536, 672, 1584, 672 },
    { "1:4", 0, 0, 512, 2048 },
    { "4:1", 0, 0, 2048, 512 },
    { "1:8", 0, 0, 384, 3072 },
    { "8:1", 0, 0, 3072, 384 },
};

struct size_tier {
    const char *name;
    unsigned times2;            /* scale from 1K, doubled */
    unsigned tiny_short;        /* short side of the stand-in */
};

static const struct size_tier tiers[] = {
    { "512", 1, 48 },
    { "1K", 2, 64 },
    { "2K", 4, 96 },
    { "4K", 8, 128 },
};

int
imagegen_dims(enum imagegen_table table, const char *aspect,
              const char *size, int real, unsigned *width,
              unsigned *height)
{
    const struct ratio *r = NULL;
    const struct size_tier *t = NULL;
    unsigned w, h;

    for (size_t i = 0; i < sizeof ratios / sizeof ratios[0]; i++)
        if (strcmp(ratios[i].name, aspect ? aspect : "1:1") == 0)
            r = &ratios[i];
    for (size_t i = 0; i < sizeof tiers / sizeof tiers[0]; i++)
        if (strcmp(tiers[i].name, size ? size : "1K") == 0)
            t = &tiers[i];
    if (!r || !t)
        return -1;
    w = table == IMAGEGEN_TABLE_25 ? r->w25 : r->w3;
    h = table == IMAGEGEN_TABLE_25 ? r->h25 : r->h3;
    if (w == 0 || (table == IMAGEGEN_TABLE_25 && t->times2 != 2))
        return -1;

    if (real) {
        *width = w * t->times2 / 2;
        *height = h * t->times2 / 2;
    } else if (w <= h) {
        *width = t->tiny_short;
        *height = (unsigned)lround((double)t->tiny_short * h / w);
    } else {
        *height = t->tiny_short;
        *width = (unsigned)lround((double)t->tiny_short * w / h);
    }
    return 0;
}

void
imagegen_prompt_color(const void *prompt, size_t len, unsigned char rgb[3])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (!EVP_Digest(prompt, len, md, &mdlen, EVP_sha256(), NULL) ||
        mdlen < 3) {
        memset(rgb, 0, 3);
        return;
    }
    memcpy(rgb, md, 3);
}

/* --- pixels --------------------------------------------------------- */

/* Band rows: at least 16, a multiple of 8 (whole JPEG blocks), about a
 * 64th of tall images. */
static unsigned
band_rows_for(unsigned height)
{
    unsigned band = (height / 64) & ~7u;

    if (band < 16)
        band = 16;
    return band > height ? height : band;
}

/* Share of noise rows (of 65536) that lands near real file sizes: about
 * 1.5 bytes per pixel at 1 Mpx, falling as images grow (8 MB at 4K). */
static unsigned
noise_share(unsigned width, unsigned height)
{
    double mpx = (double)width * height / 1e6;
    double bytes_per_px = 1.5 * pow(mpx, -0.45);
    double share = bytes_per_px / 3.0;

    if (share > 0.6)
        share = 0.6;
    if (share < 0.02)
        share = 0.02;
    return (unsigned)(share * 65536);
}

static uint64_t
splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* One filler row of RGB pixels: noise, or a flat pattern that deflate
 * and JPEG both squeeze well.  Depends only on (width, y). */
static void
filler_row(unsigned width, unsigned y, unsigned noise, unsigned char *out)
{
    size_t n = (size_t)width * 3;

    if (((y * 0x9E3779B1u) >> 16) < noise) {
        uint64_t state = ((uint64_t)width << 32) ^ y;

        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = splitmix(&state);
            size_t take = n - i < 8 ? n - i : 8;

            memcpy(out + i, &v, take);
        }
        return;
    }
    for (unsigned x = 0; x < width; x++) {
        unsigned stripe = y / 32;

        out[3 * x] = (unsigned char)(x + stripe * 40);
        out[3 * x + 1] = (unsigned char)(96 + (x >> 3));
        out[3 * x + 2] = (unsigned char)((x >> 2) ^ (stripe * 16));
    }
}

/* --- PNG pieces --------------------------------------------------------- */

static void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Writes a whole chunk at dst (12 + len bytes); returns its size. */
static size_t
put_chunk(unsigned char *dst, const char *type, const unsigned char *data,
          size_t len)
{
    uLong crc;

    put_be32(dst, (uint32_t)len);
    memcpy(dst + 4, type, 4);
    if (len)
        memmove(dst + 8, data, len);
    crc = crc32(0, dst + 4, (uInt)(len + 4));
    put_be32(dst + 8 + len, (uint32_t)crc);
    return 12 + len;
}

/* A growing byte buffer for deflate output. */
struct buf {
    unsigned char *data;
    size_t len;
    size_t cap;
};

static int
buf_reserve(struct buf *b, size_t more)
{
    unsigned char *p;
    size_t cap = b->cap ? b->cap : 65536;

    if (b->len + more <= b->cap)
        return 0;
    while (cap < b->len + more)
        cap *= 2;
    p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

/* Feeds len bytes to a raw deflate stream, with flush, into out. */
static int
deflate_into(z_stream *zs, const unsigned char *in, size_t len, int flush,
             struct buf *out)
{
    zs->next_in = (unsigned char *)(uintptr_t)in;
    zs->avail_in = (uInt)len;
    for (;;) {
        int rc;

        if (buf_reserve(out, 65536) < 0)
            return -1;
        zs->next_out = out->data + out->len;
        zs->avail_out = (uInt)(out->cap - out->len);
        rc = deflate(zs, flush);
        out->len = out->cap - zs->avail_out;
        if (rc == Z_STREAM_END)
            return 0;
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            return -1;
        if (zs->avail_in == 0 && zs->avail_out != 0)
            return 0;
    }
}

static int
deflate_start(z_stream *zs)
{
    memset(zs, 0, sizeof *zs);
    return deflateInit2(zs, 1, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) ==
           Z_OK ? 0 : -1;
}

/* Splits a deflate stream into IDAT chunks of IDAT_DATA_MAX bytes. */
static int
chunk_up(const struct buf *z, struct filler *f)
{
    size_t nchunks = z->len / IDAT_DATA_MAX + 1;
    size_t at = 0;

    f->chunks = malloc(z->len + nchunks * 12);
    if (!f->chunks)
        return -1;
    for (size_t off = 0; off < z->len; off += IDAT_DATA_MAX) {
        size_t n = z->len - off < IDAT_DATA_MAX ? z->len - off
                                                  : IDAT_DATA_MAX;

        at += put_chunk(f->chunks + at, "IDAT", z->data + off, n);
    }
    f->chunks_len = at;
    return 0;
}

/* Deflates the filler rows of f (below the band) into IDAT chunks. */
static int
filler_build(struct filler *f)
{
    unsigned band = band_rows_for(f->height);
    unsigned noise = noise_share(f->width, f->height);
    size_t row_len = 1 + (size_t)f->width * 3;
    unsigned char *row = NULL;
    struct buf z = { 0 };
    z_stream zs;
    int rc = -1;

    if (deflate_start(&zs) < 0)
        return -1;
    row = malloc(row_len);
    if (!row)
        goto fail;
    f->adler = adler32(0, NULL, 0);
    for (unsigned y = band; y < f->height; y++) {
        row[0] = 0;             /* filter: none */
        filler_row(f->width, y, noise, row + 1);
        f->adler = adler32(f->adler, row, (uInt)row_len);
        f->raw_len += row_len;
        if (deflate_into(&zs, row, row_len, Z_NO_FLUSH, &z) < 0)
            goto fail;
    }
    if (deflate_into(&zs, NULL, 0, Z_FINISH, &z) < 0)
        goto fail;
    rc = chunk_up(&z, f);
fail:
    deflateEnd(&zs);
    free(z.data);
    free(row);
    return rc;
}

/* The ready filler for a size, built by the first caller that needs it
 * while later callers for the same size wait. */
static struct filler *
filler_get(struct imagegen *ig, unsigned width, unsigned height)
{
    struct filler *f;
    int rc;

    pthread_mutex_lock(&ig->lock);
    for (f = ig->fillers; f; f = f->next)
        if (f->width == width && f->height == height)
            break;
    if (f) {
        while (f->state == FILLER_BUILDING)
            pthread_cond_wait(&ig->changed, &ig->lock);
        rc = f->state == FILLER_READY;
        pthread_mutex_unlock(&ig->lock);
        return rc ? f : NULL;
    }
    f = calloc(1, sizeof *f);
    if (!f) {
        pthread_mutex_unlock(&ig->lock);
        return NULL;
    }
    f->width = width;
    f->height = height;
    f->state = FILLER_BUILDING;
    f->next = ig->fillers;
    ig->fillers = f;
    pthread_mutex_unlock(&ig->lock);

    rc = filler_build(f);

    pthread_mutex_lock(&ig->lock);
    f->state = rc == 0 ? FILLER_READY : FILLER_FAILED;
    pthread_cond_broadcast(&ig->changed);
    pthread_mutex_unlock(&ig->lock);
    return rc == 0 ? f : NULL;
}

/* Head: signature, IHDR, and one IDAT holding the zlib header and the
 * band rows deflated up to a sync flush.  *adler gets their Adler-32. */
static unsigned char *
png_head(const struct imagegen_spec *spec, size_t *len, uLong *adler)
{
    static const unsigned char sig[8] = { 0x89, 'P', 'N', 'G',
                                           '\r', '\n', 0x1a, '\n' };
    unsigned band = band_rows_for(spec->height);
    size_t row_len = 1 + (size_t)spec->width * 3;
    unsigned char ihdr[13];
    unsigned char *row = NULL, *head = NULL;
    struct buf z = { 0 };
    z_stream zs;
    size_t at;

    if (deflate_start(&zs) < 0)
        return NULL;
    row = calloc(1, row_len);
    if (!row || buf_reserve(&z, 2) < 0)
        goto fail;
    /* Filter "sub": the first pixel carries the color, zeros repeat it. */
    row[0] = 1;
    memcpy(row + 1, spec->rgb, 3);
    z.data[0] = 0x78;           /* deflate, 32K window */
    z.data[1] = 0x01;           /* fastest; (0x7801 % 31) == 0 */
    z.len = 2;
    *adler = adler32(0, NULL, 0);
    for (unsigned y = 0; y < band; y++) {
        *adler = adler32(*adler, row, (uInt)row_len);
        if (deflate_into(&zs, row, row_len, Z_NO_FLUSH, &z) < 0)
            goto fail;
    }
    if (deflate_into(&zs, NULL, 0, Z_SYNC_FLUSH, &z) < 0)
        goto fail;

    head = malloc(sizeof sig + 25 + 12 + z.len);
    if (!head)
        goto fail;
    memcpy(head, sig, sizeof sig);
    put_be32(ihdr, spec->width);
    put_be32(ihdr + 4, spec->height);
    ihdr[8] = 8;                /* bit depth */
    ihdr[9] = 2;                /* RGB */
    ihdr[10] = ihdr[11] = ihdr[12] = 0;
    at = sizeof sig;
    at += put_chunk(head + at, "IHDR", ihdr, sizeof ihdr);
    at += put_chunk(head + at, "IDAT", z.data, z.len);
    /* The CRC is already written, so the flip makes it fail. */
    if (spec->corrupt)
        head[at - 4 - z.len + z.len / 2] ^= 0x5a;
    *len = at;
fail:
    deflateEnd(&zs);
    free(z.data);
    free(row);
    return head;
}

/* Tail: an IDAT with the stream's Adler-32, then IEND. */
static unsigned char *
png_tail(uLong adler, size_t *len)
{
    unsigned char sum[4];
    unsigned char *tail = malloc(16 + 12);

    if (!tail)
        return NULL;
    put_be32(sum, (uint32_t)adler);
    *len = put_chunk(tail, "IDAT", sum, 4);
    *len += put_chunk(tail + *len, "IEND", NULL, 0);
    return tail;
}

static int
make_png(struct imagegen *ig, const struct imagegen_spec *spec,
         struct imagegen_image *img)
{
    struct filler *f = filler_get(ig, spec->width, spec->height);
    uLong adler;

    if (!f)
        return -1;
    img->owned[0] = png_head(spec, &img->seg_len[0], &adler);
    if (!img->owned[0])
        return -1;
    adler = adler32_combine(adler, f->adler, (z_off_t)f->raw_len);
    img->owned[2] = png_tail(adler, &img->seg_len[2]);
    if (!img->owned[2])
        return -1;
    img->seg[0] = img->owned[0];
    img->seg[1] = f->chunks;
    img->seg_len[1] = f->chunks_len;
    img->seg[2] = img->owned[2];
    return 0;
}

/* --- JPEG ------------------------------------------------------------- */

struct jpeg_fail {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
};

static void
jpeg_fail_exit(j_common_ptr cinfo)
{
    longjmp(((struct jpeg_fail *)(void *)cinfo->err)->jump, 1);
}

static void
jpeg_quiet(j_common_ptr cinfo)
{
    (void)cinfo;
}

static void
jpeg_setup(struct jpeg_compress_struct *c, const struct imagegen_spec *s)
{
    c->image_width = s->width;
    c->image_height = s->height;
    c->input_components = 3;
    c->in_color_space = JCS_RGB;
    jpeg_set_defaults(c);
    jpeg_set_quality(c, JPEG_QUALITY, TRUE);
    /* 4:4:4, so the flat band keeps its color. */
    for (int i = 0; i < c->num_components; i++)
        c->comp_info[i].h_samp_factor = c->comp_info[i].v_samp_factor = 1;
}

/* A libjpeg destination writing into a growing buffer; kept on the heap
 * so its state survives a longjmp out of libjpeg. */
struct jpeg_sink {
    struct jpeg_destination_mgr mgr;    /* first: libjpeg's view */
    struct buf out;
};

static void
sink_grow(j_compress_ptr c, size_t more)
{
    struct jpeg_sink *s = (struct jpeg_sink *)(void *)c->dest;

    if (buf_reserve(&s->out, more) < 0)
        jpeg_fail_exit((j_common_ptr)c);
    s->mgr.next_output_byte = s->out.data + s->out.len;
    s->mgr.free_in_buffer = s->out.cap - s->out.len;
}

static void
sink_init(j_compress_ptr c)
{
    sink_grow(c, 65536);
}

/* Called when the whole buffer is full. */
static boolean
sink_empty(j_compress_ptr c)
{
    struct jpeg_sink *s = (struct jpeg_sink *)(void *)c->dest;

    s->out.len = s->out.cap;
    sink_grow(c, s->out.cap);
    return TRUE;
}

static void
sink_term(j_compress_ptr c)
{
    struct jpeg_sink *s = (struct jpeg_sink *)(void *)c->dest;

    s->out.len = s->out.cap - s->mgr.free_in_buffer;
}

static int
make_jpeg(const struct imagegen_spec *spec, struct imagegen_image *img)
{
    struct jpeg_compress_struct c;
    struct jpeg_fail jf;
    struct jpeg_sink *sink = calloc(1, sizeof *sink);
    unsigned char *volatile row = NULL;
    unsigned band = band_rows_for(spec->height);
    /* Noise costs JPEG about three times what it costs deflate. */
    unsigned noise = noise_share(spec->width, spec->height) * 2 / 7;

    if (!sink)
        return -1;
    c.err = jpeg_std_error(&jf.mgr);
    jf.mgr.error_exit = jpeg_fail_exit;
    jf.mgr.output_message = jpeg_quiet;
    if (setjmp(jf.jump)) {
        jpeg_destroy_compress(&c);
        free(sink->out.data);
        free(sink);
        free(row);
        return -1;
    }
    jpeg_create_compress(&c);
    sink->mgr.init_destination = sink_init;
    sink->mgr.empty_output_buffer = sink_empty;
    sink->mgr.term_destination = sink_term;
    c.dest = &sink->mgr;
    jpeg_setup(&c, spec);
    row = malloc((size_t)spec->width * 3);
    if (!row)
        jpeg_fail_exit((j_common_ptr)&c);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        unsigned y = c.next_scanline;
        JSAMPROW rows[1] = { row };

        if (y < band)
            for (unsigned x = 0; x < spec->width; x++)
                memcpy(row + 3 * (size_t)x, spec->rgb, 3);
        else
            filler_row(spec->width, y, noise, row);
        jpeg_write_scanlines(&c, rows, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(row);
    img->owned[0] = sink->out.data;
    img->seg[0] = sink->out.data;
    img->seg_len[0] = sink->out.len;
    free(sink);
    return 0;
}

/* --- images ------------------------------------------------------------- */

struct imagegen *
imagegen_new(void)
{
    struct imagegen *ig = calloc(1, sizeof *ig);

    if (!ig)
        return NULL;
    pthread_mutex_init(&ig->lock, NULL);
    pthread_cond_init(&ig->changed, NULL);
    return ig;
}

void
imagegen_free(struct imagegen *ig)
{
    if (!ig)
        return;
    while (ig->fillers) {
        struct filler *f = ig->fillers;

        ig->fillers = f->next;
        free(f->chunks);
        free(f);
    }
    pthread_cond_destroy(&ig->changed);
    pthread_mutex_destroy(&ig->lock);
    free(ig);
}

struct imagegen_image *
imagegen_make(struct imagegen *ig, const struct imagegen_spec *spec)
{
    struct imagegen_image *img;
    int rc;

    /* 16384 px a side keeps every size in uInt arithmetic for zlib. */
    if (spec->width == 0 || spec->height == 0 || spec->width > 16384 ||
        spec->height > 16384)
        return NULL;
    img = calloc(1, sizeof *img);
    if (!img)
        return NULL;
    if (spec->format == IMAGEGEN_JPEG)
        rc = make_jpeg(spec, img);
    else
        rc = make_png(ig, spec, img);
    if (rc < 0) {
        imagegen_image_free(img);
        return NULL;
    }
    for (int i = 0; i < IMAGE_SEGMENTS; i++)
        img->size += img->seg_len[i];
    return img;
}

uint64_t
imagegen_size(const struct imagegen_image *img)
{
    return img->size;
}

size_t
imagegen_read(const struct imagegen_image *img, uint64_t off, void *buf,
              size_t len)
{
    unsigned char *dst = buf;
    size_t done = 0;

    for (int i = 0; i < IMAGE_SEGMENTS && done < len; i++) {
        size_t n;

        if (off >= img->seg_len[i]) {
            off -= img->seg_len[i];
            continue;
        }
        n = img->seg_len[i] - (size_t)off;
        if (n > len - done)
            n = len - done;
        memcpy(dst + done, img->seg[i] + off, n);
        done += n;
        off = 0;
    }
    return done;
}

void
imagegen_image_free(struct imagegen_image *img)
{
    if (!img)
        return;
    for (int i = 0; i < IMAGE_SEGMENTS; i++)
        free(img->owned[i]);
    free(img);
}

/* --- probing ---------------------------------------------------------- */

static int
near(const unsigned char *a, const unsigned char *b, int tolerance)
{
    for (int i = 0; i < 3; i++)
        if (abs((int)a[i] - (int)b[i]) > tolerance)
            return 0;
    return 1;
}

/* Counts the leading rows of rgb pixels that all match pixel (0,0). */
static unsigned
count_band(const unsigned char *px, unsigned width, unsigned height,
           int tolerance)
{
    unsigned y;

    for (y = 0; y < height; y++) {
        const unsigned char *row = px + (size_t)y * width * 3;

        for (unsigned x = 0; x < width; x++)
            if (!near(row + 3 * (size_t)x, px, tolerance))
                return y;
    }
    return y;
}

static int
probe_png(const void *data, size_t len, struct imagegen_probe *out)
{
    png_image im;
    unsigned char *px = NULL;

    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&im, data, len))
        return -1;
    im.format = PNG_FORMAT_RGB;
    px = malloc(PNG_IMAGE_SIZE(im));
    if (!px || !png_image_finish_read(&im, NULL, px, 0, NULL)) {
        png_image_free(&im);
        free(px);
        return -1;
    }
    out->format = IMAGEGEN_PNG;
    out->width = im.width;
    out->height = im.height;
    memcpy(out->rgb, px, 3);
    out->band_rows = count_band(px, im.width, im.height, 0);
    free(px);
    return 0;
}

static int
probe_jpeg(const void *data, size_t len, struct imagegen_probe *out)
{
    struct jpeg_decompress_struct d;
    struct jpeg_fail jf;
    unsigned char *volatile px = NULL;

    d.err = jpeg_std_error(&jf.mgr);
    jf.mgr.error_exit = jpeg_fail_exit;
    jf.mgr.output_message = jpeg_quiet;
    if (setjmp(jf.jump)) {
        jpeg_destroy_decompress(&d);
        free(px);
        return -1;
    }
    jpeg_create_decompress(&d);
    jpeg_mem_src(&d, data, (unsigned long)len);
    jpeg_read_header(&d, TRUE);
    d.out_color_space = JCS_RGB;
    jpeg_start_decompress(&d);
    px = malloc((size_t)d.output_width * d.output_height * 3);
    if (!px)
        jpeg_fail_exit((j_common_ptr)&d);
    while (d.output_scanline < d.output_height) {
        JSAMPROW rows[1] = {
            px + (size_t)d.output_scanline * d.output_width * 3
        };

        jpeg_read_scanlines(&d, rows, 1);
    }
    jpeg_finish_decompress(&d);
    out->format = IMAGEGEN_JPEG;
    out->width = d.output_width;
    out->height = d.output_height;
    memcpy(out->rgb, px, 3);
    out->band_rows = count_band(px, d.output_width, d.output_height,
                                JPEG_TOLERANCE);
    jpeg_destroy_decompress(&d);
    free(px);
    return 0;
}

int
imagegen_probe(const void *data, size_t len, struct imagegen_probe *out)
{
    const unsigned char *p = data;

    if (len >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0)
        return probe_png(data, len, out);
    if (len >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return probe_jpeg(data, len, out);
    return -1;
}
