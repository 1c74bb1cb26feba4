/*
 * cmd_schedule.c - `nbbatch schedule`: when the off-peak windows are, and
 * how to have cron or systemd start `nbbatch run` at each of them.
 *
 * The windows come from --window, else the config's [offpeak]; the zone
 * from --tz, else the config, else local time.  Plain `schedule` prints
 * the windows, whether one is open now, and the next opening and closing,
 * in the zone and in UTC.  --cron prints crontab lines and --systemd a
 * user service and timer, both starting `nbbatch run` with the same
 * windows, zone, database, batch and config at every window start;
 * --install puts them in place (the crontab through `crontab -l` and
 * `crontab -`, the units under ~/.config/systemd/user) but never enables
 * or starts anything: it prints the command for that.
 *
 * The generated command names everything absolutely (this binary through
 * /proc/self/exe, the database, the config file), because cron and
 * systemd start it elsewhere with another environment.  Nothing here
 * opens the queue: a database that does not exist yet may be scheduled.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "queue/nberr.h"
#include "runner/cli.h"
#include "runner/config.h"
#include "runner/log.h"
#include "runner/tzone.h"
#include "runner/window.h"

#define NAME_MAX_LEN 64
#define CRONTAB_MAX (1024 * 1024)
#define MAX_WORDS 16

struct sched_opts {
    const char *window;
    const char *tz;
    const char *config;
    const char *db;
    const char *batch;
    const char *name;
    int cron, systemd, install;
};

/* Everything the output needs, resolved once. */
struct plan {
    struct window_set set;
    char windows[WINDOW_TEXT_MAX];
    char tz[TZONE_NAME_MAX + 1];    /* "": local time */
    const struct tzone *zone;
    int has_key_file;               /* the config names a key file */
    char config[PATH_MAX];          /* absolute; "": none was read */
    char exe[PATH_MAX];
    char db[PATH_MAX];
    const char *batch;
    char name[NAME_MAX_LEN + 1];
};

/* ---- options -------------------------------------------------------- */

