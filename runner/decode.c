/*
 * decode.c - worker threads for the CPU-heavy end of each request.
 *
 * The network thread submits a finished transfer; a worker classifies the
 * answer (jansson on the small skeleton) and, when it carries an image,
 * validates and writes the PNG (libpng, libjpeg).  Finished tasks wait on
 * a second list until the network thread takes them and records them in
 * the database: workers never touch the queue.  A corrupt image is not a
 * write error but an answer class: it becomes a transient failure, to be
 * retried like a truncated body.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/nberr.h"
#include "queue/queue.h"
#include "runner/decode.h"

struct decode_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct decode_task *todo_head, *todo_tail;
    struct decode_task *done;
    int pending;
    int stopping;
    int nthreads;
    pthread_t *threads;
    void (*notify)(void *);
    void *notify_arg;
};

static void
write_image(struct decode_task *t)
{
    const struct queue_job *job = t->job;
    struct answer_result *r = &t->result;
    struct image_meta meta = {
        .job_id = job->id,
        .batch = job->batch,
        .prompt = job->prompt,
        .model = job->model,
        .aspect = job->aspect,
        .size = job->size,
        .response_id = r->response_id[0] ? r->response_id : NULL,
        .model_version = r->model_version[0] ? r->model_version : NULL,
        .prompt_tokens = r->prompt_tokens,
        .output_tokens = r->output_tokens,
        .thought_tokens = r->thought_tokens,
        .total_tokens = r->total_tokens,
    };

    t->write_rc = image_write(r->image_fd, job->out_path, &meta, &t->info,
                              t->write_err, sizeof(t->write_err));
    if (t->write_rc == NB_EIMAGE) {
        /* The answer was billed but unusable: retry it like a transport
         * failure. */
        r->cls = ANSWER_TRANSIENT;
        snprintf(r->message, sizeof(r->message), "corrupt image in the "
                 "answer: %s", t->write_err);
    }
}

static void
process(struct decode_task *t)
{
    t->write_rc = 0;
    t->write_err[0] = '\0';
    memset(&t->info, 0, sizeof(t->info));
    if (!t->classified)
        answer_classify(t->answer, t->http_status, t->transport_error,
                        t->transport_error ? t->transport_msg : NULL,
                        t->retry_after[0] ? t->retry_after : NULL,
                        &t->result);
    if (t->result.cls == ANSWER_OK)
        write_image(t);
}

static void *
worker(void *arg)
{
    struct decode_pool *p = arg;
    struct decode_task *t;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->todo_head == NULL && !p->stopping)
            pthread_cond_wait(&p->wake, &p->lock);
        t = p->todo_head;
        if (t == NULL)
            break;
        p->todo_head = t->next;
        if (p->todo_head == NULL)
            p->todo_tail = NULL;
        pthread_mutex_unlock(&p->lock);

        process(t);

        pthread_mutex_lock(&p->lock);
        t->next = p->done;
        p->done = t;
        pthread_mutex_unlock(&p->lock);
        if (p->notify != NULL)
            p->notify(p->notify_arg);
        pthread_mutex_lock(&p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

struct decode_pool *
decode_pool_new(int threads, void (*notify)(void *), void *arg)
{
    struct decode_pool *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    if (threads < 1)
        threads = 1;
    p->threads = calloc((size_t)threads, sizeof(pthread_t));
    if (p->threads == NULL) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->notify = notify;
    p->notify_arg = arg;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker, p) != 0)
            break;
        p->nthreads++;
    }
    if (p->nthreads == 0) {
        decode_pool_free(p);
        return NULL;
    }
    return p;
}

void
decode_pool_submit(struct decode_pool *p, struct decode_task *t)
{
    t->next = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->todo_tail != NULL)
        p->todo_tail->next = t;
    else
        p->todo_head = t;
    p->todo_tail = t;
    p->pending++;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
}

struct decode_task *
decode_pool_take(struct decode_pool *p)
{
    struct decode_task *list, *rev = NULL, *next;

    pthread_mutex_lock(&p->lock);
    list = p->done;
    p->done = NULL;
    for (struct decode_task *t = list; t != NULL; t = t->next)
        p->pending--;
    pthread_mutex_unlock(&p->lock);
    /* Oldest first. */
    for (; list != NULL; list = next) {
        next = list->next;
        list->next = rev;
        rev = list;
    }
    return rev;
}

int
decode_pool_pending(struct decode_pool *p)
{
    int n;

    pthread_mutex_lock(&p->lock);
    n = p->pending;
    pthread_mutex_unlock(&p->lock);
    return n;
}

void
decode_pool_free(struct decode_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p->threads);
    free(p);
}
