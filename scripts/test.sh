#!/usr/bin/env bash
# Quick start, second command: install what is needed, then build with g++
# and with clang++ (warnings are errors) and run the whole test suite in each.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
for compiler in g++ clang++; do
    dir=build/${compiler%++}
    [ -f "$dir/build.ninja" ] || CXX=$compiler meson setup "$dir" -Dwerror=true -Dtests=enabled
    meson compile -C "$dir"
    meson test -C "$dir" --print-errorlogs
done
