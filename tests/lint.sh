#!/bin/sh
# House checks (STYLE.md): C lines at most 80 columns, no banned calls.
set -u
files=$(find runner queue jobs tests -name '*.[ch]' | sort)
status=0
wide=$(awk 'length($0) > 80 { printf "%s:%d: %d columns\n", FILENAME, FNR, length($0) }' $files)
if [ -n "$wide" ]; then
    echo "lint: lines over 80 columns:" >&2
    echo "$wide" >&2
    status=1
fi
banned=$(grep -nE '\<(sprintf|strcpy|strcat|atoi|strtok|system)[[:space:]]*\(' $files |
    grep -vE '^[^:]*:[0-9]+:[[:space:]]*(\*|/\*|//)')
if [ -n "$banned" ]; then
    echo "lint: banned functions (STYLE.md 13):" >&2
    echo "$banned" >&2
    status=1
fi
[ $status -eq 0 ] && echo "lint: ok"
exit $status
