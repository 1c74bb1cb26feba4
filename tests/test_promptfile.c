/*
 * test_promptfile.c - prompt files (every format and every field's
 * validation), the model table, job keys and output names.
 *
 * Entries are copied out of the callback into a small fixed table so that
 * each test can look at all of them after the parse.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobs/jobkey.h"
#include "jobs/models.h"
#include "jobs/naming.h"
#include "jobs/promptfile.h"
#include "queue/nberr.h"

#define MAX_GOT 16

struct got_entry {
    long line;
    char prompt[256];
    char name[64];
    char model[64];
    char aspect[16];
    char size[16];
    char out[64];
    int has_name, has_aspect, has_size, has_out;
    int count;
    int priority;
    int64_t not_before_ms;
    int offpeak;
    char via[16];
    size_t n_images;
    char images[3][64];
};

struct got {
    int n;
    int stop_at;               /* callback returns -99 at this entry */
    struct got_entry e[MAX_GOT];
};

static void
copy_opt(char *dst, size_t len, const char *src, int *has)
{
    *has = src != NULL;
    snprintf(dst, len, "%s", src != NULL ? src : "");
}

static int
collect(const struct promptfile_entry *e, void *arg,
        struct promptfile_error *err)
{
    struct got *g = arg;
    struct got_entry *c;
    int dummy;

    if (g->stop_at > 0 && g->n + 1 == g->stop_at) {
        err->line = e->line;
        snprintf(err->field, sizeof(err->field), "test");
        return -99;
    }
    assert_true(g->n < MAX_GOT);
    c = &g->e[g->n++];
    c->line = e->line;
    snprintf(c->prompt, sizeof(c->prompt), "%s", e->prompt);
    copy_opt(c->name, sizeof(c->name), e->name, &c->has_name);
    copy_opt(c->model, sizeof(c->model), e->model, &dummy);
    copy_opt(c->aspect, sizeof(c->aspect), e->aspect, &c->has_aspect);
    copy_opt(c->size, sizeof(c->size), e->size, &c->has_size);
    copy_opt(c->out, sizeof(c->out), e->out, &c->has_out);
    copy_opt(c->via, sizeof(c->via), e->via, &dummy);
    c->count = e->count;
    c->priority = e->priority;
    c->not_before_ms = e->not_before_ms;
    c->offpeak = e->offpeak;
    c->n_images = e->n_images;
    for (size_t i = 0; i < e->n_images && i < 3; i++)
        snprintf(c->images[i], sizeof(c->images[i]), "%s", e->images[i]);
    return 0;
}

static const struct promptfile_defaults plain_defaults = {
    .model = MODELS_DEFAULT, .count = 1, .via = "direct",
};

static struct got got;
static struct promptfile_error perr;

static int
parse_with(const struct promptfile_defaults *d, const char *text)
{
    memset(&got, 0, sizeof(got));
    memset(&perr, 0, sizeof(perr));
    return promptfile_parse_buf(text, strlen(text), d, collect, &got,
                                &perr);
}

static int
parse(const char *text)
{
    return parse_with(&plain_defaults, text);
}

/* Parsing text fails at line with field, and the message holds part. */
static void
expect_error(const char *text, int code, long line, const char *field,
             const char *part)
{
    int rc = parse(text);

    if (rc != code || perr.line != line || strcmp(perr.field, field) != 0 ||
        (part != NULL && strstr(perr.message, part) == NULL))
        print_error("input: %s\ngot rc %d line %ld field '%s' message "
                    "'%s'\n", text, rc, perr.line, perr.field,
                    perr.message);
    assert_int_equal(rc, code);
    assert_int_equal(perr.line, line);
    assert_string_equal(perr.field, field);
    if (part != NULL)
        assert_non_null(strstr(perr.message, part));
}

/* ---- plain text ------------------------------------------------------- */

static void
test_plain_lines(void **state)
{
    const char *text =
        "# a comment\n"
        "a fox in the snow\n"
        "\n"
        "   \t \n"
        "  # an indented comment\n"
        "  a cat on a sofa  \r\n"
        "a dog\r\n"
        "last line without newline";

    assert_int_equal(parse(text), 0);
    assert_int_equal(got.n, 4);
    assert_int_equal(got.e[0].line, 2);
    assert_string_equal(got.e[0].prompt, "a fox in the snow");
    assert_string_equal(got.e[0].model, MODELS_DEFAULT);
    assert_int_equal(got.e[0].count, 1);
    assert_false(got.e[0].has_aspect);
    assert_false(got.e[0].has_name);
    assert_string_equal(got.e[0].via, "direct");
    assert_int_equal(got.e[1].line, 6);
    assert_string_equal(got.e[1].prompt, "a cat on a sofa");
    assert_string_equal(got.e[2].prompt, "a dog");
    assert_int_equal(got.e[3].line, 8);
    assert_string_equal(got.e[3].prompt, "last line without newline");
}

