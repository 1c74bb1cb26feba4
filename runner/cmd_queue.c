/*
 * cmd_queue.c - the commands that look at and steer the queue: status,
 * list, show, cancel, retry, pause and resume.
 *
 * Each opens the queue, does one thing, prints the result on stdout and
 * maps a queue error to an exit status: no such job or batch is a data
 * error (65), a bad command line is 64, anything from the database is 74.
 * --json prints one compact JSON document built with jansson: status an
 * object, list an array of job objects (streamed, one per line), show one
 * job object with its attempts under "history".  Times in JSON are
 * milliseconds since the epoch ("*_ms") next to an ISO-8601 UTC string
 * (null for a time that is not set).  The human forms are tables sized to
 * the terminal; only the prompt is shortened, never a path or an error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "queue/nberr.h"
#include "queue/queue.h"
#include "runner/apikey.h"
#include "runner/cli.h"
#include "runner/config.h"
#include "runner/http.h"
#include "runner/log.h"
#include "runner/remote.h"

/* ---- options ------------------------------------------------------------ */

enum {
    OPT_DB = 1, OPT_JSON = 2, OPT_STATE = 4, OPT_BATCH = 8, OPT_LIMIT = 16,
    OPT_ALL = 32
};

struct opts {
    const char *cmd;
    const char *db;
    const char *batch;
    int json;
    int all;
    int state;                 /* -1: any */
    int64_t limit;             /* 0: no limit */
    char **args;
    int nargs;
};

/* Parses a positive integer option or argument; 0 on success. */
static int
parse_id(const char *s, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v <= 0)
        return -1;
    *out = v;
    return 0;
}

static int
opt_value(struct opts *o, int c, const char *arg)
{
    switch (c) {
    case OPT_DB:
        o->db = arg;
        return EXIT_OK;
    case OPT_BATCH:
        o->batch = arg;
        return EXIT_OK;
    case OPT_STATE:
        if ((o->state = queue_state_parse(arg)) >= 0)
            return EXIT_OK;
        log_error("%s: --state: unknown state '%s' (queued, running, done,"
                  " failed, blocked, cancelled)", o->cmd, arg);
        return EXIT_USAGE;
    case OPT_LIMIT:
        if (parse_id(arg, &o->limit) == 0)
            return EXIT_OK;
        log_error("%s: --limit: '%s' is not a positive number", o->cmd,
                  arg);
        return EXIT_USAGE;
    }
    return EXIT_USAGE;
}

/*
 * Parses the options allowed (a mask of OPT_*) and leaves between min_args
 * and max_args operands in o->args.  Returns EXIT_OK, an exit status, or
 * -1 when --help was printed.
 */
static int
parse_opts(int argc, char **argv, unsigned allowed, int min_args,
           int max_args, struct opts *o)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, OPT_DB},
        {"json", no_argument, NULL, OPT_JSON},
        {"state", required_argument, NULL, OPT_STATE},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"all", no_argument, NULL, OPT_ALL},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}
    };
    int c, rc;

    memset(o, 0, sizeof(*o));
    o->cmd = argv[0];
    o->state = -1;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h') {
            cli_usage(o->cmd);
            return -1;
        }
        if (c == '?' || !(allowed & (unsigned)c)) {
            log_error("%s: unknown option or missing value: %s", o->cmd,
                      argv[optind - 1]);
            return cli_usage(o->cmd);
        }
        if (c == OPT_JSON)
            o->json = 1;
        else if (c == OPT_ALL)
            o->all = 1;
        else if ((rc = opt_value(o, c, optarg)) != EXIT_OK)
            return rc;
    }
    o->args = argv + optind;
    o->nargs = argc - optind;
    if (o->nargs < min_args || o->nargs > max_args) {
        log_error("%s: %s", o->cmd, o->nargs < min_args
                  ? "missing argument" : "too many arguments");
        return cli_usage(o->cmd);
    }
    return EXIT_OK;
}

/* The job id operand, or a usage error. */
static int
job_arg(const struct opts *o, const char *s, int64_t *id)
{
    if (parse_id(s, id) == 0)
        return EXIT_OK;
    log_error("%s: '%s' is not a job id (a positive number)", o->cmd, s);
    return EXIT_USAGE;
}

/* Logs a queue error and maps it to an exit status. */
static int
queue_fail(const struct opts *o, struct queue *q, int rc)
{
    const char *msg = queue_errmsg(q);

    log_error("%s: %s", o->cmd, msg[0] ? msg : nb_strerror(rc));
    if (rc == NB_ENOTFOUND)
        return EXIT_DATAERR;
    if (rc == NB_EINVAL)
        return EXIT_USAGE;
    if (rc == NB_ENOMEM)
        return EXIT_SOFTWARE;
    return EXIT_IOERR;
}

/* ---- formatting --------------------------------------------------------- */

/* "2025-01-02T03:04:05.678Z", or "-" for 0. */
static const char *
iso_time(int64_t ms, int with_ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char day[32];

    if (ms <= 0 || gmtime_r(&secs, &tm) == NULL) {
        snprintf(buf, len, "-");
        return buf;
    }
    strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
    if (with_ms)
        snprintf(buf, len, "%s.%03dZ", day, (int)(ms % 1000));
    else
        snprintf(buf, len, "%sZ", day);
    return buf;
}

