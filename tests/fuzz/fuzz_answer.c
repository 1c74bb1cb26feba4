/*
 * fuzz_answer.c - libFuzzer target for the streaming answer reader.
 *
 * Input: byte 0 picks the HTTP status (or a transport error), byte 1
 * seeds the chunk sizes, the rest is the body.  The body goes through
 * answer_new / answer_feed / answer_classify twice, once whole and once
 * cut into random chunks, and the two results must agree.  Each result
 * must hold the contract: a known class, NUL-terminated one-line strings,
 * an image file only for ANSWER_OK (open, at offset 0, of image_bytes
 * bytes), sane delays and quota flags.  A broken invariant aborts.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobs/answer.h"
#include "queue/nberr.h"

static const int statuses[16] = {
    200, 200, 200, 200, 400, 403, 404, 429,
    500, 502, 503, 504, 0, 201, 408, 413
};

static void
check_str(const char *s, size_t cap)
{
    const char *end = memchr(s, '\0', cap);

    if (end == NULL || memchr(s, '\n', (size_t)(end - s)) != NULL ||
        memchr(s, '\r', (size_t)(end - s)) != NULL)
        abort();
}

static void
check_result(const struct answer_result *r)
{
    struct stat st;

    if (r->cls < ANSWER_OK || r->cls > ANSWER_FATAL)
        abort();
    check_str(r->api_status, sizeof(r->api_status));
    check_str(r->reason, sizeof(r->reason));
    check_str(r->message, sizeof(r->message));
    check_str(r->finish_reason, sizeof(r->finish_reason));
    check_str(r->response_id, sizeof(r->response_id));
    check_str(r->model_version, sizeof(r->model_version));
    if (r->message[0] == '\0' || r->retry_after_ms < -1)
        abort();
    if ((r->quota_per_day | r->quota_per_minute) > 1 ||
        (r->quota_per_day && r->quota_per_minute))
        abort();
    if (r->cls != ANSWER_OK) {
        if (r->image_fd != -1)
            abort();
        return;
    }
    if (r->image_fd < 0 || r->image_bytes <= 0)
        abort();
    if (fstat(r->image_fd, &st) != 0 || st.st_size != r->image_bytes)
        abort();
    if (lseek(r->image_fd, 0, SEEK_CUR) != 0)
        abort();
}

/* Feeds body in chunks (max_chunk 0: whole); returns the feed code. */
static int
run(const uint8_t *body, size_t len, unsigned seed, size_t max_chunk,
    int status, struct answer **out, struct answer_result *r)
{
    struct answer *a = answer_new(NULL);
    size_t at = 0, skel_len;
    int rc = 0;

    if (a == NULL)
        abort();
    while (at < len && rc == 0) {
        size_t n = len - at;

        if (max_chunk > 0) {
            seed = seed * 1103515245u + 12345u;
            n = 1 + (seed >> 8) % max_chunk;
            if (n > len - at)
                n = len - at;
        }
        rc = answer_feed(a, body + at, n);
        at += n;
    }
    if (rc != 0 && answer_feed(a, "x", 1) != rc)
        abort();                    /* failures are sticky */
    if (answer_skeleton(a, &skel_len)[skel_len] != '\0' ||
        skel_len > 4u * 1024 * 1024)
        abort();
    answer_classify(a, status, status == 0, "connection reset", NULL, r);
    check_result(r);
    *out = a;
    return rc;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct answer *whole, *cut;
    struct answer_result rw, rc;
    const char *sw, *sc;
    size_t lw, lc;
    int status, fw, fc;

    if (size < 2)
        return 0;
    status = statuses[data[0] % 16];
    fw = run(data + 2, size - 2, 0, 0, status, &whole, &rw);
    fc = run(data + 2, size - 2, data[1], 1 + data[1] % 97, status, &cut,
             &rc);
    if (fw != fc || rw.cls != rc.cls || rw.image_bytes != rc.image_bytes ||
        rw.retry_after_ms != rc.retry_after_ms ||
        strcmp(rw.message, rc.message) != 0 ||
        strcmp(rw.reason, rc.reason) != 0)
        abort();
    sw = answer_skeleton(whole, &lw);
    sc = answer_skeleton(cut, &lc);
    if (lw != lc || memcmp(sw, sc, lw) != 0)
        abort();
    answer_free(whole);
    answer_free(cut);
    return 0;
}
