#!/usr/bin/env bash
# bench/run.sh (make bench): HTTP load and SQL planning benchmarks of cubed on the demo model.
#
# Starts `twistd -n cubed --demo` on a free port (its own DuckDB file under bench/results/),
# pinned to one core, waits for /readyz, warms the queries, then loads /cubejs-api/v1/load
# from the other core for DURATION seconds per scenario and prints req/s, p50/p99 latency,
# errors and non-200 answers (both must be 0), and the server's CPU use; then stops the
# server (SIGTERM) and runs bench/plan_bench.py and bench/profile.py components. See
# bench/README.md for the figures.
#
# Environment (all optional):
#   DURATION=10          seconds per load run
#   CONNECTIONS="1 16"   concurrent connections of the simple-query runs
#   REPEAT=1             runs per scenario (the verdict uses their median)
#   SCENARIOS="simple simple-distinct join"   simple: CONNECTIONS; simple-distinct (64 distinct
#                        queries of the simple shape): 16; join (3 cubes, 3 filters): 1 and 16
#   LOADGEN=auto         wrk (if installed) | python (bench/load.py) | auto
#   SERVER_CPU=0 CLIENT_CPU=1   cores for the server and the load generator (taskset)
#   PROFILE=0            1: also sample the server with py-spy --gil (PY_SPY=path, or on
#                        PATH) during extra 16-connection runs; print bench/profile.py summary
#   PLAN_RUNS=2000       timed runs per figure of bench/plan_bench.py (0: skip it)
#   COMPONENTS=1         0: skip bench/profile.py components (each step of a request timed alone)
#   BENCH_OUT=bench/results   where bodies, logs, profiles and results.tsv go
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
TWISTD=${TWISTD:-.venv/bin/twistd}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-"1 16"}
REPEAT=${REPEAT:-1}
LOADGEN=${LOADGEN:-auto}
PROFILE=${PROFILE:-0}
SCENARIOS=${SCENARIOS:-"simple simple-distinct join"}
PLAN_RUNS=${PLAN_RUNS:-2000}
COMPONENTS=${COMPONENTS:-1}
OUT=${BENCH_OUT:-bench/results}
BASE=/cubejs-api/v1/load

die() { echo "bench: $*" >&2; exit 1; }
[ -x "$PY" ] && [ -x "$TWISTD" ] || die "no $PY / $TWISTD: run 'make install' (make bench does) first"
mkdir -p "$OUT"
rm -f "$OUT"/results.tsv "$OUT"/profile-*.txt "$OUT"/server.log

# -- cores: the server on one, the load generator on another -------------------------------
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_CPU=${SERVER_CPU:-0}
    CLIENT_CPU=${CLIENT_CPU:-1}
    SERVER_PIN=(taskset -c "$SERVER_CPU")
    CLIENT_PIN=(taskset -c "$CLIENT_CPU")
    PINNING="server on CPU $SERVER_CPU, load generator on CPU $CLIENT_CPU (taskset)"
else
    SERVER_PIN=()
    CLIENT_PIN=()
    PINNING="not pinned ($NCPU CPU(s) or no taskset): server and load generator share the machine"
fi

case "$LOADGEN" in
    auto) if command -v wrk >/dev/null; then LOADGEN=wrk; else LOADGEN=python; fi ;;
    wrk) command -v wrk >/dev/null || die "LOADGEN=wrk but wrk is not installed (apt-get install wrk)" ;;
    python) ;;
    *) die "LOADGEN must be auto, wrk or python" ;;
esac

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo "== cubed bench $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "machine: $NCPU CPU(s), ${CPU_MODEL:-unknown CPU}; $($PY -c 'import sys; print("python", sys.version.split()[0])')"
echo "load before: $(uptime | sed 's/.*load average/load average/')"
echo "cores: $PINNING; load generator: $LOADGEN$([ "$LOADGEN" = wrk ] && echo " ($(wrk -v 2>&1 | head -1 | cut -d' ' -f2))")"
echo "runs: ${DURATION}s each, $REPEAT per scenario"

