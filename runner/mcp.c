/*
 * mcp.c - `nbbatch mcp`: the Model Context Protocol over stdio, a front
 * door to the same queue and runner as the command line.
 *
 * One JSON-RPC message per line comes in on stdin and one goes out per
 * line on stdout; stdout carries nothing else (logs go to stderr, and no
 * child process ever gets our stdout).  Messages are parsed and answers
 * built by mcp_proto.c; this file does the talking and the work.
 *
 * generate_images adds no second engine: it writes the prompts to a
 * private JSON Lines file and runs this very binary (/proc/self/exe) as
 * `nbbatch add`, then as `nbbatch run --batch B --json`, the child's
 * events arriving on a pipe.  The jobs of a call are found by their keys,
 * computed as `add` computes them, in whatever batch they are (a key is
 * unique in the queue), so asking again for the same prompts finds the
 * same jobs (failed, blocked or cancelled ones are put back in the
 * queue).  One run per batch serves every call with jobs in it.  A call
 * is answered when all its jobs are finished, when its wait is over (the
 * run goes on in the background), or when a run stops for a reason a
 * person must act on (exit 78: the fix from advice.c; exit 75: when the
 * jobs will go; a paused batch).  The queue, not the event stream, is
 * the truth: a pending call is re-read from it on each event of its runs
 * and every second, so jobs run by another `nbbatch run` on the same
 * database count as well, and a run that ended while jobs were still
 * queued is started again, less often each time nothing got done.
 *
 * One thread and poll(2) over stdin and the children's pipes: ping,
 * job_status and the rest are answered while images are being made.  On
 * end of input or SIGTERM the children get SIGTERM (they release their
 * jobs), are waited for, and the server exits 0.  The API key never
 * appears in an answer: it only passes to the children in the
 * environment or their key file, and every line sent is checked for the
 * environment's keys and those of the key files.
 *
 * Choices: `add` runs as a child rather than in-process because it
 * prints its summary on stdout, our protocol channel, and it keeps one
 * code path for validation and naming; its "FILE:LINE: field" errors are
 * turned into "prompts[i]: field".  The server waits for `add` (it reads
 * only a private file and regular reference images, so it is short).
 * Batch "mcp" is the default; images go to out/BATCH next to the
 * database, since an agent's working directory is often not writable.
 * Requests that come before initialize are answered all the same.
 * Argument errors are isError results naming the field (an agent can act
 * on them); an unknown tool or malformed params are -32602.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "jobs/jobkey.h"
#include "queue/nberr.h"
#include "queue/queue.h"
#include "runner/advice.h"
#include "runner/apikey.h"
#include "runner/cli.h"
#include "runner/config.h"
#include "runner/log.h"
#include "runner/mcp_proto.h"


#define DEFAULT_BATCH     "mcp"
#define CHECK_EVERY_MS    1000
#define RESPAWN_AFTER_MS  1000
#define RESPAWN_MAX_MS    60000
#define STATUS_PAUSED     (-2)
#define MAX_SECRETS       (CONFIG_MAX_ENDPOINTS + 2)
#define STOP_GRACE_MS     10000
#define CHILD_LINE_MAX    (1 << 20)
#define TEXT_JOBS_MAX     100

/* Bytes read from a descriptor, cut into lines. */
struct linebuf {
    char *buf;
    size_t len, cap;
    int discarding;             /* inside a line that was too long */
};

/* A `nbbatch run --batch B` child and what it said; one per batch at a
 * time, shared by every call with jobs in B. */
struct child {
    pid_t pid;
    char batch[128];
    int out_fd, err_fd;         /* -1 once at end of file */
    struct linebuf out, err;
    int ended;                  /* its "end" event arrived */
    char stop_reason[768];
    char last_note[512];        /* last stderr line worth quoting */
    char last_error[512];       /* last stderr error line */
    struct child *next;
};

/* The run of one batch that a call's jobs wait on.  A prompt asked for
 * before in another batch is found there (keys are unique in the whole
 * queue), so one call may wait on runs of several batches. */
struct call_run {
    char batch[128];
    struct child *child;        /* NULL while none runs */
    int status;                 /* last exit status, -1 none, or
                                   STATUS_PAUSED */
    char reason[768];           /* why it stopped, when it said */
    int64_t spawned_mono;
    int64_t respawn_ms;         /* wait before the next start: grows while
                                   runs end and nothing gets done */
    int64_t queued;             /* the call's queued jobs in the batch */
};

/* A generate_images call waiting for its jobs. */
struct call {
    json_t *id;                 /* owned */
    json_t *token;              /* owned progress token, or NULL */
    char batch[128];            /* the batch asked for */
    int64_t *job_ids;           /* sorted, owned */
    size_t n_jobs;
    struct call_run *runs;      /* owned */
    size_t n_runs;
    int64_t wait_ms;
    int64_t deadline_mono;
    int64_t next_check_mono;
    int64_t reported;           /* done count last sent as progress */
    struct call *next;
};

struct server {
    struct queue *q;
    char db[PATH_MAX];
    char exe[PATH_MAX];
    char out_root[PATH_MAX];
    const char *key_file;
    const char *config;
    int workers;
    struct linebuf in;
    int in_open;
    int initialized;
    struct child *children;
    struct call *calls;
    char *secrets[MAX_SECRETS]; /* keys from files, never sent */
};

static volatile sig_atomic_t stop_signal;

static void
on_signal(int sig)
{
    stop_signal = sig;
}

/* ---- output -------------------------------------------------------------- */

static int
write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NB_EIO;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Replaces every copy of secret in *line by "[redacted]". */
static void
redact(char **line, const char *secret)
{
    static const char mark[] = "[redacted]";
    size_t slen = secret != NULL ? strlen(secret) : 0;
    char *hit, *out;
    size_t len, at;

    if (slen < 4)
        return;
    while ((hit = strstr(*line, secret)) != NULL) {
        len = strlen(*line);
        at = (size_t)(hit - *line);
        out = malloc(len - slen + sizeof(mark));
        if (out == NULL) {
            memset(hit, '*', slen);
            continue;
        }
        memcpy(out, *line, at);
        memcpy(out + at, mark, sizeof(mark) - 1);
        memcpy(out + at + sizeof(mark) - 1, hit + slen, len - at - slen + 1);
        free(*line);
        *line = out;
    }
}

/* Sends one message line (owned, freed here).  A client gone stops the
 * server. */
static void
send_line(struct server *s, char *line)
{
    if (line == NULL) {
        log_error("mcp: out of memory building an answer");
        return;
    }
    redact(&line, getenv("GEMINI_API_KEY"));
    redact(&line, getenv("GOOGLE_API_KEY"));
    for (int i = 0; i < MAX_SECRETS && s->secrets[i] != NULL; i++)
        redact(&line, s->secrets[i]);
    log_debug("mcp: -> %.200s", line);
    if (write_all(STDOUT_FILENO, line, strlen(line)) != 0 ||
        write_all(STDOUT_FILENO, "\n", 1) != 0) {
        log_error("mcp: cannot write to the client: %s", strerror(errno));
        s->in_open = 0;
    }
    free(line);
}

static void
send_error(struct server *s, const json_t *id, int code, const char *msg)
{
    send_line(s, mcp_proto_error(id, code, msg));
}

/* Sends result (stolen) as the answer to id; a request is answered even
 * when its answer cannot be built. */
static void
send_result(struct server *s, const json_t *id, json_t *result)
{
    char *line = mcp_proto_result(id, result);

    if (line == NULL) {
        log_error("mcp: an answer could not be built");
        send_error(s, id, MCP_INTERNAL_ERROR, "internal error: the answer "
                   "could not be built (the server goes on)");
        return;
    }
    send_line(s, line);
}

static void
send_tool(struct server *s, const json_t *id, const char *text,
          json_t *structured, int is_error)
{
    send_result(s, id, mcp_proto_tool_result(text, structured, is_error));
}

/* "2026-12-03T22:00:00Z" */
static void
iso_time(int64_t ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;

    if (gmtime_r(&secs, &tm) == NULL ||
        strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "?");
}

