/*
 * test_image.c - unit tests for jobs/image.c.
 *
 * Every input image is made here with libpng or libjpeg (small, so the
 * suite stays fast), written to a temporary file and handed to
 * image_write() as an fd.  Two kinds of source matter: the runner's own,
 * an unlinked O_TMPFILE file open for reading and writing in the output
 * folder, which a plain PNG turns into the image in place (our chunks
 * before IEND); and an unlinked read-only file, which is always copied
 * (our chunks after IHDR).  Outputs are checked at the byte level (chunk
 * lists, kept chunks identical to the input's) and at the pixel level
 * (decoded again).  Each test gets a fresh folder under $TMPDIR that is
 * removed afterwards.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

#include "jobs/image.h"
#include "jobs/naming.h"
#include "queue/nberr.h"

#define MAX_CHUNKS 64

struct blob {
    unsigned char *data;
    size_t len;
};

struct chunk {
    char type[5];
    const unsigned char *start;     /* the length field */
    size_t total;                   /* 12 + len */
    const unsigned char *data;
    uint32_t len;
};

struct fixture {
    char dir[256];
};

/* Where image_write() gets its bytes from. */
enum source_kind {
    SRC_READONLY,           /* unlinked, read-only: always copied */
    SRC_TMPFILE             /* the runner's O_TMPFILE file: in place */
};

/* Where our two chunks are in the file written. */
enum place { AFTER_IHDR, BEFORE_IEND };

/* --- helpers ----------------------------------------------------------- */

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

