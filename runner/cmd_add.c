/*
 * cmd_add.c - `nbbatch add`: prompt files into the queue, all or nothing.
 *
 * Every file of one invocation goes into one add transaction: the parser
 * (jobs/promptfile) hands over validated entries, each entry becomes count
 * jobs (reference images resolved against the prompt file's folder and
 * hashed, a job key, an output path), and the first bad line anywhere
 * rolls everything back with "FILE:LINE: FIELD: message" and exit 65.
 * Adding a file again adds nothing: jobs are found by key.  --dry-run goes
 * through exactly the same steps, including the queue's own checks, and
 * rolls back at the end, printing what would have been added and what it
 * would cost.
 *
 * Two threads share the work of a file.  The reader parses and validates
 * lines, resolves and hashes reference images and computes every job key;
 * the calling thread, which alone uses the queue, names the jobs (names
 * take the batch's next ordinal, which only the queue knows) and inserts
 * them.  Lines go between them through a bounded ring of records whose
 * strings live in one fixed arena, so memory stays a few megabytes however
 * long the file, and this file allocates nothing per line.  Errors come
 * out as they would from one thread: the first bad line in file order is
 * the one reported, whichever thread found it.
 *
 * A reference image used by many lines is read and hashed once per
 * invocation (a table keyed by its absolute path, owned by the reader;
 * the adder reads entries handed to it, which never move or change).
 * Paths are made absolute lexically ("." and repeated '/' dropped, ".."
 * kept), never through realpath(): an output folder need not exist yet.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "jobs/jobkey.h"
#include "jobs/models.h"
#include "jobs/naming.h"
#include "jobs/promptfile.h"
#include "queue/nberr.h"
#include "queue/queue.h"
#include "runner/cli.h"
#include "runner/log.h"

/* ---- absolute paths ------------------------------------------------- */

/*
 * Writes base + "/" + rel (or rel alone when absolute) into out with "."
 * components and repeated '/' dropped and no trailing '/'.  base must be
 * absolute.  NB_ELIMIT when it does not fit.
 */
static int
abs_path(const char *base, const char *rel, char *out, size_t len)
{
    char joined[PATH_MAX * 2];
    size_t n = 0;
    int w;

    w = rel[0] == '/' ? snprintf(joined, sizeof(joined), "%s", rel)
                      : snprintf(joined, sizeof(joined), "%s/%s", base, rel);
    if (w < 0 || (size_t)w >= sizeof(joined))
        return NB_ELIMIT;

    for (const char *s = joined; *s != '\0';) {
        const char *end;
        size_t part;

        while (*s == '/')
            s++;
        end = strchr(s, '/');
        if (end == NULL)
            end = s + strlen(s);
        part = (size_t)(end - s);
        if (part == 0 || (part == 1 && s[0] == '.')) {
            s = end;
            continue;
        }
        if (n + 1 + part + 1 > len)
            return NB_ELIMIT;
        out[n++] = '/';
        memcpy(out + n, s, part);
        n += part;
        s = end;
    }
    if (n == 0) {
        if (len < 2)
            return NB_ELIMIT;
        out[n++] = '/';
    }
    out[n] = '\0';
    return 0;
}

/* The folder holding file (absolute), or the cwd for stdin. */
static int
file_dir(const char *cwd, const char *file, char *out, size_t len)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(file, '/');

    if (strcmp(file, "-") == 0 || slash == NULL)
        return abs_path(cwd, ".", out, len);
    if ((size_t)(slash - file) + 2 > sizeof(dir))
        return NB_ELIMIT;
    memcpy(dir, file, (size_t)(slash - file) + 1);
    dir[slash - file + 1] = '\0';
    return abs_path(cwd, dir, out, len);
}

/* ---- reference images, hashed once ---------------------------------- */

struct ref_node {
    struct ref_node *next;
    char hex[65];
    char path[];
};

struct ref_cache {
    struct ref_node **slots;
    size_t n_slots;            /* a power of two, or 0 */
    size_t n;
};

static uint64_t
hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static int
cache_grow(struct ref_cache *c)
{
    size_t n_slots = c->n_slots ? c->n_slots * 2 : 64;
    struct ref_node **slots = calloc(n_slots, sizeof(*slots));

    if (slots == NULL)
        return NB_ENOMEM;
    for (size_t i = 0; i < c->n_slots; i++) {
        struct ref_node *node = c->slots[i], *next;

        for (; node != NULL; node = next) {
            size_t at = hash_str(node->path) & (n_slots - 1);

            next = node->next;
            node->next = slots[at];
            slots[at] = node;
        }
    }
    free(c->slots);
    c->slots = slots;
    c->n_slots = n_slots;
    return 0;
}

