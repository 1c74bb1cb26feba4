/*
 * test_mcp_proto.c - the MCP message parser, answer builders, version
 * negotiation, tool list and tool argument checks (runner/mcp_proto.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <jansson.h>

#include "queue/nberr.h"
#include "runner/mcp_proto.h"

/* Parses text, checks its kind and, for MCP_INVALID, its error code. */
static void
expect(const char *text, int kind, int code)
{
    struct mcp_msg m;
    int rc = mcp_proto_parse(text, strlen(text), &m);

    if (m.kind != kind || (kind == MCP_INVALID && m.err_code != code))
        fail_msg("%s: kind %d code %d (%s), want kind %d code %d", text,
                 m.kind, m.err_code, m.err_message, kind, code);
    assert_int_equal(rc == 0, kind != MCP_INVALID);
    mcp_msg_clear(&m);
}

static void
test_parse_kinds(void **state)
{
    struct mcp_msg m;
    const char *req = "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}";

    (void)state;
    assert_int_equal(mcp_proto_parse(req, strlen(req), &m), 0);
    assert_int_equal(m.kind, MCP_REQUEST);
    assert_string_equal(m.method, "ping");
    assert_int_equal(json_integer_value(m.id), 7);
    assert_null(m.params);
    mcp_msg_clear(&m);

    expect("{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"tools/list\","
           "\"params\":{}}", MCP_REQUEST, 0);
    expect("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}",
           MCP_NOTIFICATION, 0);
    expect("{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}", MCP_RESPONSE, 0);
    expect("{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":1}}",
           MCP_RESPONSE, 0);
    /* Never answered: a response with a null id, a notification with
     * params that are not an object. */
    expect("{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":1}}",
           MCP_RESPONSE, 0);
    expect("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/x\","
           "\"params\":[1]}", MCP_NOTIFICATION, 0);
}

static void
test_parse_errors(void **state)
{
    struct mcp_msg m;
    const char *bad_version = "{\"jsonrpc\":\"1.0\",\"id\":5,"
                              "\"method\":\"ping\"}";

    (void)state;
    expect("", MCP_INVALID, MCP_PARSE_ERROR);
    expect("not json", MCP_INVALID, MCP_PARSE_ERROR);
    expect("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"",
           MCP_INVALID, MCP_PARSE_ERROR);
    expect("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]",
           MCP_INVALID, MCP_INVALID_REQUEST);
    expect("42", MCP_INVALID, MCP_INVALID_REQUEST);
    expect("{\"id\":1,\"method\":\"ping\"}", MCP_INVALID,
           MCP_INVALID_REQUEST);
    expect("{\"jsonrpc\":\"2.0\",\"id\":1.5,\"method\":\"ping\"}",
           MCP_INVALID, MCP_INVALID_REQUEST);
    expect("{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}",
           MCP_INVALID, MCP_INVALID_REQUEST);
    expect("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":3}", MCP_INVALID,
           MCP_INVALID_REQUEST);
    expect("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":[1]}",
           MCP_INVALID, MCP_INVALID_PARAMS);
    expect("{\"jsonrpc\":\"2.0\",\"id\":1,\"id\":2,\"method\":\"x\"}",
           MCP_INVALID, MCP_PARSE_ERROR);

    /* An invalid request with a readable id is answered with that id. */
    mcp_proto_parse(bad_version, strlen(bad_version), &m);
    assert_int_equal(m.kind, MCP_INVALID);
    assert_int_equal(json_integer_value(m.id), 5);
    mcp_msg_clear(&m);
}

static void
test_answers(void **state)
{
    json_t *id = json_string("q1");
    char *line;

    (void)state;
    line = mcp_proto_result(id, json_pack("{s:i}", "n", 1));
    assert_string_equal(line, "{\"jsonrpc\":\"2.0\",\"id\":\"q1\","
                        "\"result\":{\"n\":1}}");
    free(line);
    line = mcp_proto_error(NULL, MCP_PARSE_ERROR, "bad\nline");
    assert_string_equal(line, "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":"
                        "{\"code\":-32700,\"message\":\"bad\\nline\"}}");
    free(line);
    line = mcp_proto_notify("notifications/progress",
                            json_pack("{s:i}", "progress", 3));
    assert_string_equal(line, "{\"jsonrpc\":\"2.0\",\"method\":"
                        "\"notifications/progress\",\"params\":"
                        "{\"progress\":3}}");
    free(line);
    json_decref(id);
}

