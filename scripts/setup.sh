#!/usr/bin/env bash
# Installs every system package that building, testing and running the demo
# need, on Debian 12 (bookworm) or a newer Debian / Ubuntu. Idempotent: a
# second run installs nothing and changes nothing.
#
# On Debian 12, Catch2 v3 and a Meson >= 1.0 only exist in the
# bookworm-backports suite of Debian's own archive; the script enables that
# suite when it is missing and takes just those two packages from it.
#
# `setup.sh --ci` also installs what the quality gates (scripts/ci-gates.sh)
# need: valgrind, clang-format, clang-tidy and clang's sanitizer / libFuzzer
# runtime.
set -euo pipefail

packages=(g++ clang ninja-build pkg-config libssl-dev meson catch2 cmake libasio-dev)
# The interop suite's external TLS peers (libssl-dev does not pull in the CLI).
packages+=(openssl gnutls-bin curl python3)
# closecheck's test peers (tools/closecheck_test.py runs them in the foreground).
packages+=(nginx-light haproxy lighttpd lighttpd-mod-openssl)
backported=(meson catch2)
ci=false
case "${1:-}" in
    # `setup.sh bench`: also what scripts/bench.sh needs (Asio, the counters, taskset).
    bench) packages+=(libasio-dev valgrind strace linux-perf util-linux) ;;
    --ci) ci=true; packages+=(valgrind clang-format clang-tidy) ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [bench|--ci]" >&2; exit 2 ;;
esac

if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
else
    command -v sudo >/dev/null || { echo "setup: run as root or install sudo" >&2; exit 1; }
    as_root() { sudo "$@"; }
fi

# shellcheck disable=SC1091
. /etc/os-release
codename=${VERSION_CODENAME:-}

have_all() {
    local p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
    # The versions matter too: Debian 12's own meson (0.63) and catch2 (2.x) are too old.
    dpkg --compare-versions "$(meson --version 2>/dev/null || echo 0)" ge 1.0 &&
        pkg-config --atleast-version=3 catch2-with-main 2>/dev/null &&
        pkg-config --atleast-version=3.0 openssl 2>/dev/null &&
        { ! $ci || have_clang_runtime; }
}

# The sanitizer and libFuzzer runtime of the installed clang.
have_clang_runtime() {
    local dir
    dir=$(clang++ -print-runtime-dir 2>/dev/null) || return 1
    compgen -G "$dir/libclang_rt.fuzzer-*.a" >/dev/null && compgen -G "$dir/libclang_rt.asan-*.a" >/dev/null
}

# Its package: libclang-rt-dev where the default clang has one (Debian 12
# and newer), else the versioned libclang-rt-N-dev, else (older releases)
# libclang-common-N-dev, which held the runtime before it was split out.
clang_runtime_package() {
    local major p
    major=$(clang++ -dumpversion 2>/dev/null | cut -d. -f1)
    for p in libclang-rt-dev "libclang-rt-$major-dev" "libclang-common-$major-dev"; do
        if [ -n "$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)')" ]; then
            echo "$p"
            return
        fi
    done
}

if have_all; then
    echo "setup: all packages present"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
use_backports=()
if [ "${ID:-}" = debian ] && [ "$codename" = bookworm ]; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "setup: enabling bookworm-backports"
        as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    use_backports=(-t bookworm-backports)
fi

# A stale third-party source must not stop us from reading Debian's lists.
as_root apt-get update || echo "setup: apt-get update reported errors; continuing with what it fetched" >&2

if [ ${#use_backports[@]} -gt 0 ]; then
    others=()
    for p in "${packages[@]}"; do
        case " ${backported[*]} " in *" $p "*) ;; *) others+=("$p") ;; esac
    done
    as_root apt-get install -y --no-install-recommends "${others[@]}"
    as_root apt-get install -y --no-install-recommends "${use_backports[@]}" "${backported[@]}"
else
    as_root apt-get install -y --no-install-recommends "${packages[@]}"
fi

if $ci && ! have_clang_runtime; then
    rt=$(clang_runtime_package)
    [ -n "$rt" ] || { echo "setup: no package with clang's sanitizer runtime found" >&2; exit 1; }
    as_root apt-get install -y --no-install-recommends "$rt"
fi

have_all || { echo "setup: packages still missing or too old after install" >&2; exit 1; }
echo "setup: done"
