/*
 * queue.c - the persistent job queue on one SQLite file.
 *
 * The file holds three tables: batches, jobs and attempts, plus
 * batch_counts, one row per batch and state kept equal to the real counts,
 * so that `status` costs O(batches) and can never drift: triggers on jobs
 * follow every change of state and every delete, and the add functions,
 * the only place where jobs are inserted, add their count of new jobs per
 * batch in the add's own transaction (before it moves to another batch
 * and before it commits).  The schema version is PRAGMA user_version;
 * migrations[] is an ordered list of SQL steps, step i taking the file
 * from version i to i+1, each in its own transaction.  A file with a newer
 * version is refused.
 *
 * Invariants: a job leaves `running` only in a transaction that also writes
 * its attempt row (finish, reclaim, release, cancel), except mark_done from
 * another state, which writes a "recovered" row as well.  Every write that
 * reads first runs inside BEGIN IMMEDIATE, so concurrent processes on the
 * same file (WAL, busy timeout) serialise instead of failing with stale
 * snapshots, and a claim is one UPDATE ... RETURNING: two connections never
 * claim the same job.  `attempts` counts every attempt row except
 * "released" and "recovered"; the class counters count only "transient"
 * and "soft" RETRY and FAILED attempts.
 *
 * Speed: a bulk add is one transaction of prepared one-row INSERT OR FAIL
 * ... ON CONFLICT (key) DO NOTHING.  OR FAIL is safe (a one-row insert
 * cannot half-happen) and spares SQLite a statement journal per row; the
 * key is kept as 32 bytes, not 64 hex digits; jobs has only the indexes
 * that claiming, leases and the two unique columns need; no trigger fires
 * per added row, and the add turns this connection's foreign key checks
 * off because it checks the one reference it writes itself (see
 * set_foreign_keys()).  There is no index by batch: cancelling, retrying
 * or listing one batch scans jobs (about 0.1 s per million).  Claiming
 * walks the partial index of queued jobs in claim order, so it costs the
 * jobs it skips (not due, paused, filtered) plus the ones it takes.
 *
 * A struct queue is used by one thread at a time; threads that share a
 * file each open their own.  Callbacks must not call back into the same
 * struct queue.  Nothing here reads the clock: times come from the caller,
 * except created_ms of added jobs and batches, which the add functions
 * stamp with the wall clock unless queue_set_clock() fixed a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "queue/nberr.h"
#include "queue/queue.h"

#define BUSY_TIMEOUT_MS   10000
#ifndef ADD_CACHE_KIB
#define ADD_CACHE_KIB     65536     /* page cache during a bulk add */
#endif
#define CHECKPOINT_MAX    4096      /* bytes of a job's checkpoint JSON */
#define MAX_SKIP_MODELS   64
#ifndef DB_PAGE_SIZE
#define DB_PAGE_SIZE      "8192"    /* takes effect on a new file only */
#endif

/* ---- schema ------------------------------------------------------------- */

/*
 * Step i takes a file from user_version i to i + 1.  Append new steps at
 * the end (quota counters, breaker state, cost ledger, remote batches...);
 * never edit a step that has shipped.
 */
static const char *const migrations[] = {
    /* 1: batches, jobs, attempts and the per-state counters. */
    "CREATE TABLE batches ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  out_dir TEXT NOT NULL,"
    "  paused INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  next_seq INTEGER NOT NULL DEFAULT 1);"
    "CREATE TABLE jobs ("
    "  id INTEGER PRIMARY KEY,"
    "  batch_id INTEGER NOT NULL REFERENCES batches(id)"
    "    DEFERRABLE INITIALLY DEFERRED,"
    "  state INTEGER NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 5),"
    "  priority INTEGER NOT NULL DEFAULT 0,"
    "  next_attempt_ms INTEGER NOT NULL DEFAULT 0,"
    "  not_before_ms INTEGER NOT NULL DEFAULT 0,"
    "  offpeak INTEGER NOT NULL DEFAULT 0,"
    "  seq INTEGER NOT NULL,"
    "  count_index INTEGER NOT NULL DEFAULT 0,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  attempts_transient INTEGER NOT NULL DEFAULT 0,"
    "  attempts_soft INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL,"
    "  claimed_ms INTEGER NOT NULL DEFAULT 0,"
    "  lease_expires_ms INTEGER NOT NULL DEFAULT 0,"
    "  lease_owner TEXT,"
    "  key BLOB NOT NULL UNIQUE,"
    "  model TEXT NOT NULL,"
    "  via TEXT NOT NULL CHECK (via IN ('direct', 'batch')),"
    "  aspect TEXT,"
    "  size TEXT,"
    "  out_path TEXT NOT NULL UNIQUE,"
    "  prompt TEXT NOT NULL,"
    "  refs TEXT,"
    "  err_class TEXT,"
    "  err_http INTEGER NOT NULL DEFAULT 0,"
    "  err_status TEXT,"
    "  err_message TEXT,"
    "  checkpoint TEXT);"
    "CREATE INDEX jobs_claim ON jobs"
    "  (priority DESC, id, next_attempt_ms, not_before_ms, batch_id)"
    "  WHERE state = 0;"
    "CREATE INDEX jobs_lease ON jobs (lease_owner) WHERE state = 1;"
    "CREATE TABLE attempts ("
    "  id INTEGER PRIMARY KEY,"
    "  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    "  started_ms INTEGER NOT NULL,"
    "  latency_ms INTEGER NOT NULL DEFAULT 0,"
    "  outcome TEXT NOT NULL,"
    "  err_class TEXT,"
    "  http_status INTEGER NOT NULL DEFAULT 0,"
    "  api_status TEXT,"
    "  message TEXT,"
    "  output_path TEXT,"
    "  response_id TEXT,"
    "  model_version TEXT,"
    "  prompt_tokens INTEGER NOT NULL DEFAULT 0,"
    "  output_tokens INTEGER NOT NULL DEFAULT 0,"
    "  thought_tokens INTEGER NOT NULL DEFAULT 0,"
    "  cost_usd REAL NOT NULL DEFAULT 0);"
    "CREATE INDEX attempts_job ON attempts (job_id);"
    /* Row id batch_id * 8 + state: the triggers reach a counter by rowid. */
    "CREATE TABLE batch_counts ("
    "  id INTEGER PRIMARY KEY,"
    "  batch_id INTEGER NOT NULL,"
    "  state INTEGER NOT NULL,"
    "  n INTEGER DEFAULT 0);"
    "CREATE TRIGGER batches_counts AFTER INSERT ON batches BEGIN"
    "  INSERT INTO batch_counts (id, batch_id, state) VALUES"
    "    (NEW.id * 8, NEW.id, 0), (NEW.id * 8 + 1, NEW.id, 1),"
    "    (NEW.id * 8 + 2, NEW.id, 2), (NEW.id * 8 + 3, NEW.id, 3),"
    "    (NEW.id * 8 + 4, NEW.id, 4), (NEW.id * 8 + 5, NEW.id, 5);"
    "END;"
    "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN"
    "  UPDATE batch_counts SET n = n + 1"
    "    WHERE id = NEW.batch_id * 8 + NEW.state;"
    "END;"
    "CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, batch_id ON jobs"
    "  WHEN OLD.state <> NEW.state OR OLD.batch_id <> NEW.batch_id BEGIN"
    "  UPDATE batch_counts SET n = n - 1"
    "    WHERE id = OLD.batch_id * 8 + OLD.state;"
    "  UPDATE batch_counts SET n = n + 1"
    "    WHERE id = NEW.batch_id * 8 + NEW.state;"
    "END;"
    "CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN"
    "  UPDATE batch_counts SET n = n - 1"
    "    WHERE id = OLD.batch_id * 8 + OLD.state;"
    "END;",
    /*
     * 2: jobs are inserted only by queue_add_job(), which counts them per
     * batch and adds the sum to batch_counts in the same transaction (a
     * trigger firing per row was an eighth of a bulk add).  A file at
     * this version is refused by an nbbatch that would insert uncounted.
     */
    "DROP TRIGGER jobs_count_insert;",
    /*
     * 3: the scheduler's shared state.  Budget and spend per batch (the
     * spend kept by a trigger on costed attempts), the send times of
     * requests to models with quotas, and small named values (breaker
     * records, parked models) that every run on this file shares.
     */
    "ALTER TABLE batches ADD COLUMN budget_usd REAL NOT NULL DEFAULT 0;"
    "ALTER TABLE batches ADD COLUMN spent_usd REAL NOT NULL DEFAULT 0;"
    "UPDATE batches SET spent_usd = (SELECT ifnull(sum(a.cost_usd), 0)"
    "  FROM attempts a JOIN jobs j ON j.id = a.job_id"
    "  WHERE j.batch_id = batches.id);"
    "CREATE TRIGGER attempts_spend AFTER INSERT ON attempts"
    "  WHEN NEW.cost_usd <> 0 BEGIN"
    "  UPDATE batches SET spent_usd = spent_usd + NEW.cost_usd"
    "    WHERE id = (SELECT batch_id FROM jobs WHERE id = NEW.job_id);"
    "END;"
    "CREATE TABLE quota_sends ("
    "  model TEXT NOT NULL,"
    "  t_ms INTEGER NOT NULL);"
    "CREATE INDEX quota_sends_model ON quota_sends (model, t_ms);"
    "CREATE TABLE shared_state ("
    "  name TEXT PRIMARY KEY,"
    "  value TEXT NOT NULL,"
    "  updated_ms INTEGER NOT NULL) WITHOUT ROWID;",
    /*
     * 4: Batch mode.  A chunk of jobs handed to Google's Batch API, with
     * the phase it reached here and the remote names that are its
     * checkpoint.  Its jobs stay running, leased to "remote:<id>" with a
     * lease that never expires; jobs.remote_id remembers the last chunk.
     */
    "CREATE TABLE remote_batches ("
    "  id INTEGER PRIMARY KEY,"
    "  batch_id INTEGER NOT NULL REFERENCES batches(id),"
    "  display_name TEXT NOT NULL UNIQUE,"
    "  model TEXT NOT NULL,"
    "  phase TEXT NOT NULL,"
    "  remote_name TEXT,"
    "  remote_state TEXT,"
    "  input_file TEXT,"
    "  uploaded_ms INTEGER NOT NULL DEFAULT 0,"
    "  result_file TEXT,"
    "  n_jobs INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  submitted_ms INTEGER NOT NULL DEFAULT 0,"
    "  updated_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER NOT NULL DEFAULT 0,"
    "  polls INTEGER NOT NULL DEFAULT 0,"
    "  last_error TEXT,"
    "  follower TEXT,"
    "  follow_expires_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX remote_live ON remote_batches (phase);"
    "ALTER TABLE jobs ADD COLUMN remote_id INTEGER;"
    "CREATE INDEX jobs_remote ON jobs (remote_id)"
    "  WHERE remote_id IS NOT NULL;",
};

#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* ---- cached statements -------------------------------------------------- */

/* The columns of a job, in the order job_from_row() reads them. */
#define JOB_COLS \
    "id, batch_id, (SELECT name FROM batches WHERE batches.id = " \
    "jobs.batch_id), seq, key, prompt, model, aspect, size, out_path, via, " \
    "count_index, priority, not_before_ms, offpeak, state, attempts, " \
    "attempts_transient, attempts_soft, next_attempt_ms, created_ms, " \
    "updated_ms, err_class, err_http, err_status, err_message, lease_owner, " \
    "lease_expires_ms, checkpoint, refs"

/* Clears the lease; part of every move out of running. */
#define LEASE_CLEAR "lease_owner = NULL, lease_expires_ms = 0"

