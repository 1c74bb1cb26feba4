/*
 * api.c - the simulated Gemini API: who may call, what is asked, and what
 * comes back, in the wire format of shared/gemini-api.md.
 *
 * A generate request passes these gates in order, and the first that
 * answers wins: API key (403 none, 400 API_KEY_INVALID), model (404),
 * body (400 for bad JSON, unknown fields, bad aspect ratio or size),
 * outage window, quota (429 per day, then per minute), prompt triggers
 * ("[sim:...]"), then one seeded draw over the scenario's fault rates;
 * what is left gets an image.  Quotas are counted per model, over the
 * admitted requests only (a request refused with a 429 costs nothing),
 * in a sliding 60 s window and a 24 h window from the first request.
 * Answers from the model (every gate after the quota) wait latency_ms
 * plus jitter first.
 *
 * Image answers are built by api_render after that wait; their JSON is
 * made with jansson around placeholder strings that become streamed
 * base64 pieces of the body, so an image is never copied into the JSON.
 * All mutable state (PRNG, quota windows, per-prompt counters, runtime
 * outage) sits behind api->lock, held only for a few lines at a time.
 */
#include "tests/sim/api.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "tests/sim/body.h"
#include "tests/sim/imagegen.h"

#define CT_JSON "application/json; charset=UTF-8"
#define CT_HTML "text/html; charset=UTF-8"
#define DUMP_FLAGS (JSON_INDENT(2) | JSON_REAL_PRECISION(9))
#define COMPACT_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(9))
#define PLACEHOLDER "@@NBSIM-IMAGE-"   /* + digit + "@@" */
#define PLACEHOLDER_LEN (sizeof PLACEHOLDER - 1 + 3)
#define DAY_MS 86400000ull
#define MINUTE_MS 60000ull

/* --- models ------------------------------------------------------------- */

enum { TIER_512, TIER_1K, TIER_2K, TIER_4K, NTIERS };

static const char *const tier_names[NTIERS] = { "512", "1K", "2K", "4K" };

/* What a model family accepts and reports.  Matched by name prefix; the
 * last entry (empty prefix) catches any other id listed in a scenario. */
struct family {
    const char *prefix;
    const char *display_name;
    enum imagegen_table table;
    int extra_ratios;           /* also 1:4 4:1 1:8 8:1 */
    unsigned tokens[NTIERS];    /* output tokens per size; 0: no size */
    unsigned input_image_tokens;
    long input_limit;
    long output_limit;
};

static const struct family families[] = {
    { "gemini-2.5-flash-image", "Nano Banana (Gemini 2.5 Flash Image)",
      IMAGEGEN_TABLE_25, 0, { 0, 1290, 0, 0 }, 1290, 32768, 32768 },
    { "gemini-3-pro-image", "Nano Banana Pro (Gemini 3 Pro Image)",
      IMAGEGEN_TABLE_3, 0, { 0, 1120, 1120, 2000 }, 560, 65536, 32768 },
    { "gemini-3.1-flash-lite-image",
      "Nano Banana 2 Lite (Gemini 3.1 Flash Lite Image)",
      IMAGEGEN_TABLE_3, 1, { 0, 1120, 0, 0 }, 560, 65536, 4096 },
    { "gemini-3.1-flash-image", "Nano Banana 2 (Gemini 3.1 Flash Image)",
      IMAGEGEN_TABLE_3, 1, { 747, 1120, 1680, 2520 }, 560, 131072,
      32768 },
    { "", "Simulated image model",
      IMAGEGEN_TABLE_3, 1, { 0, 1120, 1120, 2000 }, 560, 65536, 32768 },
};

static const struct family *
family_of(const char *model)
{
    size_t n = sizeof families / sizeof families[0];

    for (size_t i = 0; i + 1 < n; i++)
        if (strncmp(model, families[i].prefix,
                    strlen(families[i].prefix)) == 0)
            return &families[i];
    return &families[n - 1];
}

static int
thinks(const char *model)
{
    return strncmp(model, "gemini-3", 8) == 0;
}

/* --- state ---------------------------------------------------------- */

struct quota {
    uint64_t *minute;           /* ring of admission times, rpm slots */
    size_t head;                /* oldest */
    size_t count;
    long day_count;
    uint64_t day_start_ms;
};

/* Requests seen per prompt, for [sim:fail-first=N]. */
struct counter {
    unsigned char sha[32];
    long seen;
    int used;
};

struct api {
    const struct scenario *sc;
    struct imagegen *ig;
    uint64_t start_ms;
    pthread_mutex_t lock;       /* guards everything below */
    uint64_t rng;
    struct quota quotas[SCENARIO_MAX_MODELS];   /* by scenario model */
    struct counter *counters;   /* open addressing, power of 2 */
    size_t ncounters;
    size_t counters_cap;
    uint64_t outage_until_ms;
    int outage_status;
};

enum outcome {
    OUT_IMAGE,
    OUT_TEXTONLY,
    OUT_NOIMAGE,
    OUT_SAFETY,
    OUT_BLOCKED,
    OUT_MALFORMED,
    OUT_BADBASE64,
    OUT_CORRUPT
};

/* Everything a 200 answer still needs once its wait is over. */
struct api_render {
    enum outcome outcome;
    const struct family *fam;
    char model[SCENARIO_MODEL_LEN];
    unsigned width;             /* final image */
    unsigned height;
    unsigned thought_width;     /* thought image */
    unsigned thought_height;
    enum imagegen_format format;
    const char *mime_label;     /* what the part claims */
    int thoughts;
    unsigned char rgb[3];
    unsigned text_tokens;
    unsigned image_input_tokens;
    unsigned output_tokens;
    unsigned thought_tokens;
    int compact;                /* one line of JSON (a batch result) */
    int seeded;                 /* signatures from sig_seed, not a->rng */
    uint64_t sig_seed;
};

/* One request of a batch, decided when the batch is created. */
struct api_line {
    unsigned code;              /* 0: an answer; else the error's code */
    char *error_json;           /* the error object, one line; owned */
    struct api_render rd;
    char response_id[25];
};

