#!/usr/bin/env bash
# bench/cache_bench.sh (run by make bench after bench/run.sh's scenarios; alone:
# bash bench/cache_bench.sh): /v1/load answered from the warm result cache.
#
# The demo (DuckDB, dev mode, as bench/run.sh) and the simple query
# {"measures":["Orders.count"],"dimensions":["Orders.status"]}: after the first request its
# rows come from the orchestrator's result cache (the demo cubes' refresh key is Cube's
# default, every 10 s, so DuckDB runs it once per 10 s). Scenarios:
#
#   memory   one process, CUBEJS_CACHE_AND_QUEUE_DRIVER=memory, pinned to one core:
#            req/s, p50/p99 at CONNECTIONS; then RSS (VmRSS) before and after REQUESTS more
#            requests at 16 connections
#   redis    the same process with the Redis store (a private redis-server on a free port,
#            on the load generator's core): every request reads the cache entry from Redis
#   two      two processes sharing that Redis, one per core, each loaded by its own wrk at
#            half the connections: the sum of req/s (on 2 cores the load generators and
#            Redis share the servers' cores: a floor, not a scaling figure)
#
# Environment (all optional):
#   DURATION=10               seconds per run
#   CONNECTIONS="1 16 64"     connections of the memory and redis runs
#   REQUESTS=100000           requests between the two RSS readings (memory store)
#   CACHE_SCENARIOS="memory redis two"
#   SERVER_CPU=0 CLIENT_CPU=1 cores for the server and the load generator (taskset)
#   PROFILE=0                 1: py-spy --gil the memory server during an extra 16-connection run
#                             (PY_SPY=path or on PATH) and print bench/profile.py summary
#   BENCH_OUT=bench/results   where logs, profiles and cache.tsv go
# Needs wrk (apt-get install wrk); redis and two need redis-server.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
TWISTD=${TWISTD:-.venv/bin/twistd}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-"1 16 64"}
REQUESTS=${REQUESTS:-100000}
CACHE_SCENARIOS=${CACHE_SCENARIOS:-"memory redis two"}
PROFILE=${PROFILE:-0}
OUT=${BENCH_OUT:-bench/results}
BASE=/cubejs-api/v1/load
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

die() { echo "cache bench: $*" >&2; exit 1; }
[ -x "$PY" ] && [ -x "$TWISTD" ] || die "no $PY / $TWISTD: run 'make install' first"
command -v wrk >/dev/null || die "wrk is needed (apt-get install wrk)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BODIES="$OUT/bodies-cache.txt"
echo '{"query":{"measures":["Orders.count"],"dimensions":["Orders.status"]}}' >"$BODIES"
printf 'scenario\tconnections\trps\tp50_ms\tp99_ms\terrors\tnon200\tserver_cpu_pct\tcpu_us_per_req\treq_per_cpu_s\n' \
    >"$OUT/cache.tsv"

# pin CPU COMMAND...: COMMAND on that core (taskset execs it: a background pin keeps its PID)
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    TASKSET=1
    PINNING="servers on CPU $SERVER_CPU, wrk and redis-server on CPU $CLIENT_CPU"
else
    TASKSET=
    PINNING="not pinned"
fi
# shellcheck source=bench/common.sh
. bench/common.sh
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

echo
echo "== result cache: /v1/load answered from the warm cache ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo "cores: $PINNING; load average: $(cut -d' ' -f1-3 /proc/loadavg); ${DURATION}s per run"

PIDS=()
REDIS_PID=
cleanup() {
    for pid in "${PIDS[@]}" $REDIS_PID; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    PIDS=()
    REDIS_PID=
}
trap cleanup EXIT

# start_server NAME CPU [VAR=VALUE...]: start the demo server; sets SERVER_PID and SERVER_URL
start_server() {
    local name=$1 cpu=$2 port
    shift 2
    port=$(free_port)
    $(pinned "$cpu") env PORT="$port" CUBEJS_DB_DUCKDB_DATABASE_PATH="$OUT/cache-demo-$name.duckdb" "$@" \
        "$TWISTD" -n --pidfile= cubed --demo >"$OUT/cache-$name.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    SERVER_URL="http://127.0.0.1:$port"
    wait_ready "$SERVER_PID" "$SERVER_URL" "$OUT/cache-$name.log" "server $name"
}

# run_wrk URL CONNECTIONS SECONDS -> the RESULT line
run_wrk() {
    local threads=1
    [ "$2" -ge 64 ] && threads=2
    BENCH_BODIES="$BODIES" $(pinned "$CLIENT_CPU") wrk -t"$threads" -c"$2" -d"$3s" --timeout 10s -s bench/wrk.lua "$1$BASE" | grep '^RESULT'
}

