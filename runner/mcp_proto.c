/*
 * mcp_proto.c - JSON-RPC 2.0 messages and the tool schemas of `nbbatch
 * mcp`, as pure functions.
 *
 * A line is JSON or a parse error (-32700, id null); a JSON value must be
 * one object with "jsonrpc": "2.0" and a string or integer id (batches
 * were dropped from MCP in 2025-06-18 and are refused with -32600);
 * params, when present, must be an object.  Responses and notifications
 * are never answered, even when something in them is wrong.  Tool
 * arguments are checked here against the same rules the schemas publish,
 * and every refusal names its field, so an agent can correct itself.
 * Model, aspect ratio and size are checked with jobs/models, the table
 * `nbbatch add` uses, and a size is turned into the model's own spelling
 * as `add` does, so that the caller can compute the very job keys `add`
 * will store.
 *
 * Nothing here reads files or the clock: whether a reference image exists
 * is left to the caller (and to `nbbatch add`).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jobs/models.h"
#include "jobs/promptfile.h"
#include "queue/nberr.h"
#include "runner/mcp_proto.h"

static const char *const versions[] = {
    "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05", NULL
};

/* ---- messages ---------------------------------------------------------- */

static int
invalid(struct mcp_msg *msg, int rc, int code, const char *message)
{
    msg->kind = MCP_INVALID;
    msg->err_code = code;
    snprintf(msg->err_message, sizeof(msg->err_message), "%s", message);
    return rc;
}

static int
id_ok(const json_t *id)
{
    return json_is_string(id) || json_is_integer(id);
}

int
mcp_proto_parse(const char *buf, size_t len, struct mcp_msg *msg)
{
    json_error_t jerr;
    json_t *version, *method, *params;

    memset(msg, 0, sizeof(*msg));
    msg->root = json_loadb(buf, len, JSON_REJECT_DUPLICATES |
                          JSON_DECODE_ANY, &jerr);
    if (msg->root == NULL)
        return invalid(msg, NB_EPARSE, MCP_PARSE_ERROR, "parse error: "
                       "the message is not JSON");
    if (json_is_array(msg->root))
        return invalid(msg, NB_EINVAL, MCP_INVALID_REQUEST, "batches of "
                       "messages are not supported: send one per line");
    if (!json_is_object(msg->root))
        return invalid(msg, NB_EINVAL, MCP_INVALID_REQUEST, "a message "
                       "must be a JSON object");

    /* A response (to a request we never send) is dropped whatever its
     * id: answering it could start an endless exchange of errors. */
    if (json_object_get(msg->root, "method") == NULL &&
        (json_object_get(msg->root, "result") != NULL ||
         json_object_get(msg->root, "error") != NULL)) {
        msg->kind = MCP_RESPONSE;
        return 0;
    }
    msg->id = json_object_get(msg->root, "id");
    if (msg->id != NULL && !id_ok(msg->id)) {
        msg->id = NULL;
        return invalid(msg, NB_EINVAL, MCP_INVALID_REQUEST, "id must be a "
                       "string or an integer");
    }
    version = json_object_get(msg->root, "jsonrpc");
    if (!json_is_string(version) ||
        strcmp(json_string_value(version), "2.0") != 0)
        return invalid(msg, NB_EINVAL, MCP_INVALID_REQUEST, "jsonrpc must "
                       "be \"2.0\"");

    method = json_object_get(msg->root, "method");
    if (!json_is_string(method))
        return invalid(msg, NB_EINVAL, MCP_INVALID_REQUEST, "method must "
                       "be a string");
    msg->method = json_string_value(method);

    params = json_object_get(msg->root, "params");
    if (params != NULL && !json_is_object(params)) {
        /* A notification is never answered, not even with an error: it
         * is taken without its params. */
        if (msg->id == NULL) {
            msg->kind = MCP_NOTIFICATION;
            return 0;
        }
        return invalid(msg, NB_EINVAL, MCP_INVALID_PARAMS, "params must "
                       "be an object");
    }
    msg->params = params;
    msg->kind = msg->id != NULL ? MCP_REQUEST : MCP_NOTIFICATION;
    return 0;
}

