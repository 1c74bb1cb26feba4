/*
 * sim.c - nbsim, a fake Gemini API server on 127.0.0.1 for tests and
 * benchmarks of nbbatch.
 *
 * libmicrohttpd runs the sockets: epoll in a small pool of threads, with
 * HTTP/1.1 keep-alive.  Nothing here ever blocks an MHD thread.  A reply
 * that must wait (latency, a hang, a body that trickles out) suspends its
 * connection and hands it to one timer thread, which resumes it when due
 * or as soon as poll() sees the client hang up.  Only the timer thread
 * resumes connections, so a suspended connection's socket stays valid
 * while the timer looks at it; on shutdown the timer resumes them all
 * with their request marked aborted before the daemon stops.
 *
 * A request's life: headers (a struct req is made), body (collected),
 * routing (a handler fills an api_reply), an optional wait, then the
 * action: send the body through a content-reader callback, or close the
 * connection unanswered.  When MHD reports the request finished, one log
 * line is written and the counters of /_sim/stats are updated; the log
 * line says "delivered" only when MHD sent the whole body.
 *
 * Routing is one table of method + path pattern.  The API's own
 * behaviour lives in api.c (generate) and batch.c (Files and Batch),
 * images in imagegen.c, bodies in body.c.  Upload chunks are spooled to
 * an unlinked temporary file as they arrive, never held in memory, and
 * batch results go out through a stream made line by line (chunked
 * transfer, since their size is not known in advance).
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "tests/sim/api.h"
#include "tests/sim/batch.h"
#include "tests/sim/body.h"
#include "tests/sim/imagegen.h"
#include "tests/sim/scenario.h"

#define BODY_LIMIT        (100u * 1024 * 1024)  /* request bytes */
#define BLOCK_SIZE        (64u * 1024)          /* reader block */
#define WATCH_EVERY_MS    200                   /* client hang-up checks */
#define SLOW_STEP_MS      100                   /* trickle granularity */
#define CONNECTION_LIMIT  4096u
#define IDLE_TIMEOUT_S    300u

struct req;

struct timer {
    pthread_mutex_t lock;
    pthread_cond_t wake;        /* new entry or closing */
    pthread_t thread;
    struct req **items;         /* suspended requests, unordered */
    size_t n;
    size_t cap;
    int dirty;                  /* items changed since the last scan */
    int closed;
};

struct stats {
    uint64_t requests;
    uint64_t in_flight;
    uint64_t images;
    uint64_t images_delivered;
    uint64_t bytes_sent;
    uint64_t by_status[600];
    uint64_t by_kind[API_NKINDS];
};

struct sim {
    struct scenario sc;
    struct imagegen *ig;
    struct api *api;
    struct batch *batch;
    char base_url[64];          /* http://127.0.0.1:PORT */
    struct MHD_Daemon *daemon;
    FILE *log;
    pthread_mutex_t log_lock;
    struct timer timer;
    pthread_mutex_t stats_lock;
    struct stats stats;
    atomic_int stopping;
};

enum phase { PHASE_BODY, PHASE_WAITING, PHASE_SENDING };

struct req {
    struct sim *sim;
    struct MHD_Connection *conn;
    uint64_t started_ms;        /* monotonic */
    char method[16];
    char *path;
    char *body;
    size_t body_len;
    size_t body_cap;
    int body_too_big;
    int spool_fd;               /* upload chunk bytes, or -1 */
    uint64_t spool_len;
    int spool_failed;
    struct batch_stream *stream;    /* batch results being sent */
    int control;                /* a /_sim/ request: not in the stats */
    enum phase phase;
    int waited;
    struct api_reply reply;
    uint64_t due_ms;            /* while in the timer */
    int fd;                     /* the client socket, for hang-up checks */
    int client_gone;            /* set by the timer */
    int aborted;                /* set by the timer on shutdown */
    uint64_t send_started_ms;
    uint64_t bytes_sent;
};

