/*
 * test_queue.c - unit tests of the SQLite queue (queue/queue.c).
 *
 * Every test gets a fresh database file in its own temporary folder, so
 * that WAL, file modes and a second connection behave as in real use.  A
 * raw SQLite connection on the same file checks what the queue's API does
 * not show (schema version, real counts by state, attempt rows).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "queue/nberr.h"
#include "queue/queue.h"

#define T0 1700000000000LL          /* the tests' "now" */
#define LEASE 60000

struct fx {
    char dir[256];
    char path[320];
    struct queue *q;
};

/* ---- helpers ------------------------------------------------------------ */

static void
remove_db(const char *path)
{
    char side[400];

    unlink(path);
    snprintf(side, sizeof(side), "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof(side), "%s-shm", path);
    unlink(side);
}

static int
setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    const char *tmp = getenv("TMPDIR");
    char err[256];

    assert_non_null(fx);
    snprintf(fx->dir, sizeof(fx->dir), "%s/test_queue.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->path, sizeof(fx->path), "%s/q.db", fx->dir);
    assert_int_equal(queue_open(fx->path, &fx->q, err, sizeof(err)), 0);
    queue_set_clock(fx->q, T0);
    *state = fx;
    return 0;
}

static int
teardown(void **state)
{
    struct fx *fx = *state;

    queue_close(fx->q);
    remove_db(fx->path);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

/* One integer from SQL run on a separate raw connection. */
static int64_t
sql_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void
sql_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void
make_key(int i, char key[65])
{
    snprintf(key, 65, "%032x%032x", (unsigned)i * 2654435761u, (unsigned)i);
}

struct spec {
    const char *batch;
    int priority;
    const char *model;
    const char *via;
    int offpeak;
    int64_t not_before_ms;
};

static const struct spec plain = {"b1", 0, "m-a", "direct", 0, 0};

/*
 * Adds job number i (key and out path from i) in its own transaction.
 * Returns *added, or a negative code.
 */
static int
add_job(struct queue *q, int i, const struct spec *s)
{
    struct queue_new_job job = {0};
    char key[65], out[128], prompt[64];
    int64_t bid, seq, conflict = 0;
    int added = -1, rc;

    make_key(i, key);
    snprintf(out, sizeof(out), "/out/%s/%06d.png", s->batch, i);
    snprintf(prompt, sizeof(prompt), "prompt number %d", i);
    job.key = key;
    job.prompt = prompt;
    job.model = s->model;
    job.out_path = out;
    job.via = s->via;
    job.priority = s->priority;
    job.offpeak = s->offpeak;
    job.not_before_ms = s->not_before_ms;
    rc = queue_add_begin(q, s->batch, "/out/dir", &bid, &seq);
    if (rc != 0)
        return rc;
    rc = queue_add_job(q, bid, seq, &job, &added, &conflict);
    if (rc != 0) {
        queue_add_rollback(q);
        return rc;
    }
    assert_int_equal(queue_add_commit(q), 0);
    return added;
}

/* Adds jobs lo..hi with spec s; they get ids lo..hi in a fresh queue. */
static void
add_range(struct queue *q, int lo, int hi, const struct spec *s)
{
    for (int i = lo; i <= hi; i++)
        assert_int_equal(add_job(q, i, s), 1);
}

/* Claims up to max and returns their ids in claim order (0-terminated). */
static size_t
claim_ids(struct queue *q, const char *owner, int64_t now,
          const struct queue_filter *f, size_t max, int64_t *ids)
{
    struct queue_job **jobs = NULL;
    size_t n = 0;

    assert_int_equal(queue_claim(q, owner, now, LEASE, f, max, &jobs, &n),
                     0);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(jobs[i]->state, QUEUE_RUNNING);
        assert_string_equal(jobs[i]->lease_owner, owner);
        assert_int_equal(jobs[i]->lease_expires_ms, now + LEASE);
        ids[i] = jobs[i]->id;
    }
    ids[n] = 0;
    queue_jobs_free(jobs, n);
    return n;
}

static struct queue_job *
get(struct queue *q, int64_t id)
{
    struct queue_job *job = NULL;

    assert_int_equal(queue_get(q, id, &job), 0);
    assert_non_null(job);
    return job;
}

static int
get_state(struct queue *q, int64_t id)
{
    struct queue_job *job = get(q, id);
    int state = job->state;

    queue_job_free(job);
    return state;
}

/* ---- opening and migrating ---------------------------------------------- */

static void
test_open_mode_and_version(void **state)
{
    struct fx *fx = *state;
    struct stat st;

    assert_int_equal(stat(fx->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true(sql_int(fx->path, "PRAGMA user_version") >= 1);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM sqlite_schema"
                             " WHERE name = 'jobs'"), 1);
    assert_int_equal(sql_int(fx->path, "SELECT journal_mode = 'wal'"
                             " FROM pragma_journal_mode"), 1);
}

static void
test_open_twice_is_noop(void **state)
{
    struct fx *fx = *state;
    struct queue *q2 = NULL;
    int64_t version, objects;

    assert_int_equal(add_job(fx->q, 1, &plain), 1);
    version = sql_int(fx->path, "PRAGMA user_version");
    objects = sql_int(fx->path, "SELECT count(*) FROM sqlite_schema");
    queue_close(fx->q);
    fx->q = NULL;
    assert_int_equal(queue_open(fx->path, &q2, NULL, 0), 0);
    fx->q = q2;
    assert_int_equal(sql_int(fx->path, "PRAGMA user_version"), version);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM sqlite_schema"),
                     objects);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM jobs"), 1);
}

static int
count_all(const struct queue_batch_status *s, void *arg)
{
    *(int64_t *)arg += s->total;
    return 0;
}

/* A reader opens and looks while a big add holds the write lock. */
static void
test_open_while_adding(void **state)
{
    struct fx *fx = *state;
    struct queue_new_job job = {.prompt = "p", .model = "m",
                                .via = "direct", .out_path = "/o/1.png"};
    struct queue *q2 = NULL;
    char key[65];
    int64_t bid, seq, conflict, total = 0;
    int added;

    assert_int_equal(add_job(fx->q, 1, &plain), 1);
    make_key(2, key);
    job.key = key;
    assert_int_equal(queue_add_begin(fx->q, "b1", NULL, &bid, &seq), 0);
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), 0);
    assert_int_equal(queue_open(fx->path, &q2, NULL, 0), 0);
    assert_int_equal(queue_status(q2, NULL, count_all, &total), 0);
    assert_int_equal(total, 1);                 /* the add is not visible */
    assert_int_equal(queue_add_commit(fx->q), 0);
    total = 0;
    assert_int_equal(queue_status(q2, NULL, count_all, &total), 0);
    assert_int_equal(total, 2);
    queue_close(q2);
}

static void
test_open_newer_schema(void **state)
{
    struct fx *fx = *state;
    struct queue *q2 = (struct queue *)fx;
    char err[256] = "";

    sql_exec(fx->path, "PRAGMA user_version = 999");
    assert_int_equal(queue_open(fx->path, &q2, err, sizeof(err)),
                     NB_ESCHEMA);
    assert_ptr_equal(q2, (struct queue *)fx);   /* untouched */
    assert_non_null(strstr(err, "999"));
}

static void
test_open_bad_path(void **state)
{
    struct queue *q = NULL;
    char err[256] = "";

    (void)state;
    assert_int_equal(queue_open("/nonexistent-dir/x/q.db", &q, err,
                                sizeof(err)), NB_EIO);
    assert_null(q);
    assert_non_null(strstr(err, "/nonexistent-dir/x/q.db"));
}

static void
test_open_not_a_database(void **state)
{
    struct fx *fx = *state;
    char path[400], err[256] = "";
    struct queue *q = NULL;
    FILE *f;

    snprintf(path, sizeof(path), "%s/junk.db", fx->dir);
    f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 200; i++)
        fputs("this is not a database file at all\n", f);
    fclose(f);
    assert_int_equal(queue_open(path, &q, err, sizeof(err)), NB_EDB);
    assert_null(q);
    assert_true(err[0] != '\0');
    unlink(path);
}

static void
test_state_names(void **state)
{
    (void)state;
    for (int s = 0; s < QUEUE_NSTATES; s++)
        assert_int_equal(queue_state_parse(queue_state_name(s)), s);
    assert_string_equal(queue_state_name(QUEUE_BLOCKED), "blocked");
    assert_string_equal(queue_state_name(-1), "?");
    assert_string_equal(queue_state_name(QUEUE_NSTATES), "?");
    assert_int_equal(queue_state_parse("nope"), -1);
    assert_int_equal(queue_state_parse(NULL), -1);
}

