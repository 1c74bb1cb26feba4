/*
 * pngcheck.c - the end-to-end tests' judge of an output folder.
 *
 * usage: pngcheck [--dir DIR --expect N] [--prompts FILE] [FILE...]
 *
 * Each image must be a valid PNG (image_check_png decodes every row),
 * carry our "nbbatch" chunk (and image_job_id must read the same job id
 * from it) and a "parameters" chunk that starts with the prompt, and its
 * pixel (0,0) must be the prompt's colour: the simulator paints the top
 * rows with the first three bytes of SHA-256 of the prompt (a thought image
 * with their complement, which is reported as such).  A tolerance of 6 per
 * channel absorbs JPEG answers converted to PNG.
 *
 * With --dir the folder (not recursive) must hold exactly N entries, all
 * "*.png" files: a temporary file or anything else is a problem.  No two
 * images may carry the same prompt and job id.  With --prompts every
 * non-blank, non-comment line of FILE is a plain prompt that must have
 * exactly one image (as many as the lines that repeat it), and every image
 * must belong to one of the lines.
 *
 * One line per problem goes to stdout; the exit status is 1 when there was
 * any, 2 on a usage error, else 0 after "pngcheck: N ok".  This is a test
 * tool, not part of nbbatch: it reads each file whole.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <png.h>

#include "jobs/image.h"
#include "queue/nberr.h"

#define TOLERANCE 6

/* One image that passed far enough to know its prompt and job. */
struct record {
    char *path;
    char *prompt;
    int64_t job_id;
};

struct check {
    struct record *recs;
    size_t n_recs, cap_recs;
    long checked;               /* images looked at */
    long problems;
};

