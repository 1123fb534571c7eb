# Helpers shared by bench/cache_bench.sh and bench/metrics_check.sh (sourced; they set PY,
# TASKSET and die() first).

# pinned CPU: the taskset prefix that pins a command to CPU (nothing without taskset)
pinned() { if [ -n "$TASKSET" ]; then echo taskset -c "$1"; fi; }
# free_port: a TCP port free on 127.0.0.1 now
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# field NAME LINE: the value of NAME=... in a RESULT line
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# wait_ready PID URL LOG WHAT: wait (30 s at most) until the server PID answers URL/readyz 200;
# die with its log when it exits first or never answers
wait_ready() {
    local pid=$1 url=$2 log=$3 what=$4
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "$what exited at start"; }
        if "$PY" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$url/readyz', timeout=2).status != 200)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$what: no /readyz within 30 s (see $log)"
}
