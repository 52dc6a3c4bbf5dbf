#!/usr/bin/env bash
# Quick start, first command: install what is needed, build, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -f build/demo/build.ninja ] || meson setup build/demo -Dtests=disabled
meson compile -C build/demo
exec build/demo/examples/demo
