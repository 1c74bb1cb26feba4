/*
 * http.c - libcurl multi transport.
 *
 * One multi handle drives every transfer from the calling thread; easy
 * handles are made when a transfer starts and kept on a free list for the
 * next one, so idle capacity costs nothing and connections are reused.
 * HTTP/2 is asked for over TLS and transfers share connections where the
 * server allows it.  The key header is built once and wiped on free.
 *
 * Not thread-safe: one thread calls everything but http_wakeup().
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "queue/nberr.h"
#include "runner/http.h"

struct http_xfer {
    CURL *easy;
    struct curl_slist *headers;
    char *key_header;            /* a per-request key line, wiped */
    char *body;
    http_body_cb on_body;
    void *user;
    struct http_result result;
    char errbuf[CURL_ERROR_SIZE];
    int aborted_by_us;
    struct http_xfer *next;      /* free list or live list */
    struct http_xfer *prev;      /* live list only */
};

struct http {
    CURLM *multi;
    char *base_url;
    char *key_header;            /* "x-goog-api-key: KEY", wiped */
    int64_t connect_timeout_ms;
    int inflight;
    struct http_xfer *live;      /* transfers in the multi handle */
    struct http_xfer *free_list;
};

static void
wipe_free(char *s)
{
    if (s == NULL)
        return;
    explicit_bzero(s, strlen(s));
    free(s);
}

int
http_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : NB_EHTTP;
}

static char *
trimmed_base(const char *base)
{
    size_t len;
    char *out;

    if (base == NULL || *base == '\0')
        base = HTTP_DEFAULT_BASE;
    len = strlen(base);
    while (len > 0 && base[len - 1] == '/')
        len--;
    out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, base, len);
    out[len] = '\0';
    return out;
}

struct http *
http_new(const struct http_config *cfg, char *err, size_t errlen)
{
    struct http *h = calloc(1, sizeof(*h));
    int max_conn = cfg->max_connections > 0 ? cfg->max_connections : 64;

    if (h == NULL)
        goto fail;
    h->base_url = trimmed_base(cfg->base_url);
    if (h->base_url == NULL)
        goto fail;
    if (strncmp(h->base_url, "http://", 7) != 0 &&
        strncmp(h->base_url, "https://", 8) != 0) {
        snprintf(err, errlen, "base URL must start with http:// or "
                 "https://");
        goto fail_quiet;
    }
    if (cfg->api_key != NULL) {
        size_t n = strlen(cfg->api_key) + sizeof("x-goog-api-key: ");
        h->key_header = malloc(n);
        if (h->key_header == NULL)
            goto fail;
        snprintf(h->key_header, n, "x-goog-api-key: %s", cfg->api_key);
    }
    h->connect_timeout_ms = cfg->connect_timeout_ms > 0 ?
        cfg->connect_timeout_ms : 30000;
    h->multi = curl_multi_init();
    if (h->multi == NULL)
        goto fail;
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)max_conn);
    return h;

fail:
    snprintf(err, errlen, "out of memory");
fail_quiet:
    http_free(h);
    return NULL;
}

/* Frees a header list, wiping its lines: one of them may hold a key. */
static void
headers_free(struct curl_slist *l)
{
    for (struct curl_slist *i = l; i != NULL; i = i->next)
        explicit_bzero(i->data, strlen(i->data));
    curl_slist_free_all(l);
}

static void
xfer_destroy(struct http_xfer *x)
{
    if (x == NULL)
        return;
    if (x->easy != NULL)
        curl_easy_cleanup(x->easy);
    headers_free(x->headers);
    wipe_free(x->key_header);
    free(x->body);
    free(x);
}

void
http_free(struct http *h)
{
    struct http_xfer *x, *next;

    if (h == NULL)
        return;
    for (x = h->live; x != NULL; x = next) {
        next = x->next;
        curl_multi_remove_handle(h->multi, x->easy);
        xfer_destroy(x);
    }
    for (x = h->free_list; x != NULL; x = next) {
        next = x->next;
        xfer_destroy(x);
    }
    if (h->multi != NULL)
        curl_multi_cleanup(h->multi);
    wipe_free(h->key_header);
    free(h->base_url);
    free(h);
}

