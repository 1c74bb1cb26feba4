/*
 * imagegen.h - the simulator's images: cheap, realistic in size, and each
 * one naming its prompt by color.
 *
 * Every image has a band of rows at the top (at least 16, full width)
 * whose every pixel has one color; for a final image it is the first
 * three bytes of SHA-256 of the prompt, for a thought image their bitwise
 * complement.  The rest is filler.  The same module decodes such an image
 * again (imagegen_probe) so tests can check a file.
 */
#ifndef NBSIM_IMAGEGEN_H
#define NBSIM_IMAGEGEN_H

#include <stddef.h>
#include <stdint.h>

struct imagegen;                /* cache shared by all requests */
struct imagegen_image;          /* one encoded image */

enum imagegen_format { IMAGEGEN_PNG, IMAGEGEN_JPEG };

/* Which size table a model follows (gemini-api.md section 1). */
enum imagegen_table {
    IMAGEGEN_TABLE_25,          /* gemini-2.5-flash-image */
    IMAGEGEN_TABLE_3            /* gemini-3-pro-image, 3.1-flash-image */
};

struct imagegen_spec {
    unsigned width;
    unsigned height;
    unsigned char rgb[3];       /* the band color */
    enum imagegen_format format;
    int corrupt;                /* PNG only: an IDAT byte is flipped after
                                   its CRC was computed */
};

/* What imagegen_probe found in an image file. */
struct imagegen_probe {
    enum imagegen_format format;
    unsigned width;
    unsigned height;
    unsigned char rgb[3];       /* pixel (0,0) */
    unsigned band_rows;         /* rows from the top whose pixels all
                                   match pixel (0,0) (within 3 per channel
                                   for JPEG) */
};

/* The band color of a prompt: the first 3 bytes of SHA-256 of its bytes.
 * A thought image uses the complement of each byte. */
void imagegen_prompt_color(const void *prompt, size_t len,
                           unsigned char rgb[3]);

/* The pixel size of an answer.  aspect ("16:9") and size ("1K", "512",
 * "2K", "4K") may be NULL for "1:1" and "1K".  real = 0 gives small
 * stand-ins of the same shape (short side 48 to 128 px).  Returns 0, or
 * -1 when the table has no such aspect ratio or size.  Which model
 * accepts which value is the caller's business. */
int imagegen_dims(enum imagegen_table table, const char *aspect,
                  const char *size, int real, unsigned *width,
                  unsigned *height);

/* Constructor; NULL when out of memory.  Thread-safe afterwards. */
struct imagegen *imagegen_new(void);

/* Frees the cache; every image made from it must be freed first.
 * Accepts NULL. */
void imagegen_free(struct imagegen *ig);

/* Encodes one image (owned by the caller).  A PNG costs little: the
 * compressed filler is built once per size and shared, so only the band
 * and a few chunk headers are made per call.  A JPEG is encoded in full.
 * NULL on a bad spec or when out of memory. */
struct imagegen_image *imagegen_make(struct imagegen *ig,
                                     const struct imagegen_spec *spec);

/* Size in bytes of the encoded image. */
uint64_t imagegen_size(const struct imagegen_image *img);

/* Copies up to len bytes from offset off into buf; returns the count (0
 * at or past the end).  Safe from several threads at once. */
size_t imagegen_read(const struct imagegen_image *img, uint64_t off,
                     void *buf, size_t len);

/* Accepts NULL. */
void imagegen_image_free(struct imagegen_image *img);

/* Decodes a PNG or JPEG held in data (borrowed) and fills out.  Returns
 * 0, or -1 when the bytes are neither or do not decode. */
int imagegen_probe(const void *data, size_t len,
                   struct imagegen_probe *out);

#endif
