#!/usr/bin/env bash
# Quick start, second command: install what is needed, then build with g++
# and with clang++ (warnings are errors) and run the whole test suite in each.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
for compiler in g++ clang++; do
    dir=build/${compiler%++}
    # An existing build directory is reconfigured with these options, so a
    # directory set up by hand with others is brought back to them. (A changed
    # meson.build alone needs no help: ninja reruns Meson before building.)
    if [ -f "$dir/build.ninja" ]; then
        meson setup --reconfigure "$dir" -Dwerror=true -Dtests=enabled >/dev/null
    else
        CXX=$compiler meson setup "$dir" -Dwerror=true -Dtests=enabled
    fi
    meson compile -C "$dir"
    meson test -C "$dir" --print-errorlogs
done
