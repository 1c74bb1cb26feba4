/*
 * fuzz_promptfile.c - libFuzzer target for the prompt-file parser.
 *
 * Any bytes go through promptfile_parse_buf(); every entry that comes out
 * is read field by field and checked against the parser's promises (a
 * prompt within limits, a model that exists, an aspect ratio and size the
 * model takes, counts and priorities in range), and every error must name
 * a line inside the input.  The time parser gets the same bytes too.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/models.h"
#include "jobs/promptfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile size_t sink;

static void
touch(const char *s)
{
    if (s != NULL)
        sink += strlen(s);
}

static int
check_entry(const struct promptfile_entry *e, void *arg,
            struct promptfile_error *err)
{
    const struct model_info *m = models_find(e->model);
    long *lines = arg;

    touch(e->prompt);
    touch(e->name);
    touch(e->aspect);
    touch(e->size);
    touch(e->via);
    touch(e->out);
    for (size_t i = 0; i < e->n_images; i++)
        touch(e->images[i]);
    sink += (size_t)e->not_before_ms + (size_t)e->offpeak;

    if (m == NULL || e->prompt == NULL || e->prompt[0] == '\0' ||
        strlen(e->prompt) > PROMPTFILE_MAX_PROMPT)
        abort();
    if (e->count < 1 || e->count > PROMPTFILE_MAX_COUNT ||
        e->priority < -1000 || e->priority > 1000)
        abort();
    if ((e->aspect != NULL && !models_aspect_ok(m, e->aspect)) ||
        (e->size != NULL && !models_size_ok(m, e->size)))
        abort();
    if (e->n_images > (size_t)m->max_refs || e->line <= *lines)
        abort();
    *lines = e->line;
    (void)err;
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct promptfile_defaults d = {
        .model = MODELS_DEFAULT, .count = 1, .via = "direct",
    };
    struct promptfile_error err;
    long last_line = 0;
    char text[64];
    int64_t ms;
    int rc;

    rc = promptfile_parse_buf((const char *)data, size, &d, check_entry,
                              &last_line, &err);
    if (rc > 0)
        abort();
    if (rc != 0 && (err.line < 1 || err.line > (long)size + 1 ||
                    memchr(err.message, '\0', sizeof(err.message)) == NULL))
        abort();

    if (size < sizeof(text)) {
        memcpy(text, data, size);
        text[size] = '\0';
        promptfile_parse_time(text, &ms);
    }
    return 0;
}
