/*
 * image_bench.c - time and peak memory of image_write() on big images.
 *
 * usage: image_bench [DIR]
 *
 * Makes a 4096x4096 baseline JPEG, a progressive one and a PNG (smooth
 * gradients with a little noise, so they compress like photographs
 * rather than like flat colour) in DIR (default $TMPDIR or /tmp), then
 * runs each conversion in a fresh process (this program re-executed with
 * "--one") and reads its peak resident memory from wait4().  An idle run
 * gives the floor every process pays for the libraries.  Prints one line
 * per case; the files are removed afterwards.
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

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A photograph-like row: gradients and a little deterministic noise. */
static void
fill_row(unsigned char *row, unsigned y, unsigned *seed)
{
    unsigned x, c;

    for (x = 0; x < SIDE; x++)
        for (c = 0; c < 3; c++) {
            *seed = *seed * 1103515245u + 12345u;
            row[3 * x + c] = (unsigned char)((x * 200 / SIDE) +
                                             (y * 40 / SIDE) + c * 4 +
                                             ((*seed >> 16) & 7));
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
        fill_row(row, y, &seed);
        jpeg_write_scanlines(&ci, rows, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    free(row);
    return fclose(f) == 0 ? 0 : -1;
}

static int
make_png(const char *path)
{
    png_structp png;
    png_infop info;
    unsigned char *row = malloc(3 * SIDE);
    unsigned seed = 1, y;
    FILE *f = fopen(path, "wb");

    if (f == NULL || row == NULL)
        return -1;
    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png)))
        return -1;
    png_init_io(png, f);
    png_set_IHDR(png, info, SIDE, SIDE, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (y = 0; y < SIDE; y++) {
        fill_row(row, y, &seed);
        png_write_row(png, row);
    }
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

/* Runs self --one in out; fills wall time, output size, CPU and RSS. */
static int
measure(const char *self, const char *in, const char *out, double *wall_s,
        long long *bytes, double *cpu_s, long *rss_kb)
{
    struct rusage ru;
    int p[2], status;
    char line[128] = "";
    ssize_t n;
    pid_t pid;

    if (pipe(p) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        execl(self, self, "--one", in, out, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    n = read(p[0], line, sizeof line - 1);
    close(p[0]);
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0 || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        return -1;
    line[n > 0 ? n : 0] = '\0';
    *wall_s = 0;
    *bytes = 0;
    if (n > 0 && sscanf(line, "%lf %lld", wall_s, bytes) != 2)
        return -1;
    *cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
             (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    *rss_kb = ru.ru_maxrss;
    return 0;
}

static long long
file_size(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
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
    int i, rc = 0;

    if (argc == 4 && strcmp(argv[1], "--one") == 0)
        return run_one(argv[2], argv[3]);
    snprintf(dir, sizeof dir, "%s/image_bench.%ld",
             argc > 1 ? argv[1] : tmp != NULL && *tmp ? tmp : "/tmp",
             (long)getpid());
    n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0 || mkdir(dir, 0755) < 0) {
        fprintf(stderr, "image_bench: cannot set up %s\n", dir);
        return 1;
    }
    self[n] = '\0';

    for (i = 0; i < 3; i++) {
        snprintf(in, sizeof in, "%s/%s", dir, files[i]);
        if ((i < 2 ? make_jpeg(in, i == 1) : make_png(in)) < 0) {
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
    rmdir(dir);
    return rc;
}