static void
test_byte_order_mark(void **state)
{
    assert_int_equal(parse("\xef\xbb\xbf{\"prompt\": \"x\"}\n"), 0);
    assert_int_equal(got.n, 1);
    assert_string_equal(got.e[0].prompt, "x");
    assert_int_equal(parse("\xef\xbb\xbf" "a fox\n"), 0);
    assert_string_equal(got.e[0].prompt, "a fox");
    /* only at the start of the file */
    assert_int_equal(parse("a\n\xef\xbb\xbf" "b\n"), 0);
    assert_string_equal(got.e[1].prompt, "\xef\xbb\xbf" "b");
}

static void
test_plain_empty_and_crlf_only(void **state)
{
    assert_int_equal(parse(""), 0);
    assert_int_equal(got.n, 0);
    assert_int_equal(parse("\r\n\r\n#x\r\n"), 0);
    assert_int_equal(got.n, 0);
}

static void
test_defaults_inherited(void **state)
{
    struct promptfile_defaults d = {
        .model = "gemini-3-pro-image", .aspect = "16:9", .size = "4k",
        .count = 3, .priority = 7, .not_before_ms = 1234000, .offpeak = 1,
        .via = "batch",
    };

    assert_int_equal(parse_with(&d, "a fox\n"), 0);
    assert_int_equal(got.n, 1);
    assert_string_equal(got.e[0].model, "gemini-3-pro-image");
    assert_string_equal(got.e[0].aspect, "16:9");
    assert_string_equal(got.e[0].size, "4K");      /* normalized */
    assert_int_equal(got.e[0].count, 3);
    assert_int_equal(got.e[0].priority, 7);
    assert_int_equal(got.e[0].not_before_ms, 1234000);
    assert_int_equal(got.e[0].offpeak, 1);
    assert_string_equal(got.e[0].via, "batch");
}

/* ---- JSON Lines ------------------------------------------------------- */

static void
test_json_all_fields(void **state)
{
    const char *text =
        "{\"prompt\": \"a fox\", \"name\": \"fox.png\", "
        "\"model\": \"gemini-3.1-flash-image\", \"aspect_ratio\": \"1:8\", "
        "\"image_size\": \"512\", \"count\": 4, "
        "\"images\": [\"a.png\", \"b c.jpg\"], \"priority\": -3, "
        "\"not_before\": 1700000000, \"offpeak\": true, \"out\": \"x/y\"}\n"
        "  {\"prompt\": \"plain\", \"name\": null, \"not_before\": "
        "\"1970-01-01T00:01:00Z\"}\r\n";

    assert_int_equal(parse(text), 0);
    assert_int_equal(got.n, 2);
    assert_string_equal(got.e[0].prompt, "a fox");
    assert_string_equal(got.e[0].name, "fox.png");
    assert_string_equal(got.e[0].model, "gemini-3.1-flash-image");
    assert_string_equal(got.e[0].aspect, "1:8");
    assert_string_equal(got.e[0].size, "512");
    assert_int_equal(got.e[0].count, 4);
    assert_int_equal(got.e[0].n_images, 2);
    assert_string_equal(got.e[0].images[1], "b c.jpg");
    assert_int_equal(got.e[0].priority, -3);
    assert_int_equal(got.e[0].not_before_ms, 1700000000000LL);
    assert_int_equal(got.e[0].offpeak, 1);
    assert_string_equal(got.e[0].out, "x/y");
    assert_int_equal(got.e[1].line, 2);
    assert_false(got.e[1].has_name);
    assert_string_equal(got.e[1].model, MODELS_DEFAULT);
    assert_int_equal(got.e[1].not_before_ms, 60000);
}

