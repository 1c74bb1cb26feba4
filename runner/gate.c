/*
 * gate.c - the scheduler's state, shared through the database.
 *
 * sched.c decides; this module remembers.  Breaker records live in the
 * queue's shared state under "breaker:ENDPOINT:MODEL" as JSON, parked
 * models under "park:MODEL" as an epoch-ms deadline, and every request to
 * a model with a quota is noted with its send time, so that a second run,
 * or a run started by cron a minute later, sees the same open breaker,
 * the same parked model and the same quota use.  A record is written only
 * when it changed.  Reading is batched: gate_refresh() re-reads at most
 * four times a second.
 *
 * The concurrency limit and the run's budget are the run's own and live
 * only in memory.  Two runs may both let a half-open probe through if
 * they decide in the same instant; that costs one request, not a flood.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jobs/answer.h"
#include "queue/nberr.h"
#include "queue/queue.h"
#include "runner/gate.h"
#include "runner/sched.h"

#define REFRESH_MS      250
#define PROBE_TIMEOUT_MS (15 * 60 * 1000)
#define MAX_LINKS       256
#define MAX_MODELS      64

struct gate_model {
    char id[CONFIG_NAME_LEN];
    const struct config_model *cfg; /* NULL: no quotas configured */
    int64_t parked_until_ms;
    int room;                       /* quota room at the last refresh,
                                       less what was admitted since */
    int64_t next_ms;                /* when room next grows */
    int fresh;                      /* read from the database at least
                                       once */
};

/* A batch's own budget: what the database says was spent, plus what
 * this run has reserved for requests in flight. */
struct gate_batch {
    int64_t id;
    double budget_usd;              /* 0: none */
    double spent_usd;
    double reserved_usd;
};

#define MAX_BATCHES 64

struct gate {
    struct queue *q;
    const struct config *cfg;
    int workers;
    int rpm_all;                    /* --rpm / --rpd: every model */
    int rpd_all;
    int64_t last_fail_sent_ms;      /* send time of the newest request
                                       that failed */
    struct sched_aimd aimd;
    struct sched_budget budget;
    int budget_reached;
    struct sched_link links[MAX_LINKS];
    size_t n_links;
    struct gate_model models[MAX_MODELS];
    size_t n_models;
    const char *blocked[MAX_MODELS];
    struct gate_batch batches[MAX_BATCHES];
    size_t n_batches;
    int64_t refreshed_ms;
};

static const char *
endpoint_name(const struct gate *g, int i)
{
    return g->cfg->endpoints[i].name;
}

static void
breaker_key(char *buf, size_t len, const char *endpoint, const char *model)
{
    snprintf(buf, len, "breaker:%s:%s", endpoint, model);
}

static char *
breaker_json(const struct sched_breaker *b)
{
    json_t *o = json_pack("{s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I}",
                          "state", b->state,
                          "consecutive", b->consecutive_failures,
                          "window_count", b->window_count,
                          "window_bits", (json_int_t)b->window_bits,
                          "opened_at_ms", (json_int_t)b->opened_at_ms,
                          "cooldown_ms", (json_int_t)b->cooldown_ms,
                          "probe_sent_ms", (json_int_t)b->probe_sent_ms,
                          "probe_out_until_ms",
                          (json_int_t)b->probe_out_until_ms,
                          "closed_at_ms", (json_int_t)b->closed_at_ms);
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    return text;
}

static int
breaker_parse(const char *text, struct sched_breaker *b)
{
    json_t *o = json_loads(text, 0, NULL);
    json_int_t bits = 0, opened = 0, cool = 0, psent = 0, pout = 0,
               closed = 0;
    int rc;

    if (o == NULL)
        return NB_EPARSE;
    sched_breaker_init(b);
    rc = json_unpack(o, "{s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I}",
                     "state", &b->state,
                     "consecutive", &b->consecutive_failures,
                     "window_count", &b->window_count,
                     "window_bits", &bits, "opened_at_ms", &opened,
                     "cooldown_ms", &cool, "probe_sent_ms", &psent,
                     "probe_out_until_ms", &pout, "closed_at_ms", &closed);
    json_decref(o);
    b->window_bits = (uint64_t)bits;
    b->opened_at_ms = opened;
    b->cooldown_ms = cool;
    b->probe_sent_ms = psent;
    b->probe_out_until_ms = pout;
    b->closed_at_ms = closed;
    if (rc != 0 || sched_breaker_check(b) != 0) {
        sched_breaker_init(b);
        return NB_EPARSE;
    }
    return 0;
}