static void problem(struct check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
problem(struct check *c, const char *fmt, ...)
{
    va_list ap;

    fputs("pngcheck: ", stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    c->problems++;
}

static void *
xmalloc(size_t n)
{
    void *p = malloc(n > 0 ? n : 1);

    if (p == NULL) {
        fprintf(stderr, "pngcheck: out of memory\n");
        exit(2);
    }
    return p;
}

static char *
xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;

    return memcpy(xmalloc(n), s, n);
}

static int
read_file(const char *path, unsigned char **data, size_t *len)
{
    struct stat st;
    size_t done = 0;
    int fd = open(path, O_RDONLY);

    if (fd < 0)
        return -1;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return -1;
    }
    *data = xmalloc((size_t)st.st_size);
    while (done < (size_t)st.st_size) {
        ssize_t n = read(fd, *data + done, (size_t)st.st_size - done);

        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            free(*data);
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    close(fd);
    *len = done;
    return 0;
}

static uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static char *
copy_text(const unsigned char *p, const unsigned char *end)
{
    size_t n = (size_t)(end - p);
    char *s = xmalloc(n + 1);

    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/*
 * The text of the uncompressed iTXt chunk with keyword key, as a new
 * string, or NULL.  The file was validated before, so lengths hold.
 */
static char *
find_itxt(const unsigned char *buf, size_t len, const char *key)
{
    size_t off = 8, klen = strlen(key);

    while (off + 12 <= len) {
        uint32_t n = be32(buf + off);
        const unsigned char *d = buf + off + 8, *end = d + n, *p;

        if (n > len - off - 12)
            return NULL;
        if (memcmp(buf + off + 4, "iTXt", 4) == 0 && n > klen + 2 &&
            memcmp(d, key, klen + 1) == 0 && d[klen + 1] == 0) {
            p = d + klen + 3;
            p = memchr(p, 0, (size_t)(end - p));
            p = p != NULL ? memchr(p + 1, 0, (size_t)(end - p - 1)) : NULL;
            if (p == NULL)
                return NULL;
            return copy_text(p + 1, end);
        }
        off += 12 + (size_t)n;
    }
    return NULL;
}

/* --- pixel (0,0) ---------------------------------------------------------- */

struct membuf {
    const unsigned char *data;
    size_t len, off;
};

static void
mem_read(png_structp png, png_bytep out, size_t n)
{
    struct membuf *m = png_get_io_ptr(png);

    if (n > m->len - m->off)
        png_error(png, "truncated");
    memcpy(out, m->data + m->off, n);
    m->off += n;
}

static void
quiet(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void
quiet_error(png_structp png, png_const_charp msg)
{
    (void)msg;
    png_longjmp(png, 1);
}

/* The RGB of pixel (0,0), any PNG layout; 0 or -1. */
static int
first_pixel(const unsigned char *buf, size_t len, unsigned char rgb[3])
{
    struct membuf m = { buf, len, 0 };
    png_structp png;
    png_infop info = NULL;
    unsigned char *volatile row = NULL;

    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, quiet_error,
                                 quiet);
    if (png == NULL || (info = png_create_info_struct(png)) == NULL)
        goto fail;
    if (setjmp(png_jmpbuf(png)))
        goto fail;
    png_set_read_fn(png, &m, mem_read);
    png_read_info(png, info);
    png_set_expand(png);
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    row = xmalloc(png_get_rowbytes(png, info));
    png_read_row(png, row, NULL);       /* pass 1's first row is row 0 */
    memcpy(rgb, row, 3);
    free(row);
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
fail:
    free(row);
    png_destroy_read_struct(&png, &info, NULL);
    return -1;
}

static int
near(unsigned char a, unsigned char b)
{
    return abs((int)a - (int)b) <= TOLERANCE;
}

static void
check_color(struct check *c, const char *path, const char *prompt,
            const unsigned char *buf, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE], px[3];
    unsigned int mdlen = 0;
    int i, ok = 1, thought = 1;

    if (!EVP_Digest(prompt, strlen(prompt), md, &mdlen, EVP_sha256(),
                    NULL)) {
        problem(c, "%s: SHA-256 failed", path);
        return;
    }
    if (first_pixel(buf, len, px) < 0) {
        problem(c, "%s: cannot decode pixel (0,0)", path);
        return;
    }
    for (i = 0; i < 3; i++) {
        ok &= near(px[i], md[i]);
        thought &= near(px[i], (unsigned char)~md[i]);
    }
    if (ok)
        return;
    if (thought)
        problem(c, "%s: pixel (0,0) is a thought image's colour "
                "#%02x%02x%02x (the final image wants #%02x%02x%02x)", path,
                px[0], px[1], px[2], md[0], md[1], md[2]);
    else
        problem(c, "%s: pixel (0,0) is #%02x%02x%02x, its prompt wants "
                "#%02x%02x%02x", path, px[0], px[1], px[2], md[0], md[1],
                md[2]);
}

/* --- one image ------------------------------------------------------------ */

static void
add_record(struct check *c, const char *path, const char *prompt,
           int64_t job_id)
{
    if (c->n_recs == c->cap_recs) {
        c->cap_recs = c->cap_recs ? 2 * c->cap_recs : 64;
        c->recs = realloc(c->recs, c->cap_recs * sizeof *c->recs);
        if (c->recs == NULL) {
            fprintf(stderr, "pngcheck: out of memory\n");
            exit(2);
        }
    }
    c->recs[c->n_recs].path = xstrdup(path);
    c->recs[c->n_recs].prompt = xstrdup(prompt);
    c->recs[c->n_recs].job_id = job_id;
    c->n_recs++;
}

/* Checks the chunks; returns the prompt (owned) and job id, or NULL. */
static char *
check_meta(struct check *c, const char *path, const unsigned char *buf,
           size_t len, int64_t *job_id)
{
    char *json = find_itxt(buf, len, "nbbatch"), *params, *prompt = NULL;
    json_t *root = json != NULL ? json_loads(json, 0, NULL) : NULL;
    json_t *p = json_object_get(root, "prompt");
    json_t *id = json_object_get(root, "job_id");
    int64_t file_id = -1;

    if (!json_is_string(p) || !json_is_integer(id)) {
        problem(c, "%s: no valid \"nbbatch\" chunk", path);
        goto done;
    }
    prompt = xstrdup(json_string_value(p));
    *job_id = json_integer_value(id);
    if (image_job_id(path, &file_id) != 0 || file_id != *job_id)
        problem(c, "%s: image_job_id disagrees with the chunk", path);

    params = find_itxt(buf, len, "parameters");
    if (params == NULL || strncmp(params, prompt, strlen(prompt)) != 0 ||
        params[strlen(prompt)] != '\n')
        problem(c, "%s: \"parameters\" chunk missing or not starting with "
                "the prompt", path);
    free(params);
done:
    json_decref(root);
    free(json);
    return prompt;
}

static void
check_file(struct check *c, const char *path)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    int64_t job_id = 0;
    char *prompt;

    c->checked++;
    if (read_file(path, &buf, &len) < 0) {
        problem(c, "%s: cannot read: %s", path, strerror(errno));
        return;
    }
    if (image_check_png(buf, len, NULL, NULL) != 0) {
        problem(c, "%s: not a valid PNG", path);
        free(buf);
        return;
    }
    prompt = check_meta(c, path, buf, len, &job_id);
    if (prompt != NULL) {
        check_color(c, path, prompt, buf, len);
        add_record(c, path, prompt, job_id);
        free(prompt);
    }
    free(buf);
}

/* --- the folder, duplicates, prompts -------------------------------------- */

static int
ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);

    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int