/* Columns of the terminal on stdout, else $COLUMNS, else 100. */
static int
term_width(void)
{
    struct winsize ws;
    const char *env = getenv("COLUMNS");
    long v;

    if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0
        && ws.ws_col >= 40)
        return ws.ws_col;
    if (env != NULL && (v = strtol(env, NULL, 10)) >= 40 && v < 10000)
        return (int)v;
    return 100;
}

/*
 * Copies at most width characters (UTF-8 code points) of s into out, with
 * control characters as spaces and "..." marking a cut; pads with spaces
 * to width when pad is set.  out must hold 4 * width + 1 bytes.
 */
static void
fit(const char *s, int width, int pad, char *out)
{
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    int chars = 0, total = 0;
    size_t n = 0, cut = 0;

    for (const unsigned char *p = u; *p; p++)
        total += (*p & 0xC0) != 0x80;
    for (; *u && chars < width; chars++) {
        if (total > width && chars == width - 3)
            cut = n;
        if (*u < 0x20 || *u == 0x7f) {
            out[n++] = ' ';
            u++;
            continue;
        }
        out[n++] = (char)*u++;
        for (int k = 0; k < 3 && (*u & 0xC0) == 0x80; k++)
            out[n++] = (char)*u++;
    }
    if (total > width && width >= 3) {
        n = cut;
        memcpy(out + n, "...", 3);
        n += 3;
        chars = width;
    }
    while (pad && chars++ < width)
        out[n++] = ' ';
    out[n] = '\0';
}

/* "transient 503 UNAVAILABLE: message" from a job's last error. */
static void
error_text(const char *cls, int http, const char *status, const char *msg,
           char *buf, size_t len)
{
    char code[16] = "";

    if (http > 0)
        snprintf(code, sizeof(code), " %d", http);
    snprintf(buf, len, "%s%s%s%s%s%s", cls ? cls : "error", code,
             status ? " " : "", status ? status : "", msg ? ": " : "",
             msg ? msg : "");
}

/* ---- JSON --------------------------------------------------------------- */

/* Builders that remember a failure instead of checking every call. */
struct jb {
    json_t *obj;
    int bad;
};

static void
put(struct jb *b, const char *key, json_t *value)
{
    if (value == NULL || json_object_set_new(b->obj, key, value) != 0)
        b->bad = 1;
}

static void
put_str(struct jb *b, const char *key, const char *s)
{
    put(b, key, s ? json_string(s) : json_null());
}

static void
put_int(struct jb *b, const char *key, int64_t v)
{
    put(b, key, json_integer((json_int_t)v));
}

/* key_ms and key: the time in ms and as ISO-8601 (null when unset). */
static void
put_time(struct jb *b, const char *key, int64_t ms)
{
    char name[64], iso[40];

    snprintf(name, sizeof(name), "%s_ms", key);
    put_int(b, name, ms);
    put(b, key, ms > 0 ? json_string(iso_time(ms, 1, iso, sizeof(iso)))
                       : json_null());
}

/* Finishes a builder: the object, or NULL (freed) after a failure. */
static json_t *
jb_done(struct jb *b)
{
    if (!b->bad && b->obj != NULL)
        return b->obj;
    json_decref(b->obj);
    return NULL;
}

static json_t *
error_json(const struct queue_job *j)
{
    struct jb b = {NULL, 0};

    if (j->err_class == NULL && j->err_message == NULL)
        return json_null();
    b.obj = json_object();
    put_str(&b, "class", j->err_class);
    put_int(&b, "http_status", j->err_http);
    put_str(&b, "api_status", j->err_status);
    put_str(&b, "message", j->err_message);
    return jb_done(&b);
}

static json_t *
lease_json(const struct queue_job *j)
{
    struct jb b = {NULL, 0};

    if (j->lease_owner == NULL)
        return json_null();
    b.obj = json_object();
    put_str(&b, "owner", j->lease_owner);
    put_time(&b, "expires", j->lease_expires_ms);
    return jb_done(&b);
}

