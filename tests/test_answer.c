/*
 * test_answer.c - answer reading and classification (jobs/answer.c), and
 * request building (jobs/request.c).
 *
 * Every canned answer in tests/data/answers/ has a ".expect" file beside
 * it: "key value" lines saying how it must be classified.  Each answer is
 * fed whole, one byte at a time and in random chunks, and the results must
 * agree with each other and with the expectations.  Then come the cases a
 * file cannot hold: a 20 MB answer, the limits, the clock.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "jobs/answer.h"
#include "jobs/jobkey.h"
#include "jobs/request.h"
#include "queue/nberr.h"

#define MAX_FILE (1024 * 1024)

static const char *
data_dir(void)
{
    const char *d = getenv("NB_TESTDATA");

    return d != NULL ? d : "tests/data";
}

static uint64_t rng_state;

static uint64_t
rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static char *
slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = malloc(MAX_FILE + 1);
    size_t n;

    assert_non_null(f);
    assert_non_null(buf);
    n = fread(buf, 1, MAX_FILE, f);
    assert_true(n < MAX_FILE);
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* What one run produced, image bytes included. */
struct outcome {
    int feed_rc;
    struct answer_result r;
    unsigned char *image;
    size_t image_len;
    char *skeleton;
};

static void
outcome_free(struct outcome *o)
{
    free(o->image);
    free(o->skeleton);
}

/* chunk: 0 whole, 1 byte by byte, else random chunks up to chunk. */
static void
run(const char *body, size_t len, size_t chunk, int http, const char *tr,
    const char *retry_after, struct outcome *o)
{
    struct answer *a = answer_new(NULL);
    size_t at = 0, skel_len;
    const char *skel;

    assert_non_null(a);
    memset(o, 0, sizeof(*o));
    while (at < len && o->feed_rc == 0) {
        size_t n = chunk == 0 ? len - at : chunk == 1 ? 1
                                         : 1 + rng() % chunk;

        if (n > len - at)
            n = len - at;
        o->feed_rc = answer_feed(a, body + at, n);
        at += n;
    }
    answer_classify(a, http, tr != NULL, tr, retry_after, &o->r);
    skel = answer_skeleton(a, &skel_len);
    assert_int_equal(skel[skel_len], 0);
    o->skeleton = strdup(skel);
    if (o->r.cls == ANSWER_OK) {
        assert_true(o->r.image_fd >= 0);
        assert_true(o->r.image_bytes > 0);
        assert_int_equal(lseek(o->r.image_fd, 0, SEEK_CUR), 0);
        o->image = malloc((size_t)o->r.image_bytes);
        assert_non_null(o->image);
        o->image_len = (size_t)read(o->r.image_fd, o->image,
                                    (size_t)o->r.image_bytes);
        assert_int_equal(o->image_len, o->r.image_bytes);
    } else {
        assert_int_equal(o->r.image_fd, -1);
    }
    answer_free(a);
}

static void
assert_same(const char *name, const struct outcome *x,
            const struct outcome *y)
{
    if (x->feed_rc != y->feed_rc || x->r.cls != y->r.cls ||
        strcmp(x->r.message, y->r.message) != 0 ||
        strcmp(x->r.reason, y->r.reason) != 0 ||
        x->r.retry_after_ms != y->r.retry_after_ms ||
        x->image_len != y->image_len ||
        (x->image_len > 0 && memcmp(x->image, y->image, x->image_len) != 0)
        || strcmp(x->skeleton, y->skeleton) != 0)
        fail_msg("%s: chunking changed the result: [%s] vs [%s]", name,
                 x->r.message, y->r.message);
}

