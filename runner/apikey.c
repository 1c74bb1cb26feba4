/*
 * apikey.c - loading the API key without leaking it.
 *
 * The key never passes through argv (only a file name does), is trimmed of
 * surrounding white space, and is wiped from memory when freed.  A key
 * file that group or others can read is refused, as ssh refuses a private
 * key file that is too open.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/nberr.h"
#include "runner/apikey.h"

#define KEY_MAX 1024

/* Copies s without leading/trailing white space into a new buffer. */
static char *
dup_trimmed(const char *s, size_t len)
{
    char *out;

    while (len > 0 && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' ||
                       s[len - 1] == '\r' || s[len - 1] == '\n'))
        len--;
    out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, s, len);
    out[len] = '\0';
    return out;
}

static int
key_ok(const char *key)
{
    if (*key == '\0')
        return 0;
    for (const char *c = key; *c; c++) {
        if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e)
            return 0;
    }
    return 1;
}

static int
load_file(const char *path, char **key, char *err, size_t errlen)
{
    char buf[KEY_MAX + 1];
    struct stat st;
    ssize_t n;
    int fd, rc = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open key file %s: %s", path,
                 strerror(errno));
        return NB_EIO;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "key file %s is not a regular file", path);
        rc = NB_EINVAL;
    } else if ((st.st_mode & 077) != 0) {
        snprintf(err, errlen, "key file %s can be read by others "
                 "(mode %03o); run: chmod 600 %s", path,
                 (unsigned)(st.st_mode & 0777), path);
        rc = NB_EINVAL;
    }
    if (rc != 0) {
        close(fd);
        return rc;
    }
    n = read(fd, buf, KEY_MAX);
    close(fd);
    if (n < 0) {
        snprintf(err, errlen, "cannot read key file %s: %s", path,
                 strerror(errno));
        return NB_EIO;
    }
    *key = dup_trimmed(buf, (size_t)n);
    explicit_bzero(buf, sizeof(buf));
    if (*key == NULL)
        return NB_ENOMEM;
    if (!key_ok(*key)) {
        apikey_free(*key);
        *key = NULL;
        snprintf(err, errlen, "key file %s holds no key on its first line "
                 "(or has spaces inside it)", path);
        return NB_EINVAL;
    }
    return 0;
}

int
apikey_load(const char *key_file, char **key, const char **source,
            char *err, size_t errlen)
{
    static const char *const vars[] = {"GEMINI_API_KEY", "GOOGLE_API_KEY"};
    const char *v;

    if (key_file != NULL) {
        *source = "--key-file";
        return load_file(key_file, key, err, errlen);
    }
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        v = getenv(vars[i]);
        if (v == NULL || *v == '\0')
            continue;
        *source = vars[i];
        *key = dup_trimmed(v, strlen(v));
        if (*key == NULL)
            return NB_ENOMEM;
        if (!key_ok(*key)) {
            apikey_free(*key);
            *key = NULL;
            snprintf(err, errlen, "%s is set but is not a valid key "
                     "(spaces or control characters inside)", vars[i]);
            return NB_EINVAL;
        }
        return 0;
    }
    snprintf(err, errlen, "no API key: set GEMINI_API_KEY (or "
             "GOOGLE_API_KEY), or pass --key-file FILE");
    return NB_ENOTFOUND;
}

void
apikey_free(char *key)
{
    if (key == NULL)
        return;
    explicit_bzero(key, strlen(key));
    free(key);
}

const char *
apikey_base_url(void)
{
    const char *v = getenv("GEMINI_BASE_URL");

    if (v == NULL || *v == '\0')
        v = getenv("GOOGLE_GEMINI_BASE_URL");
    return (v != NULL && *v != '\0') ? v : NULL;
}
