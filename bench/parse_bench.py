"""Micro-benchmark of the request parser: microseconds per parse for a few typical queries.

Run from the checkout: ``.venv/bin/python bench/parse_bench.py [--number N]``. Each query is
timed twice: from the decoded object (a POST body) and from JSON text (a GET ``query=``), both
through ``expand_query`` with a fixed clock.
"""
from __future__ import annotations

import argparse
import json
import timeit
from datetime import datetime, timezone
from typing import Any

from cubed.config import Settings
from cubed.query.request import expand_query, parse_query_param

QUERIES: dict[str, Any] = {
    "one measure": {"measures": ["Users.count"]},
    "dimensions + order + limit": {
        "measures": ["Orders.count"], "dimensions": ["Orders.status", "Users.city"],
        "order": {"Orders.count": "desc"}, "limit": 100,
    },
    "typical dashboard": {
        "measures": ["Orders.count", "Orders.totalAmount"],
        "dimensions": ["Orders.status", "Users.city"],
        "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month",
                            "dateRange": ["2024-01-01", "2024-03-31"]}],
        "filters": [
            {"member": "Orders.status", "operator": "equals", "values": ["shipped", "completed"]},
            {"or": [{"member": "Users.state", "operator": "equals", "values": ["CA"]},
                    {"member": "Orders.amount", "operator": "gt", "values": ["100"]}]},
        ],
        "order": {"Orders.count": "desc"}, "limit": 100,
    },
    "relative date range, zone": {
        "measures": ["Orders.count"], "timezone": "America/Los_Angeles",
        "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "day", "dateRange": "last 7 days"}],
    },
    "compareDateRange (2 ranges)": {
        "measures": ["Orders.count"],
        "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month",
                            "compareDateRange": [["2024-01-01", "2024-03-31"], ["2023-01-01", "2023-03-31"]]}],
    },
}


def main() -> None:
    """Print microseconds per parse for each query, from an object and from JSON text."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="parses per measurement")
    args = parser.parse_args()
    settings = Settings()
    now = datetime(2024, 3, 15, 10, 20, 30, tzinfo=timezone.utc)
    print(f"{'query':32s} {'object':>10s} {'JSON text':>10s}")
    for name, query in QUERIES.items():
        text = json.dumps(query)
        per_object = min(timeit.repeat(lambda: expand_query(query, settings, now), number=args.number, repeat=3))
        per_text = min(timeit.repeat(lambda: expand_query(parse_query_param(text), settings, now),
                                     number=args.number, repeat=3))
        print(f"{name:32s} {per_object / args.number * 1e6:8.1f}us {per_text / args.number * 1e6:8.1f}us")


if __name__ == "__main__":
    main()