# -- the queries ---------------------------------------------------------------------------
SIMPLE='{"query":{"measures":["Orders.count"],"dimensions":["Orders.status"]}}'
JOIN='{"query":{"measures":["Orders.count","LineItems.totalQuantity"],"dimensions":["Users.state"],"timeDimensions":[{"dimension":"Orders.createdAt","granularity":"month","dateRange":["2024-01-01","2024-06-30"]}],"filters":[{"member":"Orders.status","operator":"equals","values":["completed"]},{"member":"Users.state","operator":"equals","values":["CA","NY","TX"]},{"member":"LineItems.quantity","operator":"gt","values":["1"]}]}}'
echo "$SIMPLE" >"$OUT/bodies-simple.txt"
echo "$JOIN" >"$OUT/bodies-join.txt"
# 64 queries of the simple shape that differ by their limit: 64 cached plans and 64 distinct
# SQL texts, so concurrent requests do not share one execution (single flight) and each one
# runs on DuckDB.
: >"$OUT/bodies-simple-distinct.txt"
for i in $(seq 1001 1064); do
    echo "{\"query\":{\"measures\":[\"Orders.count\"],\"dimensions\":[\"Orders.status\"],\"limit\":$i}}" \
        >>"$OUT/bodies-simple-distinct.txt"
done

# -- the server ----------------------------------------------------------------------------
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
SERVER_PID=
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    local pid=$SERVER_PID rc
    SERVER_PID=
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 143 ]; then
        echo "server stopped (exit $rc)"
        return 0
    fi
    echo "bench: server exited with status $rc; see $OUT/server.log" >&2
    return 1
}
trap 'stop_server >/dev/null 2>&1' EXIT

env PORT="$PORT" CUBEJS_DB_DUCKDB_DATABASE_PATH="$ROOT/$OUT/demo.duckdb" \
    "${SERVER_PIN[@]}" "$TWISTD" -n --pidfile= cubed --demo >"$OUT/server.log" 2>&1 &
SERVER_PID=$!

ready=
for _ in $(seq 1 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log" >&2; SERVER_PID=; die "the server exited at start"; }
    if $PY -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$URL/readyz', timeout=2).status != 200)" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || die "no /readyz from $URL within 30 s; see $OUT/server.log"
echo "server pid $SERVER_PID ready on $URL"

# One simple /v1/load through urllib: 200 and rows, or stop here.
$PY - "$URL$BASE" "$SIMPLE" <<'EOF' || die "the warm-up /v1/load failed"
import json, sys, urllib.request
request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as answer:
    body = json.load(answer)
    assert answer.status == 200 and body["data"], body
print(f"warm-up /v1/load: 200, {len(body['data'])} rows: {json.dumps(body['data'])[:100]}")
EOF

CLK_TCK=$(getconf CLK_TCK)
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }
# column_all SCENARIO CONNECTIONS K: the median of column K of results.tsv over the runs
column_all() { awk -F'\t' -v n="$1" -v c="$2" -v k="$3" '$1 == n && $2 == c { print $k }' "$OUT/results.tsv" | median; }
server_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }

# load NAME BODIES CONNECTIONS SECONDS -> prints the RESULT line (figures as key=value)
load() {
    local bodies=$1 connections=$2 seconds=$3 threads=1
    if [ "$LOADGEN" = wrk ]; then
        [ "$connections" -ge 64 ] && threads=2
        BENCH_BODIES="$bodies" "${CLIENT_PIN[@]}" wrk -t"$threads" -c"$connections" -d"${seconds}s" \
            --timeout 10s -s bench/wrk.lua "$URL$BASE" | grep '^RESULT'
    else
        "${CLIENT_PIN[@]}" "$PY" bench/load.py run --url "$URL$BASE" --bodies "$bodies" \
            -c "$connections" -d "$seconds" | grep '^RESULT'
    fi
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# Warm every query (plan cache, DuckDB's caches, pool threads) before measuring.
for name in simple simple-distinct join; do
    line=$(load "$OUT/bodies-$name.txt" 4 2)
    [ "$(field errors "$line")" = 0 ] && [ "$(field non200 "$line")" = 0 ] \
        || die "warm-up of $name: $line"
done
echo "warmed: simple, simple-distinct (64 queries), join"

FAILED=0
# srv CPU: the server process's CPU time (all its threads) over the run's wall time; CPU us/req:
# that CPU time per answered request; req/CPU-s: 1e6 / CPU us/req, the rate one fully
# available core would sustain at that cost (the figure to compare when other work shares the
# server's core and srv CPU stays below 100 %).
printf '%-17s %5s %4s %9s %8s %8s %7s %7s %8s %10s %10s\n' scenario conns run 'req/s' 'p50 ms' 'p99 ms' errors non200 \
    'srv CPU' 'CPU us/req' 'req/CPU-s'
printf 'scenario\tconnections\trun\trps\tp50_ms\tp99_ms\terrors\tnon200\tserver_cpu_pct\tcpu_us_per_req\treq_per_cpu_s\tloadgen\n' >"$OUT/results.tsv"

# measure NAME CONNECTIONS RUN
measure() {
    local name=$1 connections=$2 run=$3 before after line requests rps cpu_pct cpu_us per_cpu
    before=$(server_ticks)
    line=$(load "$OUT/bodies-$name.txt" "$connections" "$DURATION")
    after=$(server_ticks)
    requests=$(field requests "$line")
    rps=$(field rps "$line")
    if [ -z "$requests" ]; then
        echo "bench: no result from the load generator for $name at $connections" >&2
        FAILED=1
        return
    fi
    read -r cpu_pct cpu_us < <(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v d="$(field duration_s "$line")" \
        -v n="$requests" 'BEGIN { s = t / hz; printf "%.0f %.0f\n", 100 * s / d, (n ? 1e6 * s / n : 0) }')
    per_cpu=$(awk -v u="$cpu_us" 'BEGIN { printf "%.0f", (u > 0 ? 1e6 / u : 0) }')
    printf '%-17s %5s %4s %9.0f %8.2f %8.2f %7s %7s %7s%% %10s %10s\n' "$name" "$connections" "$run" "$rps" \
        "$(field p50_ms "$line")" "$(field p99_ms "$line")" "$(field errors "$line")" "$(field non200 "$line")" \
        "$cpu_pct" "$cpu_us" "$per_cpu"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$connections" "$run" "$rps" \
        "$(field p50_ms "$line")" "$(field p99_ms "$line")" "$(field errors "$line")" "$(field non200 "$line")" \
        "$cpu_pct" "$cpu_us" "$per_cpu" "$LOADGEN" >>"$OUT/results.tsv"
    if [ "$(field errors "$line")" != 0 ] || [ "$(field non200 "$line")" != 0 ]; then
        FAILED=1
    fi
}

for run in $(seq 1 "$REPEAT"); do
    for scenario in $SCENARIOS; do
        case "$scenario" in
            simple) for c in $CONNECTIONS; do measure simple "$c" "$run"; done ;;
            simple-distinct) measure simple-distinct 16 "$run" ;;
            join) measure join 1 "$run"; measure join 16 "$run" ;;
            *) die "unknown scenario $scenario" ;;
        esac
    done
done

