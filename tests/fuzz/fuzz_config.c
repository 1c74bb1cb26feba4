/*
 * fuzz_config.c - libFuzzer target for the configuration parsers: the
 * config file (with its windows, durations, URLs and model sections),
 * window lists, durations, and time zone data (TZif images and POSIX
 * rules).  The first byte picks the parser.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "runner/config.h"
#include "runner/tzone.h"
#include "runner/window.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct config cfg;
    struct window_set set;
    char err[512], text[4096];
    int64_t ms, until;

    if (size < 1)
        return 0;
    switch (data[0] % 4) {
    case 0:
        config_init(&cfg);
        if (config_parse((const char *)data + 1, size - 1, "fuzz.conf",
                         &cfg, err, sizeof(err)) == 0)
            (void)config_model(&cfg, "gemini-2.5-flash-image");
        break;
    case 1:
        if (size - 1 >= sizeof(text))
            return 0;
        memcpy(text, data + 1, size - 1);
        text[size - 1] = '\0';
        if (window_parse(text, &set, err, sizeof(err)) == 0) {
            (void)window_format(&set, text, sizeof(text));
            (void)window_open_at(&set, "UTC", 1790000000000, &until);
        }
        break;
    case 2:
        if (size - 1 >= sizeof(text))
            return 0;
        memcpy(text, data + 1, size - 1);
        text[size - 1] = '\0';
        (void)config_parse_duration(text, &ms);
        break;
    default:
        (void)tzone_check(data + 1, size - 1, 1790000000);
        break;
    }
    return 0;
}