uint64_t
api_clock_ms(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* splitmix64: one step of the generator whose state is *state. */
uint64_t
api_mix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The next draw of a request's own generator (local) when it has one,
 * else of the shared one. */
static uint64_t
rng_next(struct api *a, uint64_t *local)
{
    uint64_t v;

    if (local)
        return api_mix64(local);
    pthread_mutex_lock(&a->lock);
    v = api_mix64(&a->rng);
    pthread_mutex_unlock(&a->lock);
    return v;
}

/* Uniform in [0, 1). */
static double
rng_unit(struct api *a, uint64_t *local)
{
    return (double)(rng_next(a, local) >> 11) / 9007199254740992.0;
}

struct api *
api_new(const struct scenario *sc, struct imagegen *ig)
{
    struct api *a = calloc(1, sizeof *a);

    if (!a)
        return NULL;
    a->sc = sc;
    a->ig = ig;
    a->start_ms = api_clock_ms(CLOCK_MONOTONIC);
    a->rng = sc->seed;
    pthread_mutex_init(&a->lock, NULL);
    return a;
}

void
api_free(struct api *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < SCENARIO_MAX_MODELS; i++)
        free(a->quotas[i].minute);
    free(a->counters);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

/* --- replies ---------------------------------------------------------- */

const char *
api_kind_name(int kind)
{
    static const char *const names[API_KIND_FAULT] = {
        [API_KIND_IMAGE] = "image",
        [API_KIND_AUTH] = "auth",
        [API_KIND_MODEL] = "model",
        [API_KIND_BADREQUEST] = "badrequest",
        [API_KIND_QUOTA_MINUTE] = "quota-minute",
        [API_KIND_QUOTA_DAY] = "quota-day",
        [API_KIND_OUTAGE] = "outage",
        [API_KIND_BLOCKED] = "blocked",
        [API_KIND_SAFETY] = "safety",
        [API_KIND_NOIMAGE] = "noimage",
        [API_KIND_FAILFIRST] = "fail-first",
        [API_KIND_MODELINFO] = "modelinfo",
        [API_KIND_NOROUTE] = "noroute",
        [API_KIND_SIM] = "sim",
        [API_KIND_ERROR] = "error",
        [API_KIND_UPLOAD] = "upload",
        [API_KIND_FILE] = "file",
        [API_KIND_BATCH_CREATE] = "batch_create",
        [API_KIND_BATCH] = "batch",
        [API_KIND_BATCH_CANCEL] = "batch_cancel",
        [API_KIND_BATCH_DOWNLOAD] = "batch_download",
        [API_KIND_HTTP_FAULT] = "http_fault",
    };
    static const char *const faults[SCENARIO_NFAULTS] = {
        "fault:500", "fault:502", "fault:503", "fault:504", "fault:408",
        "fault:429", "fault:429bare", "fault:reset", "fault:truncate",
        "fault:hang", "fault:slow", "fault:malformed", "fault:badbase64",
        "fault:corrupt", "fault:noimage", "fault:textonly", "fault:safety",
        "fault:blocked",
    };

    if (kind >= 0 && kind < API_KIND_FAULT)
        return names[kind];
    if (kind >= API_KIND_FAULT && kind < API_NKINDS)
        return faults[kind - API_KIND_FAULT];
    return "?";
}

void
api_reply_clear(struct api_reply *r)
{
    body_free(r->body);
    free(r->render);
    free(r->headers);
    json_decref(r->log_extra);
    memset(r, 0, sizeof *r);
}

int
api_reply_header(struct api_reply *r, const char *name, const char *value)
{
    size_t have = r->headers ? strlen(r->headers) : 0;
    size_t add = strlen(name) + strlen(value) + 3;
    char *p = realloc(r->headers, have + add + 1);

    if (!p)
        return -1;
    snprintf(p + have, add + 1, "%s: %s\n", name, value);
    r->headers = p;
    return 0;
}

/* Takes text (from json_dumps or malloc) as the whole body. */
static int
set_body_text(struct api_reply *r, char *text)
{
    int rc = -1;

    if (!text)
        return -1;
    body_free(r->body);
    r->body = body_new();
    if (r->body)
        rc = body_add_text(r->body, text, strlen(text));
    free(text);
    return rc;
}

/* Takes root (a reference is dropped on every path). */
static int
set_body_json(struct api_reply *r, json_t *root)
{
    int rc;

    if (!root)
        return -1;
    rc = set_body_text(r, json_dumps(root, DUMP_FLAGS));
    json_decref(root);
    return rc;
}

/* The same on one line, for a batch result. */
static int
set_body_line(struct api_reply *r, json_t *root, int compact)
{
    int rc;

    if (!compact)
        return set_body_json(r, root);
    if (!root)
        return -1;
    rc = set_body_text(r, json_dumps(root, COMPACT_FLAGS));
    json_decref(root);
    return rc;
}

/* An error envelope with optional details (stolen; may be NULL). */
static int
error_with(struct api_reply *r, unsigned code, const char *status,
           const char *message, json_t *details, int kind)
{
    json_t *err;

    r->action = API_SEND;
    r->status = code;
    r->kind = kind;
    r->content_type = CT_JSON;
    err = json_pack("{s:i,s:s,s:s}", "code", (int)code, "message", message,
                    "status", status);
    if (err && details)
        json_object_set_new(err, "details", details);
    else
        json_decref(details);
    return set_body_json(r, err ? json_pack("{s:o}", "error", err) : NULL);
}

int
api_error_reply(struct api_reply *r, unsigned code, const char *status,
                const char *message, int kind)
{
    return error_with(r, code, status, message, NULL, kind);
}

int
api_json_reply(struct api_reply *r, const char *json, int kind)
{
    char *copy = strdup(json);

    r->action = API_SEND;
    r->status = 200;
    r->kind = kind;
    r->content_type = CT_JSON;
    return set_body_text(r, copy);
}

/* The Google Front End's own error page (HTML, not JSON). */
static int
html_reply(struct api_reply *r, unsigned code, int kind)
{
    const char *title = code == 408 ? "Request Timeout" : "Server Error";
    const char *text = code == 408
        ? "Your client has taken too long to issue its request."
        : "The server encountered a temporary error and could not "
          "complete your request.<p>Please try again in 30 seconds.";
    char page[1024];

    snprintf(page, sizeof page,
             "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
             "  <meta name=viewport content=\"initial-scale=1, "
             "minimum-scale=1, width=device-width\">\n"
             "  <title>Error %u (%s)!!1</title>\n"
             "  <style>*{margin:0;padding:0}html{font:15px/22px arial,"
             "sans-serif;background:#fff;color:#222;padding:15px}"
             "</style>\n"
             "  <a href=//www.google.com/><span id=logo "
             "aria-label=Google></span></a>\n"
             "  <p><b>%u.</b> <ins>That\u2019s an error.</ins>\n"
             "  <p>%s  <ins>That\u2019s all we know.</ins>\n",
             code, title, code, text);
    r->action = API_SEND;
    r->status = code;
    r->kind = kind;
    r->content_type = CT_HTML;
    return set_body_text(r, strdup(page));
}

/* The usual answer for a bare failure status. */
int
api_status_reply(struct api_reply *r, unsigned code, int kind)
{
    switch (code) {
    case 408:
    case 502:
        return html_reply(r, code, kind);
    case 429:
        return api_error_reply(r, 429, "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).", kind);
    case 500:
        return api_error_reply(r, 500, "INTERNAL",
            "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/"
            "troubleshooting", kind);
    case 504:
        return api_error_reply(r, 504, "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.", kind);
    default:
        return api_error_reply(r, 503, "UNAVAILABLE",
            "The model is overloaded. Please try again later.", kind);
    }
}

/* "1s", "1.5s", "0.037s": a protobuf Duration from milliseconds. */
static void
format_delay(long ms, char *out, size_t outlen)
{
    char frac[8];
    size_t n;

    if (ms % 1000 == 0) {
        snprintf(out, outlen, "%lds", ms / 1000);
        return;
    }
    snprintf(frac, sizeof frac, "%03ld", ms % 1000);
    n = strlen(frac);
    while (n > 0 && frac[n - 1] == '0')
        frac[--n] = '\0';
    snprintf(out, outlen, "%ld.%ss", ms / 1000, frac);
}

/* RESOURCE_EXHAUSTED with Help, QuotaFailure and RetryInfo. */
static int
quota_reply(struct api_reply *r, const char *model, int per_day,
            long limit, long retry_ms, int kind)
{
    const char *metric =
        "generativelanguage.googleapis.com/generate_content_paid_tier_"
        "requests";
    const char *quota_id = per_day
        ? "GenerateRequestsPerDayPerProjectPerModel"
        : "GenerateRequestsPerMinutePerProjectPerModel";
    char delay[32], limit_text[32], message[1024];
    json_t *details;

    format_delay(retry_ms, delay, sizeof delay);
    snprintf(limit_text, sizeof limit_text, "%ld", limit);
    snprintf(message, sizeof message,
             "You exceeded your current quota, please check your plan and "
             "billing details. For more information on this error, head "
             "to: https://ai.google.dev/gemini-api/docs/rate-limits. To "
             "monitor your current usage, head to: "
             "https://ai.dev/rate-limit. \n* Quota exceeded for metric: "
             "%s, limit: %ld, model: %s\nPlease retry in %s.",
             metric, limit, model, delay);
    details = json_pack(
        "[{s:s,s:[{s:s,s:s}]},"
        "{s:s,s:[{s:s,s:s,s:{s:s,s:s},s:s}]},"
        "{s:s,s:s}]",
        "@type", "type.googleapis.com/google.rpc.Help",
        "links", "description", "Learn more about Gemini API quotas",
        "url", "https://ai.google.dev/gemini-api/docs/rate-limits",
        "@type", "type.googleapis.com/google.rpc.QuotaFailure",
        "violations", "quotaMetric", metric, "quotaId", quota_id,
        "quotaDimensions", "location", "global", "model", model,
        "quotaValue", limit_text,
        "@type", "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay", delay);
    if (!details)
        return -1;
    return error_with(r, 429, "RESOURCE_EXHAUSTED", message, details,
                      kind);
}

static int
bad_request(struct api_reply *r, const char *message)
{
    return api_error_reply(r, 400, "INVALID_ARGUMENT", message,
                           API_KIND_BADREQUEST);
}

/* --- gates ------------------------------------------------------------- */

enum { GO_ON = 0, ANSWERED = 1 };

/* 0: go on; 1: answered; -1: out of memory. */
static int
check_key(struct api *a, const char *key, struct api_reply *r)
{
    const char *bad = "API key not valid. Please pass a valid API key.";
    json_t *details;

    if (!key || !*key) {
        r->auth = "missing";
        if (api_error_reply(r, 403, "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers "
                "without established identity). Please use API Key or "
                "other form of API consumer identity to call this API.",
                API_KIND_AUTH) < 0)
            return -1;
        return ANSWERED;
    }
    if (strcmp(key, a->sc->key) == 0) {
        r->auth = "ok";
        return GO_ON;
    }
    r->auth = "invalid";
    details = json_pack(
        "[{s:s,s:s,s:s,s:{s:s}},{s:s,s:s,s:s}]",
        "@type", "type.googleapis.com/google.rpc.ErrorInfo",
        "reason", "API_KEY_INVALID", "domain", "googleapis.com",
        "metadata", "service", "generativelanguage.googleapis.com",
        "@type", "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale", "en-US", "message", bad);
    if (!details || error_with(r, 400, "INVALID_ARGUMENT", bad, details,
                               API_KIND_AUTH) < 0)
        return -1;
    return ANSWERED;
}

static int
check_model(struct api *a, const char *model, struct api_reply *r)
{
    char message[512];

    if (scenario_has_model(a->sc, model))
        return GO_ON;
    snprintf(message, sizeof message,
             "models/%s is not found for API version v1beta, or is not "
             "supported for generateContent. Call ListModels to see the "
             "list of available models and their supported methods.",
             model);
    if (api_error_reply(r, 404, "NOT_FOUND", message, API_KIND_MODEL) < 0)
        return -1;
    return ANSWERED;
}

/* What the request body asked for. */
struct ask {
    char *prompt;               /* concatenated text parts; owned */
    size_t prompt_len;
    char aspect[16];            /* "": not given, 1:1 */
    char size[16];              /* "": not given, 1K */
    int images_in;
};

static json_t *
member(json_t *obj, const char *camel, const char *snake)
{
    json_t *v = json_object_get(obj, camel);

    return v ? v : json_object_get(obj, snake);
}

/* Answers 400 for the first member of obj not in names (each entry a
 * camelCase and a snake_case spelling), as JSON transcoding does. */
static int
unknown_names(json_t *obj, const char *const *names, const char *where,
              struct api_reply *r)
{
    const char *key;
    json_t *value;
    char message[512];

    json_object_foreach(obj, key, value) {
        int known = 0;

        for (size_t i = 0; names[i] && !known; i++)
            known = strcmp(key, names[i]) == 0;
        if (known)
            continue;
        if (where)
            snprintf(message, sizeof message,
                     "Invalid JSON payload received. Unknown name \"%s\" "
                     "at '%s': Cannot find field.", key, where);
        else
            snprintf(message, sizeof message,
                     "Invalid JSON payload received. Unknown name \"%s\": "
                     "Cannot find field.", key);
        return bad_request(r, message) < 0 ? -1 : ANSWERED;
    }
    return GO_ON;
}

static int
append_text(struct ask *ask, const char *text, size_t len)
{
    char *p = realloc(ask->prompt, ask->prompt_len + len + 1);

    if (!p)
        return -1;
    memcpy(p + ask->prompt_len, text, len);
    ask->prompt_len += len;
    p[ask->prompt_len] = '\0';
    ask->prompt = p;
    return 0;
}

/* 1 when a base64 string's first bytes disagree with its MIME type. */
static int
mislabelled(const char *mime, const char *data)
{
    unsigned char head[8];
    int is_png, is_jpeg;

    if (strlen(data) < 8 || EVP_DecodeBlock(head, (const unsigned char *)
                                            data, 8) < 6)
        return 0;
    is_png = memcmp(head, "\x89PNG", 4) == 0;
    is_jpeg = head[0] == 0xff && head[1] == 0xd8 && head[2] == 0xff;
    if (strcmp(mime, "image/png") == 0)
        return is_jpeg;
    if (strcmp(mime, "image/jpeg") == 0)
        return is_png;
    return 0;
}

static int
read_inline(json_t *inline_data, struct ask *ask, struct api_reply *r)
{
    static const char *const types[] = {
        "image/png", "image/jpeg", "image/webp", "image/heic",
        "image/heif", NULL
    };
    const char *mime = json_string_value(member(inline_data, "mimeType",
                                                "mime_type"));
    const char *data = json_string_value(json_object_get(inline_data,
                                                         "data"));
    int known = 0;

    for (size_t i = 0; mime && types[i]; i++)
        known |= strcmp(mime, types[i]) == 0;
    if (!known)
        return bad_request(r, "Unsupported MIME type. The MIME type must "
                           "be image/png, image/jpeg, image/webp, "
                           "image/heic, or image/heif.") < 0 ? -1
                                                              : ANSWERED;
    if (!data)
        return bad_request(r, "* GenerateContentRequest.contents.parts."
                           "inline_data.data: data is not specified")
               < 0 ? -1 : ANSWERED;
    if (mislabelled(mime, data))
        return bad_request(r, "Unable to process input image. Please "
                           "retry or report in https://developers."
                           "generativeai.google/guide/troubleshooting")
               < 0 ? -1 : ANSWERED;
    ask->images_in++;
    return GO_ON;
}

/* Walks contents[].parts[]: text parts make the prompt. */
static int
read_contents(json_t *contents, struct ask *ask, struct api_reply *r)
{
    size_t i, j;
    json_t *content, *part;

    if (!json_is_array(contents) || json_array_size(contents) == 0)
        return bad_request(r, "* GenerateContentRequest.contents: "
                           "contents is not specified") < 0 ? -1
                                                            : ANSWERED;
    json_array_foreach(contents, i, content) {
        json_t *parts = json_object_get(content, "parts");

        json_array_foreach(parts, j, part) {
            json_t *text = json_object_get(part, "text");
            json_t *inline_data = member(part, "inlineData", "inline_data");
            int rc;

            if (json_is_string(text) &&
                !json_is_true(json_object_get(part, "thought")) &&
                append_text(ask, json_string_value(text),
                            json_string_length(text)) < 0)
                return -1;
            if (inline_data) {
                rc = read_inline(inline_data, ask, r);
                if (rc)
                    return rc;
            }
        }
    }
    return GO_ON;
}

static const char *const top_names[] = {
    "contents", "generationConfig", "generation_config", "safetySettings",
    "safety_settings", "systemInstruction", "system_instruction", "tools",
    "toolConfig", "tool_config", "cachedContent", "cached_content",
    "model", "labels", NULL
};

static const char *const image_config_names[] = {
    "aspectRatio", "aspect_ratio", "imageSize", "image_size", NULL
};

/* Copies a string setting of imageConfig; too long means unsupported,
 * which the model check reports later. */
static int
copy_setting(json_t *value, const char *name, char *out, size_t outlen,
             struct api_reply *r)
{
    char message[256];

    if (!value)
        return GO_ON;
    if (!json_is_string(value)) {
        snprintf(message, sizeof message,
                 "Invalid value at 'generation_config.image_config.%s' "
                 "(TYPE_STRING)", name);
        return bad_request(r, message) < 0 ? -1 : ANSWERED;
    }
    snprintf(out, outlen, "%s", json_string_value(value));
    if (json_string_length(value) >= outlen)
        snprintf(out, outlen, "%s", "?");
    return GO_ON;
}

static int
read_config(json_t *root, const char *model, struct ask *ask,
            struct api_reply *r)
{
    json_t *gen = member(root, "generationConfig", "generation_config");
    json_t *image, *count;
    char message[256];
    int rc;

    if (!gen)
        return GO_ON;
    count = member(gen, "candidateCount", "candidate_count");
    if (json_integer_value(count) > 1) {
        snprintf(message, sizeof message,
                 "Multiple candidates is not enabled for models/%s", model);
        return bad_request(r, message) < 0 ? -1 : ANSWERED;
    }
    image = member(gen, "imageConfig", "image_config");
    if (!image)
        return GO_ON;
    rc = unknown_names(image, image_config_names,
                       "generation_config.image_config", r);
    if (rc)
        return rc;
    rc = copy_setting(member(image, "aspectRatio", "aspect_ratio"),
                      "aspect_ratio", ask->aspect, sizeof ask->aspect, r);
    if (rc)
        return rc;
    return copy_setting(member(image, "imageSize", "image_size"),
                        "image_size", ask->size, sizeof ask->size, r);
}

static int
read_body(const char *body, size_t len, const char *model, struct ask *ask,
          struct api_reply *r)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &jerr);
    char message[512];
    int rc;

    if (!root || !json_is_object(root)) {
        snprintf(message, sizeof message,
                 "Invalid JSON payload received. Unexpected token.\n%s "
                 "(line %d, column %d)", root ? "expected an object"
                                              : jerr.text,
                 root ? 1 : jerr.line, root ? 1 : jerr.column);
        json_decref(root);
        return bad_request(r, message) < 0 ? -1 : ANSWERED;
    }
    rc = unknown_names(root, top_names, NULL, r);
    if (!rc)
        rc = read_contents(json_object_get(root, "contents"), ask, r);
    if (!rc)
        rc = read_config(root, model, ask, r);
    json_decref(root);
    return rc;
}

