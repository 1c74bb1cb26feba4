/*
 * remote.c - Batch mode: chunks of jobs handed to the Batch API.
 *
 * A chunk is a few dozen queued Batch-mode jobs of one batch, model and
 * size.  Its life, each phase recorded in the database before the step
 * that follows it, so that a kill at any moment resumes where it was:
 *
 *   new -> (upload the JSONL input) -> uploaded -> creating
 *       -> (create the remote batch) -> submitted -> (poll)
 *       -> collecting -> (download, one result line per job) -> done
 *
 * Creating a batch is not idempotent: "creating" is written before the
 * create is sent, and a chunk found in that phase (a crash, a create that
 * got no answer) first looks for its unique display name in the list of
 * remote batches, and creates only when none has it.  A chunk's jobs stay
 * running, leased to the chunk, until their result line is recorded;
 * results go to the run (remote_result_fn) as answers and are written,
 * retried or blocked by the same code as direct answers.  A batch that
 * expired, failed or was cancelled remotely gives its jobs back as a
 * transient failure: they go into a new chunk (their retry limits hold).
 *
 * One run follows a chunk at a time (queue_remote_follow()), so two runs
 * on one database never write the same results; a run that finds another
 * one following its chunk (it stalled past its lease) drops the chunk.
 * A chunk ended by `nbbatch cancel` while a step was under way stays
 * ended: the step's result is not recorded, and a batch the step made
 * is cancelled.  Every call goes through the run's transport, one step
 * per chunk at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "jobs/answer.h"
#include "jobs/batchfmt.h"
#include "jobs/request.h"
#include "queue/nberr.h"
#include "queue/queue.h"
#include "runner/advice.h"
#include "runner/cli.h"
#include "runner/gate.h"
#include "runner/http.h"
#include "runner/log.h"
#include "runner/owner.h"
#include "runner/remote.h"

#define UPLOAD_PIECE      (8u << 20)        /* as the SDKs send */
#define SMALL_BODY_MAX    (8u << 20)        /* operations, lists */
#define STEP_TIMEOUT_MS   (300 * 1000)
#define DOWNLOAD_TIMEOUT  (3600 * 1000)
#define FOLLOW_LEASE_MS   (120 * 1000)
#define FOLLOW_RENEW_MS   (30 * 1000)
#define RESCAN_MS         (5 * 1000)
#define BACKOFF_CAP_MS    (60 * 1000)
#define FILE_KEEP_MS      (46LL * 3600 * 1000)   /* files live 48 h */
#define LIST_PAGE         "100"
#define MAX_NEW_PER_TICK  8

enum step {
    STEP_NONE,
    STEP_UPLOAD_START,
    STEP_UPLOAD_BYTES,
    STEP_CREATE,
    STEP_LOOKUP,
    STEP_POLL,
    STEP_DOWNLOAD,
    STEP_CANCEL                 /* of a batch made for an ended chunk */
};

/* A chunk ended by someone else (`nbbatch cancel`) while a step was under
 * way: forget it, or first cancel the batch that step made. */
enum gone {
    GONE_NO,
    GONE_FORGET,
    GONE_CANCEL
};

struct chunk {
    int tag;                    /* REMOTE_XFER_STEP: first */
    struct remote *rm;
    int64_t id;
    int64_t batch_id;
    char owner[64];             /* "remote:<id>": its jobs' lease owner */
    char display[80];
    char model[64];
    char phase[16];
    char remote_name[160];
    char input_file[160];
    char result_file[160];
    int64_t uploaded_ms;
    double estimate;            /* per job, reserved by this run; 0 */
    size_t reserved;            /* jobs reserved for and not handed to
                                   the run (which settles those) */

    int step;                   /* enum step in flight, or STEP_NONE */
    struct http_xfer *xfer;
    char *body;                 /* a small answer's body */
    size_t body_len;
    int body_over;

    char *input;                /* the JSONL input while uploading */
    size_t input_len;
    size_t input_off;
    size_t piece;               /* bytes of the piece in flight */
    char upload_url[1024];
    char page_token[256];

    int results_fd;             /* the downloaded results, or -1 */
    FILE *results;              /* reading them, line by line */
    char *line;
    size_t line_cap;
    struct queue_job **held;    /* jobs waiting for their line */
    size_t n_held;
    int draining;               /* every line read: waiting for the run
                                   to record the last images */
    int64_t drain_since;
    int64_t *delivered;         /* jobs handed to the run, not yet
                                   settled by it: never read again */
    size_t n_delivered, delivered_cap;
    int gone;                   /* enum gone */

    int64_t next_ms;            /* when the next step is due */
    int64_t poll_wait_ms;       /* between polls, growing */
    int64_t follow_renew_ms;
    int failures;               /* in a row, for backoff */
    struct chunk *next;
};

struct remote {
    struct queue *q;
    struct http *http;
    struct gate *gate;
    char owner[320];
    struct remote_opts opt;
    remote_result_fn result;
    void *arg;
    struct chunk *chunks;
    int inflight;
    int64_t next_scan_ms;
    int fatal;
    char fatal_msg[768];
    uint64_t rng;
};

/* ---- chunks ----------------------------------------------------------- */

static void
chunk_drop_results(struct chunk *c)
{
    if (c->results != NULL)
        fclose(c->results);
    else if (c->results_fd >= 0)
        close(c->results_fd);
    c->results = NULL;
    c->results_fd = -1;
    queue_jobs_free(c->held, c->n_held);
    c->held = NULL;
    c->n_held = 0;
}

static void
chunk_free(struct chunk *c)
{
    chunk_drop_results(c);
    free(c->delivered);
    free(c->line);
    free(c->body);
    free(c->input);
    free(c);
}

