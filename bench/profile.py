"""Where the time of a /v1/load goes: a py-spy profile summary, and component costs.

    py-spy record --pid PID --gil --threads --format raw --rate 200 -o profile.txt --duration 10
    .venv/bin/python bench/profile.py summary profile.txt [--requests N --rate 200] [--top 15]
    .venv/bin/python bench/profile.py components [--number N]

bench/run.sh runs ``components`` always and py-spy + ``summary`` with PROFILE=1.

``summary`` reads py-spy's ``raw`` (collapsed stacks) output
taken with ``--threads``. Samples of threads waiting for work (a pool thread in
``Queue.get``, the reactor in ``epoll``) are idle and dropped. Every other sample goes to one
category: the innermost frame of its stack that CATEGORIES names (logging, request id, auth,
JSON, parse, plan cache, result shaping, row conversion, DuckDB's own work in the worker
thread, cubed's API glue, Klein, Deferred machinery, twisted.web, the reactor and TCP, ...).

With ``--gil`` py-spy samples only the thread holding the GIL: the shares are of the Python
interpreter's time, the part of a request's CPU this code base can change. DuckDB runs its
queries without the GIL, so its own work does not show there (``components`` times it).
Without ``--gil`` every non-idle thread is sampled, wall-clock: on a server pinned to one core
a thread waiting for the GIL or the CPU counts as busy where it waits (the reactor's log
``flush()`` and ``os.urandom`` then look far more costly than they are). With ``--requests``
(answered while sampling) each share is also shown as microseconds per request.

``components`` times, in this process, each step a simple ``/v1/load`` (the run.sh query) goes
through, called the way the server calls it, in microseconds per call and per request:
twisted.web's Content-Type parsing of a POST, the request ids, the body's JSON decode, parse,
the plan cache lookup, DuckDB execute + fetch + row conversion (on a demo database built in a
temporary directory), result shaping, the JSON encode, the log lines (the info line written
through cubed's text observer to /dev/null, plus the debug events the level filter drops), and
for information the JWT check a request with a token pays outside dev mode. What is left of
the server's CPU per request (bench/run.sh measures it) is twisted.web, Klein, Deferreds and
the reactor.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

# (category, substrings of a frame). A sample goes to the innermost frame of its stack that
# contains one of these substrings (the first category in this order when several do); frames
# of the standard library (json, email, uuid internals, ...) match nothing, so their time goes
# to the caller that is named here.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("logging (cubed.logs + twisted.logger)", ("cubed/logs.py", "twisted/logger/")),
    ("DuckDB rows -> wire values (worker)", ("cubed/drivers/values.py",)),
    ("request id (uuid4)", ("uuid4 (uuid.py",)),
    ("auth (JWT decode)", ("cubed/api/auth.py", "jwt/")),
    ("JSON encode of the answer", ("encode_json (",)),
    ("request body read + JSON decode", ("CubedApi._body (", "CubedApi._args (")),
    ("parse (expand_query)", ("cubed/query/request.py", "cubed/query/dates.py")),
    ("plan cache lookup (Query hash)", ("CompiledModel.plan (",)),
    ("result shaping (format_data, annotation)", ("cubed/query/results.py", "Gateway._run_one (")),
    ("twisted.web Content-Type parsing (email pkg)", ("_parseContentType (",)),
    ("twisted.web getHost (getsockname)", (".getHost (", "_getsockname (")),
    ("thread hand-off (callFromThread, waker)", ("ReactorBase.callFromThread", "_FDWaker.doRead",
                                                 "_UnixWaker.wakeUp", "deferToThreadPool")),
    ("DuckDB execute + fetch (worker, native)", ("DuckDBDriver._run (",)),
    ("DuckDB driver, reactor side", ("cubed/drivers/duckdb.py",)),
    ("query runner (single flight, semaphore)", ("cubed/orchestrator/runner.py",)),
    ("cubed API glue (app, gateway, draining)", ("cubed/api/",)),
    ("Klein routing (werkzeug)", ("klein/", "werkzeug/")),
    ("Deferred / coroutine machinery", ("twisted/internet/defer.py",)),
    ("thread pool (submit, worker loop)", ("twisted/_threads/", "twisted/python/threadpool.py",
                                   "twisted/python/context.py")),
    ("twisted.web HTTP (parse, headers, write)", ("twisted/web/",)),
    ("reactor, TCP, epoll", ("twisted/internet/", "twisted/protocols/")),
]
IDLE_LEAVES = ("Condition.wait (threading.py", "EPollReactor.doPoll (twisted/internet/epollreactor.py",
               "Event.wait (threading.py")


def classify(frames: list[str]) -> str | None:
    """Return the category of one stack (root first), or None when the thread was idle."""
    if frames and frames[-1].startswith(IDLE_LEAVES):
        return None
    for frame in reversed(frames):
        for category, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return category
    return "other"


def read(path: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Return samples per category, active samples per thread, and idle samples."""
    categories: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    idle = 0
    with open(path, encoding="utf-8") as source:
        for line in source:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread (") else "?"
            if thread.startswith("PoolThread-"):
                thread = thread.rsplit("-", 1)[0]
            category = classify(frames[1:] if frames[0].startswith("thread (") else frames)
            if category is None:
                idle += count
                continue
            categories[category] += count
            threads[thread] += count
    return categories, threads, idle


def summary(args: argparse.Namespace) -> None:
    """Print the categories of a py-spy profile by share of active samples."""
    categories, threads, idle = read(args.profile)
    active = sum(categories.values())
    if not active:
        sys.exit("no active samples")
    print(f"{active} active samples ({idle} idle dropped); by thread: "
          + ", ".join(f"{name} {100 * n / active:.0f}%" for name, n in threads.most_common()))
    per_request = args.cpu_us_per_request
    if args.requests:
        # Samples at --rate Hz: active / rate seconds of (GIL-holding, with --gil) activity.
        per_request = active / args.rate / args.requests * 1e6
        print(f"{per_request:.0f} us of sampled activity per request ({args.requests} requests)")
    print(f"{'category':46s} {'share':>6s}" + (f" {'us/req':>7s}" if per_request else ""))
    for category, count in categories.most_common(args.top):
        share = count / active
        extra = f" {share * per_request:7.0f}" if per_request else ""
        print(f"{category:46s} {100 * share:5.1f}%{extra}")


def per_call_us(function: Callable[[], Any], number: int) -> float:
    """Return the best of 5 means of ``number`` calls, in microseconds."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(number):
            function()
        best = min(best, (time.perf_counter() - started) / number)
    return best * 1e6


def components(args: argparse.Namespace) -> None:
    """Print the cost of each step of a simple /v1/load, timed alone."""
    import dataclasses
    import json
    import os
    import uuid
    from datetime import datetime, timezone

    import duckdb
    import jwt
    from twisted.logger import Logger
    from twisted.web.http import _parseContentType

    from cubed.api.app import encode_json
    from cubed.api.auth import Authenticator
    from cubed.config import Settings
    from cubed.demo import build_demo_database, demo_model_dir
    from cubed.drivers.values import convert_rows, duckdb_columns
    from cubed.logs import RequestLogger, make_log_observer
    from cubed.model.registry import compile_directory
    from cubed.query.request import expand_query, parse_query_param
    from cubed.query.results import annotation_for, format_data

    number = args.number
    settings = dataclasses.replace(Settings(), dev_mode=True)
    compiled = compile_directory(demo_model_dir(), lambda ds: "duckdb", lambda ds: "duckdb")
    raw_body = b'{"query":{"measures":["Orders.count"],"dimensions":["Orders.status"]}}'
    query = expand_query(parse_query_param(json.loads(raw_body)["query"]), settings)[1][0]
    plan = compiled.plan(query)

    workdir = tempfile.TemporaryDirectory(prefix="cubed-bench-")
    database = build_demo_database(Path(workdir.name) / "demo.duckdb")
    connection = duckdb.connect(str(database), read_only=True)
    cursor = connection.cursor()
    cursor.execute("SET TimeZone = 'UTC'")

    def run_sql() -> Any:
        cursor.execute(plan.sql.text, list(plan.sql.params))
        description = cursor.description
        rows = cursor.fetchall()
        _columns, converters = duckdb_columns(description)
        return convert_rows(rows, converters)

    rows = run_sql()

    def shape() -> dict[str, Any]:  # Gateway._run_one after the rows arrived
        refreshed = datetime.now(timezone.utc)
        annotation = annotation_for(query, compiled.meta, True)
        body = {"query": query.echo, "data": format_data(plan, rows, annotation, "regularQuery", "default"),
                "lastRefreshTime": refreshed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{refreshed.microsecond // 1000:03d}Z"}
        body.update({"refreshKeyValues": [], "usedPreAggregations": {}, "transformedQuery": None,
                     "requestId": "x-span-1", "annotation": annotation, "dataSource": "default",
                     "dbType": "duckdb", "external": False, "slowQuery": False, "total": None})
        return body

    body = shape()
    devnull = open(os.devnull, "w", encoding="utf-8")
    logger = RequestLogger(Logger(namespace="cubed.api", observer=make_log_observer("text", devnull, "info")),
                           f"{uuid.uuid4()}-span-1")

    def log_lines() -> None:  # per request: the gateway's and the driver's debug events, the access line
        logger.debug("load: {count} quer{y}, type {query_type}", count=1, y="y", query_type="regularQuery")
        logger._logger.debug("{name}: {rows} rows in {ms:.1f} ms", name="load", rows=3, ms=1.0)
        logger.info("{method} {path} {status} {duration:.1f}ms", method="POST", path="/cubejs-api/v1/load",
                    status=200, duration=1.0)

    secret = "bench-secret-of-at-least-32-bytes-for-hs256"
    authenticator = Authenticator(dataclasses.replace(settings, api_secret=secret, dev_mode=False))
    token = jwt.encode({"sub": "bench", "iat": int(time.time()), "exp": int(time.time()) + 3600}, secret)

    steps: list[tuple[str, int, Callable[[], Any], int]] = [
        ("twisted.web Content-Type parse (email pkg)", 1, lambda: _parseContentType(b"application/json"), number),
        ("request id: uuid4 + format", 2, lambda: f"{uuid.uuid4()}-span-1", number),
        ("body JSON decode", 1, lambda: json.loads(raw_body.decode("utf-8")), number),
        ("parse: parse_query_param + expand_query", 1,
         lambda: expand_query(parse_query_param({"measures": ["Orders.count"], "dimensions": ["Orders.status"]}),
                              settings), number),
        ("plan cache lookup", 1, lambda: compiled.plan(query), number),
        ("DuckDB execute + fetch + convert", 1, run_sql, max(1, number // 20)),
        ("result shaping (annotation, format_data)", 1, shape, number),
        ("JSON encode of the answer", 1, lambda: encode_json(body), number),
        ("log: 1 info line written + 2 debug dropped", 1, log_lines, number),
        ("(outside dev mode) JWT HS256 verify", 0, lambda: authenticator.verify(token), number),
    ]
    print(f"{'step of a simple /v1/load':46s} {'us/call':>8s} {'calls':>5s} {'us/req':>7s}")
    total = 0.0
    for name, calls, function, count in steps:
        cost = per_call_us(function, count)
        total += cost * calls
        print(f"{name:46s} {cost:8.1f} {calls:5d} {cost * calls:7.1f}")
    print(f"{'sum of the steps above':46s} {'':8s} {'':5s} {total:7.1f}")
    print(f"answer: {len(encode_json(body))} bytes, {len(rows)} rows")
    cursor.close()
    connection.close()
    devnull.close()
    workdir.cleanup()


def main() -> None:
    """Parse the command line and run the command."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary_parser = commands.add_parser("summary", help="summarise a py-spy raw profile")
    summary_parser.add_argument("profile", help="py-spy raw output (--format raw --threads)")
    summary_parser.add_argument("--cpu-us-per-request", type=float,
                                help="spread this many microseconds per request over the shares")
    summary_parser.add_argument("--requests", type=int,
                                help="requests answered while sampling: show sampled time per request")
    summary_parser.add_argument("--rate", type=float, default=200, help="py-spy's --rate (default 200)")
    summary_parser.add_argument("--top", type=int, default=20)
    components_parser = commands.add_parser("components", help="time each step of a simple /v1/load")
    components_parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    args = parser.parse_args()
    if args.command == "summary":
        summary(args)
    else:
        components(args)


if __name__ == "__main__":
    main()
