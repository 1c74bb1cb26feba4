/*
 * sched.h - when a job may go out: circuit breaker, quota pacing,
 * adaptive concurrency, budget and fallback routes.
 *
 * Every function is pure decision logic over plain value records: the
 * caller passes the current time (now_ms, epoch milliseconds), nothing
 * here reads a clock, touches the database, allocates or prints.  The
 * records are meant to be stored as they are (each field a column) and
 * loaded by a later run, so that a cron run a minute later inherits an
 * open breaker or a parked model.
 *
 * Outcomes.  An answer is sorted once, by sched_outcome_of(), into the
 * classes below; each mechanism reacts to its own:
 *
 *              breaker     concurrency   quota
 *   success    success     +1            -
 *   failure    failure     -             -       (500, 504, 408, network)
 *   overload   failure     halve         -       (502, 503)
 *   quota      -           halve         park    (every 429)
 *   neutral    -           -             -       (permanent, soft, fatal)
 *
 * Quota answers are the quota's business, not the endpoint's health.  A
 * permanent answer (a 400, a safety block) judges one prompt and a soft
 * one (200 without an image) is the model's choice about one prompt:
 * counting them as failures would let a batch of awkward prompts open
 * the breaker, counting them as successes would let a front end that
 * answers but cannot render close it.  So they are neither; a neutral
 * answer to a half-open probe only frees the probe slot.  502 halves the
 * concurrency as 503 does because a 502 from Google's front end is
 * usually overload (shared/error-guide.md).
 */
#ifndef NB_SCHED_H
#define NB_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "runner/config.h"

struct answer_result;

/* ---- outcomes ---------------------------------------------------- */

enum sched_outcome {
    SCHED_SUCCESS,      /* an image came back */
    SCHED_FAILURE,      /* transient, not overload: 500, 504, network */
    SCHED_OVERLOAD,     /* 502, 503 */
    SCHED_QUOTA,        /* 429, per minute or per day */
    SCHED_NEUTRAL       /* permanent, soft, fatal other than quota */
};

/* The class of a classified answer (see the table above). */
int sched_outcome_of(const struct answer_result *r);

/* ---- circuit breaker, one per (endpoint, model) ------------------- */

#define SCHED_WINDOW_MAX 64     /* outcomes the sliding window can hold */

enum sched_breaker_state {
    SCHED_CLOSED,
    SCHED_OPEN,
    SCHED_HALF_OPEN
};

/*
 * All zero is a closed breaker that never failed.  An open breaker
 * becomes half-open by itself when its cool-down ends (see
 * sched_breaker_state()); the stored state changes to SCHED_HALF_OPEN
 * when the probe is sent.  A probe whose answer never comes (its process
 * died) counts as lost at probe_out_until_ms and another may go.
 */
struct sched_breaker {
    int state;                  /* enum sched_breaker_state, as stored */
    int consecutive_failures;
    int window_count;           /* outcomes in window_bits, 0..64 */
    uint64_t window_bits;       /* bit i: the outcome i answers ago was a
                                   failure (store as a signed 64-bit) */
    int64_t opened_at_ms;       /* the last opening; 0: never */
    int64_t cooldown_ms;        /* length of the current opening */
    int64_t probe_sent_ms;      /* half-open: when the probe went out */
    int64_t probe_out_until_ms; /* 0: no probe out */
    int64_t closed_at_ms;       /* the last closing; 0: never */
};

/* What an outcome did to the breaker, for the log. */
enum sched_breaker_change {
    SCHED_BREAKER_SAME,
    SCHED_BREAKER_OPENED,       /* closed -> open */
    SCHED_BREAKER_REOPENED,     /* the probe failed: open, longer */
    SCHED_BREAKER_CLOSED        /* the probe succeeded */
};

/* Makes *b a closed breaker that never failed. */
void sched_breaker_init(struct sched_breaker *b);

/* 0 when *b (loaded from storage) is a record these functions can use,
 * NB_EINVAL when a field is out of range. */
int sched_breaker_check(const struct sched_breaker *b);

/* The state at now_ms: SCHED_HALF_OPEN once an open breaker's cool-down
 * is over, even before the probe goes. */
int sched_breaker_state(const struct sched_breaker *b,
                        const struct config_breaker *cfg, int64_t now_ms);

/* "closed", "open", "half-open"; "?" for anything else. */
const char *sched_breaker_state_name(int state);