enum {
    S_BEGIN, S_COMMIT,
    S_BATCH_GET, S_BATCH_INSERT, S_BATCH_SEQ, S_BATCH_ADDED, S_BATCH_ID,
    S_BATCH_PAUSE,
    S_BATCH_EXISTS,
    S_JOB_INSERT, S_JOB_BY_OUT, S_JOB_GET, S_JOB_BY_KEY, S_JOB_STATE,
    S_RENEW, S_CHECKPOINT,
    S_FIN_DONE, S_FIN_ERR, S_FIN_RELEASE, S_ATTEMPT_INSERT,
    S_MARK_DONE,
    S_OWNERS, S_INTR_EXPIRED_ATT, S_INTR_EXPIRED,
    S_INTR_OWNER_ATT, S_INTR_OWNER,
    S_RELEASE_ATT, S_RELEASE,
    S_CANCEL_JOB_ATT, S_CANCEL_JOB, S_CANCEL_BATCH_ATT, S_CANCEL_BATCH,
    S_RETRY_JOB, S_RETRY_BATCH, S_RETRY_ALL,
    S_STATUS_ALL, S_STATUS_ONE, S_UNFINISHED_ALL, S_UNFINISHED_ONE,
    S_ATTEMPTS,
    S_UNCLAIM, S_QUOTA_NOTE, S_QUOTA_PRUNE, S_QUOTA_SENDS,
    S_STATE_PUT, S_STATE_DEL, S_STATE_GET, S_STATE_LIST,
    S_BUDGET_SET, S_MONEY,
    S_NSTMTS
};

static const char *const stmt_sql[S_NSTMTS] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_BATCH_GET] =
        "SELECT id, out_dir, next_seq FROM batches WHERE name = ?1",
    [S_BATCH_INSERT] =
        "INSERT INTO batches (name, out_dir, created_ms) VALUES (?1, ?2, ?3)",
    [S_BATCH_SEQ] =
        "UPDATE batches SET next_seq = ?2 WHERE id = ?1 AND next_seq < ?2",
    [S_BATCH_ADDED] =
        "UPDATE batch_counts SET n = n + ?2 WHERE id = ?1 * 8",
    [S_BATCH_ID] = "SELECT id FROM batches WHERE name = ?1",
    [S_BATCH_PAUSE] = "UPDATE batches SET paused = ?2 WHERE name = ?1",
    [S_BATCH_EXISTS] = "SELECT 1 FROM batches WHERE id = ?1",
    /* OR FAIL: no statement journal, since nothing can half-happen. */
    [S_JOB_INSERT] =
        "INSERT OR FAIL INTO jobs (batch_id, seq, key, prompt, model, aspect,"
        " size, out_path, via, count_index, priority, not_before_ms, offpeak,"
        " refs, created_ms, updated_ms)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,"
        " ?14, ?15, ?15)"
        " ON CONFLICT (key) DO NOTHING",
    [S_JOB_BY_OUT] = "SELECT id FROM jobs WHERE out_path = ?1",
    [S_JOB_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1",
    [S_JOB_BY_KEY] = "SELECT " JOB_COLS " FROM jobs WHERE key = ?1",
    [S_JOB_STATE] = "SELECT state FROM jobs WHERE id = ?1",
    [S_RENEW] =
        "UPDATE jobs SET lease_expires_ms = ?2"
        " WHERE state = 1 AND lease_owner = ?1",
    [S_CHECKPOINT] =
        "UPDATE jobs SET checkpoint = ?3"
        " WHERE id = ?1 AND state = 1 AND lease_owner = ?2",
    [S_FIN_DONE] =
        "UPDATE jobs SET state = 2, attempts = attempts + 1,"
        " err_class = NULL, err_http = 0, err_status = NULL,"
        " err_message = NULL, " LEASE_CLEAR ", updated_ms = ?3"
        " WHERE id = ?1 AND state = 1 AND lease_owner = ?2",
    [S_FIN_ERR] =
        "UPDATE jobs SET state = ?4, attempts = attempts + 1,"
        " attempts_transient = attempts_transient + ?5,"
        " attempts_soft = attempts_soft + ?6,"
        " next_attempt_ms = CASE WHEN ?4 = 0 THEN ?7"
        "   ELSE next_attempt_ms END,"
        " err_class = ?8, err_http = ?9, err_status = ?10, err_message = ?11,"
        " " LEASE_CLEAR ", updated_ms = ?3"
        " WHERE id = ?1 AND state = 1 AND lease_owner = ?2",
    [S_FIN_RELEASE] =
        "UPDATE jobs SET state = 0, " LEASE_CLEAR ", updated_ms = ?3"
        " WHERE id = ?1 AND state = 1 AND lease_owner = ?2",
    [S_ATTEMPT_INSERT] =
        "INSERT INTO attempts (job_id, started_ms, latency_ms, outcome,"
        " err_class, http_status, api_status, message, output_path,"
        " response_id, model_version, prompt_tokens, output_tokens,"
        " thought_tokens, cost_usd)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,"
        " ?14, ?15)",
    [S_MARK_DONE] =
        "UPDATE jobs SET state = 2, err_class = NULL, err_http = 0,"
        " err_status = NULL, err_message = NULL, " LEASE_CLEAR ","
        " updated_ms = ?2 WHERE id = ?1",
    [S_OWNERS] =
        "SELECT DISTINCT lease_owner FROM jobs"
        " WHERE state = 1 AND lease_owner IS NOT NULL",
    [S_INTR_EXPIRED_ATT] =
        "INSERT INTO attempts (job_id, started_ms, latency_ms, outcome,"
        " err_class, message)"
        " SELECT id, claimed_ms, max(?1 - claimed_ms, 0), 'interrupted',"
        " 'interrupted', 'lease of ' || ifnull(lease_owner, '?') ||"
        " ' expired'"
        " FROM jobs WHERE state = 1 AND lease_expires_ms < ?1",
    [S_INTR_EXPIRED] =
        "UPDATE jobs SET state = 0, attempts = attempts + 1,"
        " err_class = 'interrupted', err_http = 0, err_status = NULL,"
        " err_message = 'lease expired', " LEASE_CLEAR ", updated_ms = ?1"
        " WHERE state = 1 AND lease_expires_ms < ?1",
    [S_INTR_OWNER_ATT] =
        "INSERT INTO attempts (job_id, started_ms, latency_ms, outcome,"
        " err_class, message)"
        " SELECT id, claimed_ms, max(?1 - claimed_ms, 0), 'interrupted',"
        " 'interrupted', 'owner ' || lease_owner || ' is gone'"
        " FROM jobs WHERE state = 1 AND lease_owner = ?2",
    [S_INTR_OWNER] =
        "UPDATE jobs SET state = 0, attempts = attempts + 1,"
        " err_class = 'interrupted', err_http = 0, err_status = NULL,"
        " err_message = 'lease owner is gone', " LEASE_CLEAR ","
        " updated_ms = ?1 WHERE state = 1 AND lease_owner = ?2",
    [S_RELEASE_ATT] =
        "INSERT INTO attempts (job_id, started_ms, latency_ms, outcome,"
        " message)"
        " SELECT id, claimed_ms, max(?1 - claimed_ms, 0), 'released',"
        " 'released by its owner'"
        " FROM jobs WHERE state = 1 AND lease_owner = ?2",
    [S_RELEASE] =
        "UPDATE jobs SET state = 0, " LEASE_CLEAR ", updated_ms = ?1"
        " WHERE state = 1 AND lease_owner = ?2",
    [S_CANCEL_JOB_ATT] =
        "INSERT INTO attempts (job_id, started_ms, latency_ms, outcome,"
        " message)"
        " SELECT id, claimed_ms, max(?1 - claimed_ms, 0), 'cancelled',"
        " 'cancelled while running' FROM jobs WHERE id = ?2 AND state = 1",
    [S_CANCEL_JOB] =
        "UPDATE jobs SET state = 5, attempts = attempts + (state = 1),"
        " " LEASE_CLEAR ", updated_ms = ?1"
        " WHERE id = ?2 AND state IN (0, 1, 3, 4)",
    [S_CANCEL_BATCH_ATT] =
        "INSERT INTO attempts (job_id, started_ms, latency_ms, outcome,"
        " message)"
        " SELECT id, claimed_ms, max(?1 - claimed_ms, 0), 'cancelled',"
        " 'cancelled while running' FROM jobs"
        " WHERE batch_id = ?2 AND state = 1",
    [S_CANCEL_BATCH] =
        "UPDATE jobs SET state = 5, attempts = attempts + (state = 1),"
        " " LEASE_CLEAR ", updated_ms = ?1"
        " WHERE batch_id = ?2 AND state IN (0, 1, 3, 4)",
    [S_RETRY_JOB] =
        "UPDATE jobs SET state = 0, attempts_transient = 0,"
        " attempts_soft = 0, next_attempt_ms = ?1, updated_ms = ?1"
        " WHERE id = ?2 AND state IN (3, 4, 5)",
    [S_RETRY_BATCH] =
        "UPDATE jobs SET state = 0, attempts_transient = 0,"
        " attempts_soft = 0, next_attempt_ms = ?1, updated_ms = ?1"
        " WHERE batch_id = ?2 AND state IN (3, 4)",
    [S_RETRY_ALL] =
        "UPDATE jobs SET state = 0, attempts_transient = 0,"
        " attempts_soft = 0, next_attempt_ms = ?1, updated_ms = ?1"
        " WHERE state IN (3, 4)",
    [S_STATUS_ALL] =
        "SELECT b.id, b.name, b.out_dir, b.paused, b.created_ms, c.state,"
        " c.n, b.budget_usd, b.spent_usd FROM batches b"
        " LEFT JOIN batch_counts c"
        " ON c.id BETWEEN b.id * 8 AND b.id * 8 + 7 ORDER BY b.id, c.state",
    [S_STATUS_ONE] =
        "SELECT b.id, b.name, b.out_dir, b.paused, b.created_ms, c.state,"
        " c.n, b.budget_usd, b.spent_usd FROM batches b"
        " LEFT JOIN batch_counts c"
        " ON c.id BETWEEN b.id * 8 AND b.id * 8 + 7"
        " WHERE b.name = ?1 ORDER BY b.id, c.state",
    [S_UNFINISHED_ALL] =
        "SELECT ifnull(sum(n), 0) FROM batch_counts WHERE state IN (0, 1)",
    [S_UNFINISHED_ONE] =
        "SELECT ifnull(sum(n), 0) FROM batch_counts"
        " WHERE id IN (?1 * 8, ?1 * 8 + 1)",
    [S_ATTEMPTS] =
        "SELECT id, job_id, started_ms, latency_ms, outcome, err_class,"
        " http_status, api_status, message, output_path, response_id,"
        " model_version, prompt_tokens, output_tokens, thought_tokens,"
        " cost_usd FROM attempts WHERE job_id = ?1 ORDER BY id",
    [S_UNCLAIM] =
        "UPDATE jobs SET state = 0, " LEASE_CLEAR ", updated_ms = ?3"
        " WHERE id = ?1 AND state = 1 AND lease_owner = ?2",
    [S_QUOTA_NOTE] = "INSERT INTO quota_sends (model, t_ms) VALUES (?1, ?2)",
    [S_QUOTA_PRUNE] = "DELETE FROM quota_sends WHERE t_ms < ?1",
    [S_QUOTA_SENDS] =
        "SELECT t_ms FROM quota_sends WHERE model = ?1 AND t_ms >= ?2"
        " ORDER BY t_ms",
    [S_STATE_PUT] =
        "INSERT INTO shared_state (name, value, updated_ms)"
        " VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE"
        " SET value = excluded.value, updated_ms = excluded.updated_ms",
    [S_STATE_DEL] = "DELETE FROM shared_state WHERE name = ?1",
    [S_STATE_GET] = "SELECT value FROM shared_state WHERE name = ?1",
    [S_STATE_LIST] =
        "SELECT name, value FROM shared_state"
        " WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
    [S_BUDGET_SET] = "UPDATE batches SET budget_usd = ?2 WHERE name = ?1",
    [S_MONEY] = "SELECT budget_usd, spent_usd FROM batches WHERE id = ?1",
};

struct queue {
    sqlite3 *db;
    sqlite3_stmt *stmts[S_NSTMTS];
    char errmsg[512];
    int64_t clock_ms;          /* 0: wall clock for created_ms */

    /* the open add transaction */
    int in_add;
    int64_t add_now_ms;
    char *add_out_dir;
    int64_t seq_batch_id;      /* batch whose next_seq and count are
                                  pending */
    int64_t seq_max;           /* highest seq added to it, 0: none */
    int64_t seq_added;         /* jobs added to it, not yet counted */

    /* the claim statement of the last filter shape */
    char *claim_sql;
    sqlite3_stmt *claim_stmt;
};

static const char *const state_names[QUEUE_NSTATES] = {
    "queued", "running", "done", "failed", "blocked", "cancelled"
};