void
mcp_msg_clear(struct mcp_msg *msg)
{
    json_decref(msg->root);
    memset(msg, 0, sizeof(*msg));
}

static char *
envelope(const json_t *id, const char *key, json_t *value)
{
    json_t *o = json_object();
    char *text = NULL;

    if (o == NULL || value == NULL)
        goto done;
    json_object_set_new(o, "jsonrpc", json_string("2.0"));
    json_object_set_new(o, "id", id != NULL ? json_copy((json_t *)id)
                                            : json_null());
    json_object_set(o, key, value);
    text = json_dumps(o, JSON_COMPACT);
done:
    json_decref(o);
    json_decref(value);
    return text;
}

char *
mcp_proto_result(const json_t *id, json_t *result)
{
    return envelope(id, "result", result);
}

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlong forms,
 * no surrogates, nothing past U+10FFFF), or 0. */
static size_t
utf8_seq(const unsigned char *s)
{
    unsigned char lo = 0x80, hi = 0xbf;
    size_t n;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        n = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        n = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        n = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    }
    return n;
}

json_t *
mcp_proto_text(const char *text)
{
    json_t *v;
    char *copy;
    size_t len, i, n;

    if (text == NULL)
        return json_null();
    v = json_string(text);
    if (v != NULL)
        return v;
    len = strlen(text);
    copy = malloc(len + 1);
    if (copy == NULL)
        return NULL;
    memcpy(copy, text, len + 1);
    for (i = 0; i < len; i += n) {
        n = utf8_seq((const unsigned char *)copy + i);
        if (n == 0) {
            copy[i] = '?';
            n = 1;
        }
    }
    v = json_string(copy);
    free(copy);
    return v;
}

char *
mcp_proto_error(const json_t *id, int code, const char *message)
{
    return envelope(id, "error", json_pack("{s:i, s:o}", "code", code,
                                           "message",
                                           mcp_proto_text(message)));
}

char *
mcp_proto_notify(const char *method, json_t *params)
{
    json_t *o = json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", method);
    char *text = NULL;

    if (o != NULL && params != NULL) {
        json_object_set(o, "params", params);
        text = json_dumps(o, JSON_COMPACT);
    }
    json_decref(o);
    json_decref(params);
    return text;
}

const char *
mcp_proto_version(const char *requested)
{
    for (int i = 0; requested != NULL && versions[i] != NULL; i++) {
        if (strcmp(versions[i], requested) == 0)
            return versions[i];
    }
    return versions[0];
}

json_t *
mcp_proto_initialize(const char *requested, const char *name,
                     const char *version)
{
    return json_pack(
        "{s:s, s:{s:{s:b}}, s:{s:s, s:s}, s:s}",
        "protocolVersion", mcp_proto_version(requested),
        "capabilities", "tools", "listChanged", 0,
        "serverInfo", "name", name, "version", version,
        "instructions",
        "nbbatch queues image-generation jobs for Gemini image models and "
        "runs them with retries.  generate_images queues prompts and waits "
        "up to wait_seconds for the PNGs; jobs not finished by then go on "
        "in the background: ask job_status for them later.");
}

/* ---- tools ------------------------------------------------------------- */

/*
 * The tool list as JSON text: easier to read and to keep in step with the
 * checks below than a tree of json_pack calls.  Parsed on each tools/list.
 */
