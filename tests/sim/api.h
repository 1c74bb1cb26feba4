/*
 * api.h - what the simulated Gemini API answers, apart from HTTP.
 *
 * The server (sim.c) routes a request here with the model from its path,
 * the API key it carried and its body; this module decides the answer
 * (auth, model, validation, outages, quotas, prompt triggers, faults) and
 * builds its body in the wire format of shared/gemini-api.md.  It owns
 * the mutable simulation state: the fault PRNG, quota windows, per-prompt
 * counters and runtime outages, each behind one lock.
 *
 * An answer is decided first and its body built later (api_render), so
 * that answers waiting out a latency hold no image in memory.
 */
#ifndef NBSIM_API_H
#define NBSIM_API_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "tests/sim/scenario.h"

struct api;
struct api_render;
struct body;
struct imagegen;

/* What kind of answer a request got, for the log and /_sim/stats. */
enum api_kind {
    API_KIND_IMAGE,         /* 200 with a final image */
    API_KIND_AUTH,          /* 403 no key / 400 bad key */
    API_KIND_MODEL,         /* 404 unknown model */
    API_KIND_BADREQUEST,    /* 400 INVALID_ARGUMENT of any cause */
    API_KIND_QUOTA_MINUTE,  /* 429 over rpm */
    API_KIND_QUOTA_DAY,     /* 429 over rpd */
    API_KIND_OUTAGE,        /* scenario or /_sim/outage window */
    API_KIND_BLOCKED,       /* [sim:block] */
    API_KIND_SAFETY,        /* [sim:safety] */
    API_KIND_NOIMAGE,       /* [sim:noimage] */
    API_KIND_FAILFIRST,     /* [sim:fail-first=N] */
    API_KIND_MODELINFO,     /* 200 GET models/{model} */
    API_KIND_NOROUTE,       /* no such endpoint */
    API_KIND_SIM,           /* /_sim/ control endpoints */
    API_KIND_ERROR,         /* the simulator itself failed */
    API_KIND_UPLOAD,        /* Files API: an upload step */
    API_KIND_FILE,          /* Files API: get or delete */
    API_KIND_BATCH_CREATE,  /* a batch made (even if its answer is lost) */
    API_KIND_BATCH,         /* a batch read: get, list, delete */
    API_KIND_BATCH_CANCEL,  /* a batch cancelled */
    API_KIND_BATCH_DOWNLOAD,    /* a results file served */
    API_KIND_HTTP_FAULT,    /* batch.http_fault: a 502 or 503 */
    API_KIND_FAULT,         /* + enum scenario_fault: "fault:NAME" */
    API_NKINDS = API_KIND_FAULT + SCENARIO_NFAULTS
};

enum api_action {
    API_SEND,               /* send status and body */
    API_RESET,              /* close the connection with no answer */
    API_HANG                /* no answer for wait_ms or until the client
                               goes away, then close */
};

/* One decided answer.  Filled by api_generate / api_model_get / the
 * helpers below; api_reply_clear releases it. */
struct api_reply {
    enum api_action action;
    unsigned status;
    int kind;                       /* enum api_kind */
    const char *content_type;       /* static */
    const char *auth;               /* "ok", "missing", "invalid", NULL */
    char model[SCENARIO_MODEL_LEN]; /* "" when none */
    char prompt_sha256[65];         /* hex, "" when no prompt */
    char prompt_head[404];          /* first 100 characters */
    char response_id[25];           /* "" when none */
    int refs;                       /* images sent with the prompt */
    long wait_ms;                   /* delay before acting */
    long slow_ms;                   /* > 0: body trickles over this long */
    int truncate;                   /* close after half the body */
    int image;                      /* body carries a final image */
    struct body *body;              /* built; NULL until api_render */
    struct api_render *render;      /* private: what is still to build */
    char *headers;                  /* extra "Name: value\n" lines;
                                       owned, NULL when none */
    struct json_t *log_extra;       /* fields added to the log line;
                                       owned, NULL when none */
};

/* Constructor: sc and ig are borrowed and must outlive the api.  The
 * clock for scenario outages starts now.  NULL when out of memory. */
struct api *api_new(const struct scenario *sc, struct imagegen *ig);

