"""Model compile time and cold planning on large models.

    .venv/bin/python bench/model_bench.py [--cubes 200] [--runs 5]

Measures: compiling N generated cubes from YAML files (load + validate + parse every SQL
snippet + join graph + meta), cold planning of the largest conformance query, and cold
planning of a query joining 20 cubes of a generated model. Prints medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cubed.config import Settings  # noqa: E402
from cubed.model.registry import compile_directory  # noqa: E402
from cubed.query.request import expand_query  # noqa: E402

CASES = ROOT / "tests" / "conformance" / "cases"
MODEL = ROOT / "tests" / "conformance" / "model"


def cube_yaml(index: int, count: int) -> str:
    """Return one generated cube: a chain of many_to_one joins to the next cube, a dozen
    members of every kind, segments and a case dimension."""
    join = ""
    if index + 1 < count:
        join = (f"    joins:\n      - name: C{index + 1}\n        relationship: many_to_one\n"
                f"        sql: \"{{CUBE}}.parent_id = {{C{index + 1}}}.id\"\n")
    return f"""  - name: C{index}
    sql: SELECT * FROM public.t{index}
{join}    measures:
      - name: count
        type: count
      - name: total
        type: sum
        sql: amount
      - name: average
        type: avg
        sql: amount
      - name: distinctUsers
        type: count_distinct
        sql: user_id
      - name: bigCount
        type: count
        filters:
          - sql: "{{CUBE}}.amount > 100"
      - name: bigShare
        type: number
        sql: "100.0 * {{bigCount}} / NULLIF({{count}}, 0)"
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
      - name: parentId
        sql: parent_id
        type: number
      - name: status
        sql: status
        type: string
      - name: label
        sql: "UPPER({{CUBE}}.status) || '-' || CAST({{CUBE}}.id AS TEXT)"
        type: string
      - name: tier
        type: string
        case:
          when:
            - sql: "{{CUBE}}.amount < 100"
              label: small
            - sql: "{{CUBE}}.amount < 500"
              label: medium
          else:
            label: large
      - name: createdAt
        sql: created_at
        type: time
    segments:
      - name: big
        sql: "{{CUBE}}.amount > 500"
"""


def generated_model(directory: Path, count: int) -> None:
    """Write ``count`` generated cubes into ``directory``, ten per file."""
    for start in range(0, count, 10):
        body = "cubes:\n" + "".join(cube_yaml(i, count) for i in range(start, min(start + 10, count)))
        (directory / f"cubes_{start // 10:03d}.yml").write_text(body)


def median_ms(samples: list[float]) -> str:
    """Return ``median (min-max)`` in milliseconds."""
    return f"{statistics.median(samples) * 1000:.1f} ms (min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})"


def largest_conformance_query() -> dict:
    """Return the /v1/load query of the conformance cases with the longest JSON."""
    best: dict = {}
    for path in CASES.glob("*.json"):
        case = json.loads(path.read_text())
        request = case["request"]
        if not request["path"].endswith("/v1/load") or case["expect"]["status"] != 200:
            continue
        query = (request.get("params") or request.get("body") or {}).get("query")
        if isinstance(query, dict) and len(json.dumps(query)) > len(json.dumps(best)):
            best = query
    return best


def cold_plan(model_dir: Path, query: dict, runs: int) -> list[float]:
    """Return the times of planning ``query`` on a freshly compiled model (no plan cache)."""
    samples = []
    for _ in range(runs):
        compiled = compile_directory(model_dir, lambda _ds: "postgres", lambda _ds: "postgres")
        _type, queries = expand_query(query, Settings())
        started = time.perf_counter()
        for q in queries:
            compiled.planner.plan(q)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cubes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big"
        big.mkdir()
        generated_model(big, args.cubes)
        compile_times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            compiled = compile_directory(big, lambda _ds: "postgres", lambda _ds: "postgres")
            compile_times.append(time.perf_counter() - started)
        members = sum(len(c.measures) + len(c.dimensions) + len(c.segments) for c in compiled.model.cubes.values())
        print(f"compile {args.cubes} generated cubes ({members} members) from YAML: {median_ms(compile_times)}"
              f"  [target < 2000 ms: {'met' if statistics.median(compile_times) < 2 else 'NOT met'}]")

        twenty = Path(tmp) / "twenty"
        twenty.mkdir()
        generated_model(twenty, 20)
        query = {"measures": [f"C{i}.count" for i in (0, 5, 10)] + ["C19.total"],
                 "dimensions": ["C19.status", "C10.tier"],
                 "filters": [{"member": "C15.status", "operator": "equals", "values": ["a"]}],
                 "timeDimensions": [{"dimension": "C0.createdAt", "granularity": "month",
                                     "dateRange": ["2024-01-01", "2024-06-30"]}]}
        print(f"cold plan, query joining all 20 cubes of a generated model: {median_ms(cold_plan(twenty, query, args.runs * 4))}")

    largest = largest_conformance_query()
    print(f"cold plan, largest conformance query ({len(json.dumps(largest))} chars of JSON): "
          f"{median_ms(cold_plan(MODEL, largest, args.runs * 4))}")


if __name__ == "__main__":
    main()
