/*
 * progress.h - what a run tells the user while it works.
 *
 * On a terminal: one live status line on stderr (done / total, images per
 * minute, ETA, in flight, retries, pause reason).  Always: a log line per
 * event a user cares about (at info for finished images when no status
 * line is shown, warn for retries, error for failures).  With --json: one
 * JSON object per event on stdout.
 */
#ifndef NB_PROGRESS_H
#define NB_PROGRESS_H

#include <stdint.h>

struct progress;

/* json: events as JSON lines on stdout; live: draw the status line
 * (only honoured when stderr is a terminal). */
struct progress *progress_new(int json, int live);
void progress_free(struct progress *p);

/* Jobs done and in total in the run's scope, from the queue. */
void progress_totals(struct progress *p, int64_t done, int64_t total);
void progress_inflight(struct progress *p, int inflight);
/* Why nothing is being sent, or NULL when dispatching. */
void progress_pause(struct progress *p, const char *reason);
/* Redraws the status line if due (at most 4 times a second). */
void progress_tick(struct progress *p, int64_t mono_ms);

void progress_start(struct progress *p, int workers, int64_t queued,
                    int reclaimed);
void progress_done(struct progress *p, int64_t job_id, const char *path,
                   int64_t latency_ms, int recovered);
void progress_retry(struct progress *p, int64_t job_id, const char *cls,
                    int http_status, const char *message,
                    int64_t wait_ms);
/* outcome: "failed" or "blocked". */
void progress_failed(struct progress *p, int64_t job_id, const char *outcome,
                     const char *cls, int http_status, const char *message);
void progress_stop(struct progress *p, const char *reason);
void progress_end(struct progress *p, int exit_status, int64_t done,
                  int64_t failed, int64_t left);

#endif