/* The link of (endpoint, model), created closed when new; NULL when the
 * table is full (then the pair is simply never gated). */
static struct sched_link *
link_get(struct gate *g, const char *endpoint, const char *model)
{
    struct sched_link *l = sched_link_find(g->links, g->n_links, endpoint,
                                           model);

    if (l != NULL || g->n_links == MAX_LINKS)
        return l;
    l = &g->links[g->n_links++];
    memset(l, 0, sizeof(*l));
    snprintf(l->endpoint, sizeof(l->endpoint), "%s", endpoint);
    snprintf(l->model, sizeof(l->model), "%s", model);
    sched_breaker_init(&l->breaker);
    return l;
}

static void
link_save(struct gate *g, const struct sched_link *l, int64_t now_ms)
{
    char key[2 * CONFIG_NAME_LEN + 16], *text = breaker_json(&l->breaker);

    breaker_key(key, sizeof(key), l->endpoint, l->model);
    if (text != NULL)
        queue_state_put(g->q, key, text, now_ms);
    free(text);
}

static struct gate_model *
model_get(struct gate *g, const char *id)
{
    for (size_t i = 0; i < g->n_models; i++) {
        if (strcmp(g->models[i].id, id) == 0)
            return &g->models[i];
    }
    if (g->n_models == MAX_MODELS)
        return NULL;
    struct gate_model *m = &g->models[g->n_models++];
    memset(m, 0, sizeof(*m));
    snprintf(m->id, sizeof(m->id), "%s", id);
    m->cfg = config_model(g->cfg, id);
    m->room = SCHED_UNLIMITED;
    return m;
}

struct gate *
gate_new(struct queue *q, const struct config *cfg, int workers,
         double budget_usd, int rpm_all, int rpd_all)
{
    struct gate *g = calloc(1, sizeof(*g));

    if (g == NULL)
        return NULL;
    g->q = q;
    g->cfg = cfg;
    g->workers = workers;
    g->rpm_all = rpm_all;
    g->rpd_all = rpd_all;
    sched_aimd_init(&g->aimd, workers);
    sched_budget_init(&g->budget, budget_usd);
    for (int i = 0; i < cfg->n_models; i++)
        model_get(g, cfg->models[i].id);
    return g;
}

void
gate_free(struct gate *g)
{
    free(g);
}

int
gate_limit(const struct gate *g)
{
    return g->aimd.limit;
}

static int
load_breaker(const char *name, const char *value, void *arg)
{
    struct gate *g = arg;
    const char *ep = name + strlen("breaker:");
    const char *colon = strchr(ep, ':');
    char endpoint[CONFIG_NAME_LEN];
    struct sched_breaker b;
    struct sched_link *l;
    size_t n;

    if (colon == NULL || breaker_parse(value, &b) != 0)
        return 0;
    n = (size_t)(colon - ep);
    if (n >= sizeof(endpoint))
        return 0;
    memcpy(endpoint, ep, n);
    endpoint[n] = '\0';
    l = link_get(g, endpoint, colon + 1);
    if (l != NULL)
        l->breaker = b;
    return 0;
}

/* The quotas of a model: --rpm/--rpd, else its [model] section. */
static void
model_quota(const struct gate *g, const struct gate_model *m, int *rpm,
            int *rpd)
{
    *rpm = g->rpm_all ? g->rpm_all : m->cfg != NULL ? m->cfg->rpm : 0;
    *rpd = g->rpd_all ? g->rpd_all : m->cfg != NULL ? m->cfg->rpd : 0;
}