static const char tools_json[] =
"[{\"name\":\"generate_images\",\"title\":\"Generate images\","
"\"description\":\"Queues one image job per prompt (or count images of "
"one prompt) and runs them with nbbatch's runner (retries, quotas, "
"breaker).  Returns the PNG paths finished within wait_seconds and the "
"job ids of the rest, which go on in the background while this server "
"runs (see job_status).  Asking again for the same prompts and settings "
"reuses their jobs, in whatever batch they are: nothing is generated or "
"paid twice, and failed, blocked or cancelled ones are tried again.\","
"\"inputSchema\":{\"type\":\"object\",\"additionalProperties\":false,"
"\"properties\":{"
"\"prompts\":{\"type\":\"array\",\"minItems\":1,\"maxItems\":10000,"
"\"items\":{\"type\":\"string\",\"minLength\":1},"
"\"description\":\"one image per prompt\"},"
"\"prompt\":{\"type\":\"string\",\"minLength\":1,"
"\"description\":\"one prompt, with count (instead of prompts)\"},"
"\"count\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":1000,"
"\"description\":\"images of each prompt (default 1)\"},"
"\"model\":{\"type\":\"string\",\"description\":\"model id (default "
"gemini-2.5-flash-image)\"},"
"\"aspect_ratio\":{\"type\":\"string\",\"description\":\"e.g. 16:9; "
"default: the model chooses\"},"
"\"size\":{\"type\":\"string\",\"description\":\"512, 1K, 2K or 4K, as "
"the model accepts\"},"
"\"reference_images\":{\"type\":\"array\",\"maxItems\":14,"
"\"items\":{\"type\":\"string\"},\"description\":\"absolute paths of "
"PNG, JPEG, WebP or HEIC images\"},"
"\"batch\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":100,"
"\"pattern\":\"^[^./][^/]*$\",\"description\":\"batch name, also the "
"folder name under out/ (default mcp)\"},"
"\"out_dir\":{\"type\":\"string\",\"description\":\"absolute folder of "
"the images of a new batch (default: out/BATCH next to the database)\"},"
"\"wait_seconds\":{\"type\":\"number\",\"minimum\":0,\"maximum\":3600,"
"\"description\":\"how long to wait for the images (default 120)\"}}},"
"\"outputSchema\":{\"type\":\"object\",\"properties\":{"
"\"batch\":{\"type\":\"string\"},\"total\":{\"type\":\"integer\"},"
"\"done\":{\"type\":\"integer\"},\"paths\":{\"type\":\"array\","
"\"items\":{\"type\":\"string\"}},\"pending_job_ids\":{\"type\":\"array\","
"\"items\":{\"type\":\"integer\"}},\"jobs\":{\"type\":\"array\","
"\"items\":{\"type\":\"object\"}}},"
"\"required\":[\"batch\",\"total\",\"done\",\"paths\","
"\"pending_job_ids\",\"jobs\"]}},"

"{\"name\":\"job_status\",\"title\":\"Job status\","
"\"description\":\"States of jobs, by job ids or for a whole batch: image "
"paths, attempts, last errors and next attempt times.\","
"\"inputSchema\":{\"type\":\"object\",\"additionalProperties\":false,"
"\"properties\":{\"job_ids\":{\"type\":\"array\",\"minItems\":1,"
"\"items\":{\"type\":\"integer\",\"minimum\":1}},"
"\"batch\":{\"type\":\"string\",\"minLength\":1}}},"
"\"outputSchema\":{\"type\":\"object\",\"properties\":{"
"\"jobs\":{\"type\":\"array\",\"items\":{\"type\":\"object\"}},"
"\"counts\":{\"type\":\"object\"},\"truncated\":{\"type\":\"boolean\"}},"
"\"required\":[\"jobs\",\"counts\"]}},"

"{\"name\":\"list_batches\",\"title\":\"List batches\","
"\"description\":\"Every batch of the queue with its job counts by "
"state, output folder, budget and spend.\","
"\"inputSchema\":{\"type\":\"object\",\"additionalProperties\":false,"
"\"properties\":{}},"
"\"outputSchema\":{\"type\":\"object\",\"properties\":{"
"\"batches\":{\"type\":\"array\",\"items\":{\"type\":\"object\"}}},"
"\"required\":[\"batches\"]}},"