/* ---- lines from descriptors --------------------------------------------- */

typedef void (*line_cb)(const char *line, size_t len, int too_long,
                        void *arg);

/* Hands every complete line in b to cb, keeping the rest. */
static void
linebuf_split(struct linebuf *b, size_t max, line_cb cb, void *arg)
{
    size_t start = 0;
    char *nl;

    while ((nl = memchr(b->buf + start, '\n', b->len - start)) != NULL) {
        size_t n = (size_t)(nl - (b->buf + start));

        *nl = '\0';
        if (!b->discarding)
            cb(b->buf + start, n, 0, arg);
        b->discarding = 0;
        start += n + 1;
    }
    memmove(b->buf, b->buf + start, b->len - start);
    b->len -= start;
    if (b->len > max) {
        if (!b->discarding)
            cb(NULL, 0, 1, arg);
        b->discarding = 1;
        b->len = 0;
    }
}

/*
 * Reads what fd has into b and passes on its lines.  Returns 1 at end of
 * file (after the last unterminated line), 0 otherwise, NB_EIO or
 * NB_ENOMEM on failure.
 */
static int
linebuf_read(int fd, struct linebuf *b, size_t max, line_cb cb, void *arg)
{
    ssize_t n;

    if (b->cap - b->len < 65536) {
        size_t cap = b->cap ? b->cap * 2 : 131072;
        char *p = realloc(b->buf, cap + 1);

        if (p == NULL)
            return NB_ENOMEM;
        b->buf = p;
        b->cap = cap;
    }
    n = read(fd, b->buf + b->len, b->cap - b->len);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : NB_EIO;
    if (n == 0) {
        if (b->len > 0 && !b->discarding) {
            b->buf[b->len] = '\0';
            cb(b->buf, b->len, 0, arg);
        }
        b->len = 0;
        return 1;
    }
    b->len += (size_t)n;
    linebuf_split(b, max, cb, arg);
    return 0;
}

static void
linebuf_free(struct linebuf *b)
{
    free(b->buf);
    memset(b, 0, sizeof(*b));
}

/* ---- child processes ----------------------------------------------------- */

/*
 * Starts this binary with argv, stdin from /dev/null, stdout to a pipe
 * (*out_fd) or /dev/null (out_fd NULL), stderr to a pipe (*err_fd).
 * Returns the pid or -1.
 */
static pid_t
spawn(const char *exe, char *const argv[], int *out_fd, int *err_fd)
{
    int out[2] = {-1, -1}, err[2] = {-1, -1}, null_fd;
    pid_t pid;

    null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null_fd < 0 || pipe2(err, O_CLOEXEC) != 0 ||
        (out_fd != NULL && pipe2(out, O_CLOEXEC) != 0))
        goto fail;
    pid = fork();
    if (pid < 0)
        goto fail;
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        dup2(null_fd, STDIN_FILENO);
        dup2(out_fd != NULL ? out[1] : null_fd, STDOUT_FILENO);
        dup2(err[1], STDERR_FILENO);
        execv(exe, argv);
        _exit(127);
    }
    close(null_fd);
    close(err[1]);
    *err_fd = err[0];
    if (out_fd != NULL) {
        close(out[1]);
        *out_fd = out[0];
    }
    return pid;
fail:
    log_error("mcp: cannot start %s: %s", exe, strerror(errno));
    for (int i = 0; i < 2; i++) {
        if (out[i] >= 0)
            close(out[i]);
        if (err[i] >= 0)
            close(err[i]);
    }
    if (null_fd >= 0)
        close(null_fd);
    return -1;
}