static struct ref_node *
cache_find(const struct ref_cache *c, const char *path)
{
    struct ref_node *node;

    if (c->n_slots == 0)
        return NULL;
    node = c->slots[hash_str(path) & (c->n_slots - 1)];
    for (; node != NULL; node = node->next) {
        if (strcmp(node->path, path) == 0)
            return node;
    }
    return NULL;
}

static struct ref_node *
cache_put(struct ref_cache *c, const char *path, const char *hex)
{
    size_t len = strlen(path);
    struct ref_node *node;
    size_t at;

    if (c->n >= c->n_slots && cache_grow(c) != 0)
        return NULL;
    node = malloc(sizeof(*node) + len + 1);
    if (node == NULL)
        return NULL;
    memcpy(node->hex, hex, sizeof(node->hex));
    memcpy(node->path, path, len + 1);
    at = hash_str(path) & (c->n_slots - 1);
    node->next = c->slots[at];
    c->slots[at] = node;
    c->n++;
    return node;
}

static void
cache_free(struct ref_cache *c)
{
    for (size_t i = 0; i < c->n_slots; i++) {
        struct ref_node *node = c->slots[i], *next;

        for (; node != NULL; node = next) {
            next = node->next;
            free(node);
        }
    }
    free(c->slots);
    memset(c, 0, sizeof(*c));
}

/* ---- handing lines from the reader to the adder ---------------------- */

#define RING_RECS     4096          /* lines in flight */
#define ARENA_BYTES   (4u << 20)    /* their strings and keys */
#define PUBLISH_EVERY 64            /* lines handed over at once */

/*
 * One prompt line, validated, resolved and keyed by the reader, waiting to
 * be named and queued by the adder.  Strings live in the ring's arena,
 * reference images in the reader's cache (never freed before the end).
 */
struct line_rec {
    long line;
    const char *prompt;
    const char *name;          /* NULL: named from seq and prompt */
    const char *model;
    const char *aspect;        /* may be NULL */
    const char *size;          /* may be NULL */
    const char *via;
    const char *out_dir;       /* absolute; NULL: the batch's folder */
    int count;
    int priority;
    int64_t not_before_ms;
    int offpeak;
    size_t n_refs;
    const struct ref_node *refs[PROMPTFILE_MAX_IMAGES];
    char (*keys)[65];          /* count keys; "" where hashing failed */
    size_t held;               /* arena bytes it holds, waste included */
};

/*
 * A bounded queue of line records between two threads.  Records and their
 * arena bytes go out in order and come back in the same order, so the
 * bytes in flight are one circular stretch of the arena and a record that
 * does not fit before the end starts at 0, holding the tail as waste.
 * Counts under the lock move in batches of PUBLISH_EVERY, so the lock is
 * taken once per batch, not once per line.
 */
struct ring {
    pthread_mutex_t lock;
    pthread_cond_t not_full;
    pthread_cond_t not_empty;
    struct line_rec *recs;
    char *arena;
    size_t n_recs;             /* handed over and not given back */
    size_t n_bytes;
    int done;                  /* the reader has finished */
    int stop;                  /* the adder failed: the reader stops */

    /* the reader's own */
    size_t w_rec, w_pos;       /* next record, next arena byte */
    size_t pend_recs, pend_bytes;  /* written, not yet handed over */
    size_t seen_recs, seen_bytes;  /* in flight when last looked */

    /* the adder's own */
    size_t r_rec;
    size_t avail;              /* handed over, not yet read */
    size_t took_recs, took_bytes;  /* read, not yet given back */
};

static int
ring_init(struct ring *r)
{
    memset(r, 0, sizeof(*r));
    r->recs = calloc(RING_RECS, sizeof(*r->recs));
    r->arena = malloc(ARENA_BYTES);
    if (r->recs == NULL || r->arena == NULL)
        goto fail;
    if (pthread_mutex_init(&r->lock, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&r->not_full, NULL) != 0) {
        pthread_mutex_destroy(&r->lock);
        goto fail;
    }
    if (pthread_cond_init(&r->not_empty, NULL) != 0) {
        pthread_cond_destroy(&r->not_full);
        pthread_mutex_destroy(&r->lock);
        goto fail;
    }
    return 0;

fail:
    free(r->arena);
    free(r->recs);
    r->recs = NULL;
    r->arena = NULL;
    return NB_ENOMEM;
}

static void
ring_free(struct ring *r)
{
    if (r->recs == NULL)
        return;
    pthread_cond_destroy(&r->not_empty);
    pthread_cond_destroy(&r->not_full);
    pthread_mutex_destroy(&r->lock);
    free(r->arena);
    free(r->recs);
    r->recs = NULL;
    r->arena = NULL;
}

/* Empties r for the next file (no thread is using it). */
static void
ring_reset(struct ring *r)
{
    r->n_recs = r->n_bytes = 0;
    r->done = r->stop = 0;
    r->w_rec = r->w_pos = 0;
    r->pend_recs = r->pend_bytes = 0;
    r->seen_recs = r->seen_bytes = 0;
    r->r_rec = r->avail = 0;
    r->took_recs = r->took_bytes = 0;
}