const char *
http_base_url(const struct http *h)
{
    return h->base_url;
}

static size_t
on_write(char *data, size_t size, size_t nmemb, void *arg)
{
    struct http_xfer *x = arg;
    size_t len = size * nmemb;

    x->result.body_bytes += (int64_t)len;
    if (x->on_body != NULL && x->on_body(data, len, x->user) != 0) {
        x->aborted_by_us = 1;
        return 0;
    }
    return len;
}

/* Copies a header's value (trimmed) when its name matches. */
static void
take_header(const char *line, size_t len, const char *name, char *out,
            size_t outlen)
{
    size_t nlen = strlen(name), vlen;
    const char *v;

    if (len <= nlen || line[nlen] != ':' ||
        strncasecmp(line, name, nlen) != 0)
        return;
    v = line + nlen + 1;
    vlen = len - nlen - 1;
    while (vlen > 0 && isspace((unsigned char)*v)) {
        v++;
        vlen--;
    }
    while (vlen > 0 && isspace((unsigned char)v[vlen - 1]))
        vlen--;
    if (vlen >= outlen)
        vlen = outlen - 1;
    memcpy(out, v, vlen);
    out[vlen] = '\0';
}

static size_t
on_header(char *line, size_t size, size_t nmemb, void *arg)
{
    struct http_xfer *x = arg;
    size_t len = size * nmemb;
    struct http_result *r = &x->result;

    /* A new status line (redirect, 100-continue) starts afresh. */
    if (len > 5 && strncmp(line, "HTTP/", 5) == 0) {
        r->retry_after[0] = '\0';
        r->upload_url[0] = '\0';
        r->upload_status[0] = '\0';
    }
    take_header(line, len, "retry-after", r->retry_after,
                sizeof(r->retry_after));
    take_header(line, len, "x-goog-upload-url", r->upload_url,
                sizeof(r->upload_url));
    take_header(line, len, "x-goog-upload-status", r->upload_status,
                sizeof(r->upload_status));
    return len;
}

static void
live_add(struct http *h, struct http_xfer *x)
{
    x->prev = NULL;
    x->next = h->live;
    if (h->live != NULL)
        h->live->prev = x;
    h->live = x;
    h->inflight++;
}

static void
live_remove(struct http *h, struct http_xfer *x)
{
    if (x->prev != NULL)
        x->prev->next = x->next;
    else
        h->live = x->next;
    if (x->next != NULL)
        x->next->prev = x->prev;
    x->next = x->prev = NULL;
    h->inflight--;
}

static struct http_xfer *
xfer_get(struct http *h)
{
    struct http_xfer *x = h->free_list;

    if (x != NULL) {
        h->free_list = x->next;
        curl_easy_reset(x->easy);
    } else {
        x = calloc(1, sizeof(*x));
        if (x == NULL)
            return NULL;
        x->easy = curl_easy_init();
        if (x->easy == NULL) {
            free(x);
            return NULL;
        }
    }
    x->next = NULL;
    x->headers = NULL;
    x->body = NULL;
    x->aborted_by_us = 0;
    memset(&x->result, 0, sizeof(x->result));
    x->errbuf[0] = '\0';
    return x;
}

/* Returns a finished transfer's easy handle to the free list. */
static void
xfer_put(struct http *h, struct http_xfer *x)
{
    headers_free(x->headers);
    x->headers = NULL;
    wipe_free(x->key_header);
    x->key_header = NULL;
    free(x->body);
    x->body = NULL;
    x->next = h->free_list;
    h->free_list = x;
}

