/*
 * jobkey.h - identity of a job and of its reference images.
 */
#ifndef NB_JOBKEY_H
#define NB_JOBKEY_H

#include <stddef.h>

/*
 * Hashes the file at path with SHA-256 into hex (65 bytes with the NUL)
 * and names its image type from its magic bytes in *mime ("image/png",
 * "image/jpeg", "image/webp", "image/heic", "image/heif"), static.
 * NB_EIO when it cannot be read (errno kept), NB_EIMAGE when it is no
 * image type the API takes.
 */
int jobkey_file(const char *path, char hex[65], const char **mime);

/*
 * The idempotency key of a job: SHA-256 over the model, prompt, aspect,
 * size (NULL as empty), the hex digests of its reference images in order,
 * and its index within the line's count, each part length-prefixed so no
 * two different jobs share a key.  Writes 64 hex digits and a NUL (only
 * the NUL, key[0] == '\0', when OpenSSL cannot allocate a digest).
 */
void jobkey_compute(const char *model, const char *prompt, const char *aspect,
                    const char *size, const char *const *ref_sha256,
                    size_t n_refs, int count_index, char key[65]);

/* SHA-256 of buf as 64 hex digits and a NUL ("" on allocation failure). */
void jobkey_sha256_hex(const void *buf, size_t len, char hex[65]);

#endif