static void
hex_of(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static int
count_blobs(const char *skel)
{
    int n = 0;

    while ((skel = strstr(skel, "@nbblob:")) != NULL) {
        n++;
        skel++;
    }
    return n;
}

static void
check_str(const char *name, const char *key, const char *got,
          const char *want)
{
    if (strcmp(got, want) != 0)
        fail_msg("%s: %s is \"%s\", want \"%s\"", name, key, got, want);
}

static void
check_int(const char *name, const char *key, long long got,
          const char *want)
{
    if (got != strtoll(want, NULL, 10))
        fail_msg("%s: %s is %lld, want %s", name, key, got, want);
}

/* Checks one "key value" expectation against o. */
static void
check_line(const char *name, const char *key, const char *val,
           const struct outcome *o)
{
    const struct answer_result *r = &o->r;
    char hex[129];

    if (strcmp(key, "class") == 0)
        check_str(name, key, answer_class_name(r->cls), val);
    else if (strcmp(key, "reason") == 0)
        check_str(name, key, r->reason, val);
    else if (strcmp(key, "api_status") == 0)
        check_str(name, key, r->api_status, val);
    else if (strcmp(key, "finish_reason") == 0)
        check_str(name, key, r->finish_reason, val);
    else if (strcmp(key, "response_id") == 0)
        check_str(name, key, r->response_id, val);
    else if (strcmp(key, "model_version") == 0)
        check_str(name, key, r->model_version, val);
    else if (strcmp(key, "message_is") == 0)
        check_str(name, key, r->message, val);
    else if (strcmp(key, "message") == 0) {
        if (strstr(r->message, val) == NULL)
            fail_msg("%s: message \"%s\" lacks \"%s\"", name, r->message,
                     val);
    } else if (strcmp(key, "message_lacks") == 0) {
        if (strstr(r->message, val) != NULL)
            fail_msg("%s: message \"%s\" has \"%s\"", name, r->message,
                     val);
    } else if (strcmp(key, "skeleton_has") == 0) {
        if (strstr(o->skeleton, val) == NULL)
            fail_msg("%s: skeleton lacks %s", name, val);
    } else if (strcmp(key, "retry_after_ms") == 0)
        check_int(name, key, r->retry_after_ms, val);
    else if (strcmp(key, "quota_per_day") == 0)
        check_int(name, key, r->quota_per_day, val);
    else if (strcmp(key, "quota_per_minute") == 0)
        check_int(name, key, r->quota_per_minute, val);
    else if (strcmp(key, "image_bytes") == 0)
        check_int(name, key, r->image_bytes, val);
    else if (strcmp(key, "prompt_tokens") == 0)
        check_int(name, key, r->prompt_tokens, val);
    else if (strcmp(key, "output_tokens") == 0)
        check_int(name, key, r->output_tokens, val);
    else if (strcmp(key, "thought_tokens") == 0)
        check_int(name, key, r->thought_tokens, val);
    else if (strcmp(key, "total_tokens") == 0)
        check_int(name, key, r->total_tokens, val);
    else if (strcmp(key, "blobs") == 0)
        check_int(name, key, count_blobs(o->skeleton), val);
    else if (strcmp(key, "image_prefix") == 0) {
        size_t n = strlen(val) / 2;

        assert_true(n <= 64 && o->image_len >= n);
        hex_of(o->image, n, hex);
        check_str(name, key, hex, val);
    } else if (strcmp(key, "image_sha256") == 0) {
        jobkey_sha256_hex(o->image, o->image_len, hex);
        check_str(name, key, hex, val);
    } else if (strcmp(key, "http") != 0 && strcmp(key, "transport") != 0 &&
               strcmp(key, "retry_after_header") != 0)
        fail_msg("%s: unknown expectation %s", name, key);
}

/* The case's input settings, from its .expect text. */
struct setting {
    int http;
    char transport[128];
    char retry_after[64];
};

static void
read_settings(const char *expect, struct setting *s)
{
    const char *p;

    memset(s, 0, sizeof(*s));
    s->http = 200;
    if ((p = strstr(expect, "\nhttp ")) != NULL || strncmp(expect,
                                                           "http ", 5) == 0)
        s->http = (int)strtol(p != NULL ? p + 6 : expect + 5, NULL, 10);
    if ((p = strstr(expect, "\ntransport ")) != NULL)
        sscanf(p + 11, "%127[^\n]", s->transport);
    if ((p = strstr(expect, "\nretry_after_header ")) != NULL)
        sscanf(p + 20, "%63[^\n]", s->retry_after);
}

static void
check_case(const char *dir, const char *name)
{
    char path[512], *expect, *body, *line, *save = NULL;
    size_t elen, blen;
    struct setting set;
    struct outcome whole, bytes, chunks;
    int have_class = 0, have_retry = 0, have_day = 0, have_minute = 0;

    snprintf(path, sizeof(path), "%s/%s.expect", dir, name);
    expect = slurp(path, &elen);
    read_settings(expect, &set);
    body = NULL;
    {
        static const char *const ext[] = {".json", ".html", ".txt", NULL};

        for (int i = 0; ext[i] != NULL && body == NULL; i++) {
            snprintf(path, sizeof(path), "%s/%s%s", dir, name, ext[i]);
            if (access(path, R_OK) == 0)
                body = slurp(path, &blen);
        }
    }
    if (body == NULL)
        fail_msg("%s: no answer file beside the .expect", name);

    run(body, blen, 0, set.http, set.transport[0] ? set.transport : NULL,
        set.retry_after[0] ? set.retry_after : NULL, &whole);
    run(body, blen, 1, set.http, set.transport[0] ? set.transport : NULL,
        set.retry_after[0] ? set.retry_after : NULL, &bytes);
    assert_same(name, &whole, &bytes);
    for (int seed = 1; seed <= 4; seed++) {
        rng_state = 0x9e3779b97f4a7c15ull * (uint64_t)seed;
        run(body, blen, seed * 37, set.http,
            set.transport[0] ? set.transport : NULL,
            set.retry_after[0] ? set.retry_after : NULL, &chunks);
        assert_same(name, &whole, &chunks);
        outcome_free(&chunks);
    }
    if (whole.feed_rc != 0)
        fail_msg("%s: answer_feed() returned %d", name, whole.feed_rc);
    if (strchr(whole.r.message, '\n') != NULL || whole.r.message[0] == '\0')
        fail_msg("%s: message is empty or not one line", name);

    for (line = strtok_r(expect, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char *sp = strchr(line, ' ');
        const char *val = sp != NULL ? sp + 1 : "";

        if (line[0] == '#' || line[0] == '\0')
            continue;
        if (sp != NULL)
            *sp = '\0';
        have_class |= strcmp(line, "class") == 0;
        have_retry |= strcmp(line, "retry_after_ms") == 0;
        have_day |= strcmp(line, "quota_per_day") == 0;
        have_minute |= strcmp(line, "quota_per_minute") == 0;
        check_line(name, line, val, &whole);
    }
    if (!have_class)
        fail_msg("%s: the .expect names no class", name);
    /* Left unsaid means the default. */
    if (!have_retry)
        check_int(name, "retry_after_ms", whole.r.retry_after_ms, "-1");
    if (!have_day)
        check_int(name, "quota_per_day", whole.r.quota_per_day, "0");
    if (!have_minute)
        check_int(name, "quota_per_minute", whole.r.quota_per_minute, "0");

    outcome_free(&whole);
    outcome_free(&bytes);
    free(body);
    free(expect);
}

static int
by_name(const struct dirent **x, const struct dirent **y)
{
    return strcmp((*x)->d_name, (*y)->d_name);
}

static void
test_canned_answers(void **state)
{
    char dir[256];
    struct dirent **list;
    int n, cases = 0;

    snprintf(dir, sizeof(dir), "%s/answers", data_dir());
    n = scandir(dir, &list, NULL, by_name);
    assert_true(n > 0);
    for (int i = 0; i < n; i++) {
        char *dot = strrchr(list[i]->d_name, '.');

        if (dot != NULL && strcmp(dot, ".expect") == 0) {
            *dot = '\0';
            check_case(dir, list[i]->d_name);
            cases++;
        }
        free(list[i]);
    }
    free(list);
    assert_true(cases >= 40);
}

/* ---- cases a file cannot hold --------------------------------------- */

/* A JSON answer around a base64 image of n pseudo-random bytes. */
static char *
big_answer(size_t n, unsigned char **image, size_t *len)
{
    static const char head[] =
        "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":["
        "{\"text\":\"planning\",\"thought\":true},"
        "{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":\"";
    static const char tail[] =
        "\"},\"thoughtSignature\":\"c2lnbmF0dXJl\"}]},"
        "\"finishReason\":\"STOP\",\"index\":0}],"
        "\"usageMetadata\":{\"promptTokenCount\":12,"
        "\"candidatesTokenCount\":2000,\"totalTokenCount\":2012},"
        "\"modelVersion\":\"gemini-3-pro-image-preview\"}";
    unsigned char *img = malloc(n);
    size_t b64 = 4 * ((n + 2) / 3);
    char *body = malloc(sizeof(head) + b64 + sizeof(tail));

    assert_non_null(img);
    assert_non_null(body);
    rng_state = 42;
    for (size_t i = 0; i < n; i++)
        img[i] = (unsigned char)(rng() >> 24);
    memcpy(body, head, sizeof(head) - 1);
    EVP_EncodeBlock((unsigned char *)body + sizeof(head) - 1, img, (int)n);
    memcpy(body + sizeof(head) - 1 + b64, tail, sizeof(tail));
    *len = sizeof(head) - 1 + b64 + sizeof(tail) - 1;
    *image = img;
    return body;
}

static void
test_big_answer(void **state)
{
    size_t n = 15u * 1024 * 1024, len, skel_len;
    unsigned char *img;
    char *body = big_answer(n, &img, &len);
    struct outcome o;

    assert_true(len > 20u * 1000 * 1000);
    rng_state = 7;
    run(body, len, 65536, 200, NULL, NULL, &o);
    assert_int_equal(o.feed_rc, 0);
    assert_int_equal(o.r.cls, ANSWER_OK);
    skel_len = strlen(o.skeleton);
    assert_true(skel_len < 4096);
    assert_int_equal(o.image_len, n);
    assert_memory_equal(o.image, img, n);
    assert_int_equal(o.r.output_tokens, 2000);
    outcome_free(&o);
    free(body);
    free(img);
}

/* Every base64 character written as \u00XX, every '/' as \/. */
static void
test_escaped_everywhere(void **state)
{
    static const unsigned char img[] = "\x89PNG\r\n\x1a\n all escaped?>>?";
    char b64[64], body[1024];
    size_t at;
    struct outcome o;

    EVP_EncodeBlock((unsigned char *)b64, img, sizeof(img) - 1);
    at = (size_t)snprintf(body, sizeof(body), "{\"candidates\":[{\"content"
                          "\":{\"parts\":[{\"inlineData\":{\"data\":\"");
    for (const char *p = b64; *p != '\0'; p++)
        at += (size_t)snprintf(body + at, sizeof(body) - at,
                               *p == '/' ? "\\/" : "\\u%04X", *p);
    at += (size_t)snprintf(body + at, sizeof(body) - at, "\"}}]}}]}");
    run(body, at, 1, 200, NULL, NULL, &o);
    assert_int_equal(o.r.cls, ANSWER_OK);
    assert_int_equal(o.image_len, sizeof(img) - 1);
    assert_memory_equal(o.image, img, sizeof(img) - 1);
    outcome_free(&o);
}

/* Padding, white space and escapes at the edges of the base64 text. */
static void
test_base64_edges(void **state)
{
    static const struct {
        const char *data;       /* as written in the JSON */
        const char *bytes;      /* decoded; NULL: bad base64 */
    } cases[] = {
        {"QUJD", "ABC"}, {"QUI=", "AB"}, {"QUI", "AB"}, {"QQ==", "A"},
        {"QQ", "A"}, {"QQ=", "A"}, {"QU JD\\n", "ABC"},
        {"QQ\\u003d\\u003D", "A"}, {"\\u0051UJD", "ABC"},
        {"Q", NULL}, {"QUJD=", NULL}, {"QQ===", NULL}, {"QQ==QQ==", NULL},
        {"QUJ\\u00e9", NULL}, {"QU\\\"JD", NULL}, {"QU\\x", NULL},
        {"QU\\u00", NULL}, {"QUJD\\t\\r", "ABC"}, {"QU\\bJD", NULL},
        {"=", NULL}, {"QU\\\\", NULL},
    };
    char body[256];
    struct outcome o;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int n = snprintf(body, sizeof(body), "{\"candidates\":[{\"content"
                         "\":{\"parts\":[{\"inlineData\":{\"data\":"
                         "\"%s\"}}]}}]}", cases[i].data);

        for (size_t chunk = 0; chunk < 2; chunk++) {
            run(body, (size_t)n, chunk, 200, NULL, NULL, &o);
            if (cases[i].bytes == NULL && (o.r.cls != ANSWER_TRANSIENT ||
                strstr(o.r.message, "bad base64") == NULL))
                fail_msg("\"%s\": %s", cases[i].data, o.r.message);
            if (cases[i].bytes != NULL &&
                (o.r.cls != ANSWER_OK ||
                 o.image_len != strlen(cases[i].bytes) ||
                 memcmp(o.image, cases[i].bytes, o.image_len) != 0))
                fail_msg("\"%s\": %s", cases[i].data, o.r.message);
            outcome_free(&o);
        }
    }
}

/*
 * The fast path (whole groups of plain base64 decoded in place) against
 * the slow one (a character at a time): the same random image written
 * plainly, with every character escaped (the slow path alone), and mixed
 * (escapes, url-safe characters, white space and optional padding at
 * random places, so that groups start on one path and end on the other),
 * each fed whole and in random chunks that cut groups and escapes, must
 * decode to the same bytes; one bad byte anywhere must spoil each.
 */
enum b64_style { B64_PLAIN, B64_ESCAPED, B64_MIXED };

/* Appends one base64 character c to out in the given style. */
static size_t
put_b64_char(char *out, char c, int style)
{
    static const char *const space[] = {
        " ", "\n", "\r\n", "\t", "\\n", "\\t", "\\r", "  \\r\\n"
    };
    size_t at = 0;
    unsigned pick = (unsigned)(rng() % 16);

    if (style == B64_ESCAPED || (style == B64_MIXED && pick == 0))
        return (size_t)snprintf(out, 8, "\\u%04X", (unsigned char)c);
    if (style == B64_PLAIN || pick > 4) {
        out[0] = c;
        return 1;
    }
    if (pick == 1 && c == '/')
        return (size_t)snprintf(out, 8, "\\/");
    if (pick == 2 && (c == '+' || c == '/')) {
        out[0] = c == '+' ? '-' : '_';
        return 1;
    }
    if (pick == 3) {
        const char *s = space[rng() % 8];

        at = strlen(s);
        memcpy(out, s, at);
    }
    out[at] = c;
    return at + 1;
}

/*
 * An answer around the base64 text of img[0..n) in the given style;
 * with bad, one byte base64 does not allow somewhere in the text.  The
 * caller frees it; *len gets its length.
 */
static char *
styled_answer(const unsigned char *img, size_t n, int style, int bad,
              size_t *len)
{
    static const char head[] =
        "{\"candidates\":[{\"content\":{\"parts\":[{\"inlineData\":"
        "{\"mimeType\":\"image/png\",\"data\":\"";
    static const char tail[] = "\"}}]},\"finishReason\":\"STOP\"}]}";
    static const char *const spoil[] = {
        "*", "\xc3\xa9", "\\u00e9", "\\\"", "\\\\", "\\b", "!", ".",
    };
    size_t b64_len = 4 * ((n + 2) / 3), at = sizeof(head) - 1;
    size_t bad_at = bad ? (size_t)(rng() % b64_len) : SIZE_MAX;
    unsigned char *b64 = malloc(b64_len + 1);
    char *body = malloc(sizeof(head) + 16 * b64_len + sizeof(tail));
    int drop_pad = style == B64_MIXED && rng() % 2 == 0;

    assert_non_null(b64);
    assert_non_null(body);
    EVP_EncodeBlock(b64, img, (int)n);
    memcpy(body, head, at);
    for (size_t i = 0; i < b64_len; i++) {
        if (i == bad_at) {
            const char *s = spoil[rng() % 8];

            memcpy(body + at, s, strlen(s));
            at += strlen(s);
        }
        if (b64[i] != '=' || !drop_pad)
            at += put_b64_char(body + at, (char)b64[i], style);
    }
    memcpy(body + at, tail, sizeof(tail));
    *len = at + sizeof(tail) - 1;
    free(b64);
    return body;
}

/* Feeds body whole and in four chunkings; each must decode to img. */
static void
check_styled(const char *name, const char *body, size_t len,
             const unsigned char *img, size_t n, int bad)
{
    static const size_t chunks[] = { 0, 3, 7, 4096, 70000 };
    struct outcome o;

    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        run(body, len, chunks[c], 200, NULL, NULL, &o);
        if (bad && strstr(o.r.message, "bad base64") == NULL)
            fail_msg("%s, %zu bytes, chunks of up to %zu: %s", name, n,
                     chunks[c], o.r.message);
        if (!bad && (o.r.cls != ANSWER_OK || o.image_len != n ||
                     memcmp(o.image, img, n) != 0))
            fail_msg("%s, %zu bytes, chunks of up to %zu: %s", name, n,
                     chunks[c], o.r.message);
        outcome_free(&o);
    }
}

static void
test_fast_matches_slow(void **state)
{
    /* Around group, chunk and write-buffer (192 KiB) edges. */
    static const size_t sizes[] = {
        1, 2, 3, 4, 5, 11, 12, 13, 3071, 3072, 12288, 12290,
        3 * 64 * 1024 - 1, 3 * 64 * 1024 + 2, 2 * 3 * 64 * 1024 + 1,
    };
    static const char *const names[] = { "plain", "escaped", "mixed" };
    size_t max = 2 * 3 * 64 * 1024 + 1, len;
    unsigned char *img = malloc(max);

    assert_non_null(img);
    rng_state = 0x5eed;
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t n = sizes[s];

        for (size_t i = 0; i < n; i++)
            img[i] = (unsigned char)(rng() >> 24);
        for (int style = B64_PLAIN; style <= B64_MIXED; style++) {
            for (int bad = 0; bad <= 1; bad++) {
                char *body = styled_answer(img, n, style, bad, &len);

                check_styled(names[style], body, len, img, n, bad);
                free(body);
            }
        }
    }
    free(img);
}