/* Reader, lock held: hands the written records over. */
static void
ring_publish_locked(struct ring *r)
{
    if (r->pend_recs > 0) {
        r->n_recs += r->pend_recs;
        r->n_bytes += r->pend_bytes;
        r->pend_recs = r->pend_bytes = 0;
        pthread_cond_signal(&r->not_empty);
    }
    r->seen_recs = r->n_recs;
    r->seen_bytes = r->n_bytes;
}

/* Reader: hands the written records over; NB_ESTATE when told to stop. */
static int
ring_publish(struct ring *r)
{
    int stop;

    pthread_mutex_lock(&r->lock);
    ring_publish_locked(r);
    stop = r->stop;
    pthread_mutex_unlock(&r->lock);
    return stop ? NB_ESTATE : 0;
}

/* Where a record of need bytes would start, and the waste it holds. */
static size_t
ring_place(const struct ring *r, size_t need, size_t *waste)
{
    if (r->seen_bytes + r->pend_bytes == 0) {
        *waste = 0;            /* nothing in flight: start afresh */
        return 0;
    }
    if (r->w_pos + need > ARENA_BYTES) {
        *waste = ARENA_BYTES - r->w_pos;
        return 0;
    }
    *waste = 0;
    return r->w_pos;
}

static int
ring_has_room(const struct ring *r, size_t need)
{
    size_t waste;

    ring_place(r, need, &waste);
    return r->seen_recs + r->pend_recs < RING_RECS &&
        r->seen_bytes + r->pend_bytes + waste + need <= ARENA_BYTES;
}

/*
 * Reader: the next record and need bytes of arena for it, waiting for the
 * adder to give some back when the ring is full.  NB_ESTATE when the
 * adder failed.
 */
static int
ring_reserve(struct ring *r, size_t need, struct line_rec **rec, char **mem)
{
    size_t waste, at;
    int stop = 0;

    if (need > ARENA_BYTES)
        return NB_ELIMIT;
    if (!ring_has_room(r, need)) {
        pthread_mutex_lock(&r->lock);
        ring_publish_locked(r);
        while (!r->stop && !ring_has_room(r, need)) {
            pthread_cond_wait(&r->not_full, &r->lock);
            r->seen_recs = r->n_recs;
            r->seen_bytes = r->n_bytes;
        }
        stop = r->stop;
        pthread_mutex_unlock(&r->lock);
        if (stop)
            return NB_ESTATE;
    }
    at = ring_place(r, need, &waste);
    *rec = &r->recs[r->w_rec % RING_RECS];
    (*rec)->held = waste + need;
    *mem = r->arena + at;
    r->w_pos = at + need;
    return 0;
}

/* Reader: the reserved record is filled in. */
static int
ring_commit(struct ring *r, struct line_rec *rec)
{
    r->w_rec++;
    r->pend_recs++;
    r->pend_bytes += rec->held;
    return r->pend_recs >= PUBLISH_EVERY ? ring_publish(r) : 0;
}

/* Reader: no more records. */
static void
ring_finish(struct ring *r)
{
    pthread_mutex_lock(&r->lock);
    ring_publish_locked(r);
    r->done = 1;
    pthread_cond_signal(&r->not_empty);
    pthread_mutex_unlock(&r->lock);
}

/*
 * Adder: the next record in file order, or NULL at the end.  The record
 * stays valid until the next call, which gives it back.
 */
static struct line_rec *
ring_take(struct ring *r)
{
    struct line_rec *rec;

    if (r->avail == 0) {
        pthread_mutex_lock(&r->lock);
        if (r->took_recs > 0) {
            r->n_recs -= r->took_recs;
            r->n_bytes -= r->took_bytes;
            r->took_recs = r->took_bytes = 0;
            pthread_cond_signal(&r->not_full);
        }
        while (r->n_recs == 0 && !r->done)
            pthread_cond_wait(&r->not_empty, &r->lock);
        r->avail = r->n_recs;
        pthread_mutex_unlock(&r->lock);
        if (r->avail == 0)
            return NULL;
    }
    rec = &r->recs[r->r_rec % RING_RECS];
    r->r_rec++;
    r->avail--;
    r->took_recs++;
    r->took_bytes += rec->held;
    return rec;
}

/* Adder: tells the reader to stop. */
static void
ring_stop(struct ring *r)
{
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_cond_signal(&r->not_full);
    pthread_mutex_unlock(&r->lock);
}

/* ---- the add -------------------------------------------------------- */

/* New images per model and size, for --dry-run's estimate. */
struct cost_row {
    char *model;
    const char *size;          /* static, from the model table */
    int64_t images;
};

/* Where one side of an add stopped, and the exit status it asks for. */
struct add_fail {
    int rc;                    /* NB_E code of the failure, 0: none */
    int status;                /* exit status, 0: decided by add_file */
    struct promptfile_error err;
};

