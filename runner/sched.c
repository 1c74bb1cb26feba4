/*
 * sched.c - the scheduler's decisions: may a request go now, and how
 * many may be in flight.
 *
 * Each mechanism is a small value record and a few functions that move
 * it from one state to the next given the current time; together they
 * hold these invariants:
 *
 *   - breaker: while open nothing goes; half-open lets exactly one probe
 *     out; only outcomes of requests sent after the last change of state
 *     move it, so the burst in flight when it opened cannot reopen it or
 *     double the cool-down, nor a late straggler close it;
 *   - concurrency: one halving per round of requests, growth by one per
 *     success, always 1..workers;
 *   - quota: a request counts against the minute for SCHED_MINUTE_MS and
 *     against the day until the next Pacific midnight; the answer "may
 *     send n" never lets the (n+1)th send break either limit;
 *   - budget: kept in whole micro-dollars, so reserve and release of the
 *     same estimate cancel exactly, and a reservation that would pass the
 *     cap is refused before anything is sent.
 *
 * Deliberately absent: clocks, storage, logging, randomness.  The caller
 * (runner/run.c) owns all of those and keeps the records.
 */
#include <math.h>
#include <string.h>

#include "jobs/answer.h"
#include "jobs/models.h"
#include "queue/nberr.h"
#include "runner/sched.h"
#include "runner/window.h"

#define DAY_SPAN_MS     (26LL * 3600 * 1000)    /* longer than any day */
#define MICRO_PER_USD   1e6
#define MAX_BUDGET_USD  1e9
#define DEFAULT_BATCH_DISCOUNT 0.5

/* ---- outcomes ---------------------------------------------------- */

int
sched_outcome_of(const struct answer_result *r)
{
    if (r->http_status == 429 || r->quota_per_day || r->quota_per_minute)
        return SCHED_QUOTA;

    switch (r->cls) {
    case ANSWER_OK:
        return SCHED_SUCCESS;
    case ANSWER_TRANSIENT:
        if (r->http_status == 502 || r->http_status == 503)
            return SCHED_OVERLOAD;
        return SCHED_FAILURE;
    default:
        return SCHED_NEUTRAL;
    }
}

/* ---- circuit breaker ---------------------------------------------- */

void
sched_breaker_init(struct sched_breaker *b)
{
    memset(b, 0, sizeof(*b));
    b->state = SCHED_CLOSED;
}

int
sched_breaker_check(const struct sched_breaker *b)
{
    if (b->state != SCHED_CLOSED && b->state != SCHED_OPEN &&
        b->state != SCHED_HALF_OPEN)
        return NB_EINVAL;
    if (b->consecutive_failures < 0 || b->window_count < 0 ||
        b->window_count > SCHED_WINDOW_MAX)
        return NB_EINVAL;
    if (b->cooldown_ms < 0 || b->probe_out_until_ms < 0)
        return NB_EINVAL;
    return 0;
}

/* The window length in use: the configured one, within 1..64. */
static int
window_len(const struct config_breaker *cfg)
{
    if (cfg->window < 1)
        return 1;
    return cfg->window > SCHED_WINDOW_MAX ? SCHED_WINDOW_MAX : cfg->window;
}

/* The cool-down of an opening, kept within the configured bounds even
 * when the record was stored under another configuration. */
static int64_t
cooldown_of(const struct sched_breaker *b, const struct config_breaker *cfg)
{
    int64_t ms = b->cooldown_ms;

    if (ms < cfg->cooldown_ms)
        ms = cfg->cooldown_ms;
    if (ms > cfg->max_cooldown_ms && cfg->max_cooldown_ms >= cfg->cooldown_ms)
        ms = cfg->max_cooldown_ms;
    return ms;
}

static int64_t
reopen_at(const struct sched_breaker *b, const struct config_breaker *cfg)
{
    return b->opened_at_ms + cooldown_of(b, cfg);
}