"{\"name\":\"cancel\",\"title\":\"Cancel jobs\","
"\"description\":\"Cancels jobs by id, or every unfinished job of a "
"batch.  Done images stay.\","
"\"inputSchema\":{\"type\":\"object\",\"additionalProperties\":false,"
"\"properties\":{\"job_ids\":{\"type\":\"array\",\"minItems\":1,"
"\"items\":{\"type\":\"integer\",\"minimum\":1}},"
"\"batch\":{\"type\":\"string\",\"minLength\":1}}},"
"\"outputSchema\":{\"type\":\"object\",\"properties\":{"
"\"cancelled\":{\"type\":\"integer\"}},\"required\":[\"cancelled\"]}}]";

json_t *
mcp_proto_tools(void)
{
    json_t *tools = json_loads(tools_json, 0, NULL);

    if (tools == NULL)
        return NULL;
    return json_pack("{s:o}", "tools", tools);
}

json_t *
mcp_proto_tool_result(const char *text, json_t *structured, int is_error)
{
    json_t *r = json_pack("{s:[{s:s, s:o}], s:b}", "content", "type", "text",
                          "text", mcp_proto_text(text), "isError", is_error);

    if (r != NULL && structured != NULL)
        json_object_set(r, "structuredContent", structured);
    json_decref(structured);
    return r;
}

/* ---- tool arguments ---------------------------------------------------- */

static int
arg_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
arg_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return NB_EINVAL;
}

/* Fails on a key of args that is not in allowed (NULL-terminated). */
static int
check_keys(const json_t *args, const char *const *allowed, char *err,
           size_t errlen)
{
    const char *key;
    json_t *value;

    json_object_foreach((json_t *)args, key, value) {
        int known = 0;

        for (int i = 0; allowed[i] != NULL && !known; i++)
            known = strcmp(allowed[i], key) == 0;
        if (!known)
            return arg_fail(err, errlen, "%.64s: unknown argument", key);
    }
    return 0;
}

/* An optional string argument: *out stays NULL when absent. */
static int
opt_string(const json_t *args, const char *key, size_t max_len,
           const char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(args, key);
    size_t len;

    if (v == NULL)
        return 0;
    if (!json_is_string(v))
        return arg_fail(err, errlen, "%s: must be a string", key);
    len = json_string_length(v);
    if (len == 0 || len > max_len || strlen(json_string_value(v)) != len)
        return arg_fail(err, errlen, "%s: must be 1 to %zu bytes of text",
                        key, max_len);
    *out = json_string_value(v);
    return 0;
}

/* An array of strings (at most max), each as opt_string would take. */
static int
string_array(const json_t *v, const char *key, size_t max, size_t max_len,
             const char ***out, size_t *n, char *err, size_t errlen)
{
    size_t count = json_array_size(v);

    if (!json_is_array(v))
        return arg_fail(err, errlen, "%s: must be an array of strings",
                        key);
    if (count > max)
        return arg_fail(err, errlen, "%s: at most %zu items", key, max);
    *out = calloc(count + 1, sizeof(**out));
    if (*out == NULL)
        return NB_ENOMEM;
    for (size_t i = 0; i < count; i++) {
        json_t *item = json_array_get(v, i);
        size_t len = json_string_length(item);

        if (!json_is_string(item) || len == 0 || len > max_len ||
            strlen(json_string_value(item)) != len)
            return arg_fail(err, errlen, "%s[%zu]: must be 1 to %zu bytes "
                            "of text", key, i, max_len);
        (*out)[i] = json_string_value(item);
    }
    *n = count;
    return 0;
}

static int
gen_prompts(const json_t *args, struct mcp_gen_args *a, char *err,
            size_t errlen)
{
    json_t *list = json_object_get(args, "prompts");
    json_t *one = json_object_get(args, "prompt");
    json_t *count = json_object_get(args, "count");
    int rc;

    if ((list == NULL) == (one == NULL))
        return arg_fail(err, errlen, "prompts: give either prompts (a "
                        "list) or prompt (one, with count)");
    if (count != NULL) {
        if (!json_is_integer(count) || json_integer_value(count) < 1 ||
            json_integer_value(count) > PROMPTFILE_MAX_COUNT)
            return arg_fail(err, errlen, "count: must be an integer from "
                            "1 to %d", PROMPTFILE_MAX_COUNT);
        a->count = (int)json_integer_value(count);
    }
    if (list != NULL) {
        rc = string_array(list, "prompts", MCP_MAX_PROMPTS,
                          PROMPTFILE_MAX_PROMPT, &a->prompts, &a->n_prompts,
                          err, errlen);
        if (rc == 0 && a->n_prompts == 0)
            rc = arg_fail(err, errlen, "prompts: must not be empty");
        return rc;
    }
    a->prompts = calloc(2, sizeof(*a->prompts));
    if (a->prompts == NULL)
        return NB_ENOMEM;
    a->n_prompts = 1;
    return opt_string(args, "prompt", PROMPTFILE_MAX_PROMPT, &a->prompts[0],
                      err, errlen);
}

