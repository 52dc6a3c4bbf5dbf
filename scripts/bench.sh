#!/usr/bin/env bash
# Benchmarks tls_stream against raw OpenSSL (read-ahead off and on) and
# Asio's ssl::stream, and prints markdown tables: timings with both threads
# pinned to one CPU (the headline), the same with free threads, then
# instruction (callgrind) and system-call counts, then heap per connection.
#
#   scripts/bench.sh           the full run (15 to 20 minutes on 2 CPUs)
#   scripts/bench.sh --quick   smaller workloads and 3 runs, for development
#   scripts/bench.sh --memory [--quick]
#                              only the heap per connection (idle, active,
#                              handshake peak) against raw OpenSSL with and
#                              without SSL_MODE_RELEASE_BUFFERS, 2 000
#                              connections (500 with --quick), seconds
#   scripts/bench.sh --eventloop [--quick]
#                              only the event-loop benchmark: steps + closer
#                              against raw non-blocking OpenSSL, 10 000
#                              connections (1 000 with --quick), about 2 minutes
#   scripts/bench.sh --asio [--quick]
#                              only the coroutine benchmark: the asynchronous
#                              members against Asio's ssl::stream on one
#                              io_context (bulk, round trips, churn, heap),
#                              about 3 minutes
#
# Installs what it needs (scripts/setup.sh bench), builds in release mode
# into build/bench and runs everything from there.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
eventloop=false
memory=false
asio_only=false
for arg in "$@"; do
    case "$arg" in
        --quick) quick=(--quick) ;;
        --eventloop) eventloop=true ;;
        --memory) memory=true ;;
        --asio) asio_only=true ;;
        *) echo "usage: scripts/bench.sh [--eventloop | --memory | --asio] [--quick]" >&2; exit 2 ;;
    esac
done

scripts/setup.sh bench >&2
dir=build/bench
[ -f "$dir/build.ninja" ] ||
    meson setup "$dir" --buildtype=release -Dbench=enabled -Dtests=disabled -Dexamples=disabled >&2
meson compile -C "$dir" >&2
bench=$dir/bench/tls_bench
eventloop_bench=$dir/bench/eventloop_bench
memory_bench=$dir/bench/memory_bench
asio_bench=$dir/bench/asio_bench

echo "### Machine"
echo
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs online"
echo "- kernel: $(uname -sr)"
echo "- OpenSSL: $(openssl version)"
echo "- compiler: $(c++ --version | head -n1), meson --buildtype=release"
echo "- command: scripts/bench.sh $*"
echo "- load average (1, 5, 15 min) before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

if $memory; then
    "$memory_bench" "${quick[@]}"
    exit 0
fi

if $eventloop; then
    "$eventloop_bench" "${quick[@]}"
    echo
    echo "Load average (1, 5, 15 min) after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
    exit 0
fi

if $asio_only; then
    "$asio_bench" "${quick[@]}"
    echo
    echo "Load average (1, 5, 15 min) after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
    exit 0
fi

taskset -c 0 "$bench" time "${quick[@]}" --title "both threads pinned to one CPU (taskset -c 0)"
"$bench" time "${quick[@]}" --title "free threads"
"$bench" counts "${quick[@]}"
"$memory_bench" "${quick[@]}"
echo
echo "### Coroutines: tls_stream's asynchronous members against Asio's ssl::stream"
echo
"$asio_bench" "${quick[@]}"
echo
echo "Load average (1, 5, 15 min) after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