/* The draft image a thinking model shows first: half the final size,
 * and never above 1K (a 4K answer's draft is 1K). */
static void
thought_dims(struct api *a, const char *aspect, struct api_render *rd)
{
    unsigned w1k, h1k;

    rd->thought_width = rd->width / 2 < 16 ? 16 : rd->width / 2;
    rd->thought_height = rd->height / 2 < 16 ? 16 : rd->height / 2;
    if (a->sc->dims == SCENARIO_DIMS_REAL &&
        imagegen_dims(rd->fam->table, aspect, "1K", 1, &w1k, &h1k) == 0 &&
        w1k < rd->thought_width) {
        rd->thought_width = w1k;
        rd->thought_height = h1k;
    }
}

/* 400 unless the model supports the aspect ratio and size; fills the
 * final image's pixel size into rd. */
static int
check_image_config(struct api *a, const struct ask *ask,
                   struct api_render *rd, struct api_reply *r)
{
    static const char *const extra[] = { "1:4", "4:1", "1:8", "8:1" };
    const char *aspect = ask->aspect[0] ? ask->aspect : "1:1";
    const char *size = ask->size[0] ? ask->size : "1K";
    char message[256];
    int tier = -1;

    for (int t = 0; t < NTIERS; t++)
        if (strcmp(size, tier_names[t]) == 0 && rd->fam->tokens[t])
            tier = t;
    if (tier < 0) {
        snprintf(message, sizeof message,
                 "* GenerateContentRequest.generation_config.image_config."
                 "image_size: unsupported value \"%s\" for models/%s",
                 size, rd->model);
        return bad_request(r, message) < 0 ? -1 : ANSWERED;
    }
    for (size_t i = 0; i < 4 && !rd->fam->extra_ratios; i++)
        if (strcmp(aspect, extra[i]) == 0)
            aspect = "?";
    if (imagegen_dims(rd->fam->table, aspect, size,
                      a->sc->dims == SCENARIO_DIMS_REAL, &rd->width,
                      &rd->height) < 0) {
        snprintf(message, sizeof message,
                 "* GenerateContentRequest.generation_config.image_config."
                 "aspect_ratio: unsupported value \"%s\" for models/%s",
                 ask->aspect, rd->model);
        return bad_request(r, message) < 0 ? -1 : ANSWERED;
    }
    rd->output_tokens = rd->fam->tokens[tier];
    thought_dims(a, aspect, rd);
    return GO_ON;
}

