/*
 * models.h - what each Gemini image model accepts and what it costs.
 *
 * The table holds the models of the wire reference; an unknown model id
 * that looks like one (lowercase letters, digits, '.', '-') is accepted with
 * the widest settings, so that a successor works before nbbatch knows it.
 */
#ifndef NB_MODELS_H
#define NB_MODELS_H

#include <stddef.h>

#define MODELS_DEFAULT "gemini-2.5-flash-image"

struct model_info {
    const char *id;
    const char *const *aspects;  /* NULL-terminated */
    const char *const *sizes;    /* NULL-terminated; "1K" first = default */
    int send_size;               /* 0: never send imageConfig.imageSize */
    int max_refs;                /* reference images accepted */
    int thinks;                  /* answers may carry thought images */
    int known;                   /* 0: an unknown id given wide settings */
};

/*
 * The model named id, or NULL when id is not a plausible model name.  An
 * unknown but plausible id gets a static record with known == 0, shared by
 * all unknown ids (its id is "(unknown model)": print the caller's id).
 */
const struct model_info *models_find(const char *id);

/* 1 when the model accepts aspect ratio (e.g. "16:9"), else 0. */
int models_aspect_ok(const struct model_info *m, const char *aspect);
/* 1 when the model accepts image size (e.g. "2K"), else 0. */
int models_size_ok(const struct model_info *m, const char *size);
/* The model's own spelling of size ("1k" -> "1K"), matched without
 * regard to case; NULL when the model has no such size. */
const char *models_size_spelling(const struct model_info *m,
                                 const char *size);

/*
 * Estimated USD price of one image of model at size (NULL: default size),
 * standard (batch_mode 0) or Batch API (batch_mode 1, half price).
 * Returns a negative number when no price is known.
 */
double models_price(const char *model, const char *size, int batch_mode);

/*
 * Cost in USD of one answer from its token usage: output tokens at the
 * model's output price, prompt tokens at its input price (free when only
 * the output price is known).  Half in Batch mode.  Negative when no price
 * is known.
 */
double models_cost(const char *model, long long prompt_tokens,
                   long long output_tokens, int batch_mode);

#endif
