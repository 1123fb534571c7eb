"""The official JS client, ``@cubejs-client/core``, at its newest 1.x and at 0.32.x, against a
live cubed on PostgreSQL (the conformance data and model).

Both versions are installed side by side from the npm registry at set-up (the aliases ``core1``
and ``core032`` in package.json, pinned by package-lock.json; see support.py) and driven by
run.mjs, one node process per test. Each test runs for each version (``CubeJsCore1Tests``,
``CubeJsCore032Tests``); ``ClientVersionsTests`` names the installed versions in its test name.

- load: regular, compareDateRange, blending and ``responseFormat: compact`` - the client's
  ResultSet holds the same rows and annotation as cubed's direct HTTP answer to the same query;
  meta (cube names, ``resolveMember``), sql (SQL text and parameters), dryRun
  (``normalizedQueries``), errors (a rejected promise with cubed's status and message).
- GET for short and POST for long queries: the client picks POST by itself once the GET URL
  would be 2000 characters or more (HttpTransport: ``url.length < 2000 ? 'GET' : 'POST'``,
  the same in 0.32 and 1.x); cubed's request log shows which method it got.
- The ResultSet methods ``tablePivot``, ``chartPivot``, ``seriesNames`` (and ``tableColumns``)
  give the same output on cubed's live answer as on the real Cube's recorded answer to the same
  query, for the conformance cases (tests/conformance/cases) of every /v1/load kind: regular,
  time dimensions, compareDateRange and blending (multi), compact.
- The Continue-wait retry loop (``ContinueWaitTests``): on a query slower than
  ``CUBEJS_CONTINUE_WAIT_TIMEOUT`` (1 s here; the query sleeps 3 s) the client re-sends the
  request by itself; every attempt carries the same ``x-request-id`` span with an increasing
  ``-span-N``, and cubed's log lines show them.
"""
from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial import unittest

from tests.clients.support import (
    BASE, RESULTSET_CASES, SLOW_QUERY, SLOW_ROWS, Answer, RequestLog, case_kind, case_query, compact_rows, http,
    install_js_clients, live_server, ok, pinned_js_versions, run_js, slow_server, sorted_rows,
)
from tests.support.services import require_postgres

PINNED = pinned_js_versions()
log = Logger(namespace="tests.clients")

ORDERS_BY_STATUS = {"measures": ["Orders.count", "Orders.totalAmount"], "dimensions": ["Orders.status"],
                    "order": {"Orders.count": "desc"}}
BY_MONTH = {"dimension": "Orders.createdAt", "granularity": "month"}
COMPARE_DATE_RANGE = {"measures": ["Orders.count", "Orders.totalAmount"], "timeDimensions": [
    {**BY_MONTH, "compareDateRange": [["2024-01-01", "2024-03-31"], ["2023-01-01", "2023-03-31"]]}]}
BLENDING = [
    {"measures": ["Orders.count"], "timeDimensions": [{**BY_MONTH, "dateRange": ["2024-01-01", "2024-03-31"]}]},
    {"measures": ["Users.count"], "timeDimensions": [
        {"dimension": "Users.createdAt", "granularity": "month", "dateRange": ["2024-01-01", "2024-03-31"]}]},
]
#: More than 2000 characters as a GET URL: the client sends it as a POST.
LONG_QUERY = {"measures": ["Users.count"], "dimensions": ["Users.state"], "order": {"Users.state": "asc"},
              "filters": [{"member": "Users.city", "operator": "notEquals",
                           "values": [f"No such city number {i:03d}" for i in range(100)]}]}
SHORT_QUERY = {"measures": ["Users.count"], "dimensions": ["Users.gender"], "order": {"Users.gender": "asc"}}


def get_url_length(query: Any) -> int:
    """Return the length of the GET URL the client builds for ``query`` (path excluded, the
    same for both): ``load?query=<json>&queryType=multi``, form-encoded as URLSearchParams does."""
    return len("http://127.0.0.1:65535" + BASE + "/load?" + urlencode(
        {"query": json.dumps(query, separators=(",", ":")), "queryType": "multi"}))


