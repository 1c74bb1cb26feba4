/*
 * owner.c - lease owners that another process can check.
 *
 * A lease names its holder as HOST:PID:START.  On the same host, a holder
 * is alive when /proc/PID/stat exists and shows the same start time;
 * that tells a crashed run from a live one at once, without waiting for
 * the lease to expire.  Holders on other hosts are assumed alive: only
 * their lease expiry can free their jobs.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/nberr.h"
#include "runner/owner.h"

/* Start time (field 22 of /proc/PID/stat) of pid, or 0 when unknown. */
static unsigned long long
proc_start_time(long pid)
{
    char path[64], buf[1024];
    FILE *f;
    size_t n;
    char *p;
    unsigned long long start = 0;

    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: skip past the
     * last ')' and count fields from there (field 3 follows it). */
    p = strrchr(buf, ')');
    if (p == NULL)
        return 0;
    p++;
    for (int field = 3; field < 22 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    if (p != NULL)
        start = strtoull(p + 1, NULL, 10);
    return start;
}

static void
host_name(char *buf, size_t len)
{
    if (gethostname(buf, len) != 0 || buf[0] == '\0')
        snprintf(buf, len, "localhost");
    buf[len - 1] = '\0';
    for (char *c = buf; *c; c++) {
        if (*c == ':')
            *c = '_';
    }
}

int
owner_self(char *buf, size_t len)
{
    char host[256];
    long pid = (long)getpid();
    int n;

    host_name(host, sizeof(host));
    n = snprintf(buf, len, "%s:%ld:%llu", host, pid, proc_start_time(pid));
    return (n < 0 || (size_t)n >= len) ? NB_ELIMIT : 0;
}

int
owner_alive(const char *owner, void *arg)
{
    char host[256];
    const char *pid_part, *start_part;
    char *end;
    long pid;
    unsigned long long start;

    (void)arg;
    host_name(host, sizeof(host));
    pid_part = strchr(owner, ':');
    if (pid_part == NULL)
        return 0;
    if ((size_t)(pid_part - owner) != strlen(host) ||
        strncmp(owner, host, strlen(host)) != 0)
        return 1;
    pid = strtol(pid_part + 1, &end, 10);
    if (*end != ':' || pid <= 0)
        return 0;
    start_part = end + 1;
    start = strtoull(start_part, NULL, 10);
    return proc_start_time(pid) == start && start != 0;
}