static int
parse_args(int argc, char **argv, struct sched_opts *o)
{
    enum { O_WINDOW = 256, O_TZ, O_CONFIG, O_DB, O_BATCH, O_NAME, O_CRON,
           O_SYSTEMD, O_INSTALL, O_HELP };
    static const struct option longopts[] = {
        {"window", required_argument, NULL, O_WINDOW},
        {"tz", required_argument, NULL, O_TZ},
        {"config", required_argument, NULL, O_CONFIG},
        {"db", required_argument, NULL, O_DB},
        {"batch", required_argument, NULL, O_BATCH},
        {"name", required_argument, NULL, O_NAME},
        {"cron", no_argument, NULL, O_CRON},
        {"systemd", no_argument, NULL, O_SYSTEMD},
        {"install", no_argument, NULL, O_INSTALL},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}
    };
    int c;

    memset(o, 0, sizeof(*o));
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_WINDOW:  o->window = optarg; break;
        case O_TZ:      o->tz = optarg; break;
        case O_CONFIG:  o->config = optarg; break;
        case O_DB:      o->db = optarg; break;
        case O_BATCH:   o->batch = optarg; break;
        case O_NAME:    o->name = optarg; break;
        case O_CRON:    o->cron = 1; break;
        case O_SYSTEMD: o->systemd = 1; break;
        case O_INSTALL: o->install = 1; break;
        case O_HELP:
            cli_usage("schedule");
            return -1;
        default:
            log_error("schedule: unknown option or missing value: %s",
                      argv[optind - 1]);
            return cli_usage("schedule");
        }
    }
    if (optind != argc) {
        log_error("schedule: unexpected argument '%s'", argv[optind]);
        return cli_usage("schedule");
    }
    if (o->cron && o->systemd) {
        log_error("schedule: --cron and --systemd: choose one");
        return EXIT_USAGE;
    }
    if (o->install && !o->cron && !o->systemd) {
        log_error("schedule: --install goes with --cron or --systemd");
        return EXIT_USAGE;
    }
    if ((o->batch != NULL && o->batch[0] == '\0') ||
        (o->db != NULL && o->db[0] == '\0')) {
        log_error("schedule: --batch and --db need a value");
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

/* ---- the plan ------------------------------------------------------- */

/* path made absolute against the working folder (lexically). */
static int
absolute(const char *path, char *out, size_t len)
{
    char cwd[PATH_MAX];
    int w;

    if (path[0] == '/') {
        w = snprintf(out, len, "%s", path);
    } else {
        if (getcwd(cwd, sizeof(cwd)) == NULL)
            return NB_EIO;
        while (path[0] == '.' && path[1] == '/')
            path += 2;
        w = snprintf(out, len, "%s/%s", cwd, path);
    }
    return w < 0 || (size_t)w >= len ? NB_ELIMIT : 0;
}

static int
name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/* The unit and lock name: --name, else the batch made safe, else
 * "default". */
static int
pick_name(const struct sched_opts *o, struct plan *p)
{
    const char *src = o->name != NULL ? o->name : o->batch;
    size_t n = 0;

    if (o->name != NULL) {
        for (const char *s = o->name; *s != '\0'; s++) {
            if (!name_char(*s) || s - o->name >= NAME_MAX_LEN) {
                log_error("schedule: --name: \"%s\": use up to %d letters, "
                          "digits, '.', '_' or '-'", o->name, NAME_MAX_LEN);
                return EXIT_USAGE;
            }
        }
    }
    for (const char *s = src != NULL ? src : ""; *s != '\0' &&
                                                 n < NAME_MAX_LEN; s++) {
        if (name_char(*s))
            p->name[n++] = *s;
        else if (n > 0 && p->name[n - 1] != '-')
            p->name[n++] = '-';
    }
    while (n > 0 && p->name[n - 1] == '-')
        n--;
    p->name[n] = '\0';
    if (n == 0 || p->name[0] == '.')
        snprintf(p->name, sizeof(p->name), "default");
    return EXIT_OK;
}

/* The zone: --tz, else the config, else (for cron and systemd, which do
 * not share our environment) a zone named by $TZ, else local time. */
static int
pick_zone(const struct sched_opts *o, const struct config *cfg,
          struct plan *p)
{
    const char *tz = o->tz != NULL ? o->tz : config_offpeak_tz(cfg);
    char err[256];
    int rc;

    if (tz == NULL && (o->cron || o->systemd)) {
        const char *env = getenv("TZ");
        const struct tzone *z;

        if (env != NULL && env[0] == ':')
            env++;
        if (env != NULL && env[0] != '\0' && env[0] != '/' &&
            tzone_get(env, &z, err, sizeof(err)) == 0)
            tz = env;
    }
    snprintf(p->tz, sizeof(p->tz), "%s", tz != NULL ? tz : "");
    rc = tzone_get(p->tz, &p->zone, err, sizeof(err));
    if (rc != 0) {
        log_error("schedule: --tz: %s", err);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

static int
make_plan(const struct sched_opts *o, const struct config *cfg,
          struct plan *p)
{
    char err[256];
    const char *db;
    int rc;

    if (o->window != NULL) {
        if (window_parse(o->window, &p->set, err, sizeof(err)) != 0) {
            log_error("schedule: --window: %s", err);
            return EXIT_USAGE;
        }
    } else if (cfg->offpeak.n > 0) {
        p->set = cfg->offpeak;
    } else {
        log_error("schedule: no windows: give --window HH:MM-HH:MM or set "
                  "windows in [offpeak] of %s", cfg->path[0] != '\0'
                  ? cfg->path : "the config file");
        return EXIT_USAGE;
    }
    window_format(&p->set, p->windows, sizeof(p->windows));
    if ((rc = pick_zone(o, cfg, p)) != EXIT_OK)
        return rc;
    if ((rc = pick_name(o, p)) != EXIT_OK)
        return rc;

    p->batch = o->batch;
    p->has_key_file = cfg->key_file[0] != '\0' ||
                      cfg->endpoints[0].key_file[0] != '\0';
    db = o->db != NULL ? o->db : getenv("NBBATCH_DB");
    if (db == NULL || db[0] == '\0')
        db = "nbbatch.db";
    if (absolute(db, p->db, sizeof(p->db)) != 0 ||
        (cfg->path[0] != '\0' &&
         absolute(cfg->path, p->config, sizeof(p->config)) != 0)) {
        log_error("schedule: cannot make an absolute path of %s", db);
        return EXIT_SOFTWARE;
    }
    return EXIT_OK;
}

/* ---- showing the windows -------------------------------------------- */

static int64_t
floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* "2026-03-29 06:00 CEST" in zone z, or in UTC when z is NULL. */
static void
fmt_time(const struct tzone *z, int64_t t_ms, char *buf, size_t len)
{
    struct tzone_info info = {0, 0, "UTC"};
    int64_t t = floor_div(t_ms, 1000), days, secs, year;
    int month, day;

    if (z != NULL)
        tzone_at(z, t, &info);
    if (info.abbr[0] == '\0') {
        int off = info.utoff_s < 0 ? -info.utoff_s : info.utoff_s;

        snprintf(info.abbr, sizeof(info.abbr), "%c%02d%02d",
                 info.utoff_s < 0 ? '-' : '+', off / 3600, off / 60 % 60);
    }
    t += info.utoff_s;
    days = floor_div(t, 86400);
    secs = t - days * 86400;
    tzone_civil_from_days(days, &year, &month, &day);
    snprintf(buf, len, "%04lld-%02d-%02d %02d:%02d %s", (long long)year,
             month, day, (int)(secs / 3600), (int)(secs / 60 % 60),
             info.abbr);
}

static void
show_line(const struct plan *p, const char *label, int64_t t_ms)
{
    char local[64], utc[64];

    if (t_ms == WINDOW_FOREVER) {
        printf("%-13s never\n", label);
        return;
    }
    fmt_time(p->zone, t_ms, local, sizeof(local));
    fmt_time(NULL, t_ms, utc, sizeof(utc));
    printf("%-13s %-24s %s\n", label, local, utc);
}

/* The system zone's name from /etc/localtime's link, else "". */
static void
system_zone_name(char *buf, size_t len)
{
    char link[PATH_MAX];
    ssize_t n = readlink("/etc/localtime", link, sizeof(link) - 1);
    const char *at;

    buf[0] = '\0';
    if (n <= 0)
        return;
    link[n] = '\0';
    at = strstr(link, "zoneinfo/");
    if (at != NULL)
        snprintf(buf, len, "%s", at + strlen("zoneinfo/"));
}

static int
show(const struct plan *p)
{
    int64_t now = cli_now_ms(), until, open, close;
    char sys[TZONE_NAME_MAX + 1];
    const char *tz = getenv("TZ");
    int rc;

    printf("%-13s %s\n", "windows", p->windows);
    if (p->tz[0] != '\0') {
        printf("%-13s %s\n", "time zone", p->tz);
    } else if (tz != NULL) {
        printf("%-13s local (TZ=%s)\n", "time zone", tz);
    } else {
        system_zone_name(sys, sizeof(sys));
        printf("%-13s local (%s)\n", "time zone",
               sys[0] != '\0' ? sys : "/etc/localtime");
    }
    show_line(p, "now", now);

    rc = window_open_at(&p->set, p->tz, now, &until);
    if (rc < 0)
        goto fail;
    if (rc == 1) {
        printf("%-13s open\n", "state");
        show_line(p, "closes", until);
        if (until != WINDOW_FOREVER) {
            if ((rc = window_next_open(&p->set, p->tz, until, &open)) != 0 ||
                (rc = window_open_at(&p->set, p->tz, open, &close)) < 0)
                goto fail;
            show_line(p, "next opens", open);
            show_line(p, "next closes", close);
        }
    } else {
        printf("%-13s closed\n", "state");
        if ((rc = window_next_open(&p->set, p->tz, now, &open)) != 0 ||
            (rc = window_open_at(&p->set, p->tz, open, &close)) < 0)
            goto fail;
        show_line(p, "opens", open);
        show_line(p, "closes", close);
    }
    show_line(p, "quota reset", window_next_la_midnight(now));
    return EXIT_OK;

fail:
    log_error("schedule: %s", nb_strerror(rc));
    return EXIT_SOFTWARE;
}

/* ---- the command to run --------------------------------------------- */

/* The words of `nbbatch run ...`; returns how many. */
static int
run_words(const struct plan *p, const char **w)
{
    int n = 0;

    w[n++] = p->exe;
    w[n++] = "run";
    w[n++] = "--window";
    w[n++] = p->windows;
    if (p->tz[0] != '\0') {
        w[n++] = "--tz";
        w[n++] = p->tz;
    }
    w[n++] = "--db";
    w[n++] = p->db;
    if (p->batch != NULL) {
        w[n++] = "--batch";
        w[n++] = p->batch;
    }
    if (p->config[0] != '\0') {
        w[n++] = "--config";
        w[n++] = p->config;
    }
    return n;
}

/* Appends to buf; 0, or NB_ELIMIT when it does not fit. */
static int
put(char *buf, size_t len, size_t *used, const char *s, size_t n)
{
    if (*used + n >= len)
        return NB_ELIMIT;
    memcpy(buf + *used, s, n);
    *used += n;
    buf[*used] = '\0';
    return 0;
}

/* printf at the end of buf; NB_ELIMIT when it does not fit. */
static int
appendf(char *buf, size_t len, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
appendf(char *buf, size_t len, size_t *used, const char *fmt, ...)
{
    va_list ap;
    int w;

    if (*used >= len)
        return NB_ELIMIT;
    va_start(ap, fmt);
    w = vsnprintf(buf + *used, len - *used, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= len - *used)
        return NB_ELIMIT;
    *used += (size_t)w;
    return 0;
}

/*
 * One word for a crontab line: as is when it is plain, else in single
 * quotes for /bin/sh.  Either way every '%' gets a backslash, since cron
 * turns a bare '%' into a newline before the shell sees the line.
 */
static int
cron_word(const char *s, char *buf, size_t len, size_t *used)
{
    int plain = s[0] != '\0';
    int rc = 0;

    for (const char *c = s; *c != '\0'; c++) {
        if (!(name_char(*c) || *c == '/' || *c == ':' || *c == ',' ||
              *c == '+' || *c == '=' || *c == '@' || *c == '%'))
            plain = 0;
    }
    if (!plain)
        rc = put(buf, len, used, "'", 1);
    for (const char *c = s; rc == 0 && *c != '\0'; c++) {
        if (*c == '\'')
            rc = put(buf, len, used, "'\\''", 4);
        else if (*c == '%')
            rc = put(buf, len, used, "\\%", 2);
        else
            rc = put(buf, len, used, c, 1);
    }
    if (rc == 0 && !plain)
        rc = put(buf, len, used, "'", 1);
    return rc;
}

/*
 * One word for ExecStart=: in double quotes when it holds blanks or
 * quotes, '\' and '"' escaped; '%' doubled (a specifier otherwise) and
 * '$' doubled (a variable otherwise).
 */
static int
unit_word(const char *s, char *buf, size_t len, size_t *used)
{
    int quote = s[0] == '\0' || strpbrk(s, " \t\"'\\;") != NULL;
    int rc = quote ? put(buf, len, used, "\"", 1) : 0;

    for (const char *c = s; rc == 0 && *c != '\0'; c++) {
        if (*c == '%' || *c == '$')         /* doubled: "%%", "$$" */
            rc = put(buf, len, used, c, 1);
        else if (quote && (*c == '\\' || *c == '"'))
            rc = put(buf, len, used, "\\", 1);
        if (rc == 0)
            rc = put(buf, len, used, c, 1);
    }
    if (rc == 0 && quote)
        rc = put(buf, len, used, "\"", 1);
    return rc;
}

/* A control character would break a crontab line or a unit file. */
static int
words_ok(const char *const *w, int n)
{
    for (int i = 0; i < n; i++) {
        for (const char *c = w[i]; *c != '\0'; c++) {
            if ((unsigned char)*c < ' ' || *c == 0x7f) {
                log_error("schedule: \"%s\": control characters cannot go "
                          "in a crontab or a unit file", w[i]);
                return 0;
            }
        }
    }
    return 1;
}

/* The starts of the windows, each once, in order. */
static int
window_starts(const struct window_set *set, int *starts)
{
    int n = 0;

    for (int m = 0; m < 24 * 60; m++) {
        for (int i = 0; i < set->n; i++) {
            if (set->span[i].start_min == m) {
                starts[n++] = m;
                break;
            }
        }
    }
    return n;
}

/* ---- cron ----------------------------------------------------------- */

/* "flock -n LOCK /path/nbbatch run ...", quoted for a crontab line. */
static int
cron_command(const struct plan *p, char *cmd, size_t len)
{
    const char *words[MAX_WORDS + 3];
    char lock[PATH_MAX + NAME_MAX_LEN + 8];
    size_t used = 0;
    int n = 3, rc = 0;

    snprintf(lock, sizeof(lock), "%s.%s.lock", p->db, p->name);
    words[0] = "flock";
    words[1] = "-n";
    words[2] = lock;
    n += run_words(p, words + 3);
    if (!words_ok(words, n))
        return NB_EINVAL;
    cmd[0] = '\0';
    for (int i = 0; rc == 0 && i < n; i++) {
        if (i > 0)
            rc = put(cmd, len, &used, " ", 1);
        if (rc == 0)
            rc = cron_word(words[i], cmd, len, &used);
    }
    return rc;
}

/*
 * The crontab block: a marker comment naming the schedule (--install
 * looks for it), notes, CRON_TZ when the zone is not the system's (set
 * back after), and one line per window start.
 */
static int
cron_block(const struct plan *p, char *buf, size_t len)
{
    char cmd[4 * PATH_MAX], sysname[TZONE_NAME_MAX + 1], err[256];
    const struct tzone *sys;
    int starts[WINDOW_MAX], n_starts, other_zone, rc;
    size_t used = 0;

    if (tzone_system(&sys, err, sizeof(err)) != 0)
        return NB_ENOMEM;
    other_zone = p->tz[0] != '\0' && !tzone_same(p->zone, sys);
    if ((rc = cron_command(p, cmd, sizeof(cmd))) != 0)
        return rc;

    rc = appendf(buf, len, &used,
                 "# nbbatch schedule %s: start `nbbatch run` when a window "
                 "opens\n# (windows %s, %s).\n"
                 "# The run stops by itself when the window closes; flock -n "
                 "skips a start\n# while an earlier run still holds the "
                 "lock.\n", p->name, p->windows,
                 p->tz[0] != '\0' ? p->tz : "local time");
    if (rc == 0 && !p->has_key_file)
        rc = appendf(buf, len, &used,
                     "# cron passes no GEMINI_API_KEY: name the key file "
                     "with key_file in [defaults]\n# of %s.\n",
                     p->config[0] != '\0' ? p->config
                                          : "~/.config/nbbatch/config");
    if (rc == 0 && other_zone)
        rc = appendf(buf, len, &used,
                     "# CRON_TZ makes cronie and busybox read the times "
                     "below in %s.\n# Debian's cron ignores CRON_TZ and "
                     "would start at system time: use\n# `nbbatch schedule "
                     "--systemd` there instead.\nCRON_TZ=%s\n", p->tz, p->tz);

    n_starts = window_starts(&p->set, starts);
    for (int i = 0; rc == 0 && i < n_starts; i++)
        rc = appendf(buf, len, &used, "%d %d * * * %s\n", starts[i] % 60,
                     starts[i] / 60, cmd);

    if (rc == 0 && other_zone) {
        system_zone_name(sysname, sizeof(sysname));
        if (sysname[0] != '\0')
            rc = appendf(buf, len, &used, "CRON_TZ=%s\n", sysname);
        else
            rc = appendf(buf, len, &used, "# (CRON_TZ=%s stays set for the "
                         "lines below)\n", p->tz);
    }
    return rc;
}

static void
close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* In the child: stdin from in_fd (else /dev/null), stdout to out_fd
 * (else kept), stderr dropped when quiet; then argv[0] from PATH. */
static void
child_exec(char *const argv[], int in_fd, int out_fd, int quiet)
    __attribute__((noreturn));

static void
child_exec(char *const argv[], int in_fd, int out_fd, int quiet)
{
    int devnull = open("/dev/null", O_RDWR);

    dup2(in_fd >= 0 ? in_fd : devnull, 0);
    if (out_fd >= 0)
        dup2(out_fd, 1);
    if (quiet)
        dup2(devnull, 2);
    execvp(argv[0], argv);
    _exit(127);
}

/* All of text into fd; a reader that quits early shows in its status. */
static void
feed(int fd, const char *text)
{
    size_t len = strlen(text), done = 0;

    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        done += (size_t)n;
    }
}

/* fd to its end into *out (owned, NUL-terminated), CRONTAB_MAX at most. */
static int
drain(int fd, char **out, size_t *out_len)
{
    char *buf = malloc(CRONTAB_MAX + 1);
    size_t got = 0;

    if (buf == NULL)
        return NB_ENOMEM;
    while (got < CRONTAB_MAX) {
        ssize_t n = read(fd, buf + got, CRONTAB_MAX - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                break;
            free(buf);
            return NB_EIO;
        }
        got += (size_t)n;
    }
    if (got == CRONTAB_MAX) {
        free(buf);
        return NB_ELIMIT;
    }
    buf[got] = '\0';
    *out = buf;
    *out_len = got;
    return 0;
}

/*
 * Runs argv (found on PATH), feeding it in on stdin when in is not NULL,
 * else collecting its stdout into *out (owned) when out is not NULL:
 * never both, so neither side can wait on the other.  Its stderr is
 * dropped when quiet.  Returns the exit status (127: it could not be
 * started, 128: killed by a signal) or a negative NB_E code.
 */
static int
run_child(char *const argv[], const char *in, char **out, size_t *out_len,
          int quiet)
{
    int fds[2] = {-1, -1};
    int status = 0, rc = 0;
    void (*old_pipe)(int);
    pid_t pid;

    if ((in != NULL || out != NULL) && pipe2(fds, O_CLOEXEC) != 0)
        return NB_EIO;
    pid = fork();
    if (pid == 0)
        child_exec(argv, in != NULL ? fds[0] : -1,
                   out != NULL ? fds[1] : -1, quiet);
    close_fd(&fds[in != NULL ? 0 : 1]);         /* the child's end */
    if (pid > 0) {
        old_pipe = signal(SIGPIPE, SIG_IGN);
        if (in != NULL)
            feed(fds[1], in);
        else if (out != NULL)
            rc = drain(fds[0], out, out_len);
        signal(SIGPIPE, old_pipe);
    }
    close_fd(&fds[0]);
    close_fd(&fds[1]);
    if (pid < 0)
        return NB_EIO;

    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            if (rc == 0 && out != NULL)
                free(*out);
            return NB_EIO;
        }
    }
    if (rc != 0)
        return rc;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* 1 when a line of text is line[0..len) (whole, or as a prefix). */
static int
has_line(const char *text, const char *line, size_t len, int prefix)
{
    for (const char *s = text; *s != '\0';) {
        const char *end = strchr(s, '\n');
        size_t n = end != NULL ? (size_t)(end - s) : strlen(s);

        if ((n == len || (prefix && n > len)) && memcmp(s, line, len) == 0)
            return 1;
        if (end == NULL)
            break;
        s = end + 1;
    }
    return 0;
}

/*
 * What of block the crontab text has already: the marker that starts the
 * block ("# nbbatch schedule NAME:") at the start of a line, or one of
 * its schedule lines whole.  NULL when none; else *len is its length.
 */
static const char *
duplicate_line(const char *text, const char *block, size_t *len)
{
    const char *colon = strchr(block, ':');

    if (colon != NULL &&
        has_line(text, block, (size_t)(colon - block + 1), 1)) {
        *len = (size_t)(colon - block + 1);
        return block;
    }
    for (const char *s = block; *s != '\0';) {
        const char *end = strchr(s, '\n');
        size_t n = end != NULL ? (size_t)(end - s) : strlen(s);

        if (s[0] != '#' && strncmp(s, "CRON_TZ=", 8) != 0 &&
            has_line(text, s, n, 0)) {
            *len = n;
            return s;
        }
        if (end == NULL)
            break;
        s = end + 1;
    }
    return NULL;
}

static int
install_cron(const char *block)
{
    char *const list_argv[] = {"crontab", "-l", NULL};
    char *const load_argv[] = {"crontab", "-", NULL};
    char *old = NULL, *text = NULL;
    const char *dup;
    size_t old_len = 0, len;
    int status, rc = EXIT_IOERR;

    status = run_child(list_argv, NULL, &old, &old_len, 1);
    if (status == 127 || status < 0) {
        log_error("schedule: cannot run `crontab -l`: %s", status == 127 ?
                  "is cron installed?" : nb_strerror(status));
        goto done;
    }
    if (status != 0)
        old[0] = '\0';          /* "no crontab for user" */

    dup = duplicate_line(old, block, &len);
    if (dup != NULL) {
        log_error("schedule: your crontab already has \"%.*s\": remove it "
                  "with `crontab -e` first, or pick another --name",
                  (int)len, dup);
        rc = EXIT_CONFIG;
        goto done;
    }

    len = strlen(old) + strlen(block) + 2;
    text = malloc(len);
    if (text == NULL) {
        log_error("schedule: out of memory");
        goto done;
    }
    snprintf(text, len, "%s%s%s", old, old[0] != '\0' &&
             old[strlen(old) - 1] != '\n' ? "\n" : "", block);
    status = run_child(load_argv, text, NULL, NULL, 0);
    if (status != 0) {
        if (status < 0)
            log_error("schedule: cannot run `crontab -`: %s",
                      nb_strerror(status));
        else
            log_error("schedule: `crontab -` failed (exit %d); the crontab "
                      "is unchanged", status);
        goto done;
    }
    printf("added to your crontab:\n%s", block);
    rc = EXIT_OK;

done:
    free(text);
    free(old);
    return rc;
}

static int
do_cron(const struct plan *p, int install)
{
    char block[16 * 1024];
    int rc = cron_block(p, block, sizeof(block));

    if (rc != 0) {
        if (rc != NB_EINVAL)
            log_error("schedule: cannot build the crontab lines: %s",
                      nb_strerror(rc));
        return rc == NB_EINVAL ? EXIT_USAGE : EXIT_SOFTWARE;
    }
    if (!install) {
        fputs(block, stdout);
        return EXIT_OK;
    }
    return install_cron(block);
}

/* ---- systemd -------------------------------------------------------- */

/* The ExecStart= value: `nbbatch run ...` quoted for systemd. */
static int
unit_exec(const struct plan *p, char *exec, size_t len)
{
    const char *words[MAX_WORDS];
    size_t used = 0;
    int n = run_words(p, words), rc = 0;

    if (!words_ok(words, n))
        return NB_EINVAL;
    exec[0] = '\0';
    for (int i = 0; rc == 0 && i < n; i++) {
        if (i > 0)
            rc = put(exec, len, &used, " ", 1);
        if (rc == 0)
            rc = unit_word(words[i], exec, len, &used);
    }
    return rc;
}

/* The service (one run) and the timer (a start at each window start). */
static int
unit_texts(const struct plan *p, char *service, size_t slen, char *timer,
           size_t tlen)
{
    char exec[4 * PATH_MAX];
    const char *zone = p->tz[0] != '\0' ? p->tz : "local time";
    int starts[WINDOW_MAX], n_starts, rc;
    size_t used = 0;

    if ((rc = unit_exec(p, exec, sizeof(exec))) != 0)
        return rc;
    rc = appendf(service, slen, &used,
                 "[Unit]\nDescription=nbbatch run in the off-peak windows %s "
                 "(%s)\n\n[Service]\nType=oneshot\nExecStart=%s\n"
                 "# 75: the window closed with work left for the next one\n"
                 "SuccessExitStatus=75\n%s", p->windows, zone, exec,
                 p->has_key_file ? "" :
                 "# systemd passes no GEMINI_API_KEY: name the key file "
                 "with key_file\n# in [defaults] of the config file.\n");
    if (rc != 0)
        return rc;

    used = 0;
    rc = appendf(timer, tlen, &used, "[Unit]\nDescription=Start "
                 "nbbatch-%s.service when an off-peak window opens\n\n"
                 "[Timer]\n", p->name);
    n_starts = window_starts(&p->set, starts);
    for (int i = 0; rc == 0 && i < n_starts; i++)
        rc = appendf(timer, tlen, &used, "OnCalendar=*-*-* %02d:%02d:00%s%s\n",
                     starts[i] / 60, starts[i] % 60,
                     p->tz[0] != '\0' ? " " : "", p->tz);
    if (rc == 0)
        rc = appendf(timer, tlen, &used, "Persistent=true\n\n[Install]\n"
                     "WantedBy=timers.target\n");
    return rc;
}

/* $XDG_CONFIG_HOME/systemd/user, else ~/.config/systemd/user. */
static int
unit_dir(char *buf, size_t len)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");
    int w;

    if (xdg != NULL && xdg[0] == '/')
        w = snprintf(buf, len, "%s/systemd/user", xdg);
    else if (home != NULL && home[0] != '\0')
        w = snprintf(buf, len, "%s/.config/systemd/user", home);
    else
        return NB_ENOTFOUND;
    return w < 0 || (size_t)w >= len ? NB_ELIMIT : 0;
}

/* mkdir -p, mode 0700 for what it creates. */
static int
make_dirs(const char *path)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);

    if (len >= sizeof(buf))
        return -1;
    memcpy(buf, path, len + 1);
    for (char *s = buf + 1; ; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;

            *s = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -1;
            *s = c;
            if (c == '\0')
                return 0;
        }
    }
}

