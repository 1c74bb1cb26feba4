/*
 * run.c - `nbbatch run`: drain the queue with many requests in flight.
 *
 * One thread owns the network (libcurl multi) and the database; a few
 * decode workers (decode.c) classify answers and write images.  A job's
 * life in a run:
 *
 *   claim (lease) -> preflight -> request in flight -> decode -> finish
 *
 * Preflight makes a crash harmless: an image already on disk that carries
 * the job's id means an earlier run wrote it and died before recording it,
 * so the job is marked done without paying for it again; a temporary file
 * left by a crash is removed.  Leases are renewed while the run lives, and
 * a run reclaims the jobs of runs that died.  Every outcome is recorded by
 * queue_finish() in one transaction with its attempt row.
 *
 * Stopping: the first SIGINT/SIGTERM stops dispatching and lets requests in
 * flight finish for a grace period; the second (or the end of the grace
 * period) aborts them and releases their jobs.  A fatal answer (bad key,
 * unknown model, region, per-day quota) stops the run at once and
 * releases every job: nothing is lost, nothing is counted against a job.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobs/answer.h"
#include "jobs/image.h"
#include "jobs/models.h"
#include "jobs/promptfile.h"
#include "jobs/request.h"
#include "queue/nberr.h"
#include "queue/queue.h"
#include "runner/advice.h"
#include "runner/apikey.h"
#include "runner/cli.h"
#include "runner/config.h"
#include "runner/decode.h"
#include "runner/gate.h"
#include "runner/http.h"
#include "runner/log.h"
#include "runner/owner.h"
#include "runner/progress.h"
#include "runner/remote.h"
#include "runner/tzone.h"
#include "runner/window.h"

#define LEASE_MS          (120 * 1000)
#define RENEW_EVERY_MS    (30 * 1000)
#define CLAIM_CHUNK       64
#define IDLE_RECHECK_MS   1000
#define FAR_FUTURE_MS     (5 * 60 * 1000)
#define BACKOFF_BASE_MS   1000
#define BACKOFF_CAP_MS    (60 * 1000)

/* Limits per class of failure before a job fails for good. */
#define MAX_TRANSIENT     10
#define MAX_SOFT          3
#define MAX_ATTEMPTS      25

struct run_opts {
    const char *db;
    const char *batch;
    const char *key_file;
    const char *config;         /* --config, else the default place */
    const char *window;         /* --window text, or NULL */
    const char *tz;             /* --tz, or NULL */
    int workers;                /* 0 until set by flag or config */
    int64_t max_jobs;           /* 0: no limit */
    int64_t until_ms;           /* 0: none */
    int64_t timeout_ms;         /* per request, 1K/2K; 4K gets twice */
    int64_t grace_ms;
    int json;
    int wait;                   /* sleep for far-future jobs, windows
                                   and daily quotas */
    int decoders;
    double budget_usd;          /* --budget; 0: none */
    int64_t batch_poll_ms;      /* --batch-poll: Batch mode polls */
    int batch_chunk;            /* --batch-chunk: jobs per remote batch */
    int detach;                 /* --detach: leave submitted remote
                                   batches to a later run */
    int rpm;                    /* --rpm / --rpd for every model */
    int rpd;
};

/* Where requests can go: the primary endpoint, then the config's
 * fallbacks, each with its base URL and key. */
struct endpoint {
    const char *base_url;       /* NULL: the transport's default */
    char *key;                  /* owned, wiped; NULL: the main key */
};

/* One job in flight, or one result of a remote batch. */
struct slot {
    int tag;                    /* REMOTE_XFER_SLOT: first */
    struct decode_task task;    /* decode_task.user points here */
    struct queue_job *job;
    struct answer *answer;
    struct http_xfer *xfer;
    struct gate_ticket ticket;
    int64_t started_ms;
    int64_t started_mono;
    int remote;                 /* a result line of a remote batch */
    double estimate;            /* remote: the price this run reserved */
    struct slot *prev, *next;   /* the run's list of live slots */
};

struct run {
    struct run_opts opt;
    struct queue *q;
    struct http *http;
    struct decode_pool *pool;
    struct progress *progress;
    char owner[320];
    struct decode_task *decoded;    /* written images not yet recorded */
    struct decode_task *decoded_tail;
    struct slot *slots;         /* in flight or decoding */
    int nslots;
    int n_net;                  /* of those, requests on the wire */
    int64_t dispatched;
    int64_t done;
    int64_t failed;
    int64_t next_claim_mono;
    int64_t next_renew_mono;
    int64_t next_totals_mono;
    int64_t next_end_check_mono;    /* when loop_should_end may ask the
                                       queue again (a scan at millions) */
    int stop_dispatch;
    int fatal_status;           /* exit status of a fatal stop, or 0 */
    int64_t grace_deadline;     /* mono ms; 0: none */
    int idle_exit;              /* nothing due for a long time */
    unsigned long long rng;
    struct config cfg;
    struct gate *gate;
    struct remote *remote;      /* Batch mode */
    int64_t next_remote_mono;
    struct endpoint endpoints[CONFIG_MAX_ENDPOINTS];
    int n_endpoints;
    /* The gate's verdict of this turn: models nothing may go to. */
    const char *const *skip_models;
    size_t n_skip_models;
    int64_t blocked_next_ms;
    int all_parked;
    int budget_stop;
    /* --window (the run's own) and the config's [offpeak] windows, with
     * whether each is open and when that next changes (wall ms). */
    struct window_set run_window;
    const char *run_tz;
    int run_window_open;
    int64_t run_window_change_ms;
    const char *offpeak_tz;
    int offpeak_open;
    int64_t offpeak_change_ms;
};

static volatile sig_atomic_t signal_count;
static volatile sig_atomic_t last_signal;

static void
on_signal(int sig)
{
    last_signal = sig;
    signal_count++;
}

static void
install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* xorshift64*: enough for jitter, seeded per process. */
static uint64_t
rng_next(struct run *r)
{
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return r->rng * 2685821657736338717ULL;
}

