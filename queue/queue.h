/*
 * queue.h - the persistent job queue: one SQLite file, persistence only.
 *
 * A job moves queued -> running -> done, or to failed / blocked / cancelled,
 * and back to queued only through queue_retry() or a released or reclaimed
 * lease.  Every move is one transaction that also writes the attempt row, so
 * history and state never disagree.  Nothing here prints or exits; errors
 * are NB_E codes (queue/nberr.h), with a message in the queue's last-error
 * buffer (queue_errmsg()).
 *
 * Times are milliseconds since the Unix epoch (int64_t, suffix _ms).
 * Strings passed in are borrowed; strings in returned records are owned by
 * the record and freed with it.
 */
#ifndef NB_QUEUE_H
#define NB_QUEUE_H

#include <stddef.h>
#include <stdint.h>

struct queue;

enum queue_state {
    QUEUE_QUEUED,
    QUEUE_RUNNING,
    QUEUE_DONE,
    QUEUE_FAILED,
    QUEUE_BLOCKED,
    QUEUE_CANCELLED,
    QUEUE_NSTATES
};

/* "queued", "running", ... for a state; "?" when out of range. */
const char *queue_state_name(int state);
/* The state named name, or -1. */
int queue_state_parse(const char *name);

/*
 * Opens (creating with mode 0600 if needed) the database at path, sets WAL
 * mode, a busy timeout, foreign keys, and migrates the schema forward.
 * Returns NB_ESCHEMA for a database from a newer nbbatch.  On failure *out
 * is untouched and errbuf (if not NULL) says why.
 */
int queue_open(const char *path, struct queue **out, char *errbuf,
               size_t errlen);
/* Closes q; NULL is fine. */
void queue_close(struct queue *q);
/*
 * One struct queue serves one thread at a time (open one per thread);
 * other processes may use the same file at once.  Callbacks given to the
 * functions below must not call back into the same struct queue.
 *
 * The add functions take no time: they stamp created_ms with the wall
 * clock, or with now_ms once this sets one (0 restores the wall clock).
 * For tests and tools that control time.
 */
void queue_set_clock(struct queue *q, int64_t now_ms);
/* Message of the last failure on q (never NULL, may be ""). */
const char *queue_errmsg(const struct queue *q);

/* ---- adding ------------------------------------------------------------ */

struct queue_ref {
    const char *path;          /* absolute path of a reference image */
    const char *sha256_hex;    /* 64 lowercase hex digits of its bytes */
};

/* A job to add; every pointer borrowed.  Filled in by `nbbatch add`. */
struct queue_new_job {
    const char *key;           /* 64 hex digits: the idempotency key */
    const char *prompt;        /* UTF-8 */
    const char *model;
    const char *aspect;        /* NULL: the model chooses */
    const char *size;          /* NULL: the model's default */
    const char *out_path;      /* absolute final path of the PNG */
    const char *via;           /* "direct" or "batch" */
    int count_index;           /* index within the line's count, from 0 */
    int priority;              /* higher goes first */
    int64_t not_before_ms;     /* 0: none */
    int offpeak;               /* 1: only inside off-peak windows */
    size_t n_refs;
    const struct queue_ref *refs;
};

/*
 * Starts one add transaction for batch name (created if new, with out_dir
 * as its output folder; an existing batch keeps its own).  *next_seq gets
 * the next free ordinal in the batch (1 for a new batch) for naming files.
 * Until queue_add_commit() nothing is visible to other connections.
 * Called again before the commit, it joins the open transaction (one add
 * may fill several batches).
 */
int queue_add_begin(struct queue *q, const char *batch, const char *out_dir,
                    int64_t *batch_id, int64_t *next_seq);
/* The batch's output folder, owned by q, valid until the next call on q. */
const char *queue_add_out_dir(struct queue *q);
/*
 * Adds one job to the batch of the open add transaction.  *added is 1 when
 * inserted, 0 when a job with the same key already exists (nothing done).
 * NB_EEXIST when out_path belongs to another job; *conflict_id then names
 * it.  seq is the ordinal used for out_path (consumed only when added).
 */