static void
test_json_errors(void **state)
{
    expect_error("ok\n{\"prompt\": \"x\", \"colour\": \"red\"}\n", NB_EINVAL,
                 2, "colour", "unknown key \"colour\"");
    expect_error("{\"prompt\": \"x\"\n", NB_EPARSE, 1, "json", NULL);
    expect_error("{\"prompt\": \"x\", \"prompt\": \"y\"}", NB_EPARSE, 1,
                 "json", NULL);
    expect_error("{\"name\": \"x\"}", NB_EINVAL, 1, "prompt", "missing");
    expect_error("{\"prompt\": 3}", NB_EINVAL, 1, "prompt", "string");
    expect_error("{\"prompt\": \" \\t \"}", NB_EINVAL, 1, "prompt", "empty");
    expect_error("{\"prompt\": \"x\", \"count\": \"3\"}", NB_EINVAL, 1,
                 "count", "whole number");
    expect_error("{\"prompt\": \"x\", \"count\": 2.5}", NB_EINVAL, 1,
                 "count", NULL);
    expect_error("{\"prompt\": \"x\", \"offpeak\": \"yes\"}", NB_EINVAL, 1,
                 "offpeak", NULL);
    expect_error("{\"prompt\": \"x\", \"images\": \"a.png\"}", NB_EINVAL, 1,
                 "images", "array");
    expect_error("{\"prompt\": \"x\", \"images\": [\"a.png\", 3]}",
                 NB_EINVAL, 1, "images", NULL);
    expect_error("{\"prompt\": \"x\", \"name\": \"\"}", NB_EINVAL, 1, "name",
                 "empty");
    expect_error("{\"prompt\": \"x\", \"out\": \"\"}", NB_EINVAL, 1, "out",
                 "empty");
    expect_error("{\"prompt\": \"x\", \"out\": [\"a\"]}", NB_EINVAL, 1, "out",
                 "string");
    expect_error("{\"prompt\": \"x\", \"model\": \"Bad\"}", NB_EINVAL, 1,
                 "model", NULL);
    expect_error("{\"prompt\": \"x\", \"not_before\": true}", NB_EINVAL, 1,
                 "not_before", NULL);
    expect_error("{\"prompt\": \"x\", \"not_before\": -5}", NB_EINVAL, 1,
                 "not_before", NULL);
    expect_error("{\"prompt\": \"a\\u0000b\"}", NB_EPARSE, 1, "json", NULL);
    expect_error("{\"prompt\": \"x\"} {\"prompt\": \"y\"}", NB_EPARSE, 1,
                 "json", NULL);
    /* only '{' makes a JSON line: this is a prompt */
    assert_int_equal(parse("[1, 2]"), 0);
    assert_string_equal(got.e[0].prompt, "[1, 2]");
}

/* ---- per-line options --------------------------------------------------- */

static void
test_options_line(void **state)
{
    const char *text =
        "--aspect 16:9 --size 2k --count 4 --model gemini-3-pro-image "
        "--priority 3 --image a.png --image \"my refs/b \\\"q\\\".png\" "
        "--name N --not-before 1970-01-01T00:00:10Z --offpeak --out "
        "\"out dir\" a fox in the \"snow\"  \n"
        "--count=2 -- --not an option\n"
        "--priority -5 -- # not a comment\n";

    assert_int_equal(parse(text), 0);
    assert_int_equal(got.n, 3);
    assert_string_equal(got.e[0].aspect, "16:9");
    assert_string_equal(got.e[0].size, "2K");
    assert_int_equal(got.e[0].count, 4);
    assert_string_equal(got.e[0].model, "gemini-3-pro-image");
    assert_int_equal(got.e[0].priority, 3);
    assert_int_equal(got.e[0].n_images, 2);
    assert_string_equal(got.e[0].images[0], "a.png");
    assert_string_equal(got.e[0].images[1], "my refs/b \"q\".png");
    assert_string_equal(got.e[0].name, "N");
    assert_int_equal(got.e[0].not_before_ms, 10000);
    assert_int_equal(got.e[0].offpeak, 1);
    assert_string_equal(got.e[0].out, "out dir");
    assert_string_equal(got.e[0].prompt, "a fox in the \"snow\"");
    assert_int_equal(got.e[1].count, 2);
    assert_string_equal(got.e[1].prompt, "--not an option");
    assert_int_equal(got.e[2].priority, -5);
    assert_string_equal(got.e[2].prompt, "# not a comment");
}

static void
test_options_errors(void **state)
{
    expect_error("a\nb\n--colour red a fox\n", NB_EINVAL, 3, "option",
                 "--colour");
    expect_error("--image \"a b.png a fox\n", NB_EPARSE, 1, "images",
                 "quote");
    expect_error("--name \"a\"b a fox\n", NB_EPARSE, 1, "name", NULL);
    expect_error("--count 4\n", NB_EINVAL, 1, "prompt", "missing");
    expect_error("--count\n", NB_EINVAL, 1, "count", "needs a value");
    expect_error("--count four a fox\n", NB_EINVAL, 1, "count",
                 "whole number");
    expect_error("--offpeak=yes a fox\n", NB_EINVAL, 1, "offpeak", NULL);
    expect_error("--not-before soon a fox\n", NB_EINVAL, 1, "not_before",
                 "not a time");
    expect_error("--name \"\" a fox\n", NB_EINVAL, 1, "name", "empty");
}

/* ---- validation of each field ----------------------------------------- */

