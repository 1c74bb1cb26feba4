/*
 * advice.h - what to do about a failure, in the words of the error guide.
 */
#ifndef NB_ADVICE_H
#define NB_ADVICE_H

/*
 * One sentence telling the user what to do about an answer with this HTTP
 * status, ErrorInfo reason (or "" / NULL) and API status (or NULL).
 * Static text, never NULL.
 */
const char *advice_for(int http_status, const char *reason,
                       const char *api_status);

/* "." when msg does not already end a sentence, else "" (static). */
const char *advice_stop(const char *msg);

#endif