int queue_add_job(struct queue *q, int64_t batch_id, int64_t seq,
                  const struct queue_new_job *job, int *added,
                  int64_t *conflict_id);
int queue_add_commit(struct queue *q);
/* Rolls the whole add back; safe after a failure. */
void queue_add_rollback(struct queue *q);

/* ---- claiming and finishing --------------------------------------------- */

/* A claimed or looked-up job; every string owned (queue_job_free()). */
struct queue_job {
    int64_t id;
    int64_t batch_id;
    char *batch;
    int64_t seq;
    char *key;
    char *prompt;
    char *model;
    char *aspect;              /* may be NULL */
    char *size;                /* may be NULL */
    char *out_path;
    char *via;
    int count_index;
    int priority;
    int64_t not_before_ms;
    int offpeak;
    int state;
    int attempts;              /* all attempts */
    int attempts_transient;    /* by class, reset by queue_retry() */
    int attempts_soft;
    int64_t next_attempt_ms;
    int64_t created_ms;
    int64_t updated_ms;
    char *err_class;           /* last error; NULL when none */
    int err_http;
    char *err_status;
    char *err_message;
    char *lease_owner;         /* NULL when not leased */
    int64_t lease_expires_ms;
    char *checkpoint;          /* NULL or a small JSON text */
    size_t n_refs;
    struct queue_ref *refs;    /* owned, strings owned */
};
void queue_job_free(struct queue_job *job);
void queue_jobs_free(struct queue_job **jobs, size_t n);

/* Which jobs a claim may take; NULL members mean "any". */
struct queue_filter {
    const char *batch;             /* batch name */
    const char *via;               /* "direct" or "batch" */
    const char *const *skip_models;/* models not to claim now */
    size_t n_skip_models;
    int skip_offpeak;              /* 1: leave offpeak jobs alone */
};

/*
 * Claims up to max jobs that are queued, due (next attempt and not-before
 * times <= now_ms), in batches not paused and passing filter, highest
 * priority first then oldest.  They become running, leased by owner until
 * now_ms + lease_ms, in one statement: two processes never claim one job.
 * *jobs is a new array of *n owned jobs (NULL when *n is 0).
 */
int queue_claim(struct queue *q, const char *owner, int64_t now_ms,
                int64_t lease_ms, const struct queue_filter *filter,
                size_t max, struct queue_job ***jobs, size_t *n);

/* Sets the lease expiry of every job owned by owner to expires_ms. */
int queue_renew(struct queue *q, const char *owner, int64_t expires_ms);

/* Stores a small JSON checkpoint on a job leased by owner. */
int queue_checkpoint(struct queue *q, int64_t job_id, const char *owner,
                     const char *checkpoint);

/* How an attempt ended, from the runner's point of view. */
enum queue_outcome {
    QUEUE_OUT_DONE,        /* image written: job done */
    QUEUE_OUT_RETRY,       /* failed, try again at next_attempt_ms */
    QUEUE_OUT_FAILED,      /* failed for good (attempts used up) */
    QUEUE_OUT_BLOCKED,     /* refused by the model (safety, bad request) */
    QUEUE_OUT_RELEASE,     /* not attempted or cut short by us: back to
                              queued, no attempt counted against a class */
    QUEUE_OUT_CANCELLED
};

/* One attempt to record; strings borrowed, NULL allowed for absent. */
struct queue_attempt {
    int outcome;               /* enum queue_outcome */
    const char *err_class;     /* "transient", "soft", "permanent",
                                  "fatal", "interrupted" or NULL */
    int http_status;           /* 0: no HTTP answer */
    const char *api_status;    /* e.g. "RESOURCE_EXHAUSTED" */
    const char *message;
    int64_t started_ms;
    int64_t latency_ms;
    int64_t next_attempt_ms;   /* RETRY: earliest next try */
    const char *output_path;   /* DONE: the file written */
    const char *response_id;
    const char *model_version;
    int64_t prompt_tokens;
    int64_t output_tokens;
    int64_t thought_tokens;
    double cost_usd;
};

