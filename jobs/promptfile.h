/*
 * promptfile.h - reads prompt files into job entries.
 *
 * Three line formats, chosen per line: a JSON object (JSON Lines), a line
 * starting with "--" (leading per-line options, then the prompt), or plain
 * text (the whole line is the prompt).  In every format a line whose first
 * non-blank character is '#' is a comment and blank lines are skipped.
 * Every value is validated here (UTF-8, lengths, model, aspect ratio and
 * size the model accepts, counts, priorities, times); reference images are
 * only named here, not read.
 */
#ifndef NB_PROMPTFILE_H
#define NB_PROMPTFILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PROMPTFILE_MAX_PROMPT 32768   /* bytes */
#define PROMPTFILE_MAX_COUNT  1000
#define PROMPTFILE_MAX_IMAGES 14
#define PROMPTFILE_MAX_LINE   (1 << 20)

/* Settings from the command line that lines inherit; all borrowed. */
struct promptfile_defaults {
    const char *model;         /* never NULL */
    const char *aspect;        /* NULL: model chooses */
    const char *size;          /* NULL: model default */
    int count;                 /* >= 1 */
    int priority;
    int64_t not_before_ms;     /* 0: none */
    int offpeak;
    const char *via;           /* "direct" or "batch" */
};

/* One prompt line, valid for the callback's duration only. */
struct promptfile_entry {
    long line;                 /* 1-based line number */
    const char *prompt;
    const char *name;          /* output file name or NULL */
    const char *model;
    const char *aspect;        /* may be NULL */
    const char *size;          /* may be NULL */
    int count;
    int priority;
    int64_t not_before_ms;
    int offpeak;
    const char *via;
    const char *out;           /* per-line output folder or NULL */
    size_t n_images;
    const char *const *images; /* reference image paths as written */
};

/* Where and why a file was refused. */
struct promptfile_error {
    long line;                 /* 0 when not about one line */
    char field[32];            /* "prompt", "aspect_ratio", ... or "" */
    char message[256];
};

/*
 * Called once per entry; a non-zero return stops parsing and is returned
 * by the parser (the callback fills err itself if it wants).
 */
typedef int (*promptfile_cb)(const struct promptfile_entry *e, void *arg,
                             struct promptfile_error *err);

/*
 * Reads in to the end, calling cb for each valid entry.  Returns 0, or
 * NB_EPARSE / NB_EINVAL / NB_ELIMIT with err filled at the first bad line
 * (entries before it were already passed to cb: callers that must be
 * atomic collect inside a transaction and roll back).
 */
int promptfile_parse(FILE *in, const struct promptfile_defaults *d,
                     promptfile_cb cb, void *arg,
                     struct promptfile_error *err);

/* The same over a memory buffer (used by the fuzzer and tests). */
int promptfile_parse_buf(const char *buf, size_t len,
                         const struct promptfile_defaults *d,
                         promptfile_cb cb, void *arg,
                         struct promptfile_error *err);

/*
 * Parses a time given as "YYYY-MM-DDTHH:MM[:SS]" (local, or with a "Z" or
 * "+HH:MM" offset), or a whole number of seconds since the epoch, into
 * *ms.  Returns 0 or NB_EINVAL.
 */
int promptfile_parse_time(const char *s, int64_t *ms);

#endif
