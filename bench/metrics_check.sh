#!/usr/bin/env bash
# bench/metrics_check.sh: after the result-cache benchmark's load (bench/cache_bench.sh, memory
# store scenario), /metrics counts equal the requests sent.
#
# For each load generator it starts the demo server (DuckDB, dev mode, memory store, pinned
# like cache_bench.sh), sends cache_bench.sh's load (a 2 s warm-up at 4 connections, then
# DURATION seconds at each of CONNECTIONS) of POST /cubejs-api/v1/load with the simple query,
# adds up the requests the load generator reports, scrapes /metrics and compares:
#
#   cubed_http_requests_total{route="/v1/load"}               every status, and status="200"
#   cubed_http_request_duration_seconds_count{route="/v1/load"} one latency per request
#
#   python  bench/load.py: closed loop, every connection waits for its last answer before it
#           stops, so its count is every request sent: the counts must be equal.
#   wrk     wrk reports the answers it read; the requests still in flight when a run's time is
#           up were sent (and mostly answered by cubed) but are not in its count. bench/wrk.lua
#           also counts the requests wrk wrote (sent=); a request written just as wrk closes the
#           connection may never be read by cubed. So the count must lie between the two.
#
# Environment (all optional): DURATION=10, CONNECTIONS="1 16 64", LOADGENS="python wrk",
# SERVER_CPU=0 CLIENT_CPU=1, BENCH_OUT=bench/results (metrics-*.log, metrics-*.txt: the scrapes).
# Exit 1 when a count differs.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
TWISTD=${TWISTD:-.venv/bin/twistd}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-"1 16 64"}
LOADGENS=${LOADGENS:-"python wrk"}
OUT=${BENCH_OUT:-bench/results}
BASE=/cubejs-api/v1/load
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

die() { echo "metrics check: $*" >&2; exit 1; }
[ -x "$PY" ] && [ -x "$TWISTD" ] || die "no $PY / $TWISTD: run 'make install' first"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BODIES="$OUT/bodies-metrics.txt"
echo '{"query":{"measures":["Orders.count"],"dimensions":["Orders.status"]}}' >"$BODIES"

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then TASKSET=1; else TASKSET=; fi
# shellcheck source=bench/common.sh
. bench/common.sh

SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    fi
    SERVER_PID=
}
trap cleanup EXIT

# start_server NAME: the demo on a free port with the memory store; sets SERVER_PID, SERVER_URL
start_server() {
    local port
    port=$(free_port)
    $(pinned "$SERVER_CPU") env PORT="$port" CUBEJS_DB_DUCKDB_DATABASE_PATH="$OUT/metrics-demo.duckdb" \
        CUBEJS_CACHE_AND_QUEUE_DRIVER=memory "$TWISTD" -n --pidfile= cubed --demo >"$OUT/metrics-$1.log" 2>&1 &
    SERVER_PID=$!
    SERVER_URL="http://127.0.0.1:$port"
    wait_ready "$SERVER_PID" "$SERVER_URL" "$OUT/metrics-$1.log" "server"
}

# load GENERATOR CONNECTIONS SECONDS -> the RESULT line
load() {
    if [ "$1" = wrk ]; then
        local threads=1
        [ "$2" -ge 64 ] && threads=2
        BENCH_BODIES="$BODIES" $(pinned "$CLIENT_CPU") wrk -t"$threads" -c"$2" -d"$3s" --timeout 10s -s bench/wrk.lua \
            "$SERVER_URL$BASE" | grep '^RESULT'
    else
        $(pinned "$CLIENT_CPU") "$PY" bench/load.py run --url "$SERVER_URL$BASE" --bodies "$BODIES" \
            --connections "$2" --duration "$3" | grep '^RESULT'
    fi
}

# metric SCRAPE-FILE NAME LABEL-FILTER (a regex on the label set) -> the sum of the matching samples
metric() {
    awk -v name="$2" -v filter="$3" '
        $0 !~ /^#/ {
            split($1, parts, "{")
            if (parts[1] == name && $1 ~ filter) { sum += $NF }
        }
        END { printf "%d\n", sum }' "$1"
}

FAILED=0
echo
echo "== /metrics after the result-cache load ($(date -u +%Y-%m-%dT%H:%M:%SZ), ${DURATION}s at connections $CONNECTIONS)"
printf '%-7s %10s %10s %10s %10s %12s %12s  %s\n' loadgen answered sent non200 counted 'counted 200' latencies verdict
for gen in $LOADGENS; do
    if [ "$gen" = wrk ] && ! command -v wrk >/dev/null; then
        echo "wrk: skipped, not installed (apt-get install wrk)"
        continue
    fi
    start_server "$gen"
    answered=0 sent=0 non200=0 errors=0
    for c in 4:2 $(for c in $CONNECTIONS; do echo "$c:$DURATION"; done); do
        line=$(load "$gen" "${c%%:*}" "${c##*:}")
        [ -n "$line" ] || die "$gen: no result at ${c%%:*} connections"
        answered=$((answered + $(field requests "$line")))
        written=$(field sent "$line")
        sent=$((sent + ${written:-0}))
        non200=$((non200 + $(field non200 "$line")))
        errors=$((errors + $(field errors "$line")))
    done
    [ "$gen" = wrk ] || sent=$answered
    # Requests wrk left in flight may still be answered just after it stops.
    sleep 1
    scrape="$OUT/metrics-$gen.txt"
    curl -sf "$SERVER_URL/metrics" >"$scrape" || die "$gen: /metrics did not answer"
    counted=$(metric "$scrape" cubed_http_requests_total 'route="/v1/load"')
    counted200=$(metric "$scrape" cubed_http_requests_total 'route="/v1/load".*status="200"|status="200".*route="/v1/load"')
    latencies=$(metric "$scrape" cubed_http_request_duration_seconds_count 'route="/v1/load"')
    if [ "$gen" = wrk ]; then
        # Answered by wrk <= counted <= written by wrk (a request written as wrk closed its
        # connections may never be read by cubed).
        verdict="WITHIN (+$((counted - answered)) over answered, $((sent - counted)) written but not received)"
        ok=$([ "$answered" -le "$counted" ] && [ "$counted" -le "$sent" ] && echo 1)
    else
        verdict=EQUAL
        ok=$([ "$counted" = "$sent" ] && echo 1)
    fi
    if [ "$ok" != 1 ] || [ "$latencies" != "$counted" ] || [ "$errors" != 0 ] \
            || [ "$counted200" != $((counted - non200)) ]; then
        verdict="DIFFERENT (errors $errors)"
        FAILED=1
    fi
    printf '%-7s %10s %10s %10s %10s %12s %12s  %s\n' "$gen" "$answered" "$sent" "$non200" "$counted" "$counted200" \
        "$latencies" "$verdict"
    cleanup
done
trap - EXIT
if [ "$FAILED" != 0 ]; then
    echo "metrics check: FAILED (a /metrics count differs from the requests sent)" >&2
    exit 1
fi
