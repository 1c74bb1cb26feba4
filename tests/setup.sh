#!/bin/sh
# Installs what nbbatch needs to build, test and run its demo, from Debian's
# packages.  Called by the Makefile before anything is built; does nothing
# when every library and tool is already there.  As root it runs apt-get;
# as anyone else it prints the exact command and fails.
set -eu

pkgs="build-essential pkg-config libcurl4-openssl-dev libjansson-dev \
libpng-dev libsqlite3-dev libjpeg62-turbo-dev libmicrohttpd-dev libssl-dev \
zlib1g-dev libcmocka-dev bats clang libclang-rt-14-dev faketime \
ca-certificates"
# Node.js runs the MCP client test.  A machine may already have a Node.js
# of its own (NodeSource's nodejs bundles npm and conflicts with Debian's
# npm package), so Debian's are asked for only when node or npm is absent.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    pkgs="$pkgs nodejs npm"
fi

missing=""
for lib in libcurl jansson libpng sqlite3 libjpeg libmicrohttpd libcrypto \
    zlib cmocka; do
    pkg-config --exists "$lib" 2>/dev/null || missing="$missing $lib"
done
for tool in cc make pkg-config bats clang faketime node npm; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
fuzzer=$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null || :)
case "$fuzzer" in
/*) [ -f "$fuzzer" ] || missing="$missing libFuzzer" ;;
*) missing="$missing libFuzzer" ;;
esac
[ -n "$missing" ] || exit 0

cmd="apt-get update && apt-get install -y --no-install-recommends $pkgs"
if [ "$(id -u)" != 0 ]; then
    echo "nbbatch: missing:$missing" >&2
    echo "nbbatch: as root, run:" >&2
    echo "    $cmd" >&2
    exit 1
fi
echo "nbbatch: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $pkgs
