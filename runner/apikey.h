/*
 * apikey.h - where the API key and the endpoint come from.
 *
 * The key is read from --key-file, else GEMINI_API_KEY, else
 * GOOGLE_API_KEY.  It is held in one heap buffer that apikey_free() wipes;
 * it is never printed, logged or stored.
 */
#ifndef NB_APIKEY_H
#define NB_APIKEY_H

#include <stddef.h>

/*
 * Loads the key into *key (owned; release with apikey_free()).  A key
 * file must be a regular file that only its owner can read (mode 0600 or
 * stricter), else NB_EINVAL.  NB_ENOTFOUND when no key is set anywhere,
 * NB_EIO when the file cannot be read.  *source names where it came from
 * ("--key-file", "GEMINI_API_KEY", "GOOGLE_API_KEY").  err says why on
 * failure.
 */
int apikey_load(const char *key_file, char **key, const char **source,
                char *err, size_t errlen);
/* Wipes and frees a key; NULL is fine. */
void apikey_free(char *key);

/* The base URL from GEMINI_BASE_URL, else GOOGLE_GEMINI_BASE_URL, else
 * NULL (the default endpoint). */
const char *apikey_base_url(void);

#endif