const char *
queue_state_name(int state)
{
    if (state < 0 || state >= QUEUE_NSTATES)
        return "?";
    return state_names[state];
}

int
queue_state_parse(const char *name)
{
    for (int i = 0; name != NULL && i < QUEUE_NSTATES; i++) {
        if (strcmp(name, state_names[i]) == 0)
            return i;
    }
    return -1;
}

/* ---- errors and statements ---------------------------------------------- */

static int
set_err(struct queue *q, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
set_err(struct queue *q, int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(q->errmsg, sizeof(q->errmsg), fmt, ap);
    va_end(ap);
    return code;
}

/* Records SQLite's message for what and returns the matching NB_E code. */
static int
db_fail(struct queue *q, const char *what)
{
    int rc = sqlite3_errcode(q->db);

    set_err(q, 0, "%s: %s", what, sqlite3_errmsg(q->db));
    return rc == SQLITE_NOMEM ? NB_ENOMEM : NB_EDB;
}

/* The cached statement id, reset and ready to bind; NULL on failure. */
static sqlite3_stmt *
stmt(struct queue *q, int id)
{
    sqlite3_stmt *st = q->stmts[id];

    if (st != NULL) {
        sqlite3_reset(st);
        return st;
    }
    if (sqlite3_prepare_v3(q->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                           &q->stmts[id], NULL) != SQLITE_OK) {
        db_fail(q, "preparing a statement");
        return NULL;
    }
    return q->stmts[id];
}

/* Steps st, which must finish without rows, and resets it. */
static int
run(struct queue *q, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE) {
        rc = db_fail(q, what);
        sqlite3_reset(st);
        return rc;
    }
    sqlite3_reset(st);
    return 0;
}

/* Runs the cached statement id binding only ?1 = a and ?2 = b (text). */
static int
run_ib(struct queue *q, int id, int64_t a, const char *b, const char *what)
{
    sqlite3_stmt *st = stmt(q, id);

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_text(st, 2, b, -1, SQLITE_STATIC);
    return run(q, st, what);
}

static int
run_i(struct queue *q, int id, int64_t a, const char *what)
{
    sqlite3_stmt *st = stmt(q, id);

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, a);
    return run(q, st, what);
}

static int
run_ii(struct queue *q, int id, int64_t a, int64_t b, const char *what)
{
    sqlite3_stmt *st = stmt(q, id);

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, a);
    sqlite3_bind_int64(st, 2, b);
    return run(q, st, what);
}

static int
tx_begin(struct queue *q)
{
    sqlite3_stmt *st = stmt(q, S_BEGIN);

    return st == NULL ? NB_EDB : run(q, st, "starting a transaction");
}

static int
tx_commit(struct queue *q)
{
    sqlite3_stmt *st = stmt(q, S_COMMIT);

    return st == NULL ? NB_EDB : run(q, st, "committing");
}

/* Rolls back whatever is open; keeps the first error's message. */
static void
tx_rollback(struct queue *q)
{
    if (sqlite3_get_autocommit(q->db))
        return;
    sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
}

/* Commits, or rolls back when rc is an error; returns rc or the commit's. */
static int
tx_end(struct queue *q, int rc)
{
    if (rc == 0)
        rc = tx_commit(q);
    if (rc != 0)
        tx_rollback(q);
    return rc;
}

/* Looks up a batch's id by name: NB_ENOTFOUND when there is none. */
static int
batch_id(struct queue *q, const char *name, int64_t *id)
{
    sqlite3_stmt *st = stmt(q, S_BATCH_ID);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        return 0;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return db_fail(q, "looking up a batch");
    return set_err(q, NB_ENOTFOUND, "no batch named '%s'", name);
}

/* A job's state, or NB_ENOTFOUND. */
static int
job_state(struct queue *q, int64_t job_id, int *state)
{
    sqlite3_stmt *st = stmt(q, S_JOB_STATE);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, job_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *state = sqlite3_column_int(st, 0);
        sqlite3_reset(st);
        return 0;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return db_fail(q, "looking up a job");
    return set_err(q, NB_ENOTFOUND, "no job %lld", (long long)job_id);
}

/* ---- opening ------------------------------------------------------------ */

static int
user_version(struct queue *q, int *version)
{
    sqlite3_stmt *st = NULL;
    int rc;

    if (sqlite3_prepare_v2(q->db, "PRAGMA user_version", -1, &st, NULL)
        != SQLITE_OK)
        return db_fail(q, "reading the schema version");
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        rc = db_fail(q, "reading the schema version");
        sqlite3_finalize(st);
        return rc;
    }
    *version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return 0;
}

static int
check_version(struct queue *q, int version)
{
    if (version <= SCHEMA_VERSION)
        return 0;
    return set_err(q, NB_ESCHEMA, "schema version %d is newer than this "
                   "nbbatch's %d: upgrade nbbatch", version, SCHEMA_VERSION);
}

/*
 * Applies the missing migration steps, each in its own transaction.  A file
 * already at this version (read without a lock) is left alone, so opening
 * never waits for a writer.
 */
static int
migrate(struct queue *q, int version)
{
    char sql[64];
    int rc;

    while (version < SCHEMA_VERSION) {
        if ((rc = tx_begin(q)) != 0)
            return rc;
        /* Read inside the write lock: another process may have migrated. */
        if ((rc = user_version(q, &version)) != 0 ||
            (rc = check_version(q, version)) != 0)
            return tx_end(q, rc);
        if (version == SCHEMA_VERSION)
            return tx_end(q, 0);
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version + 1);
        if (sqlite3_exec(q->db, migrations[version], NULL, NULL, NULL)
            != SQLITE_OK || sqlite3_exec(q->db, sql, NULL, NULL, NULL)
            != SQLITE_OK)
            rc = db_fail(q, "migrating the schema");
        if ((rc = tx_end(q, rc)) != 0)
            return rc;
    }
    return 0;
}

/* Creates path with mode 0600 unless it exists, before SQLite opens it. */
static int
create_file(const char *path, char *errbuf, size_t errlen)
{
    int fd;

    if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0)
        return 0;
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errbuf != NULL)
            snprintf(errbuf, errlen, "cannot open %s: %s", path,
                     strerror(errno));
        return NB_EIO;
    }
    close(fd);
    return 0;
}

/* Connection settings; journal_mode answers "memory" for :memory:. */
static int
configure(struct queue *q)
{
    static const char settings[] =
        "PRAGMA page_size = " DB_PAGE_SIZE ";"
        "PRAGMA secure_delete = OFF;"
        "PRAGMA journal_mode = WAL;"
        "PRAGMA synchronous = NORMAL;"
        "PRAGMA foreign_keys = ON;"
        "PRAGMA temp_store = MEMORY;";

    sqlite3_extended_result_codes(q->db, 1);
    if (sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS) != SQLITE_OK ||
        sqlite3_exec(q->db, settings, NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(q, "configuring the database");
    return 0;
}

/*
 * nbbatch uses SQLite only through this module, so it may set the
 * library's global options: memory statistics cost a mutex per malloc.
 * Fails harmlessly if SQLite is already initialised.
 */
static void
global_config(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

int
queue_open(const char *path, struct queue **out, char *errbuf,
           size_t errlen)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    struct queue *q = NULL;
    int version = 0, rc;

    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    if (path == NULL || out == NULL)
        return NB_EINVAL;
    pthread_once(&once, global_config);
    if ((rc = create_file(path, errbuf, errlen)) != 0)
        return rc;
    if ((q = calloc(1, sizeof(*q))) == NULL)
        return NB_ENOMEM;
    if (sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE |
                        SQLITE_OPEN_CREATE | SQLITE_OPEN_URI |
                        SQLITE_OPEN_NOMUTEX, NULL)
        != SQLITE_OK) {
        rc = q->db ? db_fail(q, "opening") : NB_ENOMEM;
        goto fail;
    }
    /* Refuse a newer file before changing anything in it. */
    sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
    if ((rc = user_version(q, &version)) != 0 ||
        (rc = check_version(q, version)) != 0 ||
        (rc = configure(q)) != 0 || (rc = migrate(q, version)) != 0)
        goto fail;
    *out = q;
    return 0;

fail:
    if (errbuf != NULL && errlen > 0)
        snprintf(errbuf, errlen, "%s", q->errmsg);
    queue_close(q);
    return rc;
}

void
queue_close(struct queue *q)
{
    if (q == NULL)
        return;
    if (q->in_add)
        queue_add_rollback(q);
    for (int i = 0; i < S_NSTMTS; i++)
        sqlite3_finalize(q->stmts[i]);
    sqlite3_finalize(q->claim_stmt);
    free(q->claim_sql);
    free(q->add_out_dir);
    sqlite3_close(q->db);
    free(q);
}

const char *
queue_errmsg(const struct queue *q)
{
    return q == NULL ? "" : q->errmsg;
}

void
queue_set_clock(struct queue *q, int64_t now_ms)
{
    q->clock_ms = now_ms;
}

static int64_t
add_clock(const struct queue *q)
{
    struct timespec ts;

    if (q->clock_ms > 0)
        return q->clock_ms;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- adding ------------------------------------------------------------- */

static void
set_cache(struct queue *q, int kib)
{
    char sql[64];

    snprintf(sql, sizeof(sql), "PRAGMA cache_size = -%d", kib);
    sqlite3_exec(q->db, sql, NULL, NULL, NULL);
}

/*
 * Turns the foreign key checks of this connection off for an add and back
 * on after it (SQLite ignores the pragma inside a transaction, so this
 * runs outside one).  During an add the only rows written are jobs, whose
 * batch check_batch() finds inside the same write transaction, and the
 * batch itself: the per-row lookup SQLite would repeat proves nothing
 * more.
 */
static void
set_foreign_keys(struct queue *q, int on)
{
    sqlite3_exec(q->db, on ? "PRAGMA foreign_keys = ON"
                 : "PRAGMA foreign_keys = OFF", NULL, NULL, NULL);
}

/*
 * Writes the pending next_seq of the batch being added to and adds its new
 * jobs to its queued counter (there is no insert trigger: see migration
 * 2).  Runs before the add moves to another batch and before the commit,
 * in the add's transaction, so the counters are exact whenever another
 * connection can see the jobs.
 */
static int
flush_pending(struct queue *q)
{
    int rc = 0;

    if (q->seq_batch_id == 0 || q->seq_added == 0)
        return 0;
    if (q->seq_max > 0)
        rc = run_ii(q, S_BATCH_SEQ, q->seq_batch_id, q->seq_max + 1,
                    "numbering a batch");
    if (rc == 0)
        rc = run_ii(q, S_BATCH_ADDED, q->seq_batch_id, q->seq_added,
                    "counting a batch's jobs");
    q->seq_max = 0;
    q->seq_added = 0;
    return rc;
}

/* Finds or creates the batch inside the open transaction. */
static int
add_batch(struct queue *q, const char *name, const char *out_dir,
          int64_t *id, int64_t *next_seq)
{
    sqlite3_stmt *st;
    int rc;

    for (int pass = 0; pass < 2; pass++) {
        if ((st = stmt(q, S_BATCH_GET)) == NULL)
            return NB_EDB;
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *id = sqlite3_column_int64(st, 0);
            *next_seq = sqlite3_column_int64(st, 2);
            free(q->add_out_dir);
            q->add_out_dir = strdup((const char *)
                                    sqlite3_column_text(st, 1));
            sqlite3_reset(st);
            return q->add_out_dir ? 0 : NB_ENOMEM;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return db_fail(q, "looking up a batch");
        if (pass > 0 || out_dir == NULL || out_dir[0] == '\0')
            break;
        if ((st = stmt(q, S_BATCH_INSERT)) == NULL)
            return NB_EDB;
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, out_dir, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, q->add_now_ms);
        if ((rc = run(q, st, "creating a batch")) != 0)
            return rc;
    }
    return set_err(q, NB_EINVAL, "batch '%s' is new and needs an output "
                   "folder", name);
}