int
sched_breaker_state(const struct sched_breaker *b,
                    const struct config_breaker *cfg, int64_t now_ms)
{
    if (b->state == SCHED_OPEN && now_ms >= reopen_at(b, cfg))
        return SCHED_HALF_OPEN;
    return b->state;
}

const char *
sched_breaker_state_name(int state)
{
    switch (state) {
    case SCHED_CLOSED:
        return "closed";
    case SCHED_OPEN:
        return "open";
    case SCHED_HALF_OPEN:
        return "half-open";
    default:
        return "?";
    }
}

static int
probe_out(const struct sched_breaker *b, int64_t now_ms)
{
    return b->probe_out_until_ms != 0 && now_ms < b->probe_out_until_ms;
}

int
sched_breaker_allow(const struct sched_breaker *b,
                    const struct config_breaker *cfg, int64_t now_ms,
                    int64_t *until_ms)
{
    int64_t until;

    switch (b->state) {
    case SCHED_OPEN:
        until = reopen_at(b, cfg);
        if (now_ms >= until)
            return 1;
        break;
    case SCHED_HALF_OPEN:
        if (!probe_out(b, now_ms))
            return 1;
        until = b->probe_out_until_ms;
        break;
    default:
        return 1;
    }
    if (until_ms != NULL)
        *until_ms = until;
    return 0;
}

int
sched_breaker_sent(struct sched_breaker *b,
                   const struct config_breaker *cfg, int64_t now_ms,
                   int64_t probe_timeout_ms)
{
    if (sched_breaker_state(b, cfg, now_ms) != SCHED_HALF_OPEN ||
        probe_out(b, now_ms))
        return 0;

    b->state = SCHED_HALF_OPEN;
    b->probe_sent_ms = now_ms;
    b->probe_out_until_ms = now_ms + (probe_timeout_ms > 0 ?
                                      probe_timeout_ms : 1);
    return 1;
}

static void
open_breaker(struct sched_breaker *b, int64_t now_ms, int64_t cooldown_ms)
{
    b->state = SCHED_OPEN;
    b->opened_at_ms = now_ms;
    b->cooldown_ms = cooldown_ms;
    b->probe_sent_ms = 0;
    b->probe_out_until_ms = 0;
}

static void
close_breaker(struct sched_breaker *b, int64_t now_ms)
{
    int64_t opened_at_ms = b->opened_at_ms;

    sched_breaker_init(b);
    b->opened_at_ms = opened_at_ms;
    b->closed_at_ms = now_ms;
}

static int
count_bits(uint64_t bits)
{
    int n = 0;

    for (; bits != 0; bits &= bits - 1)
        n++;
    return n;
}

/* Records a closed breaker's outcome; 1 when it must open. */
static int
record_closed(struct sched_breaker *b, const struct config_breaker *cfg,
              int failed)
{
    int len = window_len(cfg);
    uint64_t mask = len == 64 ? UINT64_MAX : (UINT64_C(1) << len) - 1;
    int failures;

    b->window_bits = ((b->window_bits << 1) | (failed ? 1 : 0)) & mask;
    if (b->window_count < len)
        b->window_count++;
    else
        b->window_count = len;
    b->consecutive_failures = failed ? b->consecutive_failures + 1 : 0;

    if (failed && b->consecutive_failures >= cfg->failures)
        return 1;
    failures = count_bits(b->window_bits);
    return failed && b->window_count == len &&
           failures > cfg->failure_rate * len;
}