static void
test_skeleton_limit(void **state)
{
    size_t n = 5u * 1024 * 1024, len;
    char *body = malloc(n + 64);
    struct answer *a = answer_new(NULL);
    struct answer_result r;

    assert_non_null(body);
    len = (size_t)snprintf(body, 64, "{\"candidates\":[],\"x\":\"");
    memset(body + len, 'a', n);
    len += n;
    memcpy(body + len, "\"}", 2);
    len += 2;
    assert_int_equal(answer_feed(a, body, len), NB_ELIMIT);
    assert_int_equal(answer_feed(a, "}", 1), NB_ELIMIT);
    answer_skeleton(a, &n);
    assert_int_equal(n, 4u * 1024 * 1024);
    answer_classify(a, 200, 0, NULL, NULL, &r);
    assert_int_equal(r.cls, ANSWER_TRANSIENT);
    assert_non_null(strstr(r.message, "4 MiB"));
    answer_free(a);

    /* A huge HTML error page keeps what fits and is still HTML. */
    a = answer_new(NULL);
    memcpy(body, "<html>", 6);
    assert_int_equal(answer_feed(a, body, len), NB_ELIMIT);
    answer_classify(a, 502, 0, NULL, NULL, &r);
    assert_int_equal(r.cls, ANSWER_TRANSIENT);
    assert_string_equal(r.message, "HTTP 502 from the server (HTML page)");
    answer_free(a);
    free(body);
}