int
queue_add_begin(struct queue *q, const char *batch, const char *out_dir,
                int64_t *batch_id_out, int64_t *next_seq)
{
    int64_t id = 0, seq = 0;
    int began = 0, rc;

    if (batch == NULL || batch[0] == '\0')
        return set_err(q, NB_EINVAL, "empty batch name");
    if (q->in_add) {
        /* Joining the open add: its numbering must be visible first. */
        if ((rc = flush_pending(q)) != 0)
            return rc;
    } else {
        set_foreign_keys(q, 0);
        if ((rc = tx_begin(q)) != 0) {
            set_foreign_keys(q, 1);
            return rc;
        }
        began = 1;
        q->add_now_ms = add_clock(q);
        q->seq_batch_id = 0;
        q->seq_max = 0;
        q->seq_added = 0;
        set_cache(q, ADD_CACHE_KIB);
    }
    if ((rc = add_batch(q, batch, out_dir, &id, &seq)) != 0) {
        if (began) {
            tx_rollback(q);
            set_cache(q, 2000);
            set_foreign_keys(q, 1);
        }
        return rc;
    }
    q->in_add = 1;
    *batch_id_out = id;
    *next_seq = seq;
    return 0;
}

const char *
queue_add_out_dir(struct queue *q)
{
    return q->add_out_dir ? q->add_out_dir : "";
}

/* Decodes 64 lowercase hex digits (then a NUL) into out; 0 if s is not. */
static int
unhex32(const char *s, unsigned char out[32])
{
    static const signed char val[256] = {
        ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6,
        ['6'] = 7, ['7'] = 8, ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12,
        ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
    };
    const unsigned char *u = (const unsigned char *)s;
    int hi, lo;

    if (s == NULL)
        return 0;
    for (int i = 0; i < 32; i++) {
        if ((hi = val[u[2 * i]]) == 0 || (lo = val[u[2 * i + 1]]) == 0)
            return 0;
        out[i] = (unsigned char)((hi - 1) << 4 | (lo - 1));
    }
    return u[64] == '\0';
}

static int
check_new_job(struct queue *q, const struct queue_new_job *job,
              unsigned char key[32])
{
    unsigned char sha[32];

    if (!unhex32(job->key, key))
        return set_err(q, NB_EINVAL, "job key is not 64 lowercase hex "
                       "digits");
    if (job->prompt == NULL || job->model == NULL || job->out_path == NULL)
        return set_err(q, NB_EINVAL, "job lacks a prompt, model or output "
                       "path");
    if (job->via == NULL || (strcmp(job->via, "direct") != 0 &&
                             strcmp(job->via, "batch") != 0))
        return set_err(q, NB_EINVAL, "via must be \"direct\" or \"batch\"");
    if (job->n_refs > 0 && job->refs == NULL)
        return set_err(q, NB_EINVAL, "refs missing");
    for (size_t i = 0; i < job->n_refs; i++) {
        if (job->refs[i].path == NULL || job->refs[i].path[0] != '/' ||
            !unhex32(job->refs[i].sha256_hex, sha))
            return set_err(q, NB_EINVAL, "reference image %zu needs an "
                           "absolute path and a SHA-256", i + 1);
    }
    return 0;
}

/* The refs as a JSON text (NULL when none); *text is owned. */
static int
refs_json(struct queue *q, const struct queue_new_job *job, char **text)
{
    json_t *arr = NULL, *obj;

    *text = NULL;
    if (job->n_refs == 0)
        return 0;
    if ((arr = json_array()) == NULL)
        goto nomem;
    for (size_t i = 0; i < job->n_refs; i++) {
        obj = json_pack("{s:s, s:s}", "path", job->refs[i].path,
                        "sha256", job->refs[i].sha256_hex);
        if (obj == NULL || json_array_append_new(arr, obj) != 0)
            goto nomem;
    }
    if ((*text = json_dumps(arr, JSON_COMPACT)) == NULL)
        goto nomem;
    json_decref(arr);
    return 0;

nomem:
    json_decref(arr);
    return set_err(q, NB_EINVAL, "reference image paths must be UTF-8");
}

/* NB_EINVAL unless batch names a batch (the foreign key is deferred). */
static int
check_batch(struct queue *q, int64_t batch)
{
    sqlite3_stmt *st = stmt(q, S_BATCH_EXISTS);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, batch);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc != SQLITE_DONE)
        return db_fail(q, "looking up a batch");
    return set_err(q, NB_EINVAL, "no batch %lld", (long long)batch);
}

/* NB_EEXIST naming the job that owns out_path, when one does. */
static int
out_path_conflict(struct queue *q, const char *out_path, int64_t *id)
{
    sqlite3_stmt *st = stmt(q, S_JOB_BY_OUT);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, out_path, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        return set_err(q, NB_EDB, "adding a job: constraint failed");
    }
    *id = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return set_err(q, NB_EEXIST, "%s is already the output of job %lld",
                   out_path, (long long)*id);
}

static void
bind_new_job(sqlite3_stmt *st, int64_t batch, int64_t seq,
             const struct queue_new_job *job, const unsigned char key[32],
             const char *refs, int64_t now)
{
    sqlite3_bind_int64(st, 1, batch);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_blob(st, 3, key, 32, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, job->prompt, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, job->model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, job->aspect, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, job->size, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, job->out_path, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, job->via, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 10, job->count_index);
    sqlite3_bind_int(st, 11, job->priority);
    sqlite3_bind_int64(st, 12, job->not_before_ms);
    sqlite3_bind_int(st, 13, job->offpeak != 0);
    sqlite3_bind_text(st, 14, refs, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 15, now);
}

int
queue_add_job(struct queue *q, int64_t batch, int64_t seq,
              const struct queue_new_job *job, int *added,
              int64_t *conflict_id)
{
    unsigned char key[32];
    sqlite3_stmt *st;
    char *refs = NULL;
    int rc;

    if (!q->in_add)
        return set_err(q, NB_ESTATE, "no add transaction is open");
    if ((rc = check_new_job(q, job, key)) != 0 ||
        (rc = refs_json(q, job, &refs)) != 0)
        return rc;
    if (batch != q->seq_batch_id) {
        if ((rc = flush_pending(q)) != 0 ||
            (rc = check_batch(q, batch)) != 0)
            goto done;
        q->seq_batch_id = batch;
    }
    if ((st = stmt(q, S_JOB_INSERT)) == NULL) {
        rc = NB_EDB;
        goto done;
    }
    bind_new_job(st, batch, seq, job, key, refs, q->add_now_ms);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE) {
        *added = sqlite3_changes(q->db) > 0;
        if (*added) {
            q->seq_added++;
            if (seq > q->seq_max)
                q->seq_max = seq;
        }
        rc = 0;
    } else if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        rc = out_path_conflict(q, job->out_path, conflict_id);
    } else {
        rc = db_fail(q, "adding a job");
    }

done:
    free(refs);
    return rc;
}

static void
add_end(struct queue *q)
{
    q->in_add = 0;
    q->seq_batch_id = 0;
    q->seq_max = 0;
    q->seq_added = 0;
    set_cache(q, 2000);
    set_foreign_keys(q, 1);
}

int
queue_add_commit(struct queue *q)
{
    int rc;

    if (!q->in_add)
        return set_err(q, NB_ESTATE, "no add transaction is open");
    if ((rc = flush_pending(q)) != 0 || (rc = tx_commit(q)) != 0)
        return rc;
    add_end(q);
    return 0;
}

void
queue_add_rollback(struct queue *q)
{
    if (q == NULL)
        return;
    tx_rollback(q);
    if (q->in_add)
        add_end(q);
}

/* ---- jobs as records ---------------------------------------------------- */

void
queue_job_free(struct queue_job *job)
{
    if (job == NULL)
        return;
    free(job->batch);
    free(job->key);
    free(job->prompt);
    free(job->model);
    free(job->aspect);
    free(job->size);
    free(job->out_path);
    free(job->via);
    free(job->err_class);
    free(job->err_status);
    free(job->err_message);
    free(job->lease_owner);
    free(job->checkpoint);
    for (size_t i = 0; i < job->n_refs; i++) {
        free((char *)job->refs[i].path);
        free((char *)job->refs[i].sha256_hex);
    }
    free(job->refs);
    free(job);
}

void
queue_jobs_free(struct queue_job **jobs, size_t n)
{
    if (jobs == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        queue_job_free(jobs[i]);
    free(jobs);
}

/* A copy of text column i; NULL for SQL NULL.  Sets *bad on ENOMEM. */
static char *
col_dup(sqlite3_stmt *st, int i, int *bad)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    char *copy;

    if (s == NULL)
        return NULL;
    if ((copy = strdup((const char *)s)) == NULL)
        *bad = 1;
    return copy;
}

/* The 32-byte key in column i as 64 lowercase hex digits, owned. */
static char *
key_hex(sqlite3_stmt *st, int i, int *bad)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *b = sqlite3_column_blob(st, i);
    int len = sqlite3_column_bytes(st, i);
    char *hex = malloc(2 * (size_t)len + 1);

    if (hex == NULL) {
        *bad = 1;
        return NULL;
    }
    for (int k = 0; k < len; k++) {
        hex[2 * k] = digits[b[k] >> 4];
        hex[2 * k + 1] = digits[b[k] & 15];
    }
    hex[2 * len] = '\0';
    return hex;
}

/* Parses the stored refs JSON into job->refs. */
static int
parse_refs(const char *text, struct queue_job *job)
{
    json_t *arr, *obj;
    const char *path, *sha;
    int rc = NB_EPARSE;

    if (text == NULL)
        return 0;
    if ((arr = json_loads(text, 0, NULL)) == NULL || !json_is_array(arr))
        goto done;
    job->refs = calloc(json_array_size(arr) + 1, sizeof(*job->refs));
    if (job->refs == NULL) {
        rc = NB_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        obj = json_array_get(arr, i);
        path = json_string_value(json_object_get(obj, "path"));
        sha = json_string_value(json_object_get(obj, "sha256"));
        if (path == NULL || sha == NULL)
            goto done;
        job->refs[i].path = strdup(path);
        job->refs[i].sha256_hex = strdup(sha);
        job->n_refs = i + 1;
        if (job->refs[i].path == NULL || job->refs[i].sha256_hex == NULL) {
            rc = NB_ENOMEM;
            goto done;
        }
    }
    rc = 0;

done:
    json_decref(arr);
    return rc;
}

/* Builds an owned job from a row of JOB_COLS. */
static int
job_from_row(struct queue *q, sqlite3_stmt *st, struct queue_job **out)
{
    struct queue_job *job = calloc(1, sizeof(*job));
    int bad = 0, rc;

    if (job == NULL)
        return set_err(q, NB_ENOMEM, "out of memory");
    job->id = sqlite3_column_int64(st, 0);
    job->batch_id = sqlite3_column_int64(st, 1);
    job->batch = col_dup(st, 2, &bad);
    job->seq = sqlite3_column_int64(st, 3);
    job->key = key_hex(st, 4, &bad);
    job->prompt = col_dup(st, 5, &bad);
    job->model = col_dup(st, 6, &bad);
    job->aspect = col_dup(st, 7, &bad);
    job->size = col_dup(st, 8, &bad);
    job->out_path = col_dup(st, 9, &bad);
    job->via = col_dup(st, 10, &bad);
    job->count_index = sqlite3_column_int(st, 11);
    job->priority = sqlite3_column_int(st, 12);
    job->not_before_ms = sqlite3_column_int64(st, 13);
    job->offpeak = sqlite3_column_int(st, 14);
    job->state = sqlite3_column_int(st, 15);
    job->attempts = sqlite3_column_int(st, 16);
    job->attempts_transient = sqlite3_column_int(st, 17);
    job->attempts_soft = sqlite3_column_int(st, 18);
    job->next_attempt_ms = sqlite3_column_int64(st, 19);
    job->created_ms = sqlite3_column_int64(st, 20);
    job->updated_ms = sqlite3_column_int64(st, 21);
    job->err_class = col_dup(st, 22, &bad);
    job->err_http = sqlite3_column_int(st, 23);
    job->err_status = col_dup(st, 24, &bad);
    job->err_message = col_dup(st, 25, &bad);
    job->lease_owner = col_dup(st, 26, &bad);
    job->lease_expires_ms = sqlite3_column_int64(st, 27);
    job->checkpoint = col_dup(st, 28, &bad);
    rc = parse_refs((const char *)sqlite3_column_text(st, 29), job);
    if (bad || rc != 0) {
        queue_job_free(job);
        if (bad || rc == NB_ENOMEM)
            return set_err(q, NB_ENOMEM, "out of memory");
        return set_err(q, NB_EDB, "job %lld: stored refs are corrupt",
                       (long long)sqlite3_column_int64(st, 0));
    }
    *out = job;
    return 0;
}

