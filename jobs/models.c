/*
 * models.c - the table of Gemini image models: what each accepts, what
 * it costs.
 *
 * Figures come from the wire reference (shared/gemini-api.md, sections 0
 * and 5).  Sizes are the exact strings the API wants ("512", "1K", "2K",
 * "4K"); the first size of a model is its default.  A model id that is not
 * in the table but looks like one (lowercase letters, digits, '.', '-')
 * gets the widest settings so that a successor can be used before nbbatch
 * knows it; it has no price.  Prices are estimates for the user's eyes and
 * for budgets, never for billing.  Everything here is read-only static
 * data: safe from any thread.
 */
#include <string.h>
#include <strings.h>

#include "jobs/models.h"

#define MODEL_ID_MAX 64

static const char *const aspects_10[] = {
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
    NULL
};
static const char *const aspects_14[] = {
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
    "1:4", "4:1", "1:8", "8:1", NULL
};
static const char *const sizes_1k[] = {"1K", NULL};
static const char *const sizes_pro[] = {"1K", "2K", "4K", NULL};
static const char *const sizes_all[] = {"1K", "512", "2K", "4K", NULL};

/* What a model accepts plus its prices; info must stay first. */
struct model_row {
    struct model_info info;
    double input_per_mtok;     /* USD per million input tokens; <0 unknown */
    double output_per_mtok;    /* USD per million output tokens */
    double price_512, price_1k, price_2k, price_4k;  /* per image; <0 */
};

#define NO_PRICE -1.0

/*
 * 3.1-flash-image's token price is worked back from its per-image prices
 * (UNCONFIRMED in the reference); its input price is not published there.
 * max_refs of the Lite and 2.1 models is not documented either: they get
 * the family's 14.
 */
static const struct model_row rows[] = {
    {{"gemini-2.5-flash-image", aspects_10, sizes_1k, 0, 3, 0, 1},
     0.30, 30.0, NO_PRICE, 0.039, NO_PRICE, NO_PRICE},
    {{"gemini-2.5-flash-image-preview", aspects_10, sizes_1k, 0, 3, 0, 1},
     0.30, 30.0, NO_PRICE, 0.039, NO_PRICE, NO_PRICE},
    {{"gemini-3-pro-image-preview", aspects_10, sizes_pro, 1, 14, 1, 1},
     2.00, 120.0, NO_PRICE, 0.134, 0.134, 0.24},
    {{"gemini-3-pro-image", aspects_10, sizes_pro, 1, 14, 1, 1},
     2.00, 120.0, NO_PRICE, 0.134, 0.134, 0.24},
    {{"gemini-3.1-flash-image-preview", aspects_14, sizes_all, 1, 14, 1, 1},
     NO_PRICE, 60.0, 0.045, 0.067, 0.101, 0.151},
    {{"gemini-3.1-flash-image", aspects_14, sizes_all, 1, 14, 1, 1},
     NO_PRICE, 60.0, 0.045, 0.067, 0.101, 0.151},
    {{"gemini-3.1-flash-lite-image", aspects_14, sizes_1k, 1, 14, 1, 1},
     NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE},
    {{"gemini-3.1-flash-lite-image-preview", aspects_14, sizes_1k, 1, 14, 1,
      1},
     NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE},
    {{"gemini-nano-banana-2.1", aspects_14, sizes_pro, 1, 14, 1, 1},
     NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE},
};

#define N_ROWS (sizeof(rows) / sizeof(rows[0]))

static const struct model_row unknown_row = {
    {"(unknown model)", aspects_14, sizes_all, 1, 14, 1, 0},
    NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE, NO_PRICE
};

static int
plausible_id(const char *id)
{
    size_t len = strlen(id);

    if (len == 0 || len > MODEL_ID_MAX)
        return 0;
    if (!(id[0] >= 'a' && id[0] <= 'z'))
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

static const struct model_row *
find_row(const char *id)
{
    if (id == NULL)
        return NULL;
    for (size_t i = 0; i < N_ROWS; i++) {
        if (strcmp(rows[i].info.id, id) == 0)
            return &rows[i];
    }
    return plausible_id(id) ? &unknown_row : NULL;
}

const struct model_info *
models_find(const char *id)
{
    const struct model_row *r = find_row(id);

    return r != NULL ? &r->info : NULL;
}

static int
in_list(const char *const *list, const char *s)
{
    if (s == NULL)
        return 0;
    for (; *list != NULL; list++) {
        if (strcmp(*list, s) == 0)
            return 1;
    }
    return 0;
}

int
models_aspect_ok(const struct model_info *m, const char *aspect)
{
    return m != NULL && in_list(m->aspects, aspect);
}

int
models_size_ok(const struct model_info *m, const char *size)
{
    return m != NULL && in_list(m->sizes, size);
}

const char *
models_size_spelling(const struct model_info *m, const char *size)
{
    for (const char *const *s = m->sizes; *s != NULL; s++) {
        if (strcasecmp(*s, size) == 0)
            return *s;
    }
    return NULL;
}

double
models_price(const char *model, const char *size, int batch_mode)
{
    const struct model_row *r = find_row(model);
    double price;

    if (r == NULL)
        return NO_PRICE;
    if (size == NULL)
        size = r->info.sizes[0];
    if (!in_list(r->info.sizes, size))
        return NO_PRICE;

    if (strcmp(size, "512") == 0)
        price = r->price_512;
    else if (strcmp(size, "1K") == 0)
        price = r->price_1k;
    else if (strcmp(size, "2K") == 0)
        price = r->price_2k;
    else
        price = r->price_4k;
    if (price < 0)
        return NO_PRICE;
    return batch_mode ? price / 2 : price;
}

double
models_cost(const char *model, long long prompt_tokens,
            long long output_tokens, int batch_mode)
{
    const struct model_row *r = find_row(model);
    double cost = 0;

    if (r == NULL || prompt_tokens < 0 || output_tokens < 0)
        return NO_PRICE;
    if (output_tokens > 0) {
        if (r->output_per_mtok < 0)
            return NO_PRICE;
        cost += (double)output_tokens * r->output_per_mtok / 1e6;
    }
    /*
     * Where the reference gives no input price the prompt is counted as
     * free: a few thousand tokens are a fraction of a cent next to the
     * image, and "unknown" would switch a budget off altogether.
     */
    if (prompt_tokens > 0 && r->input_per_mtok > 0)
        cost += (double)prompt_tokens * r->input_per_mtok / 1e6;
    return batch_mode ? cost / 2 : cost;
}
