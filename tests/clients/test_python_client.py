"""The Python client ``cube-http-client`` (PyPI; ``import cube_http``) against a live cubed on
PostgreSQL (the conformance data and model).

It is the Python HTTP client for Cube's REST API on PyPI under that name: sync and async
clients over httpx whose answers are pydantic models (``V1LoadResponse``, ``V1MetaResponse``,
``V1SqlResponse``). Its ``load`` always POSTs with ``queryType: multi``; it has no dry-run
method and no Continue-wait loop (a Continue-wait answer fails its response model, against the
real Cube as against cubed). Installed at set-up with pip into a directory of its own and run
in a child process (support.py, py_client.py).

- load: regular, compareDateRange, blending - the parsed results hold the rows and annotation
  of cubed's direct HTTP answer; ``responseFormat: compact`` - the client's model reads it as
  it reads the real Cube's compact answer (it cannot: ``data`` must be a list of rows);
- meta, sql (the client's models validate cubed's answers: member types, ``sql`` as
  ``(text, [string params])``), dry-run through the client's HTTP session, errors
  (``V1LoadError`` with cubed's status and message);
- every recorded successful /v1/load exchange of the conformance cases: the client's model
  accepts cubed's live answer exactly when it accepts the real Cube's recorded one, with the same
  rows and annotation.
"""
from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial import unittest

from tests.clients.support import (
    RESULTSET_CASES, SLOW_QUERY, SLOW_ROWS, RequestLog, case_query, compact_rows, envelope, http,
    install_python_client, live_server, ok, pinned_python_version, run_python_client, slow_server, sorted_rows,
)
from tests.support.services import require_postgres

PINNED = pinned_python_version()
log = Logger(namespace="tests.clients")

ORDERS_BY_STATUS = {"measures": ["Orders.count", "Orders.totalAmount"], "dimensions": ["Orders.status"],
                    "order": {"Orders.count": "desc"}}
BY_MONTH = {"dimension": "Orders.createdAt", "granularity": "month"}
COMPARE_DATE_RANGE = {"measures": ["Orders.count"], "dimensions": ["Orders.status"], "timeDimensions": [
    {**BY_MONTH, "compareDateRange": [["2024-01-01", "2024-03-31"], ["2023-01-01", "2023-03-31"]]}]}
BLENDING = [
    {"measures": ["Orders.count"], "timeDimensions": [{**BY_MONTH, "dateRange": ["2024-01-01", "2024-03-31"]}]},
    {"measures": ["Users.count"], "timeDimensions": [
        {"dimension": "Users.createdAt", "granularity": "month", "dateRange": ["2024-01-01", "2024-03-31"]}]},
]


class _PythonClientTest(unittest.TestCase):
    timeout = 300

    def setUp(self) -> Deferred[None]:
        require_postgres()
        return deferToThread(install_python_client).addCallback(lambda _: None)

    async def start(self) -> Any:
        self.log = RequestLog(self)
        self.server = await live_server(self)
        return self.server

    async def py(self, *tasks: dict[str, Any]) -> list[dict[str, Any]]:
        return await run_python_client(self, self.server, list(tasks))

    async def direct_load(self, query: Any) -> dict[str, Any]:
        answer = await http(self.server, "POST", "/load", body={"query": query, "queryType": "multi"})
        self.assertEqual(answer.status, 200, answer.body)
        return dict(answer.body)

    def assertSameResults(self, loaded: dict[str, Any], direct: dict[str, Any]) -> None:
        """The client's parsed answer holds what cubed's direct answer holds."""
        self.assertEqual(loaded["queryType"], direct["queryType"])
        self.assertEqual(loaded["pivotQuery"], direct["pivotQuery"])
        self.assertEqual(len(loaded["results"]), len(direct["results"]))
        for mine, theirs in zip(loaded["results"], direct["results"]):
            self.assertEqual(mine["data"], theirs["data"])
            self.assertEqual(mine["annotation"], theirs["annotation"])