static void
test_versions(void **state)
{
    json_t *init;

    (void)state;
    assert_string_equal(mcp_proto_version("2024-11-05"), "2024-11-05");
    assert_string_equal(mcp_proto_version("2025-03-26"), "2025-03-26");
    assert_string_equal(mcp_proto_version("2025-06-18"), "2025-06-18");
    assert_string_equal(mcp_proto_version("2025-11-25"), "2025-11-25");
    assert_string_equal(mcp_proto_version("2031-01-01"), "2025-11-25");
    assert_string_equal(mcp_proto_version(NULL), "2025-11-25");

    init = mcp_proto_initialize("2025-03-26", "nbbatch", "9.9");
    assert_string_equal(json_string_value(json_object_get(init,
                        "protocolVersion")), "2025-03-26");
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(init, "serverInfo"), "name")), "nbbatch");
    assert_non_null(json_object_get(json_object_get(init, "capabilities"),
                                    "tools"));
    json_decref(init);
}

static void
test_tools(void **state)
{
    json_t *list = mcp_proto_tools(), *tools, *tool;
    const char *want[] = {"generate_images", "job_status", "list_batches",
                          "cancel"};
    size_t i;

    (void)state;
    assert_non_null(list);
    tools = json_object_get(list, "tools");
    assert_int_equal(json_array_size(tools), 4);
    json_array_foreach(tools, i, tool) {
        json_t *in = json_object_get(tool, "inputSchema");

        assert_string_equal(json_string_value(json_object_get(tool, "name")),
                            want[i]);
        assert_string_equal(json_string_value(json_object_get(in, "type")),
                            "object");
        assert_true(json_is_false(json_object_get(in,
                                                  "additionalProperties")));
        assert_non_null(json_object_get(tool, "outputSchema"));
        assert_non_null(json_object_get(tool, "description"));
    }
    json_decref(list);
}

/* Checks args text against generate_images; want_err NULL means valid. */
static void
gen(const char *text, const char *want_err, struct mcp_gen_args *out)
{
    json_t *args = json_loads(text, JSON_ALLOW_NUL, NULL);
    struct mcp_gen_args a;
    char err[512] = "";
    int rc;

    assert_non_null(args);
    rc = mcp_proto_gen_args(args, &a, err, sizeof(err));
    if (want_err == NULL && rc != 0)
        fail_msg("%s: %s", text, err);
    if (want_err != NULL && (rc != NB_EINVAL || strstr(err, want_err) ==
                             NULL))
        fail_msg("%s: got \"%s\", want \"%s\"", text, err, want_err);
    if (rc == 0 && out != NULL) {
        /* Strings stay valid while args lives: keep only numbers. */
        out->n_prompts = a.n_prompts;
        out->count = a.count;
        out->wait_ms = a.wait_ms;
        out->n_refs = a.n_refs;
    }
    if (rc == 0)
        mcp_gen_args_clear(&a);
    json_decref(args);
}

