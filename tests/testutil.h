/*
 * testutil.h - small helpers shared by the cmocka tests (include after
 * cmocka.h).
 */
#ifndef NB_TESTUTIL_H
#define NB_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* "YYYY-MM-DD HH:MM[:SS]" in UTC as epoch milliseconds (glibc timegm, so
 * the expected instants do not lean on tzone's calendar). */
static inline int64_t
utc(const char *text)
{
    struct tm tm = {0};
    int sec = 0;
    int n = sscanf(text, "%d-%d-%d %d:%d:%d", &tm.tm_year, &tm.tm_mon,
                   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &sec);

    assert_true(n >= 5);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_sec = sec;
    return (int64_t)timegm(&tm) * 1000;
}

#endif