static struct chunk *
chunk_find(struct remote *rm, int64_t id)
{
    for (struct chunk *c = rm->chunks; c != NULL; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* Gives back what this run reserved for jobs it will not be handed. */
static void
release_reserved(struct chunk *c)
{
    for (; c->reserved > 0; c->reserved--)
        gate_release_remote(c->rm->gate, c->batch_id, c->estimate);
}

/* Hands job to the run, which settles its reservation. */
static void
hand_over(struct chunk *c, struct queue_job *job, struct answer *a,
          const struct answer_result *res)
{
    if (c->reserved > 0)
        c->reserved--;
    c->rm->result(c->rm->arg, job, a, res, c->estimate);
}

/* Unlinks and frees an ended chunk. */
static void
chunk_forget(struct remote *rm, struct chunk *c)
{
    struct chunk **p = &rm->chunks;

    release_reserved(c);
    while (*p != NULL && *p != c)
        p = &(*p)->next;
    if (*p == c)
        *p = c->next;
    chunk_free(c);
}

static void
set_phase(struct chunk *c, const char *phase)
{
    snprintf(c->phase, sizeof(c->phase), "%s", phase);
}

/* Stores u on the chunk; a database failure is logged (the step is then
 * taken again from the last recorded phase). */
static int
record(struct chunk *c, struct queue_remote_update *u)
{
    int rc = queue_remote_update(c->rm->q, c->id, u, cli_now_ms());

    if (rc == NB_ESTATE || rc == NB_ENOTFOUND) {
        /* Cancelled meanwhile: the step's result must not revive it. */
        if (c->gone == GONE_NO) {
            log_info("remote batch %s was ended meanwhile; leaving it",
                     c->display);
            c->gone = GONE_FORGET;
        }
    } else if (rc != 0) {
        log_error("remote batch %s: cannot record progress: %s",
                  c->display, queue_errmsg(c->rm->q));
    }
    return rc;
}

static struct queue_remote_update
no_change(void)
{
    struct queue_remote_update u = {
        .uploaded_ms = -1, .submitted_ms = -1, .ended_ms = -1,
    };

    return u;
}

/* Full jitter over 1 s doubling to a minute. */
static int64_t
backoff(struct remote *rm, int n)
{
    int64_t ceiling = 1000;

    for (int i = 1; i < n && ceiling < BACKOFF_CAP_MS; i++)
        ceiling *= 2;
    if (ceiling > BACKOFF_CAP_MS)
        ceiling = BACKOFF_CAP_MS;
    rm->rng ^= rm->rng >> 12;
    rm->rng ^= rm->rng << 25;
    rm->rng ^= rm->rng >> 27;
    return 200 + (int64_t)((rm->rng * 2685821657736338717ULL) %
                           (uint64_t)ceiling);
}

/* ---- giving jobs back to the run -------------------------------------- */

/* Hands every held job to the run as a transient failure (res says why):
 * it retries them in a new chunk. */
static void
give_back(struct chunk *c, const char *why)
{
    struct answer_result res;

    memset(&res, 0, sizeof(res));
    res.cls = ANSWER_TRANSIENT;
    res.retry_after_ms = 0;
    res.image_fd = -1;
    snprintf(res.message, sizeof(res.message), "%s", why);
    for (size_t i = 0; i < c->n_held; i++) {
        if (c->held[i] == NULL)
            continue;
        hand_over(c, c->held[i], NULL, &res);
        c->held[i] = NULL;
    }
}

static int
count_one(const struct queue_job *job, void *arg)
{
    (void)job;
    (*(int *)arg)++;
    return 0;
}

/* Job ids of a query, gathered before the jobs are read one by one. */
struct ids {
    int64_t *v;
    size_t n, cap;
    int bad;
};

static int
collect_id(const struct queue_job *job, void *arg)
{
    struct ids *ids = arg;

    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int64_t *grown = realloc(ids->v, cap * sizeof(*grown));

        if (grown == NULL) {
            ids->bad = 1;
            return 1;
        }
        ids->v = grown;
        ids->cap = cap;
    }
    ids->v[ids->n++] = job->id;
    return 0;
}

/* Whether job id went to the run and the run has not settled it yet. */
static int
delivered(const struct chunk *c, int64_t id)
{
    for (size_t i = 0; i < c->n_delivered; i++)
        if (c->delivered[i] == id)
            return 1;
    return 0;
}

/* Room in c->delivered for n more, so that noting one never fails. */
static int
reserve_delivered(struct chunk *c, size_t n)
{
    int64_t *grown;

    if (c->n_delivered + n <= c->delivered_cap)
        return 0;
    grown = realloc(c->delivered, (c->n_delivered + n) * sizeof(*grown));
    if (grown == NULL)
        return NB_ENOMEM;
    c->delivered = grown;
    c->delivered_cap = c->n_delivered + n;
    return 0;
}

/*
 * The jobs the chunk still holds, read into c->held (by id).  Those the
 * run was given and has not settled are left out: they may still be in
 * its decode queue, and a second copy would be written twice.
 */
static int
load_held(struct chunk *c)
{
    struct ids ids = {0};
    int rc;

    queue_jobs_free(c->held, c->n_held);
    c->held = NULL;
    c->n_held = 0;
    rc = queue_remote_jobs(c->rm->q, c->id, collect_id, &ids);
    if (rc == 0 && ids.bad)
        rc = NB_ENOMEM;
    if (rc == 0 && ids.n > 0 &&
        ((c->held = calloc(ids.n, sizeof(*c->held))) == NULL ||
         reserve_delivered(c, ids.n) != 0))
        rc = NB_ENOMEM;
    for (size_t i = 0; rc == 0 && i < ids.n; i++) {
        struct queue_job *job = NULL;

        if (!delivered(c, ids.v[i]) &&
            queue_get(c->rm->q, ids.v[i], &job) == 0)
            c->held[c->n_held++] = job;
    }
    free(ids.v);
    return rc;
}

/* Ends the chunk in phase and forgets it; jobs it still holds go back to
 * queued (nothing counted). */
static void
end_chunk(struct chunk *c, const char *phase, const char *why)
{
    struct remote *rm = c->rm;
    int64_t n = 0;

    if (queue_remote_end(rm->q, c->id, phase, why, cli_now_ms(), &n) != 0) {
        log_error("remote batch %s: cannot end it: %s", c->display,
                  queue_errmsg(rm->q));
        c->next_ms = cli_now_ms() + 5000;
        return;
    }
    log_info("remote batch %s%s%s: %s%s", c->display,
             c->remote_name[0] ? " " : "", c->remote_name, phase,
             n > 0 ? " (its jobs are queued again)" : "");
    chunk_forget(rm, c);
}

/* ---- failures of a step ------------------------------------------------ */

static void
fatal(struct remote *rm, const struct answer_result *res, const char *step)
{
    if (rm->fatal != 0)
        return;
    rm->fatal = EXIT_CONFIG;
    snprintf(rm->fatal_msg, sizeof(rm->fatal_msg), "Batch API (%s): %s%s "
             "To fix: %s", step, res->message, advice_stop(res->message),
             advice_for(res->http_status, res->reason, res->api_status));
}

/*
 * A step got no good answer.  Transient: the same phase again after a
 * backoff.  Fatal (key, region, unknown model): the run stops; a chunk
 * never created gives its jobs back.  Permanent (the API refuses the
 * request itself): its jobs are blocked with the message.
 */
static void
step_failed(struct chunk *c, const struct http_result *hr, const char *step)
{
    struct remote *rm = c->rm;
    struct answer_result res;
    struct queue_remote_update u = no_change();
    char msg[700];

    if (hr->transport_error || hr->http_status == 0) {
        memset(&res, 0, sizeof(res));
        res.cls = ANSWER_TRANSIENT;
        res.retry_after_ms = -1;
        snprintf(res.message, sizeof(res.message), "%s", hr->error);
    } else {
        answer_classify_error(c->body != NULL ? c->body : "", c->body_len,
                              hr->http_status,
                              hr->retry_after[0] ? hr->retry_after : NULL,
                              &res);
        /* A 404 without the API's NOT_FOUND comes from a proxy or a
         * front end page: taken again, like a 503. */
        if (hr->http_status == 404 &&
            strcmp(res.api_status, "NOT_FOUND") != 0)
            res.cls = ANSWER_TRANSIENT;
    }
    snprintf(msg, sizeof(msg), "%s: %s", step, res.message);
    u.last_error = msg;
    if (record(c, &u) != 0 && c->gone != GONE_NO)
        return;
    if (res.cls == ANSWER_FATAL) {
        fatal(rm, &res, step);
        /* Nothing exists remotely before a create, nor after a create
         * that was answered with an error: its jobs go back. */
        if (strcmp(c->phase, QUEUE_REMOTE_NEW) == 0 ||
            strcmp(c->phase, QUEUE_REMOTE_UPLOADED) == 0 ||
            (strcmp(step, "create") == 0 && hr->http_status != 0 &&
             !hr->transport_error))
            end_chunk(c, QUEUE_REMOTE_DISSOLVED, msg);
        return;
    }
    if (res.cls == ANSWER_PERMANENT && strcmp(step, "create") == 0) {
        if (load_held(c) == 0) {
            res.cls = ANSWER_PERMANENT;
            for (size_t i = 0; i < c->n_held; i++) {
                hand_over(c, c->held[i], NULL, &res);
                c->held[i] = NULL;
            }
        }
        end_chunk(c, QUEUE_REMOTE_DISSOLVED, msg);
        return;
    }
    c->failures++;
    c->next_ms = cli_now_ms() + (res.retry_after_ms >= 0
                                 ? res.retry_after_ms
                                 : backoff(rm, c->failures));
    log_warn("remote batch %s: %s (again in %.1f s)", c->display, msg,
             (double)(c->next_ms - cli_now_ms()) / 1000.0);
}

/* ---- transfers --------------------------------------------------------- */

static int
on_small_body(const void *data, size_t len, void *user)
{
    struct chunk *c = user;
    char *grown;

    if (c->body_len + len > SMALL_BODY_MAX) {
        c->body_over = 1;
        return 1;
    }
    grown = realloc(c->body, c->body_len + len + 1);
    if (grown == NULL)
        return 1;
    c->body = grown;
    memcpy(c->body + c->body_len, data, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    return 0;
}

static int
on_download_body(const void *data, size_t len, void *user)
{
    struct chunk *c = user;
    const char *p = data;

    while (len > 0) {
        ssize_t n = write(c->results_fd, p, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Starts a call for chunk c; the body (may be NULL) is the transport's. */
static void
start(struct chunk *c, int step, const char *method, const char *path,
      char *body, size_t body_len, const char *const *headers)
{
    struct http_request req = {
        .method = method, .path = path, .body = body, .body_len = body_len,
        .headers = headers, .timeout_ms = STEP_TIMEOUT_MS,
        .on_body = on_small_body, .user = c,
        .once = step == STEP_CREATE,    /* creating is not idempotent */
    };

    free(c->body);
    c->body = NULL;
    c->body_len = 0;
    c->body_over = 0;
    if (step == STEP_DOWNLOAD) {
        req.on_body = on_download_body;
        req.timeout_ms = DOWNLOAD_TIMEOUT;
    }
    c->step = step;
    if (http_start(c->rm->http, &req, &c->xfer) != 0) {
        c->step = STEP_NONE;
        c->xfer = NULL;
        c->failures++;
        c->next_ms = cli_now_ms() + backoff(c->rm, c->failures);
        log_warn("remote batch %s: cannot start a call", c->display);
        return;
    }
    c->rm->inflight++;
}

/* ---- steps ------------------------------------------------------------- */

/* Appends one input line for job to c->input. */
static int
add_input_line(struct chunk *c, const struct queue_job *job, size_t *cap)
{
    char *req = NULL, err[8], head[96];
    size_t req_len = 0, head_len, need;
    int rc;

    rc = request_build_job(job, c->model, &req, &req_len, err, sizeof(err));
    if (rc != 0)
        return rc == NB_ENOMEM ? rc : 1;
    head_len = (size_t)snprintf(head, sizeof(head),
                                "{\"key\":\"job-%lld\",\"request\":",
                                (long long)job->id);
    need = c->input_len + head_len + req_len + 3;
    if (need > *cap) {
        size_t ncap = *cap ? *cap : 1u << 16;
        char *grown;

        while (ncap < need)
            ncap *= 2;
        if ((grown = realloc(c->input, ncap)) == NULL) {
            free(req);
            return NB_ENOMEM;
        }
        c->input = grown;
        *cap = ncap;
    }
    memcpy(c->input + c->input_len, head, head_len);
    c->input_len += head_len;
    memcpy(c->input + c->input_len, req, req_len);
    c->input_len += req_len;
    memcpy(c->input + c->input_len, "}\n", 2);
    c->input_len += 2;
    free(req);
    return 0;
}

/* Blocks one held job whose request cannot be built. */
static void
block_unbuildable(struct chunk *c, size_t i, const struct queue_job *job)
{
    struct answer_result res;
    char *req = NULL;
    size_t len;

    memset(&res, 0, sizeof(res));
    res.cls = ANSWER_PERMANENT;
    res.image_fd = -1;
    request_build_job(job, c->model, &req, &len, res.message,
                      sizeof(res.message));
    free(req);
    hand_over(c, c->held[i], NULL, &res);
    c->held[i] = NULL;
}

/* Builds the JSONL input of the jobs the chunk holds. */
static int
build_input(struct chunk *c)
{
    size_t cap = 0, lines = 0;
    int rc;

    if ((rc = load_held(c)) != 0)
        return rc;
    free(c->input);
    c->input = NULL;
    c->input_len = 0;
    for (size_t i = 0; i < c->n_held; i++) {
        rc = add_input_line(c, c->held[i], &cap);
        if (rc == 1) {
            block_unbuildable(c, i, c->held[i]);
            continue;
        }
        if (rc != 0)
            return rc;
        lines++;
    }
    queue_jobs_free(c->held, c->n_held);
    c->held = NULL;
    c->n_held = 0;
    return lines > 0 ? 0 : NB_ENOTFOUND;
}

static void
upload_start(struct chunk *c)
{
    char len_hdr[96], *body;
    const char *headers[6];
    size_t blen;
    int rc = build_input(c);

    if (rc == NB_ENOTFOUND) {
        end_chunk(c, QUEUE_REMOTE_CANCELLED, "no job left to send");
        return;
    }
    if (rc != 0) {
        log_error("remote batch %s: cannot build its input: %s",
                  c->display, nb_strerror(rc));
        c->next_ms = cli_now_ms() + 5000;
        return;
    }
    snprintf(len_hdr, sizeof(len_hdr),
             "X-Goog-Upload-Header-Content-Length: %zu", c->input_len);
    headers[0] = "X-Goog-Upload-Protocol: resumable";
    headers[1] = "X-Goog-Upload-Command: start";
    headers[2] = len_hdr;
    headers[3] = "X-Goog-Upload-Header-Content-Type: application/jsonl";
    headers[4] = "Content-Type: application/json";
    headers[5] = NULL;
    /* The display name is ours: "nbbatch-" and hex digits. */
    blen = strlen(c->display) + 32;
    if ((body = malloc(blen)) == NULL)
        return;
    blen = (size_t)snprintf(body, blen, "{\"file\":{\"display_name\":"
                            "\"%s\"}}", c->display);
    c->input_off = 0;
    start(c, STEP_UPLOAD_START, "POST", "/upload/v1beta/files", body, blen,
          headers);
}

/* Sends the next piece of the input; the last one finalizes. */
static void
upload_piece(struct chunk *c)
{
    char off_hdr[64], *piece;
    const char *headers[3];
    size_t n = c->input_len - c->input_off;
    int last;

    if (n > UPLOAD_PIECE)
        n = UPLOAD_PIECE;
    last = c->input_off + n == c->input_len;
    snprintf(off_hdr, sizeof(off_hdr), "X-Goog-Upload-Offset: %zu",
             c->input_off);
    headers[0] = last ? "X-Goog-Upload-Command: upload, finalize"
                      : "X-Goog-Upload-Command: upload";
    headers[1] = off_hdr;
    headers[2] = NULL;
    if ((piece = malloc(n > 0 ? n : 1)) == NULL)
        return;
    memcpy(piece, c->input + c->input_off, n);
    c->piece = n;
    start(c, STEP_UPLOAD_BYTES, "POST", c->upload_url, piece, n, headers);
}

/* The upload URL must lead back to the API's own host: the key goes with
 * it. */
static int
same_origin(const char *url, const char *base)
{
    const char *p = strstr(base, "://");
    size_t n;

    if (p == NULL)
        return 0;
    p = strchr(p + 3, '/');
    n = p != NULL ? (size_t)(p - base) : strlen(base);
    return strncmp(url, base, n) == 0 && (url[n] == '/' || url[n] == '\0');
}

static void
create(struct chunk *c)
{
    struct queue_remote_update u = no_change();
    char path[256], *body;
    size_t len;
    int held = 0;
    static const char *const headers[] = {
        "Content-Type: application/json", NULL
    };

    if (cli_now_ms() - c->uploaded_ms > FILE_KEEP_MS) {
        upload_start(c);            /* the input file is about to expire */
        return;
    }
    /* Its jobs may all have been cancelled since the upload. */
    if (queue_remote_jobs(c->rm->q, c->id, count_one, &held) == 0 &&
        held == 0) {
        end_chunk(c, QUEUE_REMOTE_CANCELLED, "no job left to send");
        return;
    }

    /* Before the create goes out: from here on, a chunk whose create got
     * no answer is looked up by display name before it is created. */
    u.phase = QUEUE_REMOTE_CREATING;
    if (record(c, &u) != 0) {
        c->next_ms = cli_now_ms() + 5000;
        return;
    }
    set_phase(c, QUEUE_REMOTE_CREATING);
    len = strlen(c->display) + strlen(c->input_file) + 96;
    if ((body = malloc(len)) == NULL)
        return;
    len = (size_t)snprintf(body, len, "{\"batch\":{\"displayName\":\"%s\","
                           "\"inputConfig\":{\"fileName\":\"%s\"}}}",
                           c->display, c->input_file);
    snprintf(path, sizeof(path), "/v1beta/models/%s:batchGenerateContent",
             c->model);
    start(c, STEP_CREATE, "POST", path, body, len, headers);
}

/* The list's path for the page after token ("": the first page), the
 * token percent-encoded: it comes from the server.  Nonzero when it
 * cannot be encoded. */
static int
list_path(const char *token, char *path, size_t len)
{
    char enc[3 * 256];

    if (token[0] != '\0' && http_escape(token, enc, sizeof(enc)) != 0)
        return -1;
    snprintf(path, len, "/v1beta/batches?pageSize=" LIST_PAGE "%s%s",
             token[0] ? "&pageToken=" : "", token[0] ? enc : "");
    return 0;
}

static void
lookup(struct chunk *c)
{
    char path[1024];

    if (list_path(c->page_token, path, sizeof(path)) != 0) {
        c->next_ms = cli_now_ms() + 5000;
        return;
    }
    start(c, STEP_LOOKUP, "GET", path, NULL, 0, NULL);
}

static void
poll_batch(struct chunk *c)
{
    char path[256];

    snprintf(path, sizeof(path), "/v1beta/%s", c->remote_name);
    start(c, STEP_POLL, "GET", path, NULL, 0, NULL);
}

/* Cancels the batch a create made for a chunk that had ended. */
static void
cancel_made(struct chunk *c)
{
    char path[256], *body = strdup("{}");
    static const char *const headers[] = {
        "Content-Type: application/json", NULL
    };

    if (body == NULL) {
        c->next_ms = cli_now_ms() + 5000;
        return;
    }
    snprintf(path, sizeof(path), "/v1beta/%s:cancel", c->remote_name);
    start(c, STEP_CANCEL, "POST", path, body, 2, headers);
}

static void
download(struct chunk *c)
{
    char path[256];
    const char *tmp = getenv("TMPDIR");

    chunk_drop_results(c);
    c->results_fd = open(tmp != NULL && *tmp ? tmp : P_tmpdir,
                         O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (c->results_fd < 0) {
        log_error("remote batch %s: no temporary file for its results: %s",
                  c->display, strerror(errno));
        c->next_ms = cli_now_ms() + 5000;
        return;
    }
    snprintf(path, sizeof(path), "/download/v1beta/%s:download?alt=media",
             c->result_file);
    start(c, STEP_DOWNLOAD, "GET", path, NULL, 0, NULL);
}

/* The wait before the next poll: --batch-poll at first, a quarter longer
 * each time up to four times that (a batch may run for a day). */
static int64_t
next_poll(struct chunk *c)
{
    int64_t base = c->rm->opt.poll_ms, cap = 4 * base;

    c->poll_wait_ms = c->poll_wait_ms < base ? base
                                             : c->poll_wait_ms * 5 / 4;
    if (c->poll_wait_ms > cap)
        c->poll_wait_ms = cap;
    return c->poll_wait_ms;
}

/* The operation says the batch is in state: record it, and act. */
static void
batch_seen(struct chunk *c, const struct batchfmt_op *op)
{
    struct queue_remote_update u = no_change();
    char why[400];

    u.remote_state = op->state_name[0] ? op->state_name : NULL;
    u.add_poll = 1;
    u.last_error = "";
    if (op->state == BATCHFMT_SUCCEEDED) {
        if (op->responses_file[0] == '\0' ||
            strncmp(op->responses_file, "files/", 6) != 0 ||
            strpbrk(op->responses_file + 6, "/?#") != NULL) {
            snprintf(why, sizeof(why), "remote batch %s succeeded without "
                     "a results file%s", op->name,
                     op->inlined ? " (inline results)" : "");
            u.last_error = why;
            record(c, &u);
            if (load_held(c) == 0)
                give_back(c, why);
            end_chunk(c, QUEUE_REMOTE_RESUBMIT, why);
            return;
        }
        u.phase = QUEUE_REMOTE_COLLECTING;
        u.result_file = op->responses_file;
        if (record(c, &u) != 0) {
            c->next_ms = cli_now_ms() + 5000;
            return;
        }
        set_phase(c, QUEUE_REMOTE_COLLECTING);
        snprintf(c->result_file, sizeof(c->result_file), "%s",
                 op->responses_file);
        log_info("remote batch %s %s succeeded (%lld ok, %lld failed): "
                 "downloading", c->display, c->remote_name,
                 (long long)op->succeeded, (long long)op->failed);
        c->next_ms = 0;
        return;
    }
    if (batchfmt_state_ended(op->state)) {
        snprintf(why, sizeof(why), "remote batch %s ended %s%s%s: its jobs "
                 "are sent again", op->name, op->state_name[0]
                 ? op->state_name : "without a state", op->error[0]
                 ? ": " : "", op->error);
        u.last_error = why;
        record(c, &u);
        log_warn("%s", why);
        if (load_held(c) == 0)
            give_back(c, why);
        end_chunk(c, QUEUE_REMOTE_RESUBMIT, why);
        return;
    }
    record(c, &u);
    c->next_ms = cli_now_ms() + next_poll(c);
}

static void
submitted(struct chunk *c, const struct batchfmt_op *op)
{
    struct queue_remote_update u = no_change();

    u.phase = QUEUE_REMOTE_SUBMITTED;
    u.remote_name = op->name;
    u.submitted_ms = cli_now_ms();
    u.remote_state = op->state_name[0] ? op->state_name : NULL;
    u.last_error = "";
    if (record(c, &u) != 0) {
        /* Not recorded: the lookup by display name finds it again.  Ended
         * meanwhile (cancelled): the batch just made must not run. */
        c->next_ms = cli_now_ms() + 5000;
        if (c->gone != GONE_NO) {
            c->gone = GONE_CANCEL;
            c->next_ms = 0;
            snprintf(c->remote_name, sizeof(c->remote_name), "%s",
                     op->name);
            log_warn("remote batch %s was cancelled while %s was being "
                     "created: cancelling that", c->display, op->name);
        }
        return;
    }
    set_phase(c, QUEUE_REMOTE_SUBMITTED);
    snprintf(c->remote_name, sizeof(c->remote_name), "%s", op->name);
    log_info("remote batch %s is %s (%s)", c->display, op->name,
             op->state_name[0] ? op->state_name : "created");
    c->next_ms = cli_now_ms() + next_poll(c);
}

/* ---- results ----------------------------------------------------------- */

/* The held job of key "job-<id>", taken out of c->held; NULL if none. */
static struct queue_job *
take_held(struct chunk *c, const char *key)
{
    char *end;
    long long id;

    if (strncmp(key, "job-", 4) != 0)
        return NULL;
    errno = 0;
    id = strtoll(key + 4, &end, 10);
    if (errno != 0 || *end != '\0' || id <= 0)
        return NULL;
    for (size_t i = 0; i < c->n_held; i++) {
        struct queue_job *job = c->held[i];

        if (job != NULL && job->id == id) {
            c->held[i] = NULL;
            return job;
        }
    }
    return NULL;
}

/* One result line to the run, as an answer. */
static void
deliver_line(struct chunk *c, const char *line, size_t len)
{
    struct batchfmt_line bl;
    struct answer_result res;
    struct queue_job *job;
    struct answer *a = NULL;
    char dir[4096], *body;

    if (batchfmt_line(line, len, &bl) != 0) {
        log_warn("remote batch %s: a result line is not readable; its job "
                 "is sent again", c->display);
        return;
    }
    if ((job = take_held(c, bl.key)) == NULL)
        return;     /* done already, cancelled, or not ours */
    c->delivered[c->n_delivered++] = job->id;  /* room: load_held() */
    memset(&res, 0, sizeof(res));
    res.image_fd = -1;
    if (bl.kind == BATCHFMT_RESPONSE) {
        cli_dir_of(job->out_path, dir, sizeof(dir));
        if (cli_mkdir_p(dir) != 0 || (a = answer_new(dir)) == NULL ||
            answer_feed(a, line + bl.value_off, bl.value_len) != 0) {
            res.cls = ANSWER_TRANSIENT;
            snprintf(res.message, sizeof(res.message), "cannot keep the "
                     "answer in %s: %s", dir, strerror(errno));
            answer_free(a);
            a = NULL;
        } else {
            answer_classify(a, 200, 0, NULL, NULL, &res);
        }
    } else if (bl.kind == BATCHFMT_ERROR &&
               (body = malloc(bl.value_len + 16)) != NULL) {
        int n = snprintf(body, bl.value_len + 16, "{\"error\":%.*s}",
                         (int)bl.value_len, line + bl.value_off);

        answer_classify_error(body, (size_t)n, bl.error_code > 0
                              ? bl.error_code : 500, NULL, &res);
        free(body);
    } else {
        res.cls = ANSWER_TRANSIENT;
        res.retry_after_ms = -1;
        snprintf(res.message, sizeof(res.message), "the result line of "
                 "this job holds neither an answer nor an error");
    }
    hand_over(c, job, a, &res);
}

/* Up to room result lines to the run; at the end, the chunk is done. */
static int
read_results(struct chunk *c, int room)
{
    int n = 0;
    ssize_t len;

    while (n < room) {
        errno = 0;
        len = getline(&c->line, &c->line_cap, c->results);
        if (len < 0) {
            if (errno != 0) {
                log_error("remote batch %s: cannot read its results: %s",
                          c->display, strerror(errno));
                chunk_drop_results(c);
                c->next_ms = cli_now_ms() + 5000;
                return n;
            }
            give_back(c, "missing from the remote batch's results");
            chunk_drop_results(c);
            c->draining = 1;
            c->drain_since = cli_now_ms();
            return n;
        }
        if (len > 1)
            deliver_line(c, c->line, (size_t)len);
        n++;
    }
    return n;
}

static void
downloaded(struct chunk *c)
{
    if (lseek(c->results_fd, 0, SEEK_SET) != 0 || load_held(c) != 0 ||
        (c->results = fdopen(c->results_fd, "r")) == NULL) {
        log_error("remote batch %s: cannot read its results: %s",
                  c->display, strerror(errno));
        chunk_drop_results(c);
        c->next_ms = cli_now_ms() + 5000;
        return;
    }
    c->failures = 0;
}

/* ---- the answer to a step ---------------------------------------------- */

static void
upload_answer(struct chunk *c, int step, const struct http_result *hr)
{
    struct queue_remote_update u = no_change();
    char name[160];

    if (step == STEP_UPLOAD_START) {
        if (hr->upload_url[0] == '\0' ||
            !same_origin(hr->upload_url, http_base_url(c->rm->http))) {
            log_warn("remote batch %s: %s", c->display,
                     hr->upload_url[0] == '\0'
                     ? "the upload was not started (no X-Goog-Upload-URL)"
                     : "the upload URL leads away from the API's host; "
                       "not following it");
            c->failures++;
            c->next_ms = cli_now_ms() + backoff(c->rm, c->failures);
            return;
        }
        snprintf(c->upload_url, sizeof(c->upload_url), "%s",
                 hr->upload_url);
        upload_piece(c);
        return;
    }
    c->input_off += c->piece;
    if (c->input_off < c->input_len) {
        upload_piece(c);
        return;
    }
    if (strcasecmp(hr->upload_status, "final") != 0 ||
        batchfmt_file_name(c->body, c->body_len, name, sizeof(name)) != 0) {
        log_warn("remote batch %s: the upload ended without a file name",
                 c->display);
        c->failures++;
        c->next_ms = cli_now_ms() + backoff(c->rm, c->failures);
        return;
    }
    free(c->input);
    c->input = NULL;
    u.phase = QUEUE_REMOTE_UPLOADED;
    u.input_file = name;
    u.uploaded_ms = cli_now_ms();
    if (record(c, &u) != 0) {
        c->next_ms = cli_now_ms() + 5000;   /* upload again then */
        return;
    }
    set_phase(c, QUEUE_REMOTE_UPLOADED);
    snprintf(c->input_file, sizeof(c->input_file), "%s", name);
    c->uploaded_ms = u.uploaded_ms;
    c->failures = 0;
    create(c);
}

static void
step_answer(struct chunk *c, int step, const struct http_result *hr)
{
    struct batchfmt_op op;
    char next[256];
    int rc;

    switch (step) {
    case STEP_UPLOAD_START:
    case STEP_UPLOAD_BYTES:
        upload_answer(c, step, hr);
        return;
    case STEP_CREATE:
        if (batchfmt_op(c->body, c->body_len, &op) != 0) {
            /* Created or not, we cannot tell: look it up. */
            c->page_token[0] = '\0';
            c->next_ms = cli_now_ms() + backoff(c->rm, ++c->failures);
            return;
        }
        c->failures = 0;
        submitted(c, &op);
        return;
    case STEP_LOOKUP:
        rc = batchfmt_find(c->body, c->body_len, c->display, &op, next,
                           sizeof(next));
        if (rc == 1) {
            log_info("remote batch %s: found %s, created before the last "
                     "stop", c->display, op.name);
            submitted(c, &op);
        } else if (rc == 0 && next[0] != '\0') {
            snprintf(c->page_token, sizeof(c->page_token), "%s", next);
            lookup(c);
        } else if (rc == 0) {
            /* No remote batch has its name: the create never arrived. */
            c->page_token[0] = '\0';
            create(c);
        } else {
            c->page_token[0] = '\0';  /* from the first page again */
            c->next_ms = cli_now_ms() + backoff(c->rm, ++c->failures);
        }
        return;
    case STEP_POLL:
        if (batchfmt_op(c->body, c->body_len, &op) != 0) {
            c->next_ms = cli_now_ms() + backoff(c->rm, ++c->failures);
            return;
        }
        c->failures = 0;
        batch_seen(c, &op);
        return;
    case STEP_DOWNLOAD:
        downloaded(c);
        return;
    default:
        return;
    }
}

static const char *
step_name(int step)
{
    static const char *const names[] = {
        "?", "upload", "upload", "create", "list", "poll", "download",
        "cancel"
    };

    return step > 0 && step <= STEP_CANCEL ? names[step] : "?";
}

/* A failed download wrote its error body to the results file: a little
 * of it into c->body, to be classified. */
static void
keep_error_body(struct chunk *c)
{
    char buf[16384];
    ssize_t n;

    if (c->results_fd >= 0 &&
        (n = pread(c->results_fd, buf, sizeof(buf), 0)) > 0)
        on_small_body(buf, (size_t)n, c);
}

/* A 404 that says what was asked for is gone (NOT_FOUND), not one from a
 * proxy or an HTML page (a failure like any other, taken again). */
static int
gone_404(const char *body, size_t len, int http_status)
{
    struct answer_result res;

    if (http_status != 404)
        return 0;
    answer_classify_error(body != NULL ? body : "", len, 404, NULL, &res);
    return strcmp(res.api_status, "NOT_FOUND") == 0;
}

static int
not_found(const struct chunk *c, const struct http_result *hr)
{
    return !hr->transport_error &&
           gone_404(c->body, c->body_len, hr->http_status);
}

/* The answer to the cancel of a batch made for a chunk that had ended. */
static void
cancel_answer(struct chunk *c, const struct http_result *hr)
{
    if ((hr->http_status == 200 && !hr->transport_error) ||
        not_found(c, hr)) {
        log_info("remote batch %s: %s cancelled", c->display,
                 c->remote_name);
        c->gone = GONE_FORGET;
        return;
    }
    c->next_ms = cli_now_ms() + backoff(c->rm, ++c->failures);
    if (hr->transport_error || hr->http_status == 0)
        log_warn("remote batch %s: cannot cancel %s: %s", c->display,
                 c->remote_name, hr->error);
    else
        log_warn("remote batch %s: cannot cancel %s: HTTP %d", c->display,
                 c->remote_name, hr->http_status);
}

void
remote_transfer_done(struct remote *rm, void *user,
                     const struct http_result *hr)
{
    struct chunk *c = user;
    int step = c->step;
    char why[400];

    c->xfer = NULL;
    c->step = STEP_NONE;
    rm->inflight--;
    if (step == STEP_CANCEL) {
        cancel_answer(c, hr);
        return;
    }
    if (hr->http_status == 200 && !hr->transport_error && !c->body_over) {
        step_answer(c, step, hr);
        return;
    }
    if (step == STEP_DOWNLOAD)
        keep_error_body(c);
    if (not_found(c, hr) && (step == STEP_POLL || step == STEP_DOWNLOAD)) {
        /* The batch or its results are gone (they last 48 h). */
        snprintf(why, sizeof(why), "remote batch %s: %s is gone (404): its "
                 "jobs are sent again", c->display, step == STEP_POLL
                 ? c->remote_name : c->result_file);
        log_warn("%s", why);
        chunk_drop_results(c);
        if (load_held(c) == 0)
            give_back(c, why);
        end_chunk(c, QUEUE_REMOTE_RESUBMIT, why);
        return;
    }
    if (step == STEP_DOWNLOAD)
        chunk_drop_results(c);
    if (step == STEP_CREATE || step == STEP_LOOKUP)
        c->page_token[0] = '\0';    /* look it up from the first page */
    step_failed(c, hr, step_name(step));
}

/* ---- the next step of each chunk --------------------------------------- */

/* The chunk is done once the run has recorded every image it was given
 * (the decode workers may still be writing some). */
static void
drained(struct chunk *c)
{
    int held = 0;

    if (queue_remote_jobs(c->rm->q, c->id, count_one, &held) == 0 &&
        held == 0) {
        end_chunk(c, QUEUE_REMOTE_DONE, "results written");
        return;
    }
    if (c->n_delivered == 0 && cli_now_ms() - c->drain_since > 60 * 1000) {
        /* A result the run could not take: read the results again for
         * the jobs still waiting. */
        c->draining = 0;
        return;
    }
    c->next_ms = cli_now_ms() + 100;
}

static void
advance(struct chunk *c, int *room)
{
    if (c->gone == GONE_CANCEL)
        cancel_made(c);
    else if (strcmp(c->phase, QUEUE_REMOTE_NEW) == 0)
        upload_start(c);
    else if (strcmp(c->phase, QUEUE_REMOTE_UPLOADED) == 0)
        create(c);
    else if (strcmp(c->phase, QUEUE_REMOTE_CREATING) == 0)
        lookup(c);
    else if (strcmp(c->phase, QUEUE_REMOTE_SUBMITTED) == 0)
        poll_batch(c);
    else if (strcmp(c->phase, QUEUE_REMOTE_COLLECTING) == 0) {
        if (c->draining)
            drained(c);
        else if (c->results == NULL)
            download(c);
        else
            *room -= read_results(c, *room);
    }
}

/* Follows chunk r unless another live run does; adds it to rm. */
static int
adopt(const struct queue_remote *r, void *arg)
{
    struct remote *rm = arg;
    struct chunk *c;

    if (chunk_find(rm, r->id) != NULL)
        return 0;
    if (queue_remote_follow(rm->q, r->id, rm->owner, cli_now_ms(),
                            FOLLOW_LEASE_MS, owner_alive, NULL) != 0)
        return 0;
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return 1;
    c->tag = REMOTE_XFER_STEP;
    c->rm = rm;
    c->id = r->id;
    c->batch_id = r->batch_id;
    c->results_fd = -1;
    queue_remote_owner(r->id, c->owner, sizeof(c->owner));
    snprintf(c->display, sizeof(c->display), "%s", r->display_name);
    snprintf(c->model, sizeof(c->model), "%s", r->model);
    set_phase(c, r->phase);
    snprintf(c->remote_name, sizeof(c->remote_name), "%s",
             r->remote_name ? r->remote_name : "");
    snprintf(c->input_file, sizeof(c->input_file), "%s",
             r->input_file ? r->input_file : "");
    snprintf(c->result_file, sizeof(c->result_file), "%s",
             r->result_file ? r->result_file : "");
    c->uploaded_ms = r->uploaded_ms;
    c->follow_renew_ms = cli_now_ms() + FOLLOW_RENEW_MS;
    c->next = rm->chunks;
    rm->chunks = c;
    if (strcmp(c->phase, QUEUE_REMOTE_NEW) != 0)
        log_info("following remote batch %s%s%s (%s)", c->display,
                 c->remote_name[0] ? " " : "", c->remote_name, c->phase);
    return 0;
}

/* Chunks of other runs that died (or never followed) become ours. */
static void
scan(struct remote *rm, int64_t now)
{
    if (now < rm->next_scan_ms)
        return;
    rm->next_scan_ms = now + RESCAN_MS;
    if (queue_remote_list(rm->q, rm->opt.batch, 1, adopt, rm) != 0 &&
        rm->opt.batch == NULL)
        log_error("cannot list remote batches: %s", queue_errmsg(rm->q));
}

/* ---- packing queued jobs into chunks ------------------------------------ */

static void
display_name(struct remote *rm, char *buf, size_t len)
{
    unsigned char r[8];

    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        uint64_t x = rm->rng ^ (uint64_t)cli_now_ms();

        memcpy(r, &x, sizeof(r));
    }
    snprintf(buf, len, "nbbatch-%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7]);
}

static int
same_group(const struct queue_job *a, const struct queue_job *b)
{
    return a->batch_id == b->batch_id && strcmp(a->model, b->model) == 0 &&
        (a->size == NULL) == (b->size == NULL) &&
        (a->size == NULL || strcmp(a->size, b->size) == 0);
}

/* Rough size of a job's input line, before it is built. */
static size_t
line_estimate(const struct queue_job *job)
{
    return strlen(job->prompt) + 256 + job->n_refs * (size_t)(8u << 20);
}

/* Claims queued Batch-mode jobs and records one chunk of them; returns
 * 1 when a chunk was made. */
static int
pack_one(struct remote *rm, const struct queue_filter *filter)
{
    struct queue_job **jobs = NULL;
    int64_t *ids = NULL, id = 0;
    size_t n = 0, k = 0, bytes = 0;
    double est = 0, each = 0;
    char name[48];
    int made = 0, limited = 0;

    if (queue_claim(rm->q, rm->owner, cli_now_ms(), 60 * 1000, filter,
                    (size_t)rm->opt.chunk_jobs, &jobs, &n) != 0) {
        log_error("cannot claim Batch-mode jobs: %s", queue_errmsg(rm->q));
        return 0;
    }
    if (n == 0)
        return 0;
    if ((ids = calloc(n, sizeof(*ids))) == NULL)
        goto out;
    /* The first job's group, within the size bound and the budgets. */
    for (size_t i = 0; i < n; i++) {
        if (!same_group(jobs[0], jobs[i]) || limited)
            continue;
        if (k > 0 && bytes + line_estimate(jobs[i]) > rm->opt.chunk_bytes)
            continue;
        if (gate_reserve_remote(rm->gate, jobs[i], &each) != 0) {
            limited = 1;
            continue;
        }
        est = each;
        bytes += line_estimate(jobs[i]);
        ids[k++] = jobs[i]->id;
        jobs[i]->id = -jobs[i]->id;     /* taken: not given back below */
    }
    if (k > 0) {
        display_name(rm, name, sizeof(name));
        if (queue_remote_create(rm->q, rm->owner, jobs[0]->batch_id,
                                jobs[0]->model, name, ids, k, cli_now_ms(),
                                &id) != 0) {
            log_error("cannot record a remote batch: %s",
                      queue_errmsg(rm->q));
            for (size_t i = 0; i < n; i++) {
                if (jobs[i]->id > 0)
                    continue;
                jobs[i]->id = -jobs[i]->id;
                gate_release_remote(rm->gate, jobs[i]->batch_id, est);
            }
        } else {
            struct queue_remote r = {
                .id = id, .batch_id = jobs[0]->batch_id,
                .display_name = name, .model = jobs[0]->model,
                .phase = QUEUE_REMOTE_NEW,
            };
            struct chunk *c;

            adopt(&r, rm);
            if ((c = chunk_find(rm, id)) != NULL) {
                c->estimate = est;
                c->reserved = k;
            }
            log_info("remote batch %s: %zu jobs of %s for the Batch API",
                     name, k, jobs[0]->model);
            made = 1;
        }
    }
out:
    for (size_t i = 0; i < n; i++)
        if (jobs[i]->id > 0)
            queue_unclaim(rm->q, jobs[i]->id, rm->owner);
    queue_jobs_free(jobs, n);
    free(ids);
    return made && !limited;
}

/* ---- the module -------------------------------------------------------- */

struct remote *
remote_new(struct queue *q, struct http *http, struct gate *gate,
           const char *owner, const struct remote_opts *opts,
           remote_result_fn result, void *arg)
{
    struct remote *rm = calloc(1, sizeof(*rm));

    if (rm == NULL)
        return NULL;
    rm->q = q;
    rm->http = http;
    rm->gate = gate;
    snprintf(rm->owner, sizeof(rm->owner), "%s", owner);
    rm->opt = *opts;
    if (rm->opt.poll_ms <= 0)
        rm->opt.poll_ms = 15 * 1000;
    if (rm->opt.chunk_jobs <= 0)
        rm->opt.chunk_jobs = 100;
    if (rm->opt.chunk_bytes == 0)
        rm->opt.chunk_bytes = (size_t)256 << 20;
    rm->result = result;
    rm->arg = arg;
    rm->rng = (uint64_t)cli_now_ms() ^ ((uint64_t)getpid() << 32) ^
        0x2545f4914f6cdd1dULL;
    return rm;
}

void
remote_abort(struct remote *rm)
{
    for (struct chunk *c = rm->chunks; c != NULL; c = c->next) {
        if (c->xfer == NULL)
            continue;
        http_abort(rm->http, c->xfer);
        c->xfer = NULL;
        if (c->step == STEP_DOWNLOAD)
            chunk_drop_results(c);
        if (c->step == STEP_CREATE)
            c->page_token[0] = '\0';
        c->step = STEP_NONE;
        rm->inflight--;
    }
}

void
remote_settled(struct remote *rm, int64_t job_id)
{
    for (struct chunk *c = rm != NULL ? rm->chunks : NULL; c != NULL;
         c = c->next)
        for (size_t i = 0; i < c->n_delivered; i++)
            if (c->delivered[i] == job_id) {
                c->delivered[i] = c->delivered[--c->n_delivered];
                return;
            }
}

void
remote_free(struct remote *rm)
{
    struct chunk *c, *next;

    if (rm == NULL)
        return;
    remote_abort(rm);
    for (c = rm->chunks; c != NULL; c = next) {
        next = c->next;
        if (c->gone == GONE_CANCEL)
            log_warn("remote batch %s was cancelled here, but %s it made "
                     "still runs at the Batch API", c->display,
                     c->remote_name);
        /* Jobs read but not handed over stay with the chunk. */
        chunk_free(c);
    }
    queue_remote_unfollow(rm->q, rm->owner);
    free(rm);
}

/*
 * Renews this run's lease on chunk c.  When another run follows it now
 * (this one stalled), c is dropped here, its call aborted, the database
 * left alone: 1.  A database failure is tried again soon.
 */
static int
renew(struct chunk *c, int64_t now)
{
    struct remote *rm = c->rm;
    int rc = queue_remote_follow(rm->q, c->id, rm->owner, now,
                                 FOLLOW_LEASE_MS, NULL, NULL);

    if (rc == NB_ELEASE || rc == NB_ENOTFOUND) {
        log_warn("remote batch %s: another run follows it now; leaving it "
                 "to that run", c->display);
        if (c->xfer != NULL) {
            http_abort(rm->http, c->xfer);
            rm->inflight--;
        }
        chunk_forget(rm, c);
        return 1;
    }
    c->follow_renew_ms = now + (rc == 0 ? FOLLOW_RENEW_MS : 1000);
    return 0;
}

int64_t
remote_tick(struct remote *rm, int64_t now, int pack,
            const struct queue_filter *filter, int room)
{
    struct chunk *c, *next;
    int64_t wait = 1000;
    int made = 0;

    scan(rm, now);
    while (pack && rm->fatal == 0 && made < MAX_NEW_PER_TICK &&
           pack_one(rm, filter))
        made++;
    for (c = rm->chunks; c != NULL; c = next) {
        next = c->next;
        if (now >= c->follow_renew_ms && renew(c, now) != 0)
            continue;
        if (c->gone == GONE_FORGET && c->step == STEP_NONE) {
            chunk_forget(rm, c);
            continue;
        }
        if (c->step != STEP_NONE || rm->fatal != 0)
            continue;
        if (now >= c->next_ms)
            advance(c, &room);
        else if (c->next_ms - now < wait)
            wait = c->next_ms - now;
    }
    for (c = rm->chunks; c != NULL; c = c->next)
        if (c->results != NULL && c->step == STEP_NONE)
            wait = room > 0 ? 0 : 50;   /* lines left to read */
    return wait;
}

int
remote_live(const struct remote *rm)
{
    int n = 0;

    for (const struct chunk *c = rm->chunks; c != NULL; c = c->next)
        n++;
    return n;
}

int
remote_unsettled(const struct remote *rm)
{
    int n = 0;

    for (const struct chunk *c = rm->chunks; c != NULL; c = c->next)
        if (c->step != STEP_NONE ||
            strcmp(c->phase, QUEUE_REMOTE_SUBMITTED) != 0)
            n++;
    return n;
}

int
remote_inflight(const struct remote *rm)
{
    return rm->inflight;
}

int
remote_fatal(const struct remote *rm, char *msg, size_t len)
{
    if (rm->fatal != 0)
        snprintf(msg, len, "%s", rm->fatal_msg);
    return rm->fatal;
}

/* ---- `nbbatch cancel` -------------------------------------------------- */

struct cancel_pass {
    struct queue *q;
    struct http *http;
    int64_t *ids;
    size_t n;
    int bad;
};

static int
empty_chunk(const struct queue_remote *r, void *arg)
{
    struct cancel_pass *cp = arg;
    int64_t *grown;

    if (r->counts[QUEUE_RUNNING] > 0 ||
        strcmp(r->phase, QUEUE_REMOTE_COLLECTING) == 0)
        return 0;       /* still holds jobs, or its results are in */
    if ((grown = realloc(cp->ids, (cp->n + 1) * sizeof(*grown))) == NULL) {
        cp->bad = 1;
        return 1;
    }
    cp->ids = grown;
    cp->ids[cp->n++] = r->id;
    return 0;
}

struct one_chunk {
    int64_t id;
    char phase[16];
    char remote_name[160];
    char display[80];
};

static int
find_chunk(const struct queue_remote *r, void *arg)
{
    struct one_chunk *oc = arg;

    if (r->id != oc->id)
        return 0;
    snprintf(oc->phase, sizeof(oc->phase), "%s", r->phase);
    snprintf(oc->remote_name, sizeof(oc->remote_name), "%s",
             r->remote_name ? r->remote_name : "");
    snprintf(oc->display, sizeof(oc->display), "%s", r->display_name);
    return 1;
}

/* A created batch's name by display name, through the list; 1 found. */
static int
find_remote(struct http *h, const char *display, char *name, size_t len)
{
    char token[256] = "", path[1024], next[256];
    struct batchfmt_op op;
    int found = 0;

    for (int page = 0; page < 100 && !found; page++) {
        struct http_request req = {.method = "GET", .path = path,
                                   .timeout_ms = 60 * 1000};
        struct http_result hr;
        char *body = NULL;
        size_t blen = 0;

        memset(&hr, 0, sizeof(hr));
        if (list_path(token, path, sizeof(path)) != 0)
            return -1;
        if (http_fetch(h, &req, &hr, &body, &blen, SMALL_BODY_MAX) != 0 ||
            hr.http_status != 200) {
            free(body);
            return -1;
        }
        found = batchfmt_find(body, blen, display, &op, next, sizeof(next));
        free(body);
        if (found < 0)
            return -1;
        if (found == 1)
            snprintf(name, len, "%s", op.name);
        else if (next[0] == '\0')
            break;
        snprintf(token, sizeof(token), "%s", next);
    }
    return found;
}

/* Whether remote batch name has ended (or is gone): 1, 0 when it runs,
 * -1 when the API does not say. */
static int
remote_ended(struct http *h, const char *name)
{
    char path[256], *body = NULL;
    struct http_request req = {.method = "GET", .path = path,
                               .timeout_ms = 60 * 1000};
    struct http_result hr;
    struct batchfmt_op op;
    size_t blen = 0;
    int rc = -1;

    memset(&hr, 0, sizeof(hr));
    snprintf(path, sizeof(path), "/v1beta/%s", name);
    if (http_fetch(h, &req, &hr, &body, &blen, SMALL_BODY_MAX) == 0) {
        if (hr.http_status == 200 && batchfmt_op(body, blen, &op) == 0)
            rc = batchfmt_state_ended(op.state);
        if (gone_404(body, blen, hr.http_status))
            rc = 1;
    }
    free(body);
    return rc;
}

/*
 * Cancels remote batch name at the API: 0 once it runs no more (cancelled
 * now, ended before, or gone), else NB_EHTTP with what to do in err.
 */
static int
cancel_remote(struct http *h, const char *name, char *err, size_t errlen)
{
    char path[256], *body = NULL;
    struct http_request req = {.method = "POST", .path = path,
                               .timeout_ms = 60 * 1000};
    struct http_result hr;
    struct answer_result res;
    size_t blen = 0;
    int rc;

    memset(&hr, 0, sizeof(hr));
    snprintf(path, sizeof(path), "/v1beta/%s:cancel", name);
    if ((req.body = strdup("{}")) != NULL)
        req.body_len = 2;
    rc = http_fetch(h, &req, &hr, &body, &blen, SMALL_BODY_MAX);
    if (rc != 0) {
        free(body);
        snprintf(err, errlen, "cancelling remote batch %s: %s", name,
                 hr.error[0] ? hr.error : "no answer");
        return NB_EHTTP;
    }
    if (hr.http_status == 200) {
        free(body);
        return 0;
    }
    answer_classify_error(body != NULL ? body : "", blen, hr.http_status,
                          NULL, &res);
    free(body);
    /* A refusal may say that it ended already (or is gone): ask. */
    if ((hr.http_status == 404 && strcmp(res.api_status, "NOT_FOUND") == 0)
        || remote_ended(h, name) == 1)
        return 0;
    snprintf(err, errlen, "cancelling remote batch %s: %s%s To fix: %s",
             name, res.message, advice_stop(res.message),
             advice_for(hr.http_status, res.reason, res.api_status));
    return NB_EHTTP;
}

/* Cancels one remote batch that no longer holds a job, and ends it here
 * only once it runs no more at the API. */
static int
cancel_one(struct cancel_pass *cp, int64_t id, char *err, size_t errlen)
{
    struct one_chunk oc = {.id = id};
    int rc;

    if (queue_remote_list(cp->q, NULL, 1, find_chunk, &oc) != 0 ||
        oc.phase[0] == '\0')
        return 0;       /* ended meanwhile */
    if (oc.remote_name[0] == '\0' &&
        strcmp(oc.phase, QUEUE_REMOTE_CREATING) == 0) {
        /* A create may have been sent: it must be found, to be
         * cancelled, before the chunk is ended. */
        if (cp->http == NULL) {
            snprintf(err, errlen, "remote batch %s may have been created, "
                     "and it cannot be looked up without an API key",
                     oc.display);
            return NB_EHTTP;
        }
        if (find_remote(cp->http, oc.display, oc.remote_name,
                        sizeof(oc.remote_name)) < 0) {
            snprintf(err, errlen, "cannot look up remote batch %s",
                     oc.display);
            return NB_EHTTP;
        }
    }
    if (oc.remote_name[0] != '\0') {
        if (cp->http == NULL) {
            snprintf(err, errlen, "remote batch %s cannot be cancelled "
                     "without an API key", oc.remote_name);
            return NB_EHTTP;
        }
        if ((rc = cancel_remote(cp->http, oc.remote_name, err,
                                errlen)) != 0)
            return rc;
    }
    rc = queue_remote_end(cp->q, id, QUEUE_REMOTE_CANCELLED,
                          "cancelled by the user", cli_now_ms(), NULL);
    if (rc != 0)
        snprintf(err, errlen, "%s", queue_errmsg(cp->q));
    return rc;
}

int
remote_cancel_empty(struct queue *q, struct http *http, const char *batch,
                    int *n_cancelled, char *err, size_t errlen)
{
    struct cancel_pass cp = {.q = q, .http = http};
    int rc = 0;

    *n_cancelled = 0;
    err[0] = '\0';
    if ((rc = queue_remote_list(q, batch, 1, empty_chunk, &cp)) != 0 ||
        cp.bad) {
        free(cp.ids);
        snprintf(err, errlen, "%s", cp.bad ? "out of memory"
                                           : queue_errmsg(q));
        return rc != 0 ? rc : NB_ENOMEM;
    }
    for (size_t i = 0; i < cp.n && rc == 0; i++) {
        rc = cancel_one(&cp, cp.ids[i], err, errlen);
        if (rc == 0)
            (*n_cancelled)++;
    }
    free(cp.ids);
    return rc;
}

int
remote_count_empty(struct queue *q, const char *batch, int *n)
{
    struct cancel_pass cp = {.q = q};
    int rc = queue_remote_list(q, batch, 1, empty_chunk, &cp);

    *n = (int)cp.n;
    free(cp.ids);
    return rc != 0 ? rc : cp.bad ? NB_ENOMEM : 0;
}