warm() {
    local line
    line=$(run_wrk "$1" 4 2)
    [ "$(field errors "$line")" = 0 ] && [ "$(field non200 "$line")" = 0 ] || die "warm-up: $line"
}

FAILED=0
# srv CPU: the server's CPU time over the run's wall time (below 100 %: other work shared its
# core); req/CPU-s = 1e6 / CPU us/req, the rate one core of its own would sustain.
printf '%-8s %5s %9s %8s %8s %7s %7s %8s %10s %10s\n' scenario conns 'req/s' 'p50 ms' 'p99 ms' errors non200 \
    'srv CPU' 'CPU us/req' 'req/CPU-s'
# measure SCENARIO PID URL CONNECTIONS
measure() {
    local before after line requests cpu_pct cpu_us per_cpu
    before=$(ticks "$2")
    line=$(run_wrk "$3" "$4" "$DURATION")
    after=$(ticks "$2")
    requests=$(field requests "$line")
    [ -n "$requests" ] || { echo "cache bench: no result for $1 at $4" >&2; FAILED=1; return; }
    read -r cpu_pct cpu_us per_cpu < <(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
        -v d="$(field duration_s "$line")" \
        'BEGIN { s = t / hz; u = n ? 1e6 * s / n : 0; printf "%.0f %.0f %.0f\n", 100 * s / d, u, u ? 1e6 / u : 0 }')
    printf '%-8s %5s %9.0f %8.2f %8.2f %7s %7s %7s%% %10s %10s\n' "$1" "$4" "$(field rps "$line")" \
        "$(field p50_ms "$line")" "$(field p99_ms "$line")" "$(field errors "$line")" "$(field non200 "$line")" \
        "$cpu_pct" "$cpu_us" "$per_cpu"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$4" "$(field rps "$line")" "$(field p50_ms "$line")" \
        "$(field p99_ms "$line")" "$(field errors "$line")" "$(field non200 "$line")" "$cpu_pct" "$cpu_us" "$per_cpu" \
        >>"$OUT/cache.tsv"
    [ "$(field errors "$line")" = 0 ] && [ "$(field non200 "$line")" = 0 ] || FAILED=1
}