static int
setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    const char *tmp = getenv("TMPDIR");

    assert_non_null(fx);
    snprintf(fx->dir, sizeof fx->dir, "%s/test_image.XXXXXX",
             tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
    assert_non_null(mkdtemp(fx->dir));
    *state = fx;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *fx = *state;

    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

static void
blob_free(struct blob *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

static int
read_whole(const char *path, struct blob *b)
{
    FILE *f = fopen(path, "rb");
    long n;

    if (f == NULL)
        return -1;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b->data = malloc((size_t)n + 1);
    assert_non_null(b->data);
    b->len = fread(b->data, 1, (size_t)n, f);
    fclose(f);
    assert_int_equal(b->len, (size_t)n);
    return 0;
}

static void
write_whole(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static int
exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

/* Number of entries in dir other than "." and "..". */
static int
count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* Writes data to "<dir>/input.bin" and opens it for reading. */
static int
input_fd(const struct fixture *fx, const void *data, size_t len)
{
    char path[300];
    int fd;

    snprintf(path, sizeof path, "%s/input.bin", fx->dir);
    write_whole(path, data, len);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    unlink(path);
    return fd;
}

/* The runner's case: data in an unlinked O_TMPFILE file in dir, open for
 * reading and writing, at offset 0. */
static int
tmpfile_fd(const char *dir, const void *data, size_t len)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    return fd;
}

/* 1 when the file open at fd is the one at path. */
static int
same_file(int fd, const char *path)
{
    struct stat a, b;

    assert_int_equal(fstat(fd, &a), 0);
    return stat(path, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

static struct image_meta
test_meta(int64_t job_id, const char *prompt)
{
    struct image_meta m;

    memset(&m, 0, sizeof m);
    m.job_id = job_id;
    m.batch = "batch-1";
    m.prompt = prompt;
    m.model = "gemini-2.5-flash-image";
    m.aspect = "1:1";
    m.size = "1K";
    m.response_id = "JB67aLHvKPusqtsP5rC5-Aw";
    m.model_version = "gemini-2.5-flash-image-preview";
    m.prompt_tokens = 18;
    m.output_tokens = 1290;
    m.thought_tokens = 0;
    m.total_tokens = 1308;
    return m;
}

static size_t
list_chunks(const struct blob *b, struct chunk *c, size_t max)
{
    static const unsigned char sig[8] = {
        0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'
    };
    size_t off = 8, n = 0;

    assert_true(b->len >= 8);
    assert_memory_equal(b->data, sig, 8);
    while (off + 12 <= b->len) {
        const unsigned char *p = b->data + off;
        uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                       (uint32_t)p[2] << 8 | p[3];

        assert_true(n < max);
        assert_true(off + 12 + len <= b->len);
        memcpy(c[n].type, p + 4, 4);
        c[n].type[4] = '\0';
        c[n].start = p;
        c[n].total = 12 + (size_t)len;
        c[n].data = p + 8;
        c[n].len = len;
        off += c[n].total;
        n++;
        if (strcmp(c[n - 1].type, "IEND") == 0)
            break;
    }
    assert_int_equal(off, b->len);      /* nothing after IEND */
    return n;
}

/* The keyword of a text chunk, or "" for other chunks. */
static const char *
chunk_keyword(const struct chunk *c, char *buf, size_t len)
{
    size_t n;

    buf[0] = '\0';
    if (strcmp(c->type, "tEXt") != 0 && strcmp(c->type, "zTXt") != 0 &&
        strcmp(c->type, "iTXt") != 0)
        return buf;
    n = strnlen((const char *)c->data, c->len);
    if (n >= len)
        n = len - 1;
    memcpy(buf, c->data, n);
    buf[n] = '\0';
    return buf;
}

/* The text of an uncompressed iTXt chunk, as a new string. */
static char *
itxt_text(const struct chunk *c)
{
    const unsigned char *p = c->data, *end = c->data + c->len;
    char *s;
    int i;

    assert_string_equal(c->type, "iTXt");
    p = memchr(p, 0, c->len);
    assert_non_null(p);
    assert_int_equal(p[1], 0);              /* not compressed */
    p += 3;
    for (i = 0; i < 2; i++) {
        p = memchr(p, 0, (size_t)(end - p));
        assert_non_null(p);
        p++;
    }
    s = malloc((size_t)(end - p) + 1);
    assert_non_null(s);
    memcpy(s, p, (size_t)(end - p));
    s[end - p] = '\0';
    return s;
}

static int
chunk_crc_ok(const struct chunk *c)
{
    const unsigned char *q = c->data + c->len;
    uint32_t want = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 |
                    (uint32_t)q[2] << 8 | q[3];

    return crc32(0L, c->start + 4, c->len + 4) == want;
}

/* --- making PNGs -------------------------------------------------------- */

struct pngspec {
    uint32_t width, height;
    int color_type, bit_depth, interlace;
    int old_texts;          /* add old "parameters"/"nbbatch" and others */
    int private_chunk;      /* add an unknown ancillary chunk "prVt" */
    size_t idat_size;       /* split IDAT into chunks of this size */
};

static int
png_channels(int color_type)
{
    switch (color_type) {
    case PNG_COLOR_TYPE_GRAY_ALPHA: return 2;
    case PNG_COLOR_TYPE_RGB:        return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA:  return 4;
    default:                        return 1;
    }
}

/* Pixel bytes that do not compress away, so IDATs can be split. */
static unsigned char
noise(uint32_t x, uint32_t y)
{
    uint32_t h = x * 73856093u ^ y * 19349663u;

    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    return (unsigned char)h;
}

static void
add_png_extras(png_structp png, png_infop info, const struct pngspec *sp)
{
    png_text t[4];
    png_unknown_chunk u;

    if (sp->old_texts) {
        memset(t, 0, sizeof t);
        t[0].compression = PNG_TEXT_COMPRESSION_NONE;
        t[0].key = "parameters";
        t[0].text = "an old prompt\nSteps: 20";
        t[1].compression = PNG_ITXT_COMPRESSION_NONE;
        t[1].key = "nbbatch";
        t[1].text = "{\"job_id\":999}";
        t[2].compression = PNG_TEXT_COMPRESSION_zTXt;
        t[2].key = "Comment";
        t[2].text = "kept, compressed, kept";
        t[3].compression = PNG_TEXT_COMPRESSION_NONE;
        t[3].key = "parametersX";
        t[3].text = "a keyword that only starts like ours";
        png_set_text(png, info, t, 4);
    }
    if (sp->private_chunk) {
        memset(&u, 0, sizeof u);
        memcpy(u.name, "prVt", 5);
        u.data = (png_byte *)"private data";
        u.size = 12;
        u.location = PNG_AFTER_IDAT;
        png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_ALWAYS,
                                    (png_const_bytep)"prVt", 1);
        png_set_unknown_chunks(png, info, &u, 1);
    }
}

static void
make_png(const struct pngspec *sp, struct blob *out)
{
    png_structp png;
    png_infop info;
    png_color palette[256];
    size_t rowbytes;
    unsigned char *pixels;
    png_bytep *rows;
    FILE *f;
    uint32_t y;
    size_t x;
    int i;

    f = open_memstream((char **)&out->data, &out->len);
    assert_non_null(f);
    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    info = png_create_info_struct(png);
    assert_non_null(info);
    if (setjmp(png_jmpbuf(png)))
        fail_msg("libpng failed to make a test image");
    png_init_io(png, f);
    if (sp->idat_size > 0)
        png_set_compression_buffer_size(png, sp->idat_size);
    png_set_IHDR(png, info, sp->width, sp->height, sp->bit_depth,
                 sp->color_type, sp->interlace, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (sp->color_type == PNG_COLOR_TYPE_PALETTE) {
        for (i = 0; i < 256; i++) {
            palette[i].red = (png_byte)i;
            palette[i].green = (png_byte)(255 - i);
            palette[i].blue = (png_byte)(i * 3);
        }
        png_set_PLTE(png, info, palette, 1 << sp->bit_depth);
    }
    add_png_extras(png, info, sp);

    rowbytes = ((size_t)sp->width * (size_t)png_channels(sp->color_type) *
                (size_t)sp->bit_depth + 7) / 8;
    pixels = malloc(rowbytes * sp->height);
    rows = malloc(sizeof *rows * sp->height);
    assert_non_null(pixels);
    assert_non_null(rows);
    for (y = 0; y < sp->height; y++) {
        rows[y] = pixels + y * rowbytes;
        for (x = 0; x < rowbytes; x++)
            rows[y][x] = noise((uint32_t)x, y);
    }
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    assert_int_equal(fclose(f), 0);
    free(rows);
    free(pixels);
}

/* One chunk with a correct CRC. */
static void
put_chunk(unsigned char *p, const char *type, const void *data,
          uint32_t len)
{
    uLong crc;

    p[0] = (unsigned char)(len >> 24);
    p[1] = (unsigned char)(len >> 16);
    p[2] = (unsigned char)(len >> 8);
    p[3] = (unsigned char)len;
    memcpy(p + 4, type, 4);
    if (len > 0)
        memcpy(p + 8, data, len);
    crc = crc32(0L, p + 4, len + 4);
    p[8 + len] = (unsigned char)(crc >> 24);
    p[9 + len] = (unsigned char)(crc >> 16);
    p[10 + len] = (unsigned char)(crc >> 8);
    p[11 + len] = (unsigned char)crc;
}

/* --- making JPEGs ------------------------------------------------------- */

static unsigned char
source_sample(uint32_t x, uint32_t y, int c, uint32_t w, uint32_t h)
{
    return (unsigned char)(x * 160 / w + y * 60 / h + (uint32_t)c * 15);
}

static void
make_jpeg(uint32_t w, uint32_t h, J_COLOR_SPACE cs, int progressive,
          struct blob *out)
{
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr jerr;
    unsigned long size = 0;
    unsigned char *row;
    JSAMPROW rows[1];
    int comps = cs == JCS_GRAYSCALE ? 1 : cs == JCS_CMYK ? 4 : 3;
    uint32_t x, y;
    int c;

    out->data = NULL;
    ci.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&ci);
    jpeg_mem_dest(&ci, &out->data, &size);
    ci.image_width = w;
    ci.image_height = h;
    ci.input_components = comps;
    ci.in_color_space = cs;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, 95, TRUE);
    for (c = 0; c < ci.num_components; c++)
        ci.comp_info[c].h_samp_factor = ci.comp_info[c].v_samp_factor = 1;
    if (progressive)
        jpeg_simple_progression(&ci);
    jpeg_start_compress(&ci, TRUE);

    row = malloc((size_t)w * (size_t)comps);
    assert_non_null(row);
    rows[0] = row;
    for (y = 0; y < h; y++) {
        for (x = 0; x < w; x++)
            for (c = 0; c < comps; c++)
                row[x * (uint32_t)comps + (uint32_t)c] =
                    source_sample(x, y, c, w, h);
        jpeg_write_scanlines(&ci, rows, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    free(row);
    out->len = size;
}

/* Decodes a JPEG the plain way, as the reference for the conversion. */
static unsigned char *
decode_jpeg(const struct blob *b, J_COLOR_SPACE out_cs, uint32_t *w,
            uint32_t *h)
{
    struct jpeg_decompress_struct ci;
    struct jpeg_error_mgr jerr;
    unsigned char *pixels;
    JSAMPROW rows[1];
    size_t stride;

    ci.err = jpeg_std_error(&jerr);
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, b->data, b->len);
    jpeg_read_header(&ci, TRUE);
    ci.out_color_space = out_cs;
    jpeg_start_decompress(&ci);
    *w = ci.output_width;
    *h = ci.output_height;
    stride = (size_t)ci.output_width * (size_t)ci.output_components;
    pixels = malloc(stride * ci.output_height);
    assert_non_null(pixels);
    while (ci.output_scanline < ci.output_height) {
        rows[0] = pixels + stride * ci.output_scanline;
        jpeg_read_scanlines(&ci, rows, 1);
    }
    jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    return pixels;
}

/* Decodes a PNG to 8-bit pixels of the given format. */
static unsigned char *
decode_png(const struct blob *b, png_uint_32 format, uint32_t *w,
           uint32_t *h)
{
    png_image img;
    unsigned char *pixels;

    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    assert_true(png_image_begin_read_from_memory(&img, b->data, b->len));
    img.format = format;
    pixels = malloc(PNG_IMAGE_SIZE(img));
    assert_non_null(pixels);
    assert_true(png_image_finish_read(&img, NULL, pixels, 0, NULL));
    *w = img.width;
    *h = img.height;
    return pixels;
}

/* --- common checks ------------------------------------------------------ */

/*
 * Writes in as the image of m->job_id at path from a source of the given
 * kind; returns image_write's code.  *in_place (if not NULL) tells whether
 * the source file itself became the file at path.
 */
static int
write_via(const struct fixture *fx, enum source_kind kind,
          const struct blob *in, const char *path,
          const struct image_meta *m, struct image_info *info, char *err,
          size_t errlen, int *in_place)
{
    int fd = kind == SRC_TMPFILE ? tmpfile_fd(fx->dir, in->data, in->len)
                                 : input_fd(fx, in->data, in->len);
    int rc = image_write(fd, path, m, info, err, errlen);

    if (in_place != NULL)
        *in_place = rc == 0 && same_file(fd, path);
    close(fd);
    return rc;
}

/* Writes in as the image of job_id at path; returns image_write's code. */
static int
run_write(const struct fixture *fx, const struct blob *in, const char *path,
          const struct image_meta *m, struct image_info *info, char *err,
          size_t errlen)
{
    return write_via(fx, SRC_READONLY, in, path, m, info, err, errlen,
                     NULL);
}

/*
 * The file at path must be a valid PNG from IHDR to IEND with our two
 * chunks, "parameters" then "nbbatch", at place and nowhere else.  Returns
 * the index of the "parameters" chunk in c.
 */
static size_t
check_our_chunks(const char *path, const struct image_meta *m,
                 const char *format, enum place place, struct blob *out,
                 struct chunk *c, size_t *n)
{
    char key[80];
    json_t *root;
    char *json;
    size_t i, first, params = 0, ours = 0;

    assert_int_equal(read_whole(path, out), 0);
    assert_int_equal(image_check_png(out->data, out->len, NULL, NULL), 0);
    *n = list_chunks(out, c, MAX_CHUNKS);
    assert_true(*n >= 4);
    assert_string_equal(c[0].type, "IHDR");
    assert_string_equal(c[*n - 1].type, "IEND");
    first = place == AFTER_IHDR ? 1 : *n - 3;
    assert_string_equal(c[first].type, "iTXt");
    assert_string_equal(chunk_keyword(&c[first], key, sizeof key),
                        "parameters");
    assert_string_equal(c[first + 1].type, "iTXt");
    assert_string_equal(chunk_keyword(&c[first + 1], key, sizeof key),
                        "nbbatch");
    for (i = 0; i < *n; i++) {
        assert_true(chunk_crc_ok(&c[i]));
        chunk_keyword(&c[i], key, sizeof key);
        params += strcmp(key, "parameters") == 0;
        ours += strcmp(key, "nbbatch") == 0;
    }
    assert_int_equal(params, 1);
    assert_int_equal(ours, 1);

    json = itxt_text(&c[first + 1]);
    root = json_loads(json, 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_integer_value(json_object_get(root, "job_id")),
                     m->job_id);
    assert_string_equal(json_string_value(json_object_get(root, "prompt")),
                        m->prompt);
    assert_string_equal(json_string_value(json_object_get(root,
                        "source_format")), format);
    json_decref(root);
    free(json);
    return first;
}

/*
 * After a refused input, from either kind of source (the in-place path
 * links its file at the temporary name before validating): nothing at
 * path, nothing else in the folder.
 */
static void
check_refused(const struct fixture *fx, const struct blob *in,
              const char *expect_msg)
{
    struct image_meta m = test_meta(7, "refused");
    char path[300], err[256];
    int kind, rc;

    for (kind = SRC_READONLY; kind <= SRC_TMPFILE; kind++) {
        struct image_info info = { "untouched", 1, 2, 3 };

        snprintf(path, sizeof path, "%s/out/bad.png", fx->dir);
        rc = write_via(fx, (enum source_kind)kind, in, path, &m, &info, err,
                       sizeof err, NULL);
        assert_int_equal(rc, NB_EIMAGE);
        assert_true(err[0] != '\0');
        if (expect_msg != NULL && strstr(err, expect_msg) == NULL)
            fail_msg("message \"%s\" lacks \"%s\"", err, expect_msg);
        assert_false(exists(path));
        assert_true(count_entries(fx->dir) == 0 ||
                    count_entries(fx->dir) == 1);
        if (count_entries(fx->dir) == 1) {
            snprintf(path, sizeof path, "%s/out", fx->dir);
            assert_int_equal(count_entries(path), 0);
        }
        assert_string_equal(info.source_format, "untouched");
    }
}

/* --- PNG in: copied ----------------------------------------------------- */

static void
test_png_kept_byte_for_byte(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 37, 23, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE,
                          1, 1, 256 };
    struct image_meta m = test_meta(42, "a fox in the snow");
    struct image_info info;
    struct blob in = { 0 }, out = { 0 }, again = { 0 };
    struct chunk ic[MAX_CHUNKS], oc[MAX_CHUNKS], ac[MAX_CHUNKS];
    size_t ni, no, na, i, j, idats = 0;
    char path[300], err[256], key[80];
    char *params;
    int in_place = 1;

    make_png(&sp, &in);
    snprintf(path, sizeof path, "%s/fox.png", fx->dir);
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     0);
    assert_string_equal(info.source_format, "png");
    assert_int_equal(info.width, 37);
    assert_int_equal(info.height, 23);

    check_our_chunks(path, &m, "png", AFTER_IHDR, &out, oc, &no);
    assert_int_equal(info.bytes, (int64_t)out.len);
    ni = list_chunks(&in, ic, MAX_CHUNKS);

    /* Every input chunk but the replaced ones, in order, byte for byte. */
    assert_memory_equal(oc[0].start, ic[0].start, ic[0].total);
    for (i = 1, j = 3; i < ni; i++) {
        chunk_keyword(&ic[i], key, sizeof key);
        if (strcmp(key, "parameters") == 0 || strcmp(key, "nbbatch") == 0)
            continue;
        assert_true(j < no);
        assert_int_equal(oc[j].total, ic[i].total);
        assert_memory_equal(oc[j].start, ic[i].start, ic[i].total);
        idats += strcmp(ic[i].type, "IDAT") == 0;
        j++;
    }
    assert_int_equal(j, no);
    assert_int_equal(no, ni - 2 + 2);
    assert_true(idats > 1);             /* the split IDAT survived */

    params = itxt_text(&oc[1]);
    assert_string_equal(params, "a fox in the snow\nModel: "
                        "gemini-2.5-flash-image, Size: 37x23, Aspect ratio: "
                        "1:1, Image size: 1K, Generator: nbbatch");
    free(params);

    /* From the runner's kind of source the old text chunks of ours must
     * go too, so it is copied all the same: the very same bytes. */
    assert_int_equal(write_via(fx, SRC_TMPFILE, &in, path, &m, &info, err,
                               sizeof err, &in_place), 0);
    assert_false(in_place);
    check_our_chunks(path, &m, "png", AFTER_IHDR, &again, ac, &na);
    assert_int_equal(again.len, out.len);
    assert_memory_equal(again.data, out.data, out.len);
    assert_int_equal(count_entries(fx->dir), 1);
    blob_free(&in);
    blob_free(&out);
    blob_free(&again);
}

/* The input starts at the fd's current offset; bytes after IEND drop. */
static void
test_png_offset_and_trailer(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 8, 8, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(5, "offset");
    struct image_info info;
    struct blob in = { 0 }, out = { 0 }, padded, trailed;
    struct chunk oc[MAX_CHUNKS];
    char path[300], err[256];
    size_t no;
    int fd;

    make_png(&sp, &in);
    padded.len = 100 + in.len + 50;
    padded.data = malloc(padded.len);
    assert_non_null(padded.data);
    memset(padded.data, 'j', padded.len);
    memcpy(padded.data + 100, in.data, in.len);
    snprintf(path, sizeof path, "%s/off.png", fx->dir);

    /* Read-only source, and the runner's kind: an offset means a copy. */
    fd = input_fd(fx, padded.data, padded.len);
    assert_int_equal(lseek(fd, 100, SEEK_SET), 100);
    assert_int_equal(image_write(fd, path, &m, &info, err, sizeof err), 0);
    close(fd);
    check_our_chunks(path, &m, "png", AFTER_IHDR, &out, oc, &no);
    assert_int_equal(out.len, in.len + oc[1].total + oc[2].total);
    blob_free(&out);

    fd = tmpfile_fd(fx->dir, padded.data, padded.len);
    assert_int_equal(lseek(fd, 100, SEEK_SET), 100);
    assert_int_equal(image_write(fd, path, &m, &info, err, sizeof err), 0);
    assert_false(same_file(fd, path));
    close(fd);
    check_our_chunks(path, &m, "png", AFTER_IHDR, &out, oc, &no);
    assert_int_equal(out.len, in.len + oc[1].total + oc[2].total);
    assert_int_equal(info.bytes, (int64_t)out.len);
    blob_free(&out);

    /* A trailer alone, at offset 0: copied too, and dropped. */
    trailed.data = padded.data + 100;
    trailed.len = in.len + 50;
    fd = tmpfile_fd(fx->dir, trailed.data, trailed.len);
    assert_int_equal(image_write(fd, path, &m, &info, err, sizeof err), 0);
    assert_false(same_file(fd, path));
    close(fd);
    check_our_chunks(path, &m, "png", AFTER_IHDR, &out, oc, &no);
    assert_int_equal(out.len, in.len + oc[1].total + oc[2].total);
    assert_int_equal(count_entries(fx->dir), 1);
    blob_free(&in);
    blob_free(&out);
    blob_free(&padded);
}

/* A pipe is not seekable; the writer reads it once, front to back. */
static void
test_png_from_pipe(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 16, 16, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(6, "pipe");
    struct image_info info;
    struct blob in = { 0 }, out = { 0 };
    struct chunk oc[MAX_CHUNKS];
    char path[300], err[256];
    size_t no;
    int p[2];

    make_png(&sp, &in);
    assert_true(in.len < 4096);
    assert_int_equal(pipe(p), 0);
    assert_int_equal(write(p[1], in.data, in.len), (ssize_t)in.len);
    close(p[1]);
    snprintf(path, sizeof path, "%s/pipe.png", fx->dir);
    assert_int_equal(image_write(p[0], path, &m, &info, err, sizeof err), 0);
    close(p[0]);
    assert_int_equal(info.width, 16);
    check_our_chunks(path, &m, "png", AFTER_IHDR, &out, oc, &no);
    assert_int_equal(out.len, in.len + oc[1].total + oc[2].total);
    blob_free(&in);
    blob_free(&out);
}

/* --- PNG in: in place ----------------------------------------------------- */

/* The runner's case: the O_TMPFILE file itself becomes the image. */
static void
test_png_in_place(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 37, 23, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE,
                          0, 1, 256 };
    struct image_meta m = test_meta(42, "a fox in the snow");
    struct image_info info;
    struct blob in = { 0 }, out = { 0 };
    struct chunk ic[MAX_CHUNKS], oc[MAX_CHUNKS];
    char dir[300], path[400], err[256];
    size_t ni, no, first, i, idats = 0;
    struct stat st;
    int64_t id = 0;
    char *params;
    int fd;

    umask(022);
    make_png(&sp, &in);
    snprintf(dir, sizeof dir, "%s/a/b", fx->dir);     /* made on the way */
    snprintf(path, sizeof path, "%s/fox.png", dir);
    fd = tmpfile_fd(fx->dir, in.data, in.len);
    assert_int_equal(image_write(fd, path, &m, &info, err, sizeof err), 0);
    assert_true(same_file(fd, path));
    close(fd);
    assert_string_equal(info.source_format, "png");
    assert_int_equal(info.width, 37);
    assert_int_equal(info.height, 23);

    first = check_our_chunks(path, &m, "png", BEFORE_IEND, &out, oc, &no);
    assert_int_equal(info.bytes, (int64_t)out.len);
    ni = list_chunks(&in, ic, MAX_CHUNKS);

    /* Every input chunk, in order, byte for byte, up to the old IEND,
     * where ours begin; then a new IEND. */
    assert_int_equal(no, ni + 2);
    assert_int_equal(first, ni - 1);
    assert_memory_equal(out.data, in.data, in.len - 12);
    assert_ptr_equal(oc[first].start, out.data + in.len - 12);
    for (i = 0; i + 1 < ni; i++)
        idats += strcmp(oc[i].type, "IDAT") == 0;
    assert_true(idats > 1);
    assert_string_equal(oc[ni - 2].type, "prVt");
    assert_int_equal(out.len, in.len + oc[first].total +
                     oc[first + 1].total);
    params = itxt_text(&oc[first]);
    assert_string_equal(params, "a fox in the snow\nModel: "
                        "gemini-2.5-flash-image, Size: 37x23, Aspect ratio: "
                        "1:1, Image size: 1K, Generator: nbbatch");
    free(params);

    /* Same mode as a copied file, nothing else left anywhere. */
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(st.st_nlink, 1);
    assert_int_equal(count_entries(dir), 1);
    assert_int_equal(count_entries(fx->dir), 1);
    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 42);

    /* The umask applies as it would to a new file. */
    umask(027);
    m.job_id = 43;
    assert_int_equal(write_via(fx, SRC_TMPFILE, &in, path, &m, &info, err,
                               sizeof err, NULL), 0);
    umask(022);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 43);
    assert_int_equal(count_entries(dir), 1);
    blob_free(&in);
    blob_free(&out);
}