/* Fills the prompt's hash and head (first 100 characters) into r. */
static void
describe_prompt(const struct ask *ask, struct api_reply *r,
                unsigned char sha[32])
{
    unsigned int mdlen = 0;
    size_t end = 0, chars = 0;

    EVP_Digest(ask->prompt ? ask->prompt : "", ask->prompt_len, sha,
               &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(r->prompt_sha256 + 2 * i, 3, "%02x", sha[i]);
    while (end < ask->prompt_len && end < sizeof r->prompt_head - 1) {
        /* Stop before the 101st character starts. */
        if (((unsigned char)ask->prompt[end] & 0xC0) != 0x80 &&
            chars++ == 100)
            break;
        end++;
    }
    /* Never cut inside a UTF-8 sequence. */
    while (end > 0 && end < ask->prompt_len &&
           ((unsigned char)ask->prompt[end] & 0xC0) == 0x80)
        end--;
    if (end)
        memcpy(r->prompt_head, ask->prompt, end);
    r->prompt_head[end] = '\0';
}

/* The status of the outage in force, or 0. */
static int
outage_now(struct api *a)
{
    uint64_t now = api_clock_ms(CLOCK_MONOTONIC);
    double elapsed_s = (double)(now - a->start_ms) / 1000.0;
    int status = 0;

    pthread_mutex_lock(&a->lock);
    if (now < a->outage_until_ms)
        status = a->outage_status;
    pthread_mutex_unlock(&a->lock);
    if (status)
        return status;
    for (size_t i = 0; i < a->sc->noutages; i++) {
        const struct scenario_outage *o = &a->sc->outages[i];

        if (elapsed_s >= o->start_s && elapsed_s < o->end_s)
            return o->status;
    }
    return 0;
}

static size_t
model_index(const struct api *a, const char *model)
{
    for (size_t i = 0; i < a->sc->nmodels; i++)
        if (strcmp(a->sc->models[i], model) == 0)
            return i;
    return 0;
}

/* Admits the request or says which window is full: 0 admitted, 1 per
 * day, 2 per minute (*retry_ms: until a slot frees). */
static int
quota_take(struct api *a, const char *model, long *retry_ms)
{
    struct quota *q = &a->quotas[model_index(a, model)];
    long rpm = a->sc->rpm, rpd = a->sc->rpd;
    uint64_t now = api_clock_ms(CLOCK_MONOTONIC);
    int verdict = 0;

    pthread_mutex_lock(&a->lock);
    if (rpm > 0 && !q->minute) {
        /* Made on first use: up to a million slots per model. */
        q->minute = calloc((size_t)rpm, sizeof *q->minute);
        if (!q->minute)
            rpm = 0;            /* out of memory: do not limit */
    }
    if (q->day_count == 0 || now - q->day_start_ms >= DAY_MS) {
        q->day_count = 0;
        q->day_start_ms = now;
    }
    while (rpm > 0 && q->count > 0 && now - q->minute[q->head] >= MINUTE_MS) {
        q->head = (q->head + 1) % (size_t)rpm;
        q->count--;
    }
    if (rpd > 0 && q->day_count >= rpd) {
        verdict = 1;
    } else if (rpm > 0 && q->count >= (size_t)rpm) {
        verdict = 2;
        *retry_ms = (long)(q->minute[q->head] + MINUTE_MS - now);
        if (*retry_ms < 1)
            *retry_ms = 1;
    } else {
        if (rpm > 0)
            q->minute[(q->head + q->count++) % (size_t)rpm] = now;
        q->day_count++;
    }
    pthread_mutex_unlock(&a->lock);
    return verdict;
}

void
api_reset_quota(struct api *a)
{
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < SCENARIO_MAX_MODELS; i++) {
        a->quotas[i].head = a->quotas[i].count = 0;
        a->quotas[i].day_count = 0;
    }
    pthread_mutex_unlock(&a->lock);
}