/*
 * Records attempt a for job_id and moves the job accordingly, in one
 * transaction, only while the job is running and leased by owner
 * (NB_ELEASE otherwise: a cancel or reclaim won).  RETRY and FAILED count
 * the attempt in its class; RELEASE counts nothing.
 */
int queue_finish(struct queue *q, int64_t job_id, const char *owner,
                 const struct queue_attempt *a);

/*
 * Marks a job done from an image already on disk (found by recovery):
 * works whatever the job's state but cancelled, records an attempt
 * "recovered" with the output path.
 */
int queue_mark_done(struct queue *q, int64_t job_id, const char *path,
                    int64_t now_ms);

/*
 * Returns to queued every running job whose lease expired before now_ms or
 * whose owner owner_alive() says is gone, recording an "interrupted"
 * attempt for each.  *n_reclaimed gets how many (may be NULL).
 */
int queue_reclaim(struct queue *q, int64_t now_ms,
                  int (*owner_alive)(const char *owner, void *arg), void *arg,
                  int *n_reclaimed);

/* Releases (back to queued, no attempt counted) every job owned by owner. */
int queue_release_all(struct queue *q, const char *owner, int64_t now_ms);

/* ---- looking at the queue ----------------------------------------------- */

struct queue_batch_status {
    int64_t id;
    const char *name;          /* borrowed for the callback's duration */
    const char *out_dir;
    int paused;
    int64_t created_ms;
    int64_t counts[QUEUE_NSTATES];
    int64_t total;
    double budget_usd;         /* 0: none */
    double spent_usd;          /* sum of the batch's attempt costs */
};

/*
 * Calls cb once per batch (only batch name when not NULL), in creation
 * order, with counts by state.  Cost grows with batches, not with jobs.
 * NB_ENOTFOUND when batch names no batch.  cb returning non-zero stops.
 */
int queue_status(struct queue *q, const char *batch,
                 int (*cb)(const struct queue_batch_status *s, void *arg),
                 void *arg);

/*
 * Calls cb for up to limit jobs (0: no limit) with state (-1: any) in
 * batch (NULL: any), by id, starting after after_id.  The job is borrowed
 * for the callback's duration.
 */
int queue_list(struct queue *q, int state, const char *batch,
               int64_t after_id, int64_t limit,
               int (*cb)(const struct queue_job *job, void *arg), void *arg);

/* Looks up one job; *job is owned by the caller. NB_ENOTFOUND if none. */
int queue_get(struct queue *q, int64_t job_id, struct queue_job **job);
/* Looks up the job with an idempotency key, in any batch; the same. */
int queue_get_by_key(struct queue *q, const char *key, struct queue_job **job);

/* One recorded attempt, borrowed for the callback's duration. */
struct queue_attempt_row {
    int64_t id;
    int64_t job_id;
    int64_t started_ms;
    int64_t latency_ms;
    const char *outcome;       /* "done", "retry", "failed", "blocked",
                                  "released", "interrupted", "recovered",
                                  "cancelled" */
    const char *err_class;
    int http_status;
    const char *api_status;
    const char *message;
    const char *output_path;
    const char *response_id;
    const char *model_version;
    int64_t prompt_tokens;
    int64_t output_tokens;
    int64_t thought_tokens;
    double cost_usd;
};
int queue_attempts(struct queue *q, int64_t job_id,
                   int (*cb)(const struct queue_attempt_row *r, void *arg),
                   void *arg);

/*
 * Cancels one job (job_id > 0) or every unfinished job of batch.  Queued,
 * running, failed and blocked jobs become cancelled; *n gets how many.
 */
int queue_cancel(struct queue *q, int64_t job_id, const char *batch,
                 int64_t now_ms, int64_t *n);
/*
 * Puts failed and blocked jobs (one, or all of batch, or all when both are
 * unset) back to queued with their class counters reset; *n gets how many.
 * A job named by its id is put back when cancelled as well: asking for
 * one job by name undoes its cancel, a batch-wide retry does not.
 */
int queue_retry(struct queue *q, int64_t job_id, const char *batch,
                int64_t now_ms, int64_t *n);
