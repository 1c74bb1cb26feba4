/*
 * answer.h - reading a generateContent answer and classifying the outcome.
 *
 * An answer is fed to answer_feed() as it streams in.  The large base64
 * strings (inlineData.data) are decoded on the fly into unlinked temporary
 * files, one per image part, while the rest of the JSON - small - is kept
 * and parsed with jansson at the end.  Memory per answer stays at a few
 * buffers whatever the image size.  answer_classify() then sorts the
 * outcome into one of the classes of the wire reference ("Implications").
 */
#ifndef NB_ANSWER_H
#define NB_ANSWER_H

#include <stddef.h>
#include <stdint.h>

enum answer_class {
    ANSWER_OK,          /* an image is there: answer_result.image_fd */
    ANSWER_TRANSIENT,   /* retry with backoff */
    ANSWER_SOFT,        /* 200 without an image: retry once or twice */
    ANSWER_PERMANENT,   /* this job is refused: blocked */
    ANSWER_FATAL        /* the whole run must stop: key, model, region,
                           per-day quota */
};

/* "ok", "transient", "soft", "permanent", "fatal". */
const char *answer_class_name(int cls);

struct answer_result {
    int cls;                    /* enum answer_class */
    int http_status;            /* 0 when no HTTP answer came */
    char api_status[40];        /* error.status, e.g. "UNAVAILABLE" */
    char reason[64];            /* ErrorInfo.reason, blockReason or
                                   finishReason; "" when none */
    char message[512];          /* one line for the user and the log */
    int64_t retry_after_ms;     /* server-advised delay; -1 when none */
    int quota_per_day;          /* 1: a per-day quota 429 */
    int quota_per_minute;       /* 1: a per-minute (or bare) 429 */
    int image_fd;               /* ANSWER_OK: decoded image bytes, at
                                   offset 0; owned by the answer */
    int64_t image_bytes;
    char finish_reason[40];
    char response_id[80];
    char model_version[80];
    int64_t prompt_tokens;
    int64_t output_tokens;      /* candidatesTokenCount */
    int64_t thought_tokens;
    int64_t total_tokens;
};

struct answer;

/*
 * A new answer whose image parts go to unlinked files in tmpdir (NULL:
 * $TMPDIR or /tmp).  NULL on allocation failure.
 */
struct answer *answer_new(const char *tmpdir);
/* Frees a and closes its temporary files; NULL is fine. */
void answer_free(struct answer *a);

/*
 * Feeds the next len bytes of the body.  Never fails on malformed input
 * (that is classified later); returns NB_EIO when a temporary file cannot
 * be written and NB_ELIMIT when the non-image JSON passes 4 MiB (or the
 * answer holds more than 32 images); NB_ENOMEM.  After a failure every
 * later call returns the same code.
 */
int answer_feed(struct answer *a, const void *buf, size_t len);

/*
 * The JSON kept so far, each image string's contents replaced by
 * "@nbblob:N": borrowed, NUL-terminated, valid until the next call on a;
 * *len (if not NULL) gets its length.  For debug summaries and tests.
 */
const char *answer_skeleton(const struct answer *a, size_t *len);

/*
 * Classifies the answer: http_status (0 when the transfer failed before
 * any answer), transport_error (0, or non-zero when the transfer broke:
 * reset, timeout, truncated body; transport_msg says how),
 * retry_after_header (the Retry-After value or NULL).  Fills *r.  Never
 * fails: anything unreadable is ANSWER_TRANSIENT with a message.
 */
void answer_classify(struct answer *a, int http_status, int transport_error,
                     const char *transport_msg,
                     const char *retry_after_header,
                     struct answer_result *r);

/*
 * Classifies a complete error body (not 2xx) without streaming: the error
 * envelope (status, ErrorInfo.reason, QuotaFailure, RetryInfo, "Please
 * retry in Xs"), or an HTML or empty body.  Used by answer_classify() and
 * the fuzzer.
 */
void answer_classify_error(const char *body, size_t len, int http_status,
                           const char *retry_after_header,
                           struct answer_result *r);

/*
 * Parses a protobuf JSON Duration ("38s", "45.837906927s") into *ms.
 * Returns 0 or NB_EINVAL.
 */
int answer_parse_duration(const char *s, int64_t *ms);

#endif
