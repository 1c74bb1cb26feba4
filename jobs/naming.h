/*
 * naming.h - output file names: no escape from the folder, no collision.
 */
#ifndef NB_NAMING_H
#define NB_NAMING_H

#include <stddef.h>
#include <stdint.h>

/*
 * Builds the final path of a job's image in out: "<out>/<seq>-<slug>.png"
 * with seq zero-padded to 6 digits and slug made from the prompt (lowercase
 * ASCII letters and digits joined by '-', at most 48 bytes, "image" when
 * empty); or "<out>/<name>" when name is given ("name" gets ".png" added
 * when it lacks it).  A name with a '/', a NUL, a leading '.', a control
 * character, or over 200 bytes is NB_EINVAL.  out must be absolute.
 * Returns NB_ELIMIT when the path does not fit in len.
 */
int naming_path(const char *out, int64_t seq, const char *name,
                const char *prompt, char *path, size_t len);

/*
 * The name of image index of a line whose count is over 1: index goes
 * before a ".png" ending ("fox.png", 2 -> "fox-2.png"), else at the end
 * ("fox", 2 -> "fox-2").  NB_EINVAL for a name naming_path() refuses,
 * NB_ELIMIT when the result does not fit in len.
 */
int naming_with_index(const char *name, int index, char *buf, size_t len);

/* The temporary name of path for job_id: "<path>.tmp-<job_id>". */
int naming_tmp_path(const char *path, int64_t job_id, char *tmp, size_t len);

#endif
