/*
 * advice.c - the fix for each kind of failure (shared/error-guide.md).
 *
 * The runner acts on failures by itself; these sentences are for the
 * cases where a person must act: a bad key, a missing permission, an
 * unknown model, a region or billing problem, a used-up quota.
 */
#include <string.h>

#include "runner/advice.h"

static int
is(const char *s, const char *want)
{
    return s != NULL && strcmp(s, want) == 0;
}

const char *
advice_stop(const char *msg)
{
    size_t n = strlen(msg);

    return (n > 0 && msg[n - 1] == '.') ? "" : ".";
}

const char *
advice_for(int http_status, const char *reason, const char *api_status)
{
    if (is(reason, "API_KEY_INVALID"))
        return "the API key is not valid: create or copy a key in Google "
               "AI Studio and set GEMINI_API_KEY (or use --key-file)";
    if (is(reason, "API_KEY_SERVICE_BLOCKED"))
        return "this key may not call the Gemini API: allow the "
               "Generative Language API for the key in its project";
    if (is(api_status, "FAILED_PRECONDITION"))
        return "the API is not available for this project here (region "
               "or billing): link a billing account or use a supported "
               "region";
    switch (http_status) {
    case 400:
        return "the request was refused as invalid: check the prompt, "
               "aspect ratio, size and reference images; retrying the same "
               "request will not help";
    case 401:
        return "the credentials were refused: check that the API key is "
               "set and active";
    case 403:
        return "the key lacks permission (no key sent, key leaked and "
               "disabled, or API not enabled): check the key and the "
               "project's access";
    case 404:
        return "the model does not exist for this key: check the model "
               "name (`nbbatch doctor --model M` lists what works)";
    case 408:
    case 504:
        return "the server took too long: nbbatch retries with backoff; "
               "large (4K) images need a longer --timeout";
    case 429:
        return "a quota is used up: nbbatch waits the advised delay; a "
               "daily quota resets at midnight Pacific time";
    case 500:
        return "the model server failed on this request: nbbatch retries "
               "after a delay";
    case 502:
        return "the front end got no valid answer (often overload): "
               "nbbatch backs off and retries";
    case 503:
        return "the service is overloaded or in maintenance: nbbatch "
               "backs off and retries";
    }
    if (http_status == 0)
        return "no answer from the server: check the network, a proxy, "
               "and GEMINI_BASE_URL";
    return "unexpected answer: see `nbbatch show JOB` for the full error";
}
