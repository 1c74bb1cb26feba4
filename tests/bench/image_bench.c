/*
 * image_bench.c - time and peak memory of image_write() on big images.
 *
 * usage: image_bench [--1k] [DIR]
 *
 * Makes a 4096x4096 baseline JPEG, a progressive one and a PNG (smooth
 * gradients with a little noise, so they compress like photographs
 * rather than like flat colour) in DIR (default $TMPDIR or /tmp), then
 * runs each conversion in a fresh process (this program re-executed with
 * "--one") and reads its peak resident memory from wait4().  An idle run
 * gives the floor every process pays for the libraries.
 *
 * Then the common case, CPU per image: a 1024x1024 RGB PNG of about
 * 1.6 MB (a "1K" answer) is written ROUNDS_1K times, each time from a
 * fresh source, in a child that times image_write() alone with getrusage()
 * and the clock.  The source is either what the runner hands over, an
 * unlinked O_TMPFILE file in the output folder ("--rounds-tmpfile"), or a
 * named file, which image_write() must copy ("--rounds-named").  "--1k"
 * runs this case alone.
 * Prints one line per case; the files are removed afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>

#include "jobs/image.h"
#include "queue/nberr.h"

#define SIDE 4096
#define SIDE_1K 1024
#define NOISE_1K 11                     /* makes the 1K PNG ~1.6 MB */
#define ROUNDS_1K 40

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A photograph-like row: gradients and a little deterministic noise. */
static void
fill_row(unsigned char *row, unsigned side, unsigned y, unsigned noise,
         unsigned *seed)
{
    unsigned x, c;

    for (x = 0; x < side; x++)
        for (c = 0; c < 3; c++) {
            *seed = *seed * 1103515245u + 12345u;
            row[3 * x + c] = (unsigned char)((x * 200 / side) +
                                             (y * 40 / side) + c * 4 +
                                             (*seed >> 16) % noise);
        }
}

static int
make_jpeg(const char *path, int progressive)
{
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr jerr;
    unsigned char *row = malloc(3 * SIDE);
    JSAMPROW rows[1] = { row };
    unsigned seed = 1, y;
    FILE *f = fopen(path, "wb");

    if (f == NULL || row == NULL)
        return -1;
    ci.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&ci);
    jpeg_stdio_dest(&ci, f);
    ci.image_width = SIDE;
    ci.image_height = SIDE;
    ci.input_components = 3;
    ci.in_color_space = JCS_RGB;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, 95, TRUE);
    if (progressive)
        jpeg_simple_progression(&ci);
    jpeg_start_compress(&ci, TRUE);
    for (y = 0; y < SIDE; y++) {
        fill_row(row, SIDE, y, 8, &seed);
        jpeg_write_scanlines(&ci, rows, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    free(row);
    return fclose(f) == 0 ? 0 : -1;
}

static void
write_png_rows(png_structp png, unsigned char *row, unsigned side,
               unsigned noise)
{
    unsigned seed = 1, y;

    for (y = 0; y < side; y++) {
        fill_row(row, side, y, noise, &seed);
        png_write_row(png, row);
    }
}

static int
make_png(const char *path, unsigned side, unsigned noise)
{
    png_structp png;
    png_infop info;
    unsigned char *row = malloc(3 * (size_t)side);
    FILE *f = fopen(path, "wb");

    if (f == NULL || row == NULL)
        return -1;
    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png)))
        return -1;
    png_init_io(png, f);
    png_set_IHDR(png, info, side, side, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    write_png_rows(png, row, side, noise);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(row);
    return fclose(f) == 0 ? 0 : -1;
}

/* The measured child: one image_write(); prints its wall time. */
static int
run_one(const char *in, const char *out)
{
    struct image_meta m;
    struct image_info info;
    char err[256];
    double t0;
    int fd, rc;

    if (strcmp(in, "-") == 0)
        return 0;                       /* the idle run */
    memset(&m, 0, sizeof m);
    m.job_id = 1;
    m.prompt = "a benchmark image";
    m.model = "gemini-3-pro-image-preview";
    fd = open(in, O_RDONLY);
    if (fd < 0)
        return 1;
    t0 = now_s();
    rc = image_write(fd, out, &m, &info, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "image_bench: %s: %s\n", in, err);
        return 1;
    }
    printf("%.3f %lld\n", now_s() - t0, (long long)info.bytes);
    return 0;
}