/* ---- adding ------------------------------------------------------------- */

static void
test_add_idempotent(void **state)
{
    struct fx *fx = *state;

    add_range(fx->q, 1, 5, &plain);
    for (int i = 1; i <= 5; i++)
        assert_int_equal(add_job(fx->q, i, &plain), 0);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM jobs"), 5);
}

static void
test_add_same_key_new_path_is_skipped(void **state)
{
    struct fx *fx = *state;
    struct queue_new_job job = {0};
    char key[65];
    int64_t bid, seq, conflict = 0;
    int added = -1;

    add_range(fx->q, 1, 1, &plain);
    make_key(1, key);
    job.key = key;
    job.prompt = "p";
    job.model = "m-a";
    job.via = "direct";
    job.out_path = "/out/other-name.png";
    assert_int_equal(queue_add_begin(fx->q, "b1", NULL, &bid, &seq), 0);
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), 0);
    assert_int_equal(added, 0);
    assert_int_equal(queue_add_commit(fx->q), 0);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM jobs"), 1);
}

static void
test_add_out_path_conflict(void **state)
{
    struct fx *fx = *state;
    struct queue_new_job job = {0};
    char key[65];
    int64_t bid, seq, conflict = 0;
    int added = -1;

    add_range(fx->q, 1, 3, &plain);
    make_key(77, key);
    job.key = key;
    job.prompt = "another prompt";
    job.model = "m-a";
    job.via = "direct";
    job.out_path = "/out/b1/000002.png";        /* job 2's */
    assert_int_equal(queue_add_begin(fx->q, "b1", NULL, &bid, &seq), 0);
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), NB_EEXIST);
    assert_int_equal(conflict, 2);
    assert_int_equal(added, -1);
    assert_non_null(strstr(queue_errmsg(fx->q), "/out/b1/000002.png"));
    /* The transaction is still usable after the failed job. */
    job.out_path = "/out/b1/free.png";
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), 0);
    assert_int_equal(added, 1);
    assert_int_equal(queue_add_commit(fx->q), 0);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM jobs"), 4);
}

static void
test_add_seq_and_out_dir(void **state)
{
    struct fx *fx = *state;
    struct queue_new_job job = {0};
    char key[65], out[64];
    int64_t bid, seq, conflict;
    int added;

    assert_int_equal(queue_add_begin(fx->q, "fresh", "/first/dir", &bid,
                                     &seq), 0);
    assert_int_equal(seq, 1);
    assert_string_equal(queue_add_out_dir(fx->q), "/first/dir");
    job.prompt = "p";
    job.model = "m";
    job.via = "batch";
    job.out_path = out;
    job.key = key;
    for (int i = 0; i < 3; i++) {
        make_key(100 + i, key);
        snprintf(out, sizeof(out), "/first/dir/%d.png", i);
        assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                       &conflict), 0);
        assert_int_equal(added, 1);
        seq += added;
    }
    assert_int_equal(queue_add_commit(fx->q), 0);

    /* The batch keeps its folder and numbering. */
    assert_int_equal(queue_add_begin(fx->q, "fresh", "/second/dir", &bid,
                                     &seq), 0);
    assert_int_equal(seq, 4);
    assert_string_equal(queue_add_out_dir(fx->q), "/first/dir");
    queue_add_rollback(fx->q);
}

static void
test_add_several_batches_in_one_add(void **state)
{
    struct fx *fx = *state;
    struct queue_new_job job = {.prompt = "p", .model = "m",
                                .via = "direct"};
    char key[65], out[64];
    int64_t b1, b2, seq, conflict;
    int added;

    job.key = key;
    job.out_path = out;
    assert_int_equal(queue_add_begin(fx->q, "one", "/o1", &b1, &seq), 0);
    for (int i = 0; i < 2; i++) {
        make_key(i, key);
        snprintf(out, sizeof(out), "/o1/%d.png", i);
        assert_int_equal(queue_add_job(fx->q, b1, seq++, &job, &added,
                                       &conflict), 0);
    }
    assert_int_equal(queue_add_begin(fx->q, "two", "/o2", &b2, &seq), 0);
    assert_int_equal(seq, 1);
    make_key(10, key);
    snprintf(out, sizeof(out), "/o2/x.png");
    assert_int_equal(queue_add_job(fx->q, b2, seq, &job, &added, &conflict),
                     0);
    assert_int_equal(queue_add_begin(fx->q, "one", NULL, &b1, &seq), 0);
    assert_int_equal(seq, 3);                   /* numbering carried on */
    assert_int_equal(queue_add_commit(fx->q), 0);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM jobs"), 3);
    assert_int_equal(sql_int(fx->path, "SELECT next_seq FROM batches"
                             " WHERE name = 'two'"), 2);
}

static void
test_add_rollback(void **state)
{
    struct fx *fx = *state;
    struct queue_new_job job = {0};
    char key[65];
    int64_t bid, seq, conflict;
    int added;

    make_key(5, key);
    job.key = key;
    job.prompt = "p";
    job.model = "m";
    job.via = "direct";
    job.out_path = "/x/5.png";
    assert_int_equal(queue_add_begin(fx->q, "gone", "/x", &bid, &seq), 0);
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), 0);
    queue_add_rollback(fx->q);
    queue_add_rollback(fx->q);                  /* twice is fine */
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM jobs"), 0);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM batches"), 0);
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), NB_ESTATE);
}

static void
test_add_invalid(void **state)
{
    struct fx *fx = *state;
    struct queue_ref ref = {"relative/path.png",
        "0000000000000000000000000000000000000000000000000000000000000000"};
    struct queue_new_job job = {0};
    char key[65];
    int64_t bid, seq, conflict;
    int added;

    assert_int_equal(queue_add_begin(fx->q, "", "/x", &bid, &seq),
                     NB_EINVAL);
    assert_int_equal(queue_add_begin(fx->q, "new", NULL, &bid, &seq),
                     NB_EINVAL);
    assert_int_equal(queue_add_begin(fx->q, "b", "/x", &bid, &seq), 0);
    make_key(1, key);
    job.key = "ABCDEF";
    job.prompt = "p";
    job.model = "m";
    job.via = "direct";
    job.out_path = "/x/1.png";
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), NB_EINVAL);
    key[10] = 'G';
    job.key = key;
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), NB_EINVAL);
    make_key(1, key);
    job.via = "carrier-pigeon";
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), NB_EINVAL);
    job.via = "direct";
    job.n_refs = 1;
    job.refs = &ref;
    assert_int_equal(queue_add_job(fx->q, bid, seq, &job, &added,
                                   &conflict), NB_EINVAL);
    assert_int_equal(queue_add_job(fx->q, bid + 100, seq, &(struct
                     queue_new_job){.key = key, .prompt = "p", .model = "m",
                     .via = "direct", .out_path = "/x/2.png"}, &added,
                     &conflict), NB_EINVAL);
    queue_add_rollback(fx->q);
}