/* 1 when path holds exactly text, 0 when it differs, -1 when absent. */
static int
same_content(const char *path, const char *text)
{
    size_t len = strlen(text);
    char *buf;
    FILE *f = fopen(path, "r");
    int same;

    if (f == NULL)
        return -1;
    buf = malloc(len + 2);
    same = buf != NULL && fread(buf, 1, len + 1, f) == len &&
           memcmp(buf, text, len) == 0;
    free(buf);
    fclose(f);
    return same;
}

/* Writes text to path through a temporary file and a rename. */
static int
write_unit(const char *path, const char *text)
{
    char tmp[PATH_MAX + 8];
    FILE *f;
    int ok;

    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    ok = fputs(text, f) >= 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int
install_units(const struct plan *p, const char *service, const char *timer)
{
    char dir[PATH_MAX], paths[2][PATH_MAX + NAME_MAX_LEN + 32];
    const char *texts[2] = {service, timer};
    int same[2];

    if (unit_dir(dir, sizeof(dir)) != 0) {
        log_error("schedule: neither XDG_CONFIG_HOME nor HOME is set");
        return EXIT_CONFIG;
    }
    for (int i = 0; i < 2; i++) {
        snprintf(paths[i], sizeof(paths[i]), "%s/nbbatch-%s.%s", dir,
                 p->name, i == 0 ? "service" : "timer");
        same[i] = same_content(paths[i], texts[i]);
        if (same[i] == 0) {
            log_error("schedule: %s exists with other content: remove it "
                      "first, or pick another --name", paths[i]);
            return EXIT_CONFIG;
        }
    }
    if (make_dirs(dir) != 0) {
        log_error("schedule: %s: %s", dir, strerror(errno));
        return EXIT_IOERR;
    }
    for (int i = 0; i < 2; i++) {
        if (same[i] == 1) {
            printf("unchanged %s\n", paths[i]);
            continue;
        }
        if (write_unit(paths[i], texts[i]) != 0) {
            log_error("schedule: %s: %s", paths[i], strerror(errno));
            return EXIT_IOERR;
        }
        printf("wrote %s\n", paths[i]);
    }
    printf("now run:\n  systemctl --user daemon-reload && "
           "systemctl --user enable --now nbbatch-%s.timer\n"
           "(and `loginctl enable-linger` for it to run while you are "
           "logged out)\n", p->name);
    return EXIT_OK;
}

static int
do_systemd(const struct plan *p, int install)
{
    char service[8 * PATH_MAX], timer[4096], dir[PATH_MAX];
    int rc = unit_texts(p, service, sizeof(service), timer, sizeof(timer));

    if (rc != 0) {
        if (rc != NB_EINVAL)
            log_error("schedule: cannot build the units: %s",
                      nb_strerror(rc));
        return rc == NB_EINVAL ? EXIT_USAGE : EXIT_SOFTWARE;
    }
    if (install)
        return install_units(p, service, timer);
    if (unit_dir(dir, sizeof(dir)) != 0)
        snprintf(dir, sizeof(dir), "~/.config/systemd/user");
    printf("# %s/nbbatch-%s.service\n%s\n# %s/nbbatch-%s.timer\n%s\n"
           "# `nbbatch schedule --systemd --install` writes both; then:\n"
           "#   systemctl --user daemon-reload && "
           "systemctl --user enable --now nbbatch-%s.timer\n",
           dir, p->name, service, dir, p->name, timer, p->name);
    return EXIT_OK;
}

/* ---- the command ---------------------------------------------------- */

static int
load_config(const char *path, struct config *cfg)
{
    char err[512];
    int rc = config_load(path, cfg, err, sizeof(err));

    if (rc == 0)
        return EXIT_OK;
    log_error("%s", err);
    if (rc == NB_ENOTFOUND || rc == NB_EIO)
        return EXIT_NOINPUT;
    return rc == NB_ENOMEM ? EXIT_SOFTWARE : EXIT_CONFIG;
}

int
cmd_schedule(int argc, char **argv)
{
    struct sched_opts o;
    struct config *cfg = NULL;
    struct plan *p = NULL;
    ssize_t n;
    int rc;

    rc = parse_args(argc, argv, &o);
    if (rc != EXIT_OK)
        return rc < 0 ? EXIT_OK : rc;
    cfg = malloc(sizeof(*cfg));
    p = calloc(1, sizeof(*p));
    if (cfg == NULL || p == NULL) {
        log_error("schedule: out of memory");
        rc = EXIT_SOFTWARE;
        goto done;
    }
    if ((rc = load_config(o.config, cfg)) != EXIT_OK ||
        (rc = make_plan(&o, cfg, p)) != EXIT_OK)
        goto done;

    if (!o.cron && !o.systemd) {
        rc = show(p);
        goto done;
    }
    n = readlink("/proc/self/exe", p->exe, sizeof(p->exe) - 1);
    if (n <= 0) {
        log_error("schedule: cannot find this program's path: %s",
                  strerror(errno));
        rc = EXIT_SOFTWARE;
        goto done;
    }
    p->exe[n] = '\0';
    if (access(p->db, F_OK) != 0)
        log_warn("schedule: %s does not exist yet: `nbbatch add --db %s` "
                 "creates it", p->db, p->db);
    rc = o.cron ? do_cron(p, o.install) : do_systemd(p, o.install);

done:
    free(p);
    free(cfg);
    return rc;
}