/* Full jitter: random(0, min(cap, base * 2^(n-1))). */
static int64_t
backoff_ms(struct run *r, int n)
{
    int64_t ceiling = BACKOFF_BASE_MS;

    for (int i = 1; i < n && ceiling < BACKOFF_CAP_MS; i++)
        ceiling *= 2;
    if (ceiling > BACKOFF_CAP_MS)
        ceiling = BACKOFF_CAP_MS;
    return (int64_t)(rng_next(r) % (uint64_t)(ceiling + 1));
}

static void
slot_link(struct run *r, struct slot *s)
{
    s->prev = NULL;
    s->next = r->slots;
    if (r->slots != NULL)
        r->slots->prev = s;
    r->slots = s;
    r->nslots++;
}

static void
slot_free(struct run *r, struct slot *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        r->slots = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    r->nslots--;
    if (s->remote)
        remote_settled(r->remote, s->job->id);
    answer_free(s->answer);
    queue_job_free(s->job);
    free(s);
}

/* Records a and reports lease loss (a cancel or a reclaim won).  The
 * owner is the job's: this run, or the remote batch that holds it. */
static void
finish(struct run *r, struct queue_job *job, struct queue_attempt *a)
{
    int rc = queue_finish(r->q, job->id, job->lease_owner != NULL
                          ? job->lease_owner : r->owner, a);

    if (rc == NB_ELEASE)
        log_warn("job %lld: no longer ours (cancelled or reclaimed); "
                 "result dropped", (long long)job->id);
    else if (rc != 0)
        log_error("job %lld: cannot record the outcome: %s",
                  (long long)job->id, queue_errmsg(r->q));
}

static void
release_job(struct run *r, struct queue_job *job, const char *why)
{
    struct queue_attempt a = {
        .outcome = QUEUE_OUT_RELEASE,
        .err_class = "interrupted",
        .message = why,
        .started_ms = cli_now_ms(),
    };

    finish(r, job, &a);
}

static void
block_job(struct run *r, struct queue_job *job, const char *why)
{
    struct queue_attempt a = {
        .outcome = QUEUE_OUT_BLOCKED,
        .err_class = "permanent",
        .message = why,
        .started_ms = cli_now_ms(),
    };

    finish(r, job, &a);
    r->failed++;
    progress_failed(r->progress, job->id, "blocked", "permanent", 0, why);
}

/*
 * Before paying for a request: is the image already on disk?  Returns 1
 * when the job needs no request (done or blocked here), 0 to send it.
 */
static int
preflight(struct run *r, struct queue_job *job)
{
    struct stat st;
    int64_t owner_id = 0;
    char msg[512];
    int rc;

    image_remove_tmp(job->out_path, job->id);
    if (stat(job->out_path, &st) != 0)
        return 0;
    rc = image_job_id(job->out_path, &owner_id);
    if (rc == 0 && owner_id == job->id) {
        if (queue_mark_done(r->q, job->id, job->out_path, cli_now_ms()) == 0) {
            r->done++;
            progress_done(r->progress, job->id, job->out_path, 0, 1);
        }
        return 1;
    }
    snprintf(msg, sizeof(msg), "%s already exists and was not written by "
             "this job; move it away, then `nbbatch retry %lld`",
             job->out_path, (long long)job->id);
    block_job(r, job, msg);
    return 1;
}

static int
on_body(const void *data, size_t len, void *user)
{
    struct slot *s = user;

    return answer_feed(s->answer, data, len) != 0;
}

static int64_t
timeout_for(const struct run *r, const struct queue_job *job)
{
    if (job->size != NULL && strcmp(job->size, "4K") == 0)
        return r->opt.timeout_ms * 2;
    return r->opt.timeout_ms;
}

/* Sends job's request as the gate decided; the slot owns job from here
 * on. */
static void
dispatch(struct run *r, struct queue_job *job, const struct gate_ticket *t)
{
    struct http_request req = {.method = "POST"};
    char path[256], dir[4096], err[512];
    struct slot *s;
    int rc;

    rc = request_build_job(job, t->model, &req.body, &req.body_len, err,
                           sizeof(err));
    if (rc != 0) {
        gate_abandon(r->gate, t);
        block_job(r, job, err);
        queue_job_free(job);
        return;
    }
    cli_dir_of(job->out_path, dir, sizeof(dir));
    if (cli_mkdir_p(dir) != 0) {
        snprintf(err, sizeof(err), "cannot create %s: %s", dir,
                 strerror(errno));
        free(req.body);
        gate_abandon(r->gate, t);
        release_job(r, job, err);
        queue_job_free(job);
        r->fatal_status = EXIT_IOERR;
        progress_stop(r->progress, err);
        return;
    }
    s = calloc(1, sizeof(*s));
    if (s != NULL)
        s->answer = answer_new(dir);
    if (s == NULL || s->answer == NULL) {
        free(req.body);
        free(s);
        gate_abandon(r->gate, t);
        release_job(r, job, "out of memory");
        queue_job_free(job);
        r->fatal_status = EXIT_SOFTWARE;
        return;
    }
    s->tag = REMOTE_XFER_SLOT;
    s->job = job;
    s->ticket = *t;
    s->task.user = s;
    s->started_ms = cli_now_ms();
    s->started_mono = cli_mono_ms();
    snprintf(path, sizeof(path), "/v1beta/models/%s:generateContent",
             t->model);
    req.path = path;
    req.base_url = r->endpoints[t->endpoint].base_url;
    req.api_key = r->endpoints[t->endpoint].key;
    req.timeout_ms = timeout_for(r, job);
    req.on_body = on_body;
    req.user = s;
    log_debug("job %lld: POST %s (%zu bytes, attempt %d)",
              (long long)job->id, path, req.body_len, job->attempts + 1);
    rc = http_start(r->http, &req, &s->xfer);
    slot_link(r, s);
    if (rc == 0)
        r->n_net++;
    if (rc != 0) {
        gate_abandon(r->gate, t);
        release_job(r, job, "cannot start the request");
        slot_free(r, s);
        return;
    }
    r->dispatched++;
}

/*
 * Whether set is open at now_ms in zone tz; *change_ms gets when that
 * next changes (it closes, or opens), INT64_MAX when never.
 */