struct add {
    /* the adder's (the calling thread's) */
    struct queue *q;
    int64_t batch_id;
    int64_t next_seq;
    char out_dir[PATH_MAX];    /* the batch's folder */
    const char *file;          /* as the user named it, for messages */
    int batch_mode;            /* --via batch: Batch API prices */
    int dry_run;
    int64_t added;
    int64_t existing;
    struct cost_row *costs;
    size_t n_costs;
    struct add_fail add_fail;

    /* the reader's, set before it starts */
    FILE *in;
    const struct promptfile_defaults *defaults;
    char base_dir[PATH_MAX];   /* relative paths in the file start here */
    struct ref_cache refs;
    struct add_fail read_fail;

    struct ring ring;
};

static int
fail_at(struct add_fail *f, long line, int status, int code,
        const char *field, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static int
fail_at(struct add_fail *f, long line, int status, int code,
        const char *field, const char *fmt, ...)
{
    va_list ap;

    f->rc = code;
    f->status = status;
    f->err.line = line;
    snprintf(f->err.field, sizeof(f->err.field), "%s", field);
    va_start(ap, fmt);
    vsnprintf(f->err.message, sizeof(f->err.message), fmt, ap);
    va_end(ap);
    return code;
}

static int
count_cost(struct add *a, const char *model, const char *size)
{
    const struct model_info *m = models_find(model);
    struct cost_row *grown;

    if (size == NULL && m != NULL)
        size = m->sizes[0];
    for (size_t i = 0; i < a->n_costs; i++) {
        struct cost_row *r = &a->costs[i];

        int same_size = r->size == size ||
            (r->size != NULL && size != NULL && strcmp(r->size, size) == 0);

        if (same_size && strcmp(r->model, model) == 0) {
            r->images++;
            return 0;
        }
    }
    grown = realloc(a->costs, (a->n_costs + 1) * sizeof(*grown));
    if (grown == NULL)
        return NB_ENOMEM;
    a->costs = grown;
    grown[a->n_costs].model = strdup(model);
    if (grown[a->n_costs].model == NULL)
        return NB_ENOMEM;
    grown[a->n_costs].size = size;
    grown[a->n_costs].images = 1;
    a->n_costs++;
    return 0;
}

/* ---- the reader: lines to keyed records ------------------------------ */

/* Resolves and hashes the entry's reference images into refs. */
static int
resolve_refs(struct add *a, const struct promptfile_entry *e,
             const struct ref_node **refs)
{
    struct add_fail *f = &a->read_fail;
    char path[PATH_MAX];
    char hex[65];
    const char *mime;
    struct ref_node *node;
    int rc;

    for (size_t i = 0; i < e->n_images; i++) {
        if (abs_path(a->base_dir, e->images[i], path, sizeof(path)) != 0)
            return fail_at(f, e->line, EXIT_DATAERR, NB_ELIMIT, "images",
                           "path too long");
        node = cache_find(&a->refs, path);
        if (node == NULL) {
            rc = jobkey_file(path, hex, &mime);
            if (rc == NB_EIO)
                return fail_at(f, e->line, EXIT_DATAERR, rc, "images",
                               "cannot read %s: %s", path, strerror(errno));
            if (rc != 0)
                return fail_at(f, e->line, EXIT_DATAERR, rc, "images",
                               "%s is not a PNG, JPEG, WebP or HEIC image",
                               path);
            node = cache_put(&a->refs, path, hex);
            if (node == NULL)
                return fail_at(f, e->line, EXIT_SOFTWARE, NB_ENOMEM,
                               "images", "out of memory");
        }
        refs[i] = node;
    }
    return 0;
}

static size_t
str_size(const char *s)
{
    return s != NULL ? strlen(s) + 1 : 0;
}

/* Copies s (NULL stays NULL) to *mem and moves *mem past it. */
static const char *
str_put(char **mem, const char *s)
{
    char *copy = *mem;
    size_t n = str_size(s);

    if (s == NULL)
        return NULL;
    memcpy(copy, s, n);
    *mem += n;
    return copy;
}

/* The line's job keys, one per image of its count. */
static void
make_keys(const struct promptfile_entry *e, const struct ref_node **refs,
          char (*keys)[65])
{
    const char *hexes[PROMPTFILE_MAX_IMAGES];

    for (size_t i = 0; i < e->n_images; i++)
        hexes[i] = refs[i]->hex;
    for (int i = 0; i < e->count; i++)
        jobkey_compute(e->model, e->prompt, e->aspect, e->size, hexes,
                       e->n_images, i, keys[i]);
}

/* The parser's callback: one entry into one record of the ring. */
static int
read_entry(const struct promptfile_entry *e, void *arg,
           struct promptfile_error *err)
{
    struct add *a = arg;
    const struct ref_node *refs[PROMPTFILE_MAX_IMAGES];
    char line_out[PATH_MAX];
    const char *out = NULL;
    struct line_rec *rec;
    size_t need;
    char *mem;
    int rc;

    rc = resolve_refs(a, e, refs);
    if (rc != 0)
        return rc;
    if (e->out != NULL) {
        if (abs_path(a->base_dir, e->out, line_out, sizeof(line_out)) != 0)
            return fail_at(&a->read_fail, e->line, EXIT_DATAERR, NB_ELIMIT,
                           "out", "path too long");
        out = line_out;
    }

    need = (size_t)e->count * 65 + str_size(e->prompt) + str_size(e->name) +
        str_size(e->model) + str_size(e->aspect) + str_size(e->size) +
        str_size(e->via) + str_size(out);
    rc = ring_reserve(&a->ring, need, &rec, &mem);
    if (rc == NB_ELIMIT)
        return fail_at(&a->read_fail, e->line, EXIT_DATAERR, rc, "line",
                       "too long");
    if (rc != 0)
        return rc;

    rec->keys = (char (*)[65])mem;
    make_keys(e, refs, rec->keys);
    mem += (size_t)e->count * 65;
    rec->line = e->line;
    rec->prompt = str_put(&mem, e->prompt);
    rec->name = str_put(&mem, e->name);
    rec->model = str_put(&mem, e->model);
    rec->aspect = str_put(&mem, e->aspect);
    rec->size = str_put(&mem, e->size);
    rec->via = str_put(&mem, e->via);
    rec->out_dir = str_put(&mem, out);
    rec->count = e->count;
    rec->priority = e->priority;
    rec->not_before_ms = e->not_before_ms;
    rec->offpeak = e->offpeak;
    rec->n_refs = e->n_images;
    memcpy(rec->refs, refs, e->n_images * sizeof(refs[0]));
    return ring_commit(&a->ring, rec);
}

/* The reading thread: parses the whole file into the ring. */
static void *
reader_main(void *arg)
{
    struct add *a = arg;
    int rc;

    rc = promptfile_parse(a->in, a->defaults, read_entry, a,
                          &a->read_fail.err);
    a->read_fail.rc = rc;
    ring_finish(&a->ring);
    return NULL;
}

/* ---- the adder: records to named jobs -------------------------------- */

/* The final path of image index of rec, in path. */
static int
job_path(struct add *a, const struct line_rec *rec, int index, char *path,
         size_t len)
{
    const char *dir = rec->out_dir != NULL ? rec->out_dir : a->out_dir;
    const char *name = rec->name;
    char indexed[256];
    int rc = 0;

    /* images of a named line are told apart by 1-based numbers */
    if (name != NULL && rec->count > 1) {
        rc = naming_with_index(name, index + 1, indexed, sizeof(indexed));
        name = indexed;
    }
    if (rc == 0)
        rc = naming_path(dir, a->next_seq, name, rec->prompt, path, len);
    if (rc == NB_EINVAL)
        return fail_at(&a->add_fail, rec->line, EXIT_DATAERR, rc, "name",
                       "not a usable file name (no '/', no leading '.', "
                       "no control characters, at most 200 bytes)");
    if (rc != 0)
        return fail_at(&a->add_fail, rec->line, EXIT_DATAERR, rc,
                       rec->name ? "name" : "out", "output path too long");
    return 0;
}

/* Queues image index of rec. */
static int
add_one(struct add *a, const struct line_rec *rec, struct queue_new_job *job,
        int index)
{
    struct add_fail *f = &a->add_fail;
    char path[PATH_MAX];
    int64_t conflict = 0;
    int added = 0, rc;

    if (rec->keys[index][0] == '\0')
        return fail_at(f, rec->line, EXIT_SOFTWARE, NB_ENOMEM, "prompt",
                       "out of memory");
    rc = job_path(a, rec, index, path, sizeof(path));
    if (rc != 0)
        return rc;

    job->key = rec->keys[index];
    job->out_path = path;
    job->count_index = index;
    rc = queue_add_job(a->q, a->batch_id, a->next_seq, job, &added,
                       &conflict);
    if (rc == NB_EEXIST)
        return fail_at(f, rec->line, EXIT_DATAERR, rc, "name",
                       "%s is already the output of job %lld", path,
                       (long long)conflict);
    if (rc != 0)
        return fail_at(f, rec->line, EXIT_IOERR, rc, "", "database: %s",
                       queue_errmsg(a->q));
    if (!added) {
        a->existing++;
        return 0;
    }
    a->added++;
    a->next_seq++;
    if (a->dry_run && count_cost(a, rec->model, rec->size) != 0)
        return fail_at(f, rec->line, EXIT_SOFTWARE, NB_ENOMEM, "",
                       "out of memory");
    return 0;
}

static int
add_line(struct add *a, const struct line_rec *rec)
{
    struct queue_ref refs[PROMPTFILE_MAX_IMAGES];
    struct queue_new_job job;
    int rc;

    for (size_t i = 0; i < rec->n_refs; i++) {
        refs[i].path = rec->refs[i]->path;
        refs[i].sha256_hex = rec->refs[i]->hex;
    }
    memset(&job, 0, sizeof(job));
    job.prompt = rec->prompt;
    job.model = rec->model;
    job.aspect = rec->aspect;
    job.size = rec->size;
    job.via = rec->via;
    job.priority = rec->priority;
    job.not_before_ms = rec->not_before_ms;
    job.offpeak = rec->offpeak;
    job.n_refs = rec->n_refs;
    job.refs = refs;
    for (int i = 0; i < rec->count; i++) {
        rc = add_one(a, rec, &job, i);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/*
 * Names and queues what the reader hands over, then waits for the reader.
 * Returns the side that failed first in file order, or NULL: every record
 * the reader handed over comes from a line before the one it failed on, so
 * an adder's failure is always the earlier one.  After an adder's failure
 * the reader stops at its next hand-over (a stalled pipe holds it until
 * its next line or its end).
 */
static const struct add_fail *
add_records(struct add *a, pthread_t reader)
{
    const struct line_rec *rec;
    int rc = 0;

    while ((rec = ring_take(&a->ring)) != NULL) {
        rc = add_line(a, rec);
        if (rc != 0) {
            ring_stop(&a->ring);
            break;
        }
    }
    pthread_join(reader, NULL);
    if (rc != 0)
        return &a->add_fail;
    return a->read_fail.rc != 0 ? &a->read_fail : NULL;
}

/* ---- command line --------------------------------------------------- */

struct add_opts {
    const char *batch;
    const char *out;
    int out_given;
    const char *db;
    int dry_run;
    struct promptfile_defaults d;
};

static int
opt_int(const char *opt, const char *s, long lo, long hi, int *v)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0 || n < lo || n > hi) {
        log_error("add: %s: \"%s\" is not a whole number in %ld..%ld", opt,
                  s, lo, hi);
        return EXIT_USAGE;
    }
    *v = (int)n;
    return EXIT_OK;
}

/* Checks the defaults against the default model; normalizes --size. */
static int
check_defaults(struct promptfile_defaults *d)
{
    const struct model_info *m = models_find(d->model);

    if (m == NULL) {
        log_error("add: --model: \"%s\" is not a model id (lowercase "
                  "letters, digits, '.', '-')", d->model);
        return EXIT_USAGE;
    }
    if (!m->known)
        log_warn("model %s is not known to nbbatch: assuming it takes every "
                 "aspect ratio, sizes 512 to 4K and 14 images", d->model);
    if (d->aspect != NULL && !models_aspect_ok(m, d->aspect)) {
        log_error("add: --aspect: \"%s\" is not an aspect ratio %s accepts",
                  d->aspect, d->model);
        return EXIT_USAGE;
    }
    if (d->size != NULL) {
        const char *const *s;

        for (s = m->sizes; *s != NULL && strcasecmp(*s, d->size); s++)
            continue;
        if (*s == NULL) {
            log_error("add: --size: \"%s\" is not a size %s accepts",
                      d->size, d->model);
            return EXIT_USAGE;
        }
        d->size = *s;
    }
    return EXIT_OK;
}

static int
parse_args(int argc, char **argv, struct add_opts *o)
{
    enum { O_BATCH = 256, O_MODEL, O_ASPECT, O_SIZE, O_COUNT, O_OUT,
           O_PRIORITY, O_NOT_BEFORE, O_OFFPEAK, O_VIA, O_DRY_RUN, O_DB,
           O_HELP };
    static const struct option longopts[] = {
        {"batch", required_argument, NULL, O_BATCH},
        {"model", required_argument, NULL, O_MODEL},
        {"aspect", required_argument, NULL, O_ASPECT},
        {"size", required_argument, NULL, O_SIZE},
        {"count", required_argument, NULL, O_COUNT},
        {"out", required_argument, NULL, O_OUT},
        {"priority", required_argument, NULL, O_PRIORITY},
        {"not-before", required_argument, NULL, O_NOT_BEFORE},
        {"offpeak", no_argument, NULL, O_OFFPEAK},
        {"via", required_argument, NULL, O_VIA},
        {"dry-run", no_argument, NULL, O_DRY_RUN},
        {"db", required_argument, NULL, O_DB},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}
    };
    struct promptfile_defaults *d = &o->d;
    int c, rc = EXIT_OK;

    memset(o, 0, sizeof(*o));
    d->model = MODELS_DEFAULT;
    d->count = 1;
    d->via = "direct";
    optind = 1;
    opterr = 0;
    while (rc == EXIT_OK &&
           (c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_BATCH:      o->batch = optarg; break;
        case O_MODEL:      d->model = optarg; break;
        case O_ASPECT:     d->aspect = optarg; break;
        case O_SIZE:       d->size = optarg; break;
        case O_OUT:        o->out = optarg; break;
        case O_OFFPEAK:    d->offpeak = 1; break;
        case O_DRY_RUN:    o->dry_run = 1; break;
        case O_DB:         o->db = optarg; break;
        case O_COUNT:
            rc = opt_int("--count", optarg, 1, PROMPTFILE_MAX_COUNT,
                         &d->count);
            break;
        case O_PRIORITY:
            rc = opt_int("--priority", optarg, -1000, 1000, &d->priority);
            break;
        case O_NOT_BEFORE:
            if (promptfile_parse_time(optarg, &d->not_before_ms) != 0) {
                log_error("add: --not-before: \"%s\" is not a time "
                          "(YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM] or epoch "
                          "seconds)", optarg);
                rc = EXIT_USAGE;
            }
            break;
        case O_VIA:
            if (strcmp(optarg, "direct") != 0 &&
                strcmp(optarg, "batch") != 0) {
                log_error("add: --via: \"%s\" is neither direct nor batch",
                          optarg);
                rc = EXIT_USAGE;
            }
            d->via = optarg;
            break;
        case O_HELP:
            cli_usage("add");
            return -1;
        default:
            log_error("add: unknown option or missing value: %s",
                      argv[optind - 1]);
            return cli_usage("add");
        }
    }
    if (rc != EXIT_OK)
        return rc;
    if (optind == argc) {
        log_error("add: no prompt file given ('-' reads stdin)");
        return cli_usage("add");
    }
    if (o->batch != NULL && o->batch[0] == '\0') {
        log_error("add: --batch: empty name");
        return EXIT_USAGE;
    }
    rc = check_defaults(d);
    if (rc != EXIT_OK)
        return rc;

    /* a missing file fails at once, not after a million lines of another */
    for (int i = optind; i < argc; i++) {
        if (strcmp(argv[i], "-") != 0 && access(argv[i], R_OK) != 0) {
            log_error("%s: %s", argv[i], strerror(errno));
            return EXIT_NOINPUT;
        }
    }
    return EXIT_OK;
}

