/*
 * main.c - nbbatch's command dispatch.
 *
 * One table maps each subcommand to its handler and usage line, so that
 * `nbbatch help` and the parser never disagree.  Handlers return an exit
 * status from the table in cli.h; nothing below main() calls exit().
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "queue/nberr.h"
#include "queue/queue.h"
#include "runner/cli.h"
#include "runner/log.h"


struct command {
    const char *name;
    cli_handler handler;
    const char *usage;
    const char *summary;
};

static const struct command commands[] = {
    {"add", cmd_add,
     "add [--batch NAME] [--model M] [--aspect R] [--size S] [--count N]\n"
     "        [--out DIR] [--priority P] [--not-before TIME] [--offpeak]\n"
     "        [--via direct|batch] [--dry-run] [--db PATH] FILE...",
     "queue the prompts of FILEs ('-' reads stdin)"},
    {"status", cmd_status, "status [--json] [--db PATH] [BATCH]",
     "counts by state per batch"},
    {"list", cmd_list,
     "list [--state S] [--batch B] [--limit N] [--json] [--db PATH]",
     "list jobs"},
    {"show", cmd_show, "show [--json] [--db PATH] JOB",
     "one job's settings, output and every attempt"},
    {"cancel", cmd_cancel, "cancel [--db PATH] JOB|--batch B",
     "cancel a job or a batch's unfinished jobs (and remote batches)"},
    {"retry", cmd_retry, "retry [--db PATH] [JOB|--batch B|--all]",
     "put failed and blocked jobs back in the queue"},
    {"pause", cmd_pause, "pause [--db PATH] BATCH",
     "stop claiming a batch's jobs"},
    {"resume", cmd_resume, "resume [--db PATH] BATCH",
     "claim a paused batch's jobs again"},
    {"budget", cmd_budget, "budget [--db PATH] BATCH USD",
     "cap what a batch may spend (0 removes the cap)"},
    {"run", cmd_run,
     "run [--batch B] [--workers N] [--max-jobs N] [--until TIME]\n"
     "        [--timeout SEC] [--grace SEC] [--window W] [--tz TZ] [--wait]\n"
     "        [--budget USD] [--rpm N] [--rpd N] [--key-file F]\n"
     "        [--batch-poll SEC] [--batch-chunk N] [--detach]\n"
     "        [--config F] [--log-level L] [--json]\n"
     "        [--db PATH]",
     "generate the queued images"},
    {"doctor", cmd_doctor,
     "doctor [--model M] [--generate] [--key-file F] [--config F]\n"
     "        [--timeout SEC]",
     "check key, network, endpoint and model"},
    {"schedule", cmd_schedule,
     "schedule [--window W] [--tz TZ] [--config F] [--db PATH] [--batch B]\n"
     "        [--name N] [--cron | --systemd] [--install]",
     "show the off-peak windows; print or install a cron line or timer"},
    {"mcp", cmd_mcp,
     "mcp [--db PATH] [--workers N] [--key-file F] [--config F]\n"
     "        [--log-level L]",
     "serve the Model Context Protocol on stdin/stdout (for agents)"},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void
print_help(FILE *out)
{
    fprintf(out, "nbbatch %s - batch image generation with Gemini image "
            "models\n\nusage: nbbatch COMMAND [OPTIONS]\n\n", NBBATCH_VERSION);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n`nbbatch help COMMAND` shows a command's options.\n");
}

int
cli_usage(const char *command)
{
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, command) == 0) {
            fprintf(stderr, "usage: nbbatch %s\n", commands[i].usage);
            return EXIT_USAGE;
        }
    }
    print_help(stderr);
    return EXIT_USAGE;
}

int
cli_open_queue(const char *db, struct queue **q)
{
    char err[512];
    int rc;

    if (db == NULL || *db == '\0')
        db = getenv("NBBATCH_DB");
    if (db == NULL || *db == '\0')
        db = "nbbatch.db";
    rc = queue_open(db, q, err, sizeof(err));
    if (rc == 0)
        return EXIT_OK;
    log_error("%s: %s", db, err[0] ? err : nb_strerror(rc));
    return rc == NB_ESCHEMA ? EXIT_CONFIG : EXIT_IOERR;
}

int64_t
cli_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
cli_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
main(int argc, char **argv)
{
    const char *name;

    if (argc < 2) {
        print_help(stderr);
        return EXIT_USAGE;
    }
    name = argv[1];
    if (strcmp(name, "help") == 0 || strcmp(name, "--help") == 0 ||
        strcmp(name, "-h") == 0) {
        if (argc > 2) {
            cli_usage(argv[2]);
            return EXIT_OK;
        }
        print_help(stdout);
        return EXIT_OK;
    }
    if (strcmp(name, "version") == 0 || strcmp(name, "--version") == 0) {
        printf("nbbatch %s\n", NBBATCH_VERSION);
        return EXIT_OK;
    }
    if (log_init(NULL) != 0)
        log_warn("ignoring unknown log level in NBBATCH_LOG_LEVEL/LOG_LEVEL");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return commands[i].handler(argc - 1, argv + 1);
    }
    log_error("unknown command '%s' (see `nbbatch help`)", name);
    return EXIT_USAGE;
}

int
cli_mkdir_p(const char *dir)
{
    char path[4096];
    size_t len = strlen(dir);

    if (len == 0 || len >= sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(path, dir, len + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

void
cli_dir_of(const char *path, char *dir, size_t len)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash != NULL ? (size_t)(slash - path) : 0;

    if (n >= len)
        n = len - 1;
    memcpy(dir, path, n);
    dir[n] = '\0';
    if (n == 0)
        snprintf(dir, len, "/");
}