static int
build_url(const struct http *h, const char *base, const char *path,
          char **url)
{
    size_t n;

    if (strncmp(path, "http://", 7) == 0 ||
        strncmp(path, "https://", 8) == 0) {
        *url = strdup(path);
        return *url != NULL ? 0 : NB_ENOMEM;
    }
    if (base == NULL)
        base = h->base_url;
    n = strlen(base) + strlen(path) + 1;
    *url = malloc(n);
    if (*url == NULL)
        return NB_ENOMEM;
    snprintf(*url, n, "%s%s", base, path);
    return 0;
}

static int
add_headers(struct http *h, struct http_xfer *x, const char *api_key,
            const char *const *extra, int has_body)
{
    struct curl_slist *l = NULL, *t;
    const char *key_line = h->key_header;

    if (api_key != NULL) {
        size_t n = strlen(api_key) + sizeof("x-goog-api-key: ");

        x->key_header = malloc(n);
        if (x->key_header == NULL)
            return NB_ENOMEM;
        snprintf(x->key_header, n, "x-goog-api-key: %s", api_key);
        key_line = x->key_header;
    }
    if (key_line != NULL) {
        l = curl_slist_append(l, key_line);
        if (l == NULL)
            return NB_ENOMEM;
    }
    if (has_body) {
        t = curl_slist_append(l, "Content-Type: application/json");
        if (t == NULL)
            goto fail;
        l = t;
    }
    /* No "Expect: 100-continue" round trip before large bodies. */
    t = curl_slist_append(l, "Expect:");
    if (t == NULL)
        goto fail;
    l = t;
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++) {
        t = curl_slist_append(l, extra[i]);
        if (t == NULL)
            goto fail;
        l = t;
    }
    x->headers = l;
    return 0;

fail:
    headers_free(l);
    return NB_ENOMEM;
}

static int
setup_easy(struct http *h, struct http_xfer *x, struct http_request *req)
{
    CURL *e = x->easy;
    char *url = NULL;
    int rc;

    rc = build_url(h, req->base_url, req->path, &url);
    if (rc != 0)
        return rc;
    rc = add_headers(h, x, req->api_key, req->headers, req->body != NULL);
    if (rc != 0) {
        free(url);
        return rc;
    }
    x->body = req->body;
    req->body = NULL;
    x->on_body = req->on_body;
    x->user = req->user;

    curl_easy_setopt(e, CURLOPT_URL, url);
    /* Over TLS, ALPN tells at the handshake whether HTTP/2 can carry
     * this transfer on an existing connection: worth waiting for.  Over
     * plain HTTP it is only known after a whole answer, so waiting would
     * hold every transfer behind the first one. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT,
                     strncmp(url, "https://", 8) == 0 ? 1L : 0L);
    free(url);      /* libcurl keeps its own copy */
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "nbbatch/0.1");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)h->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* libcurl sends a request again by itself when a reused connection
     * turns out dead, even after the server may have read it: a request
     * that must not happen twice takes a connection of its own. */
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, req->once ? 1L : 0L);
    if (strcmp(req->method, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body ? x->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)(x->body ? req->body_len : 0));
    } else if (strcmp(req->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    return 0;
}

/* A transfer set up for req; the body is freed on failure. */
static int
xfer_prepare(struct http *h, struct http_request *req, struct http_xfer **out)
{
    struct http_xfer *x = xfer_get(h);
    int rc = x != NULL ? setup_easy(h, x, req) : NB_ENOMEM;

    if (rc != 0) {
        free(req->body);
        req->body = NULL;
        if (x != NULL)
            xfer_put(h, x);
        return rc;
    }
    *out = x;
    return 0;
}

int
http_start(struct http *h, struct http_request *req, struct http_xfer **out)
{
    struct http_xfer *x = NULL;
    int rc = xfer_prepare(h, req, &x);

    if (rc != 0)
        return rc;
    if (curl_multi_add_handle(h->multi, x->easy) != CURLM_OK) {
        xfer_put(h, x);
        return NB_EHTTP;
    }
    live_add(h, x);
    if (out != NULL)
        *out = x;
    return 0;
}

void
http_abort(struct http *h, struct http_xfer *x)
{
    curl_multi_remove_handle(h->multi, x->easy);
    live_remove(h, x);
    /* The connection may be mid-answer: don't let it be reused. */
    curl_easy_cleanup(x->easy);
    x->easy = curl_easy_init();
    if (x->easy == NULL) {
        headers_free(x->headers);
        wipe_free(x->key_header);
        free(x->body);
        free(x);
        return;
    }
    xfer_put(h, x);
}

static void
fill_result(struct http_xfer *x, CURLcode code)
{
    struct http_result *r = &x->result;
    long status = 0;

    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    r->http_status = (int)status;
    curl_easy_getinfo(x->easy, CURLINFO_NAMELOOKUP_TIME, &r->namelookup_s);
    curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME, &r->connect_s);
    curl_easy_getinfo(x->easy, CURLINFO_APPCONNECT_TIME, &r->appconnect_s);
    curl_easy_getinfo(x->easy, CURLINFO_STARTTRANSFER_TIME,
                      &r->starttransfer_s);
    curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &r->total_s);
    if (code == CURLE_OK)
        return;
    r->transport_error = (int)code;
    if (x->aborted_by_us)
        snprintf(r->error, sizeof(r->error), "answer rejected while "
                 "streaming");
    else
        snprintf(r->error, sizeof(r->error), "%s%s%s",
                 curl_easy_strerror(code), x->errbuf[0] ? ": " : "",
                 x->errbuf);
}