static int
window_state(const struct window_set *set, const char *tz, int64_t now_ms,
             int64_t *change_ms)
{
    int64_t until = 0, opens = 0;
    int open = window_open_at(set, tz, now_ms, &until);

    if (open == 1) {
        *change_ms = until;
        return 1;
    }
    if (open < 0 || window_next_open(set, tz, now_ms, &opens) != 0)
        opens = INT64_MAX;
    *change_ms = opens;
    return 0;
}

/* "2026-12-03 22:00 Europe/Berlin" for a wall-clock instant. */
static void
format_when(const char *tz, int64_t ms, char *buf, size_t len)
{
    const struct tzone *zone;
    char err[128];
    int64_t local, days, year;
    int month, day, minute;

    if (ms == INT64_MAX || tzone_get(tz != NULL ? tz : "", &zone, err,
                                     sizeof(err)) != 0) {
        snprintf(buf, len, "never");
        return;
    }
    local = tzone_local(zone, ms / 1000);
    days = local / 86400 - (local % 86400 < 0);
    minute = (int)((local - days * 86400) / 60);
    tzone_civil_from_days(days, &year, &month, &day);
    snprintf(buf, len, "%04lld-%02d-%02d %02d:%02d%s%s", (long long)year,
             month, day, minute / 60, minute % 60,
             tz != NULL && *tz ? " " : "", tz != NULL ? tz : "");
}

/* Re-reads the windows when one of them opens or closes. */
static void
update_windows(struct run *r, int64_t now_ms)
{
    char when[96], msg[256];
    int was = r->run_window_open;

    if (r->run_window.n > 0 && now_ms >= r->run_window_change_ms) {
        r->run_window_open = window_state(&r->run_window, r->run_tz, now_ms,
                                          &r->run_window_change_ms);
        if (was == 1 && !r->run_window_open && !r->stop_dispatch) {
            r->stop_dispatch = 1;
            progress_stop(r->progress, "the run's window closed: no new "
                          "requests; those in flight finish");
        }
        if (!r->run_window_open) {
            format_when(r->run_tz, r->run_window_change_ms, when,
                        sizeof(when));
            snprintf(msg, sizeof(msg), "window closed until %s", when);
            progress_pause(r->progress, msg);
        } else {
            progress_pause(r->progress, NULL);
        }
    }
    if (r->cfg.offpeak.n > 0 && now_ms >= r->offpeak_change_ms)
        r->offpeak_open = window_state(&r->cfg.offpeak, r->offpeak_tz,
                                       now_ms, &r->offpeak_change_ms);
}

/* The claim filter of this moment: off-peak jobs only in their window. */
static struct queue_filter
claim_filter(const struct run *r)
{
    struct queue_filter f = {
        .batch = r->opt.batch,
        .via = "direct",
        .skip_models = r->skip_models,
        .n_skip_models = r->n_skip_models,
        .skip_offpeak = !r->offpeak_open,
    };

    return f;
}

/*
 * How many requests may start now.  A request's place is freed when its
 * answer has arrived, not when it is decoded, so that writing images
 * never holds the network back; answers waiting to be decoded (small:
 * their images are in temporary files) are capped at --workers.
 */
static int
dispatch_room(const struct run *r)
{
    int limit = gate_limit(r->gate);
    int room = (limit < r->opt.workers ? limit : r->opt.workers) - r->n_net;
    int backlog = r->opt.workers - (r->nslots - r->n_net);

    if (backlog < room)
        room = backlog;

    if (r->opt.max_jobs > 0 && r->opt.max_jobs - r->dispatched < room)
        room = (int)(r->opt.max_jobs - r->dispatched);
    return room > CLAIM_CHUNK ? CLAIM_CHUNK : room;
}

/* Preflight, then the gate: the job is sent, or given back unsent. */
static void
admit(struct run *r, struct queue_job *job, int64_t now)
{
    struct gate_ticket t;
    char msg[256], job_batch[128];
    int rc;

    if (preflight(r, job)) {
        queue_job_free(job);
        return;
    }
    rc = r->budget_stop ? NB_ELIMIT : gate_admit(r->gate, job, now, &t);
    if (rc == 0) {
        dispatch(r, job, &t);
        return;
    }
    snprintf(job_batch, sizeof(job_batch), "%s", job->batch);
    queue_unclaim(r->q, job->id, r->owner);
    queue_job_free(job);
    if (rc == NB_ELIMIT && !r->budget_stop) {
        r->budget_stop = 1;
        r->stop_dispatch = 1;
        if (gate_budget_reached(r->gate) == 2)
            snprintf(msg, sizeof(msg), "the budget of batch %s is reached: "
                     "no new requests", job_batch);
        else
            snprintf(msg, sizeof(msg), "budget of $%.2f reached ($%.4f "
                     "spent or reserved): no new requests",
                     gate_budget(r->gate), gate_spent(r->gate));
        progress_stop(r->progress, msg);
    }
}

/* Asks the gate which models are blocked now, for the claim filter. */
static void
update_gate(struct run *r, int64_t now)
{
    char reason[160];

    gate_refresh(r->gate, now);
    gate_blocked(r->gate, now, &r->skip_models, &r->n_skip_models,
                 &r->blocked_next_ms, &r->all_parked, reason,
                 sizeof(reason));
    if (r->run_window.n == 0 || r->run_window_open)
        progress_pause(r->progress, reason[0] ? reason : NULL);
}

/* The next claim in wait_ms, but never more than a second from now. */
static void
look_again_in(struct run *r, int64_t mono, int64_t wait_ms)
{
    if (wait_ms < 0)
        wait_ms = 0;
    r->next_claim_mono = mono + (wait_ms < IDLE_RECHECK_MS ? wait_ms
                                                           : IDLE_RECHECK_MS);
}

