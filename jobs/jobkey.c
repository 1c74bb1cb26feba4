/*
 * jobkey.c - SHA-256 identities for jobs and reference images.
 *
 * A job key is the digest of everything that decides which image the API
 * is asked for: model, prompt, aspect ratio, size, the bytes of each
 * reference image (by their own digests) and the index within the line's
 * count.  Each part goes in with an 8-byte big-endian length before it,
 * behind a version tag, so that no two different jobs can share a key and
 * a later format can never collide with this one.  Things that only say
 * where or when (priority, output name, times) are left out on purpose:
 * re-adding a file with another priority finds the same jobs.
 *
 * jobkey_file() checks the magic bytes before it hashes, so a file that is
 * no image costs one read.  Nothing here keeps state between calls.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "jobs/jobkey.h"
#include "queue/nberr.h"

#define JOBKEY_TAG "nbbatch-job-v1"
#define READ_CHUNK (64 * 1024)

static void
to_hex(const unsigned char *md, char hex[65])
{
    static const char digits[] = "0123456789abcdef";

    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 0x0f];
    }
    hex[64] = '\0';
}

/* The image type the API takes named by the first bytes, or NULL. */
static const char *
sniff_mime(const unsigned char *b, size_t n)
{
    if (n >= 8 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0)
        return "image/png";
    if (n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        return "image/jpeg";
    if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
        return "image/webp";
    if (n >= 12 && memcmp(b + 4, "ftyp", 4) == 0) {
        const unsigned char *brand = b + 8;

        if (memcmp(brand, "heic", 4) == 0 || memcmp(brand, "heix", 4) == 0 ||
            memcmp(brand, "hevc", 4) == 0 || memcmp(brand, "hevx", 4) == 0 ||
            memcmp(brand, "heim", 4) == 0 || memcmp(brand, "heis", 4) == 0)
            return "image/heic";
        if (memcmp(brand, "mif1", 4) == 0 || memcmp(brand, "msf1", 4) == 0)
            return "image/heif";
    }
    return NULL;
}

/* read() that retries on EINTR; returns bytes read, 0 at end, -1. */
static ssize_t
read_some(int fd, unsigned char *buf, size_t len)
{
    ssize_t n;

    do {
        n = read(fd, buf, len);
    } while (n < 0 && errno == EINTR);
    return n;
}

/* Fills buf as far as the file allows (short only at end of file). */
static ssize_t
read_full(int fd, unsigned char *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n = read_some(fd, buf + got, len - got);

        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

/* Hashes the rest of fd after the first n bytes already in buf. */
static int
hash_fd(int fd, unsigned char *buf, size_t n, unsigned char md[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int md_len = 0;
    int rc = NB_EIO;
    ssize_t got;

    if (ctx == NULL)
        return NB_ENOMEM;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        goto fail;
    if (EVP_DigestUpdate(ctx, buf, n) != 1)
        goto fail;
    while ((got = read_some(fd, buf, READ_CHUNK)) > 0) {
        if (EVP_DigestUpdate(ctx, buf, (size_t)got) != 1)
            goto fail;
    }
    if (got < 0)
        goto fail;
    if (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != 32)
        goto fail;
    rc = 0;
fail:
    EVP_MD_CTX_free(ctx);
    return rc;
}

int
jobkey_file(const char *path, char hex[65], const char **mime)
{
    unsigned char buf[READ_CHUNK];
    unsigned char md[32];
    const char *type;
    ssize_t n;
    int fd, rc, saved_errno;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NB_EIO;

    n = read_full(fd, buf, 16);
    if (n < 0) {
        rc = NB_EIO;
        goto fail;
    }
    type = sniff_mime(buf, (size_t)n);
    if (type == NULL) {
        rc = NB_EIMAGE;
        goto fail;
    }

    rc = hash_fd(fd, buf, (size_t)n, md);
    if (rc != 0)
        goto fail;
    close(fd);
    to_hex(md, hex);
    if (mime != NULL)
        *mime = type;
    return 0;

fail:
    saved_errno = errno;
    close(fd);
    errno = saved_errno;
    return rc;
}

/*
 * The key's bytes are gathered in a small buffer and handed to the digest
 * in a few large pieces: a dozen tiny EVP_DigestUpdate() calls per key
 * cost more than the hashing itself.
 */
struct key_writer {
    EVP_MD_CTX *ctx;
    size_t used;
    unsigned char buf[1024];
};

static void
put_bytes(struct key_writer *w, const void *p, size_t len)
{
    if (w->used + len > sizeof(w->buf)) {
        EVP_DigestUpdate(w->ctx, w->buf, w->used);
        w->used = 0;
    }
    if (len > sizeof(w->buf)) {
        EVP_DigestUpdate(w->ctx, p, len);
        return;
    }
    memcpy(w->buf + w->used, p, len);
    w->used += len;
}

static void
put_len(struct key_writer *w, uint64_t len)
{
    unsigned char be[8];

    for (int i = 7; i >= 0; i--) {
        be[i] = (unsigned char)(len & 0xff);
        len >>= 8;
    }
    put_bytes(w, be, sizeof(be));
}

static void
put_str(struct key_writer *w, const char *s)
{
    size_t len = s != NULL ? strlen(s) : 0;

    put_len(w, len);
    if (len > 0)
        put_bytes(w, s, len);
}

/*
 * The algorithm is fetched once: an implicit fetch on every digest costs
 * about as much as hashing a short prompt, and adding a million jobs does
 * a million of them.  The object lives until exit.
 */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_fetched;

static void
fetch_sha256(void)
{
    sha256_fetched = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *
sha256_md(void)
{
    pthread_once(&sha256_once, fetch_sha256);
    return sha256_fetched != NULL ? sha256_fetched : EVP_sha256();
}

void
jobkey_compute(const char *model, const char *prompt, const char *aspect,
               const char *size, const char *const *ref_sha256,
               size_t n_refs, int count_index, char key[65])
{
    struct key_writer w;
    unsigned char md[32];
    unsigned int md_len = 0;

    key[0] = '\0';
    w.ctx = EVP_MD_CTX_new();
    w.used = 0;
    if (w.ctx == NULL)
        return;
    if (EVP_DigestInit_ex(w.ctx, sha256_md(), NULL) != 1)
        goto fail;
    put_str(&w, JOBKEY_TAG);
    put_str(&w, model);
    put_str(&w, prompt);
    put_str(&w, aspect);
    put_str(&w, size);
    put_len(&w, n_refs);
    for (size_t i = 0; i < n_refs; i++)
        put_str(&w, ref_sha256[i]);
    put_len(&w, (uint64_t)(uint32_t)count_index);
    EVP_DigestUpdate(w.ctx, w.buf, w.used);
    if (EVP_DigestFinal_ex(w.ctx, md, &md_len) == 1 && md_len == 32)
        to_hex(md, key);
fail:
    EVP_MD_CTX_free(w.ctx);
}

void
jobkey_sha256_hex(const void *buf, size_t len, char hex[65])
{
    unsigned char md[32];
    unsigned int md_len = 0;

    hex[0] = '\0';
    if (EVP_Digest(buf, len, md, &md_len, EVP_sha256(), NULL) == 1 &&
        md_len == 32)
        to_hex(md, hex);
}