static void
test_field_validation(void **state)
{
    expect_error("one\n--aspect 7:3 a fox\n", NB_EINVAL, 2, "aspect_ratio",
                 "\"7:3\" is not an aspect ratio gemini-2.5-flash-image "
                 "accepts (1:1, 2:3, ");
    expect_error("{\"prompt\": \"x\", \"aspect_ratio\": \"1:4\"}", NB_EINVAL,
                 1, "aspect_ratio", NULL);
    expect_error("--size 2K a fox\n", NB_EINVAL, 1, "image_size",
                 "(1K)");
    expect_error("--model gemini-3-pro-image --size 512 a\n", NB_EINVAL, 1,
                 "image_size", "(1K, 2K, 4K)");
    expect_error("--model Gemini-X a fox\n", NB_EINVAL, 1, "model", NULL);
    expect_error("--model a/b a fox\n", NB_EINVAL, 1, "model", NULL);
    expect_error("--count 0 a\n", NB_EINVAL, 1, "count", "1..1000");
    expect_error("--count 1001 a\n", NB_EINVAL, 1, "count", NULL);
    expect_error("{\"prompt\": \"x\", \"count\": 1001}", NB_EINVAL, 1,
                 "count", NULL);
    expect_error("--priority 1001 a\n", NB_EINVAL, 1, "priority", NULL);
    expect_error("--priority -1001 a\n", NB_EINVAL, 1, "priority", NULL);
    expect_error("{\"prompt\": \"x\", \"priority\": 99999999999}",
                 NB_EINVAL, 1, "priority", NULL);
    expect_error("--image a --image b --image c --image d a fox\n",
                 NB_ELIMIT, 1, "images", "at most 3");
}

static void
test_model_changes_what_is_valid(void **state)
{
    struct promptfile_defaults d = plain_defaults;

    d.aspect = "1:4";          /* not for the default model */
    assert_int_equal(parse_with(&d, "--model gemini-3.1-flash-image a\n"),
                     0);
    assert_int_equal(got.n, 1);
    assert_int_equal(parse_with(&d, "a fox\n"), NB_EINVAL);
    assert_string_equal(perr.field, "aspect_ratio");

    /* an unknown but plausible model takes the widest settings */
    assert_int_equal(parse("--model gemini-9-image --size 512 --aspect 8:1 "
                           "a\n"), 0);
    assert_string_equal(got.e[0].model, "gemini-9-image");
}

static void
test_prompt_limits(void **state)
{
    size_t n = PROMPTFILE_MAX_PROMPT;
    char *text = malloc(n + 3);

    assert_non_null(text);
    memset(text, 'a', n + 1);
    text[n] = '\n';
    text[n + 1] = '\0';
    assert_int_equal(parse(text), 0);          /* exactly the limit */
    text[n] = 'a';
    text[n + 1] = '\n';
    text[n + 2] = '\0';
    expect_error(text, NB_ELIMIT, 1, "prompt", "at most 32768");
    free(text);

    n = PROMPTFILE_MAX_LINE + 1;
    text = malloc(n + 1);
    assert_non_null(text);
    memset(text, 'b', n);
    text[n] = '\0';
    expect_error(text, NB_ELIMIT, 1, "line", NULL);
    free(text);
}

static void
test_nul_byte(void **state)
{
    static const char text[] = "ok\na\0b\n";

    memset(&got, 0, sizeof(got));
    assert_int_equal(promptfile_parse_buf(text, sizeof(text) - 1,
                                          &plain_defaults, collect, &got,
                                          &perr), NB_EPARSE);
    assert_int_equal(perr.line, 2);
    assert_string_equal(perr.field, "prompt");
    assert_int_equal(got.n, 1);
}

/* ---- UTF-8 ------------------------------------------------------------ */

static void
test_utf8(void **state)
{
    static const char *const bad[] = {
        "a \xff b",                     /* never valid */
        "a \xc0\xaf b",                 /* overlong '/' in 2 bytes */
        "a \xe0\x80\xaf b",             /* overlong in 3 bytes */
        "a \xf0\x80\x80\xaf b",         /* overlong in 4 bytes */
        "a \xed\xa0\x80 b",             /* surrogate U+D800 */
        "a \xf4\x90\x80\x80 b",         /* above U+10FFFF */
        "a \xc3",                       /* cut short at the end */
        "a \xe2\x82 b",                 /* cut short */
        "\x80 lone continuation",
    };

    assert_int_equal(parse("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac "
                           "\xf0\x9f\xa6\x8a \xef\xbf\xbd\n"), 0);
    assert_string_equal(got.e[0].prompt, "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c"
                        "\xac \xf0\x9f\xa6\x8a \xef\xbf\xbd");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_error(bad[i], NB_EPARSE, 1, "prompt", "invalid UTF-8");
    expect_error("--name \"\xc0\xaf\" a fox", NB_EPARSE, 1, "name",
                 "invalid UTF-8");
    expect_error("{\"prompt\": \"\xed\xa0\x80\"}", NB_EPARSE, 1, "json",
                 NULL);
    expect_error("{\"prompt\": \"\\ud800\"}", NB_EPARSE, 1, "json", NULL);
}