static void
test_too_many_images(void **state)
{
    struct answer *a = answer_new(NULL);
    struct answer_result r;
    const char *part = "{\"inlineData\":{\"data\":\"QUJD\"}},";
    int rc = 0;

    rc = answer_feed(a, "{\"candidates\":[{\"content\":{\"parts\":[", 37);
    for (int i = 0; i < 40 && rc == 0; i++)
        rc = answer_feed(a, part, strlen(part));
    assert_int_equal(rc, NB_ELIMIT);
    answer_classify(a, 200, 0, NULL, NULL, &r);
    assert_int_equal(r.cls, ANSWER_TRANSIENT);
    assert_non_null(strstr(r.message, "more than 32 images"));
    answer_free(a);
}

static void
test_tmpdir_missing(void **state)
{
    struct answer *a = answer_new("/nonexistent/nbbatch-test");
    struct answer_result r;
    const char *body = "{\"candidates\":[{\"content\":{\"parts\":["
                       "{\"inlineData\":{\"data\":\"QUJD\"}}]}}]}";

    assert_int_equal(answer_feed(a, body, strlen(body)), NB_EIO);
    assert_int_equal(answer_feed(a, "x", 1), NB_EIO);
    answer_classify(a, 200, 0, NULL, NULL, &r);
    assert_int_equal(r.cls, ANSWER_TRANSIENT);
    assert_non_null(strstr(r.message, "/nonexistent/nbbatch-test"));
    answer_free(a);
}