static int
gen_model(const json_t *args, struct mcp_gen_args *a, char *err,
          size_t errlen)
{
    const struct model_info *m;
    const char *size = NULL;
    int rc;

    rc = opt_string(args, "model", 100, &a->model, err, errlen);
    if (rc == 0)
        rc = opt_string(args, "aspect_ratio", 16, &a->aspect, err, errlen);
    if (rc == 0)
        rc = opt_string(args, "size", 16, &size, err, errlen);
    if (rc != 0)
        return rc;
    if (a->model == NULL)
        a->model = MODELS_DEFAULT;
    m = models_find(a->model);
    if (m == NULL)
        return arg_fail(err, errlen, "model: \"%.100s\" is not a model id "
                        "(e.g. %s)", a->model, MODELS_DEFAULT);
    if (a->aspect != NULL && !models_aspect_ok(m, a->aspect))
        return arg_fail(err, errlen, "aspect_ratio: \"%.16s\" is not an "
                        "aspect ratio %.100s accepts", a->aspect, a->model);
    if (size != NULL) {
        a->size = models_size_spelling(m, size);
        if (a->size == NULL)
            return arg_fail(err, errlen, "size: \"%.16s\" is not a size "
                            "%.100s accepts", size, a->model);
    }
    if (a->n_refs > (size_t)m->max_refs)
        return arg_fail(err, errlen, "reference_images: %.100s takes at "
                        "most %d", a->model, m->max_refs);
    return 0;
}

static int
gen_wait(const json_t *args, struct mcp_gen_args *a, char *err,
         size_t errlen)
{
    json_t *v = json_object_get(args, "wait_seconds");
    double s;

    a->wait_ms = (int64_t)MCP_DEFAULT_WAIT_S * 1000;
    if (v == NULL)
        return 0;
    if (!json_is_number(v))
        return arg_fail(err, errlen, "wait_seconds: must be a number");
    s = json_number_value(v);
    if (!(s >= 0 && s <= MCP_MAX_WAIT_S))
        return arg_fail(err, errlen, "wait_seconds: must be from 0 to %d",
                        MCP_MAX_WAIT_S);
    a->wait_ms = (int64_t)(s * 1000.0);
    return 0;
}

/* A batch name as `nbbatch add` takes it (text without control bytes)
 * that is also one folder name under out/: no '/', no leading '.'. */
static int
batch_ok(const char *name)
{
    if (name[0] == '.' || name[0] == '\0' || strchr(name, '/') != NULL)
        return 0;
    for (const unsigned char *s = (const unsigned char *)name; *s; s++) {
        if (*s < 0x20 || *s == 0x7f)
            return 0;
    }
    return 1;
}

static int
gen_places(const json_t *args, struct mcp_gen_args *a, char *err,
           size_t errlen)
{
    json_t *refs = json_object_get(args, "reference_images");
    int rc;

    rc = opt_string(args, "batch", 100, &a->batch, err, errlen);
    if (rc == 0 && a->batch != NULL && !batch_ok(a->batch))
        rc = arg_fail(err, errlen, "batch: a name for a folder under "
                      "out/: no control characters, no '/', and not "
                      "starting with '.'");
    if (rc == 0)
        rc = opt_string(args, "out_dir", 4000, &a->out_dir, err, errlen);
    if (rc == 0 && a->out_dir != NULL && a->out_dir[0] != '/')
        rc = arg_fail(err, errlen, "out_dir: must be an absolute path");
    if (rc != 0 || refs == NULL)
        return rc;
    rc = string_array(refs, "reference_images", PROMPTFILE_MAX_IMAGES,
                      4000, &a->refs, &a->n_refs, err, errlen);
    for (size_t i = 0; rc == 0 && i < a->n_refs; i++) {
        if (a->refs[i][0] != '/')
            rc = arg_fail(err, errlen, "reference_images[%zu]: must be an "
                          "absolute path", i);
    }
    return rc;
}

