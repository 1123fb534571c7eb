"""SQL planning time per query on the demo model: parse, plan cold, plan cached.

Run from the checkout: ``.venv/bin/python bench/plan_bench.py [--runs N] [--json FILE]``.

For each query of QUERIES it times, over ``--runs`` runs, median and p95 in microseconds:

parse
    ``expand_query(raw_dict, settings)`` (Cube's validation and normalization; a POST body
    already decoded from JSON), as the gateway runs it.
cold: plan-cache miss
    ``CompiledModel.plan(query)`` after clearing the model's plan cache: the whole planner
    (member resolution, join tree, SQL tree, sqlglot rendering), with the model's join-path
    memo (``JoinGraph.build``) warm from earlier queries on the same cubes: the usual case of
    a new query in a running server.
cold: fresh planner
    ``QueryPlanner.plan(query)`` on a new ``JoinGraph`` + ``QueryPlanner`` each run (built
    outside the timing), so the join-path memo is empty too: the first query on a cube set.
of which render
    the part of the cold plan spent in ``render_sql`` (sqlglot tree -> SQL text), measured by
    wrapping that function here; cubed's code is not changed.
cached
    ``CompiledModel.plan(query)`` on a repeated query: hashing the frozen Query and the LRU
    lookup, what a warm ``/v1/load`` pays.
parse + cached
    what a warm ``/v1/load`` pays before it reaches the database.

The first plan in a fresh process (imports done, sqlglot's generator never used) is printed
once per query as "first ever", for information. The garbage collector stays on, as in the
server.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import cubed.query.plan as plan_module
from cubed.config import Settings
from cubed.demo import demo_model_dir
from cubed.model.joins import JoinGraph
from cubed.model.registry import CompiledModel, compile_directory
from cubed.query.plan import QueryPlanner
from cubed.query.request import expand_query

QUERIES: dict[str, dict[str, Any]] = {
    "simple count": {"measures": ["Orders.count"], "dimensions": ["Orders.status"]},
    "3-cube join, 3 filters, time dim": {
        "measures": ["Orders.count", "LineItems.totalQuantity"],
        "dimensions": ["Users.state"],
        "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month",
                            "dateRange": ["2024-01-01", "2024-06-30"]}],
        "filters": [
            {"member": "Orders.status", "operator": "equals", "values": ["completed"]},
            {"member": "Users.state", "operator": "equals", "values": ["CA", "NY", "TX"]},
            {"member": "LineItems.quantity", "operator": "gt", "values": ["1"]},
        ],
    },
    "fan-out (sum + count by status)": {
        "measures": ["Orders.totalAmount", "LineItems.count"],
        "dimensions": ["Orders.status"],
    },
}

TIME = time.perf_counter_ns


def summary(samples_ns: list[int]) -> dict[str, float]:
    """Return median and p95 of ``samples_ns`` in microseconds."""
    ordered = sorted(samples_ns)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median_us": statistics.median(ordered) / 1000, "p95_us": p95 / 1000, "runs": len(ordered)}


def timed(runs: int, setup: Callable[[], Any], body: Callable[[Any], Any]) -> list[int]:
    """Return ``runs`` durations of ``body(setup())`` in ns (``setup`` not timed)."""
    samples = []
    for _ in range(runs):
        state = setup()
        started = TIME()
        body(state)
        samples.append(TIME() - started)
    return samples


class RenderTimer:
    """Wraps plan.render_sql to add up the time spent in it (the bench's instrumentation)."""

    def __init__(self) -> None:
        self.original = plan_module.render_sql
        self.total_ns = 0

    def __enter__(self) -> "RenderTimer":
        original = self.original

        def render_sql(*args: Any, **kwargs: Any) -> Any:
            started = TIME()
            try:
                return original(*args, **kwargs)
            finally:
                self.total_ns += TIME() - started

        plan_module.render_sql = render_sql
        return self

    def __exit__(self, *exc: Any) -> None:
        plan_module.render_sql = self.original


def main() -> None:
    """Print parse / cold plan / cached plan timings per query; optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="timed runs per figure (default 2000)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    settings = Settings()

    compile_started = TIME()
    compiled: CompiledModel = compile_directory(demo_model_dir(), lambda ds: "duckdb", lambda ds: "duckdb")
    compile_ms = (TIME() - compile_started) / 1e6
    model, dialect_for, db_type_for = compiled.model, compiled.planner.dialect_for, compiled.planner.db_type_for

    parsed = {name: expand_query(raw, settings)[1][0] for name, raw in QUERIES.items()}
    first_ever = {}
    for name, query in parsed.items():
        started = TIME()
        compiled.plan(query)
        first_ever[name] = (TIME() - started) / 1000

    results: dict[str, dict[str, Any]] = {}
    for name, raw in QUERIES.items():
        query = parsed[name]
        for _ in range(50):  # warm-up of every path
            expand_query(raw, settings)
            compiled._plans.clear()
            compiled.plan(query)
        parse = timed(args.runs, lambda: None, lambda _s: expand_query(raw, settings))

        def clear() -> None:
            compiled._plans.clear()

        with RenderTimer() as render:
            miss = timed(args.runs, clear, lambda _s: compiled.plan(query))
        render_us = render.total_ns / args.runs / 1000

        fresh = timed(args.runs, lambda: QueryPlanner(model, JoinGraph(model), dialect_for, db_type_for),
                      lambda planner: planner.plan(query))
        compiled.plan(query)
        cached = timed(args.runs, lambda: None, lambda _s: compiled.plan(query))
        parse_cached = timed(args.runs, lambda: None,
                             lambda _s: compiled.plan(expand_query(raw, settings)[1][0]))
        results[name] = {
            "parse": summary(parse),
            "cold_cache_miss": summary(miss),
            "cold_fresh_planner": summary(fresh),
            "render_mean_us": render_us,
            "cached": summary(cached),
            "parse_plus_cached": summary(parse_cached),
            "first_ever_us": first_ever[name],
            "sql_chars": len(compiled.plan(query).sql.text),
        }

    print(f"demo model compiled in {compile_ms:.0f} ms; {args.runs} runs per figure; "
          f"pid {os.getpid()}, CPU affinity {sorted(os.sched_getaffinity(0))}; python {sys.version.split()[0]}")
    print("microseconds, median / p95")
    header = (f"{'query':34s} {'parse':>13s} {'cold (miss)':>15s} {'cold (fresh)':>15s} {'render':>7s} "
              f"{'cached':>11s} {'parse+cached':>13s} {'first ever':>10s}")
    print(header)
    for name, r in results.items():
        def cell(key: str, width: int) -> str:
            return f"{r[key]['median_us']:.1f} / {r[key]['p95_us']:.1f}".rjust(width)

        print(f"{name:34s} {cell('parse', 13)} {cell('cold_cache_miss', 15)} {cell('cold_fresh_planner', 15)} "
              f"{r['render_mean_us']:7.0f} {cell('cached', 11)} {cell('parse_plus_cached', 13)} "
              f"{r['first_ever_us']:10.0f}")
    join = results["3-cube join, 3 filters, time dim"]["cold_fresh_planner"]["median_us"]
    verdict = "MET" if join < 5000 else "NOT MET"
    print(f"target: cold planning of the 3-cube join with 3 filters under 5 ms median: "
          f"{join / 1000:.2f} ms (fresh planner) -> {verdict}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"compile_ms": compile_ms, "runs": args.runs, "queries": results}, out, indent=2)


if __name__ == "__main__":
    main()