/* The one job st (bound) selects; NB_ENOTFOUND naming what when none. */
static int
get_one(struct queue *q, sqlite3_stmt *st, const char *what,
        struct queue_job **job)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_ROW)
        rc = job_from_row(q, st, job);
    else if (rc == SQLITE_DONE)
        rc = set_err(q, NB_ENOTFOUND, "no job %s", what);
    else
        rc = db_fail(q, "reading a job");
    sqlite3_reset(st);
    return rc;
}

int
queue_get(struct queue *q, int64_t job_id, struct queue_job **job)
{
    sqlite3_stmt *st = stmt(q, S_JOB_GET);
    char what[32];

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, job_id);
    snprintf(what, sizeof(what), "%lld", (long long)job_id);
    return get_one(q, st, what, job);
}

int
queue_get_by_key(struct queue *q, const char *key, struct queue_job **job)
{
    sqlite3_stmt *st;
    unsigned char bin[32];

    if (!unhex32(key, bin))
        return set_err(q, NB_EINVAL, "job key is not 64 lowercase hex "
                       "digits");
    if ((st = stmt(q, S_JOB_BY_KEY)) == NULL)
        return NB_EDB;
    sqlite3_bind_blob(st, 1, bin, sizeof(bin), SQLITE_TRANSIENT);
    return get_one(q, st, "with that key", job);
}

/* ---- claiming ----------------------------------------------------------- */

/*
 * The filter as SQL over jobs, with parameters from ?first on in the order
 * bind_filter() binds them.  Paused batches are always left out.
 */
static int
filter_sql(const struct queue_filter *f, int first, char *buf, size_t len)
{
    size_t pos = 0;
    int p = first, n;

#define ADD(...)                                                        \
    do {                                                                \
        n = snprintf(buf + pos, len - pos, __VA_ARGS__);                \
        if (n < 0 || (size_t)n >= len - pos)                            \
            return NB_ELIMIT;                                           \
        pos += (size_t)n;                                               \
    } while (0)

    ADD(" AND batch_id NOT IN (SELECT id FROM batches WHERE paused <> 0)");
    if (f == NULL)
        return 0;
    if (f->batch != NULL)
        ADD(" AND batch_id = (SELECT id FROM batches WHERE name = ?%d)",
            p++);
    if (f->via != NULL)
        ADD(" AND via = ?%d", p++);
    if (f->skip_offpeak)
        ADD(" AND offpeak = 0");
    if (f->n_skip_models > 0) {
        ADD(" AND model NOT IN (");
        for (size_t i = 0; i < f->n_skip_models; i++)
            ADD("%s?%d", i ? ", " : "", p++);
        ADD(")");
    }
    return 0;
#undef ADD
}

static void
bind_filter(sqlite3_stmt *st, const struct queue_filter *f, int first)
{
    int p = first;

    if (f == NULL)
        return;
    if (f->batch != NULL)
        sqlite3_bind_text(st, p++, f->batch, -1, SQLITE_STATIC);
    if (f->via != NULL)
        sqlite3_bind_text(st, p++, f->via, -1, SQLITE_STATIC);
    for (size_t i = 0; i < f->n_skip_models; i++)
        sqlite3_bind_text(st, p++, f->skip_models[i], -1, SQLITE_STATIC);
}

static int
check_filter(struct queue *q, const struct queue_filter *f)
{
    if (f == NULL)
        return 0;
    if (f->n_skip_models > MAX_SKIP_MODELS)
        return set_err(q, NB_ELIMIT, "more than %d models to skip",
                       MAX_SKIP_MODELS);
    if (f->n_skip_models > 0 && f->skip_models == NULL)
        return set_err(q, NB_EINVAL, "skip_models missing");
    for (size_t i = 0; i < f->n_skip_models; i++) {
        if (f->skip_models[i] == NULL)
            return set_err(q, NB_EINVAL, "skip_models has a NULL");
    }
    return 0;
}

/*
 * The claim statement for the filter's shape.  The claim index is named so
 * that a batch filter never makes SQLite sort a whole batch: the scan walks
 * queued jobs in claim order and stops after max matches.  Jobs it must
 * step over cost about 0.2 us each (a paused batch of a million ahead of
 * the one being run: about 0.25 s per claim, measured by queue_bench).
 */
static sqlite3_stmt *
claim_stmt(struct queue *q, const struct queue_filter *f)
{
    char where[4096], sql[8192];
    char *copy;

    if (filter_sql(f, 6, where, sizeof(where)) != 0) {
        set_err(q, NB_ELIMIT, "claim filter too long");
        return NULL;
    }
    snprintf(sql, sizeof(sql),
             "UPDATE jobs SET state = 1, lease_owner = ?1,"
             " lease_expires_ms = ?2, claimed_ms = ?3, updated_ms = ?3,"
             " checkpoint = '{\"phase\":\"claimed\",\"at\":' || ?3 || '}'"
             " WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_claim"
             " WHERE state = 0 AND next_attempt_ms <= ?3"
             " AND not_before_ms <= ?3%s"
             " ORDER BY priority DESC, id LIMIT ?4)"
             " RETURNING " JOB_COLS, where);
    if (q->claim_sql != NULL && strcmp(q->claim_sql, sql) == 0) {
        sqlite3_reset(q->claim_stmt);
        sqlite3_clear_bindings(q->claim_stmt);
        return q->claim_stmt;
    }
    sqlite3_finalize(q->claim_stmt);
    free(q->claim_sql);
    q->claim_stmt = NULL;
    q->claim_sql = NULL;
    if ((copy = strdup(sql)) == NULL) {
        set_err(q, NB_ENOMEM, "out of memory");
        return NULL;
    }
    if (sqlite3_prepare_v3(q->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                           &q->claim_stmt, NULL) != SQLITE_OK) {
        db_fail(q, "preparing the claim");
        free(copy);
        return NULL;
    }
    q->claim_sql = copy;
    return q->claim_stmt;
}

/* Claim order: priority first, then age (id). */
static int
claim_order(const void *a, const void *b)
{
    const struct queue_job *x = *(struct queue_job *const *)a;
    const struct queue_job *y = *(struct queue_job *const *)b;

    if (x->priority != y->priority)
        return x->priority > y->priority ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Steps the claim statement, collecting its rows into an owned array. */
static int
claim_rows(struct queue *q, sqlite3_stmt *st, size_t max,
           struct queue_job ***jobs, size_t *n)
{
    struct queue_job **arr = calloc(max, sizeof(*arr));
    size_t count = 0;
    int rc;

    if (arr == NULL)
        return set_err(q, NB_ENOMEM, "out of memory");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && count < max) {
        if ((rc = job_from_row(q, st, &arr[count])) != 0)
            goto fail;
        count++;
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(q, "claiming jobs");
        goto fail;
    }
    sqlite3_reset(st);
    qsort(arr, count, sizeof(*arr), claim_order);
    *jobs = arr;
    *n = count;
    return 0;

fail:
    sqlite3_reset(st);
    queue_jobs_free(arr, count);
    return rc;
}

int
queue_claim(struct queue *q, const char *owner, int64_t now_ms,
            int64_t lease_ms, const struct queue_filter *filter,
            size_t max, struct queue_job ***jobs, size_t *n)
{
    struct queue_job **arr = NULL;
    sqlite3_stmt *st;
    size_t count = 0;
    int rc;

    if (owner == NULL || owner[0] == '\0')
        return set_err(q, NB_EINVAL, "claim without an owner");
    if ((rc = check_filter(q, filter)) != 0)
        return rc;
    if (max == 0) {
        *jobs = NULL;
        *n = 0;
        return 0;
    }
    if ((st = claim_stmt(q, filter)) == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms + lease_ms);
    sqlite3_bind_int64(st, 3, now_ms);
    sqlite3_bind_int64(st, 4, (int64_t)(max > INT64_MAX ? INT64_MAX : max));
    bind_filter(st, filter, 6);
    if ((rc = tx_begin(q)) != 0)
        return rc;
    rc = claim_rows(q, st, max, &arr, &count);
    if ((rc = tx_end(q, rc)) != 0) {
        queue_jobs_free(arr, count);
        return rc;
    }
    if (count == 0) {
        free(arr);
        arr = NULL;
    }
    *jobs = arr;
    *n = count;
    return 0;
}

int
queue_renew(struct queue *q, const char *owner, int64_t expires_ms)
{
    sqlite3_stmt *st = stmt(q, S_RENEW);

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, expires_ms);
    return run(q, st, "renewing leases");
}

/* NB_ELEASE, or NB_ENOTFOUND when the job does not exist at all. */
static int
lease_lost(struct queue *q, int64_t job_id, const char *owner)
{
    int state, rc;

    if ((rc = job_state(q, job_id, &state)) != 0)
        return rc;
    return set_err(q, NB_ELEASE, "job %lld is %s, not leased by %s",
                   (long long)job_id, queue_state_name(state), owner);
}

int
queue_checkpoint(struct queue *q, int64_t job_id, const char *owner,
                 const char *checkpoint)
{
    sqlite3_stmt *st;
    int rc;

    if (checkpoint != NULL && strlen(checkpoint) > CHECKPOINT_MAX)
        return set_err(q, NB_ELIMIT, "checkpoint over %d bytes",
                       CHECKPOINT_MAX);
    if ((st = stmt(q, S_CHECKPOINT)) == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, job_id);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, checkpoint, -1, SQLITE_STATIC);
    if ((rc = run(q, st, "storing a checkpoint")) != 0)
        return rc;
    if (sqlite3_changes(q->db) == 0)
        return lease_lost(q, job_id, owner);
    return 0;
}

/* ---- finishing ---------------------------------------------------------- */

static const char *const outcome_names[] = {
    [QUEUE_OUT_DONE] = "done",
    [QUEUE_OUT_RETRY] = "retry",
    [QUEUE_OUT_FAILED] = "failed",
    [QUEUE_OUT_BLOCKED] = "blocked",
    [QUEUE_OUT_RELEASE] = "released",
    [QUEUE_OUT_CANCELLED] = "cancelled",
};

static const int outcome_states[] = {
    [QUEUE_OUT_DONE] = QUEUE_DONE,
    [QUEUE_OUT_RETRY] = QUEUE_QUEUED,
    [QUEUE_OUT_FAILED] = QUEUE_FAILED,
    [QUEUE_OUT_BLOCKED] = QUEUE_BLOCKED,
    [QUEUE_OUT_RELEASE] = QUEUE_QUEUED,
    [QUEUE_OUT_CANCELLED] = QUEUE_CANCELLED,
};

static int
insert_attempt(struct queue *q, int64_t job_id, const char *outcome,
               const struct queue_attempt *a)
{
    sqlite3_stmt *st = stmt(q, S_ATTEMPT_INSERT);

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, job_id);
    sqlite3_bind_int64(st, 2, a->started_ms);
    sqlite3_bind_int64(st, 3, a->latency_ms);
    sqlite3_bind_text(st, 4, outcome, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, a->err_class, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, a->http_status);
    sqlite3_bind_text(st, 7, a->api_status, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, a->message, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, a->output_path, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, a->response_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 11, a->model_version, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 12, a->prompt_tokens);
    sqlite3_bind_int64(st, 13, a->output_tokens);
    sqlite3_bind_int64(st, 14, a->thought_tokens);
    sqlite3_bind_double(st, 15, a->cost_usd);
    return run(q, st, "recording an attempt");
}