/* Pauses or resumes a batch: a paused batch's jobs are not claimed. */
int queue_set_paused(struct queue *q, const char *batch, int paused);

/* Jobs that are queued or running, in all batches or in batch. */
int queue_count_unfinished(struct queue *q, const char *batch, int64_t *n);

/*
 * Earliest time at which a queued job (passing filter, in a batch not
 * paused) becomes due, in *due_ms; 0 when none is queued, and at least 1
 * otherwise (1 for a job that has no time set).  Lets a run sleep until
 * then.
 */
int queue_next_due(struct queue *q, const struct queue_filter *filter,
                   int64_t *due_ms);

/* ---- scheduler state: quotas, parked models, breakers, spend ------------ */

/*
 * Returns a job this owner claimed but did not send (a quota or budget
 * gate said no) to queued, with no attempt recorded.  NB_ELEASE when the
 * job is not running under owner.
 */
int queue_unclaim(struct queue *q, int64_t job_id, const char *owner);

/* Records that one request went to model at t_ms, so that every run on
 * this database counts it against the model's quotas; rows older than
 * two days are dropped now and then. */
int queue_quota_note(struct queue *q, const char *model, int64_t t_ms);
/* The send times of model at or after since_ms, ascending, in a new
 * array *times (owned by the caller, free(); NULL when *n is 0). */
int queue_quota_sends(struct queue *q, const char *model, int64_t since_ms,
                      int64_t **times, size_t *n);

/*
 * A small named value shared by every run on this database (breaker
 * records, parked models): queue_state_put stores value (NULL deletes);
 * queue_state_get sets *value to a new string (free()) or NULL when
 * there is none.  Names are the caller's ("breaker:EP:MODEL").
 */
int queue_state_put(struct queue *q, const char *name, const char *value,
                    int64_t now_ms);
int queue_state_get(struct queue *q, const char *name, char **value);
/* Calls cb for every value whose name starts with prefix, by name. */
int queue_state_list(struct queue *q, const char *prefix,
                     int (*cb)(const char *name, const char *value,
                               void *arg), void *arg);

/*
 * A batch's budget in USD (0: none).  Its spend is the sum of the costs
 * of its recorded attempts, kept with the batch by queue_finish() (and
 * shown by queue_status()).
 */
int queue_set_budget(struct queue *q, const char *batch, double usd);
/* Budget and spend of the batch with id batch_id. */
int queue_batch_money(struct queue *q, int64_t batch_id, double *budget_usd,
                      double *spent_usd);

/* ---- Batch mode: chunks of jobs handed to the Batch API ----------------- */

/*
 * A remote chunk's jobs are running, leased to QUEUE_REMOTE_OWNER "<id>"
 * with a lease that never expires: queue_reclaim() leaves them alone, and
 * only the code that follows the chunk (with that owner) finishes them.
 */
#define QUEUE_REMOTE_OWNER "remote:"

/* The phases of a chunk, in the order it passes them. */
#define QUEUE_REMOTE_NEW        "new"        /* recorded, nothing sent */
#define QUEUE_REMOTE_UPLOADED   "uploaded"   /* input_file is set */
#define QUEUE_REMOTE_CREATING   "creating"   /* a create may have been
                                                sent: look it up by
                                                display name first */
#define QUEUE_REMOTE_SUBMITTED  "submitted"  /* remote_name is set */
#define QUEUE_REMOTE_COLLECTING "collecting" /* succeeded: results due */
/* Ended phases. */
#define QUEUE_REMOTE_DONE       "done"       /* results written */
#define QUEUE_REMOTE_RESUBMIT   "resubmitted"/* expired, failed or
                                                cancelled remotely: its
                                                jobs went back to queued */
#define QUEUE_REMOTE_CANCELLED  "cancelled"  /* by the user */
#define QUEUE_REMOTE_DISSOLVED  "dissolved"  /* never created: jobs went
                                                back to queued */

