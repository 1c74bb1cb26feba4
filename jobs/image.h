/*
 * image.h - turning answer bytes into the final PNG file.
 *
 * The format is decided from the bytes, never from the label.  A PNG is
 * validated in full with libpng and kept byte for byte, every chunk in
 * order, no pixel re-encoded; only our two text chunks are added.  Where
 * they go depends on the path taken:
 * - in place (the answer is an unlinked O_TMPFILE file in path's file
 *   system, as the runner makes it): the file itself becomes the image,
 *   and our chunks go just before IEND;
 * - copied (anything else): our chunks are spliced in after IHDR.
 * A JPEG is decoded with libjpeg(-turbo) row by row and written as PNG,
 * our chunks after IHDR.  Anything else is NB_EIMAGE.  Files appear
 * atomically: "<path>.tmp-<job>" in the same folder (written, or linked
 * in place), fsync, rename, fsync of the folder.
 */
#ifndef NB_IMAGE_H
#define NB_IMAGE_H

#include <stddef.h>
#include <stdint.h>

/* What goes into the PNG's text chunks; strings borrowed. */
struct image_meta {
    int64_t job_id;
    const char *batch;
    const char *prompt;
    const char *model;
    const char *aspect;         /* may be NULL */
    const char *size;           /* may be NULL */
    const char *response_id;    /* may be NULL */
    const char *model_version;  /* may be NULL */
    int64_t prompt_tokens;
    int64_t output_tokens;
    int64_t thought_tokens;
    int64_t total_tokens;
};

/* What image_write() learned about the image. */
struct image_info {
    const char *source_format;  /* "png" or "jpeg" (static) */
    uint32_t width;
    uint32_t height;
    int64_t bytes;              /* size of the file written */
};

/*
 * Reads the image from src_fd (from its current offset to the end), checks
 * it, and writes it as a PNG at path with iTXt chunks "parameters" (the
 * prompt and settings in the form common image tools read) and "nbbatch"
 * (JSON: job id, batch, model, settings, responseId, modelVersion, token
 * usage).  path's folder is created if missing.  When src_fd is an
 * unlinked regular file open O_RDWR at offset 0 on path's file system
 * (the runner's O_TMPFILE file) and holds a PNG with no text chunk of
 * ours and nothing after IEND, that file itself is linked at path with
 * our chunks written over its IEND (a new IEND follows): afterwards
 * src_fd refers to the published file (or, after a failure, to a file
 * that may have been changed), so the caller must only close it.  Other
 * sources are copied and left unchanged.  On failure nothing new is left
 * at path nor at its temporary name (an older file at path is kept,
 * unless only the final fsync of the folder failed); err says why.
 * Returns 0, NB_EIMAGE (bad or unknown bytes), NB_EIO or NB_ENOMEM; also
 * NB_EINVAL when a metadata string is not UTF-8 or prompt/model is NULL,
 * and NB_ELIMIT when path is too long.
 */
int image_write(int src_fd, const char *path, const struct image_meta *meta,
                struct image_info *info, char *err, size_t errlen);

/*
 * Reads the job id from the "nbbatch" chunk of the PNG at path into
 * *job_id, wherever the chunk is (after IHDR, before IEND, or elsewhere);
 * image data is skipped, not read.  NB_ENOTFOUND when the file is missing
 * or carries no such chunk, NB_EIMAGE when it is not a PNG (or the chunk
 * is damaged), NB_EIO when it cannot be read.
 */
int image_job_id(const char *path, int64_t *job_id);

/*
 * Validates a PNG held in memory fully (all rows decoded); used by tests
 * and the fuzzer.  Returns 0 or NB_EIMAGE (NB_ENOMEM when out of memory).
 */
int image_check_png(const void *buf, size_t len, uint32_t *width,
                    uint32_t *height);

/* Removes "<path>.tmp-<job_id>" if it exists; 0 when nothing is left. */
int image_remove_tmp(const char *path, int64_t job_id);

#endif