static void
claim_and_dispatch(struct run *r, int64_t mono)
{
    struct queue_filter filter = claim_filter(r);
    struct queue_job **jobs = NULL;
    size_t n = 0;
    int room = dispatch_room(r);
    int64_t now = cli_now_ms(), due = 0;

    if (room <= 0 || mono < r->next_claim_mono)
        return;
    if (r->run_window.n > 0 && !r->run_window_open) {
        /* Waiting for the window (--wait): look again when it opens. */
        look_again_in(r, mono, r->run_window_change_ms - now);
        return;
    }
    if (queue_claim(r->q, r->owner, now, LEASE_MS, &filter, (size_t)room,
                    &jobs, &n) != 0) {
        log_error("cannot claim jobs: %s", queue_errmsg(r->q));
        r->next_claim_mono = mono + IDLE_RECHECK_MS;
        return;
    }
    for (size_t i = 0; i < n; i++)
        admit(r, jobs[i], now);
    free(jobs);
    if (r->n_skip_models > 0 && r->blocked_next_ms != INT64_MAX) {
        /* Look again when a blocked model frees (a quota slot, say). */
        look_again_in(r, mono, r->blocked_next_ms - now);
    }
    if (n == (size_t)room)
        return;     /* maybe more: claim again on the next turn */
    if (queue_next_due(r->q, &filter, &due) != 0 || due == 0) {
        r->next_claim_mono = mono + IDLE_RECHECK_MS;
        return;
    }
    /* Sleep until the next job is due, but look for new work each
     * second (`nbbatch add` may run meanwhile). */
    look_again_in(r, mono, due - now);
    if (due - now > FAR_FUTURE_MS && !r->opt.wait && r->nslots == 0 &&
        remote_live(r->remote) == 0)
        r->idle_exit = 1;
}

static void record_outcome(struct run *r, struct slot *s);

/* Records the outcome of a slot's request and frees the slot. */
static void
settle(struct run *r, struct slot *s)
{
    /* After a fatal stop, answers still arriving change nothing: their
     * jobs go back to the queue unless they got an image. */
    if (r->fatal_status != 0 && s->task.result.cls != ANSWER_OK) {
        /* A remote batch's job stays with its batch: the next run reads
         * its result again. */
        if (!s->remote) {
            gate_abandon(r->gate, &s->ticket);
            release_job(r, s->job, "run stopped");
        }
    } else {
        record_outcome(r, s);
    }
    slot_free(r, s);
    if (r->nslots == 0)
        r->next_end_check_mono = 0;     /* maybe all done: look now */
}

static void
on_transfer_done(void *user, const struct http_result *res, void *arg)
{
    struct slot *s = user;
    struct run *r = arg;
    struct decode_task *t = &s->task;

    if (*(const int *)user == REMOTE_XFER_STEP) {
        remote_transfer_done(r->remote, user, res);
        r->next_remote_mono = 0;
        return;
    }

    s->xfer = NULL;
    r->n_net--;
    t->answer = s->answer;
    t->job = s->job;
    t->http_status = res->http_status;
    t->transport_error = res->transport_error;
    snprintf(t->transport_msg, sizeof(t->transport_msg), "%s", res->error);
    snprintf(t->retry_after, sizeof(t->retry_after), "%s",
             res->retry_after);
    log_debug("job %lld: HTTP %d, %lld bytes in %.2f s%s%s",
              (long long)s->job->id, res->http_status,
              (long long)res->body_bytes, res->total_s,
              res->transport_error ? ", " : "", res->error);
    /* Classifying is cheap (the JSON without its images): done here, so
     * that a fatal, overload or quota answer reaches the gate before the
     * place it frees goes to another request.  Only images go on to the
     * decode workers. */
    answer_classify(t->answer, t->http_status, t->transport_error,
                    t->transport_error ? t->transport_msg : NULL,
                    t->retry_after[0] ? t->retry_after : NULL, &t->result);
    t->classified = 1;
    if (t->result.cls == ANSWER_OK) {
        decode_pool_submit(r->pool, t);
        return;
    }
    t->write_rc = 0;
    settle(r, s);
}

static void
fill_usage(struct queue_attempt *a, const struct answer_result *res)
{
    a->http_status = res->http_status;
    a->api_status = res->api_status[0] ? res->api_status : NULL;
    a->message = res->message[0] ? res->message : NULL;
    a->response_id = res->response_id[0] ? res->response_id : NULL;
    a->model_version = res->model_version[0] ? res->model_version : NULL;
    a->prompt_tokens = res->prompt_tokens;
    a->output_tokens = res->output_tokens;
    a->thought_tokens = res->thought_tokens;
}

/* A fatal answer: stop everything, leave every job queued. */
static void
fatal_stop(struct run *r, const struct answer_result *res)
{
    char msg[768];

    if (r->fatal_status != 0)
        return;
    r->fatal_status = EXIT_CONFIG;
    snprintf(msg, sizeof(msg), "stopping, every job stays queued: %s%s "
             "To fix: %s", res->message, advice_stop(res->message),
             advice_for(res->http_status, res->reason, res->api_status));
    progress_stop(r->progress, msg);
    r->stop_dispatch = 1;
}

static void
retry_or_fail(struct run *r, struct slot *s, struct queue_attempt *a,
              const struct answer_result *res)
{
    struct queue_job *job = s->job;
    int soft = res->cls == ANSWER_SOFT;
    int n = (soft ? job->attempts_soft : job->attempts_transient) + 1;
    int limit = soft ? MAX_SOFT : MAX_TRANSIENT;
    int64_t wait;

    a->err_class = answer_class_name(res->cls);
    if (n >= limit || job->attempts + 1 >= MAX_ATTEMPTS) {
        a->outcome = QUEUE_OUT_FAILED;
        finish(r, job, a);
        r->failed++;
        progress_failed(r->progress, job->id, "failed", a->err_class,
                        res->http_status, res->message);
        return;
    }
    wait = res->retry_after_ms >= 0 ? res->retry_after_ms : backoff_ms(r, n);
    a->outcome = QUEUE_OUT_RETRY;
    a->next_attempt_ms = cli_now_ms() + wait;
    finish(r, job, a);
    progress_retry(r->progress, job->id, a->err_class, res->http_status,
                   res->message, wait);
    /* Look for due work again once this retry is due. */
    if (r->next_claim_mono > cli_mono_ms() + wait)
        r->next_claim_mono = cli_mono_ms() + wait;
}

