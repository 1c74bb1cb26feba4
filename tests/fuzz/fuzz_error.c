/*
 * fuzz_error.c - libFuzzer target for error bodies and durations.
 *
 * Input: byte 0 picks the HTTP status; the bytes up to the first newline
 * (at most 63) are the Retry-After header, the rest the body given to
 * answer_classify_error().  The whole input, NUL-terminated, also goes to
 * answer_parse_duration(), whose answer is checked against the grammar
 * ^[0-9]+(\.[0-9]{1,9})?s$ written out by hand here.  A broken invariant
 * aborts.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/answer.h"
#include "queue/nberr.h"

static const int statuses[16] = {
    400, 401, 403, 404, 408, 409, 413, 429,
    429, 429, 500, 502, 503, 504, 200, 302
};

static void
check_str(const char *s, size_t cap)
{
    const char *end = memchr(s, '\0', cap);

    if (end == NULL || memchr(s, '\n', (size_t)(end - s)) != NULL)
        abort();
}

/* 1 when s is a protobuf JSON Duration of at most 12 whole digits. */
static int
is_duration(const char *s)
{
    size_t whole = 0, frac = 0;

    while (isdigit((unsigned char)*s)) {
        s++;
        whole++;
    }
    if (whole == 0 || whole > 12)
        return 0;
    if (*s == '.') {
        s++;
        while (isdigit((unsigned char)*s)) {
            s++;
            frac++;
        }
        if (frac == 0 || frac > 9)
            return 0;
    }
    return s[0] == 's' && s[1] == '\0';
}

static void
check_duration(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    int64_t ms = -7;
    int rc;

    if (s == NULL)
        return;
    memcpy(s, data, size);
    s[size] = '\0';
    rc = answer_parse_duration(s, &ms);
    if (rc != 0 && (rc != NB_EINVAL || ms != -7))
        abort();
    if (rc == 0 && (ms < 0 || !is_duration(s)))
        abort();
    if (rc != 0 && strlen(s) == size && is_duration(s))
        abort();
    free(s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct answer_result r;
    char header[64];
    const uint8_t *nl;
    size_t hlen = 0;

    check_duration(data, size);
    if (size < 1)
        return 0;
    nl = memchr(data + 1, '\n', size - 1 < 64 ? size - 1 : 64);
    if (nl != NULL && (size_t)(nl - data - 1) < sizeof(header)) {
        hlen = (size_t)(nl - data - 1);
        memcpy(header, data + 1, hlen);
    }
    header[hlen] = '\0';
    answer_classify_error(nl != NULL ? (const char *)nl + 1
                                     : (const char *)data + 1,
                          nl != NULL ? size - (size_t)(nl - data) - 1
                                     : size - 1,
                          statuses[data[0] % 16], nl != NULL ? header : NULL,
                          &r);
    if (r.cls < ANSWER_OK || r.cls > ANSWER_FATAL || r.image_fd != -1 ||
        r.retry_after_ms < -1 || r.message[0] == '\0')
        abort();
    check_str(r.api_status, sizeof(r.api_status));
    check_str(r.reason, sizeof(r.reason));
    check_str(r.message, sizeof(r.message));
    if (r.quota_per_day && r.quota_per_minute)
        abort();
    if ((r.quota_per_day || r.quota_per_minute) && r.http_status != 429)
        abort();
    return 0;
}
