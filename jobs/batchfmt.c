/*
 * batchfmt.c - reading the Batch API's result lines and Operations.
 *
 * A result line is scanned, not parsed: its top-level members are walked
 * with a small skipper that jumps over strings with memchr (a base64
 * image holds no quote and no backslash), so a 30 MB line costs one pass
 * and no allocation.  Only the small members (the key, an error object)
 * go through jansson.  Operations are small and go through jansson whole;
 * every field is read from "metadata" first, then from the top level, and
 * in both spellings the API accepts (displayName / display_name).
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "jobs/batchfmt.h"
#include "queue/nberr.h"

#define MAX_DEPTH 256

/* ---- result lines --------------------------------------------------- */

static size_t
skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' ||
                       s[i] == '\r'))
        i++;
    return i;
}

/*
 * s[i] is '"': the index just past the closing quote, or 0 when none.
 * Backslashes are looked for only up to the next quote, so that a line
 * of many strings costs one pass, not one pass per string.
 */
static size_t
skip_string(const char *s, size_t len, size_t i)
{
    const char *q = NULL, *b = NULL;

    for (i++; i < len; i = (size_t)(b - s) + 2) {
        if (q == NULL || q < s + i) {
            /* The quote found before was escaped: the next one. */
            if ((q = memchr(s + i, '"', len - i)) == NULL)
                return 0;
        }
        if ((b = memchr(s + i, '\\', (size_t)(q - (s + i)))) == NULL)
            return (size_t)(q - s) + 1;
    }
    return 0;
}

/* The index just past the JSON value at s[i], or 0 when it is broken
 * (brackets must pair; what lies between them is checked later by the
 * reader that takes the value). */
static size_t
skip_value(const char *s, size_t len, size_t i)
{
    char open[MAX_DEPTH];
    int depth = 0;

    if (i >= len)
        return 0;
    do {
        if (i >= len)
            return 0;
        switch (s[i]) {
        case '"':
            if ((i = skip_string(s, len, i)) == 0)
                return 0;
            break;
        case '{':
        case '[':
            if (depth == MAX_DEPTH)
                return 0;
            open[depth++] = s[i] == '{' ? '}' : ']';
            i++;
            break;
        case '}':
        case ']':
            if (depth == 0 || open[--depth] != s[i])
                return 0;
            i++;
            break;
        default:
            if (depth == 0) {
                /* A number or literal: up to the next delimiter. */
                size_t start = i;

                while (i < len && strchr(",}] \t\r\n", s[i]) == NULL)
                    i++;
                return i > start ? i : 0;
            }
            i++;
            break;
        }
    } while (depth > 0);
    return i;
}

/* Copies the JSON string value s[off, off+n) decoded into out. */
static int
string_value(const char *s, size_t off, size_t n, char *out, size_t cap)
{
    json_t *v = json_loadb(s + off, n, JSON_DECODE_ANY, NULL);
    int rc = NB_EINVAL;

    if (json_is_string(v) && json_string_length(v) < cap &&
        strlen(json_string_value(v)) == json_string_length(v)) {
        memcpy(out, json_string_value(v), json_string_length(v) + 1);
        rc = 0;
    }
    json_decref(v);
    return rc;
}

/* The "key" of a metadata object s[off, off+n), if any. */
static int
metadata_key(const char *s, size_t off, size_t n, char *out, size_t cap)
{
    json_t *v = json_loadb(s + off, n, 0, NULL);
    json_t *k = json_object_get(v, "key");
    int rc = 0;

    if (k != NULL) {
        rc = NB_EINVAL;
        if (json_is_string(k) && json_string_length(k) < cap &&
            strlen(json_string_value(k)) == json_string_length(k)) {
            memcpy(out, json_string_value(k), json_string_length(k) + 1);
            rc = 0;
        }
    }
    json_decref(v);
    return v == NULL ? NB_EINVAL : rc;
}

/* The HTTP status of a google.rpc.Code (a line's error may carry
 * either), as Google's own mapping; 0 when unknown. */
static int
http_of_rpc(json_int_t code)
{
    static const int http[] = {
        0,      /* OK: not an error */
        499,    /* CANCELLED */
        500,    /* UNKNOWN */
        400,    /* INVALID_ARGUMENT */
        504,    /* DEADLINE_EXCEEDED */
        404,    /* NOT_FOUND */
        409,    /* ALREADY_EXISTS */
        403,    /* PERMISSION_DENIED */
        429,    /* RESOURCE_EXHAUSTED */
        400,    /* FAILED_PRECONDITION */
        409,    /* ABORTED */
        400,    /* OUT_OF_RANGE */
        501,    /* UNIMPLEMENTED */
        500,    /* INTERNAL */
        503,    /* UNAVAILABLE */
        500,    /* DATA_LOSS */
        401     /* UNAUTHENTICATED */
    };

    if (code >= 100 && code <= 599)
        return (int)code;
    if (code > 0 && code < (json_int_t)(sizeof(http) / sizeof(http[0])))
        return http[code];
    return 0;
}