/* Accepts NULL. */
void api_free(struct api *a);

/* Milliseconds of clock id (CLOCK_MONOTONIC, CLOCK_REALTIME). */
uint64_t api_clock_ms(clockid_t id);
/* splitmix64: the next value of the generator whose state is *state. */
uint64_t api_mix64(uint64_t *state);

/* Decides POST /v1beta/models/{model}:generateContent.  model and key
 * (NULL when the request had none) and the body (len bytes, need not be
 * NUL-terminated) are borrowed.  Returns 0, or -1 when out of memory (r
 * then holds an API_KIND_ERROR 500 with no body). */
int api_generate(struct api *a, const char *model, const char *key,
                 const char *body, size_t len, struct api_reply *r);

/* Decides GET /v1beta/models/{model}.  0 or -1 as above. */
int api_model_get(struct api *a, const char *model, const char *key,
                  struct api_reply *r);

/* Builds r->body if it is still to be built.  0, or -1 when out of
 * memory or an image could not be made. */
int api_render(struct api *a, struct api_reply *r);

/* A JSON error envelope {"error":{code,message,status}} as the answer,
 * e.g. for an unknown endpoint.  0 or -1. */
int api_error_reply(struct api_reply *r, unsigned code, const char *status,
                    const char *message, int kind);

/* A 200 with the given JSON text (borrowed, copied).  0 or -1. */
int api_json_reply(struct api_reply *r, const char *json, int kind);

/* Releases what r holds and zeroes it.  Accepts an empty reply. */
void api_reply_clear(struct api_reply *r);

/* Adds a response header (both strings borrowed, copied).  0 or -1. */
int api_reply_header(struct api_reply *r, const char *name,
                     const char *value);

/* The usual answer for a bare failure status: Google's HTML page for
 * 408 and 502, else the JSON envelope of 429, 500, 503 or 504.  0 or
 * -1. */
int api_status_reply(struct api_reply *r, unsigned code, int kind);

/* The gates of generate, for other endpoints.  Each returns 0 to go on,
 * 1 when r now holds the refusal, -1 when out of memory.  key may be
 * NULL; model is borrowed and copied into r->model. */
int api_gate_key(struct api *a, const char *key, struct api_reply *r);
int api_gate_model(struct api *a, const char *model, struct api_reply *r);
int api_gate_outage(struct api *a, struct api_reply *r);

/* One request of a batch, decided once when the batch is made and
 * rendered as often as its results are read. */
struct api_line;

/* Decides one request (the JSON text of a GenerateContentRequest, len
 * bytes, borrowed) as generate would, minus the key, outage, quota,
 * latency and fault gates.  A bad body or [sim:badrequest] makes a 400
 * line; [sim:fail-first=N] a 503 line the first N times its prompt is
 * seen (by generate or any batch); the other triggers their answers.
 * fault (0, 500 or 503) makes an error line unless a trigger decided.
 * seed fixes the response id, signatures and a mixed format, so every
 * rendering is the same.  sha_hex gets the prompt's SHA-256 ("" when
 * the body did not parse).  NULL when out of memory. */
struct api_line *api_line_decide(struct api *a, const char *model,
                                 const char *request, size_t len,
                                 unsigned fault, uint64_t seed,
                                 char sha_hex[65]);

/* 0 for an answer, else the HTTP code of the line's error. */
unsigned api_line_error(const struct api_line *ln);

/* Appends to dst the line's GenerateContentResponse, or its error object
 * {code,message,status}, as one line of JSON (no newline).  The same
 * bytes every time.  0 or -1. */
int api_line_render(struct api *a, const struct api_line *ln,
                    struct body *dst);

/* Accepts NULL. */
void api_line_free(struct api_line *ln);

/* Every generate answer is status for the next seconds (0 ends a
 * runtime outage).  Returns 0, or -1 for a status other than 408, 429,
 * 500, 502, 503, 504 or a negative time. */
int api_set_outage(struct api *a, double seconds, int status);

/* Forgets every request counted against rpm and rpd. */
void api_reset_quota(struct api *a);

/* "image", "fault:502"...; a static string. */
const char *api_kind_name(int kind);

#endif