static json_t *
refs_json(const struct queue_job *j)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr != NULL && i < j->n_refs; i++) {
        json_t *ref = json_pack("{s:s, s:s}", "path", j->refs[i].path,
                                "sha256", j->refs[i].sha256_hex);

        if (ref == NULL || json_array_append_new(arr, ref) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* The checkpoint as JSON, or as a string when it does not parse. */
static json_t *
checkpoint_json(const char *text)
{
    json_t *v;

    if (text == NULL)
        return json_null();
    v = json_loads(text, JSON_DECODE_ANY, NULL);
    return v ? v : json_string(text);
}

static json_t *
job_json(const struct queue_job *j)
{
    struct jb b = {json_object(), 0};

    put_int(&b, "id", j->id);
    put_str(&b, "batch", j->batch);
    put_int(&b, "batch_id", j->batch_id);
    put_int(&b, "seq", j->seq);
    put_str(&b, "state", queue_state_name(j->state));
    put_str(&b, "prompt", j->prompt);
    put_str(&b, "model", j->model);
    put_str(&b, "aspect", j->aspect);
    put_str(&b, "size", j->size);
    put_str(&b, "via", j->via);
    put_int(&b, "count_index", j->count_index);
    put_int(&b, "priority", j->priority);
    put(&b, "offpeak", json_boolean(j->offpeak));
    put_str(&b, "out_path", j->out_path);
    put_str(&b, "key", j->key);
    put(&b, "refs", refs_json(j));
    put_int(&b, "attempts", j->attempts);
    put_int(&b, "attempts_transient", j->attempts_transient);
    put_int(&b, "attempts_soft", j->attempts_soft);
    put(&b, "error", error_json(j));
    put(&b, "lease", lease_json(j));
    put(&b, "checkpoint", checkpoint_json(j->checkpoint));
    put_time(&b, "not_before", j->not_before_ms);
    put_time(&b, "next_attempt", j->next_attempt_ms);
    put_time(&b, "created", j->created_ms);
    put_time(&b, "updated", j->updated_ms);
    return jb_done(&b);
}

static json_t *
attempt_json(const struct queue_attempt_row *r)
{
    struct jb b = {json_object(), 0};

    put_int(&b, "attempt_id", r->id);
    put_str(&b, "outcome", r->outcome);
    put_time(&b, "started", r->started_ms);
    put_int(&b, "latency_ms", r->latency_ms);
    put_str(&b, "err_class", r->err_class);
    put_int(&b, "http_status", r->http_status);
    put_str(&b, "api_status", r->api_status);
    put_str(&b, "message", r->message);
    put_str(&b, "output_path", r->output_path);
    put_str(&b, "response_id", r->response_id);
    put_str(&b, "model_version", r->model_version);
    put_int(&b, "prompt_tokens", r->prompt_tokens);
    put_int(&b, "output_tokens", r->output_tokens);
    put_int(&b, "thought_tokens", r->thought_tokens);
    put(&b, "cost_usd", json_real(r->cost_usd));
    return jb_done(&b);
}

/* Prints value compactly, then end, and drops it; 0 or -1. */
static int
print_json(json_t *value, const char *end)
{
    int rc;

    if (value == NULL)
        return -1;
    rc = json_dumpf(value, stdout, JSON_COMPACT);
    json_decref(value);
    if (rc != 0)
        return -1;
    fputs(end, stdout);
    return 0;
}

/* ---- status ------------------------------------------------------------- */

struct batch_row {
    int64_t id;
    char *name;
    char *out_dir;
    int paused;
    int64_t created_ms;
    int64_t counts[QUEUE_NSTATES];
    int64_t total;
    double budget_usd;
    double spent_usd;
};

struct batch_rows {
    struct batch_row *rows;
    size_t n;
    int nomem;
};

static int
collect_batch(const struct queue_batch_status *s, void *arg)
{
    struct batch_rows *br = arg;
    struct batch_row *grown, *r;

    grown = realloc(br->rows, (br->n + 1) * sizeof(*grown));
    if (grown == NULL) {
        br->nomem = 1;
        return 1;
    }
    br->rows = grown;
    r = &br->rows[br->n];
    memset(r, 0, sizeof(*r));
    r->name = strdup(s->name);
    r->out_dir = strdup(s->out_dir);
    if (r->name == NULL || r->out_dir == NULL) {
        free(r->name);
        free(r->out_dir);
        br->nomem = 1;
        return 1;
    }
    br->n++;
    r->id = s->id;
    r->paused = s->paused;
    r->created_ms = s->created_ms;
    memcpy(r->counts, s->counts, sizeof(r->counts));
    r->total = s->total;
    r->budget_usd = s->budget_usd;
    r->spent_usd = s->spent_usd;
    return 0;
}

static void
free_rows(struct batch_rows *br)
{
    for (size_t i = 0; i < br->n; i++) {
        free(br->rows[i].name);
        free(br->rows[i].out_dir);
    }
    free(br->rows);
}

static void
put_counts(struct jb *b, const int64_t *counts, int64_t total)
{
    for (int s = 0; s < QUEUE_NSTATES; s++)
        put_int(b, queue_state_name(s), counts[s]);
    put_int(b, "total", total);
}

/* ---- remote batches (Batch mode) ---------------------------------------- */

/* Ended chunks stay in `status` this long after they end. */
#define REMOTE_SHOW_MS (24LL * 3600 * 1000)

struct remote_row {
    char *display;
    char *batch;
    char *model;
    char *phase;
    char *remote_name;
    char *remote_state;
    char *last_error;
    int64_t n_jobs;
    int64_t counts[QUEUE_NSTATES];
    int64_t created_ms;
    int64_t ended_ms;
    int64_t polls;
};

struct remote_rows {
    struct remote_row *rows;
    size_t n;
    int nomem;
    int64_t now_ms;
};

static char *
dup_or_empty(const char *s)
{
    return strdup(s != NULL ? s : "");
}

static int
collect_remote(const struct queue_remote *q, void *arg)
{
    struct remote_rows *rr = arg;
    struct remote_row *grown, *r;

    if (q->ended_ms > 0 && rr->now_ms - q->ended_ms > REMOTE_SHOW_MS)
        return 0;
    grown = realloc(rr->rows, (rr->n + 1) * sizeof(*grown));
    if (grown == NULL) {
        rr->nomem = 1;
        return 1;
    }
    rr->rows = grown;
    r = &rr->rows[rr->n++];
    memset(r, 0, sizeof(*r));
    r->display = dup_or_empty(q->display_name);
    r->batch = dup_or_empty(q->batch);
    r->model = dup_or_empty(q->model);
    r->phase = dup_or_empty(q->phase);
    r->remote_name = dup_or_empty(q->remote_name);
    r->remote_state = dup_or_empty(q->remote_state);
    r->last_error = dup_or_empty(q->last_error);
    if (r->display == NULL || r->batch == NULL || r->model == NULL ||
        r->phase == NULL || r->remote_name == NULL ||
        r->remote_state == NULL || r->last_error == NULL)
        rr->nomem = 1;
    r->n_jobs = q->n_jobs;
    memcpy(r->counts, q->counts, sizeof(r->counts));
    r->created_ms = q->created_ms;
    r->ended_ms = q->ended_ms;
    r->polls = q->polls;
    return rr->nomem;
}

static void
free_remote_rows(struct remote_rows *rr)
{
    for (size_t i = 0; i < rr->n; i++) {
        struct remote_row *r = &rr->rows[i];

        free(r->display);
        free(r->batch);
        free(r->model);
        free(r->phase);
        free(r->remote_name);
        free(r->remote_state);
        free(r->last_error);
    }
    free(rr->rows);
}

/* "3h05m" of an age in ms. */
static void
age_text(int64_t ms, char *buf, size_t len)
{
    int64_t s = ms > 0 ? ms / 1000 : 0;

    if (s < 3600)
        snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else
        snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", s / 3600,
                 (s % 3600) / 60);
}

/* The remote state without its BATCH_STATE_ or JOB_STATE_ prefix. */
static const char *
short_state(const char *s)
{
    if (strncmp(s, "BATCH_STATE_", 12) == 0)
        return s + 12;
    if (strncmp(s, "JOB_STATE_", 10) == 0)
        return s + 10;
    return *s ? s : "-";
}

static void
remote_table(const struct remote_rows *rr)
{
    char age[32];

    if (rr->n == 0)
        return;
    printf("\n%-24s %-16s %-11s %-10s %6s %6s %6s %7s %8s  %s\n",
           "REMOTE BATCH", "BATCH", "PHASE", "STATE", "JOBS", "DONE",
           "FAILED", "WAITING", "AGE", "NAME");
    for (size_t i = 0; i < rr->n; i++) {
        const struct remote_row *r = &rr->rows[i];

        age_text((r->ended_ms > 0 ? r->ended_ms : rr->now_ms) -
                 r->created_ms, age, sizeof(age));
        printf("%-24s %-16.16s %-11s %-10.10s %6" PRId64 " %6" PRId64
               " %6" PRId64 " %7" PRId64 " %8s  %s\n", r->display, r->batch,
               r->phase, short_state(r->remote_state), r->n_jobs,
               r->counts[QUEUE_DONE],
               r->counts[QUEUE_FAILED] + r->counts[QUEUE_BLOCKED],
               r->counts[QUEUE_RUNNING], age,
               r->remote_name[0] ? r->remote_name : "-");
        if (r->last_error[0] != '\0' && r->ended_ms == 0)
            printf("  last error: %s\n", r->last_error);
    }
}

static json_t *
remote_json(const struct remote_rows *rr)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr != NULL && i < rr->n; i++) {
        const struct remote_row *r = &rr->rows[i];
        struct jb b = {json_object(), 0};

        put_str(&b, "display_name", r->display);
        put_str(&b, "batch", r->batch);
        put_str(&b, "model", r->model);
        put_str(&b, "phase", r->phase);
        put_str(&b, "name", r->remote_name[0] ? r->remote_name : NULL);
        put_str(&b, "state", r->remote_state[0] ? r->remote_state : NULL);
        put_int(&b, "jobs", r->n_jobs);
        put_int(&b, "done", r->counts[QUEUE_DONE]);
        put_int(&b, "failed",
                r->counts[QUEUE_FAILED] + r->counts[QUEUE_BLOCKED]);
        put_int(&b, "waiting", r->counts[QUEUE_RUNNING]);
        put_int(&b, "polls", r->polls);
        put_time(&b, "created", r->created_ms);
        put_time(&b, "ended", r->ended_ms);
        put_int(&b, "age_s", ((r->ended_ms > 0 ? r->ended_ms : rr->now_ms)
                              - r->created_ms) / 1000);
        put_str(&b, "last_error", r->last_error[0] ? r->last_error : NULL);
        json_array_append_new(arr, jb_done(&b));
    }
    return arr;
}

