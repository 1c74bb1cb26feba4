/*
 * progress.c - the live status line, event log lines and JSON events.
 *
 * The status line is redrawn in place with '\r' and cleared by the log
 * module before any log line, so the two never interleave.  Rates are
 * taken over the last minute of finished images, ETA from that rate.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "runner/cli.h"
#include "runner/log.h"
#include "runner/progress.h"

#define RATE_SLOTS 60           /* one per second over the last minute */

struct progress {
    int json;
    int live;
    int drawn;                  /* a status line is on screen */
    int64_t done;
    int64_t total;
    int inflight;
    int64_t retries;
    char pause[96];
    int64_t last_draw_ms;
    int64_t start_ms;
    int64_t rate_sec[RATE_SLOTS];
    int64_t rate_count[RATE_SLOTS];
    char line[256];
};

static struct progress *live_progress;  /* for the log hooks */

static void
clear_line(void)
{
    if (live_progress != NULL && live_progress->drawn) {
        fputs("\r\033[K", stderr);
        live_progress->drawn = 0;
    }
}

static void
redraw_line(void)
{
    if (live_progress != NULL && live_progress->line[0] != '\0') {
        fputs(live_progress->line, stderr);
        live_progress->drawn = 1;
    }
}

struct progress *
progress_new(int json, int live)
{
    struct progress *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->json = json;
    p->live = live && isatty(STDERR_FILENO);
    p->start_ms = cli_mono_ms();
    if (p->live) {
        live_progress = p;
        log_set_status_hook(clear_line, redraw_line);
    }
    return p;
}

void
progress_free(struct progress *p)
{
    if (p == NULL)
        return;
    if (p->live) {
        log_set_status_hook(NULL, NULL);
        if (p->drawn)
            fputs("\r\033[K", stderr);
        live_progress = NULL;
    }
    free(p);
}