/* The default batch name: the first file's base name without extension. */
static void
default_batch(const char *file, char *out, size_t len)
{
    const char *base = strrchr(file, '/');
    const char *dot;
    size_t n;

    if (strcmp(file, "-") == 0) {
        snprintf(out, len, "stdin");
        return;
    }
    base = base != NULL ? base + 1 : file;
    dot = strrchr(base, '.');
    n = dot != NULL && dot != base ? (size_t)(dot - base) : strlen(base);
    if (n == 0) {
        base = "prompts";
        n = strlen(base);
    }
    snprintf(out, len, "%.*s", (int)n, base);
}

/* ---- running it ----------------------------------------------------- */

static int
cost_cmp(const void *x, const void *y)
{
    const struct cost_row *a = x, *b = y;
    int c = strcmp(a->model, b->model);

    if (c != 0 || a->size == NULL || b->size == NULL)
        return c;
    return strcmp(a->size, b->size);
}

static const char *
plural(int64_t n)
{
    return n == 1 ? "" : "s";
}

static void
print_dry_run(struct add *a, const char *batch)
{
    double total = 0;
    int64_t images = 0, unpriced = 0;

    printf("would add %lld job%s to batch %s (%lld already queued)\n",
           (long long)a->added, plural(a->added), batch,
           (long long)a->existing);
    qsort(a->costs, a->n_costs, sizeof(*a->costs), cost_cmp);
    for (size_t i = 0; i < a->n_costs; i++) {
        const struct cost_row *r = &a->costs[i];
        double each = models_price(r->model, r->size, a->batch_mode);

        images += r->images;
        if (each < 0) {
            unpriced += r->images;
            printf("  %s %s: %lld image%s, price unknown\n", r->model,
                   r->size ? r->size : "-", (long long)r->images,
                   plural(r->images));
            continue;
        }
        total += each * (double)r->images;
        printf("  %s %s: %lld image%s, about $%.2f\n", r->model,
               r->size ? r->size : "-", (long long)r->images,
               plural(r->images), each * (double)r->images);
    }
    printf("total: %lld image%s, about $%.2f%s", (long long)images,
           plural(images), total,
           a->batch_mode ? " at Batch API prices" : "");
    if (unpriced > 0)
        printf(" (plus %lld image%s of unknown price)", (long long)unpriced,
               plural(unpriced));
    printf("\n");
}

