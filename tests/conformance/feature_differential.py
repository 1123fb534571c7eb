"""A second differential against the real Cube for what differential.py does not generate:
compareDateRange, blending, rolling and running-total measures, total, ungrouped, compact,
segments, relative date ranges and time zones, over /v1/load, /v1/sql and /v1/dry-run; each
answer of B (cubed) is compared with A's (Cube) by compare.py's rules. Cube's 500 TypeError on a
blending query without a time dimension (cubed: 400, a README deviation) is not counted.

    python3 feature_differential.py --a http://127.0.0.1:4400 --secret reference-secret \
        --b http://127.0.0.1:4000 --secret-b "$CUBEJS_API_SECRET" --n 100 --seed 1
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import differential_run  # noqa: E402


CUBES = {
    "Orders": dict(m=["count", "completedCount", "completedPercentage", "totalAmount", "avgAmount", "minAmount",
                      "maxAmount", "uniqueUsers"],
                   d=["status", "statusUpper", "amountTier", "isCompleted", "userId"],
                   t=["createdAt", "completedAt"], s=["completed", "bigOrders"]),
    "Users": dict(m=["count", "distinctCities", "californiaCount", "californiaShare"],
                  d=["state", "gender", "genderLabel", "city", "isCalifornian"], t=["createdAt"],
                  s=["fromCalifornia", "female"]),
    "LineItems": dict(m=["count", "totalQuantity", "revenue", "avgPrice", "distinctProducts"],
                      d=["quantity"], t=["createdAt"], s=[]),
    "Products": dict(m=["count", "avgPrice", "minPrice", "maxPrice"], d=["category", "priceRange", "isExpensive"],
                     t=["createdAt"], s=[]),
}
GRAN = ["day", "week", "month", "quarter", "year", "hour"]
TZ = ["UTC", "America/Los_Angeles", "Europe/Berlin", "Asia/Kolkata", "Australia/Sydney", "America/Sao_Paulo"]
RANGES = [["2024-01-01", "2024-03-31"], ["2023-11-15", "2024-02-10"], ["2024-03-20", "2024-04-05"],
          ["2025-10-20", "2025-11-05"], "2024", "2023-07", "from 2024-02-01 to 2024-02-20",
          ["2024-03-31T00:00:00", "2024-03-31T12:00:00"], ["2024-10-26", "2024-10-28"],
          "last year", "this year", "last 12 months", "from 400 days ago to now", "last quarter",
          "from 2 years ago to 1 year ago", "last 2 years", "from 2025-12-01 to now", "2025",
          "last 800 days", "from 3 years ago to today"]


def regular(r: random.Random) -> dict:
    cube = r.choice(["Orders", "Orders", "Users", "LineItems", "Products"])
    c = CUBES[cube]
    q: dict = {"measures": [f"{cube}.{m}" for m in r.sample(c["m"], r.randint(1, 2))]}
    if r.random() < 0.6:
        q["dimensions"] = [f"{cube}.{d}" for d in r.sample(c["d"], r.randint(1, min(2, len(c["d"]))))]
    td = {"dimension": f"{cube}.{r.choice(c['t'])}"}
    kind = r.random()
    if kind < 0.35:
        td["granularity"] = r.choice(GRAN[:5])
        td["dateRange"] = r.choice(RANGES)
    elif kind < 0.5:
        td["dateRange"] = r.choice(RANGES)
    elif kind < 0.65:
        td["granularity"] = r.choice(["month", "quarter", "week"])
        td["compareDateRange"] = r.sample([["2024-01-01", "2024-03-31"], "2023", ["2024-06-01", "2024-06-30"],
                                           "2024-05"], 2)
    elif kind < 0.75:
        td["granularity"] = "day"
        td["dateRange"] = ["2024-03-08", "2024-03-14"]
        if cube == "Orders":
            q["measures"] = [r.choice(["Orders.rollingCount7d", "Orders.runningTotalAmount"])] + \
                (["Orders.count"] if r.random() < 0.5 else [])
    else:
        td = None
    if td:
        q["timeDimensions"] = [td]
    if r.random() < 0.3:
        q["timezone"] = r.choice(TZ)
    if c["s"] and r.random() < 0.3:
        q["segments"] = [f"{cube}.{r.choice(c['s'])}"]
    if r.random() < 0.3 and q.get("dimensions"):
        member = r.choice(q["dimensions"] + q["measures"])
        q["order"] = {member: r.choice(["asc", "desc"])}
    elif r.random() < 0.3:
        q["order"] = [[q["measures"][0], "desc"]]
    if r.random() < 0.2:
        q["limit"] = r.randint(1, 30)
        if r.random() < 0.5:
            q["offset"] = r.randint(0, 10)
    if r.random() < 0.15:
        q["total"] = True
    if r.random() < 0.15 and "timeDimensions" not in q:
        q["ungrouped"] = True
        q["measures"] = []
        q["dimensions"] = [f"{cube}.{d}" for d in c["d"][:2]]
        q["limit"] = 20
        q["order"] = [[q["dimensions"][0], "asc"]]
    if r.random() < 0.15:
        q["responseFormat"] = "compact"
    if r.random() < 0.2:
        q["filters"] = [{"member": f"{cube}.{r.choice(c['d'])}", "operator": r.choice(["set", "notSet"])}]
    return q


def make_request(r: random.Random) -> dict:
    """Return one request: a generated query (sometimes a blending pair) to load, sql or dry-run."""
    q: object = regular(r)
    if r.random() < 0.1:
        q = [q, regular(r)]
    path = r.choice(["/cubejs-api/v1/load"] * 4 + ["/cubejs-api/v1/sql", "/cubejs-api/v1/dry-run"])
    request = {"method": "POST", "path": path, "body": {"query": q}}
    if isinstance(q, list) and path.endswith("load"):
        request["body"]["queryType"] = "multi"
    return request


def deliberate(a, b) -> bool:
    """Cube's TypeError on a blending query without a time dimension: cubed's 400 (README)."""
    return a.status == 500 and "reading 'granularity'" in a.text


if __name__ == "__main__":
    differential_run.run(__doc__.splitlines()[0], make_request, deliberate)