static int
status_json(const struct batch_rows *br, const struct remote_rows *rr)
{
    struct jb top = {json_object(), 0}, sum = {json_object(), 0};
    int64_t counts[QUEUE_NSTATES] = {0}, total = 0;
    double spent = 0;
    json_t *arr = json_array();

    for (size_t i = 0; arr != NULL && i < br->n; i++) {
        const struct batch_row *r = &br->rows[i];
        struct jb b = {json_object(), 0};

        put_int(&b, "id", r->id);
        put_str(&b, "name", r->name);
        put_str(&b, "out_dir", r->out_dir);
        put(&b, "paused", json_boolean(r->paused));
        put_time(&b, "created", r->created_ms);
        put_counts(&b, r->counts, r->total);
        put(&b, "spent_usd", json_real(r->spent_usd));
        put(&b, "budget_usd", r->budget_usd > 0 ?
            json_real(r->budget_usd) : json_null());
        if (json_array_append_new(arr, jb_done(&b)) != 0)
            top.bad = 1;
        spent += r->spent_usd;
        for (int s = 0; s < QUEUE_NSTATES; s++)
            counts[s] += r->counts[s];
        total += r->total;
    }
    put_counts(&sum, counts, total);
    put(&sum, "spent_usd", json_real(spent));
    put(&top, "batches", arr);
    put(&top, "total", jb_done(&sum));
    put(&top, "remote_batches", remote_json(rr));
    return print_json(jb_done(&top), "\n");
}

