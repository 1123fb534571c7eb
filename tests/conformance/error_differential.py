"""An error differential against the real Cube: valid queries mutated (unknown or wrong-kind
members, bad operators, values, granularities, date ranges, limits, orders, time zones, types)
sent to /v1/load, /v1/sql and /v1/dry-run of A (Cube) and B (cubed); status and error text
compared by compare.py's rules. Not counted: Cube's 500s that cubed answers 400, and unknown
time zones cubed refuses before any SQL runs (both README deviations).

    python3 error_differential.py --a http://127.0.0.1:4400 --secret reference-secret \
        --b http://127.0.0.1:4000 --secret-b "$CUBEJS_API_SECRET" --n 150 --seed 1
"""
import copy
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import differential_run  # noqa: E402


BASE = [
    {"measures": ["Orders.count"], "dimensions": ["Orders.status"]},
    {"measures": ["Orders.totalAmount"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month",
                                                             "dateRange": ["2024-01-01", "2024-03-31"]}]},
    {"measures": ["LineItems.revenue"], "dimensions": ["Products.category"],
     "filters": [{"member": "Orders.status", "operator": "equals", "values": ["completed"]}]},
    {"dimensions": ["Users.state"], "order": {"Users.state": "asc"}, "limit": 5},
]
BAD_MEMBERS = ["Orders.nope", "Nope.count", "orders", "Orders", "Orders.count.month", "Orders.status.day",
               "Orders.createdAt.fortnight", "", "Orders.", ".count", "Users.count.x.y", "SlowOrders.nope",
               "Orders.completed", "Orders.createdAt", "Orders.count"]
BAD_VALUES = [None, 1, "x", [], {}, [1], [None], True, "Orders.count", -1, 0, 1.5, "2024-13-01", ["a", "b", "c"]]
OPS = ["equals", "notEquals", "contains", "gt", "inDateRange", "beforeDate", "set", "measureFilter", "nope",
       "afterOrOnDate", "startsWith", "lte", "notInDateRange"]
KEYS = ["measures", "dimensions", "segments", "filters", "timeDimensions", "order", "limit", "offset", "timezone",
        "total", "ungrouped", "renewQuery", "responseFormat", "rowLimit"]


def mutate(r: random.Random) -> dict:
    q = copy.deepcopy(r.choice(BASE))
    kind = r.randrange(9)
    if kind == 0:
        key = r.choice(["measures", "dimensions", "segments"])
        q[key] = [r.choice(BAD_MEMBERS)]
    elif kind == 1:
        q["filters"] = [{"member": r.choice(BAD_MEMBERS + ["Orders.status", "Orders.count", "Orders.createdAt"]),
                         "operator": r.choice(OPS), "values": r.choice(BAD_VALUES + [["completed"], ["10"]])}]
        if r.random() < 0.2:
            del q["filters"][0]["values"]
        if r.random() < 0.1:
            del q["filters"][0]["operator"]
    elif kind == 2:
        td = {"dimension": r.choice(BAD_MEMBERS + ["Orders.createdAt", "Orders.status"])}
        if r.random() < 0.7:
            td["granularity"] = r.choice(["day", "fortnight", "", None, 1, "Month", "week"])
        if r.random() < 0.7:
            td["dateRange"] = r.choice([["2024-01-01"], ["2024-01-01", "2024-02-01", "x"], "last 3 fortnights",
                                        ["x", "y"], "2024-02-30", 5, ["2024-03-01", "2024-01-01"], "next 2 weeks"])
        q["timeDimensions"] = [td]
    elif kind == 3:
        q[r.choice(["limit", "offset"])] = r.choice(BAD_VALUES + [50001, 100000])
    elif kind == 4:
        q["timezone"] = r.choice(["Mars/Base", "", 5, "utc", "America/New_York", "EST", "+03:00"])
    elif kind == 5:
        q["order"] = r.choice([{"Orders.nope": "asc"}, {"Orders.count": "up"}, [["Orders.count"]], "Orders.count",
                               [["Orders.count", "desc", "x"]], {"Orders.status": None}, [{"id": "Orders.count"}]])
    elif kind == 6:
        q[r.choice(KEYS + ["nope", "queryType"])] = r.choice(BAD_VALUES)
    elif kind == 7:
        q["filters"] = [{"or": [{"member": "Orders.status", "operator": "equals", "values": ["x"]},
                                {"member": "Orders.count", "operator": "gt", "values": ["1"]}]}]
    else:
        q = r.choice([{}, {"measures": []}, {"filters": []}, {"timeDimensions": [{"dimension": "Orders.createdAt"}]},
                      {"segments": ["Orders.completed"]}, {"measures": ["Orders.count"], "ungrouped": True},
                      {"dimensions": ["Orders.status"], "total": "yes"}])
    return q


def make_request(r: random.Random) -> dict:
    """Return one request: a mutated query to load, sql or dry-run."""
    path = r.choice(["/cubejs-api/v1/load"] * 3 + ["/cubejs-api/v1/sql", "/cubejs-api/v1/dry-run"])
    return {"method": "POST", "path": path, "body": {"query": mutate(r)}}


def deliberate(a, b) -> bool:
    """Cube's 500s that cubed answers 400, and unknown time zones refused up front (README)."""
    return (a.status == 500 and b.status == 400) or (b.status == 400 and "must be a valid IANA time zone" in b.text)


if __name__ == "__main__":
    differential_run.run(__doc__.splitlines()[0], make_request, deliberate)
