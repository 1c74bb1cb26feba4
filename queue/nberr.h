/*
 * nberr.h - the one error convention of nbbatch.
 *
 * A function that can fail returns 0 or one of the negative NB_E codes
 * below; nb_strerror() names it.  Constructors return NULL instead.  Only
 * runner/ turns a code into an exit status.
 */
#ifndef NB_NBERR_H
#define NB_NBERR_H

enum {
    NB_OK = 0,
    NB_ENOMEM = -1,     /* allocation failed */
    NB_EIO = -2,        /* a file system call failed (errno kept) */
    NB_EDB = -3,        /* SQLite failed */
    NB_EINVAL = -4,     /* bad input or argument */
    NB_ENOTFOUND = -5,  /* no such job, batch or file */
    NB_ELEASE = -6,     /* the job is no longer leased by this owner */
    NB_EPARSE = -7,     /* malformed JSON, prompt file or answer */
    NB_EIMAGE = -8,     /* image bytes corrupt or of an unknown format */
    NB_EEXIST = -9,     /* a unique name or key is already taken */
    NB_ESTATE = -10,    /* the job or batch is in the wrong state */
    NB_EHTTP = -11,     /* transport failure */
    NB_ESCHEMA = -12,   /* database written by a newer nbbatch */
    NB_ELIMIT = -13     /* a size or count limit was exceeded */
};

/* A static, human-readable name for code (never NULL). */
const char *nb_strerror(int code);

#endif