static void
status_line(const char *name, int name_w, const int64_t *c, int64_t total,
            double spent, double budget, const char *paused,
            const char *folder)
{
    char images[48], money[48];

    snprintf(images, sizeof(images), "%" PRId64 "/%" PRId64,
             c[QUEUE_DONE], total);
    if (budget > 0)
        snprintf(money, sizeof(money), "$%.2f/%.2f", spent, budget);
    else
        snprintf(money, sizeof(money), "$%.2f", spent);
    printf("%-*s %7" PRId64 " %7" PRId64 " %7" PRId64 " %7" PRId64 " %7"
           PRId64 " %9" PRId64 " %13s %13s", name_w, name, c[QUEUE_QUEUED],
           c[QUEUE_RUNNING], c[QUEUE_DONE], c[QUEUE_FAILED],
           c[QUEUE_BLOCKED], c[QUEUE_CANCELLED], images, money);
    if (paused != NULL)
        printf("  %-6s %s", paused, folder);
    putchar('\n');
}

static void
status_table(const struct batch_rows *br)
{
    int64_t counts[QUEUE_NSTATES] = {0}, total = 0;
    double spent = 0;
    int name_w = 5;

    if (br->n == 0) {
        printf("no batches yet: `nbbatch add FILE` queues some\n");
        return;
    }
    for (size_t i = 0; i < br->n; i++) {
        int len = (int)strlen(br->rows[i].name);

        if (len > name_w)
            name_w = len < 40 ? len : 40;
    }
    printf("%-*s %7s %7s %7s %7s %7s %9s %13s %13s  %-6s %s\n", name_w,
           "BATCH", "QUEUED", "RUNNING", "DONE", "FAILED", "BLOCKED",
           "CANCELLED", "IMAGES", "SPENT", "PAUSED", "FOLDER");
    for (size_t i = 0; i < br->n; i++) {
        const struct batch_row *r = &br->rows[i];

        status_line(r->name, name_w, r->counts, r->total, r->spent_usd,
                    r->budget_usd, r->paused ? "yes" : "no", r->out_dir);
        for (int s = 0; s < QUEUE_NSTATES; s++)
            counts[s] += r->counts[s];
        total += r->total;
        spent += r->spent_usd;
    }
    if (br->n > 1)
        status_line("total", name_w, counts, total, spent, 0, NULL, NULL);
}

int
cmd_status(int argc, char **argv)
{
    struct batch_rows br = {NULL, 0, 0};
    struct remote_rows rr = {NULL, 0, 0, cli_now_ms()};
    struct queue *q = NULL;
    struct opts o;
    int rc;

    if ((rc = parse_opts(argc, argv, OPT_DB | OPT_JSON, 0, 1, &o)) != 0)
        return rc < 0 ? EXIT_OK : rc;
    if ((rc = cli_open_queue(o.db, &q)) != EXIT_OK)
        return rc;
    rc = queue_status(q, o.nargs ? o.args[0] : NULL, collect_batch, &br);
    if (rc == 0)
        rc = queue_remote_list(q, o.nargs ? o.args[0] : NULL, 0,
                               collect_remote, &rr);
    if (rc != 0) {
        rc = queue_fail(&o, q, rc);
    } else if (br.nomem || rr.nomem) {
        log_error("status: out of memory");
        rc = EXIT_SOFTWARE;
    } else if (o.json) {
        rc = status_json(&br, &rr) == 0 ? EXIT_OK : EXIT_SOFTWARE;
        if (rc != EXIT_OK)
            log_error("status: cannot write JSON");
    } else {
        status_table(&br);
        remote_table(&rr);
    }
    free_rows(&br);
    free_remote_rows(&rr);
    queue_close(q);
    return rc;
}