static void
test_add_fields_round_trip(void **state)
{
    struct fx *fx = *state;
    struct queue_ref refs[2] = {
        {"/refs/a.png",
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
        {"/refs/b \"quoted\".jpg",
         "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
    };
    struct queue_new_job job = {
        .prompt = "a fox in the snow, \"quoted\" and ünïcode",
        .model = "gemini-3-pro-image-preview", .aspect = "16:9",
        .size = "2K", .out_path = "/o/b/000009-a-fox.png", .via = "batch",
        .count_index = 2, .priority = 7, .not_before_ms = T0 + 5,
        .offpeak = 1, .n_refs = 2, .refs = refs,
    };
    struct queue_job *j;
    char key[65];
    int64_t bid, seq, conflict;
    int added;

    make_key(9, key);
    job.key = key;
    assert_int_equal(queue_add_begin(fx->q, "b", "/o/b", &bid, &seq), 0);
    assert_int_equal(queue_add_job(fx->q, bid, 9, &job, &added, &conflict),
                     0);
    assert_int_equal(queue_add_commit(fx->q), 0);
    j = get(fx->q, 1);
    assert_string_equal(j->key, key);
    assert_string_equal(j->batch, "b");
    assert_int_equal(j->batch_id, bid);
    assert_int_equal(j->seq, 9);
    assert_string_equal(j->prompt, job.prompt);
    assert_string_equal(j->model, job.model);
    assert_string_equal(j->aspect, "16:9");
    assert_string_equal(j->size, "2K");
    assert_string_equal(j->out_path, job.out_path);
    assert_string_equal(j->via, "batch");
    assert_int_equal(j->count_index, 2);
    assert_int_equal(j->priority, 7);
    assert_int_equal(j->not_before_ms, T0 + 5);
    assert_int_equal(j->offpeak, 1);
    assert_int_equal(j->state, QUEUE_QUEUED);
    assert_int_equal(j->attempts, 0);
    assert_int_equal(j->created_ms, T0);
    assert_int_equal(j->updated_ms, T0);
    assert_null(j->err_class);
    assert_null(j->lease_owner);
    assert_null(j->checkpoint);
    assert_int_equal(j->n_refs, 2);
    assert_string_equal(j->refs[1].path, refs[1].path);
    assert_string_equal(j->refs[1].sha256_hex, refs[1].sha256_hex);
    assert_string_equal(j->refs[0].sha256_hex, refs[0].sha256_hex);
    queue_job_free(j);
    assert_int_equal(queue_get(fx->q, 42, &j), NB_ENOTFOUND);
}

/* ---- claiming ----------------------------------------------------------- */

static void
test_claim_priority_then_age(void **state)
{
    struct fx *fx = *state;
    struct spec s = plain;
    static const int prio[] = {0, 5, 0, 5, 1, -3};
    static const int64_t want[] = {2, 4, 5, 1, 3, 6};
    int64_t ids[16];

    for (int i = 0; i < 6; i++) {
        s.priority = prio[i];
        add_range(fx->q, i + 1, i + 1, &s);
    }
    assert_int_equal(claim_ids(fx->q, "w", T0, NULL, 4, ids), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(ids[i], want[i]);
    assert_int_equal(claim_ids(fx->q, "w", T0, NULL, 10, ids), 2);
    assert_int_equal(ids[0], want[4]);
    assert_int_equal(ids[1], want[5]);
    assert_int_equal(claim_ids(fx->q, "w", T0, NULL, 10, ids), 0);
}

static void
test_claim_sets_checkpoint(void **state)
{
    struct fx *fx = *state;
    struct queue_job **jobs = NULL;
    size_t n = 0;

    add_range(fx->q, 1, 1, &plain);
    assert_int_equal(queue_claim(fx->q, "w", T0 + 7, LEASE, NULL, 0, &jobs,
                                 &n), 0);
    assert_int_equal(n, 0);
    assert_null(jobs);
    assert_int_equal(queue_claim(fx->q, "w", T0 + 7, LEASE, NULL, 3, &jobs,
                                 &n), 0);
    assert_int_equal(n, 1);
    assert_non_null(strstr(jobs[0]->checkpoint, "\"claimed\""));
    assert_non_null(strstr(jobs[0]->checkpoint, "1700000000007"));
    assert_string_equal(jobs[0]->batch, "b1");
    queue_jobs_free(jobs, n);
    assert_int_equal(queue_claim(fx->q, "", T0, LEASE, NULL, 3, &jobs, &n),
                     NB_EINVAL);
}

static void
test_claim_due_times(void **state)
{
    struct fx *fx = *state;
    struct spec later = plain;
    struct queue_attempt a = {
        .outcome = QUEUE_OUT_RETRY, .err_class = "transient",
        .started_ms = T0, .next_attempt_ms = T0 + 500,
    };
    int64_t ids[8], due = -1;

    later.not_before_ms = T0 + 1000;
    add_range(fx->q, 1, 1, &later);
    add_range(fx->q, 2, 2, &plain);
    assert_int_equal(queue_next_due(fx->q, NULL, &due), 0);
    assert_int_equal(due, 1);                   /* job 2 is due already */
    assert_int_equal(claim_ids(fx->q, "w", T0, NULL, 8, ids), 1);
    assert_int_equal(ids[0], 2);
    assert_int_equal(queue_finish(fx->q, 2, "w", &a), 0);

    assert_int_equal(queue_next_due(fx->q, NULL, &due), 0);
    assert_int_equal(due, T0 + 500);
    assert_int_equal(claim_ids(fx->q, "w", T0 + 499, NULL, 8, ids), 0);
    assert_int_equal(claim_ids(fx->q, "w", T0 + 500, NULL, 8, ids), 1);
    assert_int_equal(ids[0], 2);
    assert_int_equal(claim_ids(fx->q, "w", T0 + 999, NULL, 8, ids), 0);
    assert_int_equal(queue_next_due(fx->q, NULL, &due), 0);
    assert_int_equal(due, T0 + 1000);
    assert_int_equal(claim_ids(fx->q, "w", T0 + 1000, NULL, 8, ids), 1);
    assert_int_equal(ids[0], 1);
    assert_int_equal(queue_next_due(fx->q, NULL, &due), 0);
    assert_int_equal(due, 0);                   /* nothing queued */
}

static void
test_claim_paused_batch(void **state)
{
    struct fx *fx = *state;
    struct spec b2 = plain;
    int64_t ids[8], due = -1;

    b2.batch = "b2";
    add_range(fx->q, 1, 2, &plain);
    add_range(fx->q, 3, 3, &b2);
    assert_int_equal(queue_set_paused(fx->q, "b1", 1), 0);
    assert_int_equal(queue_set_paused(fx->q, "nope", 1), NB_ENOTFOUND);
    assert_int_equal(claim_ids(fx->q, "w", T0, NULL, 8, ids), 1);
    assert_int_equal(ids[0], 3);
    assert_int_equal(claim_ids(fx->q, "w", T0, NULL, 8, ids), 0);
    assert_int_equal(queue_next_due(fx->q, NULL, &due), 0);
    assert_int_equal(due, 0);                   /* paused jobs don't count */
    assert_int_equal(queue_set_paused(fx->q, "b1", 0), 0);
    assert_int_equal(claim_ids(fx->q, "w", T0, NULL, 8, ids), 2);
}

static void
test_claim_filters(void **state)
{
    struct fx *fx = *state;
    struct spec s = plain;
    const char *skip[] = {"m-b", "m-c"};
    struct queue_filter f = {0};
    int64_t ids[16], due = -1;

    add_range(fx->q, 1, 1, &s);                 /* b1 m-a direct */
    s.model = "m-b";
    add_range(fx->q, 2, 2, &s);                 /* b1 m-b direct */
    s.model = "m-a";
    s.via = "batch";
    add_range(fx->q, 3, 3, &s);                 /* b1 m-a batch */
    s.via = "direct";
    s.offpeak = 1;
    add_range(fx->q, 4, 4, &s);                 /* b1 m-a offpeak */
    s.offpeak = 0;
    s.batch = "b2";
    add_range(fx->q, 5, 5, &s);                 /* b2 m-a direct */
    s.model = "m-c";
    add_range(fx->q, 6, 6, &s);                 /* b2 m-c direct */

    f.skip_models = skip;
    f.n_skip_models = 2;
    f.via = "direct";
    f.skip_offpeak = 1;
    f.batch = "b1";
    assert_int_equal(queue_next_due(fx->q, &f, &due), 0);
    assert_int_equal(due, 1);
    assert_int_equal(claim_ids(fx->q, "w", T0, &f, 16, ids), 1);
    assert_int_equal(ids[0], 1);

    f.batch = NULL;
    assert_int_equal(claim_ids(fx->q, "w", T0, &f, 16, ids), 1);
    assert_int_equal(ids[0], 5);

    f.skip_offpeak = 0;
    assert_int_equal(claim_ids(fx->q, "w", T0, &f, 16, ids), 1);
    assert_int_equal(ids[0], 4);

    f.via = "batch";
    assert_int_equal(claim_ids(fx->q, "w", T0, &f, 16, ids), 1);
    assert_int_equal(ids[0], 3);

    f.via = NULL;
    f.n_skip_models = 1;                         /* only m-b skipped */
    assert_int_equal(claim_ids(fx->q, "w", T0, &f, 16, ids), 1);
    assert_int_equal(ids[0], 6);

    f.batch = "no-such-batch";
    f.n_skip_models = 0;
    assert_int_equal(claim_ids(fx->q, "w", T0, &f, 16, ids), 0);
    assert_int_equal(claim_ids(fx->q, "w", T0, NULL, 16, ids), 1);
    assert_int_equal(ids[0], 2);
}

struct claimer {
    const char *path;
    char owner[16];
    int64_t ids[1200];
    size_t n;
    int rc;
};

static void *
claim_loop(void *arg)
{
    struct claimer *c = arg;
    struct queue *q = NULL;
    struct queue_job **jobs;
    size_t n;

    c->rc = queue_open(c->path, &q, NULL, 0);
    while (c->rc == 0) {
        c->rc = queue_claim(q, c->owner, T0, LEASE, NULL, 7, &jobs, &n);
        if (c->rc != 0 || n == 0)
            break;
        for (size_t i = 0; i < n && c->n < 1200; i++)
            c->ids[c->n++] = jobs[i]->id;
        queue_jobs_free(jobs, n);
    }
    queue_close(q);
    return NULL;
}

static void
test_claim_concurrent(void **state)
{
    struct fx *fx = *state;
    enum { JOBS = 600 };
    static struct claimer c[2];
    static char seen[JOBS + 1];
    struct queue_new_job job = {.prompt = "p", .model = "m",
                                .via = "direct"};
    pthread_t th[2];
    char key[65], out[64];
    int64_t bid, seq, conflict;
    int added;

    assert_int_equal(queue_add_begin(fx->q, "b1", "/o", &bid, &seq), 0);
    job.key = key;
    job.out_path = out;
    for (int i = 1; i <= JOBS; i++) {
        make_key(i, key);
        snprintf(out, sizeof(out), "/o/%d.png", i);
        assert_int_equal(queue_add_job(fx->q, bid, seq++, &job, &added,
                                       &conflict), 0);
    }
    assert_int_equal(queue_add_commit(fx->q), 0);

    memset(c, 0, sizeof(c));
    memset(seen, 0, sizeof(seen));
    for (int t = 0; t < 2; t++) {
        c[t].path = fx->path;
        snprintf(c[t].owner, sizeof(c[t].owner), "thread-%d", t);
        assert_int_equal(pthread_create(&th[t], NULL, claim_loop, &c[t]), 0);
    }
    for (int t = 0; t < 2; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(c[t].rc, 0);
        for (size_t i = 0; i < c[t].n; i++) {
            assert_true(c[t].ids[i] >= 1 && c[t].ids[i] <= JOBS);
            assert_int_equal(seen[c[t].ids[i]], 0);      /* never twice */
            seen[c[t].ids[i]] = 1;
        }
    }
    assert_int_equal(c[0].n + c[1].n, JOBS);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM jobs"
                             " WHERE state = 1"), JOBS);
}

/* ---- finishing ---------------------------------------------------------- */

static int
count_attempts(const struct queue_attempt_row *r, void *arg)
{
    (*(int *)arg)++;
    return 0;
}

static int
n_attempts(struct queue *q, int64_t job_id)
{
    int n = 0;

    assert_int_equal(queue_attempts(q, job_id, count_attempts, &n), 0);
    return n;
}

struct last_row {
    char outcome[32];
    char err_class[32];
    char output_path[64];
    char message[64];
    int http_status;
    int64_t started_ms, latency_ms, output_tokens;
    double cost_usd;
};

static int
keep_last(const struct queue_attempt_row *r, void *arg)
{
    struct last_row *l = arg;

    snprintf(l->outcome, sizeof(l->outcome), "%s", r->outcome);
    snprintf(l->err_class, sizeof(l->err_class), "%s",
             r->err_class ? r->err_class : "");
    snprintf(l->output_path, sizeof(l->output_path), "%s",
             r->output_path ? r->output_path : "");
    snprintf(l->message, sizeof(l->message), "%s",
             r->message ? r->message : "");
    l->http_status = r->http_status;
    l->started_ms = r->started_ms;
    l->latency_ms = r->latency_ms;
    l->output_tokens = r->output_tokens;
    l->cost_usd = r->cost_usd;
    return 0;
}

static struct last_row
last_attempt(struct queue *q, int64_t job_id)
{
    struct last_row l;

    memset(&l, 0, sizeof(l));
    assert_int_equal(queue_attempts(q, job_id, keep_last, &l), 0);
    return l;
}

static void
test_finish_done(void **state)
{
    struct fx *fx = *state;
    struct queue_attempt a = {
        .outcome = QUEUE_OUT_DONE, .http_status = 200, .started_ms = T0,
        .latency_ms = 1234, .output_path = "/out/b1/000001.png",
        .response_id = "r-1", .model_version = "mv", .prompt_tokens = 10,
        .output_tokens = 1290, .cost_usd = 0.039,
    };
    struct queue_attempt err = {
        .outcome = QUEUE_OUT_RETRY, .err_class = "transient",
        .http_status = 503, .api_status = "UNAVAILABLE", .message = "busy",
        .started_ms = T0, .next_attempt_ms = T0,
    };
    struct queue_job *j;
    struct last_row l;
    int64_t ids[4];

    add_range(fx->q, 1, 1, &plain);
    claim_ids(fx->q, "w", T0, NULL, 1, ids);
    assert_int_equal(queue_finish(fx->q, 1, "w", &err), 0);
    claim_ids(fx->q, "w", T0, NULL, 1, ids);
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), 0);
    j = get(fx->q, 1);
    assert_int_equal(j->state, QUEUE_DONE);
    assert_int_equal(j->attempts, 2);
    assert_int_equal(j->attempts_transient, 1);
    assert_null(j->lease_owner);
    assert_int_equal(j->lease_expires_ms, 0);
    assert_null(j->err_class);
    assert_null(j->err_message);
    assert_int_equal(j->err_http, 0);
    assert_int_equal(j->updated_ms, T0 + 1234);
    queue_job_free(j);
    l = last_attempt(fx->q, 1);
    assert_string_equal(l.outcome, "done");
    assert_string_equal(l.output_path, "/out/b1/000001.png");
    assert_int_equal(l.latency_ms, 1234);
    assert_int_equal(l.output_tokens, 1290);
    assert_true(l.cost_usd > 0.0389 && l.cost_usd < 0.0391);
    assert_int_equal(n_attempts(fx->q, 1), 2);
    /* A second finish finds no lease. */
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), NB_ELEASE);
    assert_int_equal(n_attempts(fx->q, 1), 2);
    assert_int_equal(queue_finish(fx->q, 99, "w", &a), NB_ENOTFOUND);
}

