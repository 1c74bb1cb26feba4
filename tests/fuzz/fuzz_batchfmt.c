/*
 * fuzz_batchfmt.c - libFuzzer target for the Batch API's formats.
 *
 * The input is read as a result line (batchfmt_line), an Operation
 * (batchfmt_op), one page of a list (batchfmt_find) and an upload's answer
 * (batchfmt_file_name).  Each result must hold its contract: a found
 * value range lies inside the line and is one object, strings are
 * NUL-terminated, names have the shape that goes into a URL, a state is
 * one of the enum.  A broken invariant aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/batchfmt.h"

static void
check_str(const char *s, size_t cap)
{
    if (memchr(s, '\0', cap) == NULL)
        abort();
}

static void
check_op(const struct batchfmt_op *op)
{
    check_str(op->name, sizeof(op->name));
    check_str(op->display_name, sizeof(op->display_name));
    check_str(op->state_name, sizeof(op->state_name));
    check_str(op->responses_file, sizeof(op->responses_file));
    check_str(op->error, sizeof(op->error));
    if (strncmp(op->name, "batches/", 8) != 0 || op->name[8] == '\0' ||
        strchr(op->name + 8, '/') != NULL)
        abort();
    if (op->state < BATCHFMT_UNKNOWN || op->state > BATCHFMT_EXPIRED)
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct batchfmt_line l;
    struct batchfmt_op op;
    char next[64], name[64], *text;

    if (batchfmt_line(s, size, &l) == 0) {
        check_str(l.key, sizeof(l.key));
        if (l.kind != BATCHFMT_NONE) {
            if (l.value_off + l.value_len > size || l.value_len < 2 ||
                s[l.value_off] != '{' ||
                s[l.value_off + l.value_len - 1] != '}')
                abort();
        }
        if (l.error_code != 0 && (l.error_code < 100 || l.error_code > 599))
            abort();
    }
    if (batchfmt_op(s, size, &op) == 0)
        check_op(&op);
    switch (batchfmt_find(s, size, "nbbatch-00", &op, next, sizeof(next))) {
    case 1:
        check_op(&op);
        if (strcmp(op.display_name, "nbbatch-00") != 0)
            abort();
        /* fall through */
    case 0:
        check_str(next, sizeof(next));
        break;
    default:
        break;
    }
    if (batchfmt_file_name(s, size, name, sizeof(name)) == 0 &&
        (strncmp(name, "files/", 6) != 0 || strpbrk(name + 6, "/?#")))
        abort();
    if ((text = malloc(size + 1)) != NULL) {
        memcpy(text, data, size);
        text[size] = '\0';
        if (batchfmt_state(text) < BATCHFMT_UNKNOWN ||
            batchfmt_state(text) > BATCHFMT_EXPIRED)
            abort();
        free(text);
    }
    return 0;
}