static void
refresh_model(struct gate *g, struct gate_model *m, int64_t now_ms)
{
    char key[CONFIG_NAME_LEN + 8], *value = NULL;
    int64_t *sent = NULL, since;
    size_t n = 0;
    int rpm, rpd;

    model_quota(g, m, &rpm, &rpd);
    m->fresh = 1;
    snprintf(key, sizeof(key), "park:%s", m->id);
    m->parked_until_ms = 0;
    if (queue_state_get(g->q, key, &value) == 0 && value != NULL)
        m->parked_until_ms = strtoll(value, NULL, 10);
    free(value);
    if (rpm == 0 && rpd == 0) {
        m->room = m->parked_until_ms > now_ms ? 0 : SCHED_UNLIMITED;
        m->next_ms = m->parked_until_ms;
        return;
    }
    since = sched_quota_since(rpd, now_ms);
    if (queue_quota_sends(g->q, m->id, since, &sent, &n) != 0)
        n = 0;
    m->room = sched_quota_room(rpm, rpd, m->parked_until_ms, sent, n, now_ms,
                               &m->next_ms);
    free(sent);
}

void
gate_refresh(struct gate *g, int64_t now_ms)
{
    if (now_ms - g->refreshed_ms < REFRESH_MS && g->refreshed_ms != 0)
        return;
    g->refreshed_ms = now_ms;
    queue_state_list(g->q, "breaker:", load_breaker, g);
    for (size_t i = 0; i < g->n_models; i++)
        refresh_model(g, &g->models[i], now_ms);
}

/* Where a request for model may go now; NB_ENOTFOUND with *until. */
static int
route(struct gate *g, const char *model, int64_t now_ms,
      struct sched_route *r)
{
    return sched_route(g->cfg, model, g->links, g->n_links, now_ms, r);
}