static void
test_finish_retry_classes(void **state)
{
    struct fx *fx = *state;
    struct queue_attempt a = {
        .outcome = QUEUE_OUT_RETRY, .err_class = "transient",
        .http_status = 429, .api_status = "RESOURCE_EXHAUSTED",
        .message = "slow down", .started_ms = T0, .latency_ms = 10,
        .next_attempt_ms = T0 + 100,
    };
    struct queue_job *j;
    int64_t ids[4];

    add_range(fx->q, 1, 1, &plain);
    claim_ids(fx->q, "w", T0, NULL, 1, ids);
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), 0);
    j = get(fx->q, 1);
    assert_int_equal(j->state, QUEUE_QUEUED);
    assert_int_equal(j->attempts, 1);
    assert_int_equal(j->attempts_transient, 1);
    assert_int_equal(j->attempts_soft, 0);
    assert_int_equal(j->next_attempt_ms, T0 + 100);
    assert_string_equal(j->err_class, "transient");
    assert_int_equal(j->err_http, 429);
    assert_string_equal(j->err_status, "RESOURCE_EXHAUSTED");
    assert_string_equal(j->err_message, "slow down");
    assert_null(j->lease_owner);
    queue_job_free(j);

    a.err_class = "soft";
    a.http_status = 200;
    a.next_attempt_ms = T0 + 200;
    claim_ids(fx->q, "w", T0 + 100, NULL, 1, ids);
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), 0);
    j = get(fx->q, 1);
    assert_int_equal(j->attempts, 2);
    assert_int_equal(j->attempts_transient, 1);
    assert_int_equal(j->attempts_soft, 1);
    queue_job_free(j);

    a.outcome = QUEUE_OUT_FAILED;
    claim_ids(fx->q, "w", T0 + 200, NULL, 1, ids);
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), 0);
    j = get(fx->q, 1);
    assert_int_equal(j->state, QUEUE_FAILED);
    assert_int_equal(j->attempts, 3);
    assert_int_equal(j->attempts_soft, 2);
    assert_int_equal(j->next_attempt_ms, T0 + 200);
    queue_job_free(j);
    assert_string_equal(last_attempt(fx->q, 1).outcome, "failed");
    assert_int_equal(n_attempts(fx->q, 1), 3);
}