/* One chunk; strings borrowed for a callback's duration. */
struct queue_remote {
    int64_t id;
    int64_t batch_id;
    const char *batch;             /* the batch's name */
    const char *display_name;
    const char *model;
    const char *phase;
    const char *remote_name;       /* "batches/..." or NULL */
    const char *remote_state;      /* last seen, e.g. "BATCH_STATE_RUNNING" */
    const char *input_file;        /* "files/..." or NULL */
    int64_t uploaded_ms;
    const char *result_file;       /* "files/batch-..." or NULL */
    int64_t n_jobs;
    int64_t created_ms;
    int64_t submitted_ms;
    int64_t updated_ms;
    int64_t ended_ms;
    int64_t polls;
    const char *last_error;
    /* Its jobs now, by state (jobs whose last chunk it is). */
    int64_t counts[QUEUE_NSTATES];
};

/* "remote:<id>" into buf. */
void queue_remote_owner(int64_t remote_id, char *buf, size_t len);

/*
 * In one transaction: records a new chunk (phase "new") of the n jobs
 * job_ids, all of batch batch_id and model, running and leased by owner,
 * and hands them to the chunk (leased to its owner for ever, checkpoint
 * naming the chunk).  owner follows the chunk (queue_remote_follow())
 * for QUEUE_REMOTE_FIRST_FOLLOW_MS.  *remote_id gets its id.  NB_ELEASE
 * (nothing done) when one job is no longer owner's; NB_EEXIST for a
 * display name taken.
 */
#define QUEUE_REMOTE_FIRST_FOLLOW_MS (60 * 1000)
int queue_remote_create(struct queue *q, const char *owner, int64_t batch_id,
                        const char *model, const char *display_name,
                        const int64_t *job_ids, size_t n, int64_t now_ms,
                        int64_t *remote_id);

/* What a step learned; NULL strings and negative numbers change nothing. */
struct queue_remote_update {
    const char *phase;
    const char *remote_name;
    const char *remote_state;
    const char *input_file;
    int64_t uploaded_ms;           /* -1: unchanged */
    const char *result_file;
    int64_t submitted_ms;          /* -1: unchanged */
    int64_t ended_ms;              /* -1: unchanged */
    int add_poll;                  /* 1: count one poll */
    const char *last_error;        /* "" clears it */
};
/* Stores u on chunk id, stamped now_ms.  NB_ENOTFOUND for no such chunk,
 * NB_ESTATE (nothing changed) for a chunk that has ended. */
int queue_remote_update(struct queue *q, int64_t id,
                        const struct queue_remote_update *u, int64_t now_ms);

/*
 * Calls cb for each chunk, oldest first: only those of batch (NULL: any),
 * only those not in an ended phase when live is 1.  cb returning non-zero
 * stops.  NB_ENOTFOUND when batch names no batch.
 */
int queue_remote_list(struct queue *q, const char *batch, int live,
                      int (*cb)(const struct queue_remote *r, void *arg),
                      void *arg);

/* Calls cb for each job the chunk still holds (running, its owner), by id. */
int queue_remote_jobs(struct queue *q, int64_t id,
                      int (*cb)(const struct queue_job *job, void *arg),
                      void *arg);

/*
 * Ends chunk id in phase (an ended one), in one transaction: every job it
 * still holds goes back to queued with an attempt "released" carrying
 * message (nothing counted); *n (may be NULL) gets how many.
 */
int queue_remote_end(struct queue *q, int64_t id, const char *phase,
                     const char *message, int64_t now_ms, int64_t *n);

/*
 * Makes owner the one run that follows chunk id (polls it, writes its
 * results) until now_ms + lease_ms; called again to renew.  NB_ELEASE
 * when another run follows it, its lease not expired and owner_alive()
 * (may be NULL) saying that run lives, or when another call changed the
 * follower or its lease between this call's read and its write.
 */
int queue_remote_follow(struct queue *q, int64_t id, const char *owner,
                        int64_t now_ms, int64_t lease_ms,
                        int (*owner_alive)(const char *owner, void *arg),
                        void *arg);
/* Lets go of every chunk owner follows. */
int queue_remote_unfollow(struct queue *q, const char *owner);

#endif