/* Other layouts: palette, gray 16-bit, interlaced RGBA, 1-bit gray; from
 * both kinds of source. */
static void
test_png_variants(void **state)
{
    struct fixture *fx = *state;
    static const struct pngspec specs[] = {
        { 19, 11, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, 0, 0, 0 },
        { 19, 11, PNG_COLOR_TYPE_PALETTE, 2, PNG_INTERLACE_ADAM7, 0, 0, 0 },
        { 9, 30, PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_NONE, 1, 0, 0 },
        { 33, 17, PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_ADAM7, 0, 1, 0 },
        { 1, 1, PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_ADAM7, 0, 0, 0 },
        { 5, 3, PNG_COLOR_TYPE_GRAY_ALPHA, 16, PNG_INTERLACE_NONE, 0, 0, 0 },
    };
    size_t k;
    int kind;

    for (k = 0; k < sizeof specs / sizeof specs[0]; k++)
        for (kind = SRC_READONLY; kind <= SRC_TMPFILE; kind++) {
            struct image_meta m = test_meta((int64_t)k + 1, "variant");
            struct image_info info;
            struct blob in = { 0 }, out = { 0 };
            struct chunk oc[MAX_CHUNKS];
            char path[300], err[256];
            int in_place = 0, want_in_place;
            uint32_t w, h;
            size_t no, first;

            /* Old chunks of ours can only be dropped by copying. */
            want_in_place = kind == SRC_TMPFILE && !specs[k].old_texts;
            make_png(&specs[k], &in);
            snprintf(path, sizeof path, "%s/v%zu.png", fx->dir, k);
            assert_int_equal(write_via(fx, (enum source_kind)kind, &in,
                                       path, &m, &info, err, sizeof err,
                                       &in_place), 0);
            assert_int_equal(in_place, want_in_place);
            first = check_our_chunks(path, &m, "png",
                                     want_in_place ? BEFORE_IEND
                                                   : AFTER_IHDR,
                                     &out, oc, &no);
            assert_int_equal(image_check_png(out.data, out.len, &w, &h), 0);
            assert_int_equal(w, specs[k].width);
            assert_int_equal(h, specs[k].height);
            assert_int_equal(info.bytes, (int64_t)out.len);
            /* Same size as the input plus our two chunks, minus dropped. */
            if (!specs[k].old_texts)
                assert_int_equal(out.len, in.len + oc[first].total +
                                 oc[first + 1].total);
            blob_free(&in);
            blob_free(&out);
        }
}