# -- the installed versions ---------------------------------------------------------------------------
class ClientVersionsTests(unittest.TestCase):
    """The JS client versions this suite runs: pinned in package-lock.json, named in the test."""

    def setUp(self) -> Deferred[None]:
        return deferToThread(install_js_clients).addCallback(lambda v: setattr(self, "installed", v))


def _versions_test(self: ClientVersionsTests) -> None:
    line = "JS clients: " + ", ".join(f"@cubejs-client/core {version} (as {alias})"
                                      for alias, version in self.installed.items())
    print(line)
    log.info(line)
    self.assertEqual(self.installed, PINNED, "node_modules differs from package-lock.json")


_VERSIONS_NAME = "test_installed_" + "_and_".join(
    f"{alias}_{version}".replace(".", "_").replace("-", "_") for alias, version in PINNED.items())
_versions_test.__name__ = _VERSIONS_NAME
_versions_test.__doc__ = "Installed: " + ", ".join(
    f"@cubejs-client/core {version} ({alias})" for alias, version in PINNED.items())
setattr(ClientVersionsTests, _VERSIONS_NAME, _versions_test)


# -- load, meta, sql, dryRun, methods, errors -------------------------------------------------------------
class _JsClientTests:
    """The tests of one client version (``client``: the npm alias)."""

    client: str
    timeout = 300

    # mypy: these come from unittest.TestCase
    assertEqual: Callable[..., None]
    assertIn: Callable[..., None]
    assertGreater: Callable[..., None]
    assertLess: Callable[..., None]
    fail: Callable[..., Any]

    def setUp(self) -> Deferred[None]:
        require_postgres()
        return deferToThread(install_js_clients).addCallback(lambda _: None)

    async def start(self) -> Any:
        self.log = RequestLog(self)  # type: ignore[arg-type]
        self.server = await live_server(self)  # type: ignore[arg-type]
        return self.server

    async def js(self, *tasks: dict[str, Any]) -> list[dict[str, Any]]:
        return await run_js(self, self.server, [{"client": self.client, **task} for task in tasks])  # type: ignore[arg-type]

    async def direct_load(self, query: Any) -> Answer:
        """Return cubed's answer to ``query`` sent as the clients send it (queryType=multi)."""
        answer = await http(self.server, "POST", "/load", body={"query": query, "queryType": "multi"})
        self.assertEqual(answer.status, 200, answer.body)
        return answer

    def assertSameResults(self, loaded: dict[str, Any], direct: dict[str, Any]) -> None:
        """The client's ResultSet holds what cubed's direct multi answer holds."""
        self.assertEqual(loaded["queryType"], direct["queryType"])
        self.assertEqual(len(loaded["results"]), len(direct["results"]))
        for mine, theirs in zip(loaded["results"], direct["results"]):
            data = theirs["data"]
            if isinstance(data, dict):
                data = compact_rows(data)
            self.assertEqual(mine["data"], data)
            self.assertEqual(mine["annotation"], theirs["annotation"])
            self.assertEqual(mine["query"], theirs["query"])
        self.assertEqual(loaded["pivotQuery"], direct["pivotQuery"])

    # -- load ------------------------------------------------------------------------------------
    async def test_load_regular(self) -> None:
        """A regular query: the ResultSet's rows, annotation and echoed query are cubed's
        direct answer's; the client sent a GET with queryType=multi."""
        await self.start()
        [result] = await self.js({"op": "load", "query": ORDERS_BY_STATUS})
        loaded = ok(result)
        direct = await self.direct_load(ORDERS_BY_STATUS)
        self.assertEqual(loaded["queryType"], "regularQuery")
        self.assertSameResults(loaded, direct.body)
        self.assertEqual([row["Orders.status"] for row in loaded["results"][0]["data"]],
                         ["completed", "shipped", "processing"])
        self.assertEqual(loaded["pivots"]["tablePivot"]["value"], loaded["results"][0]["data"])
        self.assertEqual(loaded["progress"], [])
        self.assertEqual([r.method for r in self.log.requests("/v1/load")][:1], ["GET"])

    async def test_load_compare_date_range(self) -> None:
        """compareDateRange: one result per range, the ranges' series in chartPivot."""
        await self.start()
        [result] = await self.js({"op": "load", "query": COMPARE_DATE_RANGE})
        loaded = ok(result)
        direct = await self.direct_load(COMPARE_DATE_RANGE)
        self.assertEqual(loaded["queryType"], "compareDateRangeQuery")
        self.assertSameResults(loaded, direct.body)
        names = [s["key"] for s in loaded["pivots"]["seriesNames"]["value"]]
        self.assertEqual(names, [
            "2024-01-01T00:00:00.000 - 2024-03-31T23:59:59.999,Orders.count",
            "2024-01-01T00:00:00.000 - 2024-03-31T23:59:59.999,Orders.totalAmount",
            "2023-01-01T00:00:00.000 - 2023-03-31T23:59:59.999,Orders.count",
            "2023-01-01T00:00:00.000 - 2023-03-31T23:59:59.999,Orders.totalAmount",
        ])
        self.assertEqual(len(loaded["pivots"]["chartPivot"]["value"]), 3)

    async def test_load_blending(self) -> None:
        """Blending two queries: one result each, joined on time.month by the client."""
        await self.start()
        [result] = await self.js({"op": "load", "query": BLENDING})
        loaded = ok(result)
        direct = await self.direct_load(BLENDING)
        self.assertEqual(loaded["queryType"], "blendingQuery")
        self.assertSameResults(loaded, direct.body)
        chart = loaded["pivots"]["chartPivot"]["value"]
        self.assertEqual([point["x"] for point in chart],
                         ["2024-01-01T00:00:00.000", "2024-02-01T00:00:00.000", "2024-03-01T00:00:00.000"])
        self.assertEqual({key for key in chart[0] if key not in ("x", "xValues")}, {"Orders.count", "Users.count"})

    async def test_load_compact(self) -> None:
        """``responseFormat: compact``: the client asks for it, cubed answers members/dataset
        and echoes the format, and the client turns the rows back into the objects the
        default format gives."""
        await self.start()
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"],
                 "timeDimensions": [{**BY_MONTH, "dateRange": ["2024-01-01", "2024-02-29"]}],
                 "order": {"Orders.createdAt": "asc", "Orders.status": "asc"}}
        [compact, default] = await self.js({"op": "load", "query": query, "responseFormat": "compact"},
                                           {"op": "load", "query": query})
        compact_loaded, default_loaded = ok(compact), ok(default)
        self.assertEqual(compact_loaded["results"][0]["query"]["responseFormat"], "compact")
        self.assertEqual(compact_loaded["results"][0]["data"], default_loaded["results"][0]["data"])
        self.assertEqual(compact_loaded["pivots"], default_loaded["pivots"])
        direct = await self.direct_load({**query, "responseFormat": "compact"})
        self.assertEqual(set(direct.body["results"][0]["data"]), {"members", "dataset"})
        self.assertSameResults(compact_loaded, direct.body)

    # -- meta, sql, dryRun ----------------------------------------------------------------------
    async def test_meta(self) -> None:
        """meta(): the cube names of cubed's /v1/meta; resolveMember and membersForQuery work
        on them."""
        await self.start()
        [result] = await self.js({"op": "meta", "member": "Orders.count"})
        meta = ok(result)
        direct = await http(self.server, "GET", "/meta")
        self.assertEqual(meta["cubes"], [c["name"] for c in direct.body["cubes"]])
        self.assertEqual(set(meta["cubes"]), {"Users", "Products", "Orders", "LineItems", "SlowOrders"})
        orders = next(c for c in direct.body["cubes"] if c["name"] == "Orders")
        count = next(m for m in orders["measures"] if m["name"] == "Orders.count")
        self.assertEqual(meta["resolved"]["title"], count["title"])
        self.assertIn("Orders.count", meta["membersForQuery"])

    async def test_sql(self) -> None:
        """sql(): the SQL text and parameters of cubed's /v1/sql answer."""
        await self.start()
        query = {**ORDERS_BY_STATUS, "filters": [{"member": "Orders.status", "operator": "equals",
                                                  "values": ["completed", "shipped"]}]}
        [result] = await self.js({"op": "sql", "query": query})
        sql = ok(result)
        direct = await http(self.server, "GET", "/sql", params={"query": query})
        self.assertEqual(direct.status, 200, direct.body)
        self.assertEqual(sql["multi"], False)
        self.assertEqual(sql["sql"], [direct.body["sql"]["sql"][0]])
        self.assertIn("FROM", sql["sql"][0])
        self.assertIn("orders", sql["sql"][0])
        self.assertEqual(sql["raw"][0]["sql"], direct.body["sql"]["sql"])
        self.assertEqual(sql["raw"][0]["sql"][1], ["completed", "shipped"])

    async def test_dry_run(self) -> None:
        """dryRun(): cubed's answer, normalizedQueries included, for a regular and a
        compareDateRange query."""
        await self.start()
        regular, compare = await self.js({"op": "dryRun", "query": ORDERS_BY_STATUS},
                                         {"op": "dryRun", "query": COMPARE_DATE_RANGE})
        for result, query, query_type, count in ((regular, ORDERS_BY_STATUS, "regularQuery", 1),
                                                 (compare, COMPARE_DATE_RANGE, "compareDateRangeQuery", 2)):
            answer = ok(result)
            direct = await http(self.server, "GET", "/dry-run", params={"query": query})
            self.assertEqual(answer, direct.body)
            self.assertEqual(answer["queryType"], query_type)
            self.assertEqual(len(answer["normalizedQueries"]), count)
            self.assertEqual(answer["normalizedQueries"][0]["measures"], query["measures"])

    # -- GET and POST -----------------------------------------------------------------------------
    async def test_get_for_short_post_for_long_queries(self) -> None:
        """One client object loads a short query (GET), a long one (POST: its GET URL would be
        2000 characters or more) and the short one again (GET): cubed's log shows the three
        methods and the rows are the direct answers'."""
        self.assertLess(get_url_length(SHORT_QUERY), 2000)
        self.assertGreater(get_url_length(LONG_QUERY), 2000)
        await self.start()
        results = await self.js(*({"op": "load", "query": q, "instance": "one"}
                                  for q in (SHORT_QUERY, LONG_QUERY, SHORT_QUERY)))
        short, long, short_again = (ok(r) for r in results)
        logged = self.log.requests("/v1/load")
        self.assertEqual([(r.method, r.status) for r in logged], [("GET", 200), ("POST", 200), ("GET", 200)])
        direct_long = await self.direct_load(LONG_QUERY)
        self.assertEqual(long["results"][0]["data"], direct_long.body["results"][0]["data"])
        self.assertGreater(len(long["results"][0]["data"]), 5)
        direct_short = await self.direct_load(SHORT_QUERY)
        self.assertEqual(short["results"][0]["data"], direct_short.body["results"][0]["data"])
        self.assertEqual(short_again["results"][0]["data"], short["results"][0]["data"])

    # -- errors ------------------------------------------------------------------------------------
    async def test_errors_reject_with_cubeds_answer(self) -> None:
        """A bad query rejects load/sql/dryRun with cubed's status and error text; a bad token
        with 403."""
        await self.start()
        bad = {"measures": ["Orders.nope"]}
        results = await self.js({"op": "load", "query": bad}, {"op": "sql", "query": bad},
                                {"op": "dryRun", "query": bad})
        direct = await http(self.server, "GET", "/load", params={"query": bad})
        self.assertEqual(direct.status, 400)
        for result in results:
            self.assertEqual((result.get("status"), result.get("error")), (400, direct.body["error"]), result)
        self.assertEqual(direct.body["error"], "'nope' not found for path 'Orders.nope'")
        [refused] = await run_js(self, self.server, [{"client": self.client, "op": "meta"}],  # type: ignore[arg-type]
                                 token=self.server.token(secret="not-the-secret-0123456789abcdef-0123456789"))
        self.assertEqual((refused.get("status"), refused.get("error")), (403, "Invalid token"), refused)

    # -- ResultSet methods against the real Cube's recorded answers -------------------------------------
    async def compare_with_recorded(self, kind: str) -> None:
        """Build a ResultSet from the recorded answer of every conformance case of ``kind`` and
        one from cubed's live answer (through client.load), and compare their methods."""
        cases = [case for case in RESULTSET_CASES if case_kind(case) == kind and case["id"] not in PIVOTS_NOT_COMPARED]
        self.assertGreater(len(cases), 0)
        await self.start()
        tasks: list[dict[str, Any]] = []
        for case in cases:
            tasks.append({"op": "recorded", "body": case["expect"]["body"]})
            tasks.append({"op": "load", "query": case_query(case)})
        results = await self.js(*tasks)
        problems: list[str] = []
        aligned: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        for index, case in enumerate(cases):
            recorded, live = results[2 * index], results[2 * index + 1]
            found, body = compare_pivots(case, recorded, live)
            problems.extend(found)
            if body is not None:
                aligned.append((case, recorded, body))
        if aligned:
            # Rows that tie on the query's order come in any sequence (from Cube as from cubed),
            # and some methods depend on it: compare those on cubed's answer with its rows in
            # the recorded sequence (its query echo, annotation, pivotQuery unchanged).
            again = await self.js(*({"op": "recorded", "body": body} for _, _, body in aligned))
            for (case, recorded, _), result in zip(aligned, again):
                found, _ = compare_pivots(case, recorded, result, aligned=True)
                problems.extend(found)
            log.info("{client}: {count} case(s) compared with their tied rows aligned: {ids}", client=self.client,
                     count=len(aligned), ids=", ".join(case["id"] for case, _, _ in aligned))
        if problems:
            self.fail(f"{self.client}: {len(problems)} difference(s) from the real Cube's answers:\n  "
                      + "\n  ".join(problems))

    async def test_resultset_methods_regular(self) -> None:
        """tablePivot/chartPivot/seriesNames/tableColumns equal on the recorded and live
        answers: regular queries (measures, dimensions, filters, joins, order, paging)."""
        await self.compare_with_recorded("regular")

    async def test_resultset_methods_time(self) -> None:
        """... time dimensions (granularities, date ranges, time zones, rolling windows)."""
        await self.compare_with_recorded("time")

    async def test_resultset_methods_compare_date_range(self) -> None:
        """... compareDateRange (multi)."""
        await self.compare_with_recorded("compare_date_range")

    async def test_resultset_methods_blending(self) -> None:
        """... blending (multi)."""
        await self.compare_with_recorded("blending")

    async def test_resultset_methods_compact(self) -> None:
        """... responseFormat compact."""
        await self.compare_with_recorded("compact")


