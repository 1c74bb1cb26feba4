/*
 * owner.h - who holds a lease: "host:pid:start", checkable on this host.
 */
#ifndef NB_OWNER_H
#define NB_OWNER_H

#include <stddef.h>

/*
 * Writes this process's owner string "HOST:PID:START" into buf, START
 * being the process start time in clock ticks since boot (so a reused pid
 * is not taken for us).  Returns 0 or NB_ELIMIT.
 */
int owner_self(char *buf, size_t len);

/*
 * 1 when owner may still be running: a process on another host (its lease
 * expiry decides), or one on this host whose pid exists with the same
 * start time.  0 when it is gone.  arg is unused (queue_reclaim's shape).
 */
int owner_alive(const char *owner, void *arg);

#endif
