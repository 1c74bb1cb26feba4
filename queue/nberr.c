/*
 * nberr.c - names for the NB_E error codes.
 */
#include "queue/nberr.h"

const char *
nb_strerror(int code)
{
    switch (code) {
    case NB_OK:        return "success";
    case NB_ENOMEM:    return "out of memory";
    case NB_EIO:       return "input/output error";
    case NB_EDB:       return "database error";
    case NB_EINVAL:    return "invalid argument";
    case NB_ENOTFOUND: return "not found";
    case NB_ELEASE:    return "lease lost";
    case NB_EPARSE:    return "parse error";
    case NB_EIMAGE:    return "bad image data";
    case NB_EEXIST:    return "already exists";
    case NB_ESTATE:    return "wrong state";
    case NB_EHTTP:     return "transport error";
    case NB_ESCHEMA:   return "database is from a newer nbbatch";
    case NB_ELIMIT:    return "limit exceeded";
    }
    return "unknown error";
}