/* ---- reading FILEs and stopping ---------------------------------------- */

static void
test_file_and_stdin(void **state)
{
    char path[] = "/tmp/test_promptfile_XXXXXX";
    int fd = mkstemp(path);
    FILE *f;
    static const char text[] = "one\n{\"prompt\": \"two\"}\n--count 2 three";

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof(text) - 1),
                     (ssize_t)(sizeof(text) - 1));
    close(fd);

    f = fopen(path, "r");
    assert_non_null(f);
    memset(&got, 0, sizeof(got));
    assert_int_equal(promptfile_parse(f, &plain_defaults, collect, &got,
                                      &perr), 0);
    fclose(f);
    assert_int_equal(got.n, 3);
    assert_string_equal(got.e[2].prompt, "three");
    assert_int_equal(got.e[2].count, 2);

    /* the same through stdin, as `nbbatch add -` reads it */
    assert_non_null(freopen(path, "r", stdin));
    memset(&got, 0, sizeof(got));
    assert_int_equal(promptfile_parse(stdin, &plain_defaults, collect, &got,
                                      &perr), 0);
    assert_int_equal(got.n, 3);
    assert_string_equal(got.e[1].prompt, "two");
    unlink(path);
}

static void
test_callback_stops(void **state)
{
    memset(&got, 0, sizeof(got));
    got.stop_at = 2;
    assert_int_equal(promptfile_parse_buf("a\nb\nc\n", 6, &plain_defaults,
                                          collect, &got, &perr), -99);
    assert_int_equal(got.n, 1);
    assert_int_equal(perr.line, 2);
    assert_string_equal(perr.field, "test");
}

/* ---- times ------------------------------------------------------------ */

static void
test_times(void **state)
{
    int64_t ms = 42;

    setenv("TZ", "UTC", 1);
    tzset();
    assert_int_equal(promptfile_parse_time("1700000000", &ms), 0);
    assert_int_equal(ms, 1700000000000LL);
    assert_int_equal(promptfile_parse_time("2023-11-14T22:13:20Z", &ms), 0);
    assert_int_equal(ms, 1700000000000LL);
    assert_int_equal(promptfile_parse_time("2023-11-14T23:13:20+01:00", &ms),
                     0);
    assert_int_equal(ms, 1700000000000LL);
    assert_int_equal(promptfile_parse_time("2023-11-14T21:13:20-0100", &ms),
                     0);
    assert_int_equal(ms, 1700000000000LL);
    assert_int_equal(promptfile_parse_time("2023-11-14T22:13:20.999Z", &ms),
                     0);
    assert_int_equal(ms, 1700000000000LL);
    assert_int_equal(promptfile_parse_time("2023-11-14T22:13", &ms), 0);
    assert_int_equal(ms, 1699999980000LL);           /* local = UTC here */
    assert_int_equal(promptfile_parse_time("2024-02-29 00:00:00Z", &ms), 0);

    setenv("TZ", "EST5", 1);
    tzset();
    assert_int_equal(promptfile_parse_time("2023-11-14T17:13:20", &ms), 0);
    assert_int_equal(ms, 1700000000000LL);

    ms = 42;
    assert_int_equal(promptfile_parse_time("2023-02-29T00:00Z", &ms),
                     NB_EINVAL);
    assert_int_equal(promptfile_parse_time("2023-13-01T00:00", &ms),
                     NB_EINVAL);
    assert_int_equal(promptfile_parse_time("2023-01-01T24:00", &ms),
                     NB_EINVAL);
    assert_int_equal(promptfile_parse_time("2023-01-01", &ms), NB_EINVAL);
    assert_int_equal(promptfile_parse_time("2023-01-01T10:00+5", &ms),
                     NB_EINVAL);
    assert_int_equal(promptfile_parse_time("2023-01-01T10:00Zjunk", &ms),
                     NB_EINVAL);
    assert_int_equal(promptfile_parse_time("12a", &ms), NB_EINVAL);
    assert_int_equal(promptfile_parse_time("", &ms), NB_EINVAL);
    assert_int_equal(promptfile_parse_time("-5", &ms), NB_EINVAL);
    assert_int_equal(ms, 42);                        /* untouched */
    unsetenv("TZ");
    tzset();
}

/* ---- models ------------------------------------------------------------ */