/*
 * 1 when a request may be sent now: the breaker is closed, or half-open
 * with no probe out.  0 when not, with *until_ms (may be NULL) the
 * instant to ask again: the end of the cool-down or of the probe's time.
 */
int sched_breaker_allow(const struct sched_breaker *b,
                        const struct config_breaker *cfg, int64_t now_ms,
                        int64_t *until_ms);

/*
 * A request was sent at now_ms after sched_breaker_allow() said yes.
 * When the breaker is half-open this request is the probe: it is marked
 * out until now_ms + probe_timeout_ms (the request's own timeout, so that
 * a probe lost with its process does not block the breaker forever), no
 * other request is allowed meanwhile, and 1 is returned; else 0.
 */
int sched_breaker_sent(struct sched_breaker *b,
                       const struct config_breaker *cfg, int64_t now_ms,
                       int64_t probe_timeout_ms);

/*
 * The answer (enum sched_outcome) to a request sent at sent_ms arrived
 * at now_ms.  Returns an enum sched_breaker_change.  Closed: a failure
 * opens the breaker after cfg->failures in a row, or when the window of
 * the last cfg->window outcomes (at most SCHED_WINDOW_MAX) is full and
 * its failure share exceeds cfg->failure_rate; a success ends a run of
 * failures.  Half-open: the probe's success closes the breaker and
 * resets the cool-down, its failure reopens it for twice the last
 * cool-down, at most cfg->max_cooldown_ms.  Answers to requests sent
 * before the last change of state (stragglers of a burst that was in
 * flight when the breaker opened or closed) change nothing.
 */
int sched_breaker_outcome(struct sched_breaker *b,
                          const struct config_breaker *cfg, int outcome,
                          int64_t sent_ms, int64_t now_ms);

/* ---- adaptive concurrency (AIMD) ---------------------------------- */

/*
 * How many requests may be in flight.  A halving takes effect once per
 * round: a quota or overload answer to a request sent before the last
 * halving does not halve again, so a burst that was in flight when the
 * first 429 came back costs one halving, not sixteen.
 */
struct sched_aimd {
    int limit;                  /* 1..workers */
    int64_t halved_at_ms;       /* the last halving; 0: never */
};

/* Starts at workers (at least 1) in flight. */
void sched_aimd_init(struct sched_aimd *a, int workers);

/*
 * The answer (enum sched_outcome) to a request sent at sent_ms arrived
 * at now_ms: a success adds one up to workers; a quota or overload
 * answer halves the limit (never below 1) unless its request went out
 * before the last halving.  Returns 1 when the limit was halved, else 0.
 * A limit above workers (a smaller --workers than the stored run's) is
 * brought down to workers.
 */
int sched_aimd_outcome(struct sched_aimd *a, int workers, int outcome,
                       int64_t sent_ms, int64_t now_ms);

/* ---- quota pacing, per model -------------------------------------- */

/* The sliding minute, with a margin for clock skew and network jitter
 * between client and server. */
#define SCHED_MINUTE_MS 60250
#define SCHED_UNLIMITED 1000000000  /* room when no limit applies */

/* The last midnight in America/Los_Angeles at or before now_ms, when
 * the current Pacific day's quota began. */
int64_t sched_la_day_start(int64_t now_ms);

/*
 * The oldest send time sched_quota_room() looks at: now_ms minus
 * SCHED_MINUTE_MS, or the Pacific day's start when rpd is set.  The
 * caller needs to load only the sends at or after it.
 */
int64_t sched_quota_since(int rpd, int64_t now_ms);

/*
 * How many more requests of a model may be sent at now_ms: rpm and rpd
 * are its limits per minute and per Pacific day (0 or less: none),
 * parked_until_ms the end of a parking (sched_quota_park(); 0: none),
 * sent_ms[0..n_sent) the send times of the model's requests, ascending,
 * holding at least every one since sched_quota_since() (older ones are
 * ignored; sent_ms may be NULL when n_sent is 0).  A request counts
 * against the minute for SCHED_MINUTE_MS after it was sent.  Returns
 * SCHED_UNLIMITED when nothing limits; 0 when nothing may go, with
 * *next_ms (may be NULL) the first instant at which one may.
 */