static void
record_outcome(struct run *r, struct slot *s)
{
    struct decode_task *t = &s->task;
    const struct answer_result *res = &t->result;
    struct queue_job *job = s->job;
    struct queue_attempt a = {
        .started_ms = s->started_ms,
        .latency_ms = cli_mono_ms() - s->started_mono,
    };
    char event[256];

    fill_usage(&a, res);
    event[0] = '\0';
    if (s->remote)
        a.cost_usd = gate_settle_remote(r->gate, job->batch_id, job->model,
                                        job->size, s->estimate, res);
    else
        a.cost_usd = gate_outcome(r->gate, &s->ticket, res, cli_now_ms(),
                                  event, sizeof(event));
    if (event[0] != '\0')
        log_warn("%s", event);
    if (res->cls == ANSWER_OK && t->write_rc != 0) {
        /* The image could not be written: a local problem, not the
         * job's.  Stop before more answers are paid for and lost. */
        a.outcome = QUEUE_OUT_RELEASE;
        a.err_class = "interrupted";
        a.message = t->write_err;
        finish(r, job, &a);
        if (r->fatal_status == 0) {
            r->fatal_status = EXIT_IOERR;
            progress_stop(r->progress, t->write_err);
        }
        r->stop_dispatch = 1;
        return;
    }
    switch (res->cls) {
    case ANSWER_OK:
        a.outcome = QUEUE_OUT_DONE;
        a.output_path = job->out_path;
        finish(r, job, &a);
        r->done++;
        progress_done(r->progress, job->id, job->out_path, a.latency_ms, 0);
        break;
    case ANSWER_PERMANENT:
        a.outcome = QUEUE_OUT_BLOCKED;
        a.err_class = "permanent";
        finish(r, job, &a);
        r->failed++;
        progress_failed(r->progress, job->id, "blocked", "permanent",
                        res->http_status, res->message);
        break;
    case ANSWER_FATAL:
        if (s->remote) {
            /* One line of a remote batch: nothing for the whole run to
             * stop for; the job goes into a later batch. */
            struct answer_result line = *res;

            line.cls = ANSWER_TRANSIENT;
            retry_or_fail(r, s, &a, &line);
            break;
        }
        a.outcome = QUEUE_OUT_RELEASE;
        a.err_class = "fatal";
        finish(r, job, &a);
        /* A daily quota parks its model (the gate did): other models go
         * on, and the run ends with exit 75 when only those jobs are
         * left.  Anything else stops the run. */
        if (!res->quota_per_day)
            fatal_stop(r, res);
        break;
    default:
        retry_or_fail(r, s, &a, res);
        break;
    }
}

/* Decoded answers recorded per turn of the loop: each is a transaction,
 * and claiming new work must not wait behind a whole wave of them. */
#define SETTLE_PER_TURN 32

static void
take_decoded(struct run *r, int all)
{
    struct decode_task *t = decode_pool_take(r->pool);
    int n = 0;

    if (t != NULL) {
        if (r->decoded_tail != NULL)
            r->decoded_tail->next = t;
        else
            r->decoded = t;
        while (t->next != NULL)
            t = t->next;
        r->decoded_tail = t;
    }
    while (r->decoded != NULL && (all || n++ < SETTLE_PER_TURN)) {
        t = r->decoded;
        r->decoded = t->next;
        if (r->decoded == NULL)
            r->decoded_tail = NULL;
        settle(r, t->user);
    }
}

/*
 * A result of a remote batch (remote.c), recorded like a direct answer:
 * an image goes to the decode workers, anything else is settled now.
 */
static void
remote_result(void *arg, struct queue_job *job, struct answer *answer,
              const struct answer_result *res, double estimate)
{
    struct run *r = arg;
    struct slot *s;

    if (answer != NULL && preflight(r, job)) {
        /* Written by an earlier run that died before recording it (or
         * blocked): nothing is paid for it here. */
        gate_release_remote(r->gate, job->batch_id, estimate);
        remote_settled(r->remote, job->id);
        answer_free(answer);
        queue_job_free(job);
        return;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL) {
        remote_settled(r->remote, job->id);
        answer_free(answer);
        queue_job_free(job);    /* stays with its chunk: read again */
        return;
    }
    s->tag = REMOTE_XFER_SLOT;
    s->job = job;
    s->answer = answer;
    s->remote = 1;
    s->estimate = estimate;
    s->started_ms = cli_now_ms();
    s->started_mono = cli_mono_ms();
    s->task.user = s;
    s->task.answer = answer;
    s->task.job = job;
    s->task.http_status = res->http_status;
    s->task.result = *res;
    s->task.classified = 1;
    slot_link(r, s);
    if (res->cls == ANSWER_OK && answer != NULL) {
        decode_pool_submit(r->pool, &s->task);
        return;
    }
    if (res->cls == ANSWER_OK)
        s->task.result.cls = ANSWER_TRANSIENT;
    s->task.write_rc = 0;
    settle(r, s);
}

/* Aborts transfers still on the wire and releases their jobs. */
static void
abort_inflight(struct run *r, const char *why)
{
    struct slot *s, *next;

    for (s = r->slots; s != NULL; s = next) {
        next = s->next;
        if (s->xfer == NULL)
            continue;       /* decoding: let it finish */
        http_abort(r->http, s->xfer);
        s->xfer = NULL;
        r->n_net--;
        gate_abandon(r->gate, &s->ticket);
        release_job(r, s->job, why);
        slot_free(r, s);
    }
}

static void
handle_signals(struct run *r, int64_t mono)
{
    static int seen;

    if (signal_count == seen)
        return;
    seen = signal_count;
    if (seen == 1) {
        r->stop_dispatch = 1;
        r->grace_deadline = mono + r->opt.grace_ms;
        progress_stop(r->progress, "signal received: no new requests; "
                      "waiting for those in flight (again to abort)");
        return;
    }
    abort_inflight(r, "aborted by signal");
}

static int
status_cb(const struct queue_batch_status *s, void *arg)
{
    int64_t *acc = arg;

    acc[0] += s->counts[QUEUE_DONE];
    acc[1] += s->total - s->counts[QUEUE_CANCELLED];
    return 0;
}

static void
refresh_totals(struct run *r, int64_t mono)
{
    int64_t acc[2] = {0, 0};

    if (mono < r->next_totals_mono)
        return;
    r->next_totals_mono = mono + 1000;
    if (queue_status(r->q, r->opt.batch, status_cb, acc) == 0)
        progress_totals(r->progress, acc[0], acc[1]);
    progress_inflight(r->progress, r->n_net);
}