/* Sources from which the file cannot be linked into place are copied. */
static void
test_png_in_place_declined(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 12, 12, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(8, "declined");
    struct image_info info;
    struct blob in = { 0 }, out = { 0 }, jpeg = { 0 };
    struct chunk oc[MAX_CHUNKS];
    char path[300], tmpl[300], err[256];
    size_t no;
    int fd, i, in_place = 1;

    make_png(&sp, &in);
    snprintf(path, sizeof path, "%s/d.png", fx->dir);
    for (i = 0; i < 3; i++) {
        if (i == 0) {
            /* O_EXCL: an O_TMPFILE file that may never get a name. */
            fd = open(fx->dir, O_TMPFILE | O_EXCL | O_RDWR, 0600);
        } else if (i == 1) {
            /* answer.c's fallback without O_TMPFILE: created, unlinked. */
            snprintf(tmpl, sizeof tmpl, "%s/answer-XXXXXX", fx->dir);
            fd = mkstemp(tmpl);
            assert_true(fd >= 0);
            unlink(tmpl);
        } else {
            /* Another file system, when there is one to try. */
            fd = open("/dev/shm", O_TMPFILE | O_RDWR, 0600);
            if (fd >= 0) {
                struct stat a, b;

                assert_int_equal(fstat(fd, &a), 0);
                assert_int_equal(stat(fx->dir, &b), 0);
                if (a.st_dev == b.st_dev) {
                    close(fd);
                    fd = -1;
                }
            }
            if (fd < 0)
                continue;
        }
        assert_true(fd >= 0);
        assert_int_equal(write(fd, in.data, in.len), (ssize_t)in.len);
        assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
        m.job_id = 8 + i;
        assert_int_equal(image_write(fd, path, &m, &info, err, sizeof err),
                         0);
        assert_false(same_file(fd, path));
        close(fd);
        check_our_chunks(path, &m, "png", AFTER_IHDR, &out, oc, &no);
        assert_int_equal(out.len, in.len + oc[1].total + oc[2].total);
        assert_int_equal(count_entries(fx->dir), 1);
        blob_free(&out);
    }

    /* A JPEG from the runner's kind of source is converted as ever. */
    make_jpeg(16, 8, JCS_RGB, 0, &jpeg);
    assert_int_equal(write_via(fx, SRC_TMPFILE, &jpeg, path, &m, &info, err,
                               sizeof err, &in_place), 0);
    assert_false(in_place);
    check_our_chunks(path, &m, "jpeg", AFTER_IHDR, &out, oc, &no);
    assert_int_equal(count_entries(fx->dir), 1);
    blob_free(&jpeg);
    blob_free(&out);
    blob_free(&in);
}

