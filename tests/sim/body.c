/*
 * body.c - answer bodies for nbsim: text pieces and streamed base64.
 *
 * A base64 piece maps output offset o to input group o / 4 (3 bytes each
 * in, 4 out), so a read at any offset encodes only the groups it needs,
 * through a small stack buffer, with EVP_EncodeBlock (standard alphabet,
 * '=' padding, no line breaks).  Pieces never change once added; reading
 * keeps no state, so MHD may ask for any position.
 */
#include "tests/sim/body.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "tests/sim/imagegen.h"

#define GROUPS_PER_STEP 1024    /* 3 KB in, 4 KB out per encode call */

struct piece {
    char *text;                 /* text piece, or NULL */
    struct imagegen_image *img; /* base64 piece, or NULL */
    uint64_t len;               /* bytes this piece adds to the body */
};

struct body {
    struct piece *pieces;
    size_t npieces;
    size_t cap;
    uint64_t size;
};

struct body *
body_new(void)
{
    return calloc(1, sizeof(struct body));
}

static struct piece *
body_grow(struct body *b)
{
    if (b->npieces == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        struct piece *p = realloc(b->pieces, cap * sizeof *p);

        if (!p)
            return NULL;
        b->pieces = p;
        b->cap = cap;
    }
    return &b->pieces[b->npieces];
}

int
body_add_text(struct body *b, const char *text, size_t len)
{
    struct piece *p = body_grow(b);

    if (!p)
        return -1;
    p->text = malloc(len ? len : 1);
    if (!p->text)
        return -1;
    memcpy(p->text, text, len);
    p->img = NULL;
    p->len = len;
    b->npieces++;
    b->size += len;
    return 0;
}

int
body_add_base64(struct body *b, struct imagegen_image *img)
{
    struct piece *p = body_grow(b);

    if (!p) {
        imagegen_image_free(img);
        return -1;
    }
    p->text = NULL;
    p->img = img;
    p->len = (imagegen_size(img) + 2) / 3 * 4;
    b->npieces++;
    b->size += p->len;
    return 0;
}

int
body_add_body(struct body *dst, struct body *src)
{
    size_t i;
    int moved_all;

    for (i = 0; i < src->npieces; i++) {
        struct piece *p = body_grow(dst);

        if (!p)
            break;
        *p = src->pieces[i];
        dst->npieces++;
        dst->size += p->len;
    }
    /* What did not move is freed with src. */
    moved_all = i == src->npieces;
    if (i > 0)
        memmove(src->pieces, src->pieces + i,
                (src->npieces - i) * sizeof *src->pieces);
    src->npieces -= i;
    body_free(src);
    return moved_all ? 0 : -1;
}

uint64_t
body_size(const struct body *b)
{
    return b->size;
}

/* Base64 of img from output offset off, at most max bytes. */
static size_t
read_base64(const struct piece *p, uint64_t off, char *buf, size_t max)
{
    unsigned char in[GROUPS_PER_STEP * 3];
    unsigned char out[GROUPS_PER_STEP * 4 + 1];
    size_t done = 0;

    while (done < max && off < p->len) {
        uint64_t group = off / 4;
        size_t skip = (size_t)(off % 4);
        size_t got = imagegen_read(p->img, group * 3, in, sizeof in);
        size_t enc, n;

        if (got == 0)
            break;
        enc = (size_t)EVP_EncodeBlock(out, in, (int)got);
        n = enc - skip;
        if (n > max - done)
            n = max - done;
        memcpy(buf + done, out + skip, n);
        done += n;
        off += n;
    }
    return done;
}

size_t
body_read(const struct body *b, uint64_t pos, char *buf, size_t max)
{
    size_t done = 0;

    for (size_t i = 0; i < b->npieces && done < max; i++) {
        const struct piece *p = &b->pieces[i];
        size_t n;

        if (pos >= p->len) {
            pos -= p->len;
            continue;
        }
        if (p->text) {
            n = (size_t)(p->len - pos);
            if (n > max - done)
                n = max - done;
            memcpy(buf + done, p->text + pos, n);
        } else {
            n = read_base64(p, pos, buf + done, max - done);
        }
        done += n;
        pos = 0;
    }
    return done;
}

char *
body_dump(const struct body *b)
{
    char *s = malloc((size_t)b->size + 1);

    if (!s)
        return NULL;
    s[body_read(b, 0, s, (size_t)b->size)] = '\0';
    return s;
}

void
body_free(struct body *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->npieces; i++) {
        free(b->pieces[i].text);
        imagegen_image_free(b->pieces[i].img);
    }
    free(b->pieces);
    free(b);
}