static void
test_models(void **state)
{
    const struct model_info *m = models_find("gemini-2.5-flash-image");

    assert_non_null(m);
    assert_true(m->known);
    assert_int_equal(m->send_size, 0);
    assert_int_equal(m->max_refs, 3);
    assert_true(models_aspect_ok(m, "21:9"));
    assert_false(models_aspect_ok(m, "1:4"));
    assert_true(models_size_ok(m, "1K"));
    assert_false(models_size_ok(m, "1k"));           /* exact match */
    assert_false(models_size_ok(m, "2K"));

    m = models_find("gemini-3.1-flash-image-preview");
    assert_non_null(m);
    assert_true(m->known && m->send_size && m->thinks);
    assert_string_equal(m->sizes[0], "1K");
    assert_true(models_size_ok(m, "512"));
    assert_true(models_aspect_ok(m, "8:1"));
    assert_int_equal(m->max_refs, 14);

    m = models_find("gemini-3-pro-image-preview");
    assert_non_null(m);
    assert_false(models_size_ok(m, "512"));
    assert_true(models_size_ok(m, "4K"));
    assert_false(models_aspect_ok(m, "1:8"));

    m = models_find("gemini-3.1-flash-lite-image");
    assert_non_null(m);
    assert_false(models_size_ok(m, "2K"));

    m = models_find("gemini-4-flash-image");
    assert_non_null(m);
    assert_false(m->known);
    assert_true(models_size_ok(m, "512") && models_size_ok(m, "4K"));
    assert_true(models_aspect_ok(m, "1:8"));

    assert_null(models_find("Gemini-2.5"));
    assert_null(models_find("gemini_2"));
    assert_null(models_find("models/gemini-2.5-flash-image"));
    assert_null(models_find(""));
    assert_null(models_find("-x"));
}

static void
test_prices(void **state)
{
    assert_true(models_price("gemini-2.5-flash-image", NULL, 0) == 0.039);
    assert_true(models_price("gemini-2.5-flash-image", "1K", 1) == 0.0195);
    assert_true(models_price("gemini-2.5-flash-image", "2K", 0) < 0);
    assert_true(models_price("gemini-3-pro-image", "2K", 0) == 0.134);
    assert_true(models_price("gemini-3-pro-image", "4K", 1) == 0.12);
    assert_true(models_price("gemini-3.1-flash-image", "512", 0) == 0.045);
    assert_true(models_price("gemini-3.1-flash-image", NULL, 0) == 0.067);
    assert_true(models_price("gemini-9-image", NULL, 0) < 0);
    assert_true(models_price("Bad Model", NULL, 0) < 0);

    /* 1290 output tokens at $30/M, 1000 input tokens at $0.30/M */
    double c = models_cost("gemini-2.5-flash-image", 1000, 1290, 0);
    assert_true(c > 0.0389 - 1e-9 && c < 0.0390 + 0.0003 + 1e-9);
    assert_true(models_cost("gemini-2.5-flash-image", 1000, 1290, 1) ==
                c / 2);
    assert_true(models_cost("gemini-3-pro-image", 0, 2000, 0) == 0.24);
    assert_true(models_cost("gemini-9-image", 10, 10, 0) < 0);
    assert_true(models_cost("gemini-2.5-flash-image", -1, 10, 0) < 0);
}

/* ---- job keys ------------------------------------------------------------ */

static void
key_of(const char *model, const char *prompt, const char *aspect,
       const char *size, const char *const *refs, size_t n, int index,
       char key[65])
{
    jobkey_compute(model, prompt, aspect, size, refs, n, index, key);
    assert_int_equal(strlen(key), 64);
}

static void
test_jobkey(void **state)
{
    static const char *const refs[] = {
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    };
    const char *const swapped[] = {refs[1], refs[0]};
    char base[65], other[65];

    key_of("m", "a fox", "1:1", "1K", refs, 2, 0, base);
    key_of("m", "a fox", "1:1", "1K", refs, 2, 0, other);
    assert_string_equal(base, other);                /* stable */
    /* pinned: the format may never change silently, or re-adding a file
     * would queue every job a second time */
    key_of("gemini-2.5-flash-image", "a fox in the snow", NULL, NULL, NULL,
           0, 0, other);
    assert_string_equal(other, "e882b0123177b12641ee5793a078ead8edf42390df"
                        "7a4bd4319c0cc735709227");

    key_of("n", "a fox", "1:1", "1K", refs, 2, 0, other);
    assert_string_not_equal(base, other);
    key_of("m", "a fox.", "1:1", "1K", refs, 2, 0, other);
    assert_string_not_equal(base, other);
    key_of("m", "a fox", "1:2", "1K", refs, 2, 0, other);
    assert_string_not_equal(base, other);
    key_of("m", "a fox", "1:1", "2K", refs, 2, 0, other);
    assert_string_not_equal(base, other);
    key_of("m", "a fox", "1:1", "1K", refs, 1, 0, other);
    assert_string_not_equal(base, other);
    key_of("m", "a fox", "1:1", "1K", swapped, 2, 0, other);
    assert_string_not_equal(base, other);
    key_of("m", "a fox", "1:1", "1K", refs, 2, 1, other);
    assert_string_not_equal(base, other);

    /* parts cannot run into each other */
    key_of("ab", "c", NULL, NULL, NULL, 0, 0, base);
    key_of("a", "bc", NULL, NULL, NULL, 0, 0, other);
    assert_string_not_equal(base, other);
    key_of("m", "p", "1K", NULL, NULL, 0, 0, base);
    key_of("m", "p", NULL, "1K", NULL, 0, 0, other);
    assert_string_not_equal(base, other);
    /* NULL is the same as empty */
    key_of("m", "p", NULL, NULL, NULL, 0, 0, base);
    key_of("m", "p", "", "", NULL, 0, 0, other);
    assert_string_equal(base, other);
}

