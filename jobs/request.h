/*
 * request.h - the generateContent request body for one job.
 */
#ifndef NB_REQUEST_H
#define NB_REQUEST_H

#include <stddef.h>

struct request_spec {
    const char *prompt;
    const char *model;
    const char *aspect;              /* NULL: not sent */
    const char *size;                /* NULL: not sent */
    size_t n_refs;
    const char *const *ref_paths;    /* reference images, in order */
    const char *const *ref_sha256;   /* expected digests, or NULL */
};

/*
 * Builds the JSON body: the prompt as a text part, each reference image as
 * inlineData (MIME type from its magic bytes), responseModalities TEXT and
 * IMAGE, and imageConfig with aspectRatio and imageSize (imageSize left out
 * for models that take none).  When ref_sha256 is given each image must
 * still hash to it: NB_EINVAL (message in err) when a file changed since it
 * was added, NB_EIO when it is gone.  Also NB_EIMAGE (a file is no image
 * type the API takes), NB_ELIMIT (a file over 64 MiB), NB_ENOMEM; err
 * names the file.  *body is owned by the caller (free()).
 */
int request_build(const struct request_spec *s, char **body, size_t *len,
                  char *err, size_t errlen);

struct queue_job;

/*
 * request_build() for a queued job sent to model (the job's own, or a
 * fallback): its prompt, settings (imageSize left out for a model that
 * takes none) and reference images, each checked against its digest.
 */
int request_build_job(const struct queue_job *job, const char *model,
                      char **body, size_t *len, char *err, size_t errlen);

#endif
