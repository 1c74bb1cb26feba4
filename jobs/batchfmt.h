/*
 * batchfmt.h - the Batch API's formats: result lines and Operations.
 *
 * Pure parsing, no I/O, so that the fuzzer reaches all of it.  A result
 * line can hold a whole 4K image: batchfmt_line() finds the parts of the
 * line's top-level object without copying or decoding the big response,
 * which the caller then streams into the answer scanner (jobs/answer.h)
 * exactly as a generateContent answer.
 */
#ifndef NB_BATCHFMT_H
#define NB_BATCHFMT_H

#include <stddef.h>
#include <stdint.h>

#define BATCHFMT_KEY_MAX 128

enum batchfmt_kind {
    BATCHFMT_NONE,          /* neither response nor error */
    BATCHFMT_RESPONSE,      /* value: a GenerateContentResponse object */
    BATCHFMT_ERROR          /* value: a google.rpc.Status object */
};

/* What one result line holds. */
struct batchfmt_line {
    char key[BATCHFMT_KEY_MAX];  /* "key", or metadata.key; "" when none */
    int kind;                    /* enum batchfmt_kind */
    size_t value_off;            /* the response or error object, as a */
    size_t value_len;            /* range of the line */
    int error_code;              /* BATCHFMT_ERROR: error.code as an HTTP
                                    status (a google.rpc.Code 1-16 is
                                    mapped), 0 if none or unknown */
};

/*
 * Parses one line of a results file (its newline may be left on):
 * {"key": "...", "response": {...}} or {"key": "...", "error": {...}},
 * members in any order, others skipped; the key may also come as
 * {"metadata": {"key": "..."}}.  Returns 0, or NB_EINVAL when the line is
 * not one JSON object of that shape (a key over BATCHFMT_KEY_MAX - 1 bytes
 * or not a string, two responses, nesting deeper than 256).
 */
int batchfmt_line(const char *line, size_t len, struct batchfmt_line *out);

/* The normalised states of a remote batch. */
enum batchfmt_state {
    BATCHFMT_UNKNOWN,
    BATCHFMT_PENDING,
    BATCHFMT_RUNNING,
    BATCHFMT_SUCCEEDED,
    BATCHFMT_FAILED,
    BATCHFMT_CANCELLED,
    BATCHFMT_EXPIRED
};

/* BATCH_STATE_X and JOB_STATE_X (and a bare X) for each state. */
int batchfmt_state(const char *name);
/* 1 for SUCCEEDED, FAILED, CANCELLED and EXPIRED. */
int batchfmt_state_ended(int state);

/* What an Operation (create, get or a list entry) says of a batch. */
struct batchfmt_op {
    char name[160];              /* "batches/..." */
    char display_name[160];
    char state_name[48];         /* as sent */
    int state;                   /* enum batchfmt_state; FAILED when done
                                    but in no final state */
    int done;
    char responses_file[160];    /* "files/..." or "" */
    int inlined;                 /* output came inline, not as a file */
    int64_t requests, succeeded, failed, pending;   /* batchStats */
    char error[256];             /* the Operation's error message */
    int error_code;
};

/*
 * Parses an Operation (the body of create or get), reading both
 * "metadata" and the top level, camelCase or snake_case.  0, or NB_EINVAL
 * when it is not JSON or has no batch name.
 */
int batchfmt_op(const char *json, size_t len, struct batchfmt_op *op);

/*
 * Looks through one page of a list answer ({"operations": [...],
 * "nextPageToken": "..."}) for the batch whose displayName is display:
 * 1 and *op filled when found, 0 when not; *next_token gets the page
 * token ("" on the last page).  NB_EINVAL for a body that is not a list.
 */
int batchfmt_find(const char *json, size_t len, const char *display,
                  struct batchfmt_op *op, char *next_token,
                  size_t token_len);

/* The "file.name" of a finished upload's answer into name; 0 or
 * NB_EINVAL. */
int batchfmt_file_name(const char *json, size_t len, char *name,
                       size_t name_len);

#endif
