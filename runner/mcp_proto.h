/*
 * mcp_proto.h - the Model Context Protocol's messages, without any I/O.
 *
 * Parses one JSON-RPC 2.0 line into a request, notification or response,
 * or says which JSON-RPC error it deserves; builds the answer lines; holds
 * the tool list with its schemas and checks tool arguments against them.
 * Everything here is pure (no files, no clock, no queue), so the fuzzer
 * and the unit tests drive it directly.  runner/mcp.c does the talking.
 */
#ifndef NB_MCP_PROTO_H
#define NB_MCP_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* JSON-RPC 2.0 error codes. */
enum {
    MCP_PARSE_ERROR = -32700,
    MCP_INVALID_REQUEST = -32600,
    MCP_METHOD_NOT_FOUND = -32601,
    MCP_INVALID_PARAMS = -32602,
    MCP_INTERNAL_ERROR = -32603
};

/* Largest message accepted; a longer line gets MCP_INVALID_REQUEST. */
#define MCP_MAX_MESSAGE (16u << 20)

/* Limits on tool arguments. */
#define MCP_MAX_PROMPTS   10000
#define MCP_MAX_JOB_IDS   10000
#define MCP_MAX_WAIT_S    3600
#define MCP_DEFAULT_WAIT_S 120

enum mcp_kind {
    MCP_INVALID,        /* answer err_code / err_message (id may be set) */
    MCP_REQUEST,        /* method and id: must be answered */
    MCP_NOTIFICATION,   /* method, no id: never answered */
    MCP_RESPONSE        /* an answer to a request of ours: ignored */
};

/* One parsed line.  Everything borrowed from root, which the message
 * owns; mcp_msg_clear() releases it. */
struct mcp_msg {
    int kind;                  /* enum mcp_kind */
    json_t *root;              /* owned; NULL when the line is not JSON */
    json_t *id;                /* string or integer id, or NULL */
    const char *method;
    json_t *params;            /* an object, or NULL when absent */
    int err_code;              /* for MCP_INVALID */
    char err_message[160];
};

/*
 * Parses buf[0..len) (one line, without its newline).  Returns 0 when the
 * message is a well-formed request, notification or response; otherwise
 * NB_EPARSE (not JSON) or NB_EINVAL (not a valid JSON-RPC message) with
 * kind MCP_INVALID and the error to answer.  msg must be cleared with
 * mcp_msg_clear() in every case.
 */
int mcp_proto_parse(const char *buf, size_t len, struct mcp_msg *msg);
void mcp_msg_clear(struct mcp_msg *msg);

/*
 * Answer lines: compact JSON, no newline, a new string (free()) or NULL
 * when out of memory.  id is borrowed (NULL is written as null); result
 * and params are stolen.
 */
char *mcp_proto_result(const json_t *id, json_t *result);
char *mcp_proto_error(const json_t *id, int code, const char *message);
char *mcp_proto_notify(const char *method, json_t *params);

/* A JSON string of text with every byte that is not valid UTF-8 (a
 * sequence cut short by a length limit, say) turned into '?'; NULL gives
 * JSON null.  A string of the answer that comes from outside (error
 * texts, paths, cut quotes) goes through here, or jansson refuses it and
 * the whole answer with it. */
json_t *mcp_proto_text(const char *text);

/* The protocol version to answer for a requested one (NULL allowed): the
 * same when supported, else the newest.  Static text. */
const char *mcp_proto_version(const char *requested);

/* The result of initialize for a requested version.  New reference. */
json_t *mcp_proto_initialize(const char *requested, const char *name,
                             const char *version);

/* The result of tools/list: every tool with its input and output schema.
 * New reference. */
json_t *mcp_proto_tools(void);

/*
 * A tool result: content [{type text, text}], structuredContent when
 * structured is not NULL (stolen), isError.  New reference.
 */
json_t *mcp_proto_tool_result(const char *text, json_t *structured,
                              int is_error);

/* The arguments of generate_images, checked.  Strings borrowed from the
 * arguments object; the arrays owned (mcp_gen_args_clear()). */
struct mcp_gen_args {
    const char **prompts;      /* n_prompts prompts */
    size_t n_prompts;
    int count;                 /* images per prompt, >= 1 */
    const char *model;         /* never NULL after parsing */
    const char *aspect;        /* NULL: the model chooses */
    const char *size;          /* NULL or the model's own spelling */
    const char **refs;         /* absolute paths */
    size_t n_refs;
    const char *batch;         /* NULL: the caller's default */
    const char *out_dir;       /* NULL: the caller's default */
    int64_t wait_ms;
};

/*
 * Checks args (an object, NULL means {}) against generate_images' input
 * schema.  Returns 0, or NB_EINVAL with err naming the field and the
 * problem ("aspect_ratio: \"7:3\" is not ..."); NB_ENOMEM.
 */
int mcp_proto_gen_args(const json_t *args, struct mcp_gen_args *out,
                       char *err, size_t errlen);
void mcp_gen_args_clear(struct mcp_gen_args *a);

/* Which jobs job_status and cancel are about: job ids, or one batch. */
struct mcp_job_args {
    int64_t *job_ids;          /* owned, n_job_ids of them */
    size_t n_job_ids;
    const char *batch;         /* borrowed; NULL when ids are given */
};

/*
 * Checks the arguments of job_status / cancel: exactly one of job_ids
 * (positive integers) and batch.  Returns 0 or NB_EINVAL with err filled.
 */
int mcp_proto_job_args(const json_t *args, struct mcp_job_args *out,
                       char *err, size_t errlen);
void mcp_job_args_clear(struct mcp_job_args *a);

/* Checks that args of a tool without arguments (list_batches) is empty.
 * Returns 0 or NB_EINVAL with err filled. */
int mcp_proto_no_args(const json_t *args, char *err, size_t errlen);

#endif