static void
test_image_fd_owned(void **state)
{
    struct answer *a = answer_new(NULL);
    struct answer_result r;
    const char *body = "{\"candidates\":[{\"content\":{\"parts\":["
                       "{\"inlineData\":{\"data\":\"QUJD\"}}]}}]}";
    char got[4] = "";

    assert_int_equal(answer_feed(a, body, strlen(body)), 0);
    answer_classify(a, 200, 0, NULL, NULL, &r);
    assert_int_equal(r.cls, ANSWER_OK);
    assert_int_equal(read(r.image_fd, got, 3), 3);
    assert_memory_equal(got, "ABC", 3);
    answer_free(a);
    assert_int_equal(fcntl(r.image_fd, F_GETFD), -1);
    answer_free(NULL);
}

static void
test_no_answer(void **state)
{
    struct answer_result r;

    answer_classify(NULL, 0, 0, NULL, NULL, &r);
    assert_int_equal(r.cls, ANSWER_TRANSIENT);
    assert_int_equal(r.image_fd, -1);
    assert_string_equal(r.message, "no HTTP answer came");
    answer_classify(NULL, 0, 1, "Connection timed out after 30001 ms",
                    NULL, &r);
    assert_string_equal(r.message,
                        "transfer failed: Connection timed out after 30001 "
                        "ms");
    answer_classify(NULL, 503, 0, NULL, NULL, &r);
    assert_string_equal(r.message,
                        "HTTP 503 from the server with an empty body");
}