class CubeJsCore1Tests(_JsClientTests, unittest.TestCase):
    __doc__ = f"@cubejs-client/core {PINNED['core1']} (newest 1.x, npm alias core1)."
    client = "core1"


class CubeJsCore032Tests(_JsClientTests, unittest.TestCase):
    __doc__ = f"@cubejs-client/core {PINNED['core032']} (0.32.x, npm alias core032)."
    client = "core032"


#: Cases whose ResultSet methods are not compared, with the reason.
PIVOTS_NOT_COMPARED = {
    "067_td_lineitems_second": "granularity second over two days: the client fills 172 800 time-series points, "
                               "about 10 s of node per ResultSet (its rows are compared by test_python_client)",
}


def _order_members(query: dict[str, Any]) -> list[str]:
    return [item["id"] if isinstance(item, dict) else item[0] for item in query.get("order") or []]


def compare_pivots(case: dict[str, Any], recorded: dict[str, Any], live: dict[str, Any],
                   aligned: bool = False) -> tuple[list[str], dict[str, Any] | None]:
    """Return the differences between the ResultSet methods on the recorded and the live answer
    of ``case``, and - when they differ only because rows that tie on the query's order came in
    another sequence - cubed's answer with its rows in the recorded sequence, to compare again.

    Rows must be the same multiset, in the same sequence of the order members' values when the
    query has an order (the conformance replay's rule)."""
    name = case["id"] + (" (rows aligned)" if aligned else "")
    if "error" in recorded:
        return [f"{name}: the client could not read the real Cube's recorded answer: {recorded['error']}"], None
    if "error" in live:
        return [f"{name}: the client failed on cubed's answer: {json.dumps(live)[:1000]}"], None
    mine, theirs = live["ok"], recorded["ok"]
    if mine["queryType"] != theirs["queryType"]:
        return [f"{name}: queryType {mine['queryType']!r}, the real Cube's {theirs['queryType']!r}"], None
    differing = [method for method, expected in theirs["pivots"].items() if mine["pivots"][method] != expected]
    if not differing:
        return [], None
    if not aligned and len(mine["results"]) == len(theirs["results"]):
        same_rows = all(sorted_rows(m["data"]) == sorted_rows(t["data"])
                        for m, t in zip(mine["results"], theirs["results"]))
        same_order = all(
            [[row.get(k) for k in _order_members(t["query"])] for row in m["data"]]
            == [[row.get(k) for k in _order_members(t["query"])] for row in t["data"]]
            for m, t in zip(mine["results"], theirs["results"]))
        if same_rows and same_order:
            results = [{**m, "query": {k: v for k, v in m["query"].items() if k != "responseFormat"},
                        "data": t["data"]} for m, t in zip(mine["results"], theirs["results"])]
            return [], {"queryType": mine["queryType"], "pivotQuery": mine["pivotQuery"], "results": results}
        if same_rows:
            return [f"{name}: the same rows, the order members' values in another sequence"], None
    return [f"{name}: {method}() gave {json.dumps(mine['pivots'][method])[:3000]}\n"
            f"      the real Cube's answer gives {json.dumps(theirs['pivots'][method])[:3000]}"
            for method in differing], None


