/*
 * scenario.h - what the simulator should do, read from a scenario file.
 *
 * A scenario file is "key = value" lines, '#' comments and blank lines.
 * The record below is plain data: scenario_init() fills in the defaults,
 * scenario_load() overrides them from a file, and the server only reads
 * it afterwards.  Nothing here allocates, so there is nothing to free.
 */
#ifndef NBSIM_SCENARIO_H
#define NBSIM_SCENARIO_H

#include <stddef.h>
#include <stdint.h>

#define SCENARIO_MAX_MODELS   32
#define SCENARIO_MODEL_LEN    96
#define SCENARIO_KEY_LEN      256
#define SCENARIO_MAX_OUTAGES  64

/* Faults drawn per generate request.  The order is the order of the
 * cumulative draw and of the names in scenario_fault_name(). */
enum scenario_fault {
    SCENARIO_F500,
    SCENARIO_F502,
    SCENARIO_F503,
    SCENARIO_F504,
    SCENARIO_F408,
    SCENARIO_F429,
    SCENARIO_F429BARE,
    SCENARIO_FRESET,
    SCENARIO_FTRUNCATE,
    SCENARIO_FHANG,
    SCENARIO_FSLOW,
    SCENARIO_FMALFORMED,
    SCENARIO_FBADBASE64,
    SCENARIO_FCORRUPT,
    SCENARIO_FNOIMAGE,
    SCENARIO_FTEXTONLY,
    SCENARIO_FSAFETY,
    SCENARIO_FBLOCKED,
    SCENARIO_NFAULTS
};

enum scenario_dims { SCENARIO_DIMS_TINY, SCENARIO_DIMS_REAL };
enum scenario_format {
    SCENARIO_FORMAT_PNG,
    SCENARIO_FORMAT_JPEG,       /* JPEG bytes labelled image/png */
    SCENARIO_FORMAT_MIXED
};
enum scenario_state_names {
    SCENARIO_STATES_BATCH,      /* BATCH_STATE_*, as REST sends */
    SCENARIO_STATES_JOB         /* JOB_STATE_*, as the SDKs spell them */
};
enum scenario_thoughts {
    SCENARIO_THOUGHTS_AUTO,     /* only for gemini-3* models */
    SCENARIO_THOUGHTS_ON,
    SCENARIO_THOUGHTS_OFF
};

/* A window, in seconds after the server starts, during which every
 * generate answer has the given HTTP status. */
struct scenario_outage {
    double start_s;
    double end_s;
    int status;
};

struct scenario {
    uint64_t seed;
    char key[SCENARIO_KEY_LEN];             /* the one valid API key */
    char models[SCENARIO_MAX_MODELS][SCENARIO_MODEL_LEN];
    size_t nmodels;
    enum scenario_dims dims;
    enum scenario_format format;
    double jpeg_rate;                       /* for format = mixed */
    enum scenario_thoughts thoughts;
    long latency_ms;
    long latency_jitter_ms;
    double fault[SCENARIO_NFAULTS];         /* each 0..1, sum <= 1 */
    long retry_delay_ms;                    /* for fault.429 */
    long hang_ms;
    long slow_ms;
    long rpm;                               /* 0: unlimited */
    long rpd;                               /* 0: unlimited */
    struct scenario_outage outages[SCENARIO_MAX_OUTAGES];
    size_t noutages;
    /* Batch API */
    long batch_pending_ms;                  /* PENDING this long */
    long batch_run_ms;                      /* terminal this long after
                                               creation */
    long batch_expire;                      /* first N batches EXPIRED */
    long batch_fail;                        /* next N FAILED */
    double batch_line_fault;                /* error lines, 0..1 */
    double batch_create_lost;               /* create answer lost */
    double batch_http_fault;                /* get/list/upload/download
                                               answer 502 or 503 */
    enum scenario_state_names batch_state_names;
};

/* Fills sc with the defaults: seed 1, key "sim-key", the seven image
 * models, tiny PNG images, automatic thoughts, no latency, no faults, no
 * quota, no outage; batches pending 200 ms and done at 1000 ms, all
 * succeeding, BATCH_STATE_* names. */
void scenario_init(struct scenario *sc);

/* Reads the scenario file at path (borrowed) over the values already in
 * sc.  Returns 0, or -1 with a message naming the file, the line and the
 * key written to err (errlen bytes); sc may then be partly changed. */
int scenario_load(struct scenario *sc, const char *path,
                  char *err, size_t errlen);

/* The scenario name of a fault without its "fault." prefix ("502",
 * "429bare", "reset"...); a static string. */
const char *scenario_fault_name(enum scenario_fault f);

/* 1 when model (borrowed) is in the scenario's model list. */
int scenario_has_model(const struct scenario *sc, const char *model);

#endif