static void
test_parse_duration(void **state)
{
    static const struct {
        const char *s;
        int rc;
        int64_t ms;
    } cases[] = {
        {"38s", 0, 38000}, {"45.837906927s", 0, 45838}, {"0.5s", 0, 500},
        {"1.0001s", 0, 1001}, {"0s", 0, 0}, {"1.000000000s", 0, 1000},
        {"315576000000s", 0, 315576000000000}, {"007s", 0, 7000},
        {"s", NB_EINVAL, 0}, {"1.s", NB_EINVAL, 0}, {".5s", NB_EINVAL, 0},
        {"1.1234567890s", NB_EINVAL, 0}, {"-1s", NB_EINVAL, 0},
        {"1s ", NB_EINVAL, 0}, {" 1s", NB_EINVAL, 0}, {"", NB_EINVAL, 0},
        {"1", NB_EINVAL, 0}, {"1m", NB_EINVAL, 0}, {"1ms", NB_EINVAL, 0},
        {"1234567890123s", NB_EINVAL, 0}, {"1e3s", NB_EINVAL, 0},
    };
    int64_t ms;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ms = -42;
        if (answer_parse_duration(cases[i].s, &ms) != cases[i].rc)
            fail_msg("duration \"%s\": wrong return", cases[i].s);
        if (ms != (cases[i].rc == 0 ? cases[i].ms : -42))
            fail_msg("duration \"%s\": %lld ms", cases[i].s, (long long)ms);
    }
    assert_int_equal(answer_parse_duration(NULL, &ms), NB_EINVAL);
}

static void
test_retry_after_header(void **state)
{
    const char *body = "{\"error\":{\"code\":503,\"message\":\"busy\","
                       "\"status\":\"UNAVAILABLE\"}}";
    struct answer_result r;
    char date[64];
    time_t t = time(NULL) + 60;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    answer_classify_error(body, strlen(body), 503, date, &r);
    assert_true(r.retry_after_ms >= 58000 && r.retry_after_ms <= 60000);

    answer_classify_error(body, strlen(body), 503,
                          "Sun, 06 Nov 1994 08:49:37 GMT", &r);
    assert_int_equal(r.retry_after_ms, 0);
    answer_classify_error(body, strlen(body), 503, " 120 ", &r);
    assert_int_equal(r.retry_after_ms, 120000);
    answer_classify_error(body, strlen(body), 503, "soon", &r);
    assert_int_equal(r.retry_after_ms, -1);
    answer_classify_error(body, strlen(body), 503, "12abc", &r);
    assert_int_equal(r.retry_after_ms, -1);
    answer_classify_error(body, strlen(body), 503,
                          "Sun, 06 Nov 1994 08:49:37 PST", &r);
    assert_int_equal(r.retry_after_ms, -1);

    /* A long Retry-After on a 429 is a per-day quota too. */
    answer_classify_error(body, strlen(body), 429, "86400", &r);
    assert_int_equal(r.cls, ANSWER_FATAL);
    assert_int_equal(r.quota_per_day, 1);
    assert_int_equal(r.quota_per_minute, 0);
}

static int
valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p != '\0') {
        int n = *p < 0x80 ? 0 : *p >= 0xf0 ? 3 : *p >= 0xe0 ? 2 : 1;

        if (*p >= 0x80 && *p < 0xc2)
            return 0;
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xc0) != 0x80)
                return 0;
    }
    return 1;
}

