/*
 * test_config.c - the configuration file: every section and key, every
 * kind of bad value with its "FILE:LINE: KEY: message", and where the
 * file is looked for.
 *
 * Files for config_load() go to a private temporary folder; HOME and
 * XDG_CONFIG_HOME point into it so that the user's own config is never
 * read.
 */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "queue/nberr.h"
#include "runner/config.h"

static char tmpdir[256];

static int
parse(const char *text, struct config *cfg, char *err, size_t errlen)
{
    return config_parse(text, strlen(text), "/etc/nb/test.conf", cfg, err,
                        errlen);
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static int
setup_dir(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/nbconfig-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    setenv("HOME", tmpdir, 1);
    unsetenv("XDG_CONFIG_HOME");
    return 0;
}

static int
remove_one(const char *path, const struct stat *st, int flag,
           struct FTW *ftw)
{
    return remove(path);
}

static int
remove_tree(void **state)
{
    return nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void
test_full_file(void **state)
{
    static const char text[] =
        "\xef\xbb\xbf# nbbatch configuration\n"
        "\n"
        "[defaults]\n"
        "model = gemini-3-pro-image\n"
        "Workers = 8   # more is not faster\n"
        "timeout = 2m\r\n"
        "key_file = ~/.secrets/gemini\n"
        "budget = 12.5\n"
        "tz = Europe/Berlin\n"
        "\n"
        "[endpoint]\n"
        "base_url = https://generativelanguage.googleapis.com\n"
        "[endpoint backup-1]\n"
        "base_url = \"http://127.0.0.1:8080/#frag\"\n"
        "key_file = keys/backup\n"
        "[ENDPOINT second]\n"
        "key_file = /abs/key\n"
        "\n"
        "[model gemini-3-pro-image]\n"
        "rpm = 20\n"
        "rpd = 1000\n"
        "fallback = gemini-2.5-flash-image\n"
        "price_1K = 0.134\n"
        "price_4k = 0.24\n"
        "output_price_per_mtok = 120\n"
        "batch_discount = 0.5\n"
        "[model \"gemini-2.5-flash-image\"]\n"
        "price_512 = 0\n"
        "\n"
        "[offpeak]\n"
        "windows = 22:00-06:00, 12:30-13:30\n"
        "tz = America/Los_Angeles\n"
        "\n"
        "[breaker]\n"
        "failures = 3\n"
        "window = 50\n"
        "failure_rate = 0.25\n"
        "cooldown = 45\n"
        "max_cooldown = 1h\n"
        "[batch]\n"
        "poll = 20s\n"
        "chunk = 50\n";
    struct config *cfg = malloc(sizeof(*cfg));
    const struct config_model *m;
    char err[512] = "", want[512];

    assert_non_null(cfg);
    if (parse(text, cfg, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_string_equal(cfg->path, "/etc/nb/test.conf");
    assert_string_equal(cfg->model, "gemini-3-pro-image");
    assert_int_equal(cfg->workers, 8);
    assert_int_equal(cfg->timeout_s, 120);
    snprintf(want, sizeof(want), "%s/.secrets/gemini", tmpdir);
    assert_string_equal(cfg->key_file, want);
    assert_true(cfg->budget_usd == 12.5);
    assert_string_equal(cfg->tz, "Europe/Berlin");

    assert_int_equal(cfg->n_endpoints, 3);
    assert_string_equal(cfg->endpoints[0].name, "");
    assert_string_equal(cfg->endpoints[0].base_url,
                        "https://generativelanguage.googleapis.com");
    assert_string_equal(cfg->endpoints[0].key_file, "");
    assert_string_equal(cfg->endpoints[1].name, "backup-1");
    assert_string_equal(cfg->endpoints[1].base_url,
                        "http://127.0.0.1:8080/#frag");
    assert_string_equal(cfg->endpoints[1].key_file, "/etc/nb/keys/backup");
    assert_string_equal(cfg->endpoints[2].name, "second");
    assert_string_equal(cfg->endpoints[2].key_file, "/abs/key");

    assert_int_equal(cfg->n_models, 2);
    m = config_model(cfg, "gemini-3-pro-image");
    assert_non_null(m);
    assert_int_equal(m->rpm, 20);
    assert_int_equal(m->rpd, 1000);
    assert_string_equal(m->fallback, "gemini-2.5-flash-image");
    assert_true(m->price_1k == 0.134);
    assert_true(m->price_4k == 0.24);
    assert_true(m->price_512 < 0);          /* unset */
    assert_true(m->price_2k < 0);
    assert_true(m->input_price_per_mtok < 0);
    assert_true(m->output_price_per_mtok == 120);
    assert_true(m->batch_discount == 0.5);
    m = config_model(cfg, "gemini-2.5-flash-image");
    assert_non_null(m);
    assert_true(m->price_512 == 0);
    assert_int_equal(m->rpm, 0);
    assert_null(config_model(cfg, "gemini-3.1-flash-image"));

    assert_int_equal(cfg->offpeak.n, 2);
    assert_int_equal(cfg->offpeak.span[1].start_min, 12 * 60 + 30);
    assert_string_equal(config_offpeak_tz(cfg), "America/Los_Angeles");

    assert_int_equal(cfg->breaker.failures, 3);
    assert_int_equal(cfg->breaker.window, 50);
    assert_true(cfg->breaker.failure_rate == 0.25);
    assert_int_equal(cfg->breaker.cooldown_ms, 45000);
    assert_int_equal(cfg->breaker.max_cooldown_ms, 3600000);
    assert_int_equal(cfg->batch_poll_ms, 20000);
    assert_int_equal(cfg->batch_chunk, 50);
    free(cfg);
}

static void
test_defaults(void **state)
{
    struct config cfg;
    char err[256];

    memset(&cfg, 0x55, sizeof(cfg));
    assert_int_equal(parse("", &cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg.model, "");
    assert_int_equal(cfg.workers, 0);
    assert_int_equal(cfg.n_endpoints, 1);
    assert_string_equal(cfg.endpoints[0].base_url, "");
    assert_int_equal(cfg.n_models, 0);
    assert_int_equal(cfg.offpeak.n, 0);
    assert_null(config_offpeak_tz(&cfg));
    assert_int_equal(cfg.breaker.failures, 5);
    assert_int_equal(cfg.breaker.window, 20);
    assert_true(cfg.breaker.failure_rate == 0.5);
    assert_int_equal(cfg.breaker.cooldown_ms, 30000);
    assert_int_equal(cfg.breaker.max_cooldown_ms, 600000);

    /* [defaults] tz serves the windows when [offpeak] has none */
    assert_int_equal(parse("[defaults]\ntz = Asia/Tokyo\n[offpeak]\n"
                           "windows = 01:00-02:00\n", &cfg, err,
                           sizeof(err)), 0);
    assert_string_equal(config_offpeak_tz(&cfg), "Asia/Tokyo");
}

static void
test_errors(void **state)
{
    static const struct {
        const char *text;
        const char *says;
    } bad[] = {
        {"[defaults]\nworkers = 0\n",
         "test.conf:2: workers: 0 is out of range (1 to 4096)"},
        {"[defaults]\nworkers = eight\n",
         "test.conf:2: workers: \"eight\" is not a whole number"},
        {"[defaults]\nworkers = 5000\n", ":2: workers: 5000 is out of range"},
        {"[defaults]\n\n# c\ntimeout = 5x\n",
         ":4: timeout: \"5x\" is not a duration"},
        {"[defaults]\ntimeout = 0\n", ":2: timeout: 0 is out of range"},
        {"[defaults]\ntimeout = 2d\n", "not a duration"},
        {"[defaults]\ntimeout = -5\n", "not a duration"},
        {"[defaults]\nbudget = 0\n",
         ":2: budget: 0 is out of range (more than 0"},
        {"[defaults]\nbudget = -3\n", ":2: budget: -3 is out of range"},
        {"[defaults]\nbudget = nan\n", ":2: budget: \"nan\" is not a number"},
        {"[defaults]\nbudget = 0x10\n", "is not a number"},
        {"[defaults]\nbudget = 5 dollars\n", "is not a number"},
        {"[defaults]\ntz = Mars/Olympus\n",
         ":2: tz: unknown time zone \"Mars/Olympus\""},
        {"[defaults]\ntz = ../etc/passwd\n", ":2: tz: \"../etc/passwd\" is "
         "not a time zone name"},
        {"[defaults]\nmodel = GPT 4\n", ":2: model: \"GPT 4\" is not a model"},
        {"[defaults]\nkey_file = ~bob/key\n",
         ":2: key_file: \"~bob/key\": ~user is not supported"},
        {"[defaults]\nkey_file =\n", ":2: key_file: empty value"},
        {"[defaults]\nkey_file = \"\"\n", ":2: key_file: empty value"},
        {"[defaults]\nworkers = 2\nworkers = 3\n",
         ":3: workers: given twice in [defaults] (first at line 2)"},
        {"[defaults]\ncolour = blue\n",
         ":2: colour: unknown key in [defaults] (model, workers, timeout, "
         "key_file, budget, tz)"},
        {"workers = 2\n", ":1: workers: outside any [section]"},
        {"[defaults]\nworkers 2\n",
         ":2: expected \"key = value\" or a [section]"},
        {"[defaults]\nmy key = 2\n", ":2: expected \"key = value\""},
        {"[defaults]\n= 2\n", ":2: expected \"key = value\""},
        {"[default]\n", ":1: [default]: unknown section"},
        {"[defaults\n", ":1: a section header is"},
        {"[defaults] x\n", ":1: a section header is"},
        {"[defaults two]\n", ":1: [defaults two]: [defaults] takes no name"},
        {"[defaults]\n[offpeak]\nwindows = 1:00-2:00\n[defaults]\n",
         ":4: [defaults]: given twice (first at line 1)"},
        {"[endpoint]\n[endpoint]\n", ":2: [endpoint]: given twice"},
        {"[endpoint]\nbase_url = ftp://x\n",
         ":2: base_url: \"ftp://x\" does not start with http:// or https://"},
        {"[endpoint]\nbase_url = https://\n", ":2: base_url: \"https://\" has "
         "no host"},
        {"[endpoint]\nbase_url = http://a b\n", "spaces and control"},
        {"[endpoint b]\nbase_url = http://x\n[endpoint b]\n",
         ":3: [endpoint b]: given twice"},
        {"[endpoint x/y]\n", ":1: [endpoint x/y]: \"x/y\" is not an endpoint"},
        {"[endpoint spare]\n\n[breaker]\n",
         ":1: [endpoint spare]: sets neither base_url nor key_file"},
        {"[endpoint spare]\n", ":1: [endpoint spare]: sets neither"},
        {"[model]\n", ":1: [model]: needs a model id"},
        {"[model Gemini]\n", ":1: [model Gemini]: \"Gemini\" is not a model"},
        {"[model gemini-x]\n[model gemini-x]\n",
         ":2: [model gemini-x]: given twice"},
        {"[model gemini-x]\nrpm = 0\n", ":2: rpm: 0 is out of range"},
        {"[model gemini-x]\nprice_2K = -0.1\n", ":2: price_2K: -0.1 is out"},
        {"[model gemini-x]\nbatch_discount = 1.5\n",
         ":2: batch_discount: 1.5 is out of range (0 to 1)"},
        {"[model gemini-x]\nfallback = gemini-x\n",
         ":2: fallback: a model cannot fall back to itself"},
        {"[model gemini-x]\nfallback = gemini-y\n[model gemini-y]\n"
         "fallback = gemini-z\n[model gemini-z]\nfallback = gemini-x\n",
         ":2: fallback: [model gemini-x] falls back to itself through"},
        {"[model gemini-x]\nmodel = gemini-y\n",
         ":2: model: unknown key in [model] (rpm, rpd, fallback"},
        {"[offpeak]\nwindows = 25:00-01:00\n",
         ":2: windows: \"25:00-01:00\": not a window"},
        {"[offpeak]\nwindows = 10:00-10:00\n", "start and end are equal"},
        {"[offpeak]\ntz = UTC\n",
         ":1: [offpeak]: windows is missing"},
        {"[offpeak]\nwindows = 1:00-2:00\ntz = Nowhere\n",
         ":3: tz: unknown time zone"},
        {"[breaker]\nfailure_rate = 0\n",
         ":2: failure_rate: 0 is out of range (more than 0, at most 1)"},
        {"[breaker]\nfailure_rate = 1.01\n", "out of range"},
        {"[breaker]\nfailures = 0\n", ":2: failures: 0 is out of range"},
        {"[breaker]\ncooldown = 10m\nmax_cooldown = 5m\n",
         ":3: max_cooldown: max_cooldown (300s) is shorter than cooldown "
         "(600s)"},
        {"[breaker]\ncooldown = 20m\n",
         ":2: cooldown: max_cooldown (600s) is shorter than cooldown"},
        {"[breaker]\ncooldown = 0s\n", ":2: cooldown: 0s is out of range"},
        {"[defaults]\nworkers = 2\0\n", ":2: NUL byte"},
    };
    struct config cfg;
    char err[512];

    config_init(&cfg);
    cfg.workers = 77;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = strlen(bad[i].text);
        int rc;

        if (strstr(bad[i].says, "NUL") != NULL)
            len += 2;
        err[0] = '\0';
        rc = config_parse(bad[i].text, len, "/etc/nb/test.conf", &cfg, err,
                          sizeof(err));
        if (rc != NB_EINVAL || strstr(err, bad[i].says) == NULL)
            fail_msg("case %zu: rc %d, \"%s\" does not contain \"%s\"", i,
                     rc, err, bad[i].says);
        assert_int_equal(strncmp(err, "/etc/nb/test.conf:", 18), 0);
        assert_int_equal(cfg.workers, 77);      /* untouched */
    }
}

static void
test_limits(void **state)
{
    char text[8192], line[5000];
    struct config cfg;
    char err[512];
    size_t n = 0;

    for (int i = 0; i < CONFIG_MAX_ENDPOINTS; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "[endpoint e%d]\nkey_file = /k%d\n", i, i);
    assert_int_equal(parse(text, &cfg, err, sizeof(err)), NB_EINVAL);
    assert_non_null(strstr(err, ":15: [endpoint e7]: more than 7 fallback"));

    n = 0;
    for (int i = 0; i <= CONFIG_MAX_MODELS; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "[model gemini-%d]\n", i);
    assert_int_equal(parse(text, &cfg, err, sizeof(err)), NB_EINVAL);
    assert_non_null(strstr(err, ":33: [model gemini-32]: more than 32"));

    memset(line, 'a', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\0';
    snprintf(text, sizeof(text), "[defaults]\n# %s\n", line);
    assert_int_equal(parse(text, &cfg, err, sizeof(err)), NB_EINVAL);
    assert_non_null(strstr(err, ":2: line longer than"));
}

static void
test_durations(void **state)
{
    int64_t ms = -1;

    assert_int_equal(config_parse_duration("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(config_parse_duration("5m", &ms), 0);
    assert_int_equal(ms, 300000);
    assert_int_equal(config_parse_duration("2h", &ms), 0);
    assert_int_equal(ms, 7200000);
    assert_int_equal(config_parse_duration("90", &ms), 0);
    assert_int_equal(ms, 90000);
    assert_int_equal(config_parse_duration("999999999999h", &ms), 0);
    ms = 1;
    assert_int_equal(config_parse_duration("9999999999999h", &ms),
                     NB_EINVAL);
    assert_int_equal(config_parse_duration("", &ms), NB_EINVAL);
    assert_int_equal(config_parse_duration("s", &ms), NB_EINVAL);
    assert_int_equal(config_parse_duration("1.5m", &ms), NB_EINVAL);
    assert_int_equal(config_parse_duration("-1", &ms), NB_EINVAL);
    assert_int_equal(config_parse_duration("5 m", &ms), NB_EINVAL);
    assert_int_equal(config_parse_duration("5ms", &ms), NB_EINVAL);
    assert_int_equal(ms, 1);
}

static void
test_load(void **state)
{
    char path[512], dir[512], err[512], want[512];
    struct config cfg;

    /* no file at the default place: all defaults */
    cfg.workers = 9;
    assert_int_equal(config_load(NULL, &cfg, err, sizeof(err)), 0);
    assert_int_equal(cfg.workers, 0);
    assert_string_equal(cfg.path, "");

    /* ~/.config/nbbatch/config */
    snprintf(dir, sizeof(dir), "%s/.config", tmpdir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(dir, sizeof(dir), "%s/.config/nbbatch", tmpdir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/config", dir);
    write_file(path, "[defaults]\nworkers = 3\nkey_file = key\n");
    assert_int_equal(config_default_path(want, sizeof(want)), 0);
    assert_string_equal(want, path);
    assert_int_equal(config_load("", &cfg, err, sizeof(err)), 0);
    assert_int_equal(cfg.workers, 3);
    assert_string_equal(cfg.path, path);
    snprintf(want, sizeof(want), "%s/key", dir);
    assert_string_equal(cfg.key_file, want);

    /* $XDG_CONFIG_HOME wins when absolute, is ignored when relative */
    setenv("XDG_CONFIG_HOME", tmpdir, 1);
    assert_int_equal(config_load(NULL, &cfg, err, sizeof(err)), 0);
    assert_int_equal(cfg.workers, 0);
    snprintf(dir, sizeof(dir), "%s/nbbatch", tmpdir);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/config", dir);
    write_file(path, "[defaults]\nworkers = 4\n");
    assert_int_equal(config_load(NULL, &cfg, err, sizeof(err)), 0);
    assert_int_equal(cfg.workers, 4);
    setenv("XDG_CONFIG_HOME", "relative/dir", 1);
    assert_int_equal(config_load(NULL, &cfg, err, sizeof(err)), 0);
    assert_int_equal(cfg.workers, 3);
    unsetenv("XDG_CONFIG_HOME");

    /* a bad default file is an error, not ignored */
    snprintf(path, sizeof(path), "%s/.config/nbbatch/config", tmpdir);
    write_file(path, "[defaults]\nworkers = many\n");
    assert_int_equal(config_load(NULL, &cfg, err, sizeof(err)), NB_EINVAL);
    snprintf(want, sizeof(want), "%s:2: workers:", path);
    assert_non_null(strstr(err, want));
    assert_int_equal(cfg.workers, 3);

    /* --config: must exist; relative paths from its folder */
    snprintf(path, sizeof(path), "%s/missing.conf", tmpdir);
    assert_int_equal(config_load(path, &cfg, err, sizeof(err)),
                     NB_ENOTFOUND);
    assert_non_null(strstr(err, "missing.conf: No such file"));
    assert_int_equal(config_load(tmpdir, &cfg, err, sizeof(err)), NB_EIO);
    assert_non_null(strstr(err, "not a regular file"));
    assert_int_equal(chdir(tmpdir), 0);
    write_file("rel.conf", "[endpoint]\nkey_file = ../k\n");
    assert_int_equal(config_load("rel.conf", &cfg, err, sizeof(err)), 0);
    snprintf(want, sizeof(want), "%s/../k", tmpdir);
    assert_string_equal(cfg.endpoints[0].key_file, want);
    assert_string_equal(cfg.path, "rel.conf");

    /* HOME unset: no default file, and "~" cannot be resolved */
    unsetenv("HOME");
    assert_int_equal(config_default_path(want, sizeof(want)), NB_ENOTFOUND);
    assert_int_equal(config_load(NULL, &cfg, err, sizeof(err)), 0);
    write_file("tilde.conf", "[defaults]\nkey_file = ~/k\n");
    assert_int_equal(config_load("tilde.conf", &cfg, err, sizeof(err)),
                     NB_EINVAL);
    assert_non_null(strstr(err, "tilde.conf:2: key_file: \"~/k\": ~ needs "
                            "HOME"));
    setenv("HOME", tmpdir, 1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_load),
    };

    return cmocka_run_group_tests(tests, setup_dir, remove_tree);
}
