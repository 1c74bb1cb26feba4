/*
 * test_batchfmt.c - the Batch API's result lines and Operations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "jobs/batchfmt.h"
#include "queue/nberr.h"

static void
line_ok(const char *s, struct batchfmt_line *l)
{
    assert_int_equal(batchfmt_line(s, strlen(s), l), 0);
}

static void
test_response_line(void **state)
{
    const char *s = "{\"key\":\"job-7\",\"response\":{\"candidates\":[{"
                    "\"content\":{\"parts\":[{\"inlineData\":{\"data\":"
                    "\"iVBORw0KGgo=\"}}]}}]}}\n";
    struct batchfmt_line l;

    (void)state;
    line_ok(s, &l);
    assert_string_equal(l.key, "job-7");
    assert_int_equal(l.kind, BATCHFMT_RESPONSE);
    assert_int_equal(s[l.value_off], '{');
    assert_int_equal(s[l.value_off + l.value_len - 1], '}');
    assert_int_equal(s[l.value_off + l.value_len], '}');
}

static void
test_error_line_any_order(void **state)
{
    const char *s = " {\"error\": {\"code\": 503, \"message\": \"a \\\"b\\\" "
                    "}\", \"status\": \"UNAVAILABLE\"}, \"key\": "
                    "\"job-\\u0031\"} ";
    struct batchfmt_line l;

    (void)state;
    line_ok(s, &l);
    assert_string_equal(l.key, "job-1");
    assert_int_equal(l.kind, BATCHFMT_ERROR);
    assert_int_equal(l.error_code, 503);
}

static void
test_metadata_key(void **state)
{
    struct batchfmt_line l;

    (void)state;
    line_ok("{\"response\":{},\"metadata\":{\"key\":\"job-3\"}}", &l);
    assert_string_equal(l.key, "job-3");
    line_ok("{\"response\":{}}", &l);
    assert_string_equal(l.key, "");
    line_ok("{}", &l);
    assert_int_equal(l.kind, BATCHFMT_NONE);
}

static void
test_bad_lines(void **state)
{
    static const char *const bad[] = {
        "", "[]", "{", "{\"key\":1,\"response\":{}}",
        "{\"key\":\"a\",\"response\":{}} x", "{\"key\":\"a\" \"b\":1}",
        "{\"response\":{},\"error\":{}}", "{\"response\":[]}",
        "{\"key\":\"a\",\"response\":{\"x\":\"unterminated}}",
        "{\"key\":\"a\",\"response\":{]}", "{\"a\":}",
        "{\"key\":\"a\\u0000b\"}",
    };
    struct batchfmt_line l;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(batchfmt_line(bad[i], strlen(bad[i]), &l),
                         NB_EINVAL);
}

static void
test_deep_nesting(void **state)
{
    char s[2000];
    size_t n = 0;
    struct batchfmt_line l;

    (void)state;
    n += (size_t)snprintf(s, sizeof(s), "{\"response\":");
    for (int i = 0; i < 300; i++)
        s[n++] = '[';
    for (int i = 0; i < 300; i++)
        s[n++] = ']';
    s[n++] = '}';
    assert_int_equal(batchfmt_line(s, n, &l), NB_EINVAL);
}

/* google.rpc.Code values come out as their HTTP statuses. */
static void
test_error_rpc_codes(void **state)
{
    static const int map[][2] = {
        {3, 400}, {4, 504}, {5, 404}, {7, 403}, {8, 429}, {9, 400},
        {13, 500}, {14, 503}, {16, 401}, {429, 429}, {0, 0}, {17, 0},
        {600, 0}, {-1, 0},
    };
    struct batchfmt_line l;
    char s[96];

    (void)state;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        snprintf(s, sizeof(s), "{\"key\":\"job-1\",\"error\":{\"code\":%d,"
                 "\"message\":\"m\"}}", map[i][0]);
        line_ok(s, &l);
        assert_int_equal(l.kind, BATCHFMT_ERROR);
        assert_int_equal(l.error_code, map[i][1]);
    }
}