static void
test_message_one_line(void **state)
{
    char body[4096];
    size_t at;
    struct answer_result r;

    at = (size_t)snprintf(body, sizeof(body),
                          "{\"error\":{\"code\":500,\"status\":\"INTERNAL\","
                          "\"message\":\"a\\n\\n\\t b\\u0000c\"}}");
    answer_classify_error(body, at, 500, NULL, &r);
    /* \u0000 is refused by jansson: the body is then plain text. */
    assert_null(strchr(r.message, '\n'));

    at = (size_t)snprintf(body, sizeof(body),
                          "{\"error\":{\"code\":500,\"status\":\"INTERNAL\","
                          "\"message\":\"a\\n\\n\\t b\\r\\nc  \"}}");
    answer_classify_error(body, at, 500, NULL, &r);
    assert_string_equal(r.message, "HTTP 500 INTERNAL: a b c");

    at = (size_t)snprintf(body, sizeof(body), "{\"error\":{\"code\":500,"
                          "\"message\":\"");
    for (int i = 0; i < 600; i++)
        at += (size_t)snprintf(body + at, sizeof(body) - at, "\xc3\xa9");
    at += (size_t)snprintf(body + at, sizeof(body) - at, "\"}}");
    answer_classify_error(body, at, 500, NULL, &r);
    assert_true(strlen(r.message) < sizeof(r.message));
    assert_true(strlen(r.message) > 500);
    assert_true(valid_utf8(r.message));
    assert_string_equal(r.message + strlen(r.message) - 3, "...");

    /* Bytes that are no UTF-8 in a text body become '?'. */
    answer_classify_error("bad \xff\xfe body", 11, 502, NULL, &r);
    assert_string_equal(r.message, "HTTP 502 from the server: bad ?? body");
}

static void
test_class_names(void **state)
{
    assert_string_equal(answer_class_name(ANSWER_OK), "ok");
    assert_string_equal(answer_class_name(ANSWER_TRANSIENT), "transient");
    assert_string_equal(answer_class_name(ANSWER_SOFT), "soft");
    assert_string_equal(answer_class_name(ANSWER_PERMANENT), "permanent");
    assert_string_equal(answer_class_name(ANSWER_FATAL), "fatal");
    assert_string_equal(answer_class_name(99), "unknown");
}

static void
test_status_table(void **state)
{
    static const struct {
        int status;
        int cls;
    } cases[] = {
        {400, ANSWER_PERMANENT}, {401, ANSWER_FATAL}, {403, ANSWER_FATAL},
        {404, ANSWER_FATAL}, {408, ANSWER_TRANSIENT},
        {409, ANSWER_PERMANENT}, {413, ANSWER_PERMANENT},
        {429, ANSWER_TRANSIENT}, {500, ANSWER_TRANSIENT},
        {502, ANSWER_TRANSIENT}, {503, ANSWER_TRANSIENT},
        {504, ANSWER_TRANSIENT}, {599, ANSWER_TRANSIENT},
        {302, ANSWER_TRANSIENT},
    };
    struct answer_result r;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        answer_classify_error("", 0, cases[i].status, NULL, &r);
        if (r.cls != cases[i].cls)
            fail_msg("HTTP %d: %s", cases[i].status,
                     answer_class_name(r.cls));
    }
}

/* ---- request_build ---------------------------------------------------- */

static char tmp_dir[64];

static void
write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static int
setup_tmp(void **state)
{
    snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/nbbatch-test-XXXXXX");
    return mkdtemp(tmp_dir) != NULL ? 0 : -1;
}

static int
teardown_tmp(void **state)
{
    static const char *const names[] = {"a.png", "b.jpg", "c.txt", NULL};
    char path[128];

    for (int i = 0; names[i] != NULL; i++) {
        snprintf(path, sizeof(path), "%s/%s", tmp_dir, names[i]);
        unlink(path);
    }
    return rmdir(tmp_dir);
}

static json_t *
build(const struct request_spec *s, int want_rc, char *err, size_t errlen)
{
    char *body = NULL;
    size_t len = 0;
    json_t *root;
    int rc = request_build(s, &body, &len, err, errlen);

    if (rc != want_rc)
        fail_msg("request_build: %d (%s), want %d", rc, err, want_rc);
    if (rc != 0)
        return NULL;
    assert_int_equal(strlen(body), len);
    root = json_loadb(body, len, 0, NULL);
    assert_non_null(root);
    free(body);
    return root;
}

static const json_t *
at_path(const json_t *j, const char *path)
{
    char key[64];

    while (*path != '\0') {
        size_t n = strcspn(path, ".");

        memcpy(key, path, n);
        key[n] = '\0';
        if (key[0] >= '0' && key[0] <= '9')
            j = json_array_get(j, (size_t)strtoul(key, NULL, 10));
        else
            j = json_object_get(j, key);
        path += n + (path[n] == '.');
    }
    return j;
}

static const char *
str_at(const json_t *j, const char *path)
{
    return json_string_value(at_path(j, path));
}