int
api_set_outage(struct api *a, double seconds, int status)
{
    if (!(seconds >= 0) || seconds > 1e9 ||
        (status != 408 && status != 429 && status != 500 &&
         status != 502 && status != 503 && status != 504))
        return -1;
    pthread_mutex_lock(&a->lock);
    a->outage_until_ms = api_clock_ms(CLOCK_MONOTONIC) +
        (uint64_t)(seconds * 1000.0);
    a->outage_status = status;
    pthread_mutex_unlock(&a->lock);
    return 0;
}

static int
quota_gate(struct api *a, const char *model, struct api_reply *r)
{
    long retry_ms = 0;
    int verdict;

    if (a->sc->rpm <= 0 && a->sc->rpd <= 0)
        return GO_ON;
    verdict = quota_take(a, model, &retry_ms);
    if (verdict == 0)
        return GO_ON;
    if (verdict == 1)
        retry_ms = a->sc->retry_delay_ms;
    if (quota_reply(r, model, verdict == 1,
                    verdict == 1 ? a->sc->rpd : a->sc->rpm, retry_ms,
                    verdict == 1 ? API_KIND_QUOTA_DAY
                                 : API_KIND_QUOTA_MINUTE) < 0)
        return -1;
    return ANSWERED;
}

/* Counts one more request of the prompt; returns how many came before. */
static long
count_prompt(struct api *a, const unsigned char sha[32])
{
    struct counter *c;
    size_t mask, i;
    long seen = -1;

    pthread_mutex_lock(&a->lock);
    if (a->ncounters * 2 >= a->counters_cap) {
        size_t cap = a->counters_cap ? a->counters_cap * 2 : 256;
        struct counter *grown = calloc(cap, sizeof *grown);

        if (!grown)
            goto done;
        for (size_t k = 0; k < a->counters_cap; k++) {
            if (!a->counters[k].used)
                continue;
            for (i = a->counters[k].sha[0] | (size_t)a->counters[k].sha[1]
                     << 8 | (size_t)a->counters[k].sha[2] << 16;
                 grown[i & (cap - 1)].used; i++)
                ;
            grown[i & (cap - 1)] = a->counters[k];
        }
        free(a->counters);
        a->counters = grown;
        a->counters_cap = cap;
    }
    mask = a->counters_cap - 1;
    i = sha[0] | (size_t)sha[1] << 8 | (size_t)sha[2] << 16;
    for (c = &a->counters[i & mask]; c->used; c = &a->counters[++i & mask])
        if (memcmp(c->sha, sha, 32) == 0)
            break;
    if (!c->used) {
        c->used = 1;
        memcpy(c->sha, sha, 32);
        a->ncounters++;
    }
    seen = c->seen++;
done:
    pthread_mutex_unlock(&a->lock);
    return seen;
}

/* [sim:fail-first=N]: N, or -1 when absent or malformed. */
static long
fail_first(const char *prompt)
{
    const char *tag = "[sim:fail-first=";
    const char *at = prompt ? strstr(prompt, tag) : NULL;
    char *end;
    long n;

    if (!at)
        return -1;
    n = strtol(at + strlen(tag), &end, 10);
    if (end == at + strlen(tag) || *end != ']' || n < 0)
        return -1;
    return n;
}

static int
has(const struct ask *ask, const char *tag)
{
    return ask->prompt && strstr(ask->prompt, tag) != NULL;
}

/* Deterministic answers asked for in the prompt.  *skip_faults is set
 * when the outcome is already fixed. */
static int
trigger_gate(struct api *a, const struct ask *ask,
             const unsigned char sha[32], struct api_render *rd,
             struct api_reply *r, int *skip_faults)
{
    long n = fail_first(ask->prompt);

    *skip_faults = 1;
    if (has(ask, "[sim:badrequest]"))
        return bad_request(r, "Request contains an invalid argument.")
               < 0 ? -1 : ANSWERED;
    if (has(ask, "[sim:block]")) {
        rd->outcome = OUT_BLOCKED;
        r->kind = API_KIND_BLOCKED;
    } else if (has(ask, "[sim:safety]")) {
        rd->outcome = OUT_SAFETY;
        r->kind = API_KIND_SAFETY;
    } else if (has(ask, "[sim:noimage]")) {
        rd->outcome = OUT_NOIMAGE;
        r->kind = API_KIND_NOIMAGE;
    } else if (n >= 0) {
        long seen = count_prompt(a, sha);

        if (seen < 0)
            return -1;
        if (seen < n)
            return api_status_reply(r, 503, API_KIND_FAILFIRST) < 0
                   ? -1 : ANSWERED;
    } else {
        *skip_faults = 0;
    }
    return GO_ON;
}

/* One draw over the fault rates; -1 for none. */
static int
draw_fault(struct api *a)
{
    double u = rng_unit(a, NULL), sum = 0;

    for (int f = 0; f < SCENARIO_NFAULTS; f++) {
        sum += a->sc->fault[f];
        if (u < sum)
            return f;
    }
    return -1;
}