static void
test_finish_blocked_release_cancelled(void **state)
{
    struct fx *fx = *state;
    struct queue_attempt a = {
        .outcome = QUEUE_OUT_RELEASE, .started_ms = T0,
    };
    struct queue_job *j;
    int64_t ids[4];

    add_range(fx->q, 1, 2, &plain);
    claim_ids(fx->q, "w", T0, NULL, 2, ids);
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), 0);
    j = get(fx->q, 1);
    assert_int_equal(j->state, QUEUE_QUEUED);
    assert_int_equal(j->attempts, 0);            /* release counts nothing */
    assert_null(j->lease_owner);
    queue_job_free(j);
    assert_string_equal(last_attempt(fx->q, 1).outcome, "released");

    a.outcome = QUEUE_OUT_BLOCKED;
    a.err_class = "permanent";
    a.http_status = 400;
    a.message = "safety";
    assert_int_equal(queue_finish(fx->q, 2, "w", &a), 0);
    j = get(fx->q, 2);
    assert_int_equal(j->state, QUEUE_BLOCKED);
    assert_int_equal(j->attempts, 1);
    assert_int_equal(j->attempts_transient + j->attempts_soft, 0);
    assert_string_equal(j->err_class, "permanent");
    queue_job_free(j);

    claim_ids(fx->q, "w", T0, NULL, 1, ids);
    a.outcome = QUEUE_OUT_CANCELLED;
    a.err_class = NULL;
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), 0);
    assert_int_equal(get_state(fx->q, 1), QUEUE_CANCELLED);
    assert_string_equal(last_attempt(fx->q, 1).outcome, "cancelled");

    a.outcome = 42;
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), NB_EINVAL);
}

static void
test_lease_lost(void **state)
{
    struct fx *fx = *state;
    struct queue_attempt a = {.outcome = QUEUE_OUT_DONE, .started_ms = T0};
    int64_t ids[4], n = 0;
    int reclaimed = -1;

    add_range(fx->q, 1, 2, &plain);
    claim_ids(fx->q, "A", T0, NULL, 2, ids);
    /* Another owner cannot finish A's job. */
    assert_int_equal(queue_finish(fx->q, 1, "B", &a), NB_ELEASE);
    assert_non_null(strstr(queue_errmsg(fx->q), "job 1"));
    /* The lease expires and is reclaimed: A's late finish loses. */
    assert_int_equal(queue_reclaim(fx->q, T0 + LEASE + 1, NULL, NULL,
                                   &reclaimed), 0);
    assert_int_equal(reclaimed, 2);
    assert_int_equal(queue_finish(fx->q, 1, "A", &a), NB_ELEASE);
    assert_int_equal(get_state(fx->q, 1), QUEUE_QUEUED);
    assert_int_equal(n_attempts(fx->q, 1), 1);   /* only "interrupted" */
    /* A cancel wins over a running attempt too. */
    claim_ids(fx->q, "A", T0 + LEASE + 2, NULL, 1, ids);
    assert_int_equal(queue_cancel(fx->q, ids[0], NULL, T0 + LEASE + 3, &n),
                     0);
    assert_int_equal(n, 1);
    assert_int_equal(queue_finish(fx->q, ids[0], "A", &a), NB_ELEASE);
    assert_int_equal(get_state(fx->q, ids[0]), QUEUE_CANCELLED);
    assert_int_equal(queue_checkpoint(fx->q, ids[0], "A", "{}"),
                     NB_ELEASE);
}

static void
test_renew_and_checkpoint(void **state)
{
    struct fx *fx = *state;
    struct queue_job *j;
    int64_t ids[4];
    int reclaimed = -1;
    char big[5000];

    add_range(fx->q, 1, 2, &plain);
    claim_ids(fx->q, "A", T0, NULL, 1, ids);
    claim_ids(fx->q, "B", T0, NULL, 1, ids);
    assert_int_equal(queue_renew(fx->q, "A", T0 + 10 * LEASE), 0);
    assert_int_equal(queue_checkpoint(fx->q, 1, "A",
                                      "{\"phase\":\"writing\"}"), 0);
    assert_int_equal(queue_checkpoint(fx->q, 1, "B", "{}"), NB_ELEASE);
    assert_int_equal(queue_checkpoint(fx->q, 77, "A", "{}"), NB_ENOTFOUND);
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(queue_checkpoint(fx->q, 1, "A", big), NB_ELIMIT);
    j = get(fx->q, 1);
    assert_int_equal(j->lease_expires_ms, T0 + 10 * LEASE);
    assert_string_equal(j->checkpoint, "{\"phase\":\"writing\"}");
    queue_job_free(j);
    /* Only B's job has expired. */
    assert_int_equal(queue_reclaim(fx->q, T0 + 2 * LEASE, NULL, NULL,
                                   &reclaimed), 0);
    assert_int_equal(reclaimed, 1);
    assert_int_equal(get_state(fx->q, 1), QUEUE_RUNNING);
    assert_int_equal(get_state(fx->q, 2), QUEUE_QUEUED);
}

static int
alive_unless_dead(const char *owner, void *arg)
{
    (*(int *)arg)++;
    return strcmp(owner, "dead") != 0;
}

static void
test_reclaim_dead_owner(void **state)
{
    struct fx *fx = *state;
    struct queue_attempt a = {
        .outcome = QUEUE_OUT_RETRY, .err_class = "transient",
        .started_ms = T0, .next_attempt_ms = T0,
    };
    struct queue_job *j;
    struct last_row l;
    int64_t ids[8];
    int reclaimed = -1, calls = 0;

    add_range(fx->q, 1, 4, &plain);
    claim_ids(fx->q, "w", T0, NULL, 1, ids);
    assert_int_equal(queue_finish(fx->q, 1, "w", &a), 0);
    claim_ids(fx->q, "dead", T0, NULL, 2, ids);    /* 1, 2 */
    claim_ids(fx->q, "alive", T0, NULL, 1, ids);   /* 3 */
    assert_int_equal(queue_reclaim(fx->q, T0 + 10, alive_unless_dead,
                                   &calls, &reclaimed), 0);
    assert_int_equal(reclaimed, 2);
    assert_int_equal(calls, 2);                   /* once per owner */
    j = get(fx->q, 1);
    assert_int_equal(j->state, QUEUE_QUEUED);
    assert_int_equal(j->attempts, 2);             /* counted ... */
    assert_int_equal(j->attempts_transient, 1);   /* ... but not by class */
    assert_string_equal(j->err_class, "interrupted");
    assert_null(j->lease_owner);
    queue_job_free(j);
    l = last_attempt(fx->q, 1);
    assert_string_equal(l.outcome, "interrupted");
    assert_string_equal(l.err_class, "interrupted");
    assert_int_equal(l.started_ms, T0);
    assert_int_equal(l.latency_ms, 10);
    assert_non_null(strstr(l.message, "dead"));
    assert_int_equal(get_state(fx->q, 3), QUEUE_RUNNING);
    assert_int_equal(get_state(fx->q, 4), QUEUE_QUEUED);
}

static void
test_release_all(void **state)
{
    struct fx *fx = *state;
    struct queue_job *j;
    int64_t ids[8];

    add_range(fx->q, 1, 3, &plain);
    claim_ids(fx->q, "A", T0, NULL, 2, ids);
    claim_ids(fx->q, "B", T0, NULL, 1, ids);
    assert_int_equal(queue_release_all(fx->q, "A", T0 + 5), 0);
    j = get(fx->q, 1);
    assert_int_equal(j->state, QUEUE_QUEUED);
    assert_int_equal(j->attempts, 0);
    assert_null(j->lease_owner);
    queue_job_free(j);
    assert_string_equal(last_attempt(fx->q, 2).outcome, "released");
    assert_int_equal(get_state(fx->q, 3), QUEUE_RUNNING);
}