static void
test_gen_args(void **state)
{
    json_t *args = json_loads("{\"prompts\":[\"a\",\"b\"],\"size\":\"2k\","
                              "\"model\":\"gemini-3-pro-image-preview\","
                              "\"aspect_ratio\":\"16:9\"}", 0, NULL);
    struct mcp_gen_args a, got = {0};
    char err[256];

    (void)state;
    assert_int_equal(mcp_proto_gen_args(args, &a, err, sizeof(err)), 0);
    assert_int_equal(a.n_prompts, 2);
    assert_string_equal(a.prompts[1], "b");
    assert_string_equal(a.size, "2K");
    assert_string_equal(a.aspect, "16:9");
    assert_int_equal(a.count, 1);
    assert_int_equal(a.wait_ms, MCP_DEFAULT_WAIT_S * 1000);
    assert_null(a.batch);
    mcp_gen_args_clear(&a);
    json_decref(args);

    gen("{\"prompt\":\"x\",\"count\":4,\"wait_seconds\":2.5,"
        "\"reference_images\":[\"/a.png\",\"/b.jpg\"]}", NULL, &got);
    assert_int_equal(got.n_prompts, 1);
    assert_int_equal(got.count, 4);
    assert_int_equal(got.wait_ms, 2500);
    assert_int_equal(got.n_refs, 2);
    gen("{\"prompts\":[\"x\"],\"model\":\"gemini-9-image\"}", NULL, NULL);

    gen("{}", "prompts: give either", NULL);
    gen("{\"prompts\":[\"a\"],\"prompt\":\"b\"}", "prompts: give either",
        NULL);
    gen("{\"prompts\":[]}", "prompts: must not be empty", NULL);
    gen("{\"prompts\":[\"a\",\"\"]}", "prompts[1]", NULL);
    gen("{\"prompts\":[\"a\",3]}", "prompts[1]", NULL);
    gen("{\"prompts\":\"a\"}", "prompts: must be an array", NULL);
    gen("{\"prompt\":\"a\",\"count\":0}", "count:", NULL);
    gen("{\"prompt\":\"a\",\"count\":1.5}", "count:", NULL);
    gen("{\"prompt\":\"a\",\"aspect_ratio\":\"7:3\"}", "aspect_ratio:",
        NULL);
    gen("{\"prompt\":\"a\",\"size\":\"4K\"}", "size: \"4K\"", NULL);
    gen("{\"prompt\":\"a\",\"model\":\"Not A Model\"}", "model:", NULL);
    gen("{\"prompt\":\"a\",\"reference_images\":[\"rel.png\"]}",
        "reference_images[0]: must be an absolute path", NULL);
    gen("{\"prompt\":\"a\",\"out_dir\":\"out\"}", "out_dir:", NULL);
    gen("{\"prompt\":\"a\",\"batch\":\"a\\nb\"}", "batch: a name", NULL);
    gen("{\"prompt\":\"a\",\"batch\":\"../up\"}", "batch: a name", NULL);
    gen("{\"prompt\":\"a\",\"batch\":\"a/b\"}", "batch: a name", NULL);
    gen("{\"prompt\":\"a\",\"wait_seconds\":3601}", "wait_seconds:", NULL);
    gen("{\"prompt\":\"a\",\"wait_seconds\":-1}", "wait_seconds:", NULL);
    gen("{\"prompt\":\"a\",\"colour\":\"red\"}", "colour: unknown", NULL);
    gen("{\"prompt\":\"a\\u0000b\"}", "prompt:", NULL);
}

static void
test_job_args(void **state)
{
    json_t *args = json_loads("{\"job_ids\":[3,1]}", 0, NULL);
    json_t *bad[] = {
        json_loads("{}", 0, NULL),
        json_loads("{\"job_ids\":[1],\"batch\":\"b\"}", 0, NULL),
        json_loads("{\"job_ids\":[]}", 0, NULL),
        json_loads("{\"job_ids\":[0]}", 0, NULL),
        json_loads("{\"job_ids\":[\"1\"]}", 0, NULL),
        json_loads("{\"batch\":\"\"}", 0, NULL),
        json_loads("{\"jobs\":[1]}", 0, NULL),
    };
    struct mcp_job_args a;
    char err[256];

    (void)state;
    assert_int_equal(mcp_proto_job_args(args, &a, err, sizeof(err)), 0);
    assert_int_equal(a.n_job_ids, 2);
    assert_int_equal(a.job_ids[0], 3);
    assert_null(a.batch);
    mcp_job_args_clear(&a);
    json_decref(args);

    args = json_loads("{\"batch\":\"b\"}", 0, NULL);
    assert_int_equal(mcp_proto_job_args(args, &a, err, sizeof(err)), 0);
    assert_string_equal(a.batch, "b");
    assert_int_equal(a.n_job_ids, 0);
    mcp_job_args_clear(&a);
    json_decref(args);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(mcp_proto_job_args(bad[i], &a, err, sizeof(err)),
                         NB_EINVAL);
        assert_true(err[0] != '\0');
        json_decref(bad[i]);
    }
    assert_int_equal(mcp_proto_job_args(NULL, &a, err, sizeof(err)),
                     NB_EINVAL);

    args = json_loads("{\"x\":1}", 0, NULL);
    assert_int_equal(mcp_proto_no_args(args, err, sizeof(err)), NB_EINVAL);
    assert_non_null(strstr(err, "x: unknown argument"));
    json_decref(args);
    assert_int_equal(mcp_proto_no_args(NULL, err, sizeof(err)), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_kinds),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_tools),
        cmocka_unit_test(test_gen_args),
        cmocka_unit_test(test_job_args),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