/* Applies a drawn fault; GO_ON leaves an image answer (maybe damaged). */
static int
fault_gate(struct api *a, int f, struct api_render *rd,
           struct api_reply *r)
{
    static const unsigned plain[] = {
        [SCENARIO_F500] = 500, [SCENARIO_F502] = 502,
        [SCENARIO_F503] = 503, [SCENARIO_F504] = 504,
        [SCENARIO_F408] = 408, [SCENARIO_F429BARE] = 429,
    };
    int kind = API_KIND_FAULT + f;

    r->kind = kind;
    if (f < (int)(sizeof plain / sizeof plain[0]) && plain[f])
        return api_status_reply(r, plain[f], kind) < 0 ? -1 : ANSWERED;
    switch (f) {
    case SCENARIO_F429:
        return quota_reply(r, rd->model, 0,
                           a->sc->rpm > 0 ? a->sc->rpm : 10,
                           a->sc->retry_delay_ms, kind) < 0 ? -1
                                                            : ANSWERED;
    case SCENARIO_FRESET:
        r->action = API_RESET;
        return ANSWERED;
    case SCENARIO_FHANG:
        r->action = API_HANG;
        r->wait_ms = a->sc->hang_ms;
        return ANSWERED;
    case SCENARIO_FTRUNCATE: r->truncate = 1; break;
    case SCENARIO_FSLOW: r->slow_ms = a->sc->slow_ms; break;
    case SCENARIO_FMALFORMED: rd->outcome = OUT_MALFORMED; break;
    case SCENARIO_FBADBASE64: rd->outcome = OUT_BADBASE64; break;
    case SCENARIO_FCORRUPT: rd->outcome = OUT_CORRUPT; break;
    case SCENARIO_FNOIMAGE: rd->outcome = OUT_NOIMAGE; break;
    case SCENARIO_FTEXTONLY: rd->outcome = OUT_TEXTONLY; break;
    case SCENARIO_FSAFETY: rd->outcome = OUT_SAFETY; break;
    case SCENARIO_FBLOCKED: rd->outcome = OUT_BLOCKED; break;
    default: break;
    }
    return GO_ON;
}

/* Format and thoughts of an image answer; draws from local when it is
 * not NULL. */
static void
choose_image(struct api *a, const struct ask *ask, struct api_render *rd,
             uint64_t *local)
{
    const struct scenario *sc = a->sc;
    int jpeg = sc->format == SCENARIO_FORMAT_JPEG || has(ask, "[sim:jpeg]");
    int honest = 0;

    if (!jpeg && sc->format == SCENARIO_FORMAT_MIXED &&
        rng_unit(a, local) < sc->jpeg_rate) {
        jpeg = 1;
        honest = rng_next(a, local) & 1;
    }
    if (rd->outcome == OUT_CORRUPT)
        jpeg = 0;               /* the damage is a PNG CRC */
    rd->format = jpeg ? IMAGEGEN_JPEG : IMAGEGEN_PNG;
    rd->mime_label = jpeg && honest ? "image/jpeg" : "image/png";
    rd->thoughts = sc->thoughts == SCENARIO_THOUGHTS_ON ||
                   (sc->thoughts == SCENARIO_THOUGHTS_AUTO &&
                    thinks(rd->model));
}

static void
random_id(struct api *a, char *out, size_t len, uint64_t *local)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint64_t bits = 0;

    for (size_t i = 0; i + 1 < len; i++) {
        if (i % 10 == 0)
            bits = rng_next(a, local);
        out[i] = alphabet[bits & 63];
        bits >>= 6;
    }
    out[len - 1] = '\0';
}

static void
reply_start(struct api_reply *r, const char *model)
{
    memset(r, 0, sizeof *r);
    r->action = API_SEND;
    r->content_type = CT_JSON;
    snprintf(r->model, sizeof r->model, "%s", model);
}

/* The gates after the body: outage, quota, triggers, faults. */
static int
decide(struct api *a, const struct ask *ask, const unsigned char sha[32],
       struct api_render *rd, struct api_reply *r)
{
    int rc, skip_faults, f = -1, status = outage_now(a);
    long jitter = a->sc->latency_jitter_ms;

    if (status)
        return api_status_reply(r, (unsigned)status, API_KIND_OUTAGE) < 0
               ? -1 : ANSWERED;
    rc = quota_gate(a, rd->model, r);
    if (rc)
        return rc;

    r->wait_ms = a->sc->latency_ms +
                 (jitter > 0 ? (long)(rng_next(a, NULL) %
                                   (uint64_t)(jitter + 1))
                             : 0);
    r->kind = API_KIND_IMAGE;
    rc = trigger_gate(a, ask, sha, rd, r, &skip_faults);
    if (rc)
        return rc;
    if (!skip_faults)
        f = draw_fault(a);
    if (f >= 0) {
        rc = fault_gate(a, f, rd, r);
        if (rc)
            return rc;
    }
    choose_image(a, ask, rd, NULL);
    return GO_ON;
}

/* What every answer from the model needs besides its outcome. */
static void
answer_fill(struct api *a, const struct ask *ask,
            const unsigned char sha[32], struct api_render *rd,
            uint64_t *local)
{
    imagegen_prompt_color(ask->prompt ? ask->prompt : "", ask->prompt_len,
                          rd->rgb);
    rd->text_tokens = (unsigned)(ask->prompt_len + 3) / 4 + 1;
    rd->image_input_tokens = (unsigned)ask->images_in *
                             rd->fam->input_image_tokens;
    rd->thought_tokens = thinks(rd->model) || rd->thoughts
                         ? 150u + (unsigned)(sha[3] % 200) : 0;
    if (local) {
        rd->seeded = 1;
        rd->sig_seed = rng_next(a, local);
    }
}

int
api_generate(struct api *a, const char *model, const char *key,
             const char *body, size_t len, struct api_reply *r)
{
    struct ask ask = { 0 };
    struct api_render *rd = NULL;
    unsigned char sha[32];
    int rc;

    reply_start(r, model);
    rc = check_key(a, key, r);
    if (!rc)
        rc = check_model(a, model, r);
    if (!rc)
        rc = read_body(body, len, model, &ask, r);
    if (rc)
        goto done;
    describe_prompt(&ask, r, sha);
    r->refs = ask.images_in;

    rd = calloc(1, sizeof *rd);
    if (!rd) {
        rc = -1;
        goto done;
    }
    rd->fam = family_of(model);
    snprintf(rd->model, sizeof rd->model, "%s", model);
    rc = check_image_config(a, &ask, rd, r);
    if (!rc)
        rc = decide(a, &ask, sha, rd, r);
    if (rc)
        goto done;

    /* An answer from the model, built after the wait. */
    answer_fill(a, &ask, sha, rd, NULL);
    r->status = 200;
    r->image = rd->outcome == OUT_IMAGE && !r->truncate;
    random_id(a, r->response_id, sizeof r->response_id, NULL);
    r->render = rd;
    rd = NULL;
done:
    free(rd);
    free(ask.prompt);
    if (rc >= 0)
        return 0;
    api_reply_clear(r);
    reply_start(r, model);
    r->status = 500;
    r->kind = API_KIND_ERROR;
    return -1;
}

/* --- answer bodies ------------------------------------------------------ */