/* Escaped backslashes and quotes end strings where JSON says. */
static void
test_escapes(void **state)
{
    const char *s = "{\"response\":{\"a\":\"\\\\\",\"b\":\"x\\\"}\\\\\","
                    "\"c\":\"\\\\\\\"\"},\"key\":\"job-\\\\2\"}";
    struct batchfmt_line l;

    (void)state;
    line_ok(s, &l);
    assert_string_equal(l.key, "job-\\2");
    assert_int_equal(l.kind, BATCHFMT_RESPONSE);
    assert_int_equal(s[l.value_off + l.value_len], ',');
    s = "{\"key\":\"a\\\"}";
    assert_int_equal(batchfmt_line(s, strlen(s), &l), NB_EINVAL);
}

static void
test_states(void **state)
{
    (void)state;
    assert_int_equal(batchfmt_state("BATCH_STATE_SUCCEEDED"),
                     BATCHFMT_SUCCEEDED);
    assert_int_equal(batchfmt_state("JOB_STATE_SUCCEEDED"),
                     BATCHFMT_SUCCEEDED);
    assert_int_equal(batchfmt_state("JOB_STATE_EXPIRED"), BATCHFMT_EXPIRED);
    assert_int_equal(batchfmt_state("BATCH_STATE_PENDING"),
                     BATCHFMT_PENDING);
    assert_int_equal(batchfmt_state("JOB_STATE_QUEUED"), BATCHFMT_PENDING);
    assert_int_equal(batchfmt_state("BATCH_STATE_UNSPECIFIED"),
                     BATCHFMT_UNKNOWN);
    assert_int_equal(batchfmt_state(NULL), BATCHFMT_UNKNOWN);
    assert_true(batchfmt_state_ended(BATCHFMT_CANCELLED));
    assert_false(batchfmt_state_ended(BATCHFMT_RUNNING));
}

/* The create answer of the wire reference. */
static void
test_op_pending(void **state)
{
    const char *s =
        "{\"name\":\"batches/4m85\",\"metadata\":{\"@type\":\"type."
        "googleapis.com/google.ai.generativelanguage.v1main."
        "GenerateContentBatch\",\"model\":\"models/gemini-2.5-flash-image\","
        "\"displayName\":\"nbbatch-1\",\"batchStats\":{\"requestCount\":"
        "\"3\",\"pendingRequestCount\":\"3\"},\"state\":"
        "\"BATCH_STATE_PENDING\",\"name\":\"batches/4m85\"}}";
    struct batchfmt_op op;

    (void)state;
    assert_int_equal(batchfmt_op(s, strlen(s), &op), 0);
    assert_string_equal(op.name, "batches/4m85");
    assert_string_equal(op.display_name, "nbbatch-1");
    assert_int_equal(op.state, BATCHFMT_PENDING);
    assert_int_equal(op.requests, 3);
    assert_int_equal(op.pending, 3);
    assert_false(op.done);
}

static void
test_op_done_file(void **state)
{
    const char *s =
        "{\"name\":\"batches/x\",\"done\":true,\"metadata\":{\"state\":"
        "\"JOB_STATE_SUCCEEDED\",\"output\":{\"responsesFile\":"
        "\"files/batch-x\"},\"batch_stats\":{\"request_count\":\"2\","
        "\"successful_request_count\":\"1\",\"failed_request_count\":"
        "\"1\"}},\"response\":{\"responsesFile\":\"files/batch-x\"}}";
    const char *failed =
        "{\"name\":\"batches/y\",\"done\":true,\"error\":{\"code\":500,"
        "\"message\":\"boom\"},\"metadata\":{\"state\":"
        "\"BATCH_STATE_FAILED\"}}";
    struct batchfmt_op op;

    (void)state;
    assert_int_equal(batchfmt_op(s, strlen(s), &op), 0);
    assert_int_equal(op.state, BATCHFMT_SUCCEEDED);
    assert_true(op.done);
    assert_string_equal(op.responses_file, "files/batch-x");
    assert_int_equal(op.succeeded, 1);
    assert_int_equal(op.failed, 1);
    assert_int_equal(batchfmt_op(failed, strlen(failed), &op), 0);
    assert_int_equal(op.state, BATCHFMT_FAILED);
    assert_string_equal(op.error, "boom");
    assert_int_equal(op.error_code, 500);
}

