/*
 * doctor.c - `nbbatch doctor`: the diagnosis a user would do by hand.
 *
 * In the order of the error guide: is a key set (shown only as set or
 * not), does the endpoint's host resolve and answer (DNS, connect, TLS
 * timings), is the key valid and the model there (models.get, which costs
 * nothing), and, only when asked with --generate, does one small real
 * generation come back with an image (that one is billed).  Each failure
 * is named with its fix.  Exit 0 only when every check passed.
 */
#include <getopt.h>
#include <stdarg.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "jobs/answer.h"
#include "jobs/models.h"
#include "jobs/request.h"
#include "queue/nberr.h"
#include "runner/advice.h"
#include "runner/apikey.h"
#include "runner/cli.h"
#include "runner/config.h"
#include "runner/http.h"
#include "runner/log.h"

#define BODY_MAX (1 << 20)

struct doctor {
    const char *model;
    const char *key_file;
    const char *config;
    int generate;
    int64_t timeout_ms;
    int failed;
    struct http *http;
};

static void
report(struct doctor *d, const char *check, int ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
report(struct doctor *d, const char *check, int ok, const char *fmt, ...)
{
    va_list ap;

    if (ok < 0)
        printf("%-10s skip  ", check);
    else
        printf("%-10s %s  ", check, ok ? "ok  " : "FAIL");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    if (ok == 0)
        d->failed = 1;
}

/* Host part of an http(s) URL into host. */
static int
url_host(const char *url, char *host, size_t len)
{
    const char *p = strstr(url, "://"), *end;
    size_t n;

    if (p == NULL)
        return -1;
    p += 3;
    if (*p == '[') {
        end = strchr(p, ']');
        if (end == NULL)
            return -1;
        p++;
    } else {
        end = p + strcspn(p, ":/");
    }
    n = (size_t)(end - p);
    if (n == 0 || n >= len)
        return -1;
    memcpy(host, p, n);
    host[n] = '\0';
    return 0;
}

static int
check_dns(struct doctor *d, const char *base)
{
    char host[256];
    struct addrinfo hints, *res = NULL;
    int64_t t0 = cli_mono_ms();
    int rc;

    if (url_host(base, host, sizeof(host)) != 0) {
        report(d, "endpoint", 0, "%s is not a URL: fix GEMINI_BASE_URL",
               base);
        return -1;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        report(d, "dns", 0, "%s does not resolve (%s): check the network, "
               "DNS or proxy settings, and GEMINI_BASE_URL", host,
               gai_strerror(rc));
        return -1;
    }
    freeaddrinfo(res);
    report(d, "dns", 1, "%s resolves (%lld ms)", host,
           (long long)(cli_mono_ms() - t0));
    return 0;
}

/* The model's supportedGenerationMethods include method?  -1 when the
 * answer does not say. */
static int
supports(const char *body, const char *method)
{
    json_t *root = json_loads(body, 0, NULL), *methods, *m;
    size_t i;
    int found = -1;

    if (root == NULL)
        return -1;
    methods = json_object_get(root, "supportedGenerationMethods");
    if (json_is_array(methods)) {
        found = 0;
        json_array_foreach(methods, i, m) {
            if (json_is_string(m) &&
                strcmp(json_string_value(m), method) == 0)
                found = 1;
        }
    }
    json_decref(root);
    return found;
}

static void
explain_error(struct doctor *d, const char *check, const char *body,
              size_t len, const struct http_result *hr)
{
    struct answer_result ar;

    answer_classify_error(body, len, hr->http_status,
                          hr->retry_after[0] ? hr->retry_after : NULL, &ar);
    report(d, check, 0, "%s%s To fix: %s", ar.message, advice_stop(ar.message),
           advice_for(hr->http_status, ar.reason, ar.api_status));
}

static int
check_model(struct doctor *d, int have_key)
{
    struct http_request req = {.method = "GET"};
    struct http_result hr;
    char path[256], *body = NULL;
    size_t len = 0;
    int rc;

    snprintf(path, sizeof(path), "/v1beta/models/%s", d->model);
    req.path = path;
    req.timeout_ms = 30000;
    rc = http_fetch(d->http, &req, &hr, &body, &len, BODY_MAX);
    if (rc != 0) {
        report(d, "connect", 0, "%s: %s. To fix: %s", http_base_url(d->http),
               hr.error, advice_for(0, NULL, NULL));
        free(body);
        return -1;
    }
    if (hr.appconnect_s > 0)
        report(d, "connect", 1, "answered in %.0f ms (connect %.0f ms, TLS "
               "%.0f ms, first byte %.0f ms)", hr.total_s * 1000,
               hr.connect_s * 1000, (hr.appconnect_s - hr.connect_s) * 1000,
               hr.starttransfer_s * 1000);
    else
        report(d, "connect", 1, "answered in %.0f ms (connect %.0f ms, no "
               "TLS, first byte %.0f ms)", hr.total_s * 1000,
               hr.connect_s * 1000, hr.starttransfer_s * 1000);
    if (hr.http_status == 200) {
        if (have_key)
            report(d, "key", 1, "accepted by the API");
        if (supports(body, "generateContent") == 0)
            report(d, "model", 0, "%s exists but does not offer "
                   "generateContent: pick an image model", d->model);
        else
            report(d, "model", 1, "%s is available", d->model);
        /* Only a note: Batch mode is needed by `add --via batch` jobs. */
        if (supports(body, "batchGenerateContent") == 1)
            report(d, "batch", 1, "%s takes Batch mode "
                   "(batchGenerateContent, half price)", d->model);
        else if (supports(body, "batchGenerateContent") == 0)
            report(d, "batch", -1, "%s does not offer batchGenerateContent: "
                   "add its jobs without --via batch", d->model);
    } else {
        explain_error(d, hr.http_status == 404 ? "model" : "key", body, len,
                      &hr);
    }
    free(body);
    return hr.http_status == 200 ? 0 : -1;
}

static void
check_generate(struct doctor *d)
{
    struct request_spec spec = {
        .prompt = "a small red circle on a white background",
        .model = d->model,
    };
    struct http_request req = {.method = "POST"};
    struct http_result hr;
    struct answer_result ar;
    struct answer *a = NULL;
    char path[256], err[256], *body = NULL;
    size_t len = 0;
    unsigned char magic[4] = {0};

    if (request_build(&spec, &req.body, &req.body_len, err,
                      sizeof(err)) != 0) {
        report(d, "generate", 0, "%s", err);
        return;
    }
    snprintf(path, sizeof(path), "/v1beta/models/%s:generateContent",
             d->model);
    req.path = path;
    req.timeout_ms = d->timeout_ms;
    http_fetch(d->http, &req, &hr, &body, &len, 64u << 20);
    a = answer_new(NULL);
    if (a == NULL || answer_feed(a, body, len) != 0) {
        report(d, "generate", 0, "cannot read the answer");
        goto out;
    }
    answer_classify(a, hr.http_status, hr.transport_error,
                    hr.transport_error ? hr.error : NULL,
                    hr.retry_after[0] ? hr.retry_after : NULL, &ar);
    if (ar.cls != ANSWER_OK) {
        report(d, "generate", 0, "%s%s (%s answer) To fix: %s", ar.message,
               advice_stop(ar.message), answer_class_name(ar.cls),
               advice_for(ar.http_status, ar.reason, ar.api_status));
        goto out;
    }
    if (pread(ar.image_fd, magic, sizeof(magic), 0) != (ssize_t)sizeof(magic))
        magic[0] = 0;
    report(d, "generate", 1, "one image in %.1f s (%lld bytes, %s)",
           hr.total_s, (long long)ar.image_bytes,
           magic[0] == 0x89 ? "PNG" : magic[0] == 0xff ? "JPEG" : "other");
out:
    answer_free(a);
    free(body);
}

static int
parse_opts(struct doctor *d, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"key-file", required_argument, NULL, 'k'},
        {"generate", no_argument, NULL, 'g'},
        {"timeout", required_argument, NULL, 't'},
        {"config", required_argument, NULL, 'c'},
        {NULL, 0, NULL, 0}
    };
    char *end;
    long v;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': d->model = optarg; break;
        case 'k': d->key_file = optarg; break;
        case 'g': d->generate = 1; break;
        case 'c': d->config = optarg; break;
        case 't':
            v = strtol(optarg, &end, 10);
            if (*end != '\0' || v < 1 || v > 3600)
                return cli_usage("doctor");
            d->timeout_ms = v * 1000;
            break;
        default:
            return cli_usage("doctor");
        }
    }
    if (optind != argc)
        return cli_usage("doctor");
    if (models_find(d->model) == NULL) {
        log_error("doctor: '%s' is not a model name", d->model);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

int
cmd_doctor(int argc, char **argv)
{
    struct doctor d = {.model = MODELS_DEFAULT, .timeout_ms = 300000};
    struct http_config cfg = {0};
    static struct config conf;
    const char *source = NULL;
    char *key = NULL, err[512];
    int status, rc;

    status = parse_opts(&d, argc, argv);
    if (status != EXIT_OK)
        return status;
    config_init(&conf);
    if (config_load(d.config, &conf, err, sizeof(err)) != 0) {
        report(&d, "config", 0, "%s", err);
        return EXIT_CONFIG;
    }
    if (d.key_file == NULL && getenv("GEMINI_API_KEY") == NULL &&
        getenv("GOOGLE_API_KEY") == NULL && conf.key_file[0] != '\0')
        d.key_file = conf.key_file;
    rc = apikey_load(d.key_file, &key, &source, err, sizeof(err));
    if (rc == 0)
        report(&d, "key", 1, "set (from %s)", source);
    else
        report(&d, "key", 0, "%s", err);
    cfg.base_url = apikey_base_url();
    if (cfg.base_url == NULL && conf.endpoints[0].base_url[0] != '\0')
        cfg.base_url = conf.endpoints[0].base_url;
    cfg.api_key = key;
    if (http_global_init() != 0)
        return EXIT_SOFTWARE;
    d.http = http_new(&cfg, err, sizeof(err));
    if (d.http == NULL) {
        report(&d, "endpoint", 0, "%s", err);
        goto out;
    }
    report(&d, "endpoint", 1, "%s%s", http_base_url(d.http),
           cfg.base_url != NULL ? " (from the environment)" : "");
    if (check_dns(&d, http_base_url(d.http)) != 0)
        goto out;
    if (check_model(&d, key != NULL) != 0 || key == NULL)
        goto out;
    if (d.generate)
        check_generate(&d);
    else
        report(&d, "generate", -1, "not tried (--generate makes one real, "
               "billed image)");
out:
    http_free(d.http);
    apikey_free(key);
    return d.failed ? EXIT_CONFIG : EXIT_OK;
}