int sched_quota_room(int rpm, int rpd, int64_t parked_until_ms,
                     const int64_t *sent_ms, size_t n_sent, int64_t now_ms,
                     int64_t *next_ms);

/*
 * The new end of the model's parking after a 429 answered at now_ms:
 * per_day set parks until the next Pacific midnight, a server delay
 * (retry_after_ms >= 0) parks for that long, a bare per-minute 429 does
 * not park (pacing and the halved concurrency handle it).  Never earlier
 * than parked_until_ms.
 */
int64_t sched_quota_park(int64_t parked_until_ms, int per_day,
                         int64_t retry_after_ms, int64_t now_ms);

/* ---- budget ------------------------------------------------------- */

/*
 * Estimated USD price of one image of model at size (NULL: the model's
 * default size): the [model] price_SIZE of cfg (may be NULL), else
 * models_price().  Batch mode takes off the model's batch_discount, else
 * half.  Negative when no price is known.
 */
double sched_price(const struct config *cfg, const char *model,
                   const char *size, int batch_mode);

/*
 * USD cost of one answer from its token usage: the [model]
 * input/output_price_per_mtok of cfg (may be NULL) where set, else the
 * models table (models_cost()); output_tokens includes thought tokens,
 * billed as output.  Batch discount as sched_price().  Negative when no
 * output price is known.
 */
double sched_cost(const struct config *cfg, const char *model,
                  int64_t prompt_tokens, int64_t output_tokens,
                  int batch_mode);

/*
 * A run's budget in micro-USD, so that adding and taking back the same
 * amount is exact: spent is what answers cost, reserved the estimates of
 * requests in flight.  spent + reserved never exceeds cap as long as
 * no answer costs more than its estimate.
 */
struct sched_budget {
    int64_t cap_micro;          /* 0: no cap */
    int64_t spent_micro;
    int64_t reserved_micro;
    int64_t reservations;       /* requests holding a reservation */
};

/* A budget of cap_usd (0 or less: no cap), nothing spent. */
void sched_budget_init(struct sched_budget *b, double cap_usd);

/*
 * Before a request is dispatched: reserves estimate_usd (sched_price()).
 * NB_ELIMIT when spent + reserved + estimate would pass the cap (nothing
 * reserved: do not dispatch), NB_EINVAL when there is a cap and the
 * price is unknown (estimate_usd < 0).  Without a cap it always succeeds.
 */
int sched_budget_reserve(struct sched_budget *b, double estimate_usd);

/*
 * The answer came: the reservation of estimate_usd (the same value as
 * reserved) is replaced by cost_usd (sched_cost()), or by the estimate
 * when cost_usd is negative (unknown).
 */
void sched_budget_settle(struct sched_budget *b, double estimate_usd,
                         double cost_usd);

/* The request was not billed (never sent, or an error answer): the
 * reservation of estimate_usd is given back. */
void sched_budget_release(struct sched_budget *b, double estimate_usd);

/* USD spent so far. */
double sched_budget_spent(const struct sched_budget *b);

/* ---- fallback routes ---------------------------------------------- */

/* The stored breaker of one (endpoint, model). */
struct sched_link {
    char endpoint[CONFIG_NAME_LEN];     /* config_endpoint.name, "" the
                                           primary */
    char model[CONFIG_NAME_LEN];
    struct sched_breaker breaker;
};

/* The link of (endpoint, model) in links[0..n), or NULL (borrowed). */
struct sched_link *sched_link_find(struct sched_link *links, size_t n,
                                   const char *endpoint, const char *model);

struct sched_route {
    int endpoint;               /* index into cfg->endpoints */
    const char *model;          /* borrowed from the caller's model or
                                   from cfg */
    int64_t until_ms;           /* when none allows: the earliest instant
                                   one may */
};

/*
 * Where a request for model may go at now_ms: the first (endpoint,
 * model) whose breaker allows it, trying each configured endpoint in
 * order with model, then each with model's [model] fallback, and so on
 * down the fallback chain.  A pair missing from links has a closed
 * breaker.  0 with route->endpoint and route->model set; NB_ENOTFOUND
 * when every breaker refuses, with route->until_ms set (endpoint -1,
 * model NULL).  Only breakers are asked: the caller checks the quota of
 * the model chosen.
 */
int sched_route(const struct config *cfg, const char *model,
                const struct sched_link *links, size_t n_links,
                int64_t now_ms, struct sched_route *route);

#endif
