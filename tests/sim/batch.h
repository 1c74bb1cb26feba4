/*
 * batch.h - the simulated Files API and Batch API of nbsim.
 *
 * The server (sim.c) hands each Files or Batch request here with what
 * it carried (struct batch_call); this module keeps the uploaded files
 * and the batches in memory for the life of the process and fills an
 * api_reply in the wire format of shared/gemini-api.md section 6.  A
 * batch's requests are decided when it is made (api_line_decide); its
 * state then follows the clock (PENDING, RUNNING, then SUCCEEDED,
 * EXPIRED or FAILED as the scenario says, or CANCELLED), and its results
 * are rendered line by line each time they are read, the same bytes
 * every time.
 */
#ifndef NBSIM_BATCH_H
#define NBSIM_BATCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tests/sim/scenario.h"

struct api;
struct api_reply;
struct batch;
struct batch_stream;
struct json_t;

/* What a request brought; every pointer is borrowed, NULL when absent. */
struct batch_call {
    const char *key;            /* the API key */
    const char *id;             /* path parameter: model, file or batch */
    const char *body;           /* JSON body (not NUL-terminated) */
    size_t body_len;
    int spool_fd;               /* upload bytes in a file, or -1 */
    uint64_t spool_len;
    const char *upload_protocol;    /* X-Goog-Upload-Protocol */
    const char *upload_command;     /* X-Goog-Upload-Command */
    const char *upload_offset;      /* X-Goog-Upload-Offset */
    const char *upload_length;      /* X-Goog-Upload-Header-Content-Length */
    const char *upload_id;          /* ?upload_id= */
    const char *page_size;          /* ?pageSize= */
    const char *page_token;         /* ?pageToken= */
    const char *base_url;           /* "http://127.0.0.1:PORT" */
};

/* Constructor: sc and api are borrowed and must outlive the result.
 * NULL when out of memory. */
struct batch *batch_new(const struct scenario *sc, struct api *api);

/* Frees every file and batch.  No stream may be open.  Accepts NULL. */
void batch_free(struct batch *bs);

/* Each handler below fills r (zeroed by the caller) with the answer,
 * refusals included, and returns 0, or -1 when out of memory (r may
 * then be partly filled; the caller clears it). */

/* POST /upload/v1beta/files: without ?upload_id= starts an upload,
 * with it takes a chunk, a query or a finalize. */
int batch_upload(struct batch *bs, const struct batch_call *c,
                 struct api_reply *r);

/* GET and DELETE /v1beta/files/{id}. */
int batch_file_get(struct batch *bs, const struct batch_call *c,
                   struct api_reply *r);
int batch_file_delete(struct batch *bs, const struct batch_call *c,
                      struct api_reply *r);

/* POST /v1beta/models/{model}:batchGenerateContent; c->id is the
 * model.  r->action may be API_RESET (scenario batch.create_lost). */
int batch_create(struct batch *bs, const struct batch_call *c,
                 struct api_reply *r);

/* GET /v1beta/batches/{id}, GET /v1beta/batches, POST
 * /v1beta/batches/{id}:cancel, DELETE /v1beta/batches/{id}. */
int batch_get(struct batch *bs, const struct batch_call *c,
              struct api_reply *r);
int batch_list(struct batch *bs, const struct batch_call *c,
               struct api_reply *r);
int batch_cancel(struct batch *bs, const struct batch_call *c,
                 struct api_reply *r);
int batch_delete(struct batch *bs, const struct batch_call *c,
                 struct api_reply *r);

/* GET .../files/{id}:download?alt=media.  On a 200, *out is a stream
 * of the results (owned by the caller, read with batch_stream_read)
 * and r has no body; otherwise *out is NULL and r holds the refusal. */
int batch_download(struct batch *bs, const struct batch_call *c,
                   struct api_reply *r, struct batch_stream **out);

/* Up to max bytes of results into buf, in order: the count, 0 at the
 * end, -1 when a line could not be made.  One reader at a time. */
ssize_t batch_stream_read(struct batch_stream *st, char *buf, size_t max);

/* 1 once batch_stream_read has reached the end. */
int batch_stream_done(const struct batch_stream *st);

/* Accepts NULL. */
void batch_stream_free(struct batch_stream *st);

/* {"created", "succeeded", "expired", "failed", "cancelled", "uploads",
 * "downloads", "polls", "lines", "error_lines"} as a new object (owned
 * by the caller); NULL when out of memory. */
struct json_t *batch_stats(struct batch *bs);

#endif
