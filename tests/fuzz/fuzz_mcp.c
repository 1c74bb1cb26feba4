/*
 * fuzz_mcp.c - libFuzzer target for the MCP message parser and the tool
 * argument checks of runner/mcp_proto.c.
 *
 * The input is one message line.  Whatever it is, the parser must either
 * accept it with a method (or as a response) or name a JSON-RPC error
 * code, and an answer built for it must be one line of valid JSON.  When
 * the line is a tools/call, its arguments go through every tool's checks,
 * whose results must hold their contracts.  A broken invariant aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runner/mcp_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An answer line must parse back as JSON and hold no newline. */
static void
check_line(char *line)
{
    json_t *back;

    if (line == NULL)
        return;
    if (strchr(line, '\n') != NULL)
        abort();
    back = json_loads(line, 0, NULL);
    if (back == NULL)
        abort();
    json_decref(back);
    free(line);
}

static void
check_args(const json_t *args)
{
    struct mcp_gen_args g;
    struct mcp_job_args j;
    char err[512];

    if (mcp_proto_gen_args(args, &g, err, sizeof(err)) == 0) {
        if (g.n_prompts == 0 || g.model == NULL || g.count < 1 ||
            g.wait_ms < 0 || g.wait_ms > (int64_t)MCP_MAX_WAIT_S * 1000)
            abort();
        for (size_t i = 0; i < g.n_prompts; i++) {
            if (g.prompts[i] == NULL || g.prompts[i][0] == '\0')
                abort();
        }
        for (size_t i = 0; i < g.n_refs; i++) {
            if (g.refs[i][0] != '/')
                abort();
        }
        mcp_gen_args_clear(&g);
    } else if (err[0] == '\0') {
        abort();
    }
    if (mcp_proto_job_args(args, &j, err, sizeof(err)) == 0) {
        if ((j.n_job_ids > 0) == (j.batch != NULL))
            abort();
        for (size_t i = 0; i < j.n_job_ids; i++) {
            if (j.job_ids[i] < 1)
                abort();
        }
        mcp_job_args_clear(&j);
    }
    (void)mcp_proto_no_args(args, err, sizeof(err));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mcp_msg m;
    int rc;

    rc = mcp_proto_parse((const char *)data, size, &m);
    if ((rc == 0) != (m.kind != MCP_INVALID))
        abort();
    if (m.kind == MCP_INVALID) {
        if (m.err_code > -32600 || m.err_code < -32700)
            abort();
        check_line(mcp_proto_error(m.id, m.err_code, m.err_message));
    } else if (m.kind != MCP_RESPONSE) {
        if (m.method == NULL)
            abort();
        if (m.kind == MCP_REQUEST && m.id == NULL)
            abort();
        check_line(mcp_proto_result(m.id, json_object()));
        if (strcmp(m.method, "tools/call") == 0 && m.params != NULL)
            check_args(json_object_get(m.params, "arguments"));
        if (strcmp(m.method, "initialize") == 0)
            check_line(mcp_proto_result(m.id, mcp_proto_initialize(
                json_string_value(json_object_get(m.params,
                                                  "protocolVersion")),
                "nbbatch", "0")));
    }
    mcp_msg_clear(&m);
    return 0;
}