if [ "$PROFILE" = 1 ]; then
    PY_SPY=${PY_SPY:-$(command -v py-spy || true)}
    if [ -z "$PY_SPY" ]; then
        echo "profile: skipped, py-spy not found (pip install py-spy, then PY_SPY=/path/to/py-spy)"
    else
        for name in simple simple-distinct; do
            cpu_us=$(column_all "$name" 16 10)
            "${CLIENT_PIN[@]}" "$PY_SPY" record --pid "$SERVER_PID" --gil --threads --format raw --rate 200 \
                --duration "$((DURATION + 1))" -o "$OUT/profile-$name-16.txt" >"$OUT/py-spy-$name.log" 2>&1 &
            spy=$!
            sleep 0.5
            line=$(load "$OUT/bodies-$name.txt" 16 "$DURATION")
            wait "$spy"
            echo
            echo "profile: $name, 16 connections, py-spy --gil at 200 Hz ($(field rps "$line") req/s while sampled;" \
                "unsampled: ${cpu_us} us of server CPU per request)"
            "$PY" bench/profile.py summary "$OUT/profile-$name-16.txt" \
                || echo "profile: no summary (see $OUT/py-spy-$name.log)"
        done
    fi
fi

echo
echo "load after: $(uptime | sed 's/.*load average/load average/')"
stop_server || FAILED=1
trap - EXIT

if [ "$PLAN_RUNS" != 0 ]; then
    echo
    echo "== SQL planning (bench/plan_bench.py --runs $PLAN_RUNS)"
    "${SERVER_PIN[@]}" "$PY" bench/plan_bench.py --runs "$PLAN_RUNS" --json "$OUT/plan.json" || FAILED=1
fi

if [ "${MODEL_BENCH:-1}" = 1 ]; then
    echo
    echo "== model compile and cold planning on large models (bench/model_bench.py)"
    "${SERVER_PIN[@]}" "$PY" bench/model_bench.py || FAILED=1
fi

if [ "$COMPONENTS" = 1 ]; then
    echo
    echo "== steps of a simple /v1/load timed alone (bench/profile.py components)"
    "${SERVER_PIN[@]}" "$PY" bench/profile.py components || FAILED=1
fi
[ "${CACHE_BENCH:-1}" = 1 ] && { DURATION=$DURATION PROFILE=$PROFILE BENCH_OUT=$OUT bash bench/cache_bench.sh || FAILED=1; }  # result cache: bench/cache_bench.sh

echo
echo "== targets"
verdict() { awk -v v="$1" 'BEGIN { print (v > 500 ? "MET" : "NOT MET") }'; }
round() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
simple16=$(column_all simple 16 4)
distinct16=$(column_all simple-distinct 16 4)
simple1=$(column_all simple 1 4)
if grep -q "^simple	16	" "$OUT/results.tsv"; then
    echo "planned-and-cached simple /v1/load > 500 req/s on one core (16 connections, median of $REPEAT):" \
        "$(round "$simple16") req/s ($(column_all simple 16 11) per CPU-second) -> $(verdict "$simple16")"
fi
if grep -q "^simple-distinct	16	" "$OUT/results.tsv"; then
    echo "  with 64 distinct queries (every request runs on DuckDB): $(round "$distinct16") req/s" \
        "($(column_all simple-distinct 16 11) per CPU-second) -> $(verdict "$distinct16")"
fi
if grep -q "^simple	1	" "$OUT/results.tsv"; then
    echo "  1 connection: $(round "$simple1") req/s ($(column_all simple 1 11) per CPU-second)"
fi
if [ -f "$OUT/plan.json" ]; then
    "$PY" - "$OUT/plan.json" <<'EOF'
import json, sys
figures = json.load(open(sys.argv[1]))["queries"]["3-cube join, 3 filters, time dim"]
ms = figures["cold_fresh_planner"]["median_us"] / 1000
print(f"cold planning of the 3-cube join with 3 filters < 5 ms median: {ms:.2f} ms -> {'MET' if ms < 5 else 'NOT MET'}")
EOF
fi
echo "results: $OUT/results.tsv, server log: $OUT/server.log"
if [ "$FAILED" != 0 ]; then
    echo "bench: FAILED (errors, non-200 answers or a bad server exit above)" >&2
    exit 1
fi