static void
write_file(const char *path, const void *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    fclose(f);
}

static void
test_jobkey_file(void **state)
{
    static const unsigned char png[] = "\x89PNG\r\n\x1a\n0123456789";
    static const unsigned char jpeg[] = "\xff\xd8\xff\xe0 jfif";
    static const unsigned char webp[] = "RIFF\x10\0\0\0WEBPVP8 ";
    static const unsigned char heic[] = "\0\0\0\x18" "ftypheic\0\0\0\0";
    static const unsigned char text[] = "just some text here";
    char path[] = "/tmp/test_jobkey_XXXXXX";
    char hex[65] = "untouched", want[65];
    const char *mime = NULL;
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    close(fd);

    jobkey_sha256_hex("abc", 3, want);
    assert_string_equal(want, "ba7816bf8f01cfea414140de5dae2223b00361a396"
                        "177a9cb410ff61f20015ad");

    write_file(path, png, sizeof(png) - 1);
    assert_int_equal(jobkey_file(path, hex, &mime), 0);
    jobkey_sha256_hex(png, sizeof(png) - 1, want);
    assert_string_equal(hex, want);
    assert_string_equal(mime, "image/png");

    write_file(path, jpeg, sizeof(jpeg) - 1);
    assert_int_equal(jobkey_file(path, hex, &mime), 0);
    assert_string_equal(mime, "image/jpeg");
    write_file(path, webp, sizeof(webp) - 1);
    assert_int_equal(jobkey_file(path, hex, &mime), 0);
    assert_string_equal(mime, "image/webp");
    write_file(path, heic, sizeof(heic) - 1);
    assert_int_equal(jobkey_file(path, hex, &mime), 0);
    assert_string_equal(mime, "image/heic");

    write_file(path, text, sizeof(text) - 1);
    memcpy(hex, "untouched", 10);
    assert_int_equal(jobkey_file(path, hex, &mime), NB_EIMAGE);
    assert_string_equal(hex, "untouched");
    write_file(path, "", 0);
    assert_int_equal(jobkey_file(path, hex, &mime), NB_EIMAGE);

    unlink(path);
    errno = 0;
    assert_int_equal(jobkey_file(path, hex, &mime), NB_EIO);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(jobkey_file("/", hex, &mime), NB_EIO);  /* a folder */
}

/* ---- naming ---------------------------------------------------------- */

static void
test_naming_slug(void **state)
{
    char p[512];

    assert_int_equal(naming_path("/o", 1, NULL, "A Fox, in the SNOW!", p,
                                 sizeof(p)), 0);
    assert_string_equal(p, "/o/000001-a-fox-in-the-snow.png");
    assert_int_equal(naming_path("/o/", 42, NULL, "  --caf\xc3\xa9 au lait",
                                 p, sizeof(p)), 0);
    assert_string_equal(p, "/o/000042-caf-au-lait.png");
    assert_int_equal(naming_path("/o", 1234567, NULL, "\xe6\x97\xa5 ...", p,
                                 sizeof(p)), 0);
    assert_string_equal(p, "/o/1234567-image.png");
    assert_int_equal(naming_path("/", 0, NULL, "x", p, sizeof(p)), 0);
    assert_string_equal(p, "/000000-x.png");

    /* at most 48 bytes, cut inside a word or before one, never at '-' */
    assert_int_equal(naming_path("/o", 7, NULL, "aaaaaaaaaa bbbbbbbbbb "
                                 "cccccccccc dddddddddd eeeeeeeeee ffff", p,
                                 sizeof(p)), 0);
    assert_string_equal(p, "/o/000007-aaaaaaaaaa-bbbbbbbbbb-cccccccccc-"
                        "dddddddddd-eeee.png");
    assert_int_equal(naming_path("/o", 7, NULL, "aaaaaaaaaa bbbbbbbbbb "
                                 "cccccccccc dddddddddd eee ffff", p,
                                 sizeof(p)), 0);
    assert_string_equal(p, "/o/000007-aaaaaaaaaa-bbbbbbbbbb-cccccccccc-"
                        "dddddddddd-eee.png");
}

