/*
 * cli.h - what the subcommands share: exit statuses, the database path,
 * the clock.  Only runner/ includes this.
 */
#ifndef NB_CLI_H
#define NB_CLI_H

#include <stddef.h>
#include <stdint.h>

struct queue;

/* The one table of exit statuses (README "Exit status"). */
enum {
    EXIT_OK = 0,            /* everything it could do is done */
    EXIT_SOME_FAILED = 1,   /* some jobs failed or were blocked */
    EXIT_USAGE = 64,        /* bad command line */
    EXIT_DATAERR = 65,      /* bad input file: nothing was added */
    EXIT_NOINPUT = 66,      /* an input file cannot be read */
    EXIT_SOFTWARE = 70,     /* internal error */
    EXIT_IOERR = 74,        /* database or file system failure */
    EXIT_TEMPFAIL = 75,     /* stopped with work left: run again later */
    EXIT_CONFIG = 78,       /* fatal configuration error (key, model...) */
    EXIT_INTERRUPTED = 130  /* stopped by SIGINT */
};

/* The nbbatch version, e.g. "0.1.0". */
#define NBBATCH_VERSION "0.1.0"

/* Creates dir and its missing parents (mode 0755); 0 or -1 (errno). */
int cli_mkdir_p(const char *dir);
/* The folder part of path into dir ("/" for a file at the root). */
void cli_dir_of(const char *path, char *dir, size_t len);

/* Subcommand entry point: argv[0] is the subcommand's name. */
typedef int (*cli_handler)(int argc, char **argv);

/*
 * Opens the queue at db (from --db), else $NBBATCH_DB, else ./nbbatch.db,
 * printing a message on failure.  Returns an exit status (EXIT_OK on
 * success, with *q set).
 */
int cli_open_queue(const char *db, struct queue **q);

/* Wall-clock now in milliseconds since the epoch. */
int64_t cli_now_ms(void);
/* Monotonic clock in milliseconds. */
int64_t cli_mono_ms(void);

/* Prints "usage: nbbatch <usage line>" of the subcommand to stderr and
 * returns EXIT_USAGE. */
int cli_usage(const char *command);

/* Subcommands (runner/cmd_*.c, run.c, doctor.c). */
int cmd_add(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_retry(int argc, char **argv);
int cmd_pause(int argc, char **argv);
int cmd_resume(int argc, char **argv);
int cmd_budget(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_doctor(int argc, char **argv);
int cmd_schedule(int argc, char **argv);
int cmd_mcp(int argc, char **argv);

#endif
