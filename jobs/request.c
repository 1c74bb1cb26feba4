/*
 * request.c - the generateContent request body for one job.
 *
 * The body is one user turn: the prompt as a text part, then each
 * reference image as inlineData with its MIME type named by its magic
 * bytes (jobkey_file()), never by its file name.  generationConfig asks
 * for TEXT and IMAGE, and imageConfig carries aspectRatio and imageSize
 * only when set; imageSize is left out for models that take none.
 *
 * A reference image is read whole into memory, and the bytes sent are the
 * bytes checked: their SHA-256 must equal the digest recorded when the job
 * was added (when one is given) and the digest jobkey_file() saw, so a
 * file rewritten while it is read is refused rather than sent.  The API
 * key never comes near this module: the transport adds it as a header.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "jobs/jobkey.h"
#include "jobs/models.h"
#include "jobs/promptfile.h"
#include "queue/queue.h"
#include "jobs/models.h"
#include "jobs/request.h"
#include "queue/nberr.h"

#define REF_MAX_BYTES (64 * 1024 * 1024)   /* far over the API's limit */

/* Puts "reference image PATH WHAT" in err; returns code. */
static int
say(char *err, size_t errlen, int code, const char *what, const char *path)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "reference image %s %s", path, what);
    return code;
}

/* Reads the whole file at path into *buf (owned by the caller). */
static int
read_file(const char *path, unsigned char **buf, size_t *len)
{
    struct stat st;
    unsigned char *b = NULL;
    size_t got = 0;
    int fd, saved;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NB_EIO;
    if (fstat(fd, &st) != 0)
        goto fail;
    if (st.st_size > REF_MAX_BYTES) {
        close(fd);
        return NB_ELIMIT;
    }
    /* One byte more than the size, to see a file that grew. */
    b = malloc((size_t)st.st_size + 1);
    if (b == NULL) {
        close(fd);
        return NB_ENOMEM;
    }
    for (;;) {
        ssize_t n = read(fd, b + got, (size_t)st.st_size + 1 - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;
        got += (size_t)n;
        if (got == (size_t)st.st_size + 1)
            break;
    }
    close(fd);
    if (got != (size_t)st.st_size) {
        free(b);
        return NB_EINVAL;           /* changed while read */
    }
    *buf = b;
    *len = got;
    return 0;

fail:
    saved = errno;
    free(b);
    close(fd);
    errno = saved;
    return NB_EIO;
}

/* {"inlineData": {"mimeType": mime, "data": base64 of buf}}, or NULL. */
static json_t *
inline_part(const char *mime, const unsigned char *buf, size_t len)
{
    size_t b64_len = 4 * ((len + 2) / 3);
    char *b64 = malloc(b64_len + 1);
    json_t *in = json_object(), *part = json_object();

    if (b64 == NULL || in == NULL || part == NULL)
        goto fail;
    EVP_EncodeBlock((unsigned char *)b64, buf, (int)len);
    if (json_object_set_new(in, "mimeType", json_string(mime)) != 0 ||
        json_object_set_new(in, "data",
                            json_stringn_nocheck(b64, b64_len)) != 0)
        goto fail;
    free(b64);
    b64 = NULL;
    if (json_object_set_new(part, "inlineData", in) != 0) {
        in = NULL;
        goto fail;
    }
    return part;

fail:
    free(b64);
    json_decref(in);
    json_decref(part);
    return NULL;
}

/* Appends reference image path, checked against expect (or NULL). */
static int
add_reference(json_t *parts, const char *path, const char *expect,
              char *err, size_t errlen)
{
    char seen[65], sent[65];
    const char *mime = NULL;
    unsigned char *buf = NULL;
    size_t len = 0;
    json_t *part;
    int rc;

    rc = jobkey_file(path, seen, &mime);
    if (rc == NB_EIMAGE)
        return say(err, errlen, rc, "is no PNG, JPEG, WebP, HEIC or HEIF "
                   "image", path);
    if (rc != 0)
        return say(err, errlen, NB_EIO, "cannot be read", path);
    rc = read_file(path, &buf, &len);
    if (rc == NB_ELIMIT)
        return say(err, errlen, rc, "is larger than 64 MiB", path);
    if (rc == NB_ENOMEM)
        return say(err, errlen, rc, "does not fit in memory", path);
    if (rc == NB_EINVAL)
        return say(err, errlen, rc, "changed while it was read", path);
    if (rc != 0)
        return say(err, errlen, rc, "cannot be read", path);

    jobkey_sha256_hex(buf, len, sent);
    if (expect != NULL && strcmp(sent, expect) != 0)
        rc = say(err, errlen, NB_EINVAL, "changed since it was added", path);
    else if (strcmp(sent, seen) != 0)
        rc = say(err, errlen, NB_EINVAL, "changed while it was read", path);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    part = inline_part(mime, buf, len);
    free(buf);
    if (part == NULL || json_array_append_new(parts, part) != 0)
        return say(err, errlen, NB_ENOMEM, "does not fit in memory", path);
    return 0;
}

/* generationConfig: modalities, and imageConfig when there is one. */
static json_t *
generation_config(const struct request_spec *s)
{
    const struct model_info *m = s->model != NULL ? models_find(s->model)
                                                  : NULL;
    int send_size = s->size != NULL && (m == NULL || m->send_size);
    json_t *cfg, *img;

    cfg = json_object();
    if (cfg == NULL)
        return NULL;
    if (json_object_set_new(cfg, "responseModalities",
                            json_pack("[s,s]", "TEXT", "IMAGE")) != 0) {
        json_decref(cfg);
        return NULL;
    }
    if (s->aspect == NULL && !send_size)
        return cfg;
    img = json_object();
    if (img == NULL)
        goto fail;
    if (s->aspect != NULL &&
        json_object_set_new(img, "aspectRatio", json_string(s->aspect)) != 0)
        goto fail;
    if (send_size &&
        json_object_set_new(img, "imageSize", json_string(s->size)) != 0)
        goto fail;
    if (json_object_set_new(cfg, "imageConfig", img) != 0) {
        img = NULL;
        goto fail;
    }
    return cfg;

fail:
    json_decref(img);
    json_decref(cfg);
    return NULL;
}

/*
 * {"contents": [{"role": "user", "parts": *parts}], "generationConfig"}
 * into *root.  *parts is taken (set to NULL) whatever happens.
 */
static int
wrap(const struct request_spec *s, json_t **parts, json_t **root)
{
    json_t *r = json_object(), *turn = json_object(), *list = json_array();
    json_t *p = *parts;

    *parts = NULL;
    if (r == NULL || turn == NULL || list == NULL)
        goto fail;
    if (json_object_set_new(turn, "role", json_string("user")) != 0)
        goto fail;
    if (json_object_set_new(turn, "parts", p) != 0) {
        p = NULL;
        goto fail;
    }
    p = NULL;
    if (json_array_append_new(list, turn) != 0) {
        turn = NULL;
        goto fail;
    }
    turn = NULL;
    if (json_object_set_new(r, "contents", list) != 0) {
        list = NULL;
        goto fail;
    }
    list = NULL;
    if (json_object_set_new(r, "generationConfig",
                            generation_config(s)) != 0)
        goto fail;
    *root = r;
    return 0;

fail:
    json_decref(p);
    json_decref(list);
    json_decref(turn);
    json_decref(r);
    return NB_ENOMEM;
}

int
request_build(const struct request_spec *s, char **body, size_t *len,
              char *err, size_t errlen)
{
    json_t *root = NULL, *parts = NULL;
    char *out = NULL;
    int rc = NB_ENOMEM;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (s == NULL || s->prompt == NULL || body == NULL || len == NULL ||
        (s->n_refs > 0 && s->ref_paths == NULL)) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "request: no prompt given");
        return NB_EINVAL;
    }

    parts = json_array();
    if (parts == NULL)
        goto fail;
    if (json_array_append_new(parts, json_pack("{s:s}", "text",
                                               s->prompt)) != 0) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "request: the prompt is not UTF-8");
        rc = NB_EINVAL;
        goto fail;
    }
    for (size_t i = 0; i < s->n_refs; i++) {
        rc = add_reference(parts, s->ref_paths[i],
                           s->ref_sha256 != NULL ? s->ref_sha256[i] : NULL,
                           err, errlen);
        if (rc != 0)
            goto fail;
    }
    rc = NB_ENOMEM;
    if (wrap(s, &parts, &root) != 0)
        goto fail;
    out = json_dumps(root, JSON_COMPACT);
    if (out == NULL)
        goto fail;
    json_decref(root);
    *body = out;
    *len = strlen(out);
    return 0;

fail:
    if (rc == NB_ENOMEM && err != NULL && errlen > 0 && err[0] == '\0')
        snprintf(err, errlen, "request: out of memory");
    json_decref(root);
    json_decref(parts);
    return rc;
}

int
request_build_job(const struct queue_job *job, const char *model,
                  char **body, size_t *len, char *err, size_t errlen)
{
    const char *paths[PROMPTFILE_MAX_IMAGES], *shas[PROMPTFILE_MAX_IMAGES];
    const struct model_info *m = models_find(model);
    struct request_spec spec = {
        .prompt = job->prompt, .model = model,
        .aspect = job->aspect, .size = job->size,
        .n_refs = job->n_refs < PROMPTFILE_MAX_IMAGES ? job->n_refs
                                                      : PROMPTFILE_MAX_IMAGES,
        .ref_paths = paths, .ref_sha256 = shas,
    };

    if (m != NULL && !m->send_size)
        spec.size = NULL;
    for (size_t i = 0; i < spec.n_refs; i++) {
        paths[i] = job->refs[i].path;
        shas[i] = job->refs[i].sha256_hex;
    }
    return request_build(&spec, body, len, err, errlen);
}