class PythonClientVersionTests(unittest.TestCase):
    """The Python client version this suite runs: pinned in requirements.txt, named in the test."""

    timeout = 300

    def setUp(self) -> Deferred[None]:
        return deferToThread(install_python_client).addCallback(lambda _: None)


def _version_test(self: PythonClientVersionTests) -> Deferred[None]:
    async def check() -> None:
        [result] = await run_python_client(self, None, [{"op": "version"}])
        installed = ok(result)
        line = f"Python client: cube-http-client {installed}"
        print(line)
        log.info(line)
        self.assertEqual(installed, PINNED, "the installed cube-http-client differs from requirements.txt")

    return Deferred.fromCoroutine(check())


_VERSION_NAME = "test_installed_cube_http_client_" + PINNED.replace(".", "_")
_version_test.__name__ = _VERSION_NAME
_version_test.__doc__ = f"Installed: cube-http-client {PINNED}"
setattr(PythonClientVersionTests, _VERSION_NAME, _version_test)


class PythonClientTests(_PythonClientTest):
    """cube-http-client's load, meta, sql, dry-run and errors against cubed."""

    async def test_load_regular(self) -> None:
        """load(): the rows, annotation and query type of cubed's direct answer; sent as a POST."""
        await self.start()
        [result] = await self.py({"op": "load", "request": {"query": ORDERS_BY_STATUS}})
        loaded = ok(result)
        self.assertSameResults(loaded, await self.direct_load(ORDERS_BY_STATUS))
        self.assertEqual(loaded["queryType"], "regularQuery")
        self.assertEqual([row["Orders.status"] for row in loaded["results"][0]["data"]],
                         ["completed", "shipped", "processing"])
        self.assertEqual(loaded["results"][0]["query"]["measures"], ORDERS_BY_STATUS["measures"])
        self.assertEqual([r.method for r in self.log.requests("/v1/load")][:1], ["POST"])

    async def test_load_compare_date_range(self) -> None:
        """load() of a compareDateRange query: one result per range."""
        await self.start()
        [result] = await self.py({"op": "load", "request": {"query": COMPARE_DATE_RANGE}})
        loaded = ok(result)
        self.assertSameResults(loaded, await self.direct_load(COMPARE_DATE_RANGE))
        self.assertEqual(loaded["queryType"], "compareDateRangeQuery")
        self.assertEqual([r["data"][0]["compareDateRange"] for r in loaded["results"]],
                         ["2024-01-01T00:00:00.000 - 2024-03-31T23:59:59.999",
                          "2023-01-01T00:00:00.000 - 2023-03-31T23:59:59.999"])

    async def test_load_blending(self) -> None:
        """load() of a blending query (a list of queries): one result each."""
        await self.start()
        [result] = await self.py({"op": "load", "request": {"query": BLENDING}})
        loaded = ok(result)
        self.assertSameResults(loaded, await self.direct_load(BLENDING))
        self.assertEqual(loaded["queryType"], "blendingQuery")
        self.assertEqual(len(loaded["results"]), 2)
        self.assertEqual(loaded["results"][1]["data"][0]["time.month"], "2024-01-01T00:00:00.000")

    async def test_load_compact_as_from_cube(self) -> None:
        """load() with ``responseFormat: compact``: cubed answers members/dataset as the real
        Cube does, and the client's model refuses both answers alike (its ``data`` is a list of
        row objects) - a limit of the client, not a difference of cubed."""
        await self.start()
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"], "responseFormat": "compact"}
        recorded = next(case for case in RESULTSET_CASES if case["id"] == "262_compact_regular")
        self.assertEqual(case_query(recorded), query)
        live, from_cube = await self.py({"op": "load", "request": {"query": query}},
                                        {"op": "parse_load", "body": envelope(recorded["expect"]["body"])})
        self.assertEqual((live.get("type"), from_cube.get("type")), ("ValidationError", "ValidationError"),
                         (live, from_cube))
        self.assertIn("results.0.data", live["error"])
        self.assertIn("results.0.data", from_cube["error"])
        direct = await self.direct_load(query)
        self.assertEqual(sorted_rows(compact_rows(direct["results"][0]["data"])),
                         sorted_rows(compact_rows(recorded["expect"]["body"]["data"])))

    async def test_meta(self) -> None:
        """meta(): the client's model accepts cubed's /v1/meta (member types, formats, flags)
        and holds its cubes and members."""
        await self.start()
        [result] = await self.py({"op": "meta"})
        meta = ok(result)
        direct = await http(self.server, "GET", "/meta")
        self.assertEqual([c["name"] for c in meta["cubes"]], [c["name"] for c in direct.body["cubes"]])
        self.assertEqual({c["name"] for c in meta["cubes"]}, {"Users", "Products", "Orders", "LineItems", "SlowOrders"})
        for mine, theirs in zip(meta["cubes"], direct.body["cubes"]):
            for kind in ("measures", "dimensions", "segments"):
                self.assertEqual([(m["name"], m["title"]) for m in mine[kind]],
                                 [(m["name"], m["title"]) for m in theirs[kind]])
            self.assertEqual(mine["connectedComponent"], theirs.get("connectedComponent"))

    async def test_sql(self) -> None:
        """sql(): the client's model accepts cubed's /v1/sql answer: the SQL text and its
        parameters (strings), the order."""
        await self.start()
        query = {**ORDERS_BY_STATUS, "filters": [{"member": "Orders.amount", "operator": "gt", "values": ["100"]}]}
        [result] = await self.py({"op": "sql", "request": {"query": query}})
        sql = ok(result)
        direct = await http(self.server, "POST", "/sql", body={"query": query})
        self.assertEqual(direct.status, 200, direct.body)
        self.assertEqual(sql["sql"]["sql"], direct.body["sql"]["sql"])
        self.assertIn("FROM", sql["sql"]["sql"][0])
        self.assertEqual(sql["sql"]["sql"][1], ["100"])
        self.assertEqual(sql["sql"]["order"], direct.body["sql"]["order"])
        self.assertEqual(sql["sql"]["aliasNameToMember"], direct.body["sql"]["aliasNameToMember"])

    async def test_dry_run(self) -> None:
        """dry-run (no method of its own: a GET through the client's HTTP session): cubed's
        normalizedQueries."""
        await self.start()
        [result] = await self.py({"op": "dry_run", "request": {"query": COMPARE_DATE_RANGE}})
        answer = ok(result)
        direct = await http(self.server, "GET", "/dry-run", params={"query": COMPARE_DATE_RANGE})
        self.assertEqual(answer, {"status": 200, "body": direct.body})
        self.assertEqual(answer["body"]["queryType"], "compareDateRangeQuery")
        self.assertEqual(len(answer["body"]["normalizedQueries"]), 2)

    async def test_errors(self) -> None:
        """A bad query raises V1LoadError/V1SqlError with cubed's status and message; a bad
        token V1MetaError 403 Invalid token."""
        await self.start()
        bad = {"measures": ["Orders.nope"]}
        load_error, sql_error = await self.py({"op": "load", "request": {"query": bad}},
                                              {"op": "sql", "request": {"query": bad}})
        message = "Returned status code 400. Reason: 'nope' not found for path 'Orders.nope'"
        self.assertEqual((load_error.get("type"), load_error.get("status"), load_error.get("error")),
                         ("V1LoadError", 400, message))
        self.assertEqual((sql_error.get("type"), sql_error.get("status"), sql_error.get("error")),
                         ("V1SqlError", 400, message))
        [refused] = await run_python_client(self, self.server, [{"op": "meta"}],
                                            token=self.server.token(secret="not-the-secret-0123456789abcdef-0123456789"))
        self.assertEqual((refused.get("type"), refused.get("status"), refused.get("error")),
                         ("V1MetaError", 403, "Returned status code 403. Reason: Invalid token"))

    async def test_continue_wait_as_from_cube(self) -> None:
        """The client has no Continue-wait loop: cubed's ``{"error": "Continue wait"}`` (200)
        fails its model as the real Cube's does; loading again once the query is done gives
        the rows."""
        requests = RequestLog(self)
        self.server = await slow_server(self)
        first, from_cube = await self.py({"op": "load", "request": {"query": SLOW_QUERY}},
                                         {"op": "parse_load", "body": {"error": "Continue wait"}})
        self.assertEqual(first.get("type"), "ValidationError", first)
        # the same error; only the echoed input differs (cubed's carries the stage, as Cube's may)
        self.assertEqual(first["error"].split(", input_value=")[0], from_cube["error"].split(", input_value=")[0])
        self.assertIn("results\n  Field required [type=missing", first["error"])
        self.assertEqual([(r.method, r.status) for r in requests.requests("/v1/load")], [("POST", 200)])
        answer = None
        for _ in range(20):
            await deferLater(reactor, 0.5, lambda: None)
            [answer] = await self.py({"op": "load", "request": {"query": SLOW_QUERY}})
            if "ok" in answer:
                break
        assert answer is not None
        self.assertEqual(ok(answer)["results"][0]["data"], SLOW_ROWS)