by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
check_dir(struct check *c, const char *dir, long expect)
{
    char **names = NULL, path[4096];
    size_t n = 0, cap = 0, i;
    struct dirent *e;
    struct stat st;
    DIR *d = opendir(dir);

    if (d == NULL) {
        problem(c, "%s: cannot open folder: %s", dir, strerror(errno));
        return;
    }
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, cap * sizeof *names);
            if (names == NULL)
                exit(2);
        }
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof *names, by_name);

    if ((long)n != expect)
        problem(c, "%s: holds %zu entries, expected %ld", dir, n, expect);
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (!ends_with(names[i], ".png") || lstat(path, &st) < 0 ||
            !S_ISREG(st.st_mode))
            problem(c, "%s: not a PNG file (leftover?)", path);
        else
            check_file(c, path);
        free(names[i]);
    }
    free(names);
}

static int
by_prompt_then_job(const void *a, const void *b)
{
    const struct record *x = a, *y = b;
    int r = strcmp(x->prompt, y->prompt);

    if (r != 0)
        return r;
    return (x->job_id > y->job_id) - (x->job_id < y->job_id);
}

static void
check_duplicates(struct check *c)
{
    size_t i;

    if (c->n_recs < 2)
        return;
    qsort(c->recs, c->n_recs, sizeof *c->recs, by_prompt_then_job);
    for (i = 1; i < c->n_recs; i++)
        if (by_prompt_then_job(&c->recs[i - 1], &c->recs[i]) == 0)
            problem(c, "%s and %s: same job %" PRId64 " and prompt",
                    c->recs[i - 1].path, c->recs[i].path, c->recs[i].job_id);
}

/* Images whose prompt equals s. */
static long
count_prompt(const struct check *c, const char *s)
{
    long n = 0;
    size_t i;

    for (i = 0; i < c->n_recs; i++)
        n += strcmp(c->recs[i].prompt, s) == 0;
    return n;
}

static void
check_prompts(struct check *c, const char *file)
{
    FILE *f = fopen(file, "r");
    char *line = NULL, **lines = NULL;
    size_t cap = 0, n = 0, i, j, lineno = 0, *linenos = NULL;
    ssize_t len;

    if (f == NULL) {
        problem(c, "%s: cannot open: %s", file, strerror(errno));
        return;
    }
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (line[strspn(line, " \t")] == '\0' ||
            line[strspn(line, " \t")] == '#')
            continue;
        lines = realloc(lines, (n + 1) * sizeof *lines);
        linenos = realloc(linenos, (n + 1) * sizeof *linenos);
        if (lines == NULL || linenos == NULL)
            exit(2);
        linenos[n] = lineno;
        lines[n++] = xstrdup(line);
    }
    free(line);
    fclose(f);

    for (i = 0; i < n; i++) {
        long want = 0, have = count_prompt(c, lines[i]);

        for (j = 0; j < n; j++)
            want += strcmp(lines[i], lines[j]) == 0;
        if (have != want)
            problem(c, "%s:%zu: prompt has %ld image(s), expected %ld",
                    file, linenos[i], have, want);
    }
    for (i = 0; i < c->n_recs; i++) {
        for (j = 0; j < n && strcmp(c->recs[i].prompt, lines[j]) != 0; j++)
            ;
        if (j == n)
            problem(c, "%s: its prompt is not in %s", c->recs[i].path, file);
    }
    for (i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
    free(linenos);
}

static void
usage(void)
{
    fprintf(stderr, "usage: pngcheck [--dir DIR --expect N] "
            "[--prompts FILE] [FILE...]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    struct check c = { NULL, 0, 0, 0, 0 };
    const char *dir = NULL, *prompts = NULL;
    long expect = -1;
    char *end;
    int i;

    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc) {
            errno = 0;
            expect = strtol(argv[++i], &end, 10);
            if (errno != 0 || *end != '\0' || end == argv[i] || expect < 0)
                usage();
        } else if (strcmp(argv[i], "--prompts") == 0 && i + 1 < argc) {
            prompts = argv[++i];
        } else {
            usage();
        }
    }
    if ((dir == NULL) != (expect < 0) || (dir == NULL && i == argc))
        usage();

    if (dir != NULL)
        check_dir(&c, dir, expect);
    for (; i < argc; i++)
        check_file(&c, argv[i]);
    check_duplicates(&c);
    if (prompts != NULL)
        check_prompts(&c, prompts);

    for (size_t k = 0; k < c.n_recs; k++) {
        free(c.recs[k].path);
        free(c.recs[k].prompt);
    }
    free(c.recs);
    if (c.problems > 0)
        return 1;
    printf("pngcheck: %ld ok\n", c.checked);
    return 0;
}