int
http_poll(struct http *h, int timeout_ms, http_done_cb done, void *arg)
{
    int running = 0, queued;
    CURLMsg *msg;
    struct http_xfer *x;

    if (curl_multi_poll(h->multi, NULL, 0, timeout_ms, NULL) != CURLM_OK)
        return NB_EHTTP;
    if (curl_multi_perform(h->multi, &running) != CURLM_OK)
        return NB_EHTTP;
    while ((msg = curl_multi_info_read(h->multi, &queued)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        fill_result(x, msg->data.result);
        curl_multi_remove_handle(h->multi, x->easy);
        live_remove(h, x);
        done(x->user, &x->result, arg);
        xfer_put(h, x);
    }
    return h->inflight;
}

void
http_wakeup(struct http *h)
{
    curl_multi_wakeup(h->multi);
}

int
http_inflight(const struct http *h)
{
    return h->inflight;
}

struct fetch_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
};

static int
fetch_body(const void *data, size_t len, void *user)
{
    struct fetch_buf *b = user;
    size_t need = b->len + len + 1;
    char *grown;

    if (b->len + len > b->max)
        return 1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < need)
            cap *= 2;
        grown = realloc(b->data, cap);
        if (grown == NULL)
            return 1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int
http_fetch(struct http *h, struct http_request *req, struct http_result *r,
           char **body, size_t *len, size_t max)
{
    struct fetch_buf buf = {NULL, 0, 0, max};
    struct http_xfer *x = NULL;
    CURLcode code;
    int rc;

    req->on_body = fetch_body;
    req->user = &buf;
    rc = xfer_prepare(h, req, &x);
    if (rc != 0)
        return rc;
    code = curl_easy_perform(x->easy);
    fill_result(x, code);
    *r = x->result;
    xfer_put(h, x);
    if (buf.data == NULL) {
        buf.data = strdup("");
        if (buf.data == NULL)
            return NB_ENOMEM;
    }
    *body = buf.data;
    if (len != NULL)
        *len = buf.len;
    return r->transport_error ? NB_EHTTP : 0;
}

int
http_escape(const char *s, char *out, size_t len)
{
    char *e = curl_easy_escape(NULL, s, 0);
    size_t n;
    int rc = 0;

    if (e == NULL)
        return NB_ENOMEM;
    if ((n = strlen(e)) < len)
        memcpy(out, e, n + 1);
    else
        rc = NB_EINVAL;
    curl_free(e);
    return rc;
}