static uint64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t
wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void die_usage(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

static void
die_usage(const char *fmt, ...)
{
    va_list ap;

    fputs("nbsim: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n", stderr);
    exit(2);
}

/* --- timer -------------------------------------------------------------- */

/* Suspends rq's connection until due_ms (monotonic) or until its client
 * hangs up.  Call only from the access handler or the content reader.
 * -1 once the server is stopping (the caller then closes). */
static int
timer_wait(struct sim *s, struct req *rq, uint64_t due_ms)
{
    struct timer *t = &s->timer;
    int rc = -1;

    pthread_mutex_lock(&t->lock);
    if (t->closed)
        goto out;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        struct req **items = realloc(t->items, cap * sizeof *items);

        if (!items)
            goto out;
        t->items = items;
        t->cap = cap;
    }
    rq->due_ms = due_ms;
    rq->client_gone = 0;
    MHD_suspend_connection(rq->conn);
    t->items[t->n++] = rq;
    t->dirty = 1;
    pthread_cond_signal(&t->wake);
    rc = 0;
out:
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* Marks waiting requests whose client hung up; the lock is held. */
static void
timer_watch(struct timer *t)
{
    struct pollfd fds[256];

    for (size_t at = 0; at < t->n; at += 256) {
        size_t n = t->n - at < 256 ? t->n - at : 256;

        for (size_t i = 0; i < n; i++) {
            fds[i].fd = t->items[at + i]->fd;
            fds[i].events = POLLRDHUP;
            fds[i].revents = 0;
        }
        if (poll(fds, n, 0) <= 0)
            continue;
        for (size_t i = 0; i < n; i++)
            if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
                t->items[at + i]->client_gone = 1;
                t->dirty = 1;
            }
    }
}

/* Moves due (or abandoned) requests from t->items to ready; returns
 * their count and sets *next_ms to the earliest remaining due time. */
static size_t
timer_collect(struct timer *t, uint64_t now, struct req **ready,
              uint64_t *next_ms)
{
    size_t nready = 0;

    *next_ms = now + WATCH_EVERY_MS;
    for (size_t i = 0; i < t->n;) {
        struct req *rq = t->items[i];

        if (rq->due_ms <= now || rq->client_gone || t->closed) {
            rq->aborted = t->closed;
            ready[nready++] = rq;
            t->items[i] = t->items[--t->n];
            continue;
        }
        if (rq->due_ms < *next_ms)
            *next_ms = rq->due_ms;
        i++;
    }
    return nready;
}

static void
deadline_in(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static void *
timer_main(void *arg)
{
    struct timer *t = arg;
    struct req **ready = NULL;
    size_t ready_cap = 0;
    int last = 0;

    pthread_mutex_lock(&t->lock);
    while (!last) {
        uint64_t now = mono_ms(), next;
        size_t nready;
        struct timespec ts;

        last = t->closed;
        t->dirty = 0;
        if (t->n > ready_cap) {
            struct req **grown = realloc(ready, t->n * sizeof *ready);

            if (grown) {
                ready = grown;
                ready_cap = t->n;
            }
        }
        if (!last)
            timer_watch(t);
        nready = t->n <= ready_cap ? timer_collect(t, now, ready, &next)
                                   : 0;
        if (t->n > ready_cap)
            next = now + 10;    /* out of memory: try again soon */
        pthread_mutex_unlock(&t->lock);
        for (size_t i = 0; i < nready; i++)
            MHD_resume_connection(ready[i]->conn);
        pthread_mutex_lock(&t->lock);
        if (last || t->dirty || t->closed)
            continue;
        deadline_in(&ts, next > now ? next - now : 1);
        pthread_cond_timedwait(&t->wake, &t->lock, &ts);
    }
    pthread_mutex_unlock(&t->lock);
    free(ready);
    return NULL;
}

static int
timer_start(struct timer *t)
{
    pthread_condattr_t attr;

    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&t->wake, &attr);
    pthread_condattr_destroy(&attr);
    return pthread_create(&t->thread, NULL, timer_main, t) == 0 ? 0 : -1;
}

/* Resumes every waiting request as aborted and ends the thread. */
static void
timer_stop(struct timer *t)
{
    pthread_mutex_lock(&t->lock);
    t->closed = 1;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    free(t->items);
    pthread_cond_destroy(&t->wake);
    pthread_mutex_destroy(&t->lock);
}

/* --- log and stats ---------------------------------------------------- */

static void
set_string(json_t *o, const char *key, const char *value)
{
    json_t *v;

    if (!value || !*value)
        return;
    v = json_string(value);
    if (v)
        json_object_set_new(o, key, v);
}