# -- the Continue-wait retry loop ------------------------------------------------------------------
class ContinueWaitTests(unittest.TestCase):
    """The JS client's Continue-wait loop against cubed answering Continue wait after 1 s."""

    timeout = 120

    def setUp(self) -> Deferred[None]:
        require_postgres()
        return deferToThread(install_js_clients).addCallback(lambda _: None)

    async def retry_loop(self, client: str) -> None:
        requests = RequestLog(self)
        server = await slow_server(self)
        [result] = await run_js(self, server, [{"client": client, "op": "load", "query": SLOW_QUERY}])
        loaded = ok(result)
        self.assertEqual(loaded["results"][0]["data"], SLOW_ROWS)
        attempts = requests.requests("/v1/load")
        continue_waits = len(loaded["progress"])
        self.assertGreaterEqual(continue_waits, 2, loaded["progress"])
        self.assertEqual(len(attempts), continue_waits + 1, [a.line for a in attempts])
        spans = {a.request_id.rsplit("-span-", 1)[0] for a in attempts}
        self.assertEqual(len(spans), 1, [a.request_id for a in attempts])
        [span] = spans
        self.assertRegex(span, r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        self.assertEqual([a.request_id for a in attempts],
                         [f"{span}-span-{n}" for n in range(1, len(attempts) + 1)])
        self.assertEqual({(a.method, a.status) for a in attempts}, {("GET", 200)})
        for attempt in attempts:
            self.assertIn(f"[{attempt.request_id}]", attempt.line)
            self.assertIn(f"GET {BASE}/load 200", attempt.line)
        log.info("{client}: Continue-wait loop, cubed logged: {lines}", client=client,
                 lines=" | ".join(a.line.strip() for a in attempts))

    def test_continue_wait_loop_core1(self) -> Deferred[None]:
        """core1: the same x-request-id span across the retries, -span-1, -span-2, ..."""
        return Deferred.fromCoroutine(self.retry_loop("core1"))

    def test_continue_wait_loop_core032(self) -> Deferred[None]:
        """core032: the same x-request-id span across the retries, -span-1, -span-2, ..."""
        return Deferred.fromCoroutine(self.retry_loop("core032"))