static void
test_mark_done(void **state)
{
    struct fx *fx = *state;
    struct queue_job *j;
    struct last_row l;
    int64_t ids[4], n;

    add_range(fx->q, 1, 3, &plain);
    claim_ids(fx->q, "gone", T0, NULL, 1, ids);
    assert_int_equal(queue_mark_done(fx->q, 1, "/out/b1/000001.png",
                                     T0 + 9), 0);
    j = get(fx->q, 1);
    assert_int_equal(j->state, QUEUE_DONE);
    assert_null(j->lease_owner);
    queue_job_free(j);
    l = last_attempt(fx->q, 1);
    assert_string_equal(l.outcome, "recovered");
    assert_string_equal(l.output_path, "/out/b1/000001.png");
    /* Done already: nothing more recorded. */
    assert_int_equal(queue_mark_done(fx->q, 1, "/x", T0 + 10), 0);
    assert_int_equal(n_attempts(fx->q, 1), 1);
    assert_int_equal(queue_mark_done(fx->q, 2, "/out/b1/000002.png", T0),
                     0);
    assert_int_equal(get_state(fx->q, 2), QUEUE_DONE);
    assert_int_equal(queue_cancel(fx->q, 3, NULL, T0, &n), 0);
    assert_int_equal(queue_mark_done(fx->q, 3, "/x", T0), NB_ESTATE);
    assert_int_equal(queue_mark_done(fx->q, 33, "/x", T0), NB_ENOTFOUND);
}

/* ---- looking and user actions ------------------------------------------- */

struct counts {
    int64_t c[8][QUEUE_NSTATES];
    int64_t total[8];
    char names[8][16];
    int paused[8];
    int n;
};

static int
collect_status(const struct queue_batch_status *s, void *arg)
{
    struct counts *c = arg;

    assert_true(c->n < 8);
    memcpy(c->c[c->n], s->counts, sizeof(s->counts));
    c->total[c->n] = s->total;
    c->paused[c->n] = s->paused;
    snprintf(c->names[c->n], sizeof(c->names[0]), "%s", s->name);
    c->n++;
    return 0;
}

/* Checks the trigger-kept counters of every batch against COUNT(*). */
static void
check_counts(struct fx *fx)
{
    struct counts c;
    char sql[256];

    memset(&c, 0, sizeof(c));
    assert_int_equal(queue_status(fx->q, NULL, collect_status, &c), 0);
    for (int b = 0; b < c.n; b++) {
        int64_t sum = 0;

        for (int s = 0; s < QUEUE_NSTATES; s++) {
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM jobs j JOIN"
                     " batches b ON b.id = j.batch_id WHERE b.name = '%s'"
                     " AND j.state = %d", c.names[b], s);
            assert_int_equal(c.c[b][s], sql_int(fx->path, sql));
            sum += c.c[b][s];
        }
        assert_int_equal(sum, c.total[b]);
    }
}

static void
test_status_counters_random(void **state)
{
    struct fx *fx = *state;
    const char *owners[] = {"o1", "o2", "o3"};
    struct spec s = plain;
    struct queue_attempt a = {.started_ms = T0};
    struct queue_job **jobs;
    int64_t now = T0, n;
    size_t got;
    unsigned seed = 12345;
    int next = 1;

    for (int step = 0; step < 400; step++) {
        int op = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 10;
        const char *owner = owners[(seed >> 8) % 3];

        now += 10;
        if (op <= 2) {
            s.batch = (seed >> 4) & 1 ? "b1" : "b2";
            assert_true(add_job(fx->q, next++, &s) >= 0);
        } else if (op <= 4) {
            assert_int_equal(queue_claim(fx->q, owner, now, 50, NULL, 3,
                                         &jobs, &got), 0);
            for (size_t i = 0; i < got; i++) {
                a.outcome = (int)((seed >> (3 * i)) % 6);
                a.err_class = a.outcome == QUEUE_OUT_RETRY ? "soft" : NULL;
                a.next_attempt_ms = now;
                if (i % 2 == 0)
                    assert_int_equal(queue_finish(fx->q, jobs[i]->id, owner,
                                                  &a), 0);
            }
            queue_jobs_free(jobs, got);
        } else if (op == 5) {
            assert_int_equal(queue_reclaim(fx->q, now, NULL, NULL, NULL), 0);
        } else if (op == 6) {
            assert_int_equal(queue_retry(fx->q, 0, NULL, now, &n), 0);
        } else if (op == 7) {
            if (next > 1)
                assert_int_equal(queue_cancel(fx->q, (int64_t)(seed %
                                 (unsigned)(next - 1)) + 1, NULL, now, &n),
                                 0);
        } else if (op == 8) {
            assert_int_equal(queue_release_all(fx->q, owner, now), 0);
        } else {
            queue_mark_done(fx->q, (int64_t)(seed % (unsigned)next), "/x",
                            now);
        }
        if (step % 50 == 0)
            check_counts(fx);
    }
    check_counts(fx);
    /* Deleting jobs keeps the counters right too. */
    sql_exec(fx->path, "DELETE FROM jobs WHERE id % 3 = 0");
    check_counts(fx);
}

/*
 * Adds job number i (key from i) to batch in the open add transaction,
 * joining it; its output path is made from batch and out_i.  Returns
 * *added, or a negative code.
 */
static int
add_open(struct queue *q, const char *batch, int i, int out_i,
         int64_t *conflict)
{
    struct queue_new_job job = {0};
    char key[65], out[128], prompt[64];
    int64_t bid, seq;
    int added = -1, rc;

    make_key(i, key);
    snprintf(out, sizeof(out), "/out/%s/%06d.png", batch, out_i);
    snprintf(prompt, sizeof(prompt), "prompt number %d", i);
    job.key = key;
    job.prompt = prompt;
    job.model = "m-a";
    job.out_path = out;
    job.via = "direct";
    rc = queue_add_begin(q, batch, "/out/dir", &bid, &seq);
    if (rc == 0)
        rc = queue_add_job(q, bid, seq, &job, &added, conflict);
    return rc != 0 ? rc : added;
}

/*
 * The add functions count new jobs themselves (there is no insert
 * trigger): adds that fill several batches in one transaction, with keys
 * already queued, clashing output paths, rollbacks and commits after a
 * clash, mixed with claims and finishes, keep every counter equal to
 * COUNT(*).
 */
static void
test_status_counters_multi_batch_adds(void **state)
{
    struct fx *fx = *state;
    const char *batches[] = {"b1", "b2", "b3"};
    struct queue_attempt a = {.started_ms = T0};
    struct queue_job **jobs;
    int64_t conflict, now = T0, jobs_before;
    unsigned seed = 4242;
    size_t got;
    int next = 1;

#define RND() ((seed = seed * 1103515245u + 12345u) >> 16)
    for (int round = 0; round < 80; round++) {
        int n = 1 + (int)(RND() % 12), fate = (int)(RND() % 4);
        const char *last_b = NULL;
        int added = 0, last_i = 0, rc;

        jobs_before = sql_int(fx->path, "SELECT count(*) FROM jobs");
        for (int k = 0; k < n; k++) {
            const char *b = batches[RND() % 3];
            /* now and then a key that may be queued already */
            int i = RND() % 4 == 0 ? 1 + (int)(RND() % (unsigned)next)
                                   : next++;

            rc = add_open(fx->q, b, i, i, &conflict);
            assert_true(rc == 0 || rc == 1);
            added += rc;
            if (rc == 1) {
                last_b = b;
                last_i = i;
            }
        }
        if (fate == 1 && last_b != NULL) {
            /* a new key on the path of a job of this transaction */
            conflict = 0;
            rc = add_open(fx->q, last_b, next++, last_i, &conflict);
            assert_int_equal(rc, NB_EEXIST);
            assert_true(conflict > 0);
        }
        if (fate == 0) {
            queue_add_rollback(fx->q);
            added = 0;
        } else {
            assert_int_equal(queue_add_commit(fx->q), 0);
        }
        assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM jobs"),
                         jobs_before + added);

        now += 10;
        assert_int_equal(queue_claim(fx->q, "o", now, 50, NULL, 2, &jobs,
                                     &got), 0);
        for (size_t j = 0; j < got; j++) {
            a.outcome = j == 0 ? QUEUE_OUT_DONE : QUEUE_OUT_FAILED;
            assert_int_equal(queue_finish(fx->q, jobs[j]->id, "o", &a), 0);
        }
        queue_jobs_free(jobs, got);
        check_counts(fx);
    }
#undef RND
    assert_true(sql_int(fx->path, "SELECT count(*) FROM jobs") > 100);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM sqlite_schema"
                             " WHERE type = 'trigger' AND tbl_name = 'jobs'"
                             " AND sql LIKE '%AFTER INSERT%'"), 0);
}

/* ---- Batch mode: remote chunks ------------------------------------------ */

static const struct spec batchy = {"b1", 0, "m-a", "batch", 0, 0};

struct chunk_seen {
    int n;
    char phase[16];
    char remote_name[64];
    int64_t counts[QUEUE_NSTATES];
    int64_t polls;
};