static long long
file_size(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* CPU seconds used so far, user and kernel apart. */
static void
cpu_now_s(double *user_s, double *sys_s)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    *user_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    *sys_s = (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* The whole file at path in a new buffer, or NULL. */
static unsigned char *
slurp(const char *path, size_t *len)
{
    struct stat st;
    unsigned char *data;
    int fd = open(path, O_RDONLY);

    if (fd < 0 || fstat(fd, &st) < 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    data = malloc((size_t)st.st_size);
    if (data != NULL &&
        read(fd, data, (size_t)st.st_size) != (ssize_t)st.st_size) {
        free(data);
        data = NULL;
    }
    close(fd);
    *len = (size_t)st.st_size;
    return data;
}

/*
 * A fresh source holding data, open for reading and writing at offset 0:
 * an unlinked O_TMPFILE file in dir as the runner makes it, or the named
 * file named when that is not NULL.  -1 on failure.
 */
static int
make_source(const char *dir, const char *named, const unsigned char *data,
            size_t len)
{
    size_t done = 0;
    int fd;

    if (named == NULL)
        fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    else
        fd = open(named, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);

        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    if (lseek(fd, 0, SEEK_SET) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * The measured child of the 1K case: ROUNDS_1K image_write() calls, each
 * from a fresh source (named: from "<out>.src", else an O_TMPFILE file in
 * out's folder).  Only image_write() is timed.  Prints the mean and the
 * lowest CPU milliseconds per image, the mean kernel part, the
 * mean wall milliseconds and the size written.
 */
static int
run_rounds(int named, const char *in, const char *out)
{
    struct image_meta m;
    struct image_info info;
    char dir[600], src[620], err[256];
    double cpu = 0, sys = 0, wall = 0, least = 1e9;
    unsigned char *data;
    size_t len;
    char *slash;
    int i;

    snprintf(dir, sizeof dir, "%s", out);
    slash = strrchr(dir, '/');
    if (slash == NULL)
        return 1;
    *slash = '\0';
    snprintf(src, sizeof src, "%s.src", out);
    memset(&m, 0, sizeof m);
    m.job_id = 1;
    m.prompt = "a benchmark image";
    m.model = "gemini-2.5-flash-image";
    m.size = "1K";
    data = slurp(in, &len);
    if (data == NULL)
        return 1;

    for (i = 0; i < ROUNDS_1K; i++) {
        int fd = make_source(dir, named ? src : NULL, data, len);
        double u0, s0, u1, s1, t0, c;

        if (fd < 0) {
            fprintf(stderr, "image_bench: cannot make a source in %s\n",
                    dir);
            return 1;
        }
        cpu_now_s(&u0, &s0);
        t0 = now_s();
        if (image_write(fd, out, &m, &info, err, sizeof err) != 0) {
            fprintf(stderr, "image_bench: %s: %s\n", in, err);
            return 1;
        }
        wall += now_s() - t0;
        cpu_now_s(&u1, &s1);
        c = (u1 - u0) + (s1 - s0);
        cpu += c;
        sys += s1 - s0;
        least = c < least ? c : least;
        close(fd);
    }
    if (named)
        unlink(src);
    free(data);
    printf("%.2f %.2f %.2f %.2f %lld\n", cpu * 1e3 / ROUNDS_1K,
           least * 1e3, sys * 1e3 / ROUNDS_1K, wall * 1e3 / ROUNDS_1K,
           (long long)info.bytes);
    return 0;
}

/*
 * Runs self with mode, in and out; fills the line it printed, its CPU
 * time and peak RSS.
 */
static int
run_child(const char *self, const char *mode, const char *in,
          const char *out, char *line, size_t linelen, double *cpu_s,
          long *rss_kb)
{
    struct rusage ru;
    int p[2], status;
    size_t got = 0;
    ssize_t n;
    pid_t pid;

    if (pipe(p) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execl(self, self, mode, in, out, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    while (got + 1 < linelen &&
           (n = read(p[0], line + got, linelen - 1 - got)) > 0)
        got += (size_t)n;
    line[got] = '\0';
    close(p[0]);
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0 || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        return -1;
    *cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
             (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    *rss_kb = ru.ru_maxrss;
    return 0;
}

/* Runs self --one in out; fills wall time, output size, CPU and RSS. */
static int
measure(const char *self, const char *in, const char *out, double *wall_s,
        long long *bytes, double *cpu_s, long *rss_kb)
{
    char line[128];

    if (run_child(self, "--one", in, out, line, sizeof line, cpu_s,
                  rss_kb) < 0)
        return -1;
    *wall_s = 0;
    *bytes = 0;
    if (line[0] != '\0' && sscanf(line, "%lf %lld", wall_s, bytes) != 2)
        return -1;
    return 0;
}

/* Runs the 1K case from both kinds of source; prints one line each. */
static int
bench_1k(const char *self, const char *dir)
{
    static const char *modes[2] = { "--rounds-tmpfile", "--rounds-named" };
    static const char *what[2] = {
        "O_TMPFILE source (the runner's case)", "named source file"
    };
    char in[600], out[600], line[128];
    double cpu, mean_ms, least_ms, sys_ms, wall_ms;
    long long bytes;
    long rss;
    int i, rc = 0;

    snprintf(in, sizeof in, "%s/in-1k.png", dir);
    snprintf(out, sizeof out, "%s/out-1k.png", dir);
    if (make_png(in, SIDE_1K, NOISE_1K) < 0) {
        fprintf(stderr, "image_bench: cannot make %s\n", in);
        return 1;
    }
    for (i = 0; i < 2; i++) {
        if (run_child(self, modes[i], in, out, line, sizeof line, &cpu,
                      &rss) < 0 ||
            sscanf(line, "%lf %lf %lf %lf %lld", &mean_ms, &least_ms,
                   &sys_ms, &wall_ms, &bytes) != 5) {
            fprintf(stderr, "image_bench: 1K PNG, %s failed\n", what[i]);
            rc = 1;
            continue;
        }
        printf("image_bench: 1K PNG %dx%d (%.2f MB), %s: %.2f ms CPU per "
               "image (lowest %.2f, kernel %.2f), %.2f ms wall, %d rounds\n",
               SIDE_1K, SIDE_1K, file_size(in) / 1e6, what[i], mean_ms,
               least_ms, sys_ms, wall_ms, ROUNDS_1K);
        unlink(out);
    }
    unlink(in);
    return rc;
}

int
main(int argc, char **argv)
{
    const char *names[3] = { "jpeg", "progressive jpeg", "png" };
    const char *files[3] = { "in.jpg", "in-prog.jpg", "in.png" };
    const char *tmp = getenv("TMPDIR");
    char dir[512], in[600], out[600], self[4096];
    double wall, cpu;
    long long bytes;
    long rss, idle;
    ssize_t n;
    int i, rc = 0, only_1k = 0;

    if (argc == 4 && strcmp(argv[1], "--one") == 0)
        return run_one(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "--rounds-tmpfile") == 0)
        return run_rounds(0, argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "--rounds-named") == 0)
        return run_rounds(1, argv[2], argv[3]);
    if (argc > 1 && strcmp(argv[1], "--1k") == 0) {
        only_1k = 1;
        argc--, argv++;
    }
    snprintf(dir, sizeof dir, "%s/image_bench.%ld",
             argc > 1 ? argv[1] : tmp != NULL && *tmp ? tmp : "/tmp",
             (long)getpid());
    n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0 || mkdir(dir, 0755) < 0) {
        fprintf(stderr, "image_bench: cannot set up %s\n", dir);
        return 1;
    }
    self[n] = '\0';
    if (only_1k) {
        rc = bench_1k(self, dir);
        rmdir(dir);
        return rc;
    }

    for (i = 0; i < 3; i++) {
        snprintf(in, sizeof in, "%s/%s", dir, files[i]);
        if ((i < 2 ? make_jpeg(in, i == 1) : make_png(in, SIDE, 8)) < 0) {
            fprintf(stderr, "image_bench: cannot make %s\n", in);
            return 1;
        }
    }
    if (measure(self, "-", "-", &wall, &bytes, &cpu, &idle) < 0)
        return 1;
    printf("image_bench: idle process peak RSS %.1f MB\n", idle / 1024.0);

    for (i = 0; i < 3; i++) {
        snprintf(in, sizeof in, "%s/%s", dir, files[i]);
        snprintf(out, sizeof out, "%s/out-%d.png", dir, i);
        if (measure(self, in, out, &wall, &bytes, &cpu, &rss) < 0) {
            fprintf(stderr, "image_bench: %s failed\n", names[i]);
            rc = 1;
            continue;
        }
        printf("image_bench: %s %dx%d (%.1f MB) -> PNG %.1f MB: "
               "%.2f s wall, %.2f s CPU, peak RSS %.1f MB "
               "(+%.1f MB over idle)\n", names[i], SIDE, SIDE,
               file_size(in) / 1e6, bytes / 1e6, wall, cpu, rss / 1024.0,
               (rss - idle) / 1024.0);
        unlink(out);
    }
    for (i = 0; i < 3; i++) {
        snprintf(in, sizeof in, "%s/%s", dir, files[i]);
        unlink(in);
    }
    if (bench_1k(self, dir) != 0)
        rc = 1;
    rmdir(dir);
    return rc;
}
