/*
 * log.h - every message nbbatch prints to the user goes through here.
 *
 * Lines go to stderr as "nbbatch: LEVEL: text"; callers give no trailing
 * newline.  Nothing here ever formats an API key or image data: callers
 * pass neither.
 */
#ifndef NB_LOG_H
#define NB_LOG_H

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Sets the level from a name ("error", "warn", "info", "debug", any case,
 * "warning" too); returns 0 or -1 for an unknown name. */
int log_set_level_name(const char *name);
void log_set_level(int level);
int log_level(void);
/* Picks the level from --log-level, else NBBATCH_LOG_LEVEL, else
 * LOG_LEVEL, else info.  flag may be NULL.  -1 on an unknown name. */
int log_init(const char *flag);

/* When a live status line is on screen, log lines clear it first. */
void log_set_status_hook(void (*clear)(void), void (*redraw)(void));

void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