static json_t *
usage_json(const struct api_render *rd, int with_output)
{
    unsigned output = with_output ? rd->output_tokens : 0;
    unsigned prompt = rd->text_tokens + rd->image_input_tokens;
    json_t *u = json_object();
    json_t *details = json_pack("[{s:s,s:i}]", "modality", "TEXT",
                                "tokenCount", (int)rd->text_tokens);

    if (!u || !details)
        goto fail;
    if (rd->image_input_tokens &&
        json_array_append_new(details, json_pack("{s:s,s:i}", "modality",
            "IMAGE", "tokenCount", (int)rd->image_input_tokens)) < 0)
        goto fail;
    json_object_set_new(u, "promptTokenCount", json_integer(prompt));
    if (output)
        json_object_set_new(u, "candidatesTokenCount",
                            json_integer(output));
    json_object_set_new(u, "totalTokenCount",
                        json_integer(prompt + output + rd->thought_tokens));
    json_object_set_new(u, "promptTokensDetails", details);
    details = NULL;
    if (output)
        json_object_set_new(u, "candidatesTokensDetails",
                            json_pack("[{s:s,s:i}]", "modality", "IMAGE",
                                      "tokenCount", (int)output));
    if (rd->thought_tokens)
        json_object_set_new(u, "thoughtsTokenCount",
                            json_integer(rd->thought_tokens));
    return u;
fail:
    json_decref(details);
    json_decref(u);
    return NULL;
}

/* {"candidates":[candidate], usageMetadata, modelVersion, responseId};
 * candidate is stolen. */
static json_t *
answer_root(const struct api_reply *r, const struct api_render *rd,
            json_t *candidate, int with_output)
{
    return json_pack("{s:[o],s:o,s:s,s:s}", "candidates", candidate,
                     "usageMetadata", usage_json(rd, with_output),
                     "modelVersion", rd->model,
                     "responseId", r->response_id);
}

/* A candidate with no parts: content holds only the role. */
static json_t *
empty_candidate(const char *finish, const char *message)
{
    json_t *c = json_pack("{s:{s:s},s:s}", "content", "role", "model",
                          "finishReason", finish);

    if (c && message)
        json_object_set_new(c, "finishMessage", json_string(message));
    if (c)
        json_object_set_new(c, "index", json_integer(0));
    return c;
}

static json_t *
parts_candidate(json_t *parts)
{
    return json_pack("{s:{s:o,s:s},s:s,s:i}", "content", "parts", parts,
                     "role", "model", "finishReason", "STOP", "index", 0);
}

static char *
signature(struct api *a, uint64_t *local)
{
    unsigned char raw[96];
    char *text = malloc(4 * sizeof raw / 3 + 1);

    for (size_t i = 0; i < sizeof raw; i += 8) {
        uint64_t v = rng_next(a, local);

        memcpy(raw + i, &v, 8);
    }
    if (text)
        EVP_EncodeBlock((unsigned char *)text, raw, sizeof raw);
    return text;
}

/* {"inlineData":{mimeType,data:PLACEHOLDER<slot>}} plus a flag. */
static json_t *
image_part(const char *mime, int slot, const char *flag, json_t *value)
{
    char ph[32];
    json_t *part;

    snprintf(ph, sizeof ph, PLACEHOLDER "%d@@", slot);
    part = json_pack("{s:{s:s,s:s}}", "inlineData", "mimeType", mime,
                     "data", ph);
    if (part && flag)
        json_object_set_new(part, flag, value);
    else
        json_decref(value);
    return part;
}

static json_t *
text_part(const char *text, const char *flag, json_t *value)
{
    json_t *part = json_pack("{s:s}", "text", text);

    if (part && flag)
        json_object_set_new(part, flag, value);
    else
        json_decref(value);
    return part;
}

static json_t *
image_parts(struct api *a, const struct api_render *rd, uint64_t *local)
{
    json_t *parts = json_array();
    char *sig1 = NULL, *sig2 = NULL;

    if (!parts)
        return NULL;
    if (!rd->thoughts) {
        json_array_append_new(parts, image_part(rd->mime_label, 1, NULL,
                                                NULL));
        return parts;
    }
    sig1 = signature(a, local);
    sig2 = signature(a, local);
    if (!sig1 || !sig2) {
        json_decref(parts);
        parts = NULL;
        goto done;
    }
    json_array_append_new(parts, text_part(
        "**Composing the picture**\n\nI am settling the framing, the "
        "light and the main subject the prompt describes before drawing "
        "the final image.", "thought", json_true()));
    json_array_append_new(parts, image_part("image/png", 0, "thought",
                                            json_true()));
    json_array_append_new(parts, text_part("Here is the image you asked "
        "for.", "thoughtSignature", json_string(sig1)));
    json_array_append_new(parts, image_part(rd->mime_label, 1,
        "thoughtSignature", json_string(sig2)));
done:
    free(sig1);
    free(sig2);
    return parts;
}

/* Adds text to b, turning each placeholder into its image's base64 (or
 * into junk for slot 1 when bad_data is set).  Images used are taken. */
static int
add_with_images(struct body *b, const char *text,
                struct imagegen_image *imgs[2], const char *bad_data)
{
    const char *at = text;

    for (;;) {
        const char *ph = strstr(at, PLACEHOLDER);
        int slot;

        if (!ph)
            return body_add_text(b, at, strlen(at));
        slot = ph[sizeof PLACEHOLDER - 1] == '0' ? 0 : 1;
        if (body_add_text(b, at, (size_t)(ph - at)) < 0)
            return -1;
        if (slot == 1 && bad_data) {
            if (body_add_text(b, bad_data, strlen(bad_data)) < 0)
                return -1;
        } else {
            if (!imgs[slot] || body_add_base64(b, imgs[slot]) < 0) {
                imgs[slot] = NULL;
                return -1;
            }
            imgs[slot] = NULL;
        }
        at = ph + PLACEHOLDER_LEN;
    }
}

static int
make_images(struct api *a, const struct api_render *rd,
            struct imagegen_image *imgs[2])
{
    struct imagegen_spec final = {
        rd->width, rd->height, { rd->rgb[0], rd->rgb[1], rd->rgb[2] },
        rd->format, rd->outcome == OUT_CORRUPT
    };
    struct imagegen_spec thought = {
        rd->thought_width, rd->thought_height,
        { (unsigned char)~rd->rgb[0], (unsigned char)~rd->rgb[1],
          (unsigned char)~rd->rgb[2] },
        IMAGEGEN_PNG, 0
    };

    if (rd->thoughts) {
        imgs[0] = imagegen_make(a->ig, &thought);
        if (!imgs[0])
            return -1;
    }
    if (rd->outcome == OUT_BADBASE64)
        return 0;
    imgs[1] = imagegen_make(a->ig, &final);
    return imgs[1] ? 0 : -1;
}

static int
render_image(struct api *a, struct api_reply *r,
             const struct api_render *rd)
{
    struct imagegen_image *imgs[2] = { NULL, NULL };
    uint64_t sig_state = rd->sig_seed;
    json_t *root;
    char *text = NULL;
    int rc = -1;

    if (make_images(a, rd, imgs) < 0)
        goto fail;
    root = answer_root(r, rd, parts_candidate(image_parts(a, rd,
                       rd->seeded ? &sig_state : NULL)), 1);
    text = root ? json_dumps(root, rd->compact ? COMPACT_FLAGS
                                               : DUMP_FLAGS) : NULL;
    json_decref(root);
    if (!text)
        goto fail;
    if (rd->outcome == OUT_MALFORMED)
        text[strlen(text) - 1] = ']';     /* the closing '}' */
    r->body = body_new();
    if (!r->body)
        goto fail;
    rc = add_with_images(r->body, text, imgs,
                         rd->outcome == OUT_BADBASE64
                         ? "iVBORw0KGgo!!nbsim*this~is%not^base64!!" : NULL);
fail:
    free(text);
    imagegen_image_free(imgs[0]);
    imagegen_image_free(imgs[1]);
    return rc;
}