static void
add_reason(char *reason, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
add_reason(char *reason, size_t len, const char *fmt, ...)
{
    va_list ap;

    if (reason[0] != '\0')
        return;     /* one reason is enough for a status line */
    va_start(ap, fmt);
    vsnprintf(reason, len, fmt, ap);
    va_end(ap);
}

void
gate_blocked(struct gate *g, int64_t now_ms, const char *const **models,
             size_t *n, int64_t *next_ms, int *all_parked, char *reason,
             size_t reason_len)
{
    struct sched_route r;
    size_t count = 0;

    *next_ms = INT64_MAX;
    *all_parked = 1;
    reason[0] = '\0';
    for (size_t i = 0; i < g->n_models; i++) {
        struct gate_model *m = &g->models[i];
        int64_t until = 0;
        int parked = m->parked_until_ms > now_ms;

        if (!parked && m->room > 0) {
            if (route(g, m->id, now_ms, &r) == 0)
                continue;
            until = r.until_ms;
            add_reason(reason, reason_len, "breaker open for %s, next try "
                       "in %llds", m->id,
                       (long long)((until - now_ms + 999) / 1000));
        } else if (parked) {
            until = m->parked_until_ms;
            add_reason(reason, reason_len, "%s parked (quota) for %llds",
                       m->id, (long long)((until - now_ms + 999) / 1000));
        } else {
            until = m->next_ms;
            add_reason(reason, reason_len, "%s at its quota, next slot in "
                       "%llds", m->id,
                       (long long)((until - now_ms + 999) / 1000));
        }
        if (!parked || until - now_ms < 10 * 60 * 1000)
            *all_parked = 0;
        if (until < *next_ms)
            *next_ms = until;
        g->blocked[count++] = m->id;
    }
    if (count == 0)
        *all_parked = 0;
    *models = g->blocked;
    *n = count;
}

static struct gate_batch *
batch_get(struct gate *g, int64_t id)
{
    struct gate_batch *b;

    for (size_t i = 0; i < g->n_batches; i++) {
        if (g->batches[i].id == id)
            return &g->batches[i];
    }
    if (g->n_batches == MAX_BATCHES)
        return NULL;
    b = &g->batches[g->n_batches++];
    memset(b, 0, sizeof(*b));
    b->id = id;
    if (queue_batch_money(g->q, id, &b->budget_usd, &b->spent_usd) != 0)
        b->budget_usd = 0;
    return b;
}

/* Whether the job's batch can pay estimate more; reserves it if so. */
static int
batch_reserve(struct gate *g, int64_t batch_id, double estimate)
{
    struct gate_batch *b = batch_get(g, batch_id);

    if (b == NULL || b->budget_usd <= 0)
        return 0;
    if (b->spent_usd + b->reserved_usd + estimate > b->budget_usd + 1e-9)
        return NB_ELIMIT;
    b->reserved_usd += estimate;
    return 0;
}

static void
batch_settle(struct gate *g, int64_t batch_id, double estimate, double cost)
{
    struct gate_batch *b = batch_get(g, batch_id);

    if (b == NULL)
        return;
    b->reserved_usd -= estimate;
    if (b->reserved_usd < 0)
        b->reserved_usd = 0;
    b->spent_usd += cost;
}

int
gate_admit(struct gate *g, const struct queue_job *job, int64_t now_ms,
           struct gate_ticket *t)
{
    struct gate_model *m = model_get(g, job->model), *target;
    struct sched_route r;
    struct sched_link *l;
    int rc, rpm, rpd;

    if (m == NULL)
        return 0;   /* too many models to track: not gated */
    if (!m->fresh)
        refresh_model(g, m, now_ms);
    if (m->parked_until_ms > now_ms ||
        route(g, job->model, now_ms, &r) != 0)
        return NB_ESTATE;
    target = model_get(g, r.model);
    if (target != NULL && !target->fresh)
        refresh_model(g, target, now_ms);
    if (target == NULL || target->room <= 0 ||
        target->parked_until_ms > now_ms)
        return NB_ESTATE;
    memset(t, 0, sizeof(*t));
    t->endpoint = r.endpoint;
    snprintf(t->model, sizeof(t->model), "%s", r.model);
    t->estimate_usd = sched_price(g->cfg, t->model, job->size, 0);
    if (t->estimate_usd < 0)
        t->estimate_usd = 0;
    t->batch_id = job->batch_id;
    if (batch_reserve(g, job->batch_id, t->estimate_usd) != 0) {
        g->budget_reached = 2;
        return NB_ELIMIT;
    }
    rc = sched_budget_reserve(&g->budget, t->estimate_usd);
    if (rc != 0) {
        batch_settle(g, job->batch_id, t->estimate_usd, 0);
        g->budget_reached = 1;
        return NB_ELIMIT;
    }
    t->sent_ms = now_ms;
    model_quota(g, target, &rpm, &rpd);
    if (rpm > 0 || rpd > 0) {
        target->room--;
        queue_quota_note(g->q, target->id, now_ms);
    }
    l = link_get(g, endpoint_name(g, t->endpoint), t->model);
    if (l != NULL) {
        struct sched_breaker before = l->breaker;

        t->probe = sched_breaker_sent(&l->breaker, &g->cfg->breaker, now_ms,
                                      PROBE_TIMEOUT_MS);
        if (memcmp(&before, &l->breaker, sizeof(before)) != 0)
            link_save(g, l, now_ms);
    }
    return 0;
}

static void
park(struct gate *g, const char *model, const struct answer_result *r,
     int64_t now_ms, char *event, size_t event_len)
{
    struct gate_model *m = model_get(g, model);
    char key[CONFIG_NAME_LEN + 8], value[32];
    int64_t until;

    if (m == NULL)
        return;
    until = sched_quota_park(m->parked_until_ms, r->quota_per_day,
                             r->retry_after_ms, now_ms);
    if (until <= m->parked_until_ms)
        return;
    m->parked_until_ms = until;
    snprintf(key, sizeof(key), "park:%s", model);
    snprintf(value, sizeof(value), "%lld", (long long)until);
    queue_state_put(g->q, key, value, now_ms);
    if (r->quota_per_day)
        snprintf(event, event_len, "daily quota of %s used up: its jobs "
                 "wait for 00:00 America/Los_Angeles (in %lld min)", model,
                 (long long)((until - now_ms) / 60000));
}

double
gate_outcome(struct gate *g, const struct gate_ticket *t,
             const struct answer_result *r, int64_t now_ms, char *event,
             size_t event_len)
{
    int outcome = sched_outcome_of(r);
    struct sched_link *l = link_get(g, endpoint_name(g, t->endpoint),
                                    t->model);
    double cost;
    int change;

    event[0] = '\0';
    /* A success of a request sent before the newest failure says nothing
     * about the service now: it neither resets the breaker's count nor
     * grows the concurrency limit (else the answers still in flight when
     * an outage starts would keep the breaker closed). */
    if (outcome == SCHED_FAILURE || outcome == SCHED_OVERLOAD) {
        if (t->sent_ms > g->last_fail_sent_ms)
            g->last_fail_sent_ms = t->sent_ms;
    } else if (outcome == SCHED_SUCCESS &&
               t->sent_ms < g->last_fail_sent_ms) {
        outcome = SCHED_NEUTRAL;
    }
    sched_aimd_outcome(&g->aimd, g->workers, outcome, t->sent_ms, now_ms);
    if (l != NULL) {
        struct sched_breaker before = l->breaker;

        change = sched_breaker_outcome(&l->breaker, &g->cfg->breaker,
                                       outcome, t->sent_ms, now_ms);
        if (memcmp(&before, &l->breaker, sizeof(before)) != 0)
            link_save(g, l, now_ms);
        if (change == SCHED_BREAKER_OPENED ||
            change == SCHED_BREAKER_REOPENED)
            snprintf(event, event_len, "circuit breaker %s for %s%s%s: "
                     "nothing sent there for %lld s",
                     change == SCHED_BREAKER_OPENED ? "opened" : "reopened",
                     t->model, l->endpoint[0] ? " at " : "", l->endpoint,
                     (long long)(l->breaker.cooldown_ms / 1000));
        else if (change == SCHED_BREAKER_CLOSED)
            snprintf(event, event_len, "circuit breaker closed for %s%s%s",
                     t->model, l->endpoint[0] ? " at " : "", l->endpoint);
    }
    if (outcome == SCHED_QUOTA)
        park(g, t->model, r, now_ms, event, event_len);
    cost = sched_cost(g->cfg, t->model, r->prompt_tokens,
                      r->output_tokens + r->thought_tokens, 0);
    sched_budget_settle(&g->budget, t->estimate_usd, cost);
    batch_settle(g, t->batch_id, t->estimate_usd,
                 cost < 0 ? t->estimate_usd : cost);
    return cost < 0 ? t->estimate_usd : cost;
}

void
gate_abandon(struct gate *g, const struct gate_ticket *t)
{
    sched_budget_release(&g->budget, t->estimate_usd);
    batch_settle(g, t->batch_id, t->estimate_usd, 0);
}

int
gate_budget_reached(const struct gate *g)
{
    return g->budget_reached;
}

double
gate_spent(const struct gate *g)
{
    return sched_budget_spent(&g->budget);
}

double
gate_budget(const struct gate *g)
{
    return (double)g->budget.cap_micro / 1e6;
}

int
gate_reserve_remote(struct gate *g, const struct queue_job *job,
                    double *estimate_usd)
{
    double est = sched_price(g->cfg, job->model, job->size, 1);

    if (est < 0)
        est = 0;
    if (batch_reserve(g, job->batch_id, est) != 0) {
        g->budget_reached = 2;
        return NB_ELIMIT;
    }
    if (sched_budget_reserve(&g->budget, est) != 0) {
        batch_settle(g, job->batch_id, est, 0);
        g->budget_reached = 1;
        return NB_ELIMIT;
    }
    *estimate_usd = est;
    return 0;
}

double
gate_settle_remote(struct gate *g, int64_t batch_id, const char *model,
                   const char *size, double estimate_usd,
                   const struct answer_result *r)
{
    double cost = sched_cost(g->cfg, model, r->prompt_tokens,
                             r->output_tokens + r->thought_tokens, 1);

    /* An error line is not billed; an answer without usage is billed at
     * the estimate. */
    if (r->http_status != 200)
        cost = 0;
    else if (cost < 0 || r->output_tokens + r->thought_tokens == 0)
        cost = sched_price(g->cfg, model, size, 1);
    if (cost < 0)
        cost = 0;
    sched_budget_settle(&g->budget, estimate_usd, cost);
    batch_settle(g, batch_id, estimate_usd, cost);
    return cost;
}

void
gate_release_remote(struct gate *g, int64_t batch_id, double estimate_usd)
{
    sched_budget_settle(&g->budget, estimate_usd, 0);
    batch_settle(g, batch_id, estimate_usd, 0);
}