/* ---- list --------------------------------------------------------------- */

struct lister {
    int json;
    int count;
    int prompt_w;
    int failed;
};

/* What the last column says: the last error, else the output path. */
static const char *
job_result(const struct queue_job *j, char *buf, size_t len)
{
    if (j->state != QUEUE_DONE && j->err_class != NULL) {
        error_text(j->err_class, j->err_http, j->err_status, j->err_message,
                   buf, len);
        return buf;
    }
    return j->out_path;
}

static int
list_one(const struct queue_job *j, void *arg)
{
    struct lister *l = arg;
    char batch[4 * 12 + 1], *prompt, result[2048];

    if (l->json) {
        fputs(l->count++ ? ",\n" : "[\n", stdout);
        if (print_json(job_json(j), "") != 0) {
            l->failed = 1;
            return 1;
        }
        return 0;
    }
    if ((prompt = malloc(4 * (size_t)l->prompt_w + 1)) == NULL) {
        l->failed = 1;
        return 1;
    }
    if (l->count++ == 0)
        printf("%7s  %-12s %-9s %5s  %-*s  %s\n", "ID", "BATCH", "STATE",
               "TRIES", l->prompt_w, "PROMPT", "RESULT");
    fit(j->batch, 12, 1, batch);
    fit(j->prompt, l->prompt_w, 1, prompt);
    printf("%7" PRId64 "  %s %-9s %5d  %s  %s\n", j->id, batch,
           queue_state_name(j->state), j->attempts, prompt,
           job_result(j, result, sizeof(result)));
    free(prompt);
    return 0;
}

int
cmd_list(int argc, char **argv)
{
    struct lister l = {0, 0, 0, 0};
    struct queue *q = NULL;
    struct opts o;
    int rc;

    rc = parse_opts(argc, argv, OPT_DB | OPT_JSON | OPT_STATE | OPT_BATCH |
                    OPT_LIMIT, 0, 0, &o);
    if (rc != 0)
        return rc < 0 ? EXIT_OK : rc;
    if ((rc = cli_open_queue(o.db, &q)) != EXIT_OK)
        return rc;
    l.json = o.json;
    /* ID, batch, state and tries take 38 columns; the result needs room. */
    l.prompt_w = (term_width() - 38) / 2;
    l.prompt_w = l.prompt_w < 20 ? 20 : l.prompt_w > 60 ? 60 : l.prompt_w;
    rc = queue_list(q, o.state, o.batch, 0, o.limit, list_one, &l);
    if (rc != 0) {
        rc = queue_fail(&o, q, rc);
    } else if (l.failed) {
        log_error("list: cannot format a job");
        rc = EXIT_SOFTWARE;
    } else {
        rc = EXIT_OK;
        if (o.json)
            fputs(l.count ? "\n]\n" : "[]\n", stdout);
        else if (l.count == 0)
            log_info("list: no jobs match");
    }
    queue_close(q);
    return rc;
}

/* ---- show --------------------------------------------------------------- */

static int
collect_attempt(const struct queue_attempt_row *r, void *arg)
{
    json_t *obj = attempt_json(r);

    if (obj == NULL || json_array_append_new(arg, obj) != 0)
        return 1;
    return 0;
}

static int
show_json(struct queue *q, const struct queue_job *j, const struct opts *o)
{
    json_t *obj = job_json(j), *history = json_array();
    int rc;

    if (obj == NULL || history == NULL) {
        json_decref(obj);
        json_decref(history);
        log_error("show: cannot format job %" PRId64, j->id);
        return EXIT_SOFTWARE;
    }
    json_object_set_new(obj, "history", history);
    if ((rc = queue_attempts(q, j->id, collect_attempt, history)) != 0) {
        json_decref(obj);
        return queue_fail(o, q, rc);
    }
    return print_json(obj, "\n") == 0 ? EXIT_OK : EXIT_SOFTWARE;
}

static int
print_attempt(const struct queue_attempt_row *r, void *arg)
{
    char when[40], err[2048];

    (*(int *)arg)++;
    printf("  #%-4" PRId64 " %s  %-11s %7" PRId64 " ms  ", r->id,
           iso_time(r->started_ms, 0, when, sizeof(when)), r->outcome,
           r->latency_ms);
    if (r->output_path != NULL) {
        fputs(r->output_path, stdout);
    } else if (r->err_class != NULL || r->message != NULL) {
        error_text(r->err_class, r->http_status, r->api_status, r->message,
                   err, sizeof(err));
        fputs(err, stdout);
    }
    if (r->output_tokens > 0 || r->cost_usd > 0)
        printf("  (%" PRId64 " tokens in, %" PRId64 " out, $%.4f)",
               r->prompt_tokens, r->output_tokens + r->thought_tokens,
               r->cost_usd);
    putchar('\n');
    return 0;
}

static void
show_field(const char *name, const char *value)
{
    printf("  %-13s %s\n", name, value ? value : "-");
}

