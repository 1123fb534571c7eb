-- wrk script for bench/run.sh: POSTs the JSON bodies of the file named by $BENCH_BODIES
-- (one per line) in turn on each connection, counts answers other than 200, and prints one
-- line in the format bench/load.py prints:
--   RESULT requests=... duration_s=... rps=... p50_ms=... p90_ms=... p99_ms=... max_ms=... errors=... non200=... sent=...
-- (errors = connect + read + write + timeout errors as wrk counts them; requests = answers read;
-- sent = requests written, including those still in flight when the time was up).

local bodies = {}
local path = os.getenv("BENCH_BODIES")
if path == nil then
  error("set BENCH_BODIES to a file of JSON bodies, one per line")
end
for line in io.lines(path) do
  if #line > 0 then
    bodies[#bodies + 1] = line
  end
end

local threads = {}

function setup(thread)
  thread:set("offset", #threads)
  table.insert(threads, thread)
end

function init(args)
  non200 = 0
  sent = 0
  requests = {}
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
  end
  index = offset or 0
end

function request()
  index = index % #requests + 1
  sent = sent + 1
  return requests[index]
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  local bad, written = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non200") or 0)
    written = written + (thread:get("sent") or 0)
  end
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f errors=%d non200=%d sent=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.connect + e.read + e.write + e.timeout, bad, written))
end