/* A failure after the file got its temporary name leaves nothing. */
static void
test_png_in_place_rename_fails(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 6, 6, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(21, "blocked");
    struct image_info info;
    struct blob in = { 0 };
    char path[300], tmp[320], inside[340], err[256];
    int kind;

    make_png(&sp, &in);
    snprintf(path, sizeof path, "%s/busy.png", fx->dir);
    snprintf(inside, sizeof inside, "%s/keep", path);
    assert_int_equal(naming_tmp_path(path, 21, tmp, sizeof tmp), 0);
    assert_int_equal(mkdir(path, 0755), 0);     /* a folder in the way */
    write_whole(inside, "x", 1);

    for (kind = SRC_READONLY; kind <= SRC_TMPFILE; kind++) {
        assert_int_equal(write_via(fx, (enum source_kind)kind, &in, path,
                                   &m, &info, err, sizeof err, NULL),
                         NB_EIO);
        assert_non_null(strstr(err, "cannot rename"));
        assert_false(exists(tmp));
        assert_true(exists(inside));
        assert_int_equal(count_entries(fx->dir), 1);
    }
    blob_free(&in);
}

/* --- JPEG in ------------------------------------------------------------ */

static void
check_jpeg(struct fixture *fx, J_COLOR_SPACE cs, int progressive,
           uint32_t w, uint32_t h)
{
    struct image_meta m = test_meta(77, "a jpeg");
    struct image_info info;
    struct blob in = { 0 }, out = { 0 };
    struct chunk oc[MAX_CHUNKS];
    unsigned char *want, *got;
    uint32_t rw, rh, pw, ph, x, y;
    int gray = cs == JCS_GRAYSCALE, comps = gray ? 1 : 3, c;
    char path[300], err[256];
    size_t no;

    make_jpeg(w, h, cs, progressive, &in);
    snprintf(path, sizeof path, "%s/j.png", fx->dir);
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     0);
    assert_string_equal(info.source_format, "jpeg");
    assert_int_equal(info.width, w);
    assert_int_equal(info.height, h);
    check_our_chunks(path, &m, "jpeg", AFTER_IHDR, &out, oc, &no);
    assert_int_equal(info.bytes, (int64_t)out.len);
    assert_int_equal(oc[0].data[9], gray ? 0 : 2);      /* colour type */
    assert_int_equal(oc[0].data[8], 8);                 /* bit depth */

    got = decode_png(&out, gray ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB, &pw,
                     &ph);
    assert_int_equal(pw, w);
    assert_int_equal(ph, h);
    if (cs != JCS_CMYK) {
        /* The very pixels libjpeg gives, and close to the source. */
        want = decode_jpeg(&in, gray ? JCS_GRAYSCALE : JCS_RGB, &rw, &rh);
        assert_memory_equal(got, want, (size_t)w * h * (size_t)comps);
        free(want);
    }
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++)
            for (c = 0; c < comps; c++) {
                int s = source_sample(x, y, c, w, h);
                int v = got[(y * w + x) * (uint32_t)comps + (uint32_t)c];

                if (cs == JCS_CMYK)     /* inverted inks times black */
                    s = (s * source_sample(x, y, 3, w, h) + 127) / 255;
                if (abs(v - s) > 6)
                    fail_msg("pixel %u,%u channel %d: %d, source %d", x, y,
                             c, v, s);
            }
    free(got);
    blob_free(&in);
    blob_free(&out);
}