static void
test_request_text_only(void **state)
{
    struct request_spec s = {.prompt = "a red fox, \"quoted\" / é",
                             .model = "gemini-3-pro-image-preview",
                             .aspect = "16:9", .size = "2K"};
    char err[256];
    json_t *root = build(&s, 0, err, sizeof(err));

    assert_string_equal(str_at(root, "contents.0.role"), "user");
    assert_string_equal(str_at(root, "contents.0.parts.0.text"), s.prompt);
    assert_int_equal(json_array_size(at_path(root, "contents.0.parts")), 1);
    assert_string_equal(
        str_at(root, "generationConfig.responseModalities.0"), "TEXT");
    assert_string_equal(
        str_at(root, "generationConfig.responseModalities.1"), "IMAGE");
    assert_string_equal(
        str_at(root, "generationConfig.imageConfig.aspectRatio"), "16:9");
    assert_string_equal(
        str_at(root, "generationConfig.imageConfig.imageSize"), "2K");
    assert_int_equal(json_object_size(root), 2);
    json_decref(root);

    /* 2.5-flash-image takes no imageSize. */
    s.model = "gemini-2.5-flash-image";
    s.size = "1K";
    root = build(&s, 0, err, sizeof(err));
    assert_null(at_path(root, "generationConfig.imageConfig.imageSize"));
    assert_string_equal(
        str_at(root, "generationConfig.imageConfig.aspectRatio"), "16:9");
    json_decref(root);

    s.aspect = NULL;
    s.size = NULL;
    root = build(&s, 0, err, sizeof(err));
    assert_null(at_path(root, "generationConfig.imageConfig"));
    json_decref(root);

    s.prompt = "bad \xff utf-8";
    build(&s, NB_EINVAL, err, sizeof(err));
    assert_non_null(strstr(err, "UTF-8"));
    assert_int_equal(request_build(NULL, NULL, NULL, err, sizeof(err)),
                     NB_EINVAL);
}

static void
test_request_references(void **state)
{
    static const unsigned char png[] = "\x89PNG\r\n\x1a\n-not-really-a-png";
    static const unsigned char jpg[] = "\xff\xd8\xff\xe0-jpeg-bytes/+?";
    char a[128], b[128], c[128], ha[65], hb[65], err[512];
    const char *paths[2] = {a, b};
    const char *digests[2] = {ha, hb};
    struct request_spec s = {.prompt = "put the cat on the sofa",
                             .model = "gemini-3-pro-image-preview",
                             .n_refs = 2, .ref_paths = paths};
    unsigned char decoded[64];
    json_t *root;

    snprintf(a, sizeof(a), "%s/a.png", tmp_dir);
    snprintf(b, sizeof(b), "%s/b.jpg", tmp_dir);
    snprintf(c, sizeof(c), "%s/c.txt", tmp_dir);
    write_file(a, png, sizeof(png) - 1);
    write_file(b, jpg, sizeof(jpg) - 1);
    write_file(c, "just text", 9);
    jobkey_sha256_hex(png, sizeof(png) - 1, ha);
    jobkey_sha256_hex(jpg, sizeof(jpg) - 1, hb);

    root = build(&s, 0, err, sizeof(err));
    assert_string_equal(str_at(root, "contents.0.parts.1.inlineData.mimeType"),
                        "image/png");
    assert_string_equal(str_at(root, "contents.0.parts.2.inlineData.mimeType"),
                        "image/jpeg");
    assert_int_equal(EVP_DecodeBlock(decoded, (const unsigned char *)
        str_at(root, "contents.0.parts.2.inlineData.data"),
        (int)strlen(str_at(root, "contents.0.parts.2.inlineData.data"))),
        (sizeof(jpg) - 1 + 2) / 3 * 3);
    assert_memory_equal(decoded, jpg, sizeof(jpg) - 1);
    assert_null(at_path(root, "generationConfig.imageConfig"));
    json_decref(root);

    s.ref_sha256 = digests;
    root = build(&s, 0, err, sizeof(err));
    json_decref(root);

    /* The JPEG changed since it was added. */
    write_file(b, "\xff\xd8\xff\xe0-other", 10);
    build(&s, NB_EINVAL, err, sizeof(err));
    assert_non_null(strstr(err, "changed since it was added"));
    assert_non_null(strstr(err, b));

    unlink(b);
    build(&s, NB_EIO, err, sizeof(err));
    assert_non_null(strstr(err, b));

    paths[1] = c;
    s.ref_sha256 = NULL;
    build(&s, NB_EIMAGE, err, sizeof(err));
    assert_non_null(strstr(err, c));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canned_answers),
        cmocka_unit_test(test_big_answer),
        cmocka_unit_test(test_escaped_everywhere),
        cmocka_unit_test(test_base64_edges),
        cmocka_unit_test(test_fast_matches_slow),
        cmocka_unit_test(test_skeleton_limit),
        cmocka_unit_test(test_too_many_images),
        cmocka_unit_test(test_tmpdir_missing),
        cmocka_unit_test(test_image_fd_owned),
        cmocka_unit_test(test_no_answer),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_retry_after_header),
        cmocka_unit_test(test_message_one_line),
        cmocka_unit_test(test_class_names),
        cmocka_unit_test(test_status_table),
        cmocka_unit_test_setup_teardown(test_request_text_only, setup_tmp,
                                        teardown_tmp),
        cmocka_unit_test_setup_teardown(test_request_references, setup_tmp,
                                        teardown_tmp),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