/* Moves the job out of running if owner still holds it; *moved says so. */
static int
finish_move(struct queue *q, int64_t job_id, const char *owner,
            const struct queue_attempt *a, int *moved)
{
    int64_t end_ms = a->started_ms + a->latency_ms;
    int counted, transient, soft, rc;
    sqlite3_stmt *st;

    counted = a->outcome == QUEUE_OUT_RETRY || a->outcome == QUEUE_OUT_FAILED;
    transient = counted && a->err_class != NULL &&
        strcmp(a->err_class, "transient") == 0;
    soft = counted && a->err_class != NULL &&
        strcmp(a->err_class, "soft") == 0;
    if (a->outcome == QUEUE_OUT_DONE)
        st = stmt(q, S_FIN_DONE);
    else if (a->outcome == QUEUE_OUT_RELEASE)
        st = stmt(q, S_FIN_RELEASE);
    else
        st = stmt(q, S_FIN_ERR);
    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, job_id);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, end_ms);
    if (st == q->stmts[S_FIN_ERR]) {
        sqlite3_bind_int(st, 4, outcome_states[a->outcome]);
        sqlite3_bind_int(st, 5, transient);
        sqlite3_bind_int(st, 6, soft);
        sqlite3_bind_int64(st, 7, a->next_attempt_ms);
        sqlite3_bind_text(st, 8, a->err_class, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 9, a->http_status);
        sqlite3_bind_text(st, 10, a->api_status, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 11, a->message, -1, SQLITE_STATIC);
    }
    if ((rc = run(q, st, "finishing a job")) != 0)
        return rc;
    *moved = sqlite3_changes(q->db) > 0;
    return 0;
}

int
queue_finish(struct queue *q, int64_t job_id, const char *owner,
             const struct queue_attempt *a)
{
    int moved = 0, rc;

    if (a == NULL || a->outcome < QUEUE_OUT_DONE ||
        a->outcome > QUEUE_OUT_CANCELLED)
        return set_err(q, NB_EINVAL, "unknown attempt outcome");
    if (owner == NULL)
        return set_err(q, NB_EINVAL, "finish without an owner");
    if ((rc = tx_begin(q)) != 0)
        return rc;
    rc = finish_move(q, job_id, owner, a, &moved);
    if (rc == 0 && !moved)
        rc = lease_lost(q, job_id, owner);
    if (rc == 0)
        rc = insert_attempt(q, job_id, outcome_names[a->outcome], a);
    return tx_end(q, rc);
}

int
queue_mark_done(struct queue *q, int64_t job_id, const char *path,
                int64_t now_ms)
{
    struct queue_attempt a = {
        .outcome = QUEUE_OUT_DONE, .started_ms = now_ms,
        .output_path = path, .message = "found on disk by recovery",
    };
    int state, rc;

    if ((rc = tx_begin(q)) != 0)
        return rc;
    if ((rc = job_state(q, job_id, &state)) != 0)
        return tx_end(q, rc);
    if (state == QUEUE_CANCELLED)
        return tx_end(q, set_err(q, NB_ESTATE, "job %lld is cancelled",
                                 (long long)job_id));
    if (state == QUEUE_DONE)
        return tx_end(q, 0);
    rc = run_ii(q, S_MARK_DONE, job_id, now_ms, "marking a job done");
    if (rc == 0)
        rc = insert_attempt(q, job_id, "recovered", &a);
    return tx_end(q, rc);
}

/* ---- reclaiming --------------------------------------------------------- */

/* The distinct owners of running jobs, as an owned array of strings. */
static int
running_owners(struct queue *q, char ***owners, size_t *n)
{
    sqlite3_stmt *st = stmt(q, S_OWNERS);
    char **arr = NULL, **grown;
    size_t count = 0;
    int bad = 0, rc;

    if (st == NULL)
        return NB_EDB;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((grown = realloc(arr, (count + 1) * sizeof(*arr))) == NULL) {
            bad = 1;
            break;
        }
        arr = grown;
        if ((arr[count] = col_dup(st, 0, &bad)) == NULL)
            break;
        count++;
    }
    sqlite3_reset(st);
    if (bad || (rc != SQLITE_DONE && rc != SQLITE_ROW)) {
        rc = bad ? set_err(q, NB_ENOMEM, "out of memory")
                 : db_fail(q, "listing lease owners");
        while (count > 0)
            free(arr[--count]);
        free(arr);
        return rc;
    }
    *owners = arr;
    *n = count;
    return 0;
}

/* Reclaims, inside the open transaction, every job of owners[i] dead. */
static int
reclaim_dead(struct queue *q, int64_t now_ms, char **owners,
             const char *dead, size_t n, int *count)
{
    int rc;

    for (size_t i = 0; i < n; i++) {
        if (!dead[i])
            continue;
        if ((rc = run_ib(q, S_INTR_OWNER_ATT, now_ms, owners[i],
                         "recording interrupted attempts")) != 0 ||
            (rc = run_ib(q, S_INTR_OWNER, now_ms, owners[i],
                         "reclaiming jobs")) != 0)
            return rc;
        *count += sqlite3_changes(q->db);
    }
    return 0;
}

int
queue_reclaim(struct queue *q, int64_t now_ms,
              int (*owner_alive)(const char *owner, void *arg), void *arg,
              int *n_reclaimed)
{
    char **owners = NULL, *dead = NULL;
    size_t n = 0;
    int count = 0, rc;

    /* Ask about owners before taking the write lock: the callback may be
     * slow, and a dead owner claims nothing new meanwhile. */
    if (owner_alive != NULL && (rc = running_owners(q, &owners, &n)) != 0)
        return rc;
    if (n > 0 && (dead = calloc(n, 1)) == NULL) {
        rc = set_err(q, NB_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        dead[i] = strncmp(owners[i], QUEUE_REMOTE_OWNER,
                          strlen(QUEUE_REMOTE_OWNER)) != 0 &&
            !owner_alive(owners[i], arg);
    if ((rc = tx_begin(q)) != 0)
        goto done;
    rc = run_i(q, S_INTR_EXPIRED_ATT, now_ms,
               "recording interrupted attempts");
    if (rc == 0)
        rc = run_i(q, S_INTR_EXPIRED, now_ms, "reclaiming jobs");
    if (rc == 0) {
        count = sqlite3_changes(q->db);
        rc = reclaim_dead(q, now_ms, owners, dead, n, &count);
    }
    if ((rc = tx_end(q, rc)) == 0 && n_reclaimed != NULL)
        *n_reclaimed = count;

done:
    for (size_t i = 0; i < n; i++)
        free(owners[i]);
    free(owners);
    free(dead);
    return rc;
}

int
queue_release_all(struct queue *q, const char *owner, int64_t now_ms)
{
    int rc;

    if (owner == NULL)
        return set_err(q, NB_EINVAL, "release without an owner");
    if ((rc = tx_begin(q)) != 0)
        return rc;
    rc = run_ib(q, S_RELEASE_ATT, now_ms, owner, "recording releases");
    if (rc == 0)
        rc = run_ib(q, S_RELEASE, now_ms, owner, "releasing jobs");
    return tx_end(q, rc);
}

/* ---- looking at the queue ----------------------------------------------- */

static void
status_row(sqlite3_stmt *st, struct queue_batch_status *s)
{
    memset(s, 0, sizeof(*s));
    s->id = sqlite3_column_int64(st, 0);
    s->name = (const char *)sqlite3_column_text(st, 1);
    s->out_dir = (const char *)sqlite3_column_text(st, 2);
    s->paused = sqlite3_column_int(st, 3) != 0;
    s->created_ms = sqlite3_column_int64(st, 4);
    s->budget_usd = sqlite3_column_double(st, 7);
    s->spent_usd = sqlite3_column_double(st, 8);
}

/*
 * Rows come ordered by batch then state.  Text columns of the current row
 * stay valid until the next step, so a batch's record is handed out just
 * before stepping past its last row, with its strings copied.
 */
static int
status_emit(struct queue *q, sqlite3_stmt *st,
            int (*cb)(const struct queue_batch_status *s, void *arg),
            void *arg, int *found)
{
    struct queue_batch_status s;
    char *name = NULL, *out_dir = NULL;
    int rc, state, stop = 0;

    rc = sqlite3_step(st);
    while (rc == SQLITE_ROW && !stop) {
        status_row(st, &s);
        name = strdup(s.name ? s.name : "");
        out_dir = strdup(s.out_dir ? s.out_dir : "");
        if (name == NULL || out_dir == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        s.name = name;
        s.out_dir = out_dir;
        do {
            state = sqlite3_column_type(st, 5) == SQLITE_NULL ? -1
                : sqlite3_column_int(st, 5);
            if (state >= 0 && state < QUEUE_NSTATES) {
                s.counts[state] = sqlite3_column_int64(st, 6);
                s.total += s.counts[state];
            }
            rc = sqlite3_step(st);
        } while (rc == SQLITE_ROW && sqlite3_column_int64(st, 0) == s.id);
        *found = 1;
        stop = cb(&s, arg) != 0;
        free(name);
        free(out_dir);
        name = out_dir = NULL;
    }
    free(name);
    free(out_dir);
    if (rc == SQLITE_NOMEM)
        return set_err(q, NB_ENOMEM, "out of memory");
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return db_fail(q, "reading the status");
    return 0;
}

int
queue_status(struct queue *q, const char *batch,
             int (*cb)(const struct queue_batch_status *s, void *arg),
             void *arg)
{
    sqlite3_stmt *st = stmt(q, batch ? S_STATUS_ONE : S_STATUS_ALL);
    int found = 0, own_tx, rc;

    if (st == NULL)
        return NB_EDB;
    if (batch != NULL)
        sqlite3_bind_text(st, 1, batch, -1, SQLITE_STATIC);
    /* One read transaction, so the counts of all batches agree. */
    own_tx = sqlite3_get_autocommit(q->db);
    if (own_tx && sqlite3_exec(q->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(q, "starting a read");
    rc = status_emit(q, st, cb, arg, &found);
    sqlite3_reset(st);
    if (own_tx)
        tx_end(q, 0);
    if (rc == 0 && batch != NULL && !found)
        rc = set_err(q, NB_ENOTFOUND, "no batch named '%s'", batch);
    return rc;
}

/* Runs a prepared job query, handing each row to cb as a job. */
static int
each_job(struct queue *q, sqlite3_stmt *st,
         int (*cb)(const struct queue_job *job, void *arg), void *arg)
{
    struct queue_job *job = NULL;
    int rc, stop;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if ((rc = job_from_row(q, st, &job)) != 0)
            return rc;
        stop = cb(job, arg);
        queue_job_free(job);
        if (stop)
            return 0;
    }
    if (rc != SQLITE_DONE)
        return db_fail(q, "listing jobs");
    return 0;
}

int
queue_list(struct queue *q, int state, const char *batch,
           int64_t after_id, int64_t limit,
           int (*cb)(const struct queue_job *job, void *arg), void *arg)
{
    sqlite3_stmt *st = NULL;
    int64_t bid = 0;
    char sql[1024];
    int rc;

    if (state >= QUEUE_NSTATES)
        return set_err(q, NB_EINVAL, "no state %d", state);
    if (batch != NULL && (rc = batch_id(q, batch, &bid)) != 0)
        return rc;
    snprintf(sql, sizeof(sql), "SELECT " JOB_COLS " FROM jobs"
             " WHERE id > ?1%s%s ORDER BY id LIMIT ?4",
             state >= 0 ? " AND state = ?2" : "",
             batch != NULL ? " AND batch_id = ?3" : "");
    if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_fail(q, "preparing the list");
    sqlite3_bind_int64(st, 1, after_id);
    if (state >= 0)
        sqlite3_bind_int(st, 2, state);
    if (batch != NULL)
        sqlite3_bind_int64(st, 3, bid);
    sqlite3_bind_int64(st, 4, limit > 0 ? limit : -1);
    rc = each_job(q, st, cb, arg);
    sqlite3_finalize(st);
    return rc;
}

static void
attempt_row(sqlite3_stmt *st, struct queue_attempt_row *r)
{
    r->id = sqlite3_column_int64(st, 0);
    r->job_id = sqlite3_column_int64(st, 1);
    r->started_ms = sqlite3_column_int64(st, 2);
    r->latency_ms = sqlite3_column_int64(st, 3);
    r->outcome = (const char *)sqlite3_column_text(st, 4);
    r->err_class = (const char *)sqlite3_column_text(st, 5);
    r->http_status = sqlite3_column_int(st, 6);
    r->api_status = (const char *)sqlite3_column_text(st, 7);
    r->message = (const char *)sqlite3_column_text(st, 8);
    r->output_path = (const char *)sqlite3_column_text(st, 9);
    r->response_id = (const char *)sqlite3_column_text(st, 10);
    r->model_version = (const char *)sqlite3_column_text(st, 11);
    r->prompt_tokens = sqlite3_column_int64(st, 12);
    r->output_tokens = sqlite3_column_int64(st, 13);
    r->thought_tokens = sqlite3_column_int64(st, 14);
    r->cost_usd = sqlite3_column_double(st, 15);
}

int
queue_attempts(struct queue *q, int64_t job_id,
               int (*cb)(const struct queue_attempt_row *r, void *arg),
               void *arg)
{
    struct queue_attempt_row r;
    sqlite3_stmt *st;
    int state, rc;

    if ((rc = job_state(q, job_id, &state)) != 0)
        return rc;
    if ((st = stmt(q, S_ATTEMPTS)) == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, job_id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        attempt_row(st, &r);
        if (cb(&r, arg) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : db_fail(q, "reading attempts");
}

/* ---- user actions ------------------------------------------------------- */

static int
cancel_one(struct queue *q, int64_t job_id, int64_t now_ms, int64_t *n)
{
    int state, rc;

    if ((rc = job_state(q, job_id, &state)) != 0 ||
        (rc = run_ii(q, S_CANCEL_JOB_ATT, now_ms, job_id,
                     "recording a cancel")) != 0 ||
        (rc = run_ii(q, S_CANCEL_JOB, now_ms, job_id, "cancelling")) != 0)
        return rc;
    *n = sqlite3_changes(q->db);
    return 0;
}

static int
cancel_batch(struct queue *q, const char *batch, int64_t now_ms, int64_t *n)
{
    int64_t bid;
    int rc;

    if ((rc = batch_id(q, batch, &bid)) != 0 ||
        (rc = run_ii(q, S_CANCEL_BATCH_ATT, now_ms, bid,
                     "recording cancels")) != 0 ||
        (rc = run_ii(q, S_CANCEL_BATCH, now_ms, bid, "cancelling")) != 0)
        return rc;
    *n = sqlite3_changes(q->db);
    return 0;
}

int
queue_cancel(struct queue *q, int64_t job_id, const char *batch,
             int64_t now_ms, int64_t *n)
{
    int64_t count = 0;
    int rc;

    if (job_id <= 0 && batch == NULL)
        return set_err(q, NB_EINVAL, "cancel needs a job or a batch");
    if ((rc = tx_begin(q)) != 0)
        return rc;
    if (job_id > 0)
        rc = cancel_one(q, job_id, now_ms, &count);
    else
        rc = cancel_batch(q, batch, now_ms, &count);
    if ((rc = tx_end(q, rc)) == 0 && n != NULL)
        *n = count;
    return rc;
}

int
queue_retry(struct queue *q, int64_t job_id, const char *batch,
            int64_t now_ms, int64_t *n)
{
    int64_t bid = 0;
    int state, rc;

    if ((rc = tx_begin(q)) != 0)
        return rc;
    if (job_id > 0) {
        rc = job_state(q, job_id, &state);
        if (rc == 0)
            rc = run_ii(q, S_RETRY_JOB, now_ms, job_id, "retrying");
    } else if (batch != NULL) {
        rc = batch_id(q, batch, &bid);
        if (rc == 0)
            rc = run_ii(q, S_RETRY_BATCH, now_ms, bid, "retrying");
    } else {
        rc = run_i(q, S_RETRY_ALL, now_ms, "retrying");
    }
    if (rc == 0 && n != NULL)
        *n = sqlite3_changes(q->db);
    return tx_end(q, rc);
}

int
queue_set_paused(struct queue *q, const char *batch, int paused)
{
    sqlite3_stmt *st = stmt(q, S_BATCH_PAUSE);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, batch, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, paused != 0);
    if ((rc = run(q, st, "pausing a batch")) != 0)
        return rc;
    if (sqlite3_changes(q->db) == 0)
        return set_err(q, NB_ENOTFOUND, "no batch named '%s'",
                       batch ? batch : "");
    return 0;
}

int
queue_count_unfinished(struct queue *q, const char *batch, int64_t *n)
{
    sqlite3_stmt *st;
    int64_t bid = 0;
    int rc;

    if (batch != NULL && (rc = batch_id(q, batch, &bid)) != 0)
        return rc;
    if ((st = stmt(q, batch ? S_UNFINISHED_ONE : S_UNFINISHED_ALL)) == NULL)
        return NB_EDB;
    if (batch != NULL)
        sqlite3_bind_int64(st, 1, bid);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : db_fail(q, "counting jobs");
}

int
queue_next_due(struct queue *q, const struct queue_filter *filter,
               int64_t *due_ms)
{
    char where[4096], sql[4608];
    sqlite3_stmt *st = NULL;
    int rc;

    if ((rc = check_filter(q, filter)) != 0)
        return rc;
    if (filter_sql(filter, 1, where, sizeof(where)) != 0)
        return set_err(q, NB_ELIMIT, "filter too long");
    /* At least 1 for a queued job, so that 0 means none is queued. */
    snprintf(sql, sizeof(sql), "SELECT ifnull(min(max(next_attempt_ms,"
             " not_before_ms, 1)), 0) FROM jobs WHERE state = 0%s", where);
    if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_fail(q, "preparing the due time");
    bind_filter(st, filter, 1);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *due_ms = sqlite3_column_int64(st, 0);
    rc = rc == SQLITE_ROW ? 0 : db_fail(q, "reading the due time");
    sqlite3_finalize(st);
    return rc;
}

/* ---- scheduler state ---------------------------------------------------- */

int
queue_unclaim(struct queue *q, int64_t job_id, const char *owner)
{
    sqlite3_stmt *st = stmt(q, S_UNCLAIM);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, job_id);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, add_clock(q));
    if ((rc = run(q, st, "giving a job back")) != 0)
        return rc;
    if (sqlite3_changes(q->db) == 0)
        return set_err(q, NB_ELEASE, "job %lld is not leased by this run",
                       (long long)job_id);
    return 0;
}

#define QUOTA_KEEP_MS (2LL * 24 * 3600 * 1000)

int
queue_quota_note(struct queue *q, const char *model, int64_t t_ms)
{
    sqlite3_stmt *st = stmt(q, S_QUOTA_NOTE);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, t_ms);
    if ((rc = run(q, st, "counting a request")) != 0)
        return rc;
    /* Drop old rows now and then: one insert in 1024 prunes. */
    if ((sqlite3_last_insert_rowid(q->db) & 1023) == 0)
        return run_i(q, S_QUOTA_PRUNE, t_ms - QUOTA_KEEP_MS,
                     "pruning request counts");
    return 0;
}

int
queue_quota_sends(struct queue *q, const char *model, int64_t since_ms,
                  int64_t **times, size_t *n)
{
    sqlite3_stmt *st = stmt(q, S_QUOTA_SENDS);
    int64_t *list = NULL, *grown;
    size_t count = 0, cap = 0;
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, since_ms);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            grown = realloc(list, cap * sizeof(*list));
            if (grown == NULL) {
                sqlite3_reset(st);
                free(list);
                return set_err(q, NB_ENOMEM, "out of memory");
            }
            list = grown;
        }
        list[count++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        free(list);
        return db_fail(q, "reading request counts");
    }
    *times = list;
    *n = count;
    return 0;
}