static int
render_other(struct api_reply *r, const struct api_render *rd)
{
    json_t *root = NULL;
    struct api_render unthought = *rd;

    switch (rd->outcome) {
    case OUT_BLOCKED:
        /* A blocked prompt never reached the model: no thoughts. */
        unthought.thought_tokens = 0;
        root = json_pack("{s:{s:s},s:o}", "promptFeedback", "blockReason",
                         "SAFETY", "usageMetadata",
                         usage_json(&unthought, 0));
        break;
    case OUT_SAFETY:
        root = answer_root(r, rd, empty_candidate("IMAGE_SAFETY",
            "The generated image was withheld because it may break the "
            "usage policy. Try rephrasing the prompt. (nbsim)"), 0);
        break;
    case OUT_NOIMAGE:
        root = answer_root(r, rd, empty_candidate("NO_IMAGE", NULL), 0);
        break;
    default:
        root = answer_root(r, rd, parts_candidate(json_pack("[{s:s}]",
            "text", "I can't draw that one, but picture a quiet scene "
            "that matches your words.")), 0);
        break;
    }
    return set_body_line(r, root, rd->compact);
}

int
api_render(struct api *a, struct api_reply *r)
{
    struct api_render *rd = r->render;
    int rc;

    if (!rd)
        return r->body ? 0 : -1;
    switch (rd->outcome) {
    case OUT_IMAGE:
    case OUT_MALFORMED:
    case OUT_BADBASE64:
    case OUT_CORRUPT:
        rc = render_image(a, r, rd);
        break;
    default:
        rc = render_other(r, rd);
        break;
    }
    free(rd);
    r->render = NULL;
    return rc;
}

/* --- models.get ------------------------------------------------------- */

int
api_model_get(struct api *a, const char *model, const char *key,
              struct api_reply *r)
{
    const struct family *fam = family_of(model);
    char name[SCENARIO_MODEL_LEN + 8];
    int rc;

    reply_start(r, model);
    rc = check_key(a, key, r);
    if (!rc)
        rc = check_model(a, model, r);
    if (rc)
        return rc < 0 ? -1 : 0;
    snprintf(name, sizeof name, "models/%s", model);
    r->status = 200;
    r->kind = API_KIND_MODELINFO;
    return set_body_json(r, json_pack(
        "{s:s,s:s,s:s,s:s,s:I,s:I,s:[sss],s:f,s:f,s:f,s:i,s:b}",
        "name", name, "version", "001", "displayName", fam->display_name,
        "description", "Image generation model (simulated by nbsim).",
        "inputTokenLimit", (json_int_t)fam->input_limit,
        "outputTokenLimit", (json_int_t)fam->output_limit,
        "supportedGenerationMethods", "generateContent", "countTokens",
        "batchGenerateContent", "temperature", 1.0, "maxTemperature", 2.0,
        "topP", 0.95, "topK", 64, "thinking", thinks(model)));
}

/* --- gates and lines for the Files and Batch endpoints ------------------ */

int
api_gate_key(struct api *a, const char *key, struct api_reply *r)
{
    return check_key(a, key, r);
}

int
api_gate_model(struct api *a, const char *model, struct api_reply *r)
{
    snprintf(r->model, sizeof r->model, "%s", model);
    return check_model(a, model, r);
}

int
api_gate_outage(struct api *a, struct api_reply *r)
{
    int status = outage_now(a);

    if (!status)
        return GO_ON;
    return api_status_reply(r, (unsigned)status, API_KIND_OUTAGE) < 0
           ? -1 : ANSWERED;
}

/* Keeps the error object of r's envelope, on one line, as ln's answer. */
static int
line_error(struct api_line *ln, const struct api_reply *r)
{
    char *text = r->body ? body_dump(r->body) : NULL;
    json_t *root = text ? json_loads(text, 0, NULL) : NULL;
    json_t *err = json_object_get(root, "error");

    free(text);
    ln->code = r->status;
    ln->error_json = err ? json_dumps(err, COMPACT_FLAGS) : NULL;
    json_decref(root);
    return ln->error_json ? 0 : -1;
}

/* The gates of a batch line: body, image config, triggers, the fault
 * the batch drew.  Fills rd; GO_ON leaves an answer from the model. */
static int
line_gates(struct api *a, const struct ask *ask,
           const unsigned char sha[32], unsigned fault,
           struct api_render *rd, struct api_reply *r)
{
    int rc, skip_faults;

    rc = check_image_config(a, ask, rd, r);
    if (!rc)
        rc = trigger_gate(a, ask, sha, rd, r, &skip_faults);
    if (!rc && !skip_faults && fault)
        rc = api_status_reply(r, fault, API_KIND_FAULT) < 0 ? -1
                                                             : ANSWERED;
    return rc;
}

struct api_line *
api_line_decide(struct api *a, const char *model, const char *request,
                size_t len, unsigned fault, uint64_t seed,
                char sha_hex[65])
{
    struct api_reply r;
    struct ask ask = { 0 };
    struct api_line *ln = calloc(1, sizeof *ln);
    unsigned char sha[32];
    uint64_t local = seed;
    int rc = -1;

    sha_hex[0] = '\0';
    if (!ln)
        return NULL;
    reply_start(&r, model);
    ln->rd.fam = family_of(model);
    snprintf(ln->rd.model, sizeof ln->rd.model, "%s", model);
    ln->rd.compact = 1;
    rc = read_body(request, len, model, &ask, &r);
    if (!rc) {
        describe_prompt(&ask, &r, sha);
        memcpy(sha_hex, r.prompt_sha256, 65);
        rc = line_gates(a, &ask, sha, fault, &ln->rd, &r);
    }
    if (rc == ANSWERED) {
        rc = line_error(ln, &r);
    } else if (rc == GO_ON) {
        choose_image(a, &ask, &ln->rd, &local);
        answer_fill(a, &ask, sha, &ln->rd, &local);
        random_id(a, ln->response_id, sizeof ln->response_id, &local);
    }
    api_reply_clear(&r);
    free(ask.prompt);
    if (rc < 0) {
        api_line_free(ln);
        return NULL;
    }
    return ln;
}

unsigned
api_line_error(const struct api_line *ln)
{
    return ln->code;
}

int
api_line_render(struct api *a, const struct api_line *ln,
                struct body *dst)
{
    struct api_reply r;
    int rc;

    if (ln->code)
        return body_add_text(dst, ln->error_json, strlen(ln->error_json));
    memset(&r, 0, sizeof r);
    r.render = malloc(sizeof *r.render);
    if (!r.render)
        return -1;
    *r.render = ln->rd;
    memcpy(r.response_id, ln->response_id, sizeof r.response_id);
    rc = api_render(a, &r);
    if (rc == 0) {
        rc = body_add_body(dst, r.body);
        r.body = NULL;
    }
    api_reply_clear(&r);
    return rc;
}

void
api_line_free(struct api_line *ln)
{
    if (!ln)
        return;
    free(ln->error_json);
    free(ln);
}
