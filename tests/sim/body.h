/*
 * body.h - an HTTP answer body made of pieces, read at any offset.
 *
 * A piece is either text or the standard base64 (no line breaks) of an
 * image.  The base64 is made as the body is read, a few kilobytes at a
 * time, so a 30 MB answer never exists whole in memory.
 */
#ifndef NBSIM_BODY_H
#define NBSIM_BODY_H

#include <stddef.h>
#include <stdint.h>

struct imagegen_image;
struct body;

/* Constructor; NULL when out of memory. */
struct body *body_new(void);

/* Appends len bytes of text, copied.  0 or -1 (out of memory). */
int body_add_text(struct body *b, const char *text, size_t len);

/* Appends the base64 of img, which the body then owns (and frees, even
 * when this fails).  0 or -1. */
int body_add_base64(struct body *b, struct imagegen_image *img);

/* Moves every piece of src to the end of dst and frees src (even when
 * this fails).  0 or -1. */
int body_add_body(struct body *dst, struct body *src);

/* Total size in bytes. */
uint64_t body_size(const struct body *b);

/* Copies up to max bytes from offset pos into buf; returns the count,
 * 0 at the end.  Thread-safe for concurrent readers. */
size_t body_read(const struct body *b, uint64_t pos, char *buf,
                 size_t max);

/* The whole body in one new NUL-terminated string (owned by the
 * caller), for small bodies and tests; NULL when out of memory. */
char *body_dump(const struct body *b);

/* Frees the body and its images.  Accepts NULL. */
void body_free(struct body *b);

#endif