/* One JSON line per finished request, flushed at once. */
static void
log_request(struct sim *s, const struct req *rq, int image, int delivered)
{
    const struct api_reply *r = &rq->reply;
    json_t *o;
    char *line;

    if (!s->log)
        return;
    o = json_pack("{s:I}", "t_ms", (json_int_t)wall_ms());
    if (!o)
        return;
    /* set_string leaves out what is not valid UTF-8. */
    set_string(o, "method", rq->method);
    set_string(o, "path", rq->path);
    set_string(o, "model", r->model);
    set_string(o, "prompt_sha256", r->prompt_sha256);
    if (r->prompt_sha256[0]) {
        json_object_set_new(o, "prompt", json_string(r->prompt_head));
        json_object_set_new(o, "refs", json_integer(r->refs));
    }
    json_object_set_new(o, "status", json_integer(r->status));
    json_object_set_new(o, "kind", json_string(api_kind_name(r->kind)));
    json_object_set_new(o, "image", json_boolean(image));
    json_object_set_new(o, "delivered", json_boolean(delivered));
    json_object_set_new(o, "latency_ms",
                        json_integer((json_int_t)(mono_ms() -
                                                  rq->started_ms)));
    json_object_set_new(o, "bytes", json_integer((json_int_t)
                                                 rq->bytes_sent));
    set_string(o, "auth", r->auth);
    set_string(o, "response_id", r->response_id);
    if (r->log_extra)
        json_object_update(o, r->log_extra);
    line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!line)
        return;
    pthread_mutex_lock(&s->log_lock);
    fputs(line, s->log);
    fputc('\n', s->log);
    fflush(s->log);
    pthread_mutex_unlock(&s->log_lock);
    free(line);
}

static void
count_request(struct sim *s, const struct req *rq, int image,
              int delivered)
{
    const struct api_reply *r = &rq->reply;
    struct stats *st = &s->stats;

    if (rq->control)
        return;
    pthread_mutex_lock(&s->stats_lock);
    st->requests++;
    st->in_flight--;
    if (r->status < 600)
        st->by_status[r->status]++;
    if (r->kind >= 0 && r->kind < API_NKINDS)
        st->by_kind[r->kind]++;
    st->images += image != 0;
    st->images_delivered += image && delivered;
    st->bytes_sent += rq->bytes_sent;
    pthread_mutex_unlock(&s->stats_lock);
}

static char *
stats_json(struct sim *s)
{
    struct stats st;
    json_t *root, *by_status, *by_kind;
    char key[16];
    char *text;

    pthread_mutex_lock(&s->stats_lock);
    st = s->stats;
    pthread_mutex_unlock(&s->stats_lock);
    by_status = json_object();
    by_kind = json_object();
    for (unsigned i = 0; by_status && i < 600; i++)
        if (st.by_status[i]) {
            snprintf(key, sizeof key, "%u", i);
            json_object_set_new(by_status, key,
                                json_integer((json_int_t)st.by_status[i]));
        }
    for (int k = 0; by_kind && k < API_NKINDS; k++)
        if (st.by_kind[k])
            json_object_set_new(by_kind, api_kind_name(k),
                                json_integer((json_int_t)st.by_kind[k]));
    root = json_pack("{s:I,s:I,s:I,s:I,s:I,s:o,s:o,s:o}",
                     "requests", (json_int_t)st.requests,
                     "in_flight", (json_int_t)st.in_flight,
                     "images", (json_int_t)st.images,
                     "images_delivered", (json_int_t)st.images_delivered,
                     "bytes_sent", (json_int_t)st.bytes_sent,
                     "by_status", by_status, "by_kind", by_kind,
                     "batches", batch_stats(s->batch));
    text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    return text;
}

/* --- routes ------------------------------------------------------------- */

static const char *
query(const struct req *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND,
                                       name);
}

/* The key from x-goog-api-key, else from ?key=. */
static const char *
api_key(const struct req *rq)
{
    const char *key = MHD_lookup_connection_value(rq->conn,
        MHD_HEADER_KIND, "x-goog-api-key");

    return key ? key : query(rq, "key");
}

static int
handle_generate(struct sim *s, struct req *rq, const char *model)
{
    if (rq->body_too_big) {
        char message[128];

        snprintf(message, sizeof message, "Request payload size exceeds "
                 "the limit: %u bytes.", BODY_LIMIT);
        return api_error_reply(&rq->reply, 400, "INVALID_ARGUMENT",
                               message, API_KIND_BADREQUEST);
    }
    return api_generate(s->api, model, api_key(rq),
                        rq->body ? rq->body : "", rq->body_len,
                        &rq->reply);
}

static int
handle_model_get(struct sim *s, struct req *rq, const char *model)
{
    return api_model_get(s->api, model, api_key(rq), &rq->reply);
}

/* --- Files and Batch routes ------------------------------------------- */

static const char *
header(const struct req *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, name);
}

