#!/usr/bin/env bash
# Builds and runs the consumer program (consumer.cpp) the way a user of
# tls_stream would, in a fresh temporary directory that is removed again:
#   run.sh subproject SRCDIR  Meson project, tls_stream in subprojects/ via dependency('tls_stream')
#   run.sh pkgconfig  SRCDIR  meson install with DESTDIR, then c++ $(pkg-config --cflags --libs tls_stream)
#   run.sh cmake      SRCDIR  meson install with DESTDIR, then CMake find_package(tls_stream)
# Fails (non-zero) on any error. Tools: $MESON, $CMAKE, $PKG_CONFIG, $CXX
# (the test registration in tests/meson.build passes the build's own).
set -euo pipefail

mode=$1
src=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
MESON=${MESON:-meson}
CMAKE=${CMAKE:-cmake}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
CXX=${CXX:-c++}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tls_stream-consumer-$mode.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 143' TERM INT  # so that the EXIT trap still cleans up when meson test times out

step() { echo "consumer[$mode]: $*"; }

# The consumer's sources: the program, its build files, and the example
# certificate generator it includes.
app=$tmp/app
mkdir -p "$app"
cp "$here/consumer.cpp" "$here/meson.build" "$here/CMakeLists.txt" "$src/examples/self_signed.hpp" "$app/"

# The library as a distribution would install it (prefix /usr, staged in DESTDIR).
install_staged() {
    step "meson install into DESTDIR=$tmp/root"
    "$MESON" setup "$tmp/lib-build" "$src" --prefix=/usr -Dtests=disabled -Dexamples=disabled >"$tmp/lib-setup.log" ||
        { cat "$tmp/lib-setup.log"; return 1; }
    DESTDIR=$tmp/root "$MESON" install -C "$tmp/lib-build" --quiet
    for h in tls_stream.hpp tls_stream/asio.hpp; do
        [ -f "$tmp/root/usr/include/$h" ] || { echo "consumer[$mode]: $h was not installed" >&2; return 1; }
    done
    # Nothing of the staged files may point back into the source or build tree.
    if grep -rqs -e "$src" -e "$tmp/lib-build" "$tmp/root"; then
        echo "consumer[$mode]: installed files refer to the source or build tree" >&2
        return 1
    fi
}

run_consumer() {
    step "running $1"
    timeout 60 "$1"
}

case $mode in
subproject)
    mkdir -p "$app/subprojects"
    ln -s "$src" "$app/subprojects/tls_stream"
    step "meson setup with tls_stream as a subproject"
    # --wrap-mode=nodownload: the only way to find tls_stream is the subproject.
    CXX=$CXX "$MESON" setup "$tmp/build" "$app" --wrap-mode=nodownload >"$tmp/setup.log" ||
        { cat "$tmp/setup.log"; exit 1; }
    grep -q 'Dependency tls_stream found: YES .*(overridden)' "$tmp/setup.log" ||
        { cat "$tmp/setup.log"; echo "consumer[$mode]: tls_stream did not come from the subproject" >&2; exit 1; }
    "$MESON" compile -C "$tmp/build" -j 1 >"$tmp/compile.log" || { cat "$tmp/compile.log"; exit 1; }
    run_consumer "$tmp/build/consumer"
    ;;
pkgconfig)
    install_staged
    # PKG_CONFIG_SYSROOT_DIR maps the .pc's /usr paths into the staging root,
    # as for a cross or staged build; only tls_stream.pc is searched there.
    flags=$(PKG_CONFIG_PATH=$tmp/root/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$tmp/root \
        "$PKG_CONFIG" --cflags --libs tls_stream)
    step "pkg-config says: $flags"
    case $flags in *"-I$tmp/root/usr/include"*) ;; *) echo "consumer[$mode]: no -I for the staged header" >&2; exit 1 ;; esac
    # shellcheck disable=SC2086  # flags are words
    $CXX -std=c++20 -Wall -Wextra -Wpedantic -Werror -o "$tmp/consumer" "$app/consumer.cpp" $flags -pthread
    run_consumer "$tmp/consumer"
    ;;
cmake)
    install_staged
    step "cmake configure with find_package(tls_stream)"
    CXX=$CXX "$CMAKE" -S "$app" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/root/usr" \
        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_COMPILE_WARNING_AS_ERROR=ON >"$tmp/cmake.log" ||
        { cat "$tmp/cmake.log"; exit 1; }
    # The package must be the staged one, not one installed on the system.
    grep -qx "tls_stream_DIR:PATH=$tmp/root/usr/share/cmake/tls_stream" "$tmp/build/CMakeCache.txt" ||
        { grep tls_stream_DIR "$tmp/build/CMakeCache.txt" >&2; echo "consumer[$mode]: wrong tls_stream package" >&2; exit 1; }
    "$CMAKE" --build "$tmp/build" -j 1 >"$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
    run_consumer "$tmp/build/consumer"
    ;;
*)
    echo "usage: $0 subproject|pkgconfig|cmake SRCDIR" >&2
    exit 2
    ;;
esac
step "ok"