/* Exit status of a reaped child: its code, or 128 + signal. */
static int
wait_status(pid_t pid)
{
    int st;

    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return EXIT_SOFTWARE;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* "nbbatch: error: text" -> "text" */
static const char *
strip_log_prefix(const char *line)
{
    static const char *const levels[] = {
        "nbbatch: error: ", "nbbatch: warn: ", "nbbatch: info: ",
        "nbbatch: debug: ", NULL
    };

    for (int i = 0; levels[i] != NULL; i++) {
        size_t n = strlen(levels[i]);

        if (strncmp(line, levels[i], n) == 0)
            return line + n;
    }
    return line;
}

/* A child's stderr line: passed on to ours, and remembered. */
static void
child_err_line(const char *line, size_t len, int too_long, void *arg)
{
    struct child *c = arg;
    const char *text;

    if (too_long || len == 0)
        return;
    fprintf(stderr, "%s\n", line);
    text = strip_log_prefix(line);
    if (strstr(line, ": error: ") != NULL)
        snprintf(c->last_error, sizeof(c->last_error), "%s", text);
    if (strncmp(text, "run ended:", 10) != 0 &&
        strncmp(text, "run started:", 12) != 0 &&
        strncmp(text, "job ", 4) != 0)
        snprintf(c->last_note, sizeof(c->last_note), "%s", text);
}

static void mark_calls(struct server *s, struct child *c);

/* A child's JSON event. */
static void
child_out_line(const char *line, size_t len, int too_long, void *arg)
{
    struct child *c = arg;
    json_t *ev;
    const char *event, *reason;

    if (too_long)
        return;
    ev = json_loadb(line, len, 0, NULL);
    event = json_string_value(json_object_get(ev, "event"));
    if (event != NULL && strcmp(event, "stop") == 0) {
        reason = json_string_value(json_object_get(ev, "reason"));
        if (reason != NULL)
            snprintf(c->stop_reason, sizeof(c->stop_reason), "%s", reason);
    } else if (event != NULL && strcmp(event, "end") == 0) {
        c->ended = 1;
    }
    json_decref(ev);
}

/* The running `nbbatch run` of batch, started when there is none. */
static struct child *
start_run(struct server *s, const char *batch)
{
    char workers[16];
    char *argv[16];
    struct child *c;
    int n = 0;

    for (c = s->children; c != NULL; c = c->next) {
        if (!c->ended && strcmp(c->batch, batch) == 0)
            return c;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    snprintf(c->batch, sizeof(c->batch), "%s", batch);
    argv[n++] = s->exe;
    argv[n++] = "run";
    argv[n++] = "--db";
    argv[n++] = s->db;
    argv[n++] = "--batch";
    argv[n++] = (char *)batch;
    argv[n++] = "--json";
    if (s->workers > 0) {
        snprintf(workers, sizeof(workers), "%d", s->workers);
        argv[n++] = "--workers";
        argv[n++] = workers;
    }
    if (s->key_file != NULL) {
        argv[n++] = "--key-file";
        argv[n++] = (char *)s->key_file;
    }
    if (s->config != NULL) {
        argv[n++] = "--config";
        argv[n++] = (char *)s->config;
    }
    argv[n] = NULL;
    c->pid = spawn(s->exe, argv, &c->out_fd, &c->err_fd);
    if (c->pid < 0) {
        free(c);
        return NULL;
    }
    log_info("mcp: started nbbatch run for batch %s (pid %ld)", batch,
             (long)c->pid);
    c->next = s->children;
    s->children = c;
    return c;
}

/* Reaps c once both its pipes are at end of file; tells its calls. */
static void
child_reap(struct server *s, struct child *c)
{
    struct child **pp;
    int status;

    status = wait_status(c->pid);
    log_info("mcp: nbbatch run (pid %ld) exited with status %d",
             (long)c->pid, status);
    for (struct call *k = s->calls; k != NULL; k = k->next) {
        for (size_t i = 0; i < k->n_runs; i++) {
            struct call_run *r = &k->runs[i];

            if (r->child != c)
                continue;
            r->child = NULL;
            r->status = status;
            snprintf(r->reason, sizeof(r->reason), "%s",
                     c->stop_reason[0] ? c->stop_reason :
                     c->last_error[0] ? c->last_error : c->last_note);
            k->next_check_mono = 0;
        }
    }
    for (pp = &s->children; *pp != c; pp = &(*pp)->next)
        ;
    *pp = c->next;
    linebuf_free(&c->out);
    linebuf_free(&c->err);
    free(c);
}

/* Reads what a child's pipe has; reaps the child when both are done. */
static void
child_input(struct server *s, struct child *c, int fd)
{
    int rc;

    if (fd == c->out_fd) {
        rc = linebuf_read(fd, &c->out, CHILD_LINE_MAX, child_out_line, c);
        mark_calls(s, c);
    } else {
        rc = linebuf_read(fd, &c->err, CHILD_LINE_MAX, child_err_line, c);
    }
    if (rc == 0)
        return;
    close(fd);
    if (fd == c->out_fd)
        c->out_fd = -1;
    else
        c->err_fd = -1;
    if (c->out_fd < 0 && c->err_fd < 0)
        child_reap(s, c);
}

/* ---- adding jobs --------------------------------------------------------- */

/* The prompt file for `nbbatch add`: one JSON line per prompt. */
static int
write_prompt_file(const struct mcp_gen_args *a, char *path, size_t len)
{
    const char *tmp = getenv("TMPDIR");
    FILE *f = NULL;
    int fd, rc = NB_EIO, saved = EIO;

    snprintf(path, len, "%s/nbbatch-mcp-XXXXXX",
             tmp != NULL && *tmp ? tmp : "/tmp");
    fd = mkstemp(path);
    if (fd < 0)
        return NB_EIO;
    if ((f = fdopen(fd, "w")) == NULL) {
        saved = errno;
        close(fd);
        goto fail;
    }
    for (size_t i = 0; i < a->n_prompts; i++) {
        json_t *line = json_pack("{s:s, s:s, s:i}", "prompt", a->prompts[i],
                                 "model", a->model, "count", a->count);
        json_t *refs = json_array();

        for (size_t r = 0; r < a->n_refs; r++)
            json_array_append_new(refs, json_string(a->refs[r]));
        if (a->aspect != NULL)
            json_object_set_new(line, "aspect_ratio", json_string(a->aspect));
        if (a->size != NULL)
            json_object_set_new(line, "image_size", json_string(a->size));
        if (a->n_refs > 0)
            json_object_set(line, "images", refs);
        rc = json_dumpf(line, f, JSON_COMPACT) == 0 && fputc('\n', f) != EOF
            ? 0 : NB_EIO;
        json_decref(refs);
        json_decref(line);
        if (rc != 0)
            goto fail;
    }
    rc = fclose(f);
    f = NULL;
    if (rc == 0)
        return 0;
    saved = errno;
fail:
    if (f != NULL) {
        saved = errno;
        fclose(f);
    }
    unlink(path);
    errno = saved;
    return NB_EIO;
}

/*
 * `nbbatch add` for the call.  Returns 0, or NB_EINVAL with msg saying
 * why the prompts were refused (in the client's terms: "prompts[3]"
 * instead of the private file's line 4), or another code.
 */
static int
run_add(struct server *s, const struct mcp_gen_args *a, const char *batch,
        const char *out_dir, char *msg, size_t len)
{
    char file[PATH_MAX], *argv[12];
    struct child c = {0};
    const char *text, *rest;
    int status, n = 0, stopped = 0;
    long line = 0;
    size_t flen;

    if (write_prompt_file(a, file, sizeof(file)) != 0) {
        snprintf(msg, len, "cannot write a temporary prompt file: %s",
                 strerror(errno));
        return NB_EIO;
    }
    argv[n++] = s->exe;
    argv[n++] = "add";
    argv[n++] = "--db";
    argv[n++] = s->db;
    argv[n++] = "--batch";
    argv[n++] = (char *)batch;
    argv[n++] = "--out";
    argv[n++] = (char *)out_dir;
    argv[n++] = file;
    argv[n] = NULL;
    c.out_fd = -1;
    c.pid = spawn(s->exe, argv, NULL, &c.err_fd);
    if (c.pid < 0) {
        unlink(file);
        snprintf(msg, len, "cannot start nbbatch add");
        return NB_EIO;
    }
    /* add reads only the private file and files checked to be regular,
     * so it is short; a SIGTERM meanwhile still stops it and us. */
    for (;;) {
        struct pollfd p = {.fd = c.err_fd, .events = POLLIN};

        if (stop_signal != 0 && !stopped) {
            kill(c.pid, SIGTERM);
            stopped = 1;
        }
        if (poll(&p, 1, 200) <= 0)
            continue;
        if (linebuf_read(c.err_fd, &c.err, CHILD_LINE_MAX, child_err_line,
                         &c) != 0)
            break;
    }
    close(c.err_fd);
    linebuf_free(&c.err);
    status = wait_status(c.pid);
    unlink(file);
    if (status == EXIT_OK)
        return 0;

    text = c.last_error[0] ? c.last_error : "nbbatch add failed";
    flen = strlen(file);
    if (strncmp(text, file, flen) == 0 && text[flen] == ':') {
        line = strtol(text + flen + 1, (char **)&rest, 10);
        if (*rest == ':')
            rest++;
        while (*rest == ' ')
            rest++;
        if (a->n_prompts > 1 || a->count == 1)
            snprintf(msg, len, "prompts[%ld]: %s", line - 1, rest);
        else
            snprintf(msg, len, "prompt: %s", rest);
    } else {
        snprintf(msg, len, "%s", text);
    }
    return status == EXIT_DATAERR || status == EXIT_NOINPUT ? NB_EINVAL
                                                            : NB_EIO;
}

/* ---- finding a call's jobs -------------------------------------------- */

static int
key_cmp(const void *x, const void *y)
{
    return strcmp(x, y);
}

static int
id_cmp(const void *x, const void *y)
{
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;

    return (a > b) - (a < b);
}

/* Adds batch to k's runs unless it is there. */
static int
call_add_run(struct call *k, const char *batch)
{
    struct call_run *r;

    for (size_t i = 0; i < k->n_runs; i++) {
        if (strcmp(k->runs[i].batch, batch) == 0)
            return 0;
    }
    r = realloc(k->runs, (k->n_runs + 1) * sizeof(*r));
    if (r == NULL)
        return NB_ENOMEM;
    k->runs = r;
    r = &k->runs[k->n_runs++];
    memset(r, 0, sizeof(*r));
    snprintf(r->batch, sizeof(r->batch), "%s", batch);
    r->status = -1;
    r->respawn_ms = RESPAWN_AFTER_MS;
    return 0;
}

/*
 * The call's jobs, from the keys `add` gave them: their ids (sorted, no
 * repeats: the same prompt twice is one job) and the batches they are in.
 * A job asked for before in another batch is that job: keys are unique
 * in the whole queue.  msg says why on failure.
 */
static int
find_jobs(struct server *s, const struct mcp_gen_args *a, struct call *k,
          char *msg, size_t len)
{
    const char *hexes[16];
    char ref_hex[16][65], (*keys)[65];
    const char *mime;
    size_t n, n_keys = 0;
    int rc = 0;

    for (size_t r = 0; r < a->n_refs && r < 16; r++) {
        if (jobkey_file(a->refs[r], ref_hex[r], &mime) != 0) {
            snprintf(msg, len, "reference_images[%zu]: cannot read %s", r,
                     a->refs[r]);
            return NB_EINVAL;
        }
        hexes[r] = ref_hex[r];
    }
    n = a->n_prompts * (size_t)a->count;
    keys = calloc(n, sizeof(*keys));
    k->job_ids = calloc(n, sizeof(*k->job_ids));
    if (keys == NULL || k->job_ids == NULL) {
        snprintf(msg, len, "out of memory");
        free(keys);
        return NB_ENOMEM;
    }
    for (size_t i = 0; i < a->n_prompts; i++)
        for (int c = 0; c < a->count; c++)
            jobkey_compute(a->model, a->prompts[i], a->aspect, a->size,
                           hexes, a->n_refs, c,
                           keys[i * (size_t)a->count + (size_t)c]);
    qsort(keys, n, sizeof(*keys), key_cmp);
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct queue_job *job = NULL;

        if (i > 0 && strcmp(keys[i], keys[n_keys - 1]) == 0)
            continue;
        memmove(keys[n_keys++], keys[i], sizeof(*keys));
        rc = queue_get_by_key(s->q, keys[n_keys - 1], &job);
        if (rc == 0) {
            k->job_ids[k->n_jobs++] = job->id;
            rc = call_add_run(k, job->batch);
        }
        queue_job_free(job);
    }
    free(keys);
    if (rc == NB_ENOTFOUND)
        snprintf(msg, len, "a job just added cannot be found in the queue "
                 "(was it deleted meanwhile?); call again");
    else if (rc != 0)
        snprintf(msg, len, "queue: %s", rc == NB_ENOMEM ? "out of memory"
                 : queue_errmsg(s->q));
    if (rc == 0)
        qsort(k->job_ids, k->n_jobs, sizeof(*k->job_ids), id_cmp);
    return rc;
}

/* ---- the state of a call's jobs ----------------------------------------- */

struct tally {
    struct call *call;
    int64_t now_ms;
    int64_t counts[QUEUE_NSTATES];
    json_t *paths;              /* when building the answer */
    json_t *pending;
    json_t *jobs;
    char failures[1024];        /* the first failures, for the text */
};

static int
is_finished(int state)
{
    return state == QUEUE_DONE || state == QUEUE_FAILED ||
           state == QUEUE_BLOCKED || state == QUEUE_CANCELLED;
}

/* One job as job_status and generate_images show it. */
static json_t *
job_json(const struct queue_job *j, int64_t now_ms)
{
    json_t *o = json_pack("{s:I, s:o, s:s, s:o, s:i}", "job_id",
                          (json_int_t)j->id, "batch",
                          mcp_proto_text(j->batch), "state",
                          queue_state_name(j->state), "prompt",
                          mcp_proto_text(j->prompt), "attempts",
                          j->attempts);
    char when[40];

    if (o == NULL)
        return NULL;
    if (j->state == QUEUE_DONE)
        json_object_set_new(o, "path", mcp_proto_text(j->out_path));
    if (j->err_message != NULL && j->state != QUEUE_DONE)
        json_object_set_new(o, "last_error", json_pack(
            "{s:s?, s:i, s:o}", "class", j->err_class, "http_status",
            j->err_http, "message", mcp_proto_text(j->err_message)));
    if (j->state == QUEUE_QUEUED && j->next_attempt_ms > now_ms) {
        iso_time(j->next_attempt_ms, when, sizeof(when));
        json_object_set_new(o, "next_attempt_at", json_string(when));
    }
    return o;
}

static void
note_failure(struct tally *t, const struct queue_job *j)
{
    size_t used = strlen(t->failures);

    if (used + 80 >= sizeof(t->failures))
        return;
    snprintf(t->failures + used, sizeof(t->failures) - used,
             "%sjob %lld %s: %.400s", used ? "; " : "", (long long)j->id,
             queue_state_name(j->state),
             j->err_message != NULL ? j->err_message : "no reason given");
}

static void
tally_job(struct tally *t, const struct queue_job *j)
{
    if (j->state >= 0 && j->state < QUEUE_NSTATES)
        t->counts[j->state]++;
    for (size_t i = 0; j->state == QUEUE_QUEUED && i < t->call->n_runs;
         i++) {
        if (strcmp(t->call->runs[i].batch, j->batch) == 0)
            t->call->runs[i].queued++;
    }
    if (t->jobs == NULL)
        return;
    json_array_append_new(t->jobs, job_json(j, t->now_ms));
    if (j->state == QUEUE_DONE)
        json_array_append_new(t->paths, mcp_proto_text(j->out_path));
    else if (!is_finished(j->state))
        json_array_append_new(t->pending, json_integer(j->id));
    else
        note_failure(t, j);
}

/* Reads the state of k's jobs, one by one: a call's jobs are few next to
 * the queue, and may be in several batches. */
static int
tally_call(struct server *s, struct call *k, struct tally *t, int detail)
{
    int rc = 0;

    memset(t, 0, sizeof(*t));
    t->call = k;
    t->now_ms = cli_now_ms();
    if (detail) {
        t->paths = json_array();
        t->pending = json_array();
        t->jobs = json_array();
    }
    for (size_t i = 0; i < k->n_runs; i++)
        k->runs[i].queued = 0;
    for (size_t i = 0; i < k->n_jobs && rc == 0; i++) {
        struct queue_job *j = NULL;

        rc = queue_get(s->q, k->job_ids[i], &j);
        if (rc == 0)
            tally_job(t, j);
        else if (rc == NB_ENOTFOUND)
            rc = 0;
        queue_job_free(j);
    }
    return rc;
}

static int64_t
unfinished(const struct tally *t)
{
    return t->counts[QUEUE_QUEUED] + t->counts[QUEUE_RUNNING];
}

/* ---- answering a call ------------------------------------------------ */

/* The text of an answer: what happened, the paths, what comes next. */
static char *
call_text(const struct call *k, const struct tally *t, const char *why)
{
    int64_t done = t->counts[QUEUE_DONE], left = unfinished(t);
    int64_t bad = (int64_t)k->n_jobs - done - left;
    size_t n_paths = json_array_size(t->paths), cap;
    char *text, *p;
    int w;

    cap = 2048 + strlen(t->failures) + n_paths * (PATH_MAX / 8);
    for (size_t i = 0; i < n_paths; i++)
        cap += strlen(json_string_value(json_array_get(t->paths, i))) + 1;
    text = malloc(cap);
    if (text == NULL)
        return NULL;
    p = text;
    w = snprintf(p, cap, "%lld of %zu images done in batch \"%s\"",
                 (long long)done, k->n_jobs, k->batch);
    p += w;
    if (bad > 0)
        p += snprintf(p, cap - (size_t)(p - text), "; %lld failed, blocked "
                      "or cancelled (%s; `nbbatch show JOB` has every "
                      "attempt, job_status the states)", (long long)bad,
                      t->failures);
    p += snprintf(p, cap - (size_t)(p - text), ".%s", n_paths ? "\n" : "");
    for (size_t i = 0; i < n_paths; i++)
        p += snprintf(p, cap - (size_t)(p - text), "%s\n",
                      json_string_value(json_array_get(t->paths, i)));
    if (why != NULL)
        snprintf(p, cap - (size_t)(p - text), "%s%s", n_paths ? "" : "\n",
                 why);
    return text;
}

/*
 * The run's own reason in the words of an agent's answer: without the
 * command-line advice ("run again then, or use --wait") and the run's
 * preamble, starting with a capital.
 */
static void
clean_reason(const char *in, char *out, size_t len)
{
    static const char preamble[] = "stopping, every job stays queued: ";
    char *cut;

    if (strncmp(in, preamble, sizeof(preamble) - 1) == 0)
        in += sizeof(preamble) - 1;
    snprintf(out, len, "%s", in[0] ? in : "the run stopped");
    cut = strstr(out, "; run again");
    if (cut != NULL)
        *cut = '\0';
    if (out[0] >= 'a' && out[0] <= 'z')
        out[0] = (char)(out[0] - 'a' + 'A');
}

/* A run that ended for a reason other than "all done": it decides the
 * call's answer. */
static int
run_stopped(const struct call_run *r)
{
    return r->child == NULL && r->status != -1 && r->status != EXIT_OK &&
           r->status != EXIT_SOME_FAILED;
}

/* The run that decides the answer: a configuration error first (it needs
 * a person), then any other stop; NULL when none stopped. */
static const struct call_run *
deciding_run(const struct call *k)
{
    const struct call_run *found = NULL;

    for (size_t i = 0; i < k->n_runs; i++) {
        const struct call_run *r = &k->runs[i];

        if (!run_stopped(r))
            continue;
        if (r->status == EXIT_CONFIG)
            return r;
        if (found == NULL)
            found = r;
    }
    return found;
}

/* Why the call ends before its jobs, and what to do, or NULL. */
static void
stop_advice(const struct call *k, const struct tally *t, char *why,
            size_t len, int *is_error)
{
    const struct call_run *r = deciding_run(k);
    int64_t left = unfinished(t);
    char reason[768];

    *is_error = 0;
    why[0] = '\0';
    if (left == 0)
        return;
    if (r == NULL) {
        snprintf(why, len, "Jobs not finished within the wait of %.0f s go "
                 "on in the background while this server runs: %lld "
                 "job%s (ids in pending_job_ids).  Call job_status with "
                 "batch \"%s\" or those job ids for their images later.",
                 (double)k->wait_ms / 1000.0, (long long)left,
                 left == 1 ? "" : "s", k->batch);
        return;
    }
    *is_error = 1;
    clean_reason(r->reason, reason, sizeof(reason));
    if (r->status == STATUS_PAUSED) {
        snprintf(why, len, "Batch \"%s\" is paused: its unfinished jobs "
                 "(%lld) stay queued and no run takes them.  Resume it "
                 "(`nbbatch resume %s`), then call generate_images again "
                 "with the same arguments: the queued jobs are reused.",
                 r->batch, (long long)left, r->batch);
    } else if (r->status == EXIT_CONFIG) {
        snprintf(why, len, "The run stopped: %s\nUnfinished jobs (%lld) "
                 "stay queued in batch \"%s\" and nothing was paid for "
                 "them.  Fix this, then call generate_images again with "
                 "the same arguments: the queued jobs are reused.  When a "
                 "setting of some jobs is the cause (an unknown model, "
                 "say), cancel those jobs (cancel with their job_ids) and "
                 "the others go on.", reason, (long long)left, r->batch);
    } else if (r->status == EXIT_TEMPFAIL) {
        snprintf(why, len, "Not finished: %lld job%s.  %s%s\nThey stay "
                 "queued in batch \"%s\" and go when that is over: call "
                 "generate_images again then with the same arguments "
                 "(nothing is made twice), or job_status to see them.",
                 (long long)left, left == 1 ? "" : "s", reason,
                 advice_stop(reason), r->batch);
    } else {
        snprintf(why, len, "The run failed (exit status %d): %s\n"
                 "Unfinished jobs (%lld) stay queued in batch \"%s\"; call "
                 "generate_images again to go on.", r->status, reason,
                 (long long)left, r->batch);
    }
}

static void
call_free(struct call *k)
{
    if (k == NULL)
        return;
    json_decref(k->id);
    json_decref(k->token);
    free(k->job_ids);
    free(k->runs);
    free(k);
}

static void
call_remove(struct server *s, struct call *k)
{
    struct call **pp;

    for (pp = &s->calls; *pp != NULL && *pp != k; pp = &(*pp)->next)
        ;
    if (*pp == k)
        *pp = k->next;
    call_free(k);
}

/* Sends the call's answer from the queue and forgets the call. */
static void
call_answer(struct server *s, struct call *k)
{
    struct tally t;
    json_t *data;
    char why[1600], *text;
    int is_error = 0;

    if (tally_call(s, k, &t, 1) != 0) {
        send_tool(s, k->id, "the queue cannot be read now; the jobs are "
                  "safe: ask job_status later", NULL, 1);
        goto done;
    }
    stop_advice(k, &t, why, sizeof(why), &is_error);
    if (t.counts[QUEUE_DONE] == 0 && unfinished(&t) == 0)
        is_error = 1;
    text = call_text(k, &t, why[0] ? why : NULL);
    data = json_pack("{s:o, s:I, s:I, s:O, s:O, s:O}", "batch",
                     mcp_proto_text(k->batch),
                     "total", (json_int_t)k->n_jobs, "done",
                     (json_int_t)t.counts[QUEUE_DONE], "paths", t.paths,
                     "pending_job_ids", t.pending, "jobs", t.jobs);
    send_tool(s, k->id, text != NULL ? text : "out of memory", data,
              is_error);
    free(text);
done:
    json_decref(t.paths);
    json_decref(t.pending);
    json_decref(t.jobs);
    call_remove(s, k);
}

static void
send_progress(struct server *s, struct call *k, int64_t done)
{
    char msg[160];

    if (k->token == NULL || done <= k->reported)
        return;
    k->reported = done;
    snprintf(msg, sizeof(msg), "%lld of %zu images done", (long long)done,
             k->n_jobs);
    send_line(s, mcp_proto_notify("notifications/progress", json_pack(
        "{s:O, s:I, s:I, s:s}", "progressToken", k->token, "progress",
        (json_int_t)done, "total", (json_int_t)k->n_jobs, "message", msg)));
}

/* Whether batch is paused (a paused batch's jobs are not claimed). */
static int
paused_cb(const struct queue_batch_status *b, void *arg)
{
    *(int *)arg = b->paused;
    return 0;
}

static int
batch_paused(struct server *s, const char *batch)
{
    int paused = 0;

    if (queue_status(s->q, batch, paused_cb, &paused) != 0)
        return 0;
    return paused;
}

/*
 * Starts the runs a call waits on that are not running while the call
 * has queued jobs in their batch: at once for a new call, and again for
 * a run that ended while jobs were still queued (added as it finished, or
 * let go by another run), after a wait that doubles each time nothing got
 * done in between.  A paused batch is not run: the call is told.
 */
static void
call_start_runs(struct server *s, struct call *k, int64_t mono,
                int progressed)
{
    for (size_t i = 0; i < k->n_runs; i++) {
        struct call_run *r = &k->runs[i];

        if (progressed)
            r->respawn_ms = RESPAWN_AFTER_MS;
        if (r->child != NULL || r->queued == 0 || run_stopped(r) ||
            (r->status != -1 && mono - r->spawned_mono < r->respawn_ms))
            continue;
        if (batch_paused(s, r->batch)) {
            r->status = STATUS_PAUSED;
            continue;
        }
        if (r->status != -1 && r->respawn_ms < RESPAWN_MAX_MS)
            r->respawn_ms *= 2;
        r->spawned_mono = mono;
        r->child = start_run(s, r->batch);
        r->status = r->child != NULL ? -1 : EXIT_SOFTWARE;
        r->reason[0] = '\0';
        if (r->child == NULL)
            snprintf(r->reason, sizeof(r->reason), "nbbatch run could not "
                     "be started");
    }
}

/*
 * Looks at a call's jobs: progress, and the answer when they are all
 * finished, the wait is over or a run stopped for good.
 */
static void
call_check(struct server *s, struct call *k, int64_t mono)
{
    struct tally t;
    int64_t before = k->reported;

    k->next_check_mono = mono + CHECK_EVERY_MS;
    if (tally_call(s, k, &t, 0) != 0) {
        log_warn("mcp: cannot read the queue: %s", queue_errmsg(s->q));
        return;
    }
    send_progress(s, k, t.counts[QUEUE_DONE]);
    if (unfinished(&t) == 0) {
        call_answer(s, k);
        return;
    }
    call_start_runs(s, k, mono, k->reported > before);
    if (deciding_run(k) != NULL || mono >= k->deadline_mono)
        call_answer(s, k);
}

/* Checks at once every call that waits on child c. */
static void
mark_calls(struct server *s, struct child *c)
{
    for (struct call *k = s->calls; k != NULL; k = k->next) {
        for (size_t i = 0; i < k->n_runs; i++) {
            if (k->runs[i].child == c)
                k->next_check_mono = 0;
        }
    }
}

/* ---- tools ----------------------------------------------------------- */

/* A refused generate_images call: the field, and that nothing happened. */
static void
gen_refused(struct server *s, const json_t *id, const char *why)
{
    char text[1200];

    snprintf(text, sizeof(text), "generate_images: %s.  Nothing was "
             "queued: correct this and call again.", why);
    send_tool(s, id, text, NULL, 1);
}

/* Puts the call's failed, blocked and cancelled jobs back in the queue:
 * asking again is asking for another try. */
static void
retry_finished(struct server *s, const int64_t *ids, size_t n)
{
    struct queue_job *job;
    int64_t count;

    for (size_t i = 0; i < n; i++) {
        if (queue_get(s->q, ids[i], &job) != 0)
            continue;
        if (job->state == QUEUE_FAILED || job->state == QUEUE_BLOCKED ||
            job->state == QUEUE_CANCELLED)
            queue_retry(s->q, ids[i], NULL, cli_now_ms(), &count);
        queue_job_free(job);
    }
}

static void
tool_generate(struct server *s, const struct mcp_msg *m, const json_t *args,
              const json_t *token)
{
    struct mcp_gen_args a;
    struct call *k = NULL;
    char err[1024], out_dir[PATH_MAX * 2];
    const char *batch;
    int64_t mono = cli_mono_ms();

    if (mcp_proto_gen_args(args, &a, err, sizeof(err)) != 0) {
        gen_refused(s, m->id, err);
        return;
    }
    batch = a.batch != NULL ? a.batch : DEFAULT_BATCH;
    snprintf(out_dir, sizeof(out_dir), "%s/%s", s->out_root, batch);
    for (size_t i = 0; i < a.n_refs; i++) {
        struct stat st;
        const char *why = NULL;

        if (stat(a.refs[i], &st) != 0 || access(a.refs[i], R_OK) != 0)
            why = strerror(errno);
        else if (!S_ISREG(st.st_mode))
            why = "not a regular file";
        if (why != NULL) {
            snprintf(err, sizeof(err), "reference_images[%zu]: cannot read "
                     "%.800s: %s", i, a.refs[i], why);
            gen_refused(s, m->id, err);
            goto done;
        }
    }
    if (run_add(s, &a, batch, a.out_dir != NULL ? a.out_dir : out_dir, err,
                sizeof(err)) != 0) {
        gen_refused(s, m->id, err);
        goto done;
    }
    k = calloc(1, sizeof(*k));
    if (k == NULL || find_jobs(s, &a, k, err, sizeof(err)) != 0) {
        send_tool(s, m->id, k == NULL ? "out of memory" : err, NULL, 1);
        call_free(k);
        goto done;
    }
    retry_finished(s, k->job_ids, k->n_jobs);
    k->id = json_copy((json_t *)m->id);
    k->token = token != NULL ? json_copy((json_t *)token) : NULL;
    snprintf(k->batch, sizeof(k->batch), "%s", batch);
    k->wait_ms = a.wait_ms;
    k->deadline_mono = mono + a.wait_ms;
    log_info("mcp: generate_images: %zu jobs in batch %s", k->n_jobs,
             batch);
    k->next = s->calls;
    s->calls = k;
    call_check(s, k, mono);
done:
    mcp_gen_args_clear(&a);
}

/* ---- job_status, list_batches, cancel ------------------------------------ */

struct status_acc {
    json_t *jobs;
    int64_t counts[QUEUE_NSTATES];
    int64_t now_ms;
    int64_t limit;
    int truncated;
    char *text;
    size_t text_len, text_cap;
    int text_lines;
};

static void
acc_text(struct status_acc *a, const struct queue_job *j)
{
    char line[1024], when[40];
    int n;

    if (a->text_lines >= TEXT_JOBS_MAX)
        return;
    if (j->state == QUEUE_DONE)
        n = snprintf(line, sizeof(line), "job %lld done: %s\n",
                     (long long)j->id, j->out_path);
    else if (j->state == QUEUE_QUEUED && j->next_attempt_ms > a->now_ms) {
        iso_time(j->next_attempt_ms, when, sizeof(when));
        n = snprintf(line, sizeof(line), "job %lld queued, next attempt "
                     "%s (last error: %.400s)\n", (long long)j->id, when,
                     j->err_message != NULL ? j->err_message : "none");
    } else
        n = snprintf(line, sizeof(line), "job %lld %s%s%.400s\n",
                     (long long)j->id, queue_state_name(j->state),
                     j->err_message != NULL ? ": " : "",
                     j->err_message != NULL ? j->err_message : "");
    if (n < 0 || (size_t)n >= sizeof(line))
        n = (int)strlen(line);
    if (a->text_len + (size_t)n + 1 > a->text_cap) {
        size_t cap = (a->text_cap + (size_t)n + 1) * 2;
        char *p = realloc(a->text, cap);

        if (p == NULL)
            return;
        a->text = p;
        a->text_cap = cap;
    }
    memcpy(a->text + a->text_len, line, (size_t)n + 1);
    a->text_len += (size_t)n;
    a->text_lines++;
}

static int
status_cb(const struct queue_job *j, void *arg)
{
    struct status_acc *a = arg;

    if (j->state >= 0 && j->state < QUEUE_NSTATES)
        a->counts[j->state]++;
    if ((int64_t)json_array_size(a->jobs) >= a->limit) {
        a->truncated = 1;
        return 0;
    }
    json_array_append_new(a->jobs, job_json(j, a->now_ms));
    acc_text(a, j);
    return 0;
}

static json_t *
counts_json(const int64_t *counts)
{
    json_t *o = json_object();

    for (int i = 0; o != NULL && i < QUEUE_NSTATES; i++)
        json_object_set_new(o, queue_state_name(i),
                            json_integer(counts[i]));
    return o;
}

static void
tool_job_status(struct server *s, const struct mcp_msg *m,
                const json_t *args)
{
    struct mcp_job_args ja;
    struct status_acc acc = {0};
    char err[512], head[256];
    json_t *data;
    int rc = 0;

    if (mcp_proto_job_args(args, &ja, err, sizeof(err)) != 0) {
        send_tool(s, m->id, err, NULL, 1);
        return;
    }
    acc.jobs = json_array();
    acc.now_ms = cli_now_ms();
    acc.limit = MCP_MAX_JOB_IDS;
    for (size_t i = 0; i < ja.n_job_ids && rc == 0; i++) {
        struct queue_job *j = NULL;

        rc = queue_get(s->q, ja.job_ids[i], &j);
        if (rc == 0)
            status_cb(j, &acc);
        else if (rc == NB_ENOTFOUND)
            snprintf(err, sizeof(err), "job_ids[%zu]: there is no job %lld "
                     "in the queue (list_batches shows the batches)", i,
                     (long long)ja.job_ids[i]);
        queue_job_free(j);
    }
    if (ja.batch != NULL) {
        rc = queue_list(s->q, -1, ja.batch, 0, 0, status_cb, &acc);
        if (rc == 0 && json_array_size(acc.jobs) == 0) {
            rc = NB_ENOTFOUND;
            snprintf(err, sizeof(err), "batch: there is no batch \"%.100s\" "
                     "with jobs (list_batches shows the batches)", ja.batch);
        }
    }
    if (rc != 0) {
        if (rc != NB_ENOTFOUND)
            snprintf(err, sizeof(err), "the queue cannot be read: %s",
                     queue_errmsg(s->q));
        send_tool(s, m->id, err, NULL, 1);
        goto done;
    }
    snprintf(head, sizeof(head), "%lld done, %lld queued, %lld running, "
             "%lld failed, %lld blocked, %lld cancelled%s\n",
             (long long)acc.counts[QUEUE_DONE],
             (long long)acc.counts[QUEUE_QUEUED],
             (long long)acc.counts[QUEUE_RUNNING],
             (long long)acc.counts[QUEUE_FAILED],
             (long long)acc.counts[QUEUE_BLOCKED],
             (long long)acc.counts[QUEUE_CANCELLED],
             acc.truncated ? " (only the first jobs are listed)" : "");
    data = json_pack("{s:O, s:o, s:b}", "jobs", acc.jobs, "counts",
                     counts_json(acc.counts), "truncated", acc.truncated);
    {
        size_t n = strlen(head) + acc.text_len + 64;
        char *text = malloc(n);

        if (text != NULL)
            snprintf(text, n, "%s%s%s", head, acc.text ? acc.text : "",
                     acc.text_lines >= TEXT_JOBS_MAX ?
                     "(more in structuredContent)\n" : "");
        send_tool(s, m->id, text != NULL ? text : head, data, 0);
        free(text);
    }
done:
    json_decref(acc.jobs);
    free(acc.text);
    mcp_job_args_clear(&ja);
}

static int
batch_cb(const struct queue_batch_status *b, void *arg)
{
    json_t *list = arg;

    json_array_append_new(list, json_pack(
        "{s:o, s:o, s:b, s:I, s:o, s:f, s:f}", "name",
        mcp_proto_text(b->name), "out_dir", mcp_proto_text(b->out_dir),
        "paused", b->paused, "total", (json_int_t)b->total,
        "counts", counts_json(b->counts), "budget_usd", b->budget_usd,
        "spent_usd", round(b->spent_usd * 1e6) / 1e6));
    return 0;
}

static void
tool_list_batches(struct server *s, const struct mcp_msg *m,
                  const json_t *args)
{
    json_t *list = json_array(), *b;
    char err[256], *text = NULL, *p;
    size_t n, cap;
    size_t i;

    if (mcp_proto_no_args(args, err, sizeof(err)) != 0) {
        send_tool(s, m->id, err, NULL, 1);
        goto done;
    }
    if (queue_status(s->q, NULL, batch_cb, list) != 0) {
        snprintf(err, sizeof(err), "the queue cannot be read: %s",
                 queue_errmsg(s->q));
        send_tool(s, m->id, err, NULL, 1);
        goto done;
    }
    n = json_array_size(list);
    cap = 64 + n * 512;
    text = malloc(cap);
    if (text == NULL) {
        send_error(s, m->id, MCP_INTERNAL_ERROR, "list_batches: out of "
                   "memory");
        goto done;
    }
    p = text;
    p += snprintf(p, cap, "%zu batch%s\n", n, n == 1 ? "" : "es");
    json_array_foreach(list, i, b) {
        json_t *c = json_object_get(b, "counts");

        p += snprintf(p, cap - (size_t)(p - text), "%.100s: %lld of %lld "
                      "done, %lld queued, %lld running, %lld failed or "
                      "blocked%s\n",
                      json_string_value(json_object_get(b, "name")),
                      (long long)json_integer_value(json_object_get(c,
                                                                    "done")),
                      (long long)json_integer_value(json_object_get(b,
                                                                    "total")),
                      (long long)json_integer_value(json_object_get(c,
                                                                  "queued")),
                      (long long)json_integer_value(json_object_get(c,
                                                                 "running")),
                      (long long)(json_integer_value(json_object_get(c,
                                  "failed")) + json_integer_value(
                                  json_object_get(c, "blocked"))),
                      json_is_true(json_object_get(b, "paused"))
                      ? " (paused)" : "");
    }
    send_tool(s, m->id, text, json_pack("{s:O}", "batches", list), 0);
done:
    free(text);
    json_decref(list);
}

static void
tool_cancel(struct server *s, const struct mcp_msg *m, const json_t *args)
{
    struct mcp_job_args ja;
    char err[512], text[256];
    int64_t total = 0, n;
    int rc = 0;

    if (mcp_proto_job_args(args, &ja, err, sizeof(err)) != 0) {
        send_tool(s, m->id, err, NULL, 1);
        return;
    }
    for (size_t i = 0; i < ja.n_job_ids && rc == 0; i++) {
        n = 0;
        rc = queue_cancel(s->q, ja.job_ids[i], NULL, cli_now_ms(), &n);
        total += n;
        if (rc == NB_ENOTFOUND)
            snprintf(err, sizeof(err), "job_ids[%zu]: there is no job %lld; "
                     "%lld job%s cancelled before it", i,
                     (long long)ja.job_ids[i], (long long)total,
                     total == 1 ? " was" : "s were");
    }
    if (ja.batch != NULL) {
        rc = queue_cancel(s->q, 0, ja.batch, cli_now_ms(), &total);
        if (rc == NB_ENOTFOUND)
            snprintf(err, sizeof(err), "batch: there is no batch \"%.100s\" "
                     "(list_batches shows the batches)", ja.batch);
    }
    if (rc != 0 && rc != NB_ENOTFOUND)
        snprintf(err, sizeof(err), "the queue cannot be changed now: %s",
                 queue_errmsg(s->q));
    if (rc != 0) {
        send_tool(s, m->id, err, NULL, 1);
    } else {
        snprintf(text, sizeof(text), "cancelled %lld job%s; finished images "
                 "stay where they are", (long long)total,
                 total == 1 ? "" : "s");
        send_tool(s, m->id, text, json_pack("{s:I}", "cancelled",
                                            (json_int_t)total), 0);
    }
    mcp_job_args_clear(&ja);
}

/* ---- requests ----------------------------------------------------------- */

static void
on_tools_call(struct server *s, const struct mcp_msg *m)
{
    const char *name = json_string_value(json_object_get(m->params, "name"));
    json_t *args = json_object_get(m->params, "arguments");
    json_t *meta = json_object_get(m->params, "_meta");
    json_t *token = json_object_get(meta, "progressToken");
    char msg[160];

    if (name == NULL) {
        send_error(s, m->id, MCP_INVALID_PARAMS, "tools/call: params.name "
                   "must be a tool name");
        return;
    }
    if (args != NULL && !json_is_object(args)) {
        send_error(s, m->id, MCP_INVALID_PARAMS, "tools/call: "
                   "params.arguments must be an object");
        return;
    }
    if (token != NULL && !json_is_string(token) && !json_is_integer(token))
        token = NULL;
    if (strcmp(name, "generate_images") == 0)
        tool_generate(s, m, args, token);
    else if (strcmp(name, "job_status") == 0)
        tool_job_status(s, m, args);
    else if (strcmp(name, "list_batches") == 0)
        tool_list_batches(s, m, args);
    else if (strcmp(name, "cancel") == 0)
        tool_cancel(s, m, args);
    else {
        snprintf(msg, sizeof(msg), "unknown tool: %.100s (tools/list "
                 "names them)", name);
        send_error(s, m->id, MCP_INVALID_PARAMS, msg);
    }
}

static void
on_request(struct server *s, const struct mcp_msg *m)
{
    const char *version;
    char msg[160];

    if (strcmp(m->method, "initialize") == 0) {
        version = json_string_value(json_object_get(m->params,
                                                    "protocolVersion"));
        if (version == NULL) {
            send_error(s, m->id, MCP_INVALID_PARAMS, "initialize: "
                       "params.protocolVersion must be a string");
            return;
        }
        s->initialized = 1;
        log_info("mcp: client asks for protocol %.40s, answering %s",
                 version, mcp_proto_version(version));
        send_result(s, m->id, mcp_proto_initialize(version, "nbbatch",
                                                    NBBATCH_VERSION));
    } else if (strcmp(m->method, "ping") == 0) {
        send_result(s, m->id, json_object());
    } else if (strcmp(m->method, "tools/list") == 0) {
        send_result(s, m->id, mcp_proto_tools());
    } else if (strcmp(m->method, "tools/call") == 0) {
        if (m->params == NULL)
            send_error(s, m->id, MCP_INVALID_PARAMS, "tools/call needs "
                       "params with a tool name");
        else
            on_tools_call(s, m);
    } else {
        snprintf(msg, sizeof(msg), "method not found: %.100s", m->method);
        send_error(s, m->id, MCP_METHOD_NOT_FOUND, msg);
    }
}

/* notifications/cancelled: the client no longer wants that answer.  The
 * jobs stay queued and run on. */
static void
on_cancelled(struct server *s, const struct mcp_msg *m)
{
    json_t *id = json_object_get(m->params, "requestId");

    for (struct call *k = s->calls; k != NULL && id != NULL; k = k->next) {
        if (json_equal(k->id, id)) {
            log_info("mcp: the client cancelled a generate_images call; "
                     "its jobs stay queued");
            call_remove(s, k);
            return;
        }
    }
}

static void
on_line(const char *line, size_t len, int too_long, void *arg)
{
    struct server *s = arg;
    struct mcp_msg m;
    size_t i;

    if (too_long) {
        send_error(s, NULL, MCP_INVALID_REQUEST, "message longer than "
                   "16 MB: refused");
        return;
    }
    for (i = 0; i < len && strchr(" \t\r", line[i]) != NULL; i++)
        ;
    if (i == len)
        return;
    log_debug("mcp: <- %.200s", line);
    mcp_proto_parse(line, len, &m);
    switch (m.kind) {
    case MCP_INVALID:
        send_error(s, m.id, m.err_code, m.err_message);
        break;
    case MCP_REQUEST:
        on_request(s, &m);
        break;
    case MCP_NOTIFICATION:
        if (strcmp(m.method, "notifications/cancelled") == 0)
            on_cancelled(s, &m);
        break;
    default:
        break;
    }
    mcp_msg_clear(&m);
}

/* ---- the loop ------------------------------------------------------------ */

/* Waits for input on stdin (while open) and the children's pipes, for at
 * most timeout_ms, and handles what came. */
static void
poll_once(struct server *s, int64_t timeout_ms)
{
    struct pollfd *fds;
    struct child **owner;
    nfds_t n = 0, cap = 1;
    int rc;

    for (struct child *c = s->children; c != NULL; c = c->next)
        cap += 2;
    fds = calloc(cap, sizeof(*fds));
    owner = calloc(cap, sizeof(*owner));
    if (fds == NULL || owner == NULL) {
        log_error("mcp: out of memory");
        free(fds);
        free(owner);
        poll(NULL, 0, 100);
        return;
    }
    if (s->in_open) {
        fds[n].fd = STDIN_FILENO;
        fds[n].events = POLLIN;
        owner[n++] = NULL;
    }
    for (struct child *c = s->children; c != NULL; c = c->next) {
        int pipes[2] = {c->out_fd, c->err_fd};

        for (int i = 0; i < 2; i++) {
            if (pipes[i] < 0)
                continue;
            fds[n].fd = pipes[i];
            fds[n].events = POLLIN;
            owner[n++] = c;
        }
    }
    rc = poll(fds, n, (int)(timeout_ms < 0 ? 0 : timeout_ms));
    for (nfds_t i = 0; rc > 0 && i < n; i++) {
        if (fds[i].revents == 0)
            continue;
        if (owner[i] == NULL) {
            rc = linebuf_read(STDIN_FILENO, &s->in, MCP_MAX_MESSAGE,
                              on_line, s);
            if (rc != 0)
                s->in_open = 0;
            continue;
        }
        /* A reaped child's later descriptors are skipped: compare with
         * the list as it is now. */
        for (struct child *c = s->children; c != NULL; c = c->next) {
            if (c == owner[i] && (c->out_fd == fds[i].fd ||
                                  c->err_fd == fds[i].fd)) {
                child_input(s, c, fds[i].fd);
                break;
            }
        }
    }
    free(fds);
    free(owner);
}

static void
serve(struct server *s)
{
    while (s->in_open && stop_signal == 0) {
        int64_t mono = cli_mono_ms(), wait = CHECK_EVERY_MS;
        struct call *k, *next;

        for (k = s->calls; k != NULL; k = next) {
            next = k->next;
            if (mono >= k->next_check_mono)
                call_check(s, k, mono);
        }
        for (k = s->calls; k != NULL; k = k->next) {
            int64_t due = k->next_check_mono < k->deadline_mono
                ? k->next_check_mono : k->deadline_mono;

            if (due - mono < wait)
                wait = due - mono;
        }
        poll_once(s, wait);
    }
}

/* Stops every child (they release their jobs) and waits for them; one
 * still there after the grace period is killed (its leases expire). */
static void
shut_down(struct server *s)
{
    int64_t start = cli_mono_ms();
    int killed = 0;

    while (s->calls != NULL)
        call_remove(s, s->calls);
    for (struct child *c = s->children; c != NULL; c = c->next)
        kill(c->pid, SIGTERM);
    s->in_open = 0;
    while (s->children != NULL) {
        if (!killed && cli_mono_ms() - start > STOP_GRACE_MS) {
            for (struct child *c = s->children; c != NULL; c = c->next) {
                log_warn("mcp: nbbatch run (pid %ld) did not stop in %d "
                         "s: killed", (long)c->pid, STOP_GRACE_MS / 1000);
                kill(c->pid, SIGKILL);
            }
            killed = 1;
        }
        poll_once(s, 200);
    }
}

/* ---- setup ------------------------------------------------------------ */

/* path made absolute against the working directory. */
static int
absolute(const char *path, char *out, size_t len)
{
    char cwd[PATH_MAX];
    int n;

    if (path[0] == '/')
        n = snprintf(out, len, "%s", path);
    else if (getcwd(cwd, sizeof(cwd)) == NULL)
        return NB_EIO;
    else
        n = snprintf(out, len, "%s/%s", cwd, path);
    return n < 0 || (size_t)n >= len ? NB_ELIMIT : 0;
}

static int
parse_opts(int argc, char **argv, struct server *s, const char **db)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"workers", required_argument, NULL, 'w'},
        {"key-file", required_argument, NULL, 'k'},
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, 'l'},
        {NULL, 0, NULL, 0}
    };
    char *end;
    long v;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            *db = optarg;
            break;
        case 'w':
            v = strtol(optarg, &end, 10);
            if (*end != '\0' || v < 1 || v > 4096) {
                log_error("mcp: --workers: \"%s\" is not a number from 1 "
                          "to 4096", optarg);
                return cli_usage("mcp");
            }
            s->workers = (int)v;
            break;
        case 'k':
            s->key_file = optarg;
            break;
        case 'c':
            s->config = optarg;
            break;
        case 'l':
            if (log_set_level_name(optarg) != 0) {
                log_error("mcp: --log-level: unknown level \"%s\"", optarg);
                return cli_usage("mcp");
            }
            break;
        default:
            return cli_usage("mcp");
        }
    }
    if (optind != argc)
        return cli_usage("mcp");
    return EXIT_OK;
}

