/*
 * batch.c - the Files API and the Batch API of nbsim, in memory.
 *
 * Files are resumable uploads: a start makes a record and an unlinked
 * temporary file; chunks are appended at the offset the client names,
 * which must be the count received so far; a finalize checks the size
 * announced at the start and hashes the bytes.  Upload bodies never sit
 * in memory: sim.c spools each chunk to a file and this module copies
 * it over.
 *
 * A batch is decided whole when it is made: every line of its input (a
 * JSONL file or inline requests) becomes an api_line, so that prompt
 * triggers, fail-first counters and line faults are fixed once and a
 * second read of the results gives the same bytes.  Its state is a
 * function of the clock (PENDING for batch.pending_ms, RUNNING until
 * batch.run_ms after creation, then terminal); its fate is fixed by its
 * creation ordinal (batch.expire, batch.fail).  Counters of terminal
 * states are bumped once per batch, the first time anyone looks after
 * the end ("settling").  Results are made line by line as they are
 * read, never all at once.
 *
 * One lock guards the lists and the counters.  A batch being rendered
 * (a get of inline results, a download) is held by a reference, so a
 * delete meanwhile only unlinks it; its lines never change.
 */
#include "tests/sim/batch.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "tests/sim/api.h"
#include "tests/sim/body.h"

#define CT_JSON "application/json; charset=UTF-8"
#define CT_JSONL "application/jsonl"
#define DUMP_FLAGS (JSON_INDENT(2) | JSON_REAL_PRECISION(9))
#define TYPE_PREFIX "type.googleapis.com/google.ai.generativelanguage.v1main."
#define INLINED "@@NBSIM-INLINED-"     /* + index + "@@", quoted */
#define TOKEN_PREFIX "nbsim-"
#define PAGE_DEFAULT 50
#define PAGE_MAX 1000
#define CHUNK_GRANULARITY "8388608"
#define COPY_BLOCK (64 * 1024)

enum state {
    ST_PENDING,
    ST_RUNNING,
    ST_SUCCEEDED,
    ST_FAILED,
    ST_CANCELLED,
    ST_EXPIRED
};

static const char *const state_words[] = {
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"
};

struct file {
    char id[16];                /* name is files/<id> */
    char upload_id[33];
    char *display_name;         /* owned, NULL when none */
    int fd;                     /* unlinked temporary file */
    int64_t announced;          /* -1: no size given at the start */
    uint64_t received;
    int final;
    char sha256[48];            /* base64 of the digest, once final */
    uint64_t create_wall_ms;
    uint64_t update_wall_ms;
};

struct line {
    char *key;                  /* plain text for the log; may be NULL */
    char *tag;                  /* JSON: the key (file input) or the
                                   metadata object (inline); may be NULL */
    struct api_line *decided;
};

struct job {
    char id[40];                /* name is batches/<id> */
    long ordinal;               /* creations before this one */
    int refs;                   /* the list's own and readers' */
    char *display_name;         /* owned, NULL when none */
    char model[SCENARIO_MODEL_LEN];
    char input_file[32];        /* "files/<id>", "" for inline input */
    struct line *lines;
    size_t nlines;
    size_t error_lines;
    size_t faulted;             /* lines given a batch.line_fault */
    uint64_t created_mono_ms;
    uint64_t created_wall_ms;
    enum state fate;            /* SUCCEEDED, EXPIRED or FAILED */
    int cancelled;
    uint64_t cancelled_mono_ms;
    int settled;                /* terminal state counted */
};

struct counters {
    uint64_t created;
    uint64_t succeeded;
    uint64_t expired;
    uint64_t failed;
    uint64_t cancelled;
    uint64_t uploads;
    uint64_t downloads;
    uint64_t polls;
    uint64_t lines;
    uint64_t error_lines;
};

struct batch {
    const struct scenario *sc;
    struct api *api;
    uint64_t mono_to_wall_ms;   /* wall = mono + this */
    pthread_mutex_t lock;       /* guards everything below */
    uint64_t rng;
    struct file **files;
    size_t nfiles;
    size_t files_cap;
    struct job **jobs;          /* listed batches, oldest first */
    size_t njobs;
    size_t jobs_cap;
    long next_ordinal;
    struct counters count;
};

struct batch_stream {
    struct batch *bs;
    struct job *job;            /* a reference */
    size_t next;                /* next line to render */
    struct body *line;          /* the line being sent */
    uint64_t line_pos;
    int done;
};

/* --- small helpers ----------------------------------------------------- */

/* A seed that depends only on the scenario seed, a batch, a line and a
 * purpose, so a rerun of the same scenario gives the same results. */
static uint64_t
seed_of(const struct batch *bs, long ordinal, size_t line, uint64_t salt)
{
    uint64_t s = bs->sc->seed ^ salt;

    s ^= api_mix64(&s) + (uint64_t)ordinal * 0xD1B54A32D192ED03ull;
    s ^= api_mix64(&s) + (uint64_t)line * 0x8CB92BA72F3D8DD7ull;
    return api_mix64(&s);
}

/* Uniform in [0, 1) from the shared generator; lock held. */
static double
unit_locked(struct batch *bs)
{
    return (double)(api_mix64(&bs->rng) >> 11) / 9007199254740992.0;
}

/* Lower-case letters and digits; lock held. */
static void
random_name_locked(struct batch *bs, char *out, size_t len)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";

    for (size_t i = 0; i + 1 < len; i++)
        out[i] = alphabet[api_mix64(&bs->rng) % (sizeof alphabet - 1)];
    out[len - 1] = '\0';
}

/* "2025-12-10T18:27:01.407000000Z" */
static void
rfc3339(uint64_t wall_ms, char *out, size_t outlen)
{
    time_t t = (time_t)(wall_ms / 1000);
    struct tm tm;
    char head[32];

    gmtime_r(&t, &tm);
    strftime(head, sizeof head, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, outlen, "%s.%03u000000Z", head,
             (unsigned)(wall_ms % 1000));
}

static int
set_time(json_t *o, const char *name, uint64_t wall_ms)
{
    char text[48];

    rfc3339(wall_ms, text, sizeof text);
    return json_object_set_new(o, name, json_string(text));
}

static int
set_count(json_t *o, const char *name, uint64_t n)
{
    char text[32];

    if (n == 0)
        return 0;           /* zero counts are left out */
    snprintf(text, sizeof text, "%" PRIu64, n);
    return json_object_set_new(o, name, json_string(text));
}

static json_t *
member(json_t *obj, const char *camel, const char *snake)
{
    json_t *v = json_object_get(obj, camel);

    return v ? v : json_object_get(obj, snake);
}

static int
bad_request(struct api_reply *r, const char *message)
{
    return api_error_reply(r, 400, "INVALID_ARGUMENT", message,
                           API_KIND_BADREQUEST);
}