int
queue_state_put(struct queue *q, const char *name, const char *value,
                int64_t now_ms)
{
    sqlite3_stmt *st = stmt(q, value != NULL ? S_STATE_PUT : S_STATE_DEL);

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (value != NULL) {
        sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, now_ms);
    }
    return run(q, st, "saving shared state");
}

int
queue_state_get(struct queue *q, const char *name, char **value)
{
    sqlite3_stmt *st = stmt(q, S_STATE_GET);
    int rc;

    if (st == NULL)
        return NB_EDB;
    *value = NULL;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *value = strdup((const char *)sqlite3_column_text(st, 0));
        sqlite3_reset(st);
        return *value != NULL ? 0 : set_err(q, NB_ENOMEM, "out of memory");
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : db_fail(q, "reading shared state");
}

int
queue_state_list(struct queue *q, const char *prefix,
                 int (*cb)(const char *name, const char *value, void *arg),
                 void *arg)
{
    sqlite3_stmt *st = stmt(q, S_STATE_LIST);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, prefix, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (cb((const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1), arg) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : db_fail(q, "reading shared state");
}

int
queue_set_budget(struct queue *q, const char *batch, double usd)
{
    sqlite3_stmt *st = stmt(q, S_BUDGET_SET);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, batch, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, usd);
    if ((rc = run(q, st, "setting a budget")) != 0)
        return rc;
    if (sqlite3_changes(q->db) == 0)
        return set_err(q, NB_ENOTFOUND, "no batch named '%s'", batch);
    return 0;
}

int
queue_batch_money(struct queue *q, int64_t batch_id, double *budget_usd,
                  double *spent_usd)
{
    sqlite3_stmt *st = stmt(q, S_MONEY);
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, batch_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *budget_usd = sqlite3_column_double(st, 0);
        *spent_usd = sqlite3_column_double(st, 1);
    }
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return 0;
    return rc == SQLITE_DONE ? set_err(q, NB_ENOTFOUND, "no batch %lld",
                                       (long long)batch_id)
                             : db_fail(q, "reading a budget");
}

/* ---- Batch mode: remote chunks ----------------------------------------- */

/* The phases of a chunk that has not ended, as an SQL list. */
#define REMOTE_LIVE_PHASES \
    "('" QUEUE_REMOTE_NEW "', '" QUEUE_REMOTE_UPLOADED "', '" \
    QUEUE_REMOTE_CREATING "', '" QUEUE_REMOTE_SUBMITTED "', '" \
    QUEUE_REMOTE_COLLECTING "')"

void
queue_remote_owner(int64_t remote_id, char *buf, size_t len)
{
    snprintf(buf, len, QUEUE_REMOTE_OWNER "%lld", (long long)remote_id);
}

/* Prepares sql (not cached: chunks are few); NULL with the error set. */
static sqlite3_stmt *
prepare(struct queue *q, const char *sql)
{
    sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK) {
        db_fail(q, "preparing a statement");
        sqlite3_finalize(st);
        return NULL;
    }
    return st;
}

/* Steps a one-off statement to its end and finalizes it. */
static int
run_once(struct queue *q, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    rc = rc == SQLITE_DONE ? 0 : db_fail(q, what);
    sqlite3_finalize(st);
    return rc;
}

/* Hands job to the chunk, inside the open transaction. */
static int
remote_take_job(struct queue *q, int64_t job_id, const char *owner,
                int64_t remote_id, const char *remote_owner,
                const char *display_name, int64_t now_ms)
{
    sqlite3_stmt *st = prepare(q,
        "UPDATE jobs SET lease_owner = ?3, lease_expires_ms = ?4,"
        " remote_id = ?5, updated_ms = ?6,"
        " checkpoint = json_object('phase', 'remote', 'chunk', ?5,"
        " 'display_name', ?7, 'at', ?6)"
        " WHERE id = ?1 AND state = 1 AND lease_owner = ?2"
        " AND via = 'batch'");
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, job_id);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, remote_owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, INT64_MAX);
    sqlite3_bind_int64(st, 5, remote_id);
    sqlite3_bind_int64(st, 6, now_ms);
    sqlite3_bind_text(st, 7, display_name, -1, SQLITE_STATIC);
    if ((rc = run_once(q, st, "handing a job to a chunk")) != 0)
        return rc;
    if (sqlite3_changes(q->db) == 0)
        return lease_lost(q, job_id, owner);
    return 0;
}