/* Done, with no state or one that is not final: it ended, failed. */
static void
test_op_done_no_state(void **state)
{
    const char *none = "{\"name\":\"batches/z\",\"done\":true}";
    const char *odd = "{\"name\":\"batches/z\",\"done\":true,\"metadata\":"
                      "{\"state\":\"BATCH_STATE_RUNNING\"}}";
    const char *open = "{\"name\":\"batches/z\",\"metadata\":{\"state\":"
                       "\"BATCH_STATE_SOMETHING\"}}";
    const char *out = "{\"name\":\"batches/z\",\"done\":true,\"response\":"
                      "{\"responsesFile\":\"files/r\"}}";
    struct batchfmt_op op;

    (void)state;
    assert_int_equal(batchfmt_op(none, strlen(none), &op), 0);
    assert_int_equal(op.state, BATCHFMT_FAILED);
    assert_int_equal(batchfmt_op(odd, strlen(odd), &op), 0);
    assert_int_equal(op.state, BATCHFMT_FAILED);
    assert_int_equal(batchfmt_op(open, strlen(open), &op), 0);
    assert_int_equal(op.state, BATCHFMT_UNKNOWN);
    /* Its output there and no error: it succeeded, whatever it says. */
    assert_int_equal(batchfmt_op(out, strlen(out), &op), 0);
    assert_int_equal(op.state, BATCHFMT_SUCCEEDED);
    assert_string_equal(op.responses_file, "files/r");
}

static void
test_op_bad(void **state)
{
    static const char *const bad[] = {
        "", "{}", "[]", "{\"name\":\"operations/1\"}",
        "{\"name\":\"batches/\"}", "{\"name\":\"batches/a/b\"}",
        "{\"name\":\"batches/a?x\"}",
    };
    struct batchfmt_op op;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(batchfmt_op(bad[i], strlen(bad[i]), &op),
                         NB_EINVAL);
}

static void
test_find(void **state)
{
    const char *page =
        "{\"operations\":[{\"name\":\"batches/a\",\"metadata\":"
        "{\"displayName\":\"other\"}},{\"name\":\"batches/b\",\"metadata\":"
        "{\"display_name\":\"nbbatch-9\",\"state\":\"BATCH_STATE_RUNNING\"}}"
        "],\"nextPageToken\":\"t2\"}";
    const char *last = "{\"operations\":[]}";
    struct batchfmt_op op;
    char next[64];

    (void)state;
    assert_int_equal(batchfmt_find(page, strlen(page), "nbbatch-9", &op,
                                   next, sizeof(next)), 1);
    assert_string_equal(op.name, "batches/b");
    assert_int_equal(op.state, BATCHFMT_RUNNING);
    assert_string_equal(next, "t2");
    assert_int_equal(batchfmt_find(page, strlen(page), "nbbatch-8", &op,
                                   next, sizeof(next)), 0);
    assert_int_equal(batchfmt_find(last, strlen(last), "x", &op, next,
                                   sizeof(next)), 0);
    assert_string_equal(next, "");
    assert_int_equal(batchfmt_find("[1]", 3, "x", &op, next, sizeof(next)),
                     NB_EINVAL);
    assert_int_equal(batchfmt_find("{}", 2, "x", &op, next, sizeof(next)),
                     0);
}

static void
test_file_name(void **state)
{
    const char *ok = "{\"file\":{\"name\":\"files/abc123\",\"state\":"
                     "\"ACTIVE\"}}";
    char name[64];

    (void)state;
    assert_int_equal(batchfmt_file_name(ok, strlen(ok), name, sizeof(name)),
                     0);
    assert_string_equal(name, "files/abc123");
    assert_int_equal(batchfmt_file_name("{\"file\":{\"name\":\"x/1\"}}", 23,
                                        name, sizeof(name)), NB_EINVAL);
    assert_int_equal(batchfmt_file_name("{\"file\":{\"name\":\"files/a/b\"}}",
                                        29, name, sizeof(name)), NB_EINVAL);
    assert_int_equal(batchfmt_file_name("nope", 4, name, sizeof(name)),
                     NB_EINVAL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_response_line),
        cmocka_unit_test(test_error_line_any_order),
        cmocka_unit_test(test_metadata_key),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_error_rpc_codes),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_states),
        cmocka_unit_test(test_op_pending),
        cmocka_unit_test(test_op_done_file),
        cmocka_unit_test(test_op_done_no_state),
        cmocka_unit_test(test_op_bad),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_file_name),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