static int
not_found(struct api_reply *r, const char *what, const char *name,
          int kind)
{
    char message[256];

    snprintf(message, sizeof message, "%s %s was not found.", what, name);
    return api_error_reply(r, 404, "NOT_FOUND", message, kind);
}

/* A 200 with a JSON body taken from root (dropped on every path). */
static int
json_reply(struct api_reply *r, json_t *root, int kind)
{
    char *text = root ? json_dumps(root, DUMP_FLAGS) : NULL;
    int rc;

    json_decref(root);
    if (!text)
        return -1;
    rc = api_json_reply(r, text, kind);
    free(text);
    return rc;
}

/* Adds a field to the request's log line; value is stolen. */
static void
log_field(struct api_reply *r, const char *name, json_t *value)
{
    if (!r->log_extra)
        r->log_extra = json_object();
    if (r->log_extra)
        json_object_set_new(r->log_extra, name, value);
    else
        json_decref(value);
}

/* Key, then outage, then (when fault_rate > 0) batch.http_fault: 0 to
 * go on, 1 answered, -1 out of memory. */
static int
gates(struct batch *bs, const struct batch_call *c, double fault_rate,
      struct api_reply *r)
{
    int rc = api_gate_key(bs->api, c->key, r), faulty;
    unsigned code;

    if (!rc)
        rc = api_gate_outage(bs->api, r);
    if (rc || fault_rate <= 0)
        return rc;
    pthread_mutex_lock(&bs->lock);
    faulty = unit_locked(bs) < fault_rate;
    code = api_mix64(&bs->rng) & 1 ? 502 : 503;
    pthread_mutex_unlock(&bs->lock);
    if (!faulty)
        return 0;
    return api_status_reply(r, code, API_KIND_HTTP_FAULT) < 0 ? -1 : 1;
}

/* --- life cycle ---------------------------------------------------------- */

struct batch *
batch_new(const struct scenario *sc, struct api *api)
{
    struct batch *bs = calloc(1, sizeof *bs);

    if (!bs)
        return NULL;
    bs->sc = sc;
    bs->api = api;
    bs->rng = sc->seed ^ 0x6261746368ull;
    bs->mono_to_wall_ms = api_clock_ms(CLOCK_REALTIME) -
                          api_clock_ms(CLOCK_MONOTONIC);
    pthread_mutex_init(&bs->lock, NULL);
    return bs;
}

static void
file_free(struct file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    free(f->display_name);
    free(f);
}

static void
job_free(struct job *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->nlines; i++) {
        free(j->lines[i].key);
        free(j->lines[i].tag);
        api_line_free(j->lines[i].decided);
    }
    free(j->lines);
    free(j->display_name);
    free(j);
}

/* Drops a reference; the last one frees the batch. */
static void
job_unref(struct batch *bs, struct job *j)
{
    int last;

    pthread_mutex_lock(&bs->lock);
    last = --j->refs == 0;
    pthread_mutex_unlock(&bs->lock);
    if (last)
        job_free(j);
}

void
batch_free(struct batch *bs)
{
    if (!bs)
        return;
    for (size_t i = 0; i < bs->nfiles; i++)
        file_free(bs->files[i]);
    for (size_t i = 0; i < bs->njobs; i++)
        job_free(bs->jobs[i]);
    free(bs->files);
    free(bs->jobs);
    pthread_mutex_destroy(&bs->lock);
    free(bs);
}

/* Grows an array of pointers by one slot; lock held.  0 or -1. */
static int
grow(void ***items, size_t n, size_t *cap)
{
    void **p;
    size_t want;

    if (n < *cap)
        return 0;
    want = *cap ? *cap * 2 : 16;
    p = realloc(*items, want * sizeof *p);
    if (!p)
        return -1;
    *items = p;
    *cap = want;
    return 0;
}

/* --- files --------------------------------------------------------------- */

static struct file *
file_find_locked(struct batch *bs, const char *id, const char *upload_id)
{
    for (size_t i = 0; i < bs->nfiles; i++) {
        struct file *f = bs->files[i];

        if (id && strcmp(f->id, id) == 0)
            return f;
        if (upload_id && strcmp(f->upload_id, upload_id) == 0)
            return f;
    }
    return NULL;
}

/* An unlinked temporary file; -1 on error. */
static int
temp_fd(void)
{
    const char *dir = getenv("TMPDIR");
    char path[4096];
    int fd;

    snprintf(path, sizeof path, "%s/nbsim-upload-XXXXXX",
             dir && *dir ? dir : "/tmp");
    fd = mkstemp(path);
    if (fd >= 0)
        unlink(path);
    return fd;
}

/* The file resource of the Files API. */
static json_t *
file_json(const struct file *f, const char *base_url)
{
    char name[32], uri[256], size[32];
    json_t *o;

    snprintf(name, sizeof name, "files/%s", f->id);
    snprintf(uri, sizeof uri, "%s/v1beta/files/%s", base_url, f->id);
    snprintf(size, sizeof size, "%" PRIu64, f->received);
    o = json_pack("{s:s}", "name", name);
    if (!o)
        return NULL;
    if (f->display_name)
        json_object_set_new(o, "displayName",
                            json_string(f->display_name));
    json_object_set_new(o, "mimeType", json_string(CT_JSONL));
    json_object_set_new(o, "sizeBytes", json_string(size));
    set_time(o, "createTime", f->create_wall_ms);
    set_time(o, "updateTime", f->update_wall_ms);
    set_time(o, "expirationTime", f->create_wall_ms + 48 * 3600 * 1000ull);
    json_object_set_new(o, "sha256Hash", json_string(f->sha256));
    json_object_set_new(o, "uri", json_string(uri));
    json_object_set_new(o, "state", json_string("ACTIVE"));
    json_object_set_new(o, "source", json_string("UPLOADED"));
    return o;
}

/* The display name from {"file":{"displayName"|"display_name"}}. */
static int
start_body(const struct batch_call *c, char **display_name,
           struct api_reply *r)
{
    json_t *root, *name;

    *display_name = NULL;
    if (!c->body || c->body_len == 0)
        return 0;
    root = json_loadb(c->body, c->body_len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return bad_request(r, "Invalid JSON payload received.") < 0 ? -1
                                                                   : 1;
    }
    name = member(json_object_get(root, "file"), "displayName",
                  "display_name");
    if (json_is_string(name)) {
        *display_name = strdup(json_string_value(name));
        if (!*display_name) {
            json_decref(root);
            return -1;
        }
    }
    json_decref(root);
    return 0;
}

static int
parse_u64(const char *text, uint64_t *out)
{
    char *end;
    unsigned long long n;

    if (!text || !isdigit((unsigned char)*text))
        return -1;
    errno = 0;
    n = strtoull(text, &end, 10);
    if (errno || *end)
        return -1;
    *out = n;
    return 0;
}