int
mcp_proto_gen_args(const json_t *args, struct mcp_gen_args *out, char *err,
                   size_t errlen)
{
    static const char *const allowed[] = {
        "prompts", "prompt", "count", "model", "aspect_ratio", "size",
        "reference_images", "batch", "out_dir", "wait_seconds", NULL
    };
    struct mcp_gen_args a = {.count = 1};
    json_t *empty = NULL;
    int rc;

    if (args == NULL)
        args = empty = json_object();
    rc = args == NULL ? NB_ENOMEM : check_keys(args, allowed, err, errlen);
    if (rc == 0)
        rc = gen_prompts(args, &a, err, errlen);
    if (rc == 0)
        rc = gen_places(args, &a, err, errlen);
    if (rc == 0)
        rc = gen_model(args, &a, err, errlen);
    if (rc == 0)
        rc = gen_wait(args, &a, err, errlen);
    json_decref(empty);
    if (rc != 0) {
        mcp_gen_args_clear(&a);
        return rc;
    }
    *out = a;
    return 0;
}

void
mcp_gen_args_clear(struct mcp_gen_args *a)
{
    free(a->prompts);
    free(a->refs);
    memset(a, 0, sizeof(*a));
}

static int
job_ids(const json_t *v, struct mcp_job_args *a, char *err, size_t errlen)
{
    size_t n = json_array_size(v);

    if (!json_is_array(v) || n == 0)
        return arg_fail(err, errlen, "job_ids: must be a non-empty array "
                        "of job ids");
    if (n > MCP_MAX_JOB_IDS)
        return arg_fail(err, errlen, "job_ids: at most %d ids",
                        MCP_MAX_JOB_IDS);
    a->job_ids = calloc(n, sizeof(*a->job_ids));
    if (a->job_ids == NULL)
        return NB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(v, i);

        if (!json_is_integer(item) || json_integer_value(item) < 1)
            return arg_fail(err, errlen, "job_ids[%zu]: must be a positive "
                            "integer", i);
        a->job_ids[i] = json_integer_value(item);
    }
    a->n_job_ids = n;
    return 0;
}

int
mcp_proto_job_args(const json_t *args, struct mcp_job_args *out, char *err,
                   size_t errlen)
{
    static const char *const allowed[] = {"job_ids", "batch", NULL};
    struct mcp_job_args a = {0};
    json_t *ids;
    int rc;

    if (args == NULL)
        return arg_fail(err, errlen, "job_ids: give job_ids or batch");
    rc = check_keys(args, allowed, err, errlen);
    if (rc != 0)
        return rc;
    ids = json_object_get(args, "job_ids");
    if ((ids == NULL) == (json_object_get(args, "batch") == NULL))
        return arg_fail(err, errlen, "job_ids: give either job_ids or "
                        "batch");
    if (ids != NULL)
        rc = job_ids(ids, &a, err, errlen);
    else
        rc = opt_string(args, "batch", 100, &a.batch, err, errlen);
    if (rc != 0) {
        mcp_job_args_clear(&a);
        return rc;
    }
    *out = a;
    return 0;
}

void
mcp_job_args_clear(struct mcp_job_args *a)
{
    free(a->job_ids);
    memset(a, 0, sizeof(*a));
}

int
mcp_proto_no_args(const json_t *args, char *err, size_t errlen)
{
    static const char *const none[] = {NULL};

    return args == NULL ? 0 : check_keys(args, none, err, errlen);
}