int
queue_remote_create(struct queue *q, const char *owner, int64_t batch_id,
                    const char *model, const char *display_name,
                    const int64_t *job_ids, size_t n, int64_t now_ms,
                    int64_t *remote_id)
{
    char remote_owner[64];
    sqlite3_stmt *st;
    int64_t id;
    int rc;

    if (n == 0 || owner == NULL || model == NULL || display_name == NULL)
        return set_err(q, NB_EINVAL, "an empty chunk");
    if ((rc = tx_begin(q)) != 0)
        return rc;
    /* Followed by its maker from the start: no other run adopts it. */
    st = prepare(q, "INSERT INTO remote_batches (batch_id, display_name,"
                 " model, phase, n_jobs, created_ms, updated_ms, follower,"
                 " follow_expires_ms) VALUES (?1, ?2, ?3, '"
                 QUEUE_REMOTE_NEW "', ?4, ?5, ?5, ?6, ?7)");
    if (st == NULL)
        return tx_end(q, NB_EDB);
    sqlite3_bind_int64(st, 1, batch_id);
    sqlite3_bind_text(st, 2, display_name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, model, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (int64_t)n);
    sqlite3_bind_int64(st, 5, now_ms);
    sqlite3_bind_text(st, 6, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, now_ms + QUEUE_REMOTE_FIRST_FOLLOW_MS);
    rc = sqlite3_step(st);
    if ((rc & 0xff) == SQLITE_CONSTRAINT) {
        sqlite3_finalize(st);
        return tx_end(q, set_err(q, NB_EEXIST, "a chunk named %s exists",
                                 display_name));
    }
    if ((rc = rc == SQLITE_DONE ? 0 : db_fail(q, "recording a chunk")) != 0) {
        sqlite3_finalize(st);
        return tx_end(q, rc);
    }
    sqlite3_finalize(st);
    id = sqlite3_last_insert_rowid(q->db);
    queue_remote_owner(id, remote_owner, sizeof(remote_owner));
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = remote_take_job(q, job_ids[i], owner, id, remote_owner,
                             display_name, now_ms);
    if ((rc = tx_end(q, rc)) == 0)
        *remote_id = id;
    return rc;
}

/* Binds text when not NULL ("" binds NULL), else leaves ?i unbound. */
static void
bind_opt_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s != NULL && *s != '\0')
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

/* Whether chunk id is in a live phase: *live 1, 0 when it ended, -1
 * when there is no such chunk. */
static int
remote_phase(struct queue *q, int64_t id, int *live)
{
    sqlite3_stmt *st = prepare(q, "SELECT phase IN " REMOTE_LIVE_PHASES
                               " FROM remote_batches WHERE id = ?1");
    int rc;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    *live = rc != SQLITE_ROW ? -1 : sqlite3_column_int(st, 0) != 0;
    rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? 0
                                               : db_fail(q, "reading a chunk");
    sqlite3_finalize(st);
    return rc;
}

int
queue_remote_update(struct queue *q, int64_t id,
                    const struct queue_remote_update *u, int64_t now_ms)
{
    /* ?n IS NULL keeps a column; ?12 = 1 says last_error is to be set
     * (to ?11, which may be NULL to clear it). */
    sqlite3_stmt *st = prepare(q,
        "UPDATE remote_batches SET"
        " phase = ifnull(?2, phase),"
        " remote_name = ifnull(?3, remote_name),"
        " remote_state = ifnull(?4, remote_state),"
        " input_file = ifnull(?5, input_file),"
        " uploaded_ms = ifnull(?6, uploaded_ms),"
        " result_file = ifnull(?7, result_file),"
        " submitted_ms = ifnull(?8, submitted_ms),"
        " ended_ms = ifnull(?9, ended_ms),"
        " polls = polls + ?10,"
        " last_error = CASE WHEN ?12 THEN ?11 ELSE last_error END,"
        " updated_ms = ?13"
        " WHERE id = ?1 AND phase IN " REMOTE_LIVE_PHASES);
    int rc, live = 0;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, id);
    bind_opt_text(st, 2, u->phase);
    bind_opt_text(st, 3, u->remote_name);
    bind_opt_text(st, 4, u->remote_state);
    bind_opt_text(st, 5, u->input_file);
    if (u->uploaded_ms >= 0)
        sqlite3_bind_int64(st, 6, u->uploaded_ms);
    bind_opt_text(st, 7, u->result_file);
    if (u->submitted_ms >= 0)
        sqlite3_bind_int64(st, 8, u->submitted_ms);
    if (u->ended_ms >= 0)
        sqlite3_bind_int64(st, 9, u->ended_ms);
    sqlite3_bind_int(st, 10, u->add_poll != 0);
    bind_opt_text(st, 11, u->last_error);
    sqlite3_bind_int(st, 12, u->last_error != NULL);
    sqlite3_bind_int64(st, 13, now_ms);
    if ((rc = run_once(q, st, "recording a chunk's progress")) != 0)
        return rc;
    if (sqlite3_changes(q->db) > 0)
        return 0;
    /* An ended chunk stays ended: a step that was under way when the
     * user cancelled it must not bring it back. */
    if ((rc = remote_phase(q, id, &live)) != 0)
        return rc;
    return live < 0 ? set_err(q, NB_ENOTFOUND, "no chunk %lld",
                              (long long)id)
                    : set_err(q, NB_ESTATE, "chunk %lld has ended",
                              (long long)id);
}

static const char *
col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* The job counts of chunk r->id by state into r->counts. */
static int
remote_counts(struct queue *q, struct queue_remote *r)
{
    sqlite3_stmt *st = prepare(q, "SELECT state, count(*) FROM jobs"
                               " WHERE remote_id = ?1 GROUP BY state");
    int rc, state;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, r->id);
    memset(r->counts, 0, sizeof(r->counts));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        state = sqlite3_column_int(st, 0);
        if (state >= 0 && state < QUEUE_NSTATES)
            r->counts[state] = sqlite3_column_int64(st, 1);
    }
    rc = rc == SQLITE_DONE ? 0 : db_fail(q, "counting a chunk's jobs");
    sqlite3_finalize(st);
    return rc;
}

int
queue_remote_list(struct queue *q, const char *batch, int live,
                  int (*cb)(const struct queue_remote *r, void *arg),
                  void *arg)
{
    char sql[1024];
    sqlite3_stmt *st;
    struct queue_remote r;
    int64_t bid = 0;
    int rc, own_tx;

    if (batch != NULL && (rc = batch_id(q, batch, &bid)) != 0)
        return rc;
    snprintf(sql, sizeof(sql),
             "SELECT r.id, r.batch_id, b.name, r.display_name, r.model,"
             " r.phase, r.remote_name, r.remote_state, r.input_file,"
             " r.uploaded_ms, r.result_file, r.n_jobs, r.created_ms,"
             " r.submitted_ms, r.updated_ms, r.ended_ms, r.polls,"
             " r.last_error FROM remote_batches r"
             " JOIN batches b ON b.id = r.batch_id WHERE 1%s%s ORDER BY r.id",
             batch != NULL ? " AND r.batch_id = ?1" : "",
             live ? " AND r.phase IN " REMOTE_LIVE_PHASES : "");
    own_tx = sqlite3_get_autocommit(q->db);
    if (own_tx && sqlite3_exec(q->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return db_fail(q, "starting a read");
    if ((st = prepare(q, sql)) == NULL) {
        rc = NB_EDB;
        goto out;
    }
    if (batch != NULL)
        sqlite3_bind_int64(st, 1, bid);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        memset(&r, 0, sizeof(r));
        r.id = sqlite3_column_int64(st, 0);
        r.batch_id = sqlite3_column_int64(st, 1);
        r.batch = col_text(st, 2);
        r.display_name = col_text(st, 3);
        r.model = col_text(st, 4);
        r.phase = col_text(st, 5);
        r.remote_name = col_text(st, 6);
        r.remote_state = col_text(st, 7);
        r.input_file = col_text(st, 8);
        r.uploaded_ms = sqlite3_column_int64(st, 9);
        r.result_file = col_text(st, 10);
        r.n_jobs = sqlite3_column_int64(st, 11);
        r.created_ms = sqlite3_column_int64(st, 12);
        r.submitted_ms = sqlite3_column_int64(st, 13);
        r.updated_ms = sqlite3_column_int64(st, 14);
        r.ended_ms = sqlite3_column_int64(st, 15);
        r.polls = sqlite3_column_int64(st, 16);
        r.last_error = col_text(st, 17);
        if ((rc = remote_counts(q, &r)) != 0)
            break;
        if (cb(&r, arg) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc == SQLITE_DONE)
        rc = 0;
    else if (rc == SQLITE_ROW || rc > 0)
        rc = db_fail(q, "listing chunks");
    sqlite3_finalize(st);
out:
    if (own_tx)
        tx_end(q, 0);
    return rc;
}

int
queue_remote_jobs(struct queue *q, int64_t id,
                  int (*cb)(const struct queue_job *job, void *arg),
                  void *arg)
{
    char owner[64];
    sqlite3_stmt *st = prepare(q, "SELECT " JOB_COLS " FROM jobs"
                               " WHERE remote_id = ?1 AND state = 1"
                               " AND lease_owner = ?2 ORDER BY id");
    int rc;

    if (st == NULL)
        return NB_EDB;
    queue_remote_owner(id, owner, sizeof(owner));
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    rc = each_job(q, st, cb, arg);
    sqlite3_finalize(st);
    return rc;
}

int
queue_remote_end(struct queue *q, int64_t id, const char *phase,
                 const char *message, int64_t now_ms, int64_t *n)
{
    struct queue_remote_update u = {
        .phase = phase, .uploaded_ms = -1, .submitted_ms = -1,
        .ended_ms = now_ms,
    };
    char owner[64];
    sqlite3_stmt *st;
    int64_t moved = 0;
    int rc, live = 0;

    queue_remote_owner(id, owner, sizeof(owner));
    if ((rc = tx_begin(q)) != 0)
        return rc;
    st = prepare(q, "INSERT INTO attempts (job_id, started_ms, outcome,"
                 " message) SELECT id, ?1, 'released', ?3 FROM jobs"
                 " WHERE state = 1 AND lease_owner = ?2");
    if (st == NULL)
        return tx_end(q, NB_EDB);
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, message, -1, SQLITE_STATIC);
    if ((rc = run_once(q, st, "recording released jobs")) == 0)
        rc = run_ib(q, S_RELEASE, now_ms, owner, "releasing jobs");
    if (rc == 0) {
        moved = sqlite3_changes(q->db);
        /* A chunk ended already (cancelled by the user meanwhile, say)
         * keeps the phase it ended in. */
        rc = remote_phase(q, id, &live);
    }
    if (rc == 0 && live > 0)
        rc = queue_remote_update(q, id, &u, now_ms);
    if ((rc = tx_end(q, rc)) == 0 && n != NULL)
        *n = moved;
    return rc;
}

int
queue_remote_follow(struct queue *q, int64_t id, const char *owner,
                    int64_t now_ms, int64_t lease_ms,
                    int (*owner_alive)(const char *owner, void *arg),
                    void *arg)
{
    sqlite3_stmt *st = prepare(q, "SELECT follower, follow_expires_ms"
                               " FROM remote_batches WHERE id = ?1");
    char *old = NULL;
    int64_t expires = 0;
    int rc, bad = 0, busy;

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        old = col_dup(st, 0, &bad);
        expires = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? set_err(q, NB_ENOTFOUND, "no chunk %lld",
                                           (long long)id)
                                 : db_fail(q, "reading a chunk");
    if (bad)
        return set_err(q, NB_ENOMEM, "out of memory");
    busy = old != NULL && strcmp(old, owner) != 0 && expires > now_ms &&
        (owner_alive == NULL || owner_alive(old, arg));
    if (busy) {
        free(old);
        return set_err(q, NB_ELEASE, "chunk %lld is followed by another "
                       "run", (long long)id);
    }
    /* Compare and set on both columns: another run may have taken it
     * meanwhile, or the same follower renewed it from a stalled run. */
    st = prepare(q, "UPDATE remote_batches SET follower = ?2,"
                 " follow_expires_ms = ?3 WHERE id = ?1"
                 " AND ifnull(follower, '') = ifnull(?4, '')"
                 " AND follow_expires_ms = ?5");
    if (st == NULL) {
        free(old);
        return NB_EDB;
    }
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms + lease_ms);
    sqlite3_bind_text(st, 4, old, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, expires);
    rc = run_once(q, st, "following a chunk");
    free(old);
    if (rc == 0 && sqlite3_changes(q->db) == 0)
        rc = set_err(q, NB_ELEASE, "chunk %lld was taken by another run",
                     (long long)id);
    return rc;
}

int
queue_remote_unfollow(struct queue *q, const char *owner)
{
    sqlite3_stmt *st = prepare(q, "UPDATE remote_batches SET follower ="
                               " NULL, follow_expires_ms = 0"
                               " WHERE follower = ?1");

    if (st == NULL)
        return NB_EDB;
    sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
    return run_once(q, st, "letting go of chunks");
}