static void
test_jpeg_rgb(void **state)
{
    check_jpeg(*state, JCS_RGB, 0, 64, 48);
}

static void
test_jpeg_progressive(void **state)
{
    check_jpeg(*state, JCS_RGB, 1, 50, 33);
}

static void
test_jpeg_gray(void **state)
{
    check_jpeg(*state, JCS_GRAYSCALE, 0, 40, 24);
}

static void
test_jpeg_cmyk(void **state)
{
    check_jpeg(*state, JCS_CMYK, 0, 24, 16);
}

/* --- refused inputs ----------------------------------------------------- */

static void
test_refuse_empty_random_webp(void **state)
{
    struct fixture *fx = *state;
    unsigned char random_bytes[512], webp[64];
    struct blob b;
    size_t i;

    b.data = random_bytes;
    b.len = 0;
    check_refused(fx, &b, "empty");

    srand(12345);
    for (i = 0; i < sizeof random_bytes; i++)
        random_bytes[i] = (unsigned char)(rand() >> 7);
    random_bytes[0] = 0x3c;
    b.len = sizeof random_bytes;
    check_refused(fx, &b, "answer is not an image (first bytes 3c");

    memset(webp, 0, sizeof webp);
    memcpy(webp, "RIFF\x38\0\0\0WEBPVP8 ", 16);
    b.data = webp;
    b.len = sizeof webp;
    check_refused(fx, &b, "WebP");

    b.data = (unsigned char *)"\x89PNG";
    b.len = 4;
    check_refused(fx, &b, "not an image");
}

static void
test_refuse_bad_png(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 40, 40, PNG_COLOR_TYPE_RGB, 8, 0, 1, 0, 0 };
    struct blob in = { 0 }, bad;
    struct chunk c[MAX_CHUNKS];
    size_t n, i, idat = 0, text = 0;

    make_png(&sp, &in);
    n = list_chunks(&in, c, MAX_CHUNKS);
    for (i = 0; i < n; i++) {
        if (strcmp(c[i].type, "IDAT") == 0 && idat == 0)
            idat = i;
        if (strcmp(c[i].type, "tEXt") == 0 && text == 0)
            text = i;
    }
    assert_true(idat > 0 && text > 0);
    bad.data = malloc(in.len);
    assert_non_null(bad.data);

    /* Cut in the middle of the IDAT, and just before IEND. */
    memcpy(bad.data, in.data, in.len);
    bad.len = (size_t)(c[idat].data - in.data) + c[idat].len / 2;
    check_refused(fx, &bad, "corrupt");
    bad.len = in.len - 12;
    check_refused(fx, &bad, "corrupt");

    /* One pixel byte flipped after the CRC was made: zlib's own check
     * or the CRC catches it, whichever comes first. */
    bad.len = in.len;
    bad.data[c[idat].data - in.data + c[idat].len / 2] ^= 0x10;
    check_refused(fx, &bad, "corrupt");

    /* The IDAT's CRC itself damaged. */
    memcpy(bad.data, in.data, in.len);
    bad.data[c[idat].data - in.data + c[idat].len + 3] ^= 0x01;
    check_refused(fx, &bad, "CRC");

    /* An ancillary (text) chunk damaged: kept byte for byte, so refused. */
    memcpy(bad.data, in.data, in.len);
    bad.data[c[text].data - in.data + 2] ^= 0x01;
    check_refused(fx, &bad, "CRC");

    free(bad.data);
    blob_free(&in);
}

/* A complete, CRC-correct file whose pixel stream ends too soon. */
static void
test_refuse_short_image_data(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 8, 8, PNG_COLOR_TYPE_GRAY, 8, 0, 0, 0, 0 };
    struct blob in = { 0 }, bad;
    struct chunk c[MAX_CHUNKS];
    unsigned char ihdr[13];
    size_t n, off;

    make_png(&sp, &in);
    n = list_chunks(&in, c, MAX_CHUNKS);
    assert_int_equal(n, 3);                 /* IHDR IDAT IEND */
    bad.data = malloc(in.len);
    assert_non_null(bad.data);
    bad.len = in.len;
    memcpy(bad.data, in.data, in.len);
    memcpy(ihdr, c[0].data, 13);
    ihdr[7] = 16;                           /* claim 16 rows, give 8 */
    off = (size_t)(c[0].start - in.data);
    put_chunk(bad.data + off, "IHDR", ihdr, 13);
    check_refused(fx, &bad, "corrupt");
    free(bad.data);
    blob_free(&in);
}

static void
test_refuse_too_large(void **state)
{
    struct fixture *fx = *state;
    unsigned char png[8 + 25 + 20], ihdr[13] = { 0 };
    struct blob b, jpeg = { 0 };

    /* IHDR 20000 x 1, CRC correct; refused before any pixel. */
    memcpy(png, "\x89PNG\r\n\x1a\n", 8);
    ihdr[2] = 0x4e, ihdr[3] = 0x20;         /* 20000 */
    ihdr[7] = 1;
    ihdr[8] = 8;
    put_chunk(png + 8, "IHDR", ihdr, 13);
    put_chunk(png + 33, "IEND", NULL, 0);
    b.data = png;
    b.len = 45;
    check_refused(fx, &b, "limit");

    ihdr[2] = 0, ihdr[3] = 20;              /* 20 x 1 */
    put_chunk(png + 8, "IHDR", ihdr, 13);

    /* A text chunk claiming 100 MB: refused before libpng allocates. */
    memcpy(png + 33, "\x06\x00\x00\x00tEXtparameters\0", 20);
    b.len = 53;
    check_refused(fx, &b, "over 8 MiB");
    assert_int_equal(image_check_png(png, b.len, NULL, NULL), NB_EIMAGE);

    make_jpeg(16385, 8, JCS_GRAYSCALE, 0, &jpeg);
    check_refused(fx, &jpeg, "limit");
    blob_free(&jpeg);
}