static void
emit(struct progress *p, json_t *ev)
{
    char *text;

    if (!p->json || ev == NULL) {
        json_decref(ev);
        return;
    }
    json_object_set_new(ev, "t_ms", json_integer(cli_now_ms()));
    text = json_dumps(ev, JSON_COMPACT);
    if (text != NULL) {
        fputs(text, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(text);
    }
    json_decref(ev);
}

void
progress_totals(struct progress *p, int64_t done, int64_t total)
{
    p->done = done;
    p->total = total;
}

void
progress_inflight(struct progress *p, int inflight)
{
    p->inflight = inflight;
}

void
progress_pause(struct progress *p, const char *reason)
{
    if (reason == NULL)
        p->pause[0] = '\0';
    else if (strcmp(reason, p->pause) != 0)
        snprintf(p->pause, sizeof(p->pause), "%s", reason);
}

static void
note_finished(struct progress *p)
{
    int64_t sec = cli_mono_ms() / 1000;
    int slot = (int)(sec % RATE_SLOTS);

    if (p->rate_sec[slot] != sec) {
        p->rate_sec[slot] = sec;
        p->rate_count[slot] = 0;
    }
    p->rate_count[slot]++;
}

/* Images per minute over the last minute (or since the start). */
static double
per_minute(const struct progress *p, int64_t mono_ms)
{
    int64_t sec = mono_ms / 1000, n = 0;
    double span = (double)(mono_ms - p->start_ms) / 1000.0;

    for (int i = 0; i < RATE_SLOTS; i++) {
        if (p->rate_sec[i] > sec - RATE_SLOTS)
            n += p->rate_count[i];
    }
    if (span > RATE_SLOTS)
        span = RATE_SLOTS;
    if (span < 1.0)
        span = 1.0;
    return (double)n * 60.0 / span;
}

static void
format_eta(char *buf, size_t len, double minutes)
{
    long s = (long)(minutes * 60.0);

    if (minutes <= 0 || s > 99L * 3600)
        snprintf(buf, len, "--");
    else if (s >= 3600)
        snprintf(buf, len, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    else
        snprintf(buf, len, "%ldm%02lds", s / 60, s % 60);
}

void
progress_tick(struct progress *p, int64_t mono_ms)
{
    double rate;
    char eta[32];

    if (!p->live || mono_ms - p->last_draw_ms < 250)
        return;
    p->last_draw_ms = mono_ms;
    rate = per_minute(p, mono_ms);
    format_eta(eta, sizeof(eta), rate > 0 ?
               (double)(p->total - p->done) / rate : 0);
    snprintf(p->line, sizeof(p->line),
             "%lld/%lld done  %.1f img/min  ETA %s  in flight %d  "
             "retries %lld%s%s", (long long)p->done, (long long)p->total,
             rate, eta, p->inflight, (long long)p->retries,
             p->pause[0] ? "  paused: " : "", p->pause);
    fputs("\r\033[K", stderr);
    fputs(p->line, stderr);
    p->drawn = 1;
}

void
progress_start(struct progress *p, int workers, int64_t queued,
               int reclaimed)
{
    if (reclaimed > 0)
        log_info("reclaimed %d interrupted job%s", reclaimed,
                 reclaimed == 1 ? "" : "s");
    log_info("run started: %lld job%s queued, %d in flight at most",
             (long long)queued, queued == 1 ? "" : "s", workers);
    emit(p, json_pack("{s:s, s:I, s:i, s:i}", "event", "start",
                      "queued", (json_int_t)queued, "workers", workers,
                      "reclaimed", reclaimed));
}

void
progress_done(struct progress *p, int64_t job_id, const char *path,
              int64_t latency_ms, int recovered)
{
    note_finished(p);
    p->done++;
    if (recovered)
        log_info("job %lld: image already on disk, marked done: %s",
                 (long long)job_id, path);
    else
        log_msg(p->live ? LOG_DEBUG : LOG_INFO, "job %lld done: %s "
                "(%.1f s)", (long long)job_id, path,
                (double)latency_ms / 1000.0);
    emit(p, json_pack("{s:s, s:I, s:s, s:I, s:b}", "event", "done",
                      "job", (json_int_t)job_id, "path", path,
                      "latency_ms", (json_int_t)latency_ms,
                      "recovered", recovered));
}

void
progress_retry(struct progress *p, int64_t job_id, const char *cls,
               int http_status, const char *message, int64_t wait_ms)
{
    p->retries++;
    log_warn("job %lld: %s failure (%s), retry in %.1f s",
             (long long)job_id, cls, message, (double)wait_ms / 1000.0);
    emit(p, json_pack("{s:s, s:I, s:s, s:i, s:s, s:I}", "event", "retry",
                      "job", (json_int_t)job_id, "class", cls,
                      "http_status", http_status, "message", message,
                      "wait_ms", (json_int_t)wait_ms));
}

void
progress_failed(struct progress *p, int64_t job_id, const char *outcome,
                const char *cls, int http_status, const char *message)
{
    log_error("job %lld %s: %s", (long long)job_id, outcome, message);
    emit(p, json_pack("{s:s, s:I, s:s, s:i, s:s}", "event", outcome,
                      "job", (json_int_t)job_id, "class", cls,
                      "http_status", http_status, "message", message));
}

void
progress_stop(struct progress *p, const char *reason)
{
    log_warn("%s", reason);
    emit(p, json_pack("{s:s, s:s}", "event", "stop", "reason", reason));
}

void
progress_end(struct progress *p, int exit_status, int64_t done,
             int64_t failed, int64_t left)
{
    log_info("run ended: %lld done, %lld failed or blocked, %lld left "
             "(exit %d)", (long long)done, (long long)failed,
             (long long)left, exit_status);
    emit(p, json_pack("{s:s, s:i, s:I, s:I, s:I}", "event", "end",
                      "exit", exit_status, "done", (json_int_t)done,
                      "failed", (json_int_t)failed,
                      "left", (json_int_t)left));
}