/* Command words, comma separated, any case: bit 1 start, 2 upload,
 * 4 finalize, 8 query; -1 for an unknown word. */
static int
upload_words(const char *command)
{
    static const char *const words[] = { "start", "upload", "finalize",
                                         "query" };
    int bits = 0;

    while (command && *command) {
        size_t len;
        int known = 0;

        command += strspn(command, " ,\t");
        len = strcspn(command, " ,\t");
        for (int i = 0; len && i < 4; i++)
            if (strlen(words[i]) == len &&
                strncasecmp(command, words[i], len) == 0) {
                bits |= 1 << i;
                known = 1;
            }
        if (len && !known)
            return -1;
        command += len;
    }
    return bits;
}

enum { CMD_START = 1, CMD_UPLOAD = 2, CMD_FINALIZE = 4, CMD_QUERY = 8 };

static int
upload_start(struct batch *bs, const struct batch_call *c,
             struct api_reply *r)
{
    struct file *f = NULL;
    char url[512];
    uint64_t length = 0;
    int rc;

    if (!c->upload_protocol || strcasecmp(c->upload_protocol,
                                          "resumable") != 0)
        return bad_request(r, "nbsim takes resumable uploads only "
                           "(X-Goog-Upload-Protocol: resumable).");
    if (c->upload_length && parse_u64(c->upload_length, &length) < 0)
        return bad_request(r, "Bad X-Goog-Upload-Header-Content-Length.");
    f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->fd = -1;
    rc = start_body(c, &f->display_name, r);
    if (rc) {
        file_free(f);
        return rc < 0 ? -1 : 0;
    }
    f->announced = c->upload_length ? (int64_t)length : -1;
    f->fd = temp_fd();
    f->create_wall_ms = f->update_wall_ms = api_clock_ms(CLOCK_REALTIME);
    pthread_mutex_lock(&bs->lock);
    rc = f->fd >= 0 ? grow((void ***)&bs->files, bs->nfiles,
                           &bs->files_cap) : -1;
    if (rc == 0) {
        random_name_locked(bs, f->id, 13);
        random_name_locked(bs, f->upload_id, sizeof f->upload_id);
        bs->files[bs->nfiles++] = f;
    }
    pthread_mutex_unlock(&bs->lock);
    if (rc < 0) {
        file_free(f);
        return -1;
    }
    snprintf(url, sizeof url, "%s/upload/v1beta/files?upload_id=%s",
             c->base_url, f->upload_id);
    if (api_json_reply(r, "", API_KIND_UPLOAD) < 0 ||
        api_reply_header(r, "X-Goog-Upload-URL", url) < 0 ||
        api_reply_header(r, "X-Goog-Upload-Status", "active") < 0 ||
        api_reply_header(r, "X-Goog-Upload-Chunk-Granularity",
                         CHUNK_GRANULARITY) < 0)
        return -1;
    return 0;
}

/* Appends the chunk at f->received; lock held.  0 or -1 (errno). */
static int
append_chunk(struct file *f, const struct batch_call *c)
{
    char buf[COPY_BLOCK];
    uint64_t done = 0, len = c->spool_fd >= 0 ? c->spool_len
                                                : (uint64_t)c->body_len;

    while (done < len) {
        size_t want = len - done < sizeof buf ? (size_t)(len - done)
                                              : sizeof buf;
        ssize_t got;

        if (c->spool_fd >= 0) {
            got = pread(c->spool_fd, buf, want, (off_t)done);
            if (got <= 0)
                return -1;
        } else {
            memcpy(buf, c->body + done, want);
            got = (ssize_t)want;
        }
        if (pwrite(f->fd, buf, (size_t)got,
                   (off_t)(f->received + done)) != got)
            return -1;
        done += (uint64_t)got;
    }
    f->received += len;
    return 0;
}

