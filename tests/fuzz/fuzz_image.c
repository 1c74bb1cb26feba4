/*
 * fuzz_image.c - libFuzzer target for the image writer and checker.
 *
 * The input is an answer image.  image_check_png() must return 0 or
 * NB_EIMAGE.  image_write() reads it from a memfd and must keep its
 * contract: on success the file is a valid PNG carrying our job id and
 * nothing else is in the folder; on failure the folder is empty.  For
 * input that starts like a PNG, image_write() and image_check_png() must
 * agree (the copying tee never accepts or refuses what libpng does not).
 * A broken invariant aborts.
 */
#include <fcntl.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobs/image.h"
#include "queue/nberr.h"

static char dir[256];

static void
remove_dir(void)
{
    rmdir(dir);
}

static int
folder_entries(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        abort();
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void
check_output(const char *path, const struct image_info *info)
{
    struct stat st;
    unsigned char *buf;
    uint32_t w = 0, h = 0;
    int64_t id = 0;
    int fd;

    fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size != info->bytes)
        abort();
    buf = malloc((size_t)st.st_size);
    if (buf == NULL ||
        read(fd, buf, (size_t)st.st_size) != (ssize_t)st.st_size)
        abort();
    close(fd);
    if (image_check_png(buf, (size_t)st.st_size, &w, &h) != 0 ||
        w != info->width || h != info->height)
        abort();
    if (image_job_id(path, &id) != 0 || id != 4242)
        abort();
    free(buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct image_meta m = { 4242, "fuzz", "a \xe2\x9c\x93 prompt", "model",
                            NULL, "1K", NULL, NULL, 1, 2, 3, 6 };
    struct image_info info;
    char path[300], err[256];
    int checked, written, fd;

    if (dir[0] == '\0') {
        const char *tmp = getenv("TMPDIR");

        snprintf(dir, sizeof dir, "%s/fuzz_image.%ld",
                 tmp != NULL && *tmp != '\0' ? tmp : "/tmp", (long)getpid());
        if (mkdir(dir, 0700) < 0)
            abort();
        atexit(remove_dir);
    }
    checked = image_check_png(data, size, NULL, NULL);
    if (checked != 0 && checked != NB_EIMAGE)
        abort();

    fd = memfd_create("answer", 0);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size ||
        lseek(fd, 0, SEEK_SET) != 0)
        abort();
    snprintf(path, sizeof path, "%s/out.png", dir);
    written = image_write(fd, path, &m, &info, err, sizeof err);
    close(fd);

    if (written == 0) {
        check_output(path, &info);
        if (folder_entries() != 1 || unlink(path) < 0)
            abort();
    } else if (written != NB_EIMAGE || err[0] == '\0' ||
               folder_entries() != 0) {
        abort();
    }
    if (size >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0 &&
        (checked == 0) != (written == 0))
        abort();
    return 0;
}