int
sched_breaker_outcome(struct sched_breaker *b,
                      const struct config_breaker *cfg, int outcome,
                      int64_t sent_ms, int64_t now_ms)
{
    int failed = outcome == SCHED_FAILURE || outcome == SCHED_OVERLOAD;
    int64_t doubled;

    if (outcome != SCHED_SUCCESS && !failed) {
        /* Neutral or quota: a probe that got one may be tried again. */
        if (b->state == SCHED_HALF_OPEN && sent_ms >= b->probe_sent_ms)
            b->probe_out_until_ms = 0;
        return SCHED_BREAKER_SAME;
    }

    switch (b->state) {
    case SCHED_CLOSED:
        if (sent_ms < b->closed_at_ms)
            return SCHED_BREAKER_SAME;
        if (!record_closed(b, cfg, failed))
            return SCHED_BREAKER_SAME;
        open_breaker(b, now_ms, cfg->cooldown_ms);
        return SCHED_BREAKER_OPENED;
    case SCHED_HALF_OPEN:
        if (sent_ms < b->probe_sent_ms)
            return SCHED_BREAKER_SAME;
        if (!failed) {
            close_breaker(b, now_ms);
            return SCHED_BREAKER_CLOSED;
        }
        doubled = cooldown_of(b, cfg);
        doubled = doubled > cfg->max_cooldown_ms / 2 ?
                  cfg->max_cooldown_ms : doubled * 2;
        if (doubled < cfg->cooldown_ms)
            doubled = cfg->cooldown_ms;
        open_breaker(b, now_ms, doubled);
        return SCHED_BREAKER_REOPENED;
    default:
        /* Open: nothing was sent since it opened, so this is old news. */
        return SCHED_BREAKER_SAME;
    }
}

/* ---- adaptive concurrency ----------------------------------------- */

void
sched_aimd_init(struct sched_aimd *a, int workers)
{
    a->limit = workers > 1 ? workers : 1;
    a->halved_at_ms = 0;
}

int
sched_aimd_outcome(struct sched_aimd *a, int workers, int outcome,
                   int64_t sent_ms, int64_t now_ms)
{
    if (workers < 1)
        workers = 1;
    if (a->limit > workers)
        a->limit = workers;
    if (a->limit < 1)
        a->limit = 1;

    if (outcome == SCHED_SUCCESS) {
        if (a->limit < workers)
            a->limit++;
        return 0;
    }
    if (outcome != SCHED_QUOTA && outcome != SCHED_OVERLOAD)
        return 0;
    if (sent_ms < a->halved_at_ms)
        return 0;
    a->limit = a->limit > 1 ? a->limit / 2 : 1;
    a->halved_at_ms = now_ms;
    return 1;
}

/* ---- quota pacing ------------------------------------------------- */

int64_t
sched_la_day_start(int64_t now_ms)
{
    /* Days last 23 to 25 hours: a midnight lies in the 26 hours before
     * now, and stepping forward finds the last one. */
    int64_t midnight = window_next_la_midnight(now_ms - DAY_SPAN_MS);
    int64_t next;

    while ((next = window_next_la_midnight(midnight)) <= now_ms)
        midnight = next;
    return midnight;
}

int64_t
sched_quota_since(int rpd, int64_t now_ms)
{
    int64_t minute_start = now_ms - SCHED_MINUTE_MS;
    int64_t day_start;

    if (rpd <= 0)
        return minute_start;
    day_start = sched_la_day_start(now_ms);
    return day_start < minute_start ? day_start : minute_start;
}

/* The index of the first send at or after t (strict: after t). */
static size_t
first_from(const int64_t *sent_ms, size_t n, int64_t t, int strict)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (sent_ms[mid] < t || (strict && sent_ms[mid] == t))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int
clamp_room(int64_t room)
{
    if (room < 0)
        return 0;
    return room > SCHED_UNLIMITED ? SCHED_UNLIMITED : (int)room;
}