static void
show_times(const struct queue_job *j)
{
    char t[40];

    show_field("created", iso_time(j->created_ms, 0, t, sizeof(t)));
    show_field("updated", iso_time(j->updated_ms, 0, t, sizeof(t)));
    show_field("not before", iso_time(j->not_before_ms, 0, t, sizeof(t)));
    show_field("next attempt", iso_time(j->next_attempt_ms, 0, t,
                                        sizeof(t)));
}

static void
show_table(const struct queue_job *j)
{
    char buf[2048], t[40];

    printf("job %" PRId64 " of batch %s (#%" PRId64 ")\n", j->id, j->batch,
           j->seq);
    show_field("state", queue_state_name(j->state));
    snprintf(buf, sizeof(buf), "%d (transient %d, soft %d)", j->attempts,
             j->attempts_transient, j->attempts_soft);
    show_field("attempts", buf);
    show_field("prompt", j->prompt);
    show_field("model", j->model);
    show_field("aspect", j->aspect ? j->aspect : "(model's choice)");
    show_field("size", j->size ? j->size : "(model's default)");
    show_field("via", j->via);
    snprintf(buf, sizeof(buf), "%d%s", j->priority,
             j->offpeak ? ", off-peak only" : "");
    show_field("priority", buf);
    snprintf(buf, sizeof(buf), "%d", j->count_index);
    show_field("count index", buf);
    show_field("output", j->out_path);
    show_field("key", j->key);
    for (size_t i = 0; i < j->n_refs; i++) {
        snprintf(buf, sizeof(buf), "%s (sha256 %.12s...)", j->refs[i].path,
                 j->refs[i].sha256_hex);
        show_field(i == 0 ? "references" : "", buf);
    }
    show_times(j);
    if (j->lease_owner != NULL) {
        snprintf(buf, sizeof(buf), "%s until %s", j->lease_owner,
                 iso_time(j->lease_expires_ms, 0, t, sizeof(t)));
        show_field("lease", buf);
    }
    show_field("checkpoint", j->checkpoint);
    if (j->err_class != NULL || j->err_message != NULL) {
        error_text(j->err_class, j->err_http, j->err_status, j->err_message,
                   buf, sizeof(buf));
        show_field("last error", buf);
    }
}

int
cmd_show(int argc, char **argv)
{
    struct queue_job *job = NULL;
    struct queue *q = NULL;
    struct opts o;
    int64_t id = 0;
    int rc, rows = 0;

    if ((rc = parse_opts(argc, argv, OPT_DB | OPT_JSON, 1, 1, &o)) != 0)
        return rc < 0 ? EXIT_OK : rc;
    if ((rc = job_arg(&o, o.args[0], &id)) != EXIT_OK)
        return rc;
    if ((rc = cli_open_queue(o.db, &q)) != EXIT_OK)
        return rc;
    if ((rc = queue_get(q, id, &job)) != 0) {
        rc = queue_fail(&o, q, rc);
    } else if (o.json) {
        rc = show_json(q, job, &o);
    } else {
        show_table(job);
        printf("history:\n");
        rc = queue_attempts(q, id, print_attempt, &rows);
        rc = rc ? queue_fail(&o, q, rc) : EXIT_OK;
        if (rc == EXIT_OK && rows == 0)
            printf("  (no attempts yet)\n");
    }
    queue_job_free(job);
    queue_close(q);
    return rc;
}

/* ---- cancel, retry, pause, resume --------------------------------------- */

/* For one job that nothing happened to: says which state it is in. */
static int
explain_job(const struct opts *o, struct queue *q, int64_t id,
            const char *verb)
{
    struct queue_job *job = NULL;
    int rc;

    if ((rc = queue_get(q, id, &job)) != 0)
        return queue_fail(o, q, rc);
    printf("%s 0 jobs: job %" PRId64 " is %s\n", verb, id,
           queue_state_name(job->state));
    queue_job_free(job);
    return EXIT_OK;
}

/*
 * Cancels at the API the remote batches whose jobs are all cancelled now.
 * The key and endpoint are those of `nbbatch run` (environment, then the
 * configuration file).  Returns an exit status.
 */
static int
cancel_remote(struct queue *q, const char *batch)
{
    struct http_config hc = {0};
    struct http *http = NULL;
    struct config cfg;
    const char *source;
    char err[512], *key = NULL;
    int n = 0, rc;

    if (remote_count_empty(q, batch, &n) != 0) {
        log_error("cancel: %s", queue_errmsg(q));
        return EXIT_IOERR;
    }
    if (n == 0)
        return EXIT_OK;
    config_init(&cfg);
    if (config_load(NULL, &cfg, err, sizeof(err)) != 0)
        log_warn("cancel: %s", err);
    if (apikey_load(getenv("GEMINI_API_KEY") == NULL &&
                    getenv("GOOGLE_API_KEY") == NULL && cfg.key_file[0]
                    ? cfg.key_file : NULL, &key, &source, err,
                    sizeof(err)) != 0) {
        log_warn("cancel: %s", err);
    } else if (http_global_init() == 0) {
        hc.base_url = apikey_base_url();
        if (hc.base_url == NULL && cfg.endpoints[0].base_url[0] != '\0')
            hc.base_url = cfg.endpoints[0].base_url;
        hc.api_key = key;
        if ((http = http_new(&hc, err, sizeof(err))) == NULL)
            log_warn("cancel: %s", err);
    }
    rc = remote_cancel_empty(q, http, batch, &n, err, sizeof(err));
    http_free(http);
    apikey_free(key);
    if (n > 0)
        printf("cancelled %d remote batch%s at the Batch API\n", n,
               n == 1 ? "" : "es");
    if (rc != 0) {
        log_error("cancel: %s; the local jobs are cancelled, run `nbbatch "
                  "cancel` again to cancel the remote batch", err);
        return EXIT_TEMPFAIL;
    }
    return EXIT_OK;
}