class RecordedAnswersTests(_PythonClientTest):
    """The client's model on the real Cube's recorded answers and on cubed's live ones."""

    async def test_recorded_load_answers_parse_alike(self) -> None:
        """For every recorded successful /v1/load exchange: the client accepts cubed's answer
        exactly when it accepts the real Cube's (compact answers it refuses both), with the same
        query type, rows (as a multiset; the conformance tests check their order) and
        annotation."""
        await self.start()
        tasks: list[dict[str, Any]] = []
        for case in RESULTSET_CASES:
            tasks.append({"op": "parse_load", "body": envelope(case["expect"]["body"])})
            tasks.append({"op": "load", "request": {"query": case_query(case)}})
        results = await self.py(*tasks)
        problems: list[str] = []
        accepted = 0
        for index, case in enumerate(RESULTSET_CASES):
            recorded, live = results[2 * index], results[2 * index + 1]
            if ("ok" in recorded) != ("ok" in live):
                problems.append(f"{case['id']}: the client gave {json.dumps(live)[:800]}\n"
                                f"      on the real Cube's answer {json.dumps(recorded)[:800]}")
                continue
            if "ok" not in recorded:
                if recorded.get("type") != live.get("type"):
                    problems.append(f"{case['id']}: {live.get('type')}, on the real Cube's answer {recorded.get('type')}")
                continue
            accepted += 1
            mine, theirs = live["ok"], recorded["ok"]
            if mine["queryType"] != theirs["queryType"] or len(mine["results"]) != len(theirs["results"]):
                problems.append(f"{case['id']}: {mine['queryType']} with {len(mine['results'])} result(s), the real "
                                f"Cube's {theirs['queryType']} with {len(theirs['results'])}")
                continue
            for number, (m, t) in enumerate(zip(mine["results"], theirs["results"])):
                if sorted_rows(m["data"]) != sorted_rows(t["data"]):
                    problems.append(f"{case['id']}: result {number}: rows {json.dumps(m['data'])[:600]}\n"
                                    f"      the real Cube's {json.dumps(t['data'])[:600]}")
                if m["annotation"] != t["annotation"]:
                    problems.append(f"{case['id']}: result {number}: annotation {json.dumps(m['annotation'])[:600]}\n"
                                    f"      the real Cube's {json.dumps(t['annotation'])[:600]}")
        log.info("cube-http-client: {accepted} of {count} recorded answers accepted alike", accepted=accepted,
                 count=len(RESULTSET_CASES))
        if problems:
            self.fail(f"cube-http-client: {len(problems)} difference(s):\n  " + "\n  ".join(problems))
        self.assertGreater(accepted, len(RESULTSET_CASES) - 10)