static void
test_refuse_bad_jpeg(void **state)
{
    struct fixture *fx = *state;
    struct blob in = { 0 }, bad;
    size_t i, sos;

    make_jpeg(64, 64, JCS_RGB, 0, &in);
    bad.data = malloc(in.len);
    assert_non_null(bad.data);
    memcpy(bad.data, in.data, in.len);

    bad.len = in.len / 2;                   /* truncated */
    check_refused(fx, &bad, "JPEG");
    bad.len = in.len - 2;                   /* only EOI missing */
    check_refused(fx, &bad, "JPEG");
    bad.len = 3;                            /* magic alone */
    check_refused(fx, &bad, "JPEG");

    /* Cut in the middle of the scan but properly ended with EOI: libjpeg
     * only warns ("premature end of data segment") and pads with grey. */
    for (sos = 2; sos + 1 < in.len; sos++)
        if (in.data[sos] == 0xff && in.data[sos + 1] == 0xda)
            break;
    assert_true(sos + 100 < in.len);
    memcpy(bad.data, in.data, in.len);
    bad.len = sos + (in.len - sos) / 2 + 2;
    bad.data[bad.len - 2] = 0xff;
    bad.data[bad.len - 1] = 0xd9;
    check_refused(fx, &bad, "premature end of data segment");

    /* Garbage in the middle of the entropy-coded data. */
    memcpy(bad.data, in.data, in.len);
    bad.len = in.len;
    for (i = in.len / 2; i < in.len / 2 + 64; i++)
        bad.data[i] = 0xff;
    check_refused(fx, &bad, "JPEG");

    free(bad.data);
    blob_free(&in);
}

/* --- metadata ----------------------------------------------------------- */

/* The texts as the file at path carries them (our chunks at place). */
static void
check_utf8_texts(const char *path, const struct image_meta *m,
                 enum place place)
{
    struct blob out = { 0 };
    struct chunk oc[MAX_CHUNKS];
    char *params, *json;
    json_t *root, *usage;
    int64_t id = 0;
    size_t no, first;

    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 9007199254740993LL);

    first = check_our_chunks(path, m, "png", place, &out, oc, &no);
    params = itxt_text(&oc[first]);
    assert_int_equal(strncmp(params, m->prompt, strlen(m->prompt)), 0);
    assert_string_equal(params + strlen(m->prompt), "\nModel: "
                        "gemini-2.5-flash-image, Size: 4x4, Image size: 1K, "
                        "Generator: nbbatch");
    json = itxt_text(&oc[first + 1]);
    assert_non_null(strstr(json, "\xf0\x9f\xa6\x8a"));  /* raw UTF-8 */
    root = json_loads(json, 0, NULL);
    assert_non_null(root);
    assert_string_equal(json_string_value(json_object_get(root, "batch")),
                        "batch-1");
    assert_true(json_is_null(json_object_get(root, "aspect_ratio")));
    assert_true(json_is_null(json_object_get(root, "response_id")));
    assert_string_equal(json_string_value(json_object_get(root,
                        "model_version")), "gemini-2.5-flash-image-preview");
    assert_int_equal(json_integer_value(json_object_get(root, "width")), 4);
    usage = json_object_get(root, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage,
                     "output_tokens")), 1290);
    assert_int_equal(json_integer_value(json_object_get(usage,
                     "total_tokens")), 1308);
    json_decref(root);
    free(json);
    free(params);
    blob_free(&out);
}

static void
test_utf8_round_trip(void **state)
{
    struct fixture *fx = *state;
    static const char prompt[] =
        "\xe9\x9b\xaa\xe3\x81\xae\xe4\xb8\xad\xe3\x81\xae\xe7\x8b\x90 "
        "\xf0\x9f\xa6\x8a\xf0\x9f\x8f\x94\xef\xb8\x8f "
        "e\xcc\x81 n\xcc\x83 \"quoted\" back\\slash\nsecond line\ttab";
    struct pngspec sp = { 4, 4, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(9007199254740993LL, prompt);
    struct image_info info;
    struct blob in = { 0 };
    char path[300], err[256];
    int kind, in_place;

    m.aspect = NULL;
    m.response_id = NULL;
    make_png(&sp, &in);
    for (kind = SRC_READONLY; kind <= SRC_TMPFILE; kind++) {
        snprintf(path, sizeof path, "%s/utf8-%d.png", fx->dir, kind);
        assert_int_equal(write_via(fx, (enum source_kind)kind, &in, path,
                                   &m, &info, err, sizeof err, &in_place),
                         0);
        assert_int_equal(in_place, kind == SRC_TMPFILE);
        check_utf8_texts(path, &m, in_place ? BEFORE_IEND : AFTER_IHDR);
    }
    blob_free(&in);
}

static void
test_bad_meta(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 4, 4, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(1, "bad \xc3\x28 utf8");
    struct image_info info;
    struct blob in = { 0 };
    char path[300], err[256];

    make_png(&sp, &in);
    snprintf(path, sizeof path, "%s/sub/m.png", fx->dir);
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     NB_EINVAL);
    assert_non_null(strstr(err, "prompt"));
    m.prompt = "ok";
    m.batch = "\xed\xa0\x80";               /* a UTF-16 surrogate */
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     NB_EINVAL);
    assert_non_null(strstr(err, "batch"));
    assert_int_equal(count_entries(fx->dir), 0);
    blob_free(&in);
}

static void
test_job_id_errors(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 4, 4, PNG_COLOR_TYPE_RGB, 8, 0, 1, 0, 0 };
    struct blob in = { 0 };
    char path[300];
    int64_t id = -1;

    snprintf(path, sizeof path, "%s/none.png", fx->dir);
    assert_int_equal(image_job_id(path, &id), NB_ENOTFOUND);
    write_whole(path, "not a png at all", 16);
    assert_int_equal(image_job_id(path, &id), NB_EIMAGE);

    /* A PNG from elsewhere: no chunk, or an old one of another tool. */
    make_png(&sp, &in);
    write_whole(path, in.data, in.len);
    assert_int_equal(image_job_id(path, &id), 0);   /* its "nbbatch" */
    assert_int_equal(id, 999);
    blob_free(&in);
    sp.old_texts = 0;
    make_png(&sp, &in);
    write_whole(path, in.data, in.len);
    assert_int_equal(image_job_id(path, &id), NB_ENOTFOUND);
    assert_int_equal(id, 999);              /* untouched on failure */
    blob_free(&in);
}

/*
 * A PNG of another tool with a private chunk just before IEND whose data
 * holds a complete, CRC-correct "nbbatch" chunk (job 666) and 4 bytes of
 * padding: bytes that merely look like our chunk.
 */
