/*
 * gate.h - the scheduler's gate in front of every request of a run.
 *
 * Joins the decision logic of sched.h to the state kept in the database
 * (so that parallel runs and a run started by cron a minute later share
 * it): circuit breakers per endpoint and model, per-model quotas and
 * parked models, the allowed number of requests in flight, and the
 * budget.  One gate per run, used by the run's network thread only.
 */
#ifndef NB_GATE_H
#define NB_GATE_H

#include <stddef.h>
#include <stdint.h>

#include "runner/config.h"

struct queue;
struct queue_job;
struct answer_result;

/* What was decided for one admitted request. */
struct gate_ticket {
    int endpoint;                   /* index into cfg->endpoints */
    char model[CONFIG_NAME_LEN];    /* the model the request goes to */
    double estimate_usd;            /* reserved from the budgets */
    int64_t batch_id;               /* whose batch budget it counts in */
    int64_t sent_ms;
    int probe;                      /* the half-open breaker's probe */
};

struct gate;

/*
 * A gate over q (borrowed) with the configuration cfg (borrowed, must
 * outlive the gate), at most workers in flight, a budget for the run
 * (0: none), and quotas for every model that override the config's
 * (rpm_all, rpd_all; 0: the config's).  NULL on allocation failure.
 */
struct gate *gate_new(struct queue *q, const struct config *cfg, int workers,
                      double budget_usd, int rpm_all, int rpd_all);
void gate_free(struct gate *g);

/* Requests allowed in flight now (halved on overload, grows back). */
int gate_limit(const struct gate *g);

/*
 * Re-reads the shared state when it is older than a quarter second:
 * breakers, parked models, recent sends of models with quotas.
 */
void gate_refresh(struct gate *g, int64_t now_ms);

/*
 * The models no request may go to now (array owned by g, valid until the
 * next call), the earliest instant one of them frees (*next_ms), whether
 * every one of them waits for a daily quota reset (*all_parked), and a
 * pause reason for the status line ("" when nothing is blocked).
 */
void gate_blocked(struct gate *g, int64_t now_ms, const char *const **models,
                  size_t *n, int64_t *next_ms, int *all_parked, char *reason,
                  size_t reason_len);

/*
 * Admits job now: picks the endpoint and model (a fallback while the
 * primary's breaker is open), reserves its price from the run's budget
 * and its batch's, counts
 * the request against the model's quotas and marks a probe.  0 with *t
 * filled; NB_ESTATE when the job's model can take nothing now (give the
 * job back and try later); NB_ELIMIT when the budget would be exceeded.
 */
int gate_admit(struct gate *g, const struct queue_job *job, int64_t now_ms,
               struct gate_ticket *t);

/*
 * The answer to an admitted request: moves the breaker and the
 * concurrency limit, parks a model on a quota error, settles the budget
 * with the real cost (returned).  *event gets one line for the log when a
 * breaker opened or closed or a model was parked, else "".
 */
double gate_outcome(struct gate *g, const struct gate_ticket *t,
                    const struct answer_result *r, int64_t now_ms,
                    char *event, size_t event_len);

/* An admitted request that ended without an answer (aborted by us). */
void gate_abandon(struct gate *g, const struct gate_ticket *t);

/*
 * Batch mode: reserves the Batch API price of job (half the standard one)
 * from the run's budget and its batch's, into *estimate_usd.  NB_ELIMIT
 * when a budget would be passed (nothing reserved).  No quota, breaker or
 * concurrency limit applies: Google runs the batch.
 */
int gate_reserve_remote(struct gate *g, const struct queue_job *job,
                        double *estimate_usd);
/*
 * Batch mode: the cost of one result line (at the Batch API price),
 * settled against a reservation of estimate_usd (0 when this run did not
 * make it: the chunk was sent by an earlier run).  Returns the cost.
 */
double gate_settle_remote(struct gate *g, int64_t batch_id, const char *model,
                          const char *size, double estimate_usd,
                          const struct answer_result *r);
/* Batch mode: gives back the reservation of estimate_usd for a job whose
 * result this run will not record (nothing is paid for it here). */
void gate_release_remote(struct gate *g, int64_t batch_id,
                         double estimate_usd);

/* Whether a request was refused by a budget: 0 no, 1 the run's
 * (--budget), 2 its batch's (`nbbatch add --budget`); and what this run
 * spent. */
int gate_budget_reached(const struct gate *g);
double gate_spent(const struct gate *g);
double gate_budget(const struct gate *g);

#endif