static int
loop_should_end(struct run *r, int64_t mono)
{
    int64_t due = 0;
    struct queue_filter filter = claim_filter(r);

    if (r->nslots > 0 || remote_inflight(r->remote) > 0)
        return 0;
    if (r->stop_dispatch || r->idle_exit)
        return 1;
    if ((r->opt.detach ? remote_unsettled(r->remote)
                       : remote_live(r->remote)) > 0)
        return 0;
    if (r->run_window.n > 0 && !r->run_window_open)
        return !r->opt.wait;
    if (r->opt.until_ms > 0 && cli_now_ms() >= r->opt.until_ms)
        return 1;
    if (r->opt.max_jobs > 0 && r->dispatched >= r->opt.max_jobs)
        return 1;
    if (mono < r->next_end_check_mono)
        return 0;
    r->next_end_check_mono = mono + IDLE_RECHECK_MS;
    /* Nothing in flight and nothing queued (retries count as queued),
     * for direct requests or Batch mode. */
    filter.via = NULL;
    if (queue_next_due(r->q, &filter, &due) != 0 || due != 0)
        return 0;
    /* Jobs of blocked models: wait for a breaker or a quota minute; for
     * a daily quota only with --wait. */
    if (r->n_skip_models > 0) {
        struct queue_filter all = filter;

        all.skip_models = NULL;
        all.n_skip_models = 0;
        if (queue_next_due(r->q, &all, &due) == 0 && due != 0)
            return r->all_parked && !r->opt.wait;
    }
    /* Off-peak jobs waiting for their window keep a --wait run alive. */
    if (r->opt.wait && !r->offpeak_open && r->cfg.offpeak.n > 0) {
        filter.skip_offpeak = 0;
        return queue_next_due(r->q, &filter, &due) == 0 && due == 0;
    }
    return 1;
}

/*
 * Batch mode's turn: new chunks from queued Batch-mode jobs (while the run
 * may send), the next step of each chunk, result lines as far as the
 * decode backlog has room.  A fatal answer of the Batch API stops the run
 * like a fatal direct answer.
 */
static void
remote_turn(struct run *r, int64_t mono)
{
    struct queue_filter filter = claim_filter(r);
    int room = r->opt.workers - (r->nslots - r->n_net);
    int may_pack = !r->stop_dispatch && r->fatal_status == 0 &&
        !r->budget_stop && (r->run_window.n == 0 || r->run_window_open);
    int64_t wait;
    char msg[768];

    if (signal_count > 0 || r->fatal_status != 0) {
        /* Every step is taken again by the next run: stop now. */
        remote_abort(r->remote);
        r->next_remote_mono = mono + IDLE_RECHECK_MS;
        return;
    }
    if (mono < r->next_remote_mono)
        return;
    filter.via = "batch";
    filter.skip_models = NULL;
    filter.n_skip_models = 0;
    wait = remote_tick(r->remote, cli_now_ms(), may_pack, &filter,
                       room > 0 ? room : 0);
    r->next_remote_mono = mono + (wait > 0 ? wait : 0);
    if (remote_fatal(r->remote, msg, sizeof(msg)) != 0 &&
        r->fatal_status == 0) {
        r->fatal_status = EXIT_CONFIG;
        r->stop_dispatch = 1;
        progress_stop(r->progress, msg);
    }
    if (gate_budget_reached(r->gate) != 0 && !r->budget_stop && may_pack) {
        r->budget_stop = 1;
        progress_stop(r->progress, "a budget is reached: no new remote "
                      "batches");
    }
}

static void
wake_network(void *arg)
{
    struct run *r = arg;

    http_wakeup(r->http);
}

static void
main_loop(struct run *r)
{
    for (;;) {
        int64_t mono = cli_mono_ms();
        int wait_ms;

        handle_signals(r, mono);
        update_windows(r, cli_now_ms());
        update_gate(r, cli_now_ms());
        if (r->grace_deadline > 0 && mono >= r->grace_deadline) {
            abort_inflight(r, "grace period over");
            r->grace_deadline = 0;
        }
        if (r->opt.until_ms > 0 && cli_now_ms() >= r->opt.until_ms &&
            !r->stop_dispatch) {
            r->stop_dispatch = 1;
            progress_stop(r->progress, "--until reached: no new requests");
        }
        if (r->fatal_status != 0)
            abort_inflight(r, "run stopped");
        if (!r->stop_dispatch && r->fatal_status == 0)
            claim_and_dispatch(r, mono);
        remote_turn(r, mono);
        if (mono >= r->next_renew_mono) {
            queue_renew(r->q, r->owner, cli_now_ms() + LEASE_MS);
            r->next_renew_mono = mono + RENEW_EVERY_MS;
        }
        take_decoded(r, 0);
        refresh_totals(r, mono);
        progress_tick(r->progress, mono);
        if (loop_should_end(r, mono))
            break;
        wait_ms = 200;
        if (r->next_claim_mono > mono && r->next_claim_mono - mono < wait_ms)
            wait_ms = (int)(r->next_claim_mono - mono);
        /* Places free and work due, or results to record: go round
         * again without waiting. */
        if ((!r->stop_dispatch && r->fatal_status == 0 &&
             mono >= r->next_claim_mono && dispatch_room(r) > 0) ||
            r->decoded != NULL)
            wait_ms = 0;
        if (r->next_remote_mono - mono < wait_ms)
            wait_ms = r->next_remote_mono > mono
                ? (int)(r->next_remote_mono - mono) : 0;
        if (http_poll(r->http, wait_ms, on_transfer_done, r) < 0) {
            log_error("transport failure");
            r->fatal_status = EXIT_SOFTWARE;
        }
    }
}

static int
parse_positive(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int
parse_usd(const char *s, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v > 0) || v > 1e9)
        return -1;
    *out = v;
    return 0;
}