/*
 * Parses one file into the open add transaction: a second thread reads,
 * checks and keys the lines while this one names and queues them.
 */
static int
add_file(struct add *a, const char *cwd, const char *file)
{
    const struct add_fail *f;
    pthread_t reader;
    FILE *in;
    int rc;

    a->file = strcmp(file, "-") == 0 ? "stdin" : file;
    if (file_dir(cwd, file, a->base_dir, sizeof(a->base_dir)) != 0) {
        log_error("%s: path too long", file);
        return EXIT_NOINPUT;
    }
    in = strcmp(file, "-") == 0 ? stdin : fopen(file, "r");
    if (in == NULL) {
        log_error("%s: %s", file, strerror(errno));
        return EXIT_NOINPUT;
    }

    memset(&a->read_fail, 0, sizeof(a->read_fail));
    memset(&a->add_fail, 0, sizeof(a->add_fail));
    ring_reset(&a->ring);
    a->in = in;
    rc = pthread_create(&reader, NULL, reader_main, a);
    if (rc != 0) {
        log_error("add: cannot start a thread: %s", strerror(rc));
        if (in != stdin)
            fclose(in);
        return EXIT_SOFTWARE;
    }
    f = add_records(a, reader);
    if (in != stdin)
        fclose(in);
    if (f == NULL)
        return EXIT_OK;

    if (f->status == 0 && f->rc == NB_EIO) {
        log_error("%s: %s", a->file, f->err.message);
        return EXIT_NOINPUT;
    }
    if (f->err.field[0] != '\0')
        log_error("%s:%ld: %s: %s", a->file, f->err.line, f->err.field,
                  f->err.message);
    else
        log_error("%s:%ld: %s", a->file, f->err.line, f->err.message);
    return f->status != 0 ? f->status : EXIT_DATAERR;
}