/* What batch.c needs to know of a request; everything is borrowed. */
static void
batch_call_of(struct sim *s, struct req *rq, const char *param,
              struct batch_call *c)
{
    memset(c, 0, sizeof *c);
    c->key = api_key(rq);
    c->id = param;
    c->body = rq->body;
    c->body_len = rq->body_len;
    c->spool_fd = rq->spool_fd;
    c->spool_len = rq->spool_len;
    c->upload_protocol = header(rq, "X-Goog-Upload-Protocol");
    c->upload_command = header(rq, "X-Goog-Upload-Command");
    c->upload_offset = header(rq, "X-Goog-Upload-Offset");
    c->upload_length = header(rq, "X-Goog-Upload-Header-Content-Length");
    c->upload_id = query(rq, "upload_id");
    c->page_size = query(rq, "pageSize");
    c->page_token = query(rq, "pageToken");
    c->base_url = s->base_url;
}

/* A body that could not be taken whole (too big, or the spool failed). */
static int
refuse_body(struct req *rq)
{
    if (rq->spool_failed)
        return api_error_reply(&rq->reply, 500, "INTERNAL", "nbsim could "
                               "not store the upload.", API_KIND_ERROR);
    return api_error_reply(&rq->reply, 400, "INVALID_ARGUMENT", "Request "
                           "payload size exceeds the limit.",
                           API_KIND_BADREQUEST);
}

#define BATCH_HANDLER(NAME, FN)                                         \
static int                                                              \
NAME(struct sim *s, struct req *rq, const char *param)                  \
{                                                                       \
    struct batch_call c;                                                \
                                                                        \
    if (rq->body_too_big || rq->spool_failed)                           \
        return refuse_body(rq);                                         \
    batch_call_of(s, rq, param, &c);                                    \
    return FN(s->batch, &c, &rq->reply);                                \
}

BATCH_HANDLER(handle_upload, batch_upload)
BATCH_HANDLER(handle_file_get, batch_file_get)
BATCH_HANDLER(handle_file_delete, batch_file_delete)
BATCH_HANDLER(handle_batch_create, batch_create)
BATCH_HANDLER(handle_batch_get, batch_get)
BATCH_HANDLER(handle_batch_list, batch_list)
BATCH_HANDLER(handle_batch_cancel, batch_cancel)
BATCH_HANDLER(handle_batch_delete, batch_delete)

#undef BATCH_HANDLER

static int
handle_download(struct sim *s, struct req *rq, const char *param)
{
    struct batch_call c;

    batch_call_of(s, rq, param, &c);
    return batch_download(s->batch, &c, &rq->reply, &rq->stream);
}

static int
handle_stats(struct sim *s, struct req *rq, const char *unused)
{
    char *text = stats_json(s);
    int rc = text ? api_json_reply(&rq->reply, text, API_KIND_SIM) : -1;

    free(text);
    return rc;
}

/* POST /_sim/outage?seconds=S&status=CODE (status defaults to 503). */
static int
handle_outage(struct sim *s, struct req *rq, const char *unused)
{
    const char *seconds = query(rq, "seconds");
    const char *status = query(rq, "status");
    char *end = NULL, *end2 = NULL, text[128];
    double sec = seconds ? strtod(seconds, &end) : -1;
    long code = status ? strtol(status, &end2, 10) : 503;

    if (!seconds || *end || (status && *end2) ||
        api_set_outage(s->api, sec, (int)code) < 0)
        return api_error_reply(&rq->reply, 400, "INVALID_ARGUMENT",
            "nbsim: want ?seconds=S (>= 0) and optional &status= one of "
            "408 429 500 502 503 504", API_KIND_SIM);
    snprintf(text, sizeof text, "{\"seconds\": %g, \"status\": %ld}\n",
             sec, code);
    return api_json_reply(&rq->reply, text, API_KIND_SIM);
}

static int
handle_reset_quota(struct sim *s, struct req *rq, const char *unused)
{
    api_reset_quota(s->api);
    return api_json_reply(&rq->reply, "{\"ok\": true}\n", API_KIND_SIM);
}

/* A pattern is a literal path in which '*' stands for one non-empty run
 * of characters other than '/' and ':' (handed to the handler). */
struct route {
    const char *method;
    const char *pattern;
    int (*handle)(struct sim *s, struct req *rq, const char *param);
};