static int
parse_opts(int argc, char **argv, struct run_opts *o)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"batch", required_argument, NULL, 'b'},
        {"workers", required_argument, NULL, 'w'},
        {"max-jobs", required_argument, NULL, 'm'},
        {"until", required_argument, NULL, 'u'},
        {"timeout", required_argument, NULL, 't'},
        {"grace", required_argument, NULL, 'g'},
        {"key-file", required_argument, NULL, 'k'},
        {"log-level", required_argument, NULL, 'l'},
        {"json", no_argument, NULL, 'j'},
        {"wait", no_argument, NULL, 'W'},
        {"config", required_argument, NULL, 'c'},
        {"window", required_argument, NULL, 'n'},
        {"tz", required_argument, NULL, 'z'},
        {"budget", required_argument, NULL, 'B'},
        {"rpm", required_argument, NULL, 'R'},
        {"rpd", required_argument, NULL, 'D'},
        {"batch-poll", required_argument, NULL, 'P'},
        {"batch-chunk", required_argument, NULL, 'C'},
        {"detach", no_argument, NULL, 'T'},
        {NULL, 0, NULL, 0}
    };
    int64_t v;
    double secs;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': o->db = optarg; break;
        case 'b': o->batch = optarg; break;
        case 'k': o->key_file = optarg; break;
        case 'j': o->json = 1; break;
        case 'W': o->wait = 1; break;
        case 'T': o->detach = 1; break;
        case 'c': o->config = optarg; break;
        case 'n': o->window = optarg; break;
        case 'z': o->tz = optarg; break;
        case 'B':
            if (parse_usd(optarg, &o->budget_usd) != 0)
                goto bad;
            break;
        case 'R':
            if (parse_positive(optarg, 1, 1000000, &v) != 0)
                goto bad;
            o->rpm = (int)v;
            break;
        case 'D':
            if (parse_positive(optarg, 1, 100000000, &v) != 0)
                goto bad;
            o->rpd = (int)v;
            break;
        case 'P':
            if (parse_usd(optarg, &secs) != 0 || secs < 0.05 ||
                secs > 86400)
                goto bad;
            o->batch_poll_ms = (int64_t)(secs * 1000);
            break;
        case 'C':
            if (parse_positive(optarg, 1, 100000, &v) != 0)
                goto bad;
            o->batch_chunk = (int)v;
            break;
        case 'w':
            if (parse_positive(optarg, 1, 4096, &v) != 0)
                goto bad;
            o->workers = (int)v;
            break;
        case 'm':
            if (parse_positive(optarg, 1, INT64_MAX, &o->max_jobs) != 0)
                goto bad;
            break;
        case 't':
            if (parse_positive(optarg, 1, 86400, &v) != 0)
                goto bad;
            o->timeout_ms = v * 1000;
            break;
        case 'g':
            if (parse_positive(optarg, 0, 86400, &v) != 0)
                goto bad;
            o->grace_ms = v * 1000;
            break;
        case 'u':
            if (promptfile_parse_time(optarg, &o->until_ms) != 0)
                goto bad;
            break;
        case 'l':
            if (log_set_level_name(optarg) != 0)
                goto bad;
            break;
        default:
            return cli_usage("run");
        }
    }
    if (optind != argc) {
        log_error("run: unexpected argument '%s'", argv[optind]);
        return cli_usage("run");
    }
    return EXIT_OK;

bad:
    log_error("run: bad option value '%s'", optarg);
    return EXIT_USAGE;
}

/*
 * The configuration file under the flags: flags > environment > file.
 * Returns an exit status.
 */
static int
apply_config(struct run *r)
{
    const struct tzone *zone;
    char err[512];
    int rc;

    config_init(&r->cfg);
    rc = config_load(r->opt.config, &r->cfg, err, sizeof(err));
    if (rc != 0) {
        log_error("%s", err);
        return rc == NB_ENOTFOUND ? EXIT_NOINPUT : EXIT_CONFIG;
    }
    if (r->opt.workers == 0)
        r->opt.workers = r->cfg.workers > 0 ? r->cfg.workers : 4;
    if (r->opt.budget_usd == 0 && r->cfg.budget_usd > 0)
        r->opt.budget_usd = r->cfg.budget_usd;
    if (r->opt.batch_poll_ms == 0)
        r->opt.batch_poll_ms = r->cfg.batch_poll_ms;
    if (r->opt.batch_chunk == 0)
        r->opt.batch_chunk = r->cfg.batch_chunk;
    if (r->opt.timeout_ms == 0)
        r->opt.timeout_ms = (r->cfg.timeout_s > 0 ? r->cfg.timeout_s : 300)
            * (int64_t)1000;
    if (r->opt.key_file == NULL && getenv("GEMINI_API_KEY") == NULL &&
        getenv("GOOGLE_API_KEY") == NULL && r->cfg.key_file[0] != '\0')
        r->opt.key_file = r->cfg.key_file;
    r->offpeak_tz = config_offpeak_tz(&r->cfg);
    r->run_tz = r->opt.tz != NULL ? r->opt.tz : r->cfg.tz[0] ? r->cfg.tz
                                                               : NULL;
    if (r->run_tz != NULL &&
        tzone_get(r->run_tz, &zone, err, sizeof(err)) != 0) {
        log_error("run: --tz: %s", err);
        return EXIT_USAGE;
    }
    if (r->opt.window != NULL &&
        window_parse(r->opt.window, &r->run_window, err, sizeof(err)) != 0) {
        log_error("run: --window: %s", err);
        return EXIT_USAGE;
    }
    r->run_window_open = -1;
    return EXIT_OK;
}

/* The fallback endpoints of the config, each with its own key file or
 * the main key.  endpoints[0] is the transport's own. */
static int
setup_endpoints(struct run *r)
{
    const char *source;
    char err[512];

    r->n_endpoints = r->cfg.n_endpoints > 0 ? r->cfg.n_endpoints : 1;
    for (int i = 1; i < r->n_endpoints; i++) {
        const struct config_endpoint *e = &r->cfg.endpoints[i];

        r->endpoints[i].base_url = e->base_url[0] ? e->base_url : NULL;
        if (e->key_file[0] == '\0')
            continue;
        if (apikey_load(e->key_file, &r->endpoints[i].key, &source, err,
                        sizeof(err)) != 0) {
            log_error("endpoint %s: %s", e->name, err);
            return EXIT_CONFIG;
        }
    }
    return EXIT_OK;
}