/*
 * The keys in the key files the runs may read (--key-file, the config's
 * key_file and each endpoint's), so that no answer ever carries one; the
 * environment's keys are read when sending.  A file that cannot be read
 * here is the run's to report.
 */
static void
load_secrets(struct server *s)
{
    const char *files[MAX_SECRETS];
    struct config cfg;
    const char *source;
    char err[512];
    int n = 0, k = 0;

    config_init(&cfg);
    if (config_load(s->config, &cfg, err, sizeof(err)) != 0)
        log_debug("mcp: %s", err);
    if (s->key_file != NULL)
        files[n++] = s->key_file;
    if (cfg.key_file[0] != '\0')
        files[n++] = cfg.key_file;
    for (int i = 0; i < cfg.n_endpoints && n < MAX_SECRETS; i++) {
        if (cfg.endpoints[i].key_file[0] != '\0')
            files[n++] = cfg.endpoints[i].key_file;
    }
    for (int i = 0; i < n; i++) {
        if (apikey_load(files[i], &s->secrets[k], &source, err,
                        sizeof(err)) == 0)
            k++;
        else
            s->secrets[k] = NULL;
    }
}

static int
setup(struct server *s, const char *db)
{
    ssize_t n;
    char *slash;

    if (db == NULL || *db == '\0')
        db = getenv("NBBATCH_DB");
    if (db == NULL || *db == '\0')
        db = "nbbatch.db";
    if (absolute(db, s->db, sizeof(s->db)) != 0) {
        log_error("mcp: %s: path too long", db);
        return EXIT_USAGE;
    }
    n = readlink("/proc/self/exe", s->exe, sizeof(s->exe) - 1);
    if (n <= 0 || (size_t)n >= sizeof(s->exe) - 1) {
        log_error("mcp: cannot find this program (/proc/self/exe)");
        return EXIT_SOFTWARE;
    }
    s->exe[n] = '\0';
    load_secrets(s);
    snprintf(s->out_root, sizeof(s->out_root), "%s", s->db);
    slash = strrchr(s->out_root, '/');
    snprintf(slash + 1, sizeof(s->out_root) - (size_t)(slash + 1 -
             s->out_root), "out");
    return cli_open_queue(s->db, &s->q);
}

int
cmd_mcp(int argc, char **argv)
{
    struct server s;
    struct sigaction sa;
    const char *db = NULL;
    int status;

    memset(&s, 0, sizeof(s));
    status = parse_opts(argc, argv, &s, &db);
    if (status != EXIT_OK)
        return status;
    status = setup(&s, db);
    if (status != EXIT_OK)
        return status;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    s.in_open = 1;
    log_info("mcp: serving on stdin/stdout, queue %s", s.db);

    serve(&s);

    shut_down(&s);
    for (int i = 0; i < MAX_SECRETS; i++)
        apikey_free(s.secrets[i]);
    linebuf_free(&s.in);
    queue_close(s.q);
    log_info("mcp: done");
    return EXIT_OK;
}
