/*
 * decode.h - the CPU side of a run: classify answers and write images on a
 * few worker threads, so the network thread never waits for libpng.
 */
#ifndef NB_DECODE_H
#define NB_DECODE_H

#include "jobs/answer.h"
#include "jobs/image.h"

struct queue_job;

/* One answer to turn into an outcome; owned by the submitter. */
struct decode_task {
    /* in */
    struct answer *answer;          /* borrowed; freed by the submitter */
    const struct queue_job *job;    /* borrowed */
    int http_status;
    int transport_error;
    char transport_msg[256];
    char retry_after[64];
    int classified;                 /* result below already filled */
    /* out */
    struct answer_result result;
    int write_rc;                   /* image_write()'s result, when the
                                       answer carried an image */
    char write_err[256];
    struct image_info info;
    /* the pool's */
    struct decode_task *next;
    void *user;
};

struct decode_pool;

/*
 * Starts threads workers.  notify(arg) is called from a worker each time
 * a task is done (to wake the network thread).  NULL on failure.
 */
struct decode_pool *decode_pool_new(int threads, void (*notify)(void *),
                                    void *arg);
/* Queues t; a worker classifies it (unless t->classified) and, for an
 * image, writes the PNG. */
void decode_pool_submit(struct decode_pool *p, struct decode_task *t);
/* Takes every finished task (a list through ->next), or NULL. */
struct decode_task *decode_pool_take(struct decode_pool *p);
/* Tasks submitted and not yet taken. */
int decode_pool_pending(struct decode_pool *p);
/* Finishes queued tasks, stops the workers and frees; NULL is fine. */
void decode_pool_free(struct decode_pool *p);

#endif