int
sched_quota_room(int rpm, int rpd, int64_t parked_until_ms,
                 const int64_t *sent_ms, size_t n_sent, int64_t now_ms,
                 int64_t *next_ms)
{
    int room = SCHED_UNLIMITED;
    int64_t next = now_ms;

    if (parked_until_ms > now_ms) {
        room = 0;
        next = parked_until_ms;
    }

    if (rpm > 0) {
        /* Sends after now - MINUTE still count; the (c - rpm)th of them,
         * oldest first, is the one whose ageing out frees a slot. */
        size_t i = first_from(sent_ms, n_sent, now_ms - SCHED_MINUTE_MS, 1);
        int64_t in_minute = (int64_t)(n_sent - i);
        int minute_room = clamp_room(rpm - in_minute);

        if (minute_room < room)
            room = minute_room;
        if (minute_room == 0 &&
            sent_ms[n_sent - (size_t)rpm] + SCHED_MINUTE_MS > next)
            next = sent_ms[n_sent - (size_t)rpm] + SCHED_MINUTE_MS;
    }

    if (rpd > 0) {
        int64_t day_start = sched_la_day_start(now_ms);
        size_t i = first_from(sent_ms, n_sent, day_start, 0);
        int day_room = clamp_room(rpd - (int64_t)(n_sent - i));
        int64_t midnight;

        if (day_room < room)
            room = day_room;
        if (day_room == 0) {
            midnight = window_next_la_midnight(now_ms);
            if (midnight > next)
                next = midnight;
        }
    }

    if (room == 0 && next_ms != NULL)
        *next_ms = next;
    return room;
}

int64_t
sched_quota_park(int64_t parked_until_ms, int per_day,
                 int64_t retry_after_ms, int64_t now_ms)
{
    int64_t until = parked_until_ms;

    if (per_day) {
        int64_t midnight = window_next_la_midnight(now_ms);

        if (midnight > until)
            until = midnight;
    }
    if (retry_after_ms >= 0 && now_ms + retry_after_ms > until)
        until = now_ms + retry_after_ms;
    return until;
}

/* ---- budget ------------------------------------------------------- */

static double
discounted(const struct config_model *m, double usd, int batch_mode)
{
    double discount = DEFAULT_BATCH_DISCOUNT;

    if (!batch_mode)
        return usd;
    if (m != NULL && m->batch_discount >= 0 && m->batch_discount <= 1)
        discount = m->batch_discount;
    return usd * (1 - discount);
}

static double
configured_price(const struct config_model *m, const char *size)
{
    if (m == NULL)
        return -1;
    if (strcmp(size, "512") == 0)
        return m->price_512;
    if (strcmp(size, "1K") == 0)
        return m->price_1k;
    if (strcmp(size, "2K") == 0)
        return m->price_2k;
    if (strcmp(size, "4K") == 0)
        return m->price_4k;
    return -1;
}

double
sched_price(const struct config *cfg, const char *model, const char *size,
            int batch_mode)
{
    const struct config_model *m = NULL;
    double price;

    if (model == NULL)
        return -1;
    if (cfg != NULL)
        m = config_model(cfg, model);
    if (size == NULL) {
        const struct model_info *info = models_find(model);

        size = info != NULL ? info->sizes[0] : "1K";
    }

    price = configured_price(m, size);
    if (price < 0)
        price = models_price(model, size, 0);
    if (price < 0)
        return -1;
    return discounted(m, price, batch_mode);
}

double
sched_cost(const struct config *cfg, const char *model,
           int64_t prompt_tokens, int64_t output_tokens, int batch_mode)
{
    const struct config_model *m = NULL;
    double in_usd, out_usd;

    if (model == NULL || prompt_tokens < 0 || output_tokens < 0)
        return -1;
    if (cfg != NULL)
        m = config_model(cfg, model);

    if (m != NULL && m->output_price_per_mtok >= 0)
        out_usd = (double)output_tokens * m->output_price_per_mtok / 1e6;
    else
        out_usd = models_cost(model, 0, output_tokens, 0);
    if (out_usd < 0)
        return -1;

    if (m != NULL && m->input_price_per_mtok >= 0)
        in_usd = (double)prompt_tokens * m->input_price_per_mtok / 1e6;
    else
        in_usd = models_cost(model, prompt_tokens, 0, 0);
    if (in_usd < 0)
        in_usd = 0;     /* no input price: counted free, as models_cost */
    return discounted(m, in_usd + out_usd, batch_mode);
}

