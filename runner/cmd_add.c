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
 * A reference image used by many lines is read and hashed once per
 * invocation (a table keyed by its absolute path).  Paths are made
 * absolute lexically ("." and repeated '/' dropped, ".." kept), never
 * through realpath(): an output folder need not exist yet.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
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

/* ---- the add -------------------------------------------------------- */

/* New images per model and size, for --dry-run's estimate. */
struct cost_row {
    char *model;
    const char *size;          /* static, from the model table */
    int64_t images;
};

struct add {
    struct queue *q;
    int64_t batch_id;
    int64_t next_seq;
    char out_dir[PATH_MAX];    /* the batch's folder */
    const char *file;          /* as the user named it, for messages */
    char base_dir[PATH_MAX];   /* relative paths in the file start here */
    int batch_mode;            /* --via batch: Batch API prices */
    int dry_run;
    int64_t added;
    int64_t existing;
    int status;                /* exit status of a failed callback, or 0 */
    struct ref_cache refs;
    struct cost_row *costs;
    size_t n_costs;
};

static int
entry_fail(struct add *a, const struct promptfile_entry *e,
           struct promptfile_error *err, int status, int code,
           const char *field, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static int
entry_fail(struct add *a, const struct promptfile_entry *e,
           struct promptfile_error *err, int status, int code,
           const char *field, const char *fmt, ...)
{
    va_list ap;

    a->status = status;
    err->line = e->line;
    snprintf(err->field, sizeof(err->field), "%s", field);
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
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

/* Resolves and hashes the entry's reference images into refs. */
static int
resolve_refs(struct add *a, const struct promptfile_entry *e,
             struct queue_ref *refs, const char **hexes,
             struct promptfile_error *err)
{
    char path[PATH_MAX];
    char hex[65];
    const char *mime;
    struct ref_node *node;
    int rc;

    for (size_t i = 0; i < e->n_images; i++) {
        if (abs_path(a->base_dir, e->images[i], path, sizeof(path)) != 0)
            return entry_fail(a, e, err, EXIT_DATAERR, NB_ELIMIT, "images",
                              "path too long");
        node = cache_find(&a->refs, path);
        if (node == NULL) {
            rc = jobkey_file(path, hex, &mime);
            if (rc == NB_EIO)
                return entry_fail(a, e, err, EXIT_DATAERR, rc, "images",
                                  "cannot read %s: %s", path,
                                  strerror(errno));
            if (rc != 0)
                return entry_fail(a, e, err, EXIT_DATAERR, rc, "images",
                                  "%s is not a PNG, JPEG, WebP or HEIC "
                                  "image", path);
            node = cache_put(&a->refs, path, hex);
            if (node == NULL)
                return entry_fail(a, e, err, EXIT_SOFTWARE, NB_ENOMEM,
                                  "images", "out of memory");
        }
        refs[i].path = node->path;
        refs[i].sha256_hex = node->hex;
        hexes[i] = node->hex;
    }
    return 0;
}

/* The final path of image index of entry e, in path. */
static int
job_path(struct add *a, const struct promptfile_entry *e, const char *dir,
         int index, char *path, size_t len, struct promptfile_error *err)
{
    const char *name = e->name;
    char indexed[256];
    int rc = 0;

    /* images of a named line are told apart by 1-based numbers */
    if (name != NULL && e->count > 1) {
        rc = naming_with_index(name, index + 1, indexed, sizeof(indexed));
        name = indexed;
    }
    if (rc == 0)
        rc = naming_path(dir, a->next_seq, name, e->prompt, path, len);
    if (rc == NB_EINVAL)
        return entry_fail(a, e, err, EXIT_DATAERR, rc, "name",
                          "not a usable file name (no '/', no leading '.', "
                          "no control characters, at most 200 bytes)");
    if (rc != 0)
        return entry_fail(a, e, err, EXIT_DATAERR, rc, e->name ? "name" :
                          "out", "output path too long");
    return 0;
}

/* Queues image index of entry e. */
static int
add_one(struct add *a, const struct promptfile_entry *e,
        struct queue_new_job *job, const char *dir, int index,
        const char **hexes, struct promptfile_error *err)
{
    char key[65], path[PATH_MAX];
    int64_t conflict = 0;
    int added = 0, rc;

    jobkey_compute(e->model, e->prompt, e->aspect, e->size, hexes,
                   e->n_images, index, key);
    if (key[0] == '\0')
        return entry_fail(a, e, err, EXIT_SOFTWARE, NB_ENOMEM, "prompt",
                          "out of memory");
    rc = job_path(a, e, dir, index, path, sizeof(path), err);
    if (rc != 0)
        return rc;

    job->key = key;
    job->out_path = path;
    job->count_index = index;
    rc = queue_add_job(a->q, a->batch_id, a->next_seq, job, &added,
                       &conflict);
    if (rc == NB_EEXIST)
        return entry_fail(a, e, err, EXIT_DATAERR, rc, "name",
                          "%s is already the output of job %lld", path,
                          (long long)conflict);
    if (rc != 0)
        return entry_fail(a, e, err, EXIT_IOERR, rc, "", "database: %s",
                          queue_errmsg(a->q));
    if (!added) {
        a->existing++;
        return 0;
    }
    a->added++;
    a->next_seq++;
    if (a->dry_run && count_cost(a, e->model, e->size) != 0)
        return entry_fail(a, e, err, EXIT_SOFTWARE, NB_ENOMEM, "",
                          "out of memory");
    return 0;
}

static int
add_entry(const struct promptfile_entry *e, void *arg,
          struct promptfile_error *err)
{
    struct add *a = arg;
    struct queue_ref refs[PROMPTFILE_MAX_IMAGES];
    const char *hexes[PROMPTFILE_MAX_IMAGES];
    char line_out[PATH_MAX];
    const char *dir = a->out_dir;
    struct queue_new_job job;
    int rc;

    rc = resolve_refs(a, e, refs, hexes, err);
    if (rc != 0)
        return rc;
    if (e->out != NULL) {
        if (abs_path(a->base_dir, e->out, line_out, sizeof(line_out)) != 0)
            return entry_fail(a, e, err, EXIT_DATAERR, NB_ELIMIT, "out",
                              "path too long");
        dir = line_out;
    }

    memset(&job, 0, sizeof(job));
    job.prompt = e->prompt;
    job.model = e->model;
    job.aspect = e->aspect;
    job.size = e->size;
    job.via = e->via;
    job.priority = e->priority;
    job.not_before_ms = e->not_before_ms;
    job.offpeak = e->offpeak;
    job.n_refs = e->n_images;
    job.refs = refs;
    for (int i = 0; i < e->count; i++) {
        rc = add_one(a, e, &job, dir, i, hexes, err);
        if (rc != 0)
            return rc;
    }
    return 0;
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

/* Parses one file into the open add transaction. */
static int
add_file(struct add *a, const struct promptfile_defaults *d,
         const char *cwd, const char *file)
{
    struct promptfile_error err;
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

    a->status = 0;
    rc = promptfile_parse(in, d, add_entry, a, &err);
    if (in != stdin)
        fclose(in);
    if (rc == 0)
        return EXIT_OK;

    if (a->status == 0 && rc == NB_EIO) {
        log_error("%s: %s", a->file, err.message);
        return EXIT_NOINPUT;
    }
    if (err.field[0] != '\0')
        log_error("%s:%ld: %s: %s", a->file, err.line, err.field,
                  err.message);
    else
        log_error("%s:%ld: %s", a->file, err.line, err.message);
    return a->status != 0 ? a->status : EXIT_DATAERR;
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
        rc = add_file(a, &o->d, cwd, files[i]);
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
    rc = cli_open_queue(o.db, &a->q);
    if (rc == EXIT_OK)
        rc = run_add(a, &o, argv + optind, argc - optind, batch, cwd);

    queue_close(a->q);
    cache_free(&a->refs);
    for (size_t i = 0; i < a->n_costs; i++)
        free(a->costs[i].model);
    free(a->costs);
    free(a);
    return rc;
}