static int
error_code(const char *s, size_t off, size_t n)
{
    json_t *v = json_loadb(s + off, n, 0, NULL);
    json_t *c = json_object_get(v, "code");
    int code = json_is_integer(c) ? http_of_rpc(json_integer_value(c)) : 0;

    json_decref(v);
    return code;
}

/* Member name s[i] (a string) as one of the names we read; -1 else. */
static int
member_of(const char *s, size_t start, size_t end)
{
    static const char *const names[] = {"key", "response", "error",
                                        "metadata"};
    size_t n = end - start - 2;

    for (int k = 0; k < 4; k++)
        if (strlen(names[k]) == n && memcmp(s + start + 1, names[k], n) == 0)
            return k;
    return -1;
}

int
batchfmt_line(const char *s, size_t len, struct batchfmt_line *out)
{
    char meta_key[BATCHFMT_KEY_MAX] = "";
    size_t i, name_start, name_end, v, v_end;
    int which;

    memset(out, 0, sizeof(*out));
    i = skip_ws(s, len, 0);
    if (i >= len || s[i] != '{')
        return NB_EINVAL;
    i = skip_ws(s, len, i + 1);
    if (i < len && s[i] == '}') {
        i++;
        goto end;
    }
    for (;;) {
        if (i >= len || s[i] != '"')
            return NB_EINVAL;
        name_start = i;
        if ((name_end = skip_string(s, len, i)) == 0)
            return NB_EINVAL;
        i = skip_ws(s, len, name_end);
        if (i >= len || s[i] != ':')
            return NB_EINVAL;
        v = skip_ws(s, len, i + 1);
        if ((v_end = skip_value(s, len, v)) == 0)
            return NB_EINVAL;
        which = member_of(s, name_start, name_end);
        if (which == 0) {
            if (string_value(s, v, v_end - v, out->key,
                             sizeof(out->key)) != 0)
                return NB_EINVAL;
        } else if (which == 1 || which == 2) {
            if (out->kind != BATCHFMT_NONE || s[v] != '{')
                return NB_EINVAL;
            out->kind = which == 1 ? BATCHFMT_RESPONSE : BATCHFMT_ERROR;
            out->value_off = v;
            out->value_len = v_end - v;
            if (which == 2)
                out->error_code = error_code(s, v, v_end - v);
        } else if (which == 3 && s[v] == '{') {
            if (metadata_key(s, v, v_end - v, meta_key,
                             sizeof(meta_key)) != 0)
                return NB_EINVAL;
        }
        i = skip_ws(s, len, v_end);
        if (i < len && s[i] == ',') {
            i = skip_ws(s, len, i + 1);
            continue;
        }
        if (i < len && s[i] == '}') {
            i++;
            break;
        }
        return NB_EINVAL;
    }
end:
    if (skip_ws(s, len, i) != len)
        return NB_EINVAL;
    if (out->key[0] == '\0')
        memcpy(out->key, meta_key, sizeof(meta_key));
    return 0;
}

/* ---- states --------------------------------------------------------- */

int
batchfmt_state(const char *name)
{
    static const char *const names[] = {
        "UNSPECIFIED", "PENDING", "RUNNING", "SUCCEEDED", "FAILED",
        "CANCELLED", "EXPIRED"
    };

    if (name == NULL)
        return BATCHFMT_UNKNOWN;
    if (strncmp(name, "BATCH_STATE_", 12) == 0)
        name += 12;
    else if (strncmp(name, "JOB_STATE_", 10) == 0)
        name += 10;
    for (int i = 1; i < 7; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    /* The SDKs' other spellings of the same states. */
    if (strcmp(name, "QUEUED") == 0)
        return BATCHFMT_PENDING;
    if (strcmp(name, "CANCELED") == 0)
        return BATCHFMT_CANCELLED;
    return BATCHFMT_UNKNOWN;
}

int
batchfmt_state_ended(int state)
{
    return state == BATCHFMT_SUCCEEDED || state == BATCHFMT_FAILED ||
        state == BATCHFMT_CANCELLED || state == BATCHFMT_EXPIRED;
}

/* ---- Operations ----------------------------------------------------- */

/* obj[a] or obj[b] (the other spelling). */
static json_t *
get2(json_t *obj, const char *a, const char *b)
{
    json_t *v = json_object_get(obj, a);

    return v != NULL || b == NULL ? v : json_object_get(obj, b);
}

/* A field of metadata, else of the top level. */
static json_t *
field(json_t *meta, json_t *top, const char *a, const char *b)
{
    json_t *v = get2(meta, a, b);

    return v != NULL ? v : get2(top, a, b);
}

static void
copy_str(json_t *v, char *out, size_t cap)
{
    if (json_is_string(v))
        snprintf(out, cap, "%s", json_string_value(v));
}

/* An int64 written as a JSON string (as batchStats are) or a number. */
static int64_t
count_of(json_t *v)
{
    long long n = 0;

    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v) && sscanf(json_string_value(v), "%lld", &n) == 1)
        return n;
    return 0;
}