static void
test_naming_names(void **state)
{
    char p[512], n[256], long_name[256];

    assert_int_equal(naming_path("/o", 1, "fox", "ignored", p, sizeof(p)),
                     0);
    assert_string_equal(p, "/o/fox.png");
    assert_int_equal(naming_path("/o", 1, "Fox.PNG", "x", p, sizeof(p)), 0);
    assert_string_equal(p, "/o/Fox.PNG");
    assert_int_equal(naming_path("/o", 1, "a b.jpg", "x", p, sizeof(p)), 0);
    assert_string_equal(p, "/o/a b.jpg.png");

    snprintf(p, sizeof(p), "untouched");
    assert_int_equal(naming_path("/o", 1, "a/b", "x", p, sizeof(p)),
                     NB_EINVAL);
    assert_int_equal(naming_path("/o", 1, "..", "x", p, sizeof(p)),
                     NB_EINVAL);
    assert_int_equal(naming_path("/o", 1, "../x", "x", p, sizeof(p)),
                     NB_EINVAL);
    assert_int_equal(naming_path("/o", 1, ".hidden", "x", p, sizeof(p)),
                     NB_EINVAL);
    assert_int_equal(naming_path("/o", 1, "", "x", p, sizeof(p)), NB_EINVAL);
    assert_int_equal(naming_path("/o", 1, "a\nb", "x", p, sizeof(p)),
                     NB_EINVAL);
    assert_int_equal(naming_path("o", 1, "a", "x", p, sizeof(p)), NB_EINVAL);
    assert_int_equal(naming_path("/o", -1, NULL, "x", p, sizeof(p)),
                     NB_EINVAL);
    assert_string_equal(p, "untouched");

    memset(long_name, 'n', 200);
    long_name[200] = '\0';
    assert_int_equal(naming_path("/o", 1, long_name, "x", p, sizeof(p)), 0);
    long_name[200] = 'n';
    long_name[201] = '\0';
    assert_int_equal(naming_path("/o", 1, long_name, "x", p, sizeof(p)),
                     NB_EINVAL);

    /* too small a buffer: NB_ELIMIT and nothing written */
    snprintf(p, sizeof(p), "untouched");
    assert_int_equal(naming_path("/o", 1, "fox", "x", p, 10), NB_ELIMIT);
    assert_string_equal(p, "untouched");
    assert_int_equal(naming_path("/o", 1, "fox", "x", p, 11), 0);
    assert_int_equal(naming_path("/o", 1, NULL, "fox", p, 17), NB_ELIMIT);
    assert_int_equal(naming_path("/o", 1, NULL, "fox", p, 18), 0);
    assert_string_equal(p, "/o/000001-fox.png");

    /* count suffix */
    assert_int_equal(naming_with_index("fox.png", 2, n, sizeof(n)), 0);
    assert_string_equal(n, "fox-2.png");
    assert_int_equal(naming_with_index("fox", 10, n, sizeof(n)), 0);
    assert_string_equal(n, "fox-10");
    assert_int_equal(naming_with_index("a.b.PNG", 1, n, sizeof(n)), 0);
    assert_string_equal(n, "a.b-1.PNG");
    assert_int_equal(naming_with_index("../x", 1, n, sizeof(n)), NB_EINVAL);
    assert_int_equal(naming_with_index("fox.png", 1, n, 9), NB_ELIMIT);
    assert_int_equal(naming_with_index("fox.png", 1, n, 10), 0);
}

static void
test_naming_tmp(void **state)
{
    char t[64];

    assert_int_equal(naming_tmp_path("/o/fox.png", 12, t, sizeof(t)), 0);
    assert_string_equal(t, "/o/fox.png.tmp-12");
    assert_int_equal(naming_tmp_path("/o/fox.png", 12, t, 17), NB_ELIMIT);
    assert_int_equal(naming_tmp_path("/o/fox.png", 12, t, 18), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_lines),
        cmocka_unit_test(test_plain_empty_and_crlf_only),
        cmocka_unit_test(test_byte_order_mark),
        cmocka_unit_test(test_defaults_inherited),
        cmocka_unit_test(test_json_all_fields),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_options_line),
        cmocka_unit_test(test_options_errors),
        cmocka_unit_test(test_field_validation),
        cmocka_unit_test(test_model_changes_what_is_valid),
        cmocka_unit_test(test_prompt_limits),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_file_and_stdin),
        cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_prices),
        cmocka_unit_test(test_jobkey),
        cmocka_unit_test(test_jobkey_file),
        cmocka_unit_test(test_naming_slug),
        cmocka_unit_test(test_naming_names),
        cmocka_unit_test(test_naming_tmp),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