static int
run_add(struct add *a, struct add_opts *o, char **files, int n_files,
        const char *batch, const char *cwd)
{
    char out_dir[PATH_MAX];
    int rc;

    rc = abs_path(cwd, o->out, out_dir, sizeof(out_dir));
    if (rc != 0) {
        log_error("add: --out: path too long");
        return EXIT_USAGE;
    }
    rc = queue_add_begin(a->q, batch, out_dir, &a->batch_id, &a->next_seq);
    if (rc != 0) {
        log_error("add: database: %s", queue_errmsg(a->q));
        return EXIT_IOERR;
    }
    snprintf(a->out_dir, sizeof(a->out_dir), "%s", queue_add_out_dir(a->q));
    if (o->out_given && strcmp(a->out_dir, out_dir) != 0)
        log_warn("batch %s keeps its output folder %s; --out ignored",
                 batch, a->out_dir);

    for (int i = 0; i < n_files; i++) {
        rc = add_file(a, cwd, files[i]);
        if (rc != EXIT_OK) {
            queue_add_rollback(a->q);
            return rc;
        }
    }
    if (o->dry_run) {
        queue_add_rollback(a->q);
        print_dry_run(a, batch);
        return EXIT_OK;
    }
    if (queue_add_commit(a->q) != 0) {
        log_error("add: database: %s", queue_errmsg(a->q));
        queue_add_rollback(a->q);
        return EXIT_IOERR;
    }
    printf("added %lld job%s to batch %s (%lld already queued)\n",
           (long long)a->added, plural(a->added), batch,
           (long long)a->existing);
    return EXIT_OK;
}

