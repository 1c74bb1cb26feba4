/*
 * http.h - the HTTP transport: many transfers in flight on one thread.
 *
 * A thin layer over libcurl's multi interface.  The API key lives only
 * here, in one header line that is wiped when the transport is freed; it
 * never reaches a URL, a log line or the database.  TLS verification is
 * always on.
 */
#ifndef NB_HTTP_H
#define NB_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define HTTP_DEFAULT_BASE "https://generativelanguage.googleapis.com"

struct http;
struct http_xfer;

struct http_config {
    const char *base_url;       /* no trailing '/'; NULL: the default */
    const char *api_key;        /* copied; NULL: no key header */
    int64_t connect_timeout_ms; /* 0: 30 s */
    int max_connections;        /* connection cache size; 0: 64 */
};

/* How a transfer ended. */
struct http_result {
    int transport_error;        /* 0: an HTTP answer arrived whole */
    char error[256];            /* what broke, when transport_error */
    int http_status;            /* 0 when no status line came */
    char retry_after[64];       /* Retry-After header, or "" */
    char upload_url[1024];      /* X-Goog-Upload-URL header, or "" */
    char upload_status[32];     /* X-Goog-Upload-Status header, or "" */
    int64_t body_bytes;
    double namelookup_s;        /* timings, from the start */
    double connect_s;
    double appconnect_s;
    double starttransfer_s;
    double total_s;
};

/* Receives the body as it arrives; returns 0 to go on, non-zero to
 * abort the transfer (it then ends with transport_error set). */
typedef int (*http_body_cb)(const void *data, size_t len, void *user);

struct http_request {
    const char *method;         /* "GET", "POST", "DELETE" */
    const char *path;           /* appended to the base URL, or a full
                                   http(s) URL */
    const char *base_url;       /* NULL: the transport's; else this one
                                   (no trailing '/') */
    const char *api_key;        /* NULL: the transport's key; else this
                                   one (borrowed; the header made from it
                                   is wiped after the transfer) */
    char *body;                 /* owned by the transport once started;
                                   NULL for none */
    size_t body_len;
    const char *const *headers; /* extra "Name: value" lines, NULL-ended;
                                   copied */
    int64_t timeout_ms;         /* whole transfer; 0: none */
    int once;                   /* 1: never sent twice by the transport
                                   (a new connection, so libcurl does not
                                   resend it on a dead reused one) */
    http_body_cb on_body;       /* NULL: the body is discarded */
    void *user;                 /* passed to on_body and to done */
};

/* Reports one finished transfer; the xfer is freed after it returns. */
typedef void (*http_done_cb)(void *user, const struct http_result *r,
                             void *arg);

/*
 * A transport.  NULL on failure, with a message in err.  Call
 * http_global_init() once before any thread starts.
 */
int http_global_init(void);
struct http *http_new(const struct http_config *cfg, char *err,
                      size_t errlen);
/* Aborts every transfer (no callbacks), wipes the key, frees; NULL ok. */
void http_free(struct http *h);

/* The base URL in use (owned by h). */
const char *http_base_url(const struct http *h);

/*
 * Starts a transfer; returns 0 (and *xfer, borrowed, if not NULL) or
 * NB_ENOMEM / NB_EHTTP.  The request body is owned by the transport even
 * on failure.
 */
int http_start(struct http *h, struct http_request *req,
               struct http_xfer **xfer);

/* Aborts one transfer without a callback. */
void http_abort(struct http *h, struct http_xfer *xfer);

/*
 * Waits up to timeout_ms for network activity (or http_wakeup()), moves
 * the transfers on, and calls done for each that finished.  Returns the
 * number still in flight, or NB_EHTTP.
 */
int http_poll(struct http *h, int timeout_ms, http_done_cb done, void *arg);

/* Wakes a thread blocked in http_poll(); safe from any thread. */
void http_wakeup(struct http *h);

/* Transfers in flight. */
int http_inflight(const struct http *h);

/*
 * Runs one request to the end (for doctor and Batch-mode calls): the body
 * goes to *body (owned by the caller, NUL-terminated; up to max bytes,
 * beyond which the transfer is aborted).  Returns 0 when an answer came,
 * whatever its status, NB_EHTTP when the transfer failed (r says how).
 */
int http_fetch(struct http *h, struct http_request *req,
               struct http_result *r, char **body, size_t *len, size_t max);

/* s percent-encoded for a URL (all but A-Z a-z 0-9 - . _ ~) into out:
 * NB_ENOMEM, or NB_EINVAL when it does not fit in len. */
int http_escape(const char *s, char *out, size_t len);

#endif
