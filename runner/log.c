/*
 * log.c - the one place that writes messages to stderr.
 *
 * A mutex keeps lines whole when worker threads log.  errno is saved
 * across the call so that a caller can log and then still report it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "runner/log.h"

static int current_level = LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static void (*status_clear)(void);
static void (*status_redraw)(void);

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int
log_set_level_name(const char *name)
{
    for (int i = 0; i <= LOG_DEBUG; i++) {
        if (strcasecmp(name, level_names[i]) == 0) {
            current_level = i;
            return 0;
        }
    }
    if (strcasecmp(name, "warning") == 0) {
        current_level = LOG_WARN;
        return 0;
    }
    return -1;
}

void
log_set_level(int level)
{
    current_level = level;
}

int
log_level(void)
{
    return current_level;
}

int
log_init(const char *flag)
{
    const char *name = flag;

    if (name == NULL)
        name = getenv("NBBATCH_LOG_LEVEL");
    if (name == NULL || *name == '\0')
        name = getenv("LOG_LEVEL");
    if (name == NULL || *name == '\0')
        return 0;
    return log_set_level_name(name);
}

void
log_set_status_hook(void (*clear)(void), void (*redraw)(void))
{
    pthread_mutex_lock(&log_lock);
    status_clear = clear;
    status_redraw = redraw;
    pthread_mutex_unlock(&log_lock);
}

void
log_msg(int level, const char *fmt, ...)
{
    int saved_errno = errno;
    va_list ap;

    if (level > current_level) {
        errno = saved_errno;
        return;
    }
    pthread_mutex_lock(&log_lock);
    if (status_clear != NULL)
        status_clear();
    fprintf(stderr, "nbbatch: %s: ", level_names[level]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (status_redraw != NULL)
        status_redraw();
    pthread_mutex_unlock(&log_lock);
    errno = saved_errno;
}