static int
chunk_cb(const struct queue_remote *r, void *arg)
{
    struct chunk_seen *cs = arg;

    cs->n++;
    snprintf(cs->phase, sizeof(cs->phase), "%s", r->phase);
    snprintf(cs->remote_name, sizeof(cs->remote_name), "%s",
             r->remote_name ? r->remote_name : "");
    memcpy(cs->counts, r->counts, sizeof(cs->counts));
    cs->polls = r->polls;
    return 0;
}

static int
count_job(const struct queue_job *job, void *arg)
{
    (void)job;
    (*(int *)arg)++;
    return 0;
}

static void
test_remote_chunk_life(void **state)
{
    struct fx *fx = *state;
    struct queue_filter f = {.via = "batch"};
    struct queue_remote_update u = {
        .uploaded_ms = -1, .submitted_ms = -1, .ended_ms = -1,
    };
    struct queue_attempt done = {
        .outcome = QUEUE_OUT_DONE, .started_ms = T0, .output_path = "/x",
        .cost_usd = 0.0195,
    };
    struct chunk_seen cs = {0};
    struct queue_job *j;
    int64_t ids[8], rid = 0, n = -1;
    int held = 0, reclaimed = -1;

    add_range(fx->q, 1, 3, &batchy);
    assert_int_equal(claim_ids(fx->q, "run", T0, &f, 8, ids), 3);
    assert_int_equal(queue_remote_create(fx->q, "run", 1, "m-a", "nb-1",
                                         ids, 3, T0, &rid), 0);
    j = get(fx->q, 2);
    assert_string_equal(j->lease_owner, "remote:1");
    assert_int_equal(j->state, QUEUE_RUNNING);
    assert_non_null(strstr(j->checkpoint, "nb-1"));
    queue_job_free(j);
    /* Runs die; the chunk's jobs are not reclaimed. */
    assert_int_equal(queue_reclaim(fx->q, T0 + 10 * LEASE, NULL, NULL,
                                   &reclaimed), 0);
    assert_int_equal(reclaimed, 0);
    assert_int_equal(queue_remote_jobs(fx->q, rid, count_job, &held), 0);
    assert_int_equal(held, 3);
    /* Its phases. */
    u.phase = QUEUE_REMOTE_SUBMITTED;
    u.remote_name = "batches/abc";
    u.add_poll = 1;
    assert_int_equal(queue_remote_update(fx->q, rid, &u, T0 + 1), 0);
    assert_int_equal(queue_remote_list(fx->q, NULL, 1, chunk_cb, &cs), 0);
    assert_int_equal(cs.n, 1);
    assert_string_equal(cs.phase, "submitted");
    assert_string_equal(cs.remote_name, "batches/abc");
    assert_int_equal(cs.counts[QUEUE_RUNNING], 3);
    assert_int_equal(cs.polls, 1);
    /* One result recorded under the chunk's owner. */
    assert_int_equal(queue_finish(fx->q, 1, "remote:1", &done), 0);
    assert_int_equal(queue_finish(fx->q, 2, "run", &done), NB_ELEASE);
    /* The batch expired: the rest go back to queued. */
    assert_int_equal(queue_remote_end(fx->q, rid, QUEUE_REMOTE_RESUBMIT,
                                      "expired", T0 + 2, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(get_state(fx->q, 2), QUEUE_QUEUED);
    assert_int_equal(get_state(fx->q, 1), QUEUE_DONE);
    assert_string_equal(last_attempt(fx->q, 3).outcome, "released");
    memset(&cs, 0, sizeof(cs));
    assert_int_equal(queue_remote_list(fx->q, NULL, 1, chunk_cb, &cs), 0);
    assert_int_equal(cs.n, 0);
    assert_int_equal(queue_remote_list(fx->q, "b1", 0, chunk_cb, &cs), 0);
    assert_string_equal(cs.phase, "resubmitted");
    /* Ending it again changes nothing. */
    assert_int_equal(queue_remote_end(fx->q, rid, QUEUE_REMOTE_CANCELLED,
                                      "late", T0 + 3, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(queue_remote_list(fx->q, "b1", 0, chunk_cb, &cs), 0);
    assert_string_equal(cs.phase, "resubmitted");
    /* A step under way when it ended cannot bring it back. */
    u.phase = QUEUE_REMOTE_SUBMITTED;
    u.remote_name = "batches/late";
    assert_int_equal(queue_remote_update(fx->q, rid, &u, T0 + 4),
                     NB_ESTATE);
    assert_int_equal(queue_remote_list(fx->q, "b1", 0, chunk_cb, &cs), 0);
    assert_string_equal(cs.phase, "resubmitted");
    assert_string_equal(cs.remote_name, "batches/abc");
    assert_int_equal(queue_remote_update(fx->q, 99, &u, T0 + 4),
                     NB_ENOTFOUND);
    assert_int_equal(sql_int(fx->path, "SELECT CAST(round(spent_usd *"
                             " 10000) AS INTEGER) FROM batches"), 195);
}

static void
test_remote_create_checks(void **state)
{
    struct fx *fx = *state;
    struct queue_filter f = {.via = "batch"};
    int64_t ids[8], rid = 0, bad[2] = {1, 2};

    add_range(fx->q, 1, 2, &batchy);
    add_job(fx->q, 3, &plain);
    assert_int_equal(claim_ids(fx->q, "run", T0, &f, 1, ids), 1);
    /* Job 2 is not claimed by this run: nothing is recorded. */
    assert_int_equal(queue_remote_create(fx->q, "run", 1, "m-a", "nb-1",
                                         bad, 2, T0, &rid), NB_ELEASE);
    assert_int_equal(get_state(fx->q, 1), QUEUE_RUNNING);
    assert_int_equal(sql_int(fx->path, "SELECT count(*) FROM"
                             " remote_batches"), 0);
    assert_int_equal(queue_remote_create(fx->q, "run", 1, "m-a", "nb-1",
                                         ids, 1, T0, &rid), 0);
    claim_ids(fx->q, "run", T0, &f, 1, ids);
    assert_int_equal(queue_remote_create(fx->q, "run", 1, "m-a", "nb-1",
                                         ids, 1, T0, &rid), NB_EEXIST);
    /* A direct job never goes into a chunk. */
    claim_ids(fx->q, "run", T0, NULL, 1, ids);
    assert_int_equal(ids[0], 3);
    assert_int_equal(queue_remote_create(fx->q, "run", 1, "m-a", "nb-2",
                                         ids, 1, T0, &rid), NB_ELEASE);
}

static int
never_alive(const char *owner, void *arg)
{
    (void)owner;
    (void)arg;
    return 0;
}

static int
always_alive(const char *owner, void *arg)
{
    (void)owner;
    (void)arg;
    return 1;
}

static void
test_remote_follow(void **state)
{
    struct fx *fx = *state;
    struct queue_filter f = {.via = "batch"};
    int64_t ids[8], rid = 0;

    add_range(fx->q, 1, 1, &batchy);
    claim_ids(fx->q, "A", T0, &f, 1, ids);
    assert_int_equal(queue_remote_create(fx->q, "A", 1, "m-a", "nb-1",
                                         ids, 1, T0, &rid), 0);
    /* Its maker follows it from the start: no other run adopts it. */
    assert_int_equal(queue_remote_follow(fx->q, rid, "B", T0, 1000,
                                         always_alive, NULL), NB_ELEASE);
    assert_int_equal(queue_remote_follow(fx->q, rid, "A", T0, 1000,
                                         always_alive, NULL), 0);
    assert_int_equal(queue_remote_follow(fx->q, rid, "B", T0 + 10, 1000,
                                         always_alive, NULL), NB_ELEASE);
    assert_int_equal(queue_remote_follow(fx->q, rid, "A", T0 + 10, 1000,
                                         always_alive, NULL), 0);
    /* A dead follower, or an expired one, gives way. */
    assert_int_equal(queue_remote_follow(fx->q, rid, "B", T0 + 20, 1000,
                                         never_alive, NULL), 0);
    assert_int_equal(queue_remote_follow(fx->q, rid, "C", T0 + 5000, 1000,
                                         always_alive, NULL), 0);
    assert_int_equal(queue_remote_unfollow(fx->q, "C"), 0);
    assert_int_equal(queue_remote_follow(fx->q, rid, "D", T0 + 5001, 1000,
                                         always_alive, NULL), 0);
    assert_int_equal(queue_remote_follow(fx->q, 99, "D", T0, 1000, NULL,
                                         NULL), NB_ENOTFOUND);
}

/* A version 1 file (insert trigger) migrates and counts exactly after. */
static void
test_migrate_v1_counts(void **state)
{
    struct fx *fx = *state;
    const char *d = getenv("NB_TESTDATA");
    char path[512], *sql;
    FILE *f;
    long len;

    queue_close(fx->q);
    fx->q = NULL;
    remove_db(fx->path);
    snprintf(path, sizeof(path), "%s/queue/schema-v1.sql",
             d != NULL ? d : "tests/data");
    assert_non_null(f = fopen(path, "r"));
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    assert_true((len = ftell(f)) > 0);
    rewind(f);
    assert_non_null(sql = calloc(1, (size_t)len + 1));
    assert_int_equal(fread(sql, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    sql_exec(fx->path, sql);
    free(sql);
    assert_int_equal(sql_int(fx->path, "PRAGMA user_version"), 1);

    assert_int_equal(queue_open(fx->path, &fx->q, NULL, 0), 0);
    queue_set_clock(fx->q, T0);
    assert_true(sql_int(fx->path, "PRAGMA user_version") >= 2);
    check_counts(fx);
    assert_int_equal(add_open(fx->q, "v1", 2, 2, NULL), 1);
    assert_int_equal(add_open(fx->q, "b2", 3, 3, NULL), 1);
    assert_int_equal(queue_add_commit(fx->q), 0);
    check_counts(fx);
    assert_int_equal(sql_int(fx->path, "SELECT n FROM batch_counts"
                             " WHERE id = 8"), 2);
}

static void
test_status_batches(void **state)
{
    struct fx *fx = *state;
    struct spec b2 = plain;
    struct counts c;
    int64_t n = -1;

    b2.batch = "b2";
    add_range(fx->q, 1, 3, &plain);
    add_range(fx->q, 4, 4, &b2);
    assert_int_equal(queue_set_paused(fx->q, "b2", 1), 0);
    memset(&c, 0, sizeof(c));
    assert_int_equal(queue_status(fx->q, NULL, collect_status, &c), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.names[0], "b1");      /* creation order */
    assert_int_equal(c.total[0], 3);
    assert_int_equal(c.c[0][QUEUE_QUEUED], 3);
    assert_int_equal(c.paused[0], 0);
    assert_int_equal(c.paused[1], 1);
    memset(&c, 0, sizeof(c));
    assert_int_equal(queue_status(fx->q, "b2", collect_status, &c), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.total[0], 1);
    assert_int_equal(queue_status(fx->q, "zz", collect_status, &c),
                     NB_ENOTFOUND);
    assert_int_equal(queue_count_unfinished(fx->q, NULL, &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(queue_count_unfinished(fx->q, "b2", &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(queue_count_unfinished(fx->q, "zz", &n), NB_ENOTFOUND);
}

static void
test_cancel_and_retry(void **state)
{
    struct fx *fx = *state;
    struct spec b2 = plain;
    struct queue_attempt fail = {
        .outcome = QUEUE_OUT_FAILED, .err_class = "transient",
        .started_ms = T0,
    };
    struct queue_job *j;
    int64_t ids[8], n = -1;

    b2.batch = "b2";
    add_range(fx->q, 1, 4, &plain);
    add_range(fx->q, 5, 6, &b2);
    claim_ids(fx->q, "w", T0, NULL, 3, ids);       /* 1, 2, 3 */
    assert_int_equal(queue_finish(fx->q, 1, "w", &fail), 0);
    fail.outcome = QUEUE_OUT_BLOCKED;
    assert_int_equal(queue_finish(fx->q, 2, "w", &fail), 0);

    /* retry: one job, wrong state, unknown job */
    assert_int_equal(queue_retry(fx->q, 4, NULL, T0, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(queue_retry(fx->q, 99, NULL, T0, &n), NB_ENOTFOUND);
    assert_int_equal(queue_retry(fx->q, 1, NULL, T0 + 1, &n), 0);
    assert_int_equal(n, 1);
    j = get(fx->q, 1);
    assert_int_equal(j->state, QUEUE_QUEUED);
    assert_int_equal(j->attempts_transient, 0);
    assert_int_equal(j->attempts, 1);
    assert_int_equal(j->next_attempt_ms, T0 + 1);
    queue_job_free(j);
    assert_int_equal(queue_retry(fx->q, 0, "nope", T0, &n), NB_ENOTFOUND);
    assert_int_equal(queue_retry(fx->q, 0, "b1", T0, &n), 0);
    assert_int_equal(n, 1);                      /* job 2, blocked */

    /* cancel: running job 3 gets an attempt row; batch b2 */
    assert_int_equal(queue_cancel(fx->q, 3, NULL, T0 + 5, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(last_attempt(fx->q, 3).outcome, "cancelled");
    assert_int_equal(queue_cancel(fx->q, 3, NULL, T0 + 5, &n), 0);
    assert_int_equal(n, 0);                      /* already cancelled */
    assert_int_equal(queue_cancel(fx->q, 0, "b2", T0, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(queue_cancel(fx->q, 0, "nope", T0, &n), NB_ENOTFOUND);
    assert_int_equal(queue_cancel(fx->q, 0, NULL, T0, &n), NB_EINVAL);
    assert_int_equal(queue_cancel(fx->q, 77, NULL, T0, &n), NB_ENOTFOUND);
    /* retry --all touches failed and blocked only, not cancelled */
    fail.outcome = QUEUE_OUT_FAILED;
    claim_ids(fx->q, "w", T0, NULL, 1, ids);
    assert_int_equal(queue_finish(fx->q, ids[0], "w", &fail), 0);
    assert_int_equal(queue_retry(fx->q, 0, NULL, T0, &n), 0);
    assert_int_equal(n, 1);
    check_counts(fx);
}

struct listed {
    int64_t ids[32];
    int n;
};

static int
collect_ids(const struct queue_job *job, void *arg)
{
    struct listed *l = arg;

    l->ids[l->n++] = job->id;
    return l->n >= 32;
}

static void
test_list(void **state)
{
    struct fx *fx = *state;
    struct spec b2 = plain;
    struct listed l;
    int64_t ids[8];

    b2.batch = "b2";
    add_range(fx->q, 1, 3, &plain);
    add_range(fx->q, 4, 6, &b2);
    claim_ids(fx->q, "w", T0, NULL, 2, ids);       /* 1, 2 running */

    memset(&l, 0, sizeof(l));
    assert_int_equal(queue_list(fx->q, -1, NULL, 0, 0, collect_ids, &l), 0);
    assert_int_equal(l.n, 6);
    assert_int_equal(l.ids[5], 6);
    memset(&l, 0, sizeof(l));
    assert_int_equal(queue_list(fx->q, QUEUE_RUNNING, NULL, 0, 0,
                                collect_ids, &l), 0);
    assert_int_equal(l.n, 2);
    memset(&l, 0, sizeof(l));
    assert_int_equal(queue_list(fx->q, QUEUE_QUEUED, "b2", 4, 1,
                                collect_ids, &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.ids[0], 5);
    assert_int_equal(queue_list(fx->q, -1, "zz", 0, 0, collect_ids, &l),
                     NB_ENOTFOUND);
    assert_int_equal(queue_list(fx->q, 17, NULL, 0, 0, collect_ids, &l),
                     NB_EINVAL);
    assert_int_equal(queue_attempts(fx->q, 99, count_attempts, &l.n),
                     NB_ENOTFOUND);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_mode_and_version, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_twice_is_noop, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_while_adding, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_newer_schema, setup,
                                        teardown),
        cmocka_unit_test(test_open_bad_path),
        cmocka_unit_test_setup_teardown(test_open_not_a_database, setup,
                                        teardown),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test_setup_teardown(test_add_idempotent, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_add_same_key_new_path_is_skipped,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_out_path_conflict, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_add_seq_and_out_dir, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_add_several_batches_in_one_add,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_rollback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_fields_round_trip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_claim_priority_then_age, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_claim_sets_checkpoint, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_claim_due_times, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_claim_paused_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_claim_filters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_concurrent, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_finish_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_retry_classes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_finish_blocked_release_cancelled,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renew_and_checkpoint, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_reclaim_dead_owner, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_release_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mark_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_counters_random, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_status_counters_multi_batch_adds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_v1_counts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_status_batches, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_retry, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remote_chunk_life, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_remote_create_checks, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_remote_follow, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
