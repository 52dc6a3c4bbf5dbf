#!/usr/bin/env bash
# Quality gates, each in its own build directory under build/, each fatal:
#   asan      clang++, AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer),
#             UB aborts (-fno-sanitize-recover=all); the whole test suite
#   valgrind  g++ build, the whole test suite under memcheck: no error, no leak
#             (meson test --setup valgrind)
#   soak      10 000 connections, descriptors and heap must not grow (same g++ build)
#   format    clang-format --dry-run --Werror against .clang-format (ninja clang-format-check)
#   tidy      clang-tidy with .clang-tidy over every translation unit
#   fuzz      the libFuzzer targets, $FUZZ_SECONDS each (default 60): fuzz_peer (an adversarial
#             peer thread) in one process, fuzz_engine (steps in one thread) in $JOBS
# Usage: scripts/ci-gates.sh [gate...]   (default: all, in the order above)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --ci

fuzz_seconds=${FUZZ_SECONDS:-60}
jobs=${JOBS:-2}
# The consumer tests build projects with the system compiler; they say
# nothing about the library's memory safety, and the plain test run covers them.
library_suites=(--no-suite consumers)

setup_dir() { # setup_dir DIR [meson args...]: configure, or apply the options to an existing DIR
    local dir=$1
    shift
    if [ -f "$dir/build.ninja" ]; then
        meson setup --reconfigure "$dir" "$@" >/dev/null
    else
        meson setup "$dir" "$@"
    fi
}

gate_asan() {
    CXX=clang++ setup_dir build/asan -Dwerror=true -Dtests=enabled \
        -Db_sanitize=address,undefined -Db_lundef=false -Dcpp_args=-fno-sanitize-recover=all
    meson compile -C build/asan -j "$jobs"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C build/asan --print-errorlogs --timeout-multiplier 3 "${library_suites[@]}"
}

gate_valgrind() {
    CXX=g++ setup_dir build/valgrind -Dwerror=true -Dtests=enabled
    meson compile -C build/valgrind -j "$jobs"
    # The valgrind test setup (tests/meson.build) runs every test but the soak
    # and the consumer builds under memcheck, the Catch2 shards $jobs at a time.
    meson test -C build/valgrind --setup valgrind --print-errorlogs --num-processes "$jobs"
}

gate_soak() {
    CXX=g++ setup_dir build/valgrind -Dwerror=true -Dtests=enabled
    meson compile -C build/valgrind -j "$jobs"
    meson test -C build/valgrind --print-errorlogs --setup full --suite soak --verbose
}

gate_format() {
    # Meson's clang-format-check target: clang-format --dry-run --Werror with
    # .clang-format over every C and C++ file git tracks (build directories
    # left out). It needs a configured build directory, not a build.
    CXX=clang++ setup_dir build/tidy -Dtests=enabled -Dfuzz=enabled
    ninja -C build/tidy clang-format-check
    echo "format: every tracked C++ file formatted as .clang-format says"
}

gate_tidy() {
    # Not Meson's clang-tidy target: it runs over every C and C++ file git
    # tracks, so also bench/bench.cpp (built only with -Dbench, needs Asio),
    # tests/consumers/consumer.cpp (built by the consumer tests outside this
    # build) and each header as a translation unit of its own, which the
    # compilation database has no command for. The translation units of the
    # database are exactly what this build compiles; headers are checked
    # through them (HeaderFilterRegex in .clang-tidy).
    # Only the compilation databases are needed: configure, do not build.
    CXX=clang++ setup_dir build/tidy -Dtests=enabled -Dfuzz=enabled
    local files
    files=$(python3 -c '
import json, os, sys
db = json.load(open(sys.argv[1]))
print("\n".join(sorted({os.path.relpath(os.path.join(e["directory"], e["file"])) for e in db})))' \
        build/tidy/compile_commands.json)
    # -P: one clang-tidy per core; xargs fails if any of them found something.
    # ("N warnings generated" counts the suppressed ones in system headers: noise.)
    echo "$files" | xargs -P "$jobs" -n 1 clang-tidy -p build/tidy --quiet 2> >(grep -v ' warnings\? generated\.$' >&2)
    echo "tidy: $(echo "$files" | wc -l) translation units clean"
}

gate_fuzz() {
    CXX=clang++ setup_dir build/fuzz -Dfuzz=enabled -Dtests=disabled -Dexamples=disabled \
        -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true
    meson compile -C build/fuzz -j "$jobs" tests/fuzz/fuzz_peer tests/fuzz/fuzz_engine
    local work log
    work=$(mktemp -d)
    log=$work/log
    mkdir "$work/peer" "$work/engine"
    # New inputs go to the temporary directory; the seed corpora stay as they are.
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    # The adversarial peer (threads, real deadlines): one process.
    build/fuzz/tests/fuzz/fuzz_peer -max_total_time="$fuzz_seconds" -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix=build/fuzz/ "$work/peer" tests/fuzz/corpus 2>&1 | tee "$log" ||
        { rm -rf "$work"; echo "fuzz: fuzz_peer failed; the input is in build/fuzz/ (crash-*, leak-*, timeout-*)" >&2; return 1; }
    local peer_runs engine_runs
    peer_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    # The engine stepped in one thread, nothing waiting: one process per core.
    build/fuzz/tests/fuzz/fuzz_engine -fork="$jobs" -max_total_time="$fuzz_seconds" -timeout=20 \
        -rss_limit_mb=2048 -artifact_prefix=build/fuzz/ "$work/engine" tests/fuzz/engine_corpus 2>&1 | tee "$log" ||
        { rm -rf "$work"; echo "fuzz: fuzz_engine failed; the input is in build/fuzz/ (crash-*, leak-*, timeout-*)" >&2; return 1; }
    # Fork mode reports "#N: ..." with N the executions so far in all processes.
    engine_runs=$(sed -n 's/^#\([0-9]*\):.*/\1/p' "$log" | tail -1)
    rm -rf "$work"
    echo "fuzz: fuzz_peer ran ${peer_runs:-?} inputs in ${fuzz_seconds} s," \
        "fuzz_engine ${engine_runs:-?} in ${fuzz_seconds} s on $jobs processes"
}

gates=("$@")
[ ${#gates[@]} -gt 0 ] || gates=(asan valgrind soak format tidy fuzz)
summary=()
for g in "${gates[@]}"; do
    declare -F "gate_$g" >/dev/null || { echo "ci-gates: unknown gate '$g'" >&2; exit 2; }
    echo "=== gate $g"
    start=$SECONDS
    "gate_$g"
    summary+=("$g: passed in $((SECONDS - start)) s")
    echo "=== gate $g passed in $((SECONDS - start)) s"
done
printf '%s\n' "=== all gates passed:" "${summary[@]}"
