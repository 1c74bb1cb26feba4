/*
 * config.h - the configuration file, read into one plain value record.
 *
 * The file is INI-like: "# comment" lines, blank lines, "[section]" or
 * "[section NAME]" headers and "key = value" lines.
 *
 *   [defaults]       model, workers, timeout, key_file, budget, tz
 *   [endpoint]       base_url, key_file           (the primary endpoint)
 *   [endpoint NAME]  base_url, key_file           (fallbacks, file order)
 *   [model ID]       rpm, rpd, fallback, price_512, price_1K, price_2K,
 *                    price_4K, input_price_per_mtok, output_price_per_mtok,
 *                    batch_discount
 *   [offpeak]        windows, tz
 *   [breaker]        failures, window, failure_rate, cooldown, max_cooldown
 *   [batch]          poll, chunk                  (Batch mode)
 *
 * Section names and keys are case-insensitive, model ids are not.  A
 * value may be put in double quotes; " #" (blank then '#') outside quotes
 * starts a comment.  Durations are "30s", "5m", "2h" or plain seconds.
 * Paths: "~/" is $HOME, a relative path is taken from the config file's
 * folder.  A section or key given twice is an error, as is every unknown
 * section or key and every value out of range.  The API key itself is
 * never here, only key_file paths.  This layer is the file only: the
 * caller lets the environment and then flags override it.
 */
#ifndef NB_CONFIG_H
#define NB_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "runner/tzone.h"
#include "runner/window.h"

#define CONFIG_MAX_ENDPOINTS 8      /* the primary and 7 fallbacks */
#define CONFIG_MAX_MODELS 32
#define CONFIG_PATH_LEN 1024
#define CONFIG_URL_LEN 512
#define CONFIG_NAME_LEN 65          /* model ids and endpoint names */
#define CONFIG_FILE_MAX (1024 * 1024)

struct config_endpoint {
    char name[CONFIG_NAME_LEN];     /* "" for the primary */
    char base_url[CONFIG_URL_LEN];  /* "": the built-in default */
    char key_file[CONFIG_PATH_LEN]; /* "": [defaults] key_file */
};

/* A [model ID] section; numbers below zero (0 for rpm, rpd) are unset. */
struct config_model {
    char id[CONFIG_NAME_LEN];
    int rpm;                        /* requests per minute */
    int rpd;                        /* requests per day */
    char fallback[CONFIG_NAME_LEN]; /* "": none; never id itself */
    double price_512, price_1k, price_2k, price_4k;     /* USD per image */
    double input_price_per_mtok;    /* USD per million tokens */
    double output_price_per_mtok;
    double batch_discount;          /* fraction off in Batch mode, 0..1 */
};

struct config_breaker {
    int failures;                   /* consecutive transient ones: 5 */
    int window;                     /* outcomes in the sliding window: 20 */
    double failure_rate;            /* over the window, (0, 1]: 0.5 */
    int64_t cooldown_ms;            /* 30 s */
    int64_t max_cooldown_ms;        /* 10 min, never below cooldown */
};

/* Unset strings are "", unset numbers 0 unless said otherwise. */
struct config {
    char path[CONFIG_PATH_LEN];     /* the file read, as given; "": none */

    /* [defaults] */
    char model[CONFIG_NAME_LEN];
    int workers;
    int timeout_s;
    char key_file[CONFIG_PATH_LEN];
    double budget_usd;              /* per run, > 0 when set */
    char tz[TZONE_NAME_MAX + 1];

    /* [endpoint] then each [endpoint NAME]: endpoints[0] is the primary
     * (all "" when the file has no [endpoint]), n_endpoints >= 1 */
    int n_endpoints;
    struct config_endpoint endpoints[CONFIG_MAX_ENDPOINTS];

    int n_models;
    struct config_model models[CONFIG_MAX_MODELS];

    /* [offpeak]: offpeak.n == 0 when unset */
    struct window_set offpeak;
    char offpeak_tz[TZONE_NAME_MAX + 1];

    struct config_breaker breaker;  /* defaults filled in */

    /* [batch]: Batch mode; 0 when unset */
    int64_t batch_poll_ms;          /* poll */
    int batch_chunk;                /* chunk */
};

/* Sets every field of *cfg to its unset value or default. */
void config_init(struct config *cfg);

/*
 * Writes the default location into buf: $XDG_CONFIG_HOME/nbbatch/config
 * (when absolute), else $HOME/.config/nbbatch/config.  NB_ENOTFOUND when
 * neither variable is usable, NB_ELIMIT when it does not fit.
 */
int config_default_path(char *buf, size_t len);

/*
 * Reads the file at path (the --config value) into *cfg; with path NULL
 * or "", reads the default location, where a missing file just means
 * all defaults.  Errors, with err saying "FILE:LINE: KEY: message" or
 * "FILE: message": NB_ENOTFOUND (a given file is missing), NB_EIO,
 * NB_ELIMIT (larger than CONFIG_FILE_MAX), NB_EINVAL (bad content),
 * NB_ENOMEM.  On failure *cfg is untouched.
 */
int config_load(const char *path, struct config *cfg, char *err,
                size_t errlen);

/*
 * Parses len bytes of text as the file called name (used in messages and,
 * for relative paths in values, for its folder) into *cfg.  Errors as
 * config_load(); *cfg is untouched on failure.
 */
int config_parse(const char *text, size_t len, const char *name,
                 struct config *cfg, char *err, size_t errlen);

/* The [model id] section, or NULL when the file has none (borrowed). */
const struct config_model *config_model(const struct config *cfg,
                                        const char *id);

/* The zone of the off-peak windows: [offpeak] tz, else [defaults] tz,
 * else NULL (the local zone).  Borrowed from cfg. */
const char *config_offpeak_tz(const struct config *cfg);

/* "30s", "5m", "2h" or plain seconds into milliseconds; NB_EINVAL for
 * anything else (negative, fractions, overflow included). */
int config_parse_duration(const char *text, int64_t *ms);

#endif