int
cmd_cancel(int argc, char **argv)
{
    struct queue *q = NULL;
    struct opts o;
    int64_t id = 0, n = 0;
    int rc;

    if ((rc = parse_opts(argc, argv, OPT_DB | OPT_BATCH, 0, 1, &o)) != 0)
        return rc < 0 ? EXIT_OK : rc;
    if ((o.nargs == 1) == (o.batch != NULL)) {
        log_error("cancel: give either a job id or --batch NAME");
        return cli_usage("cancel");
    }
    if (o.nargs == 1 && (rc = job_arg(&o, o.args[0], &id)) != EXIT_OK)
        return rc;
    if ((rc = cli_open_queue(o.db, &q)) != EXIT_OK)
        return rc;
    rc = queue_cancel(q, id, o.batch, cli_now_ms(), &n);
    if (rc != 0)
        rc = queue_fail(&o, q, rc);
    else if (id > 0 && n == 0)
        rc = explain_job(&o, q, id, "cancelled");
    else if (id > 0)
        printf("cancelled job %" PRId64 "\n", id);
    else
        printf("cancelled %" PRId64 " job%s of batch %s\n", n,
               n == 1 ? "" : "s", o.batch);
    if (rc == EXIT_OK)
        rc = cancel_remote(q, o.batch);
    queue_close(q);
    return rc;
}

int
cmd_retry(int argc, char **argv)
{
    struct queue *q = NULL;
    struct opts o;
    int64_t id = 0, n = 0;
    int rc;

    rc = parse_opts(argc, argv, OPT_DB | OPT_BATCH | OPT_ALL, 0, 1, &o);
    if (rc != 0)
        return rc < 0 ? EXIT_OK : rc;
    if ((o.nargs == 1) + (o.batch != NULL) + o.all > 1) {
        log_error("retry: give one of a job id, --batch NAME or --all");
        return cli_usage("retry");
    }
    if (o.nargs == 1 && (rc = job_arg(&o, o.args[0], &id)) != EXIT_OK)
        return rc;
    if ((rc = cli_open_queue(o.db, &q)) != EXIT_OK)
        return rc;
    rc = queue_retry(q, id, o.batch, cli_now_ms(), &n);
    if (rc != 0)
        rc = queue_fail(&o, q, rc);
    else if (id > 0 && n == 0)
        rc = explain_job(&o, q, id, "retried");
    else if (id > 0)
        printf("retried job %" PRId64 "\n", id);
    else
        printf("retried %" PRId64 " failed or blocked job%s\n", n,
               n == 1 ? "" : "s");
    queue_close(q);
    return rc;
}

static int
set_paused(int argc, char **argv, int paused)
{
    struct queue *q = NULL;
    struct opts o;
    int rc;

    if ((rc = parse_opts(argc, argv, OPT_DB, 1, 1, &o)) != 0)
        return rc < 0 ? EXIT_OK : rc;
    if ((rc = cli_open_queue(o.db, &q)) != EXIT_OK)
        return rc;
    if ((rc = queue_set_paused(q, o.args[0], paused)) != 0)
        rc = queue_fail(&o, q, rc);
    else
        printf("%s batch %s\n", paused ? "paused" : "resumed", o.args[0]);
    queue_close(q);
    return rc;
}

int
cmd_pause(int argc, char **argv)
{
    return set_paused(argc, argv, 1);
}

int
cmd_resume(int argc, char **argv)
{
    return set_paused(argc, argv, 0);
}

int
cmd_budget(int argc, char **argv)
{
    struct queue *q = NULL;
    struct opts o;
    char *end;
    double usd;
    int rc;

    if ((rc = parse_opts(argc, argv, OPT_DB, 2, 2, &o)) != 0)
        return rc < 0 ? EXIT_OK : rc;
    usd = strtod(o.args[1], &end);
    if (end == o.args[1] || *end != '\0' || !(usd >= 0) || usd > 1e9) {
        log_error("budget: '%s' is not an amount in USD", o.args[1]);
        return EXIT_USAGE;
    }
    if ((rc = cli_open_queue(o.db, &q)) != EXIT_OK)
        return rc;
    if ((rc = queue_set_budget(q, o.args[0], usd)) != 0)
        rc = queue_fail(&o, q, rc);
    else if (usd > 0)
        printf("budget of batch %s: $%.2f\n", o.args[0], usd);
    else
        printf("batch %s has no budget\n", o.args[0]);
    queue_close(q);
    return rc;
}