static const struct route routes[] = {
    { "POST", "/v1beta/models/*:generateContent", handle_generate },
    { "GET", "/v1beta/models/*", handle_model_get },
    { "POST", "/v1beta/models/*:batchGenerateContent",
      handle_batch_create },
    { "POST", "/upload/v1beta/files", handle_upload },
    { "GET", "/v1beta/files/*", handle_file_get },
    { "DELETE", "/v1beta/files/*", handle_file_delete },
    { "GET", "/v1beta/files/*:download", handle_download },
    { "GET", "/download/v1beta/files/*:download", handle_download },
    { "GET", "/v1beta/batches", handle_batch_list },
    { "GET", "/v1beta/batches/*", handle_batch_get },
    { "POST", "/v1beta/batches/*:cancel", handle_batch_cancel },
    { "DELETE", "/v1beta/batches/*", handle_batch_delete },
    { "DELETE", "/v1beta/batches/*:delete", handle_batch_delete },
    { "POST", "/v1beta/batches/*:delete", handle_batch_delete },
    { "GET", "/_sim/stats", handle_stats },
    { "POST", "/_sim/outage", handle_outage },
    { "POST", "/_sim/reset-quota", handle_reset_quota },
};

static int
match(const char *pattern, const char *path, char *param, size_t len)
{
    *param = '\0';
    while (*pattern) {
        if (*pattern == '*') {
            size_t n = strcspn(path, "/:");

            if (n == 0 || n >= len)
                return 0;
            memcpy(param, path, n);
            param[n] = '\0';
            path += n;
            pattern++;
            continue;
        }
        if (*pattern++ != *path++)
            return 0;
    }
    return *path == '\0';
}

static int
route(struct sim *s, struct req *rq)
{
    char param[SCENARIO_MODEL_LEN * 2];

    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(rq->method, routes[i].method) == 0 &&
            match(routes[i].pattern, rq->path, param, sizeof param))
            return routes[i].handle(s, rq, param);
    return api_error_reply(&rq->reply, 404, "NOT_FOUND",
                           "Method not found.", API_KIND_NOROUTE);
}

/* --- requests ------------------------------------------------------------ */

/* An unlinked temporary file for an upload chunk; -1 on error. */
static int
spool_open(void)
{
    const char *dir = getenv("TMPDIR");
    char path[4096];
    int fd;

    snprintf(path, sizeof path, "%s/nbsim-chunk-XXXXXX",
             dir && *dir ? dir : "/tmp");
    fd = mkstemp(path);
    if (fd >= 0)
        unlink(path);
    return fd;
}

/* Upload chunks (not the start, whose body is a small JSON) go to a
 * spool file. */
static int
wants_spool(struct MHD_Connection *conn, const char *url,
            const char *method)
{
    return strcmp(method, "POST") == 0 &&
           strcmp(url, "/upload/v1beta/files") == 0 &&
           MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND,
                                       "upload_id") != NULL;
}

static struct req *
req_new(struct sim *s, struct MHD_Connection *conn, const char *url,
        const char *method)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct req *rq = calloc(1, sizeof *rq);

    if (!rq)
        return NULL;
    rq->path = strdup(url);
    if (!rq->path) {
        free(rq);
        return NULL;
    }
    rq->sim = s;
    rq->conn = conn;
    rq->spool_fd = -1;
    if (wants_spool(conn, url, method)) {
        rq->spool_fd = spool_open();
        rq->spool_failed = rq->spool_fd < 0;
    }
    rq->started_ms = mono_ms();
    rq->fd = info ? info->connect_fd : -1;
    snprintf(rq->method, sizeof rq->method, "%s", method);
    rq->control = strncmp(url, "/_sim/", 6) == 0;
    if (!rq->control) {
        pthread_mutex_lock(&s->stats_lock);
        s->stats.in_flight++;
        pthread_mutex_unlock(&s->stats_lock);
    }
    return rq;
}

static void
req_free(struct req *rq)
{
    batch_stream_free(rq->stream);
    if (rq->spool_fd >= 0)
        close(rq->spool_fd);
    api_reply_clear(&rq->reply);
    free(rq->body);
    free(rq->path);
    free(rq);
}

/* Writes a piece of an upload chunk to the spool file. */
static void
spool_append(struct req *rq, const char *data, size_t len)
{
    while (len > 0 && !rq->spool_failed) {
        ssize_t n = write(rq->spool_fd, data, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rq->spool_failed = 1;
            break;
        }
        data += n;
        len -= (size_t)n;
        rq->spool_len += (uint64_t)n;
    }
}

