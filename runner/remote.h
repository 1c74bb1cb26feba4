/*
 * remote.h - Batch mode: the run's jobs handed to Google's Batch API.
 *
 * Part of `nbbatch run`, driven by its loop on its thread: transfers go
 * through the run's transport, results come back to the run as answers,
 * which it writes and records exactly as those of direct requests.
 */
#ifndef NB_REMOTE_H
#define NB_REMOTE_H

#include <stddef.h>
#include <stdint.h>

struct answer;
struct answer_result;
struct config;
struct gate;
struct http;
struct http_result;
struct queue;
struct queue_filter;
struct queue_job;

/* The first member of every transfer's user pointer, so the run can
 * tell whose transfer finished. */
enum {
    REMOTE_XFER_SLOT = 1,       /* a direct request (the run's) */
    REMOTE_XFER_STEP = 2        /* a Batch API call (this module's) */
};

struct remote_opts {
    const char *batch;          /* only this batch's jobs; NULL: all */
    int64_t poll_ms;            /* between polls of a running batch */
    int chunk_jobs;             /* most jobs in one remote batch */
    size_t chunk_bytes;         /* most bytes of one input file */
};

/*
 * Hands the run one result: job (owned by the run from here on), its
 * answer (owned too; NULL for a job to give back with res saying why),
 * and the answer's class in res.  estimate_usd is what this run reserved
 * for the job (0: nothing).  Returns 0 when taken.
 */
typedef void (*remote_result_fn)(void *arg, struct queue_job *job,
                                 struct answer *answer,
                                 const struct answer_result *res,
                                 double estimate_usd);

struct remote;

/*
 * Follows the chunks of q (borrowed, like the rest) for the run whose
 * lease owner is owner, sending through http.  NULL when out of memory.
 */
struct remote *remote_new(struct queue *q, struct http *http,
                          struct gate *gate, const char *owner,
                          const struct remote_opts *opts,
                          remote_result_fn result, void *arg);
/* Aborts its transfers, lets go of its chunks, frees; NULL is fine. */
void remote_free(struct remote *rm);

/*
 * One turn.  When pack is 1, queued Batch-mode jobs that pass filter
 * become new chunks.  Each chunk whose next step is due takes it; up to
 * room result lines go to the run.  Returns how long until something is
 * due (ms, at most a second).
 */
int64_t remote_tick(struct remote *rm, int64_t now_ms, int pack,
                    const struct queue_filter *filter, int room);

/* A finished transfer whose user pointer began with REMOTE_XFER_STEP. */
void remote_transfer_done(struct remote *rm, void *user,
                          const struct http_result *res);

/*
 * The run is done with job_id, a result it was given: recorded, or
 * dropped (its chunk may then read that result again).  Until then the
 * chunk never hands the same job out twice.  rm may be NULL.
 */
void remote_settled(struct remote *rm, int64_t job_id);

/* Chunks this run follows that have not ended. */
int remote_live(const struct remote *rm);
/* Chunks with work to do here: not yet submitted, or with results to
 * collect (a submitted batch waits for Google, not for us). */
int remote_unsettled(const struct remote *rm);
/* Batch API calls on the wire. */
int remote_inflight(const struct remote *rm);
/* Aborts the calls on the wire (each step is taken again later). */
void remote_abort(struct remote *rm);

/*
 * 0, or the exit status of a fatal answer (bad key, unknown model...)
 * with what to do in msg.
 */
int remote_fatal(const struct remote *rm, char *msg, size_t len);

/*
 * For `nbbatch cancel`: every live remote batch (of batch, or of all when
 * NULL) that holds no job any more - its jobs were cancelled - is
 * cancelled at the API through http (NULL: no key; those with a remote
 * name then fail) and ended.  *n_cancelled gets how many; 0 or an NB_E
 * code with err saying why.
 */
int remote_cancel_empty(struct queue *q, struct http *http, const char *batch,
                        int *n_cancelled, char *err, size_t errlen);
/* How many live remote batches hold no job (so need cancelling). */
int remote_count_empty(struct queue *q, const char *batch, int *n);

#endif