static int64_t
to_micro(double usd)
{
    if (!(usd > 0))
        return 0;
    if (usd > MAX_BUDGET_USD)
        usd = MAX_BUDGET_USD;
    return (int64_t)llround(usd * MICRO_PER_USD);
}

void
sched_budget_init(struct sched_budget *b, double cap_usd)
{
    memset(b, 0, sizeof(*b));
    b->cap_micro = to_micro(cap_usd);
}

int
sched_budget_reserve(struct sched_budget *b, double estimate_usd)
{
    int64_t estimate = to_micro(estimate_usd);

    if (b->cap_micro > 0) {
        if (estimate_usd < 0)
            return NB_EINVAL;
        if (b->spent_micro + b->reserved_micro + estimate > b->cap_micro)
            return NB_ELIMIT;
    }
    b->reserved_micro += estimate;
    b->reservations++;
    return 0;
}

static void
unreserve(struct sched_budget *b, int64_t estimate)
{
    b->reserved_micro -= estimate;
    if (b->reserved_micro < 0)
        b->reserved_micro = 0;
    if (b->reservations > 0)
        b->reservations--;
    if (b->reservations == 0)
        b->reserved_micro = 0;
}

void
sched_budget_settle(struct sched_budget *b, double estimate_usd,
                    double cost_usd)
{
    int64_t estimate = to_micro(estimate_usd);

    unreserve(b, estimate);
    b->spent_micro += cost_usd < 0 ? estimate : to_micro(cost_usd);
}

void
sched_budget_release(struct sched_budget *b, double estimate_usd)
{
    unreserve(b, to_micro(estimate_usd));
}

double
sched_budget_spent(const struct sched_budget *b)
{
    return (double)b->spent_micro / MICRO_PER_USD;
}

/* ---- fallback routes ---------------------------------------------- */

static const struct sched_link *
find_link(const struct sched_link *links, size_t n, const char *endpoint,
          const char *model)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(links[i].endpoint, endpoint) == 0 &&
            strcmp(links[i].model, model) == 0)
            return &links[i];
    }
    return NULL;
}

struct sched_link *
sched_link_find(struct sched_link *links, size_t n, const char *endpoint,
                const char *model)
{
    const struct sched_link *l = find_link(links, n, endpoint, model);

    return l != NULL ? &links[l - links] : NULL;
}

/* The model after model in its fallback chain, or NULL. */
static const char *
next_model(const struct config *cfg, const char *model)
{
    const struct config_model *m = config_model(cfg, model);

    if (m == NULL || m->fallback[0] == '\0')
        return NULL;
    return m->fallback;
}

int
sched_route(const struct config *cfg, const char *model,
            const struct sched_link *links, size_t n_links,
            int64_t now_ms, struct sched_route *route)
{
    int64_t earliest = INT64_MAX;
    int n_endpoints = cfg->n_endpoints > 0 ? cfg->n_endpoints : 1;
    int steps = 0;

    /* config_parse() refuses loops; the step limit guards hand-made
     * configurations all the same. */
    for (; model != NULL && steps <= CONFIG_MAX_MODELS;
         model = next_model(cfg, model), steps++) {
        for (int e = 0; e < n_endpoints; e++) {
            const struct sched_link *l = find_link(
                links, n_links, cfg->endpoints[e].name, model);
            int64_t until = INT64_MAX;

            if (l == NULL ||
                sched_breaker_allow(&l->breaker, &cfg->breaker, now_ms,
                                    &until)) {
                route->endpoint = e;
                route->model = model;
                route->until_ms = now_ms;
                return 0;
            }
            if (until < earliest)
                earliest = until;
        }
    }
    route->endpoint = -1;
    route->model = NULL;
    route->until_ms = earliest;
    return NB_ENOTFOUND;
}