static void
req_append(struct req *rq, const char *data, size_t len)
{
    if (rq->spool_fd >= 0 || rq->spool_failed) {
        if (rq->spool_fd >= 0)
            spool_append(rq, data, len);
        return;
    }
    if (rq->body_too_big || rq->body_len + len > BODY_LIMIT) {
        rq->body_too_big = 1;
        return;
    }
    if (rq->body_len + len + 1 > rq->body_cap) {
        size_t cap = rq->body_cap ? rq->body_cap : 4096;
        char *p;

        while (cap < rq->body_len + len + 1)
            cap *= 2;
        p = realloc(rq->body, cap);
        if (!p) {
            rq->body_too_big = 1;
            return;
        }
        rq->body = p;
        rq->body_cap = cap;
    }
    memcpy(rq->body + rq->body_len, data, len);
    rq->body_len += len;
    rq->body[rq->body_len] = '\0';
}

/* The content reader: serves the body, cut short for fault.truncate and
 * released step by step for fault.slow. */
static ssize_t
read_body(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct req *rq = cls;
    struct api_reply *r = &rq->reply;
    uint64_t limit = body_size(r->body);

    if (rq->aborted || rq->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (r->truncate) {
        limit /= 2;
        if (pos >= limit)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (r->slow_ms > 0 && limit > 0) {
        uint64_t slow = (uint64_t)r->slow_ms;
        uint64_t elapsed = mono_ms() - rq->send_started_ms;
        uint64_t allowed = elapsed >= slow ? limit : limit * elapsed / slow;

        if (allowed <= pos) {
            uint64_t due = rq->send_started_ms +
                           ((pos + 1) * slow + limit - 1) / limit;
            uint64_t soonest = mono_ms() + SLOW_STEP_MS;

            if (due < soonest)
                due = soonest;
            if (due > rq->send_started_ms + slow)
                due = rq->send_started_ms + slow;
            if (timer_wait(rq->sim, rq, due) < 0)
                return MHD_CONTENT_READER_END_WITH_ERROR;
            return 0;
        }
        limit = allowed;
    }
    if (max > limit - pos)
        max = (size_t)(limit - pos);
    max = body_read(r->body, pos, buf, max);
    rq->bytes_sent = pos + max;
    return (ssize_t)max;
}

/* The content reader of batch results: line by line, size unknown. */
static ssize_t
read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct req *rq = cls;
    ssize_t n;

    if (rq->aborted || rq->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    n = batch_stream_read(rq->stream, buf, max);
    if (n < 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (n == 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    rq->bytes_sent = pos + (uint64_t)n;
    return n;
}

/* Adds the reply's extra "Name: value" lines as headers. */
static void
add_headers(struct MHD_Response *resp, char *headers)
{
    char *line = headers;

    while (line && *line) {
        char *end = strchr(line, '\n');
        char *colon = strchr(line, ':');

        if (!end || !colon || colon > end)
            break;
        *end = '\0';
        *colon = '\0';
        MHD_add_response_header(resp, line, colon + 2);
        *colon = ':';
        *end = '\n';
        line = end + 1;
    }
}

static enum MHD_Result
send_reply(struct req *rq)
{
    struct api_reply *r = &rq->reply;
    struct MHD_Response *resp;
    enum MHD_Result ret;

    if (!rq->stream && api_render(rq->sim->api, r) < 0) {
        api_reply_clear(r);
        if (api_error_reply(r, 500, "INTERNAL", "nbsim could not build "
                            "the answer.", API_KIND_ERROR) < 0)
            return MHD_NO;
    }
    if (rq->stream)
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN,
                                                 BLOCK_SIZE, read_stream,
                                                 rq, NULL);
    else
        resp = MHD_create_response_from_callback(body_size(r->body),
                                                 BLOCK_SIZE, read_body,
                                                 rq, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            r->content_type ? r->content_type
                                            : "application/json");
    add_headers(resp, r->headers);
    rq->phase = PHASE_SENDING;
    rq->send_started_ms = mono_ms();
    ret = MHD_queue_response(rq->conn, r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Ends the connection without a word.  For a reset, connecting a TCP
 * socket to AF_UNSPEC aborts it (Linux sends RST) before MHD's own
 * shutdown could send a FIN; MHD then closes a dead socket. */
static enum MHD_Result
close_unanswered(struct req *rq)
{
    if (rq->reply.action == API_RESET && rq->fd >= 0) {
        struct sockaddr unspec;

        memset(&unspec, 0, sizeof unspec);
        unspec.sa_family = AF_UNSPEC;
        connect(rq->fd, &unspec, sizeof unspec);
    }
    return MHD_NO;
}

/* After routing, and again when a wait is over. */
static enum MHD_Result
act(struct sim *s, struct req *rq)
{
    struct api_reply *r = &rq->reply;

    if (rq->aborted || rq->client_gone || atomic_load(&s->stopping))
        return MHD_NO;
    if (r->wait_ms > 0 && !rq->waited) {
        rq->waited = 1;
        rq->phase = PHASE_WAITING;
        if (timer_wait(s, rq, mono_ms() + (uint64_t)r->wait_ms) < 0)
            return MHD_NO;
        return MHD_YES;
    }
    if (r->action != API_SEND)
        return close_unanswered(rq);
    return send_reply(rq);
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url,
           const char *method, const char *version,
           const char *upload_data, size_t *upload_data_size,
           void **con_cls)
{
    struct sim *s = cls;
    struct req *rq = *con_cls;

    if (!rq) {
        rq = req_new(s, conn, url, method);
        if (!rq)
            return MHD_NO;
        *con_cls = rq;
        return MHD_YES;
    }
    if (*upload_data_size) {
        req_append(rq, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (rq->phase == PHASE_BODY && route(s, rq) < 0 &&
        !rq->reply.body) {
        api_reply_clear(&rq->reply);
        if (api_error_reply(&rq->reply, 500, "INTERNAL", "nbsim ran out "
                            "of memory.", API_KIND_ERROR) < 0)
            return MHD_NO;
    }
    return act(s, rq);
}

static void
on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
    struct sim *s = cls;
    struct req *rq = *con_cls;
    int image, delivered;

    if (!rq)
        return;
    /* An answer that never started to go out carried nothing. */
    image = rq->reply.image && rq->phase == PHASE_SENDING;
    delivered = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK &&
                rq->phase == PHASE_SENDING &&
                (rq->stream ? batch_stream_done(rq->stream)
                            : rq->bytes_sent == body_size(rq->reply.body));
    log_request(s, rq, image, delivered);
    count_request(s, rq, image, delivered);
    req_free(rq);
    *con_cls = NULL;
}

/* --- program -------------------------------------------------------------- */

struct options {
    long port;
    const char *port_file;
    const char *scenario;
    const char *log;
    const char *seed;
    long threads;
    const char *probe;
};

static const char usage[] =
    "usage: nbsim [--port N] [--port-file FILE] [--scenario FILE] "
    "[--log FILE]\n"
    "             [--seed N] [--threads N]\n"
    "       nbsim --probe IMAGE   (prints: format WxH rrggbb band=ROWS)\n";

static long
number_arg(const char *name, const char *value, long min, long max)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(value, &end, 10);
    if (errno || end == value || *end || n < min || n > max)
        die_usage("%s: bad value '%s' (expected %ld to %ld)", name, value,
                  min, max);
    return n;
}

static void
parse_options(int argc, char **argv, struct options *o)
{
    static const struct option longs[] = {
        { "port", required_argument, NULL, 'p' },
        { "port-file", required_argument, NULL, 'f' },
        { "scenario", required_argument, NULL, 's' },
        { "log", required_argument, NULL, 'l' },
        { "seed", required_argument, NULL, 'S' },
        { "threads", required_argument, NULL, 't' },
        { "probe", required_argument, NULL, 'P' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    int c;

    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'p': o->port = number_arg("--port", optarg, 0, 65535); break;
        case 'f': o->port_file = optarg; break;
        case 's': o->scenario = optarg; break;
        case 'l': o->log = optarg; break;
        case 'S': o->seed = optarg; break;
        case 't': o->threads = number_arg("--threads", optarg, 1, 64);
                  break;
        case 'P': o->probe = optarg; break;
        case 'h': fputs(usage, stdout); exit(0);
        default: fputs(usage, stderr); exit(2);
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s'\n%s", argv[optind], usage);
}

/* Reads a whole file into memory (owned by the caller); NULL on error. */
static unsigned char *
slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *data = NULL, *p;
    size_t cap = 0, n;

    if (!f)
        return NULL;
    *len = 0;
    do {
        if (*len == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            p = realloc(data, cap);
            if (!p) {
                free(data);
                fclose(f);
                return NULL;
            }
            data = p;
        }
        n = fread(data + *len, 1, cap - *len, f);
        *len += n;
    } while (n > 0);
    if (ferror(f)) {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

/* nbsim --probe FILE: what a test needs to know about an image. */
static int
probe(const char *path)
{
    struct imagegen_probe pr;
    size_t len = 0;
    unsigned char *data = slurp(path, &len);
    int rc;

    if (!data) {
        fprintf(stderr, "nbsim: %s: %s\n", path, strerror(errno));
        return 1;
    }
    rc = imagegen_probe(data, len, &pr);
    free(data);
    if (rc < 0) {
        fprintf(stderr, "nbsim: %s: not a valid PNG or JPEG\n", path);
        return 1;
    }
    printf("%s %ux%u %02x%02x%02x band=%u\n",
           pr.format == IMAGEGEN_PNG ? "png" : "jpeg", pr.width, pr.height,
           pr.rgb[0], pr.rgb[1], pr.rgb[2], pr.band_rows);
    return 0;
}

static void
load_scenario(struct scenario *sc, const struct options *o)
{
    char err[512];

    scenario_init(sc);
    if (o->scenario && scenario_load(sc, o->scenario, err, sizeof err) < 0)
        die_usage("%s", err);
    if (o->seed) {
        char *end;

        errno = 0;
        sc->seed = strtoull(o->seed, &end, 0);
        if (errno || end == o->seed || *end || *o->seed == '-')
            die_usage("--seed: bad value '%s'", o->seed);
    }
}

/* Writes "PORT\n" to path through a temporary file and a rename. */
static int
write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    FILE *f;
    int ok;

    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path,
                         (long)getpid()) >= sizeof tmp)
        return -1;
    f = fopen(tmp, "w");
    if (!f)
        return -1;
    ok = fprintf(f, "%u\n", port) > 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) < 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Room for thousands of sockets. */
static void
raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 &&
        rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct MHD_Daemon *
start_daemon(struct sim *s, long port, long threads)
{
    struct sockaddr_in addr;

    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME,
        0, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)threads,
        MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
        MHD_OPTION_CONNECTION_TIMEOUT, IDLE_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(128 * 1024),
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_END);
}

static long
default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n < 1 ? 1 : n > 16 ? 16 : n;
}

/* Blocks the stop signals in every thread; main takes them by sigwait. */
static void
block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int
serve(struct sim *s, const struct options *o)
{
    const union MHD_DaemonInfo *info;
    unsigned port;
    sigset_t set;
    int sig = 0;

    block_signals(&set);
    if (timer_start(&s->timer) < 0) {
        fprintf(stderr, "nbsim: cannot start the timer thread\n");
        return 1;
    }
    s->daemon = start_daemon(s, o->port, o->threads);
    if (!s->daemon) {
        fprintf(stderr, "nbsim: cannot listen on 127.0.0.1:%ld\n",
                o->port);
        timer_stop(&s->timer);
        return 1;
    }
    info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    port = info ? info->port : (unsigned)o->port;
    snprintf(s->base_url, sizeof s->base_url, "http://127.0.0.1:%u", port);
    if (o->port_file && write_port_file(o->port_file, port) < 0)
        fprintf(stderr, "nbsim: cannot write %s: %s\n", o->port_file,
                strerror(errno));
    printf("nbsim listening on http://127.0.0.1:%u\n", port);
    fflush(stdout);

    sigwait(&set, &sig);

    atomic_store(&s->stopping, 1);
    timer_stop(&s->timer);
    MHD_stop_daemon(s->daemon);
    return 0;
}

int
main(int argc, char **argv)
{
    struct options o = { 0, NULL, NULL, NULL, NULL, 0, NULL };
    struct sim *s;
    int rc = 1;

    parse_options(argc, argv, &o);
    if (o.probe)
        return probe(o.probe);
    if (!o.threads)
        o.threads = default_threads();
    s = calloc(1, sizeof *s);
    if (!s)
        return 1;
    load_scenario(&s->sc, &o);
    raise_fd_limit();
    pthread_mutex_init(&s->log_lock, NULL);
    pthread_mutex_init(&s->stats_lock, NULL);
    if (o.log) {
        s->log = fopen(o.log, "a");
        if (!s->log) {
            fprintf(stderr, "nbsim: %s: %s\n", o.log, strerror(errno));
            goto done;
        }
    }
    s->ig = imagegen_new();
    s->api = s->ig ? api_new(&s->sc, s->ig) : NULL;
    s->batch = s->api ? batch_new(&s->sc, s->api) : NULL;
    if (!s->batch) {
        fprintf(stderr, "nbsim: out of memory\n");
        goto done;
    }
    rc = serve(s, &o);
done:
    batch_free(s->batch);
    api_free(s->api);
    imagegen_free(s->ig);
    if (s->log && fclose(s->log) != 0)
        rc = 1;
    pthread_mutex_destroy(&s->stats_lock);
    pthread_mutex_destroy(&s->log_lock);
    free(s);
    return rc;
}