RSS_LINE=
for scenario in $CACHE_SCENARIOS; do
    case "$scenario" in
        memory)
            start_server memory "$SERVER_CPU" CUBEJS_CACHE_AND_QUEUE_DRIVER=memory
            warm "$SERVER_URL"
            for c in $CONNECTIONS; do measure memory "$SERVER_PID" "$SERVER_URL" "$c"; done
            # RSS: after the runs above (everything allocated that steady state needs), then after
            # REQUESTS more requests at 16 connections.
            rss_before=$(rss_kb "$SERVER_PID")
            done_requests=0
            while [ "$done_requests" -lt "$REQUESTS" ]; do
                line=$(run_wrk "$SERVER_URL" 16 10)
                n=$(field requests "$line")
                [ -n "$n" ] && [ "$n" -gt 0 ] || die "RSS run: $line"
                [ "$(field non200 "$line")" = 0 ] || FAILED=1
                done_requests=$((done_requests + n))
            done
            rss_after=$(rss_kb "$SERVER_PID")
            RSS_LINE=$(awk -v b="$rss_before" -v a="$rss_after" -v n="$done_requests" \
                'BEGIN { printf "RSS %.1f MB before, %.1f MB after %d requests: %+.1f MB", b / 1024, a / 1024, n, (a - b) / 1024 }')
            echo "memory: $RSS_LINE"
            if [ "$PROFILE" = 1 ]; then
                PY_SPY=${PY_SPY:-$(command -v py-spy || true)}
                if [ -n "$PY_SPY" ]; then
                    $(pinned "$CLIENT_CPU") "$PY_SPY" record --pid "$SERVER_PID" --gil --threads --format raw --rate 200 \
                        --duration "$((DURATION + 1))" -o "$OUT/profile-cache-16.txt" >"$OUT/py-spy-cache.log" 2>&1 &
                    spy=$!
                    sleep 0.5
                    line=$(run_wrk "$SERVER_URL" 16 "$DURATION")
                    wait "$spy"
                    echo "profile: memory store, 16 connections ($(field rps "$line") req/s while sampled)"
                    "$PY" bench/profile.py summary "$OUT/profile-cache-16.txt" || echo "profile: no summary"
                else
                    echo "profile: skipped, py-spy not found (PY_SPY=/path/to/py-spy)"
                fi
            fi
            cleanup
            ;;
        redis|two)
            if ! command -v redis-server >/dev/null; then
                echo "$scenario: skipped, redis-server not installed"
                continue
            fi
            redis_port=$(free_port)
            $(pinned "$CLIENT_CPU") redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
                --dir "$OUT" >"$OUT/cache-redis-server.log" 2>&1 &
            REDIS_PID=$!
            for _ in $(seq 1 50); do
                [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
                sleep 0.1
            done
            redis=(CUBEJS_CACHE_AND_QUEUE_DRIVER=redis "CUBEJS_REDIS_URL=redis://127.0.0.1:$redis_port/0")
            if [ "$scenario" = redis ]; then
                start_server redis "$SERVER_CPU" "${redis[@]}"
                warm "$SERVER_URL"
                for c in $CONNECTIONS; do measure redis "$SERVER_PID" "$SERVER_URL" "$c"; done
            else
                start_server two-a "$SERVER_CPU" "${redis[@]}"
                pid_a=$SERVER_PID url_a=$SERVER_URL
                start_server two-b "$CLIENT_CPU" "${redis[@]}"
                pid_b=$SERVER_PID url_b=$SERVER_URL
                warm "$url_a"
                warm "$url_b"
                BENCH_BODIES="$BODIES" wrk -t1 -c8 -d"${DURATION}s" --timeout 10s -s bench/wrk.lua "$url_a$BASE" \
                    >"$OUT/cache-two-a.txt" &
                wrk_a=$!
                BENCH_BODIES="$BODIES" wrk -t1 -c8 -d"${DURATION}s" --timeout 10s -s bench/wrk.lua "$url_b$BASE" \
                    >"$OUT/cache-two-b.txt"
                wait "$wrk_a"
                a=$(grep '^RESULT' "$OUT/cache-two-a.txt")
                b=$(grep '^RESULT' "$OUT/cache-two-b.txt")
                total=$(awk -v x="$(field rps "$a")" -v y="$(field rps "$b")" 'BEGIN { printf "%.0f", x + y }')
                printf '%-8s %5s %9s %8s %8s %7s %7s   (A %.0f req/s p99 %.2f ms, B %.0f req/s p99 %.2f ms)\n' two "8+8" \
                    "$total" - - $(($(field errors "$a") + $(field errors "$b"))) $(($(field non200 "$a") + $(field non200 "$b"))) \
                    "$(field rps "$a")" "$(field p99_ms "$a")" "$(field rps "$b")" "$(field p99_ms "$b")"
                printf 'two\t8+8\t%s\t\t%s\t%s\t%s\t\t\t\n' "$total" "$(field p99_ms "$a")/$(field p99_ms "$b")" \
                    $(($(field errors "$a") + $(field errors "$b"))) $(($(field non200 "$a") + $(field non200 "$b"))) \
                    >>"$OUT/cache.tsv"
                [ "$(field non200 "$a")" = 0 ] && [ "$(field non200 "$b")" = 0 ] || FAILED=1
            fi
            cleanup
            ;;
        *) die "unknown scenario $scenario (memory, redis, two)" ;;
    esac
done
trap - EXIT

echo
echo "== result cache targets (memory store, one process)"
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == "ge" ? v >= t : v < t); print (ok ? "MET" : "NOT MET") }'; }
row=$(awk -F'\t' '$1 == "memory" && $2 == 16' "$OUT/cache.tsv")
if [ -n "$row" ]; then
    rps=$(cut -f3 <<<"$row")
    p99=$(cut -f5 <<<"$row")
    per_cpu=$(cut -f10 <<<"$row")
    echo "cached simple /v1/load >= 2200 req/s at 16 connections: $(printf '%.0f' "$rps")" \
        "($per_cpu per CPU-second, server CPU $(cut -f8 <<<"$row") %) -> $(verdict "$rps" 2200 ge)"
    echo "p99 < 15 ms at 16 connections: $p99 ms -> $(verdict "$p99" 15 lt)"
fi
if [ -n "$RSS_LINE" ]; then
    growth=$(awk -v b="$rss_before" -v a="$rss_after" 'BEGIN { printf "%.1f", (a - b) / 1024 }')
    echo "RSS growth < 20 MB over $done_requests requests: $RSS_LINE -> $(verdict "$growth" 20 lt)"
fi
echo "results: $OUT/cache.tsv"
if [ "$FAILED" != 0 ]; then
    echo "cache bench: FAILED (errors or non-200 answers above)" >&2
    exit 1
fi