int
cmd_add(int argc, char **argv)
{
    struct add_opts o;
    struct add *a = NULL;
    char batch[256], out[PATH_MAX + 8], cwd[PATH_MAX];
    int rc;

    rc = parse_args(argc, argv, &o);
    if (rc != EXIT_OK)
        return rc < 0 ? EXIT_OK : rc;
    if (getcwd(cwd, sizeof(cwd)) == NULL) {
        log_error("add: cannot tell the current folder: %s",
                  strerror(errno));
        return EXIT_IOERR;
    }
    if (o.batch != NULL)
        snprintf(batch, sizeof(batch), "%s", o.batch);
    else
        default_batch(argv[optind], batch, sizeof(batch));
    o.out_given = o.out != NULL;
    if (o.out == NULL) {
        snprintf(out, sizeof(out), "out/%s", batch);
        o.out = out;
    }
    o.d.via = strcmp(o.d.via, "batch") == 0 ? "batch" : "direct";

    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        log_error("add: out of memory");
        return EXIT_SOFTWARE;
    }
    a->dry_run = o.dry_run;
    a->batch_mode = strcmp(o.d.via, "batch") == 0;
    a->defaults = &o.d;
    if (ring_init(&a->ring) != 0) {
        log_error("add: out of memory");
        free(a);
        return EXIT_SOFTWARE;
    }
    rc = cli_open_queue(o.db, &a->q);
    if (rc == EXIT_OK)
        rc = run_add(a, &o, argv + optind, argc - optind, batch, cwd);

    queue_close(a->q);
    ring_free(&a->ring);
    cache_free(&a->refs);
    for (size_t i = 0; i < a->n_costs; i++)
        free(a->costs[i].model);
    free(a->costs);
    free(a);
    return rc;
}