static int
setup(struct run *r, char **key)
{
    struct remote_opts ropt = {0};
    struct http_config cfg = {0};
    const char *source = NULL;
    char err[512];
    int rc, status;

    status = apply_config(r);
    if (status != EXIT_OK)
        return status;
    rc = apikey_load(r->opt.key_file, key, &source, err, sizeof(err));
    if (rc != 0) {
        log_error("%s", err);
        return EXIT_CONFIG;
    }
    log_debug("API key from %s", source);
    status = cli_open_queue(r->opt.db, &r->q);
    if (status != EXIT_OK)
        return status;
    if (owner_self(r->owner, sizeof(r->owner)) != 0)
        return EXIT_SOFTWARE;
    cfg.base_url = apikey_base_url();
    if (cfg.base_url == NULL && r->cfg.endpoints[0].base_url[0] != '\0')
        cfg.base_url = r->cfg.endpoints[0].base_url;
    status = setup_endpoints(r);
    if (status != EXIT_OK)
        return status;
    r->gate = gate_new(r->q, &r->cfg, r->opt.workers, r->opt.budget_usd,
                       r->opt.rpm, r->opt.rpd);
    if (r->gate == NULL)
        return EXIT_SOFTWARE;
    cfg.api_key = *key;
    cfg.max_connections = r->opt.workers;
    if (http_global_init() != 0) {
        log_error("cannot initialise libcurl");
        return EXIT_SOFTWARE;
    }
    r->http = http_new(&cfg, err, sizeof(err));
    if (r->http == NULL) {
        log_error("%s", err);
        return EXIT_CONFIG;
    }
    ropt.batch = r->opt.batch;
    ropt.poll_ms = r->opt.batch_poll_ms;
    ropt.chunk_jobs = r->opt.batch_chunk;
    r->remote = remote_new(r->q, r->http, r->gate, r->owner, &ropt,
                           remote_result, r);
    if (r->remote == NULL)
        return EXIT_SOFTWARE;
    r->pool = decode_pool_new(r->opt.decoders, wake_network, r);
    r->progress = progress_new(r->opt.json, 1);
    if (r->pool == NULL || r->progress == NULL)
        return EXIT_SOFTWARE;
    return EXIT_OK;
}

static int
final_status(struct run *r, int64_t *left)
{
    struct queue_filter filter = {.batch = r->opt.batch, .via = "direct"};
    char when[96];
    int64_t due = 0;

    *left = 0;
    queue_count_unfinished(r->q, r->opt.batch, left);
    if (signal_count > 0)
        return last_signal == SIGTERM ? 128 + SIGTERM : EXIT_INTERRUPTED;
    if (r->fatal_status != 0)
        return r->fatal_status;
    if (remote_live(r->remote) > 0) {
        log_info("%d remote batches are still with the Batch API; "
                 "`nbbatch run` again collects their images",
                 remote_live(r->remote));
        return EXIT_TEMPFAIL;
    }
    filter.via = NULL;
    if (queue_next_due(r->q, &filter, &due) != 0 || due == 0)
        return r->failed > 0 ? EXIT_SOME_FAILED : EXIT_OK;
    if (r->budget_stop) {
        log_info("a budget is reached ($%.4f spent by this run); raise it "
                 "to go on", gate_spent(r->gate));
    } else if (r->all_parked) {
        log_info("jobs wait for a daily quota to reset at 00:00 "
                 "America/Los_Angeles; run again then, or use --wait");
    } else if (r->run_window.n > 0 && !r->run_window_open) {
        format_when(r->run_tz, r->run_window_change_ms, when, sizeof(when));
        log_info("outside the run's window: the next one opens at %s",
                 when);
    } else if (!r->offpeak_open) {
        filter.skip_offpeak = 1;
        if (queue_next_due(r->q, &filter, &due) == 0 && due == 0) {
            if (r->cfg.offpeak.n == 0)
                log_info("off-peak jobs wait, but no [offpeak] windows are "
                         "configured");
            else {
                format_when(r->offpeak_tz, r->offpeak_change_ms, when,
                            sizeof(when));
                log_info("off-peak jobs wait for the window at %s", when);
            }
        }
    }
    return EXIT_TEMPFAIL;
}

int
cmd_run(int argc, char **argv)
{
    struct run r;
    char *key = NULL;
    int status, reclaimed = 0;
    int64_t left = 0, queued = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    memset(&r, 0, sizeof(r));
    r.opt.grace_ms = 30 * 1000;
    /* Twice the cores: image writes wait for fsync as much as they
     * compute. */
    r.opt.decoders = ncpu < 1 ? 2 : ncpu > 4 ? 8 : 2 * (int)ncpu;
    status = parse_opts(argc, argv, &r.opt);
    if (status != EXIT_OK)
        return status;
    status = setup(&r, &key);
    if (status != EXIT_OK)
        goto out;
    r.rng = (unsigned long long)cli_now_ms() ^
        ((unsigned long long)getpid() << 32) ^ 0x9e3779b97f4a7c15ULL;
    install_signals();
    if (queue_reclaim(r.q, cli_now_ms(), owner_alive, NULL, &reclaimed) != 0)
        log_warn("cannot reclaim interrupted jobs: %s", queue_errmsg(r.q));
    queue_count_unfinished(r.q, r.opt.batch, &queued);
    progress_start(r.progress, r.opt.workers, queued, reclaimed);

    main_loop(&r);

    abort_inflight(&r, "run ended");
    queue_release_all(r.q, r.owner, cli_now_ms());
    status = final_status(&r, &left);
    if (status == EXIT_TEMPFAIL && r.idle_exit)
        log_info("the next queued job is due later; run again then, or "
                 "use --wait");
    progress_end(r.progress, status, r.done, r.failed, left);
out:
    remote_free(r.remote);
    decode_pool_free(r.pool);
    progress_free(r.progress);
    http_free(r.http);
    gate_free(r.gate);
    for (int i = 0; i < CONFIG_MAX_ENDPOINTS; i++)
        apikey_free(r.endpoints[i].key);
    queue_close(r.q);
    apikey_free(key);
    return status;
}