/* Hashes the received bytes into f->sha256; lock held.  0 or -1. */
static int
hash_file(struct file *f)
{
    unsigned char buf[COPY_BLOCK], digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint64_t at = 0;
    int rc = -1;

    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        goto fail;
    while (at < f->received) {
        ssize_t got = pread(f->fd, buf, sizeof buf, (off_t)at);

        if (got <= 0 || !EVP_DigestUpdate(ctx, buf, (size_t)got))
            goto fail;
        at += (uint64_t)got;
    }
    if (!EVP_DigestFinal_ex(ctx, digest, &dlen))
        goto fail;
    EVP_EncodeBlock((unsigned char *)f->sha256, digest, (int)dlen);
    rc = 0;
fail:
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* Status headers after a chunk or query; lock held for f. */
static int
upload_status(struct api_reply *r, const struct file *f)
{
    char received[32];

    snprintf(received, sizeof received, "%" PRIu64, f->received);
    if (api_reply_header(r, "X-Goog-Upload-Status",
                         f->final ? "final" : "active") < 0 ||
        api_reply_header(r, "X-Goog-Upload-Size-Received", received) < 0)
        return -1;
    return 0;
}

/* A chunk and/or finalize on an upload; lock held.  The refusal or
 * NULL into *message; the file resource into *done once final. */
static int
upload_step_locked(struct batch *bs, struct file *f, int words,
                   const struct batch_call *c, const char **message,
                   json_t **done)
{
    uint64_t offset, len = c->spool_fd >= 0 ? c->spool_len
                                              : (uint64_t)c->body_len;

    *message = NULL;
    *done = NULL;
    if (f->final) {
        *message = "The upload is already finalized.";
        return 0;
    }
    if (words & CMD_UPLOAD) {
        if (parse_u64(c->upload_offset, &offset) < 0 ||
            offset != f->received) {
            *message = "X-Goog-Upload-Offset must be the number of bytes "
                       "received so far (see X-Goog-Upload-Size-Received).";
            return 0;
        }
        if (f->announced >= 0 &&
            f->received + len > (uint64_t)f->announced) {
            *message = "The upload is longer than the announced "
                       "X-Goog-Upload-Header-Content-Length.";
            return 0;
        }
        if (append_chunk(f, c) < 0)
            return -1;
        f->update_wall_ms = api_clock_ms(CLOCK_REALTIME);
    }
    if (!(words & CMD_FINALIZE))
        return 0;
    if (f->announced >= 0 && f->received != (uint64_t)f->announced) {
        *message = "The upload is shorter than the announced "
                   "X-Goog-Upload-Header-Content-Length.";
        return 0;
    }
    if (hash_file(f) < 0)
        return -1;
    f->final = 1;
    bs->count.uploads++;
    *done = file_json(f, c->base_url);
    return *done ? 0 : -1;
}

static int
upload_bytes(struct batch *bs, const struct batch_call *c, int words,
             struct api_reply *r)
{
    struct file *f;
    const char *message = NULL;
    json_t *done = NULL;
    int rc = 0, status_rc = 0;

    pthread_mutex_lock(&bs->lock);
    f = file_find_locked(bs, NULL, c->upload_id);
    if (f && !(words & CMD_QUERY))
        rc = upload_step_locked(bs, f, words, c, &message, &done);
    pthread_mutex_unlock(&bs->lock);
    if (!f)
        return not_found(r, "Upload", c->upload_id, API_KIND_UPLOAD);
    if (rc < 0)
        return -1;
    if (message)
        return bad_request(r, message);
    if (done) {
        rc = json_reply(r, json_pack("{s:o}", "file", done), API_KIND_UPLOAD);
        return rc < 0 ? -1 : api_reply_header(r, "X-Goog-Upload-Status",
                                              "final");
    }
    if (api_json_reply(r, "", API_KIND_UPLOAD) < 0)
        return -1;
    pthread_mutex_lock(&bs->lock);
    status_rc = upload_status(r, f);
    pthread_mutex_unlock(&bs->lock);
    return status_rc;
}

int
batch_upload(struct batch *bs, const struct batch_call *c,
             struct api_reply *r)
{
    int rc = gates(bs, c, bs->sc->batch_http_fault, r);
    int words;

    if (rc)
        return rc < 0 ? -1 : 0;
    r->kind = API_KIND_UPLOAD;
    words = upload_words(c->upload_command);
    if (words <= 0)
        return bad_request(r, "Bad or missing X-Goog-Upload-Command.");
    if (!c->upload_id)
        return words == CMD_START
               ? upload_start(bs, c, r)
               : bad_request(r, "An upload starts with X-Goog-Upload-"
                             "Command: start and no upload_id.");
    if (words & CMD_START)
        return bad_request(r, "This upload has already started.");
    return upload_bytes(bs, c, words, r);
}

int
batch_file_get(struct batch *bs, const struct batch_call *c,
               struct api_reply *r)
{
    struct file *f;
    json_t *o = NULL;
    int rc = gates(bs, c, bs->sc->batch_http_fault, r);

    if (rc)
        return rc < 0 ? -1 : 0;
    pthread_mutex_lock(&bs->lock);
    f = file_find_locked(bs, c->id, NULL);
    if (f && f->final)
        o = file_json(f, c->base_url);
    pthread_mutex_unlock(&bs->lock);
    if (!o && f && f->final)
        return -1;
    if (!o)
        return not_found(r, "File", c->id, API_KIND_FILE);
    return json_reply(r, o, API_KIND_FILE);
}

int
batch_file_delete(struct batch *bs, const struct batch_call *c,
                  struct api_reply *r)
{
    struct file *f = NULL;
    int rc = gates(bs, c, 0, r);

    if (rc)
        return rc < 0 ? -1 : 0;
    pthread_mutex_lock(&bs->lock);
    for (size_t i = 0; i < bs->nfiles; i++)
        if (strcmp(bs->files[i]->id, c->id) == 0) {
            f = bs->files[i];
            bs->files[i] = bs->files[--bs->nfiles];
            break;
        }
    pthread_mutex_unlock(&bs->lock);
    if (!f)
        return not_found(r, "File", c->id, API_KIND_FILE);
    file_free(f);
    return api_json_reply(r, "{}\n", API_KIND_FILE);
}

/* --- batch state ------------------------------------------------------- */

static uint64_t
end_offset_ms(const struct batch *bs)
{
    long pending = bs->sc->batch_pending_ms, run = bs->sc->batch_run_ms;

    return (uint64_t)(run > pending ? run : pending);
}

static enum state
state_of(const struct batch *bs, const struct job *j, uint64_t now)
{
    uint64_t age = now - j->created_mono_ms;

    if (j->cancelled)
        return ST_CANCELLED;
    if (age < (uint64_t)bs->sc->batch_pending_ms)
        return ST_PENDING;
    if (age < end_offset_ms(bs))
        return ST_RUNNING;
    return j->fate;
}

static int
terminal(enum state s)
{
    return s != ST_PENDING && s != ST_RUNNING;
}

/* Counts a batch's terminal state the first time it is seen; lock
 * held.  Returns the state. */
static enum state
settle_locked(struct batch *bs, struct job *j, uint64_t now)
{
    enum state s = state_of(bs, j, now);

    if (!terminal(s) || j->settled)
        return s;
    j->settled = 1;
    switch (s) {
    case ST_SUCCEEDED: bs->count.succeeded++; break;
    case ST_EXPIRED: bs->count.expired++; break;
    case ST_FAILED: bs->count.failed++; break;
    default: break;         /* a cancel counts itself */
    }
    return s;
}

static void
state_name(const struct batch *bs, enum state s, char *out, size_t len)
{
    snprintf(out, len, "%s_STATE_%s",
             bs->sc->batch_state_names == SCENARIO_STATES_JOB ? "JOB"
                                                              : "BATCH",
             state_words[s]);
}

static json_t *
stats_json(const struct job *j, enum state s)
{
    json_t *o = json_object();

    if (!o)
        return NULL;
    set_count(o, "requestCount", j->nlines);
    if (s == ST_SUCCEEDED) {
        set_count(o, "successfulRequestCount", j->nlines - j->error_lines);
        set_count(o, "failedRequestCount", j->error_lines);
    } else if (!terminal(s)) {
        set_count(o, "pendingRequestCount", j->nlines);
    }
    return o;
}

/* What comes out of a SUCCEEDED batch: the results file, or a marker
 * that assemble() replaces with the inlined responses of slot. */
static json_t *
output_json(const struct job *j, size_t slot, const char *type)
{
    char text[64];
    json_t *o = type ? json_pack("{s:s}", "@type", type) : json_object();

    if (!o)
        return NULL;
    if (j->input_file[0]) {
        snprintf(text, sizeof text, "files/batch-%s", j->id);
        json_object_set_new(o, "responsesFile", json_string(text));
    } else {
        snprintf(text, sizeof text, INLINED "%zu@@", slot);
        json_object_set_new(o, "inlinedResponses", json_pack("{s:s}",
                            "inlinedResponses", text));
    }
    return o;
}

/* Times: update is the last change of state; end once terminal. */
static void
set_times(const struct batch *bs, const struct job *j, enum state s,
          json_t *meta)
{
    uint64_t created = j->created_wall_ms, updated = created;

    if (s == ST_CANCELLED)
        updated = j->cancelled_mono_ms + bs->mono_to_wall_ms;
    else if (terminal(s))
        updated = created + end_offset_ms(bs);
    else if (s == ST_RUNNING)
        updated = created + (uint64_t)bs->sc->batch_pending_ms;
    set_time(meta, "createTime", created);
    if (terminal(s))
        set_time(meta, "endTime", updated);
    set_time(meta, "updateTime", updated);
}

/* The Operation of a batch at this moment; lock held.  slot numbers
 * the inlined-responses marker. */
static json_t *
operation_json(struct batch *bs, struct job *j, uint64_t now, size_t slot)
{
    enum state s = settle_locked(bs, j, now);
    char name[64], model[SCENARIO_MODEL_LEN + 8], state[48];
    json_t *meta, *op;

    snprintf(name, sizeof name, "batches/%s", j->id);
    snprintf(model, sizeof model, "models/%s", j->model);
    state_name(bs, s, state, sizeof state);
    meta = json_pack("{s:s,s:s}", "@type",
                     TYPE_PREFIX "GenerateContentBatch", "model", model);
    op = json_pack("{s:s}", "name", name);
    if (!meta || !op)
        goto fail;
    if (j->display_name)
        json_object_set_new(meta, "displayName",
                            json_string(j->display_name));
    if (j->input_file[0])
        json_object_set_new(meta, "inputConfig", json_pack("{s:s}",
                            "fileName", j->input_file));
    if (s == ST_SUCCEEDED)
        json_object_set_new(meta, "output", output_json(j, slot, NULL));
    set_times(bs, j, s, meta);
    json_object_set_new(meta, "batchStats", stats_json(j, s));
    json_object_set_new(meta, "state", json_string(state));
    json_object_set_new(meta, "name", json_string(name));
    json_object_set_new(op, "metadata", meta);
    meta = NULL;
    if (terminal(s))
        json_object_set_new(op, "done", json_true());
    if (s == ST_SUCCEEDED)
        json_object_set_new(op, "response", output_json(j, slot,
                            TYPE_PREFIX "GenerateContentBatchOutput"));
    if (s == ST_FAILED)
        json_object_set_new(op, "error", json_pack("{s:i,s:s}", "code",
            500, "message", "The batch failed: an internal error has "
            "occurred (nbsim batch.fail)."));
    return op;
fail:
    json_decref(meta);
    json_decref(op);
    return NULL;
}

static struct job *
job_find_locked(struct batch *bs, const char *id)
{
    for (size_t i = 0; i < bs->njobs; i++)
        if (strcmp(bs->jobs[i]->id, id) == 0)
            return bs->jobs[i];
    return NULL;
}

/* --- inlined responses and result lines ------------------------------ */

/* Appends one result of line i: {"response":..} or {"error":..}, with
 * the key ("key":K first, for a file) or the metadata (after, inline). */
static int
add_result(struct batch *bs, const struct job *j, size_t i,
           struct body *b)
{
    const struct line *ln = &j->lines[i];
    int file = j->input_file[0] != '\0';
    const char *field = api_line_error(ln->decided) ? "\"error\":"
                                                    : "\"response\":";
    int rc = body_add_text(b, "{", 1);

    if (!rc && file && ln->tag)
        rc = body_add_text(b, "\"key\":", 6) ||
             body_add_text(b, ln->tag, strlen(ln->tag)) ||
             body_add_text(b, ",", 1);
    if (!rc)
        rc = body_add_text(b, field, strlen(field));
    if (!rc)
        rc = api_line_render(bs->api, ln->decided, b);
    if (!rc && !file && ln->tag)
        rc = body_add_text(b, ",\"metadata\":", 12) ||
             body_add_text(b, ln->tag, strlen(ln->tag));
    if (!rc)
        rc = body_add_text(b, "}", 1);
    return rc ? -1 : 0;
}

static int
add_inlined(struct batch *bs, const struct job *j, struct body *b)
{
    if (body_add_text(b, "[", 1) < 0)
        return -1;
    for (size_t i = 0; i < j->nlines; i++)
        if ((i && body_add_text(b, ",", 1) < 0) ||
            add_result(bs, j, i, b) < 0)
            return -1;
    return body_add_text(b, "]", 1);
}

/* The body of text with each quoted marker INLINED<n>@@ replaced by the
 * inlined responses of jobs[n].  NULL when out of memory. */
static struct body *
assemble(struct batch *bs, const char *text, struct job **jobs,
         size_t njobs)
{
    struct body *b = body_new();
    const char *at = text;

    while (b) {
        const char *mark = strstr(at, "\"" INLINED);
        char *end;
        unsigned long n;

        if (!mark) {
            if (body_add_text(b, at, strlen(at)) == 0)
                return b;
            break;
        }
        n = strtoul(mark + 1 + strlen(INLINED), &end, 10);
        if (body_add_text(b, at, (size_t)(mark - at)) < 0 ||
            n >= njobs || add_inlined(bs, jobs[n], b) < 0)
            break;
        at = end + 3;           /* past "@@\"" */
    }
    body_free(b);
    return NULL;
}

/* A 200 whose JSON (root, dropped) may hold inlined markers. */
static int
operations_reply(struct batch *bs, struct api_reply *r, json_t *root,
                 struct job **jobs, size_t njobs, int kind)
{
    char *text = root ? json_dumps(root, DUMP_FLAGS) : NULL;

    json_decref(root);
    if (!text)
        return -1;
    r->action = API_SEND;
    r->status = 200;
    r->kind = kind;
    r->content_type = CT_JSON;
    r->body = assemble(bs, text, jobs, njobs);
    free(text);
    return r->body ? 0 : -1;
}

/* --- create -------------------------------------------------------------- */

/* What a create asked for, read from its body. */
struct order {
    json_t *root;
    const char *display_name;
    const char *file_name;      /* "files/<id>" or NULL */
    json_t *requests;           /* inline: the array */
};

static int
read_order(const struct batch_call *c, struct order *o, struct api_reply *r)
{
    json_error_t jerr;
    json_t *batch, *input, *inner;
    char message[512];

    o->root = json_loadb(c->body ? c->body : "", c->body_len, 0, &jerr);
    batch = json_object_get(o->root, "batch");
    if (!json_is_object(batch)) {
        snprintf(message, sizeof message, "Invalid JSON payload received. "
                 "%s", o->root ? "Expected {\"batch\": {...}}."
                               : jerr.text);
        return bad_request(r, message) < 0 ? -1 : 1;
    }
    o->display_name = json_string_value(member(batch, "displayName",
                                               "display_name"));
    input = member(batch, "inputConfig", "input_config");
    o->file_name = json_string_value(member(input, "fileName",
                                            "file_name"));
    inner = json_object_get(input, "requests");
    o->requests = json_object_get(inner, "requests");
    if (!o->file_name && !json_is_array(o->requests))
        return bad_request(r, "* BatchGenerateContentRequest.batch."
                           "input_config: give file_name or requests")
               < 0 ? -1 : 1;
    if (o->requests && json_array_size(o->requests) == 0)
        return bad_request(r, "* BatchGenerateContentRequest.batch."
                           "input_config.requests: no requests") < 0
               ? -1 : 1;
    return 0;
}

/* One input line or inline item, checked: the request object, the key
 * (file) or metadata (inline).  NULL with a message when it is bad. */
static json_t *
item_request(json_t *item, int file, char *message, size_t len,
             const char *where)
{
    json_t *request = json_object_get(item, "request");

    if (!json_is_object(item)) {
        snprintf(message, len, "%s: not a JSON object", where);
        return NULL;
    }
    if (!json_is_object(request)) {
        snprintf(message, len, "%s: no \"request\" object", where);
        return NULL;
    }
    if (file && json_object_get(item, "key") &&
        !json_is_string(json_object_get(item, "key"))) {
        snprintf(message, len, "%s: \"key\" is not a string", where);
        return NULL;
    }
    return request;
}

/* Decides item n of a new batch into j->lines[n]. */
static int
add_line(struct batch *bs, struct job *j, json_t *item, int file,
         json_t *shas)
{
    struct line *ln = &j->lines[j->nlines];
    json_t *request = json_object_get(item, "request");
    json_t *tag = file ? json_object_get(item, "key")
                       : json_object_get(item, "metadata");
    json_t *key = file ? tag : json_object_get(tag, "key");
    char *text = json_dumps(request, JSON_COMPACT);
    char sha[65];
    unsigned fault = 0;
    uint64_t fault_seed = seed_of(bs, j->ordinal, j->nlines, 0xfa17);

    if (!text)
        return -1;
    /* The draw of each line is its own; faulted lines alternate 500,
     * 503 within the batch. */
    if ((double)(fault_seed >> 11) / 9007199254740992.0 <
        bs->sc->batch_line_fault)
        fault = j->faulted++ % 2 ? 503 : 500;
    ln->decided = api_line_decide(bs->api, j->model, text, strlen(text),
                                  fault, seed_of(bs, j->ordinal,
                                                 j->nlines, 0x11e),
                                  sha);
    free(text);
    if (!ln->decided)
        return -1;
    if (json_is_string(key))
        ln->key = strdup(json_string_value(key));
    if (tag)
        ln->tag = json_dumps(tag, JSON_COMPACT | JSON_ENCODE_ANY);
    j->nlines++;
    if (api_line_error(ln->decided))
        j->error_lines++;
    json_array_append_new(shas, json_string(sha));
    return 0;
}

/* The lines of a JSONL input file, checked first, then decided. */
static int
read_file_lines(struct batch *bs, struct job *j, struct file *f,
                json_t *shas, char *message, size_t len)
{
    FILE *in = NULL;
    char *text = NULL, where[96];
    size_t cap = 0;
    ssize_t got;
    long lineno = 0;
    int pass, fd = dup(f->fd), rc = -1;

    in = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (!in) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    for (pass = 0; pass < 2; pass++) {
        rewind(in);
        lineno = 0;
        while ((got = getline(&text, &cap, in)) >= 0) {
            json_t *item;

            lineno++;
            if (text[strspn(text, " \t\r\n")] == '\0')
                continue;
            item = json_loadb(text, (size_t)got, 0, NULL);
            snprintf(where, sizeof where, "files/%s line %ld", f->id,
                     lineno);
            if (pass == 0 && !item_request(item, 1, message, len, where)) {
                json_decref(item);
                rc = 1;
                goto done;
            }
            if (pass == 1 && add_line(bs, j, item, 1, shas) < 0) {
                json_decref(item);
                goto done;
            }
            json_decref(item);
        }
        if (pass == 0 && lineno == 0) {
            snprintf(message, len, "files/%s is empty", f->id);
            rc = 1;
            goto done;
        }
    }
    rc = 0;
done:
    free(text);
    fclose(in);
    return rc;
}

static int
read_inline_lines(struct batch *bs, struct job *j, json_t *requests,
                  json_t *shas, char *message, size_t len)
{
    size_t i;
    json_t *item;
    char where[96];

    json_array_foreach(requests, i, item) {
        snprintf(where, sizeof where, "inline request %zu", i);
        if (!item_request(item, 0, message, len, where))
            return 1;
    }
    json_array_foreach(requests, i, item)
        if (add_line(bs, j, item, 0, shas) < 0)
            return -1;
    return 0;
}

/* Counts the lines of an input (an upper bound for blank lines). */
static size_t
input_lines(struct file *f, json_t *requests)
{
    char buf[COPY_BLOCK];
    uint64_t at = 0;
    size_t n = 1;
    ssize_t got;

    if (!f)
        return json_array_size(requests);
    while ((got = pread(f->fd, buf, sizeof buf, (off_t)at)) > 0) {
        for (ssize_t i = 0; i < got; i++)
            n += buf[i] == '\n';
        at += (uint64_t)got;
    }
    return n;
}

/* Decides every line of the new batch j; lock held.  0, 1 with message
 * (a bad input), -1. */
static int
fill_job_locked(struct batch *bs, struct job *j, const struct order *o,
                json_t *shas, char *message, size_t len)
{
    struct file *f = NULL;
    size_t n;

    if (o->file_name) {
        if (strncmp(o->file_name, "files/", 6) == 0)
            f = file_find_locked(bs, o->file_name + 6, NULL);
        if (!f || !f->final) {
            snprintf(message, len, "File %s does not exist or is not "
                     "ACTIVE.", o->file_name);
            return 1;
        }
        snprintf(j->input_file, sizeof j->input_file, "%s",
                 o->file_name);
    }
    n = input_lines(f, o->requests);
    j->lines = calloc(n ? n : 1, sizeof *j->lines);
    if (!j->lines)
        return -1;
    if (f)
        return read_file_lines(bs, j, f, shas, message, len);
    return read_inline_lines(bs, j, o->requests, shas, message, len);
}

static struct job *
job_new(const struct batch_call *c, const struct order *o)
{
    struct job *j = calloc(1, sizeof *j);

    if (!j)
        return NULL;
    snprintf(j->model, sizeof j->model, "%s", c->id);
    if (o->display_name) {
        j->display_name = strdup(o->display_name);
        if (!j->display_name) {
            free(j);
            return NULL;
        }
    }
    return j;
}

/* The log fields of a create. */
static void
log_create(struct api_reply *r, const struct job *j, json_t *shas,
           int lost)
{
    json_t *keys = json_array();
    char name[64];

    for (size_t i = 0; keys && i < j->nlines; i++)
        json_array_append_new(keys, j->lines[i].key
                              ? json_string(j->lines[i].key)
                              : json_null());
    snprintf(name, sizeof name, "batches/%s", j->id);
    log_field(r, "batch", json_string(name));
    if (j->display_name)
        log_field(r, "display_name", json_string(j->display_name));
    log_field(r, "lines", json_integer((json_int_t)j->nlines));
    log_field(r, "keys", keys ? keys : json_null());
    log_field(r, "prompt_sha256", json_incref(shas));
    log_field(r, "lost", json_boolean(lost));
}

/* Registers j as made; lock held.  0 or -1. */
static int
publish_locked(struct batch *bs, struct job *j, uint64_t now)
{
    long ordinal = j->ordinal;

    if (grow((void ***)&bs->jobs, bs->njobs, &bs->jobs_cap) < 0)
        return -1;
    random_name_locked(bs, j->id, 37);
    j->created_mono_ms = now;
    j->created_wall_ms = now + bs->mono_to_wall_ms;
    j->fate = ordinal < bs->sc->batch_expire ? ST_EXPIRED
            : ordinal < bs->sc->batch_expire + bs->sc->batch_fail
            ? ST_FAILED : ST_SUCCEEDED;
    j->refs = 1;
    bs->jobs[bs->njobs++] = j;
    bs->next_ordinal++;
    bs->count.created++;
    bs->count.lines += j->nlines;
    bs->count.error_lines += j->error_lines;
    return 0;
}

/* The answer to a create: the Operation, or a lost answer. */
static int
create_answer(struct batch *bs, struct job *j, json_t *op, int lost,
              int reset, struct api_reply *r)
{
    /* With batch.run_ms = 0 an inline batch is done at once. */
    if (!lost)
        return operations_reply(bs, r, op, &j, 1, API_KIND_BATCH_CREATE);
    json_decref(op);
    if (reset) {
        r->action = API_RESET;
        r->status = 0;
        r->kind = API_KIND_BATCH_CREATE;
        return 0;
    }
    return api_status_reply(r, 503, API_KIND_BATCH_CREATE);
}

int
batch_create(struct batch *bs, const struct batch_call *c,
             struct api_reply *r)
{
    struct order o = { 0 };
    struct job *j = NULL;
    json_t *shas = json_array(), *op = NULL;
    char message[512] = "";
    int rc, lost = 0, reset = 0;
    uint64_t now = api_clock_ms(CLOCK_MONOTONIC);

    rc = api_gate_key(bs->api, c->key, r);
    if (!rc)
        rc = api_gate_model(bs->api, c->id, r);
    if (!rc)
        rc = read_order(c, &o, r);
    if (!rc)
        rc = api_gate_outage(bs->api, r);
    if (rc)
        goto done;
    j = shas ? job_new(c, &o) : NULL;
    if (!j) {
        rc = -1;
        goto done;
    }

    pthread_mutex_lock(&bs->lock);
    j->ordinal = bs->next_ordinal;
    rc = fill_job_locked(bs, j, &o, shas, message, sizeof message);
    if (!rc)
        rc = publish_locked(bs, j, now);
    if (!rc) {
        lost = unit_locked(bs) < bs->sc->batch_create_lost;
        reset = api_mix64(&bs->rng) & 1;
        op = operation_json(bs, j, now, 0);
        j->refs++;              /* a delete may come at once */
    }
    pthread_mutex_unlock(&bs->lock);
    if (rc) {
        job_free(j);            /* never published */
        if (rc > 0)
            rc = bad_request(r, message) < 0 ? -1 : 1;
        goto done;
    }
    log_create(r, j, shas, lost);
    rc = op ? create_answer(bs, j, op, lost, reset, r) : -1;
    job_unref(bs, j);
done:
    json_decref(shas);
    json_decref(o.root);
    return rc < 0 ? -1 : 0;
}

/* --- get, list, cancel, delete ------------------------------------------ */

int
batch_get(struct batch *bs, const struct batch_call *c,
          struct api_reply *r)
{
    struct job *j;
    json_t *op = NULL;
    int rc = gates(bs, c, bs->sc->batch_http_fault, r);

    if (rc)
        return rc < 0 ? -1 : 0;
    pthread_mutex_lock(&bs->lock);
    bs->count.polls++;
    j = job_find_locked(bs, c->id);
    if (j) {
        j->refs++;
        op = operation_json(bs, j, api_clock_ms(CLOCK_MONOTONIC), 0);
    }
    pthread_mutex_unlock(&bs->lock);
    if (!j)
        return not_found(r, "Batch", c->id, API_KIND_BATCH);
    rc = operations_reply(bs, r, op, &j, 1, API_KIND_BATCH);
    job_unref(bs, j);
    return rc;
}

/* pageSize and pageToken: 0, or 1 with the refusal in r. */
static int
page_args(const struct batch_call *c, size_t *size, long *below,
          struct api_reply *r)
{
    uint64_t n = PAGE_DEFAULT, token;

    *below = -1;
    if (c->page_size && parse_u64(c->page_size, &n) < 0)
        return bad_request(r, "pageSize must be a number.") < 0 ? -1 : 1;
    if (n == 0)
        n = PAGE_DEFAULT;
    *size = n > PAGE_MAX ? PAGE_MAX : (size_t)n;
    if (!c->page_token || !*c->page_token)
        return 0;
    if (strncmp(c->page_token, TOKEN_PREFIX, strlen(TOKEN_PREFIX)) != 0 ||
        parse_u64(c->page_token + strlen(TOKEN_PREFIX), &token) < 0 ||
        token > (uint64_t)LONG_MAX)
        return bad_request(r, "Invalid page token.") < 0 ? -1 : 1;
    *below = (long)token;
    return 0;
}

/* One page, newest first; lock held.  The jobs get a reference each. */
static json_t *
page_locked(struct batch *bs, size_t size, long below, struct job **page,
            size_t *npage)
{
    uint64_t now = api_clock_ms(CLOCK_MONOTONIC);
    json_t *root = json_object(), *ops = json_array();
    size_t i = bs->njobs;
    char token[48];

    *npage = 0;
    if (!root || !ops)
        goto fail;
    while (i > 0 && below >= 0 && bs->jobs[i - 1]->ordinal >= below)
        i--;
    for (; i > 0 && *npage < size; i--) {
        struct job *j = bs->jobs[i - 1];

        if (json_array_append_new(ops, operation_json(bs, j, now,
                                                      *npage)) < 0)
            goto fail;
        j->refs++;
        page[(*npage)++] = j;
    }
    if (*npage)
        json_object_set_new(root, "operations", ops);
    else
        json_decref(ops);
    ops = NULL;
    if (i > 0) {
        snprintf(token, sizeof token, TOKEN_PREFIX "%ld",
                 page[*npage - 1]->ordinal);
        json_object_set_new(root, "nextPageToken", json_string(token));
    }
    return root;
fail:
    json_decref(ops);
    json_decref(root);
    for (size_t k = 0; k < *npage; k++)
        page[k]->refs--;
    *npage = 0;
    return NULL;
}

int
batch_list(struct batch *bs, const struct batch_call *c,
           struct api_reply *r)
{
    struct job **page = NULL;
    size_t size = 0, npage = 0;
    long below;
    json_t *root;
    int rc = gates(bs, c, bs->sc->batch_http_fault, r);

    if (!rc)
        rc = page_args(c, &size, &below, r);
    if (rc)
        return rc < 0 ? -1 : 0;
    page = calloc(size, sizeof *page);
    if (!page)
        return -1;
    pthread_mutex_lock(&bs->lock);
    root = page_locked(bs, size, below, page, &npage);
    pthread_mutex_unlock(&bs->lock);
    rc = root ? operations_reply(bs, r, root, page, npage, API_KIND_BATCH)
              : -1;
    for (size_t i = 0; i < npage; i++)
        job_unref(bs, page[i]);
    free(page);
    return rc;
}

int
batch_cancel(struct batch *bs, const struct batch_call *c,
             struct api_reply *r)
{
    struct job *j;
    uint64_t now = api_clock_ms(CLOCK_MONOTONIC);
    char name[64];
    int rc = gates(bs, c, 0, r);

    if (rc)
        return rc < 0 ? -1 : 0;
    pthread_mutex_lock(&bs->lock);
    j = job_find_locked(bs, c->id);
    if (j && !terminal(settle_locked(bs, j, now))) {
        j->cancelled = 1;
        j->cancelled_mono_ms = now;
        j->settled = 1;
        bs->count.cancelled++;
    }
    pthread_mutex_unlock(&bs->lock);
    if (!j)
        return not_found(r, "Batch", c->id, API_KIND_BATCH_CANCEL);
    snprintf(name, sizeof name, "batches/%s", c->id);
    log_field(r, "batch", json_string(name));
    return api_json_reply(r, "{}\n", API_KIND_BATCH_CANCEL);
}

int
batch_delete(struct batch *bs, const struct batch_call *c,
             struct api_reply *r)
{
    struct job *j = NULL;
    int rc = gates(bs, c, 0, r), last = 0;

    if (rc)
        return rc < 0 ? -1 : 0;
    pthread_mutex_lock(&bs->lock);
    for (size_t i = 0; i < bs->njobs; i++)
        if (strcmp(bs->jobs[i]->id, c->id) == 0) {
            j = bs->jobs[i];
            settle_locked(bs, j, api_clock_ms(CLOCK_MONOTONIC));
            memmove(bs->jobs + i, bs->jobs + i + 1,
                    (bs->njobs - i - 1) * sizeof *bs->jobs);
            bs->njobs--;
            last = --j->refs == 0;
            break;
        }
    pthread_mutex_unlock(&bs->lock);
    if (!j)
        return not_found(r, "Batch", c->id, API_KIND_BATCH);
    if (last)
        job_free(j);
    return api_json_reply(r, "{}\n", API_KIND_BATCH);
}

/* --- download -------------------------------------------------------- */

/* The batch whose results file is files/<id>, with a reference, or
 * NULL with the refusal (or -1) in *rc. */
static struct job *
results_of(struct batch *bs, const char *id, struct api_reply *r, int *rc)
{
    struct job *j = NULL;
    int uploaded = 0;

    pthread_mutex_lock(&bs->lock);
    if (strncmp(id, "batch-", 6) == 0)
        j = job_find_locked(bs, id + 6);
    if (j && (!j->input_file[0] ||
              settle_locked(bs, j, api_clock_ms(CLOCK_MONOTONIC)) !=
              ST_SUCCEEDED))
        j = NULL;
    if (j) {
        j->refs++;
        bs->count.downloads++;
    }
    uploaded = !j && file_find_locked(bs, id, NULL) != NULL;
    pthread_mutex_unlock(&bs->lock);
    if (j)
        return j;
    if (uploaded)
        *rc = bad_request(r, "Only generated files can be downloaded; "
                          "this file was uploaded.");
    else
        *rc = not_found(r, "File", id, API_KIND_BATCH_DOWNLOAD);
    return NULL;
}

int
batch_download(struct batch *bs, const struct batch_call *c,
               struct api_reply *r, struct batch_stream **out)
{
    struct batch_stream *st;
    struct job *j;
    char name[64];
    int rc = gates(bs, c, bs->sc->batch_http_fault, r);

    *out = NULL;
    if (rc)
        return rc < 0 ? -1 : 0;
    j = results_of(bs, c->id, r, &rc);
    if (!j)
        return rc < 0 ? -1 : 0;
    st = calloc(1, sizeof *st);
    if (!st) {
        job_unref(bs, j);
        return -1;
    }
    st->bs = bs;
    st->job = j;
    r->action = API_SEND;
    r->status = 200;
    r->kind = API_KIND_BATCH_DOWNLOAD;
    r->content_type = CT_JSONL;
    snprintf(name, sizeof name, "batches/%s", j->id);
    log_field(r, "batch", json_string(name));
    log_field(r, "lines", json_integer((json_int_t)j->nlines));
    *out = st;
    return 0;
}

ssize_t
batch_stream_read(struct batch_stream *st, char *buf, size_t max)
{
    size_t done = 0;

    while (done < max) {
        if (st->line) {
            size_t n = body_read(st->line, st->line_pos, buf + done,
                                 max - done);

            st->line_pos += n;
            done += n;
            if (n > 0)
                continue;
            body_free(st->line);
            st->line = NULL;
        }
        if (st->next == st->job->nlines) {
            st->done = 1;
            break;
        }
        st->line = body_new();
        st->line_pos = 0;
        if (!st->line || add_result(st->bs, st->job, st->next++,
                                    st->line) < 0 ||
            body_add_text(st->line, "\n", 1) < 0)
            return done ? (ssize_t)done : -1;
    }
    return (ssize_t)done;
}

int
batch_stream_done(const struct batch_stream *st)
{
    return st->done && !st->line;
}

void
batch_stream_free(struct batch_stream *st)
{
    if (!st)
        return;
    body_free(st->line);
    job_unref(st->bs, st->job);
    free(st);
}

/* --- stats ----------------------------------------------------------- */

struct json_t *
batch_stats(struct batch *bs)
{
    struct counters n;
    uint64_t now = api_clock_ms(CLOCK_MONOTONIC);

    pthread_mutex_lock(&bs->lock);
    for (size_t i = 0; i < bs->njobs; i++)
        settle_locked(bs, bs->jobs[i], now);
    n = bs->count;
    pthread_mutex_unlock(&bs->lock);
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
                     "created", (json_int_t)n.created,
                     "succeeded", (json_int_t)n.succeeded,
                     "expired", (json_int_t)n.expired,
                     "failed", (json_int_t)n.failed,
                     "cancelled", (json_int_t)n.cancelled,
                     "uploads", (json_int_t)n.uploads,
                     "downloads", (json_int_t)n.downloads,
                     "polls", (json_int_t)n.polls,
                     "lines", (json_int_t)n.lines,
                     "error_lines", (json_int_t)n.error_lines);
}