/* The responsesFile or inlined output of an output object. */
static void
read_output(json_t *out, struct batchfmt_op *op)
{
    json_t *f;

    if (!json_is_object(out))
        return;
    f = get2(out, "responsesFile", "responses_file");
    if (json_is_string(f) && op->responses_file[0] == '\0')
        copy_str(f, op->responses_file, sizeof(op->responses_file));
    if (get2(out, "inlinedResponses", "inlined_responses") != NULL)
        op->inlined = 1;
}

static int
read_op(json_t *top, struct batchfmt_op *op)
{
    json_t *meta, *stats, *err, *done;

    memset(op, 0, sizeof(*op));
    if (!json_is_object(top))
        return NB_EINVAL;
    meta = json_object_get(top, "metadata");
    if (!json_is_object(meta))
        meta = NULL;
    copy_str(field(meta, top, "name", NULL), op->name, sizeof(op->name));
    copy_str(field(meta, top, "displayName", "display_name"),
             op->display_name, sizeof(op->display_name));
    copy_str(field(meta, top, "state", NULL), op->state_name,
             sizeof(op->state_name));
    op->state = batchfmt_state(op->state_name);
    done = json_object_get(top, "done");
    op->done = json_is_true(done);
    read_output(get2(meta, "output", NULL), op);
    read_output(json_object_get(top, "response"), op);
    stats = field(meta, top, "batchStats", "batch_stats");
    if (json_is_object(stats)) {
        op->requests = count_of(get2(stats, "requestCount",
                                     "request_count"));
        op->succeeded = count_of(get2(stats, "successfulRequestCount",
                                      "successful_request_count"));
        op->failed = count_of(get2(stats, "failedRequestCount",
                                   "failed_request_count"));
        op->pending = count_of(get2(stats, "pendingRequestCount",
                                    "pending_request_count"));
    }
    err = json_object_get(top, "error");
    if (json_is_object(err)) {
        copy_str(json_object_get(err, "message"), op->error,
                 sizeof(op->error));
        op->error_code = (int)count_of(json_object_get(err, "code"));
        if (op->error[0] == '\0')
            snprintf(op->error, sizeof(op->error), "error %d",
                     op->error_code);
    }
    /* Done, yet in no final state: it will not change any more.  With
     * its output and no error it succeeded (sending its jobs again would
     * pay for them twice); else it failed. */
    if (op->done && !batchfmt_state_ended(op->state))
        op->state = op->error[0] == '\0' && (op->responses_file[0] != '\0'
                                             || op->inlined)
                        ? BATCHFMT_SUCCEEDED : BATCHFMT_FAILED;
    if (strncmp(op->name, "batches/", 8) != 0 || op->name[8] == '\0' ||
        strchr(op->name + 8, '/') != NULL || strchr(op->name, '?') != NULL)
        return NB_EINVAL;
    return 0;
}

int
batchfmt_op(const char *json, size_t len, struct batchfmt_op *op)
{
    json_t *top = json_loadb(json, len, 0, NULL);
    int rc = read_op(top, op);

    json_decref(top);
    return rc;
}

int
batchfmt_find(const char *json, size_t len, const char *display,
              struct batchfmt_op *op, char *next_token, size_t token_len)
{
    json_t *top = json_loadb(json, len, 0, NULL);
    json_t *ops = json_object_get(top, "operations");
    json_t *tok = get2(top, "nextPageToken", "next_page_token");
    json_t *item;
    size_t i;
    int found = 0;

    next_token[0] = '\0';
    if (!json_is_object(top) || (ops != NULL && !json_is_array(ops))) {
        json_decref(top);
        return NB_EINVAL;
    }
    copy_str(tok, next_token, token_len);
    json_array_foreach(ops, i, item) {
        struct batchfmt_op cand;

        if (read_op(item, &cand) == 0 &&
            strcmp(cand.display_name, display) == 0) {
            *op = cand;
            found = 1;
            break;
        }
    }
    json_decref(top);
    return found;
}

int
batchfmt_file_name(const char *json, size_t len, char *name, size_t name_len)
{
    json_t *top = json_loadb(json, len, 0, NULL);
    json_t *file = json_object_get(top, "file");
    json_t *n = json_object_get(json_is_object(file) ? file : top, "name");
    int rc = NB_EINVAL;

    if (json_is_string(n) && strncmp(json_string_value(n), "files/", 6) == 0
        && strlen(json_string_value(n)) > 6 &&
        strlen(json_string_value(n)) < name_len &&
        strpbrk(json_string_value(n) + 6, "/?#") == NULL) {
        snprintf(name, name_len, "%s", json_string_value(n));
        rc = 0;
    }
    json_decref(top);
    return rc;
}