static void
make_png_with_lookalike(struct blob *out)
{
    static const char text[] = "nbbatch\0{\"job_id\":666}";
    struct pngspec sp = { 10, 10, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    unsigned char fake[12 + sizeof text + 4];
    struct blob in = { 0 };
    uint32_t flen = (uint32_t)sizeof text - 1;

    make_png(&sp, &in);
    put_chunk(fake, "tEXt", text, flen);
    memset(fake + 12 + flen, 0xff, 4);
    out->len = in.len + 12 + (12 + flen + 4);
    out->data = malloc(out->len);
    assert_non_null(out->data);
    memcpy(out->data, in.data, in.len - 12);
    put_chunk(out->data + in.len - 12, "prVt", fake, 12 + flen + 4);
    put_chunk(out->data + out->len - 12, "IEND", NULL, 0);
    blob_free(&in);
}

/* Our chunk is found after IHDR and before IEND, and nowhere it is not. */
static void
test_job_id_positions(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 64, 64, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(51, "where");
    struct image_info info;
    struct blob in = { 0 }, out = { 0 }, look = { 0 };
    struct chunk oc[MAX_CHUNKS];
    char path[300], err[256], *big;
    size_t no, first, idat;
    int64_t id = 0;
    int in_place;

    make_png(&sp, &in);
    snprintf(path, sizeof path, "%s/w.png", fx->dir);

    /* Copied: after IHDR, found before any image data is reached (even
     * with the rest of the file cut away). */
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     0);
    check_our_chunks(path, &m, "png", AFTER_IHDR, &out, oc, &no);
    assert_string_equal(oc[3].type, "IDAT");
    assert_int_equal(truncate(path, oc[3].start - out.data + 20), 0);
    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 51);
    blob_free(&out);

    /* In place: before IEND, found by the look at the end of the file;
     * with the first IDAT's length broken no walk could get there. */
    m.job_id = 52;
    assert_int_equal(write_via(fx, SRC_TMPFILE, &in, path, &m, &info, err,
                               sizeof err, &in_place), 0);
    assert_true(in_place);
    check_our_chunks(path, &m, "png", BEFORE_IEND, &out, oc, &no);
    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 52);
    for (idat = 0; strcmp(oc[idat].type, "IDAT") != 0; idat++)
        continue;
    out.data[oc[idat].start - out.data] = 0x7f;
    write_whole(path, out.data, out.len);
    id = 0;
    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 52);
    blob_free(&out);

    /* In place with a prompt too long for that look: the chunk headers
     * are walked past the image data. */
    big = malloc(100001);
    assert_non_null(big);
    memset(big, 'p', 100000);
    big[100000] = '\0';
    m = test_meta(53, big);
    assert_int_equal(write_via(fx, SRC_TMPFILE, &in, path, &m, &info, err,
                               sizeof err, &in_place), 0);
    assert_true(in_place);
    first = check_our_chunks(path, &m, "png", BEFORE_IEND, &out, oc, &no);
    assert_true(oc[first + 1].total > 65536);
    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 53);

    /* The same chunk damaged: refused, not skipped. */
    out.data[oc[first + 1].data - out.data + 200] ^= 0x01;
    write_whole(path, out.data, out.len);
    assert_int_equal(image_job_id(path, &id), NB_EIMAGE);
    blob_free(&out);
    free(big);

    /* A look-alike inside another chunk is no chunk of ours... */
    make_png_with_lookalike(&look);
    write_whole(path, look.data, look.len);
    assert_int_equal(image_job_id(path, &id), NB_ENOTFOUND);

    /* ...and does not hide ours when the file is made in place. */
    m = test_meta(54, "look-alike");
    assert_int_equal(write_via(fx, SRC_TMPFILE, &look, path, &m, &info, err,
                               sizeof err, &in_place), 0);
    assert_true(in_place);
    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 54);
    blob_free(&look);
    blob_free(&in);
}

/* --- files -------------------------------------------------------------- */

static void
test_folder_created_and_replaced(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 4, 4, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(11, "deep");
    struct image_info info;
    struct blob in = { 0 };
    char path[400], dir[300], err[256];
    struct stat st;
    int64_t id;

    umask(022);
    make_png(&sp, &in);
    snprintf(dir, sizeof dir, "%s/a/b//c", fx->dir);
    snprintf(path, sizeof path, "%s/out.png", dir);
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     0);
    assert_int_equal(stat(dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0755);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(count_entries(dir), 1);

    /* A file already there is replaced. */
    m.job_id = 12;
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     0);
    assert_int_equal(image_job_id(path, &id), 0);
    assert_int_equal(id, 12);
    assert_int_equal(count_entries(dir), 1);

    /* A file where a folder should be. */
    snprintf(path, sizeof path, "%s/out.png/x.png", dir);
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     NB_EIO);
    assert_non_null(strstr(err, "cannot create folder"));
    blob_free(&in);
}

static void
test_stale_tmp(void **state)
{
    struct fixture *fx = *state;
    struct pngspec sp = { 4, 4, PNG_COLOR_TYPE_RGB, 8, 0, 0, 0, 0 };
    struct image_meta m = test_meta(31, "stale");
    struct image_info info;
    struct blob in = { 0 };
    char path[300], tmp[320], err[256];
    int in_place;

    snprintf(path, sizeof path, "%s/s.png", fx->dir);
    assert_int_equal(naming_tmp_path(path, 31, tmp, sizeof tmp), 0);

    /* A crash left a temporary file: image_write starts afresh. */
    write_whole(tmp, "half an image", 13);
    make_png(&sp, &in);
    assert_int_equal(run_write(fx, &in, path, &m, &info, err, sizeof err),
                     0);
    assert_false(exists(tmp));
    assert_int_equal(count_entries(fx->dir), 1);

    /* The same when the answer's own file is to take the place. */
    write_whole(tmp, "half an image", 13);
    assert_int_equal(write_via(fx, SRC_TMPFILE, &in, path, &m, &info, err,
                               sizeof err, &in_place), 0);
    assert_true(in_place);
    assert_false(exists(tmp));
    assert_int_equal(count_entries(fx->dir), 1);

    /* Recovery removes one; removing nothing is fine too. */
    write_whole(tmp, "half an image", 13);
    assert_int_equal(image_remove_tmp(path, 31), 0);
    assert_false(exists(tmp));
    assert_int_equal(image_remove_tmp(path, 31), 0);
    assert_true(exists(path));
    blob_free(&in);
}

static void
test_check_png(void **state)
{
    struct pngspec sp = { 21, 13, PNG_COLOR_TYPE_RGB, 8,
                          PNG_INTERLACE_ADAM7, 0, 0, 0 };
    struct blob in = { 0 };
    uint32_t w = 0, h = 0;
    size_t cut;

    (void)state;
    make_png(&sp, &in);
    assert_int_equal(image_check_png(in.data, in.len, &w, &h), 0);
    assert_int_equal(w, 21);
    assert_int_equal(h, 13);
    for (cut = 0; cut < in.len; cut += 7)
        assert_int_equal(image_check_png(in.data, cut, NULL, NULL),
                         NB_EIMAGE);
    assert_int_equal(image_check_png(NULL, 0, NULL, NULL), NB_EIMAGE);
    blob_free(&in);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
        T(test_png_kept_byte_for_byte),
        T(test_png_offset_and_trailer),
        T(test_png_from_pipe),
        T(test_png_in_place),
        T(test_png_variants),
        T(test_png_in_place_declined),
        T(test_png_in_place_rename_fails),
        T(test_jpeg_rgb),
        T(test_jpeg_progressive),
        T(test_jpeg_gray),
        T(test_jpeg_cmyk),
        T(test_refuse_empty_random_webp),
        T(test_refuse_bad_png),
        T(test_refuse_short_image_data),
        T(test_refuse_too_large),
        T(test_refuse_bad_jpeg),
        T(test_utf8_round_trip),
        T(test_bad_meta),
        T(test_job_id_errors),
        T(test_job_id_positions),
        T(test_folder_created_and_replaced),
        T(test_stale_tmp),
        T(test_check_png),
#undef T
    };

    return cmocka_run_group_tests_name("image", tests, NULL, NULL);
}
