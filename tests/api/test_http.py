"""The HTTP API through a real listening port, driven with treq (persistent=False).

Two back ends: the bundled demo on DuckDB (built once per process into a temporary directory)
and the shop data on PostgreSQL (a fresh database per test, checked against the database's own
answers with psycopg2). Each test starts its own server (tests.support.server.start_server).
"""
from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlencode

import psycopg2
import treq
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from cubed.config import DataSourceSettings, Settings, load_settings
from cubed.demo import DEMO_TABLES, build_demo_database, demo_model_dir
from cubed.logs import format_text
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import create_test_database, free_port, require_postgres
from tests.support.shopdata import shop_database

BASE = "/cubejs-api/v1"
CONFORMANCE_MODEL = Path(__file__).resolve().parent.parent / "conformance" / "model"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}$")
ORDERS = {table.name: table.rows for table in DEMO_TABLES}["orders"]
UNKNOWN_MEMBER = {"type": "UserError", "error": "'nope' not found for path 'Orders.nope'"}
REQUEST_TIMEOUT = 20.0


# -- HTTP -------------------------------------------------------------------------------------
@dataclass
class Answer:
    """One HTTP answer: status, headers and the body text."""

    status: int
    headers: Headers
    text: str

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.text)

    def header(self, name: str) -> str | None:
        """Return the first value of a header, or None."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


async def call(method: str, url: str, headers: Mapping[str, str] | None = None,
               body: bytes | None = None) -> Answer:
    """Send one request with treq (no connection pool) and return its Answer."""
    response = await treq.request(method, url, headers=dict(headers or {}), data=body,
                                  persistent=False, timeout=REQUEST_TIMEOUT)
    raw = await response.content()
    return Answer(response.code, response.headers, raw.decode("utf-8"))


def query_url(server: RunningServer, route: str, query: Any, **params: str) -> str:
    """Return the URL of a GET to ``route`` with ``query`` JSON-encoded (as @cubejs-client/core)."""
    return f"{server.url}{BASE}/{route}?" + urlencode({"query": json.dumps(query), **params})


def auth(server: RunningServer, bearer: bool = False) -> dict[str, str]:
    """Return an Authorization header with a valid token (raw, or ``Bearer <jwt>``)."""
    token = server.token({"iat": int(time.time()), "exp": int(time.time()) + 600})
    return {"Authorization": f"Bearer {token}" if bearer else token}


async def post_json(server: RunningServer, route: str, payload: Any, headers: Mapping[str, str] | None = None) -> Answer:
    """POST ``payload`` as JSON to ``route`` with a valid token (unless ``headers`` are given)."""
    sent = {"Content-Type": "application/json", **(headers if headers is not None else auth(server))}
    return await call("POST", f"{server.url}{BASE}/{route}", sent, json.dumps(payload).encode("utf-8"))


# -- settings ---------------------------------------------------------------------------------
_demo_dir: Path | None = None


def _demo_database() -> Path:
    """Return the demo DuckDB file of this process, building it on first use (blocking)."""
    global _demo_dir
    if _demo_dir is None:
        _demo_dir = Path(tempfile.mkdtemp(prefix="cubed-http-demo-"))
        atexit.register(shutil.rmtree, str(_demo_dir), True)
    return build_demo_database(_demo_dir / "demo.duckdb")


async def duckdb_settings(**environ: str) -> Settings:
    """Return Settings for the demo on DuckDB in production mode (``environ`` adds variables)."""
    path = await deferToThread(_demo_database)
    base = {
        "CUBEJS_DB_TYPE": "duckdb",
        "CUBEJS_DB_DUCKDB_DATABASE_PATH": str(path),
        "CUBEJS_SCHEMA_PATH": str(demo_model_dir()),
        "CUBEJS_API_SECRET": TEST_SECRET,
    }
    return load_settings({**base, **environ}, str(path.parent))


def postgres_settings(database: DataSourceSettings, model: Path = CONFORMANCE_MODEL, **environ: str) -> Settings:
    """Return Settings for a PostgreSQL database in production mode serving ``model``."""
    base = {
        "CUBEJS_DB_TYPE": "postgres",
        "CUBEJS_DB_HOST": database.host or "127.0.0.1",
        "CUBEJS_DB_PORT": str(database.port or 5432),
        "CUBEJS_DB_NAME": str(database.database),
        "CUBEJS_DB_USER": database.user or "postgres",
        "CUBEJS_API_SECRET": TEST_SECRET,
        "CUBEJS_SCHEMA_PATH": str(model),
    }
    if database.password:
        base["CUBEJS_DB_PASS"] = database.password
    return load_settings({**base, **environ}, str(model.parent))


def pg_rows(database: DataSourceSettings, sql: str) -> Deferred[list[tuple[Any, ...]]]:
    """Run ``sql`` on the test database with psycopg2 (in a thread); fire with its rows."""

    def run() -> list[tuple[Any, ...]]:
        connection = psycopg2.connect(host=database.host, port=database.port, dbname=database.database,
                                      user=database.user, password=database.password, connect_timeout=5)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall())
        finally:
            connection.close()

    return deferToThread(run)


# -- DuckDB: the routes, auth, errors, CORS, request ids ---------------------------------------
class DuckDBApiTests(unittest.TestCase):
    """The API on the demo (DuckDB)."""

    async def server(self, **environ: str) -> RunningServer:
        """Start a server on the demo with extra environment variables."""
        return await start_server(self, await duckdb_settings(**environ))

    async def test_get_load(self) -> None:
        """GET /v1/load with the query in the URL answers the data, the echo and the annotation."""
        server = await self.server()
        answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}), auth(server))
        self.assertEqual(answer.status, 200, answer.text)
        body = answer.json()
        self.assertEqual([{k: int(v) for k, v in row.items()} for row in body["data"]], [{"Orders.count": ORDERS}])
        self.assertEqual(body["query"]["measures"], ["Orders.count"])
        self.assertEqual(body["query"]["limit"], 10000)
        self.assertEqual(body["annotation"]["measures"]["Orders.count"]["title"], "Orders Count")
        self.assertEqual(body["dbType"], "duckdb")
        self.assertIsNone(body["total"])
        self.assertEqual(answer.header("content-type"), "application/json; charset=utf-8")

    async def test_post_load_groups_and_orders(self) -> None:
        """POST /v1/load groups by a dimension and keeps the requested order; the groups add up."""
        server = await self.server()
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"], "order": {"Orders.count": "desc"}}
        answer = await post_json(server, "load", {"query": query})
        self.assertEqual(answer.status, 200, answer.text)
        rows = answer.json()["data"]
        counts = [int(row["Orders.count"]) for row in rows]
        self.assertGreater(len(rows), 1)
        self.assertEqual(sum(counts), ORDERS)
        self.assertEqual(counts, sorted(counts, reverse=True))
        self.assertEqual(len({row["Orders.status"] for row in rows}), len(rows))

    async def test_multi_compare_date_range(self) -> None:
        """queryType=multi answers a compareDateRange query with one result per range, each equal
        to the same query on that range alone; without it the query type is refused."""
        server = await self.server()
        ranges = [["2024-01-01", "2024-01-31"], ["2024-02-01", "2024-02-29"]]
        query = {"measures": ["Orders.count"],
                 "timeDimensions": [{"dimension": "Orders.createdAt", "compareDateRange": ranges}]}
        answer = await post_json(server, "load", {"query": query, "queryType": "multi"})
        self.assertEqual(answer.status, 200, answer.text)
        body = answer.json()
        self.assertEqual(body["queryType"], "compareDateRangeQuery")
        self.assertEqual(len(body["results"]), 2)
        self.assertIn("pivotQuery", body)
        for result, date_range in zip(body["results"], ranges):
            single = {"measures": ["Orders.count"],
                      "timeDimensions": [{"dimension": "Orders.createdAt", "dateRange": date_range}]}
            alone = await post_json(server, "load", {"query": single})
            self.assertEqual(result["data"][0]["Orders.count"], alone.json()["data"][0]["Orders.count"])
        refused = await post_json(server, "load", {"query": query})
        self.assertEqual(refused.status, 400, refused.text)
        self.assertIn("compareDateRangeQuery", refused.json()["error"])

    async def test_compact_format(self) -> None:
        """responseFormat=compact answers {members, dataset} holding the same rows."""
        server = await self.server()
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"]}
        default = (await post_json(server, "load", {"query": query})).json()["data"]
        answer = await post_json(server, "load", {"query": {**query, "responseFormat": "compact"}})
        self.assertEqual(answer.status, 200, answer.text)
        data = answer.json()["data"]
        self.assertEqual(sorted(data["members"]), ["Orders.count", "Orders.status"])
        rows = [dict(zip(data["members"], values)) for values in data["dataset"]]
        self.assertCountEqual(rows, default)

    async def test_total(self) -> None:
        """total: true counts every row of the query, whatever the limit."""
        server = await self.server()
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"]}
        groups = len((await post_json(server, "load", {"query": query})).json()["data"])
        answer = await post_json(server, "load", {"query": {**query, "limit": 1, "total": True}})
        self.assertEqual(answer.status, 200, answer.text)
        body = answer.json()
        self.assertEqual(len(body["data"]), 1)
        self.assertEqual(body["total"], groups)

    async def test_sql(self) -> None:
        """GET and POST /v1/sql answer the SQL with its parameters and aliases, without running it."""
        server = await self.server()
        query = {"measures": ["Orders.count"],
                 "filters": [{"member": "Orders.status", "operator": "equals", "values": ["completed"]}]}
        for answer in (await call("GET", query_url(server, "sql", query), auth(server)),
                       await post_json(server, "sql", {"query": query})):
            self.assertEqual(answer.status, 200, answer.text)
            sql = answer.json()["sql"]
            text, params = sql["sql"]
            self.assertIn("orders", text.lower())
            self.assertEqual(params, ["completed"])
            self.assertIn("Orders.count", sql["aliasNameToMember"].values())

    async def test_dry_run(self) -> None:
        """/v1/dry-run answers the normalized query and its order."""
        server = await self.server()
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"]}
        answer = await post_json(server, "dry-run", {"query": query})
        self.assertEqual(answer.status, 200, answer.text)
        body = answer.json()
        self.assertEqual(body["queryType"], "regularQuery")
        normalized = body["normalizedQueries"][0]
        self.assertEqual((normalized["measures"], normalized["dimensions"]), (["Orders.count"], ["Orders.status"]))
        self.assertEqual((normalized["timezone"], normalized["limit"]), ("UTC", 10000))
        self.assertEqual(body["queryOrder"], [{"Orders.count": "desc"}])

    async def test_meta(self) -> None:
        """/v1/meta lists the model's cubes with their members."""
        server = await self.server()
        answer = await call("GET", f"{server.url}{BASE}/meta", auth(server))
        self.assertEqual(answer.status, 200, answer.text)
        cubes = {cube["name"]: cube for cube in answer.json()["cubes"]}
        self.assertEqual(sorted(cubes), ["LineItems", "Orders", "Products", "Users"])
        self.assertIn("Orders.count", [m["name"] for m in cubes["Orders"]["measures"]])

    async def test_health(self) -> None:
        """/readyz and /livez answer 200 HEALTH, without a token."""
        server = await self.server()
        for route in ("readyz", "livez"):
            answer = await call("GET", f"{server.url}/{route}")
            self.assertEqual((answer.status, answer.json()), (200, {"health": "HEALTH"}), route)

    # -- auth --------------------------------------------------------------------------------
    async def test_missing_token(self) -> None:
        """Without a token outside dev mode: 403 Authorization header isn't set."""
        server = await self.server()
        answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}))
        self.assertEqual((answer.status, answer.json()), (403, {"error": "Authorization header isn't set"}))

    async def test_bad_tokens(self) -> None:
        """A token with the wrong secret, an expired one and garbage: 403 Invalid token."""
        server = await self.server()
        now = int(time.time())
        tokens = {
            "wrong secret": server.token({"iat": now, "exp": now + 600}, secret="another-secret-0123456789abcdef-xyz"),
            "expired": server.token({"iat": now - 7200, "exp": now - 3600}),
            "garbage": "not-a-jwt",
        }
        for kind, token in tokens.items():
            answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}), {"Authorization": token})
            self.assertEqual((answer.status, answer.json()), (403, {"error": "Invalid token"}), kind)

    async def test_bearer_and_raw_token(self) -> None:
        """``Bearer <jwt>`` and a raw ``<jwt>`` are both accepted."""
        server = await self.server()
        for bearer in (True, False):
            answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}), auth(server, bearer))
            self.assertEqual(answer.status, 200, answer.text)

    async def test_dev_mode_without_token(self) -> None:
        """CUBEJS_DEV_MODE=true lets requests without a token through."""
        server = await self.server(CUBEJS_DEV_MODE="true")
        answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}))
        self.assertEqual(answer.status, 200, answer.text)
        self.assertEqual(int(answer.json()["data"][0]["Orders.count"]), ORDERS)

    # -- errors ------------------------------------------------------------------------------
    async def test_unknown_member(self) -> None:
        """An unknown member: 400 UserError naming it (GET and POST)."""
        server = await self.server()
        query = {"measures": ["Orders.nope"]}
        for answer in (await call("GET", query_url(server, "load", query), auth(server)),
                       await post_json(server, "load", {"query": query})):
            self.assertEqual((answer.status, answer.json()), (400, UNKNOWN_MEMBER))
            self.assertEqual(answer.header("access-control-allow-origin"), "*")

    async def test_time_series_without_date_range(self) -> None:
        """A rolling-window measure by a time dimension without a dateRange: 400 with Cube's
        text (recorded from Cube 0.32.7, with or without a granularity)."""
        server = await self.server()
        for dimension in ({"dimension": "Orders.createdAt", "granularity": "day"}, {"dimension": "Orders.createdAt"}):
            query = {"measures": ["Orders.rollingCount7d"], "timeDimensions": [dimension]}
            for answer in (await call("GET", query_url(server, "load", query), auth(server)),
                           await post_json(server, "load", {"query": query})):
                self.assertEqual((answer.status, answer.json()),
                                 (400, {"type": "UserError",
                                        "error": "Time series queries without dateRange aren't supported"}))

    async def test_blending_load_needs_a_granularity_in_every_query(self) -> None:
        """A blending /v1/load whose second query has a time dimension without granularity:
        400 with Cube's text (recorded from Cube 0.32.7); without any time dimension: 400 with
        the text Cube meant (it answers a 500 TypeError there); both only when that query
        returned rows, as Cube checks while shaping them; /v1/sql and /v1/dry-run accept both,
        as Cube's do; with granularities everywhere the load answers."""
        server = await self.server()
        by_month = {"dimension": "Orders.createdAt", "granularity": "month", "dateRange": ["2024-01-01", "2024-03-31"]}
        second_cases = (
            ({"measures": ["Users.count"], "timeDimensions": [{"dimension": "Users.createdAt",
                                                               "dateRange": ["2024-01-01", "2024-03-31"]}]},
             "Inconsistent QueryTimeDimension configuration for the blending query, granularity required: "
             "[object Object]"),
            ({"measures": ["Users.count"]}, "QueryTimeDimension should be specified for the blending query."),
        )
        for second, error in second_cases:
            query = [{"measures": ["Orders.count"], "timeDimensions": [by_month]}, second]
            answer = await post_json(server, "load", {"query": query, "queryType": "multi"})
            self.assertEqual((answer.status, answer.json()), (400, {"error": error}))
            for route in ("sql", "dry-run"):
                answer = await post_json(server, route, {"query": query})
                self.assertEqual(answer.status, 200, f"{route}: {answer.text}")
        # Cube checks while shaping rows: a query that returned none is not refused.
        empty = {"measures": ["Users.count"], "dimensions": ["Users.state"],
                 "timeDimensions": [{"dimension": "Users.createdAt", "dateRange": ["2030-01-01", "2030-01-31"]}]}
        answer = await post_json(server, "load", {"query": [{"measures": ["Orders.count"], "timeDimensions": [by_month]},
                                                            empty], "queryType": "multi"})
        self.assertEqual(answer.status, 200, answer.text)
        self.assertEqual(answer.json()["results"][1]["data"], [])
        both = [{"measures": ["Orders.count"], "timeDimensions": [by_month]},
                {"measures": ["Users.count"], "timeDimensions": [dict(by_month, dimension="Users.createdAt")]}]
        answer = await post_json(server, "load", {"query": both, "queryType": "multi"})
        self.assertEqual(answer.status, 200, answer.text)
        self.assertEqual(answer.json()["queryType"], "blendingQuery")

    async def test_a_segment_asked_as_a_dimension(self) -> None:
        """As Cube 0.32.7 answers (recorded): a segment in ``dimensions`` is planned from its
        SQL and has no annotation, so its rows are refused as a hidden member, and no rows are
        an empty answer; as a time dimension with neither granularity nor date range it
        changes nothing."""
        server = await self.server()
        answer = await post_json(server, "load", {"query": {"measures": ["Orders.count"], "dimensions": ["Orders.completed"]}})
        self.assertEqual((answer.status, answer.json()), (400, {"error": (
            "You requested hidden member: 'orders__completed'. Please make it visible using `shown: true`. "
            "Please note primaryKey fields are `shown: false` by default: "
            "https://cube.dev/docs/schema/reference/joins#setting-a-primary-key.")}))
        none = {"dimensions": ["Orders.completed", "Orders.status"],
                "filters": [{"member": "Orders.status", "operator": "equals", "values": ["nope"]}]}
        answer = await post_json(server, "load", {"query": none})
        self.assertEqual(answer.status, 200, answer.text)
        self.assertEqual(answer.json()["data"], [])
        self.assertEqual(list(answer.json()["annotation"]["dimensions"]), ["Orders.status"])
        plain = await post_json(server, "load", {"query": {"measures": ["Orders.count"]}})
        ignored = await post_json(server, "load", {"query": {"measures": ["Orders.count"],
                                                            "timeDimensions": [{"dimension": "Orders.completed"}]}})
        self.assertEqual(ignored.status, 200, ignored.text)
        self.assertEqual(ignored.json()["data"], plain.json()["data"])

    async def test_bad_json_body(self) -> None:
        """A POST body that is not JSON: 400 with an error message, no traceback."""
        server = await self.server()
        headers = {"Content-Type": "application/json", **auth(server)}
        answer = await call("POST", f"{server.url}{BASE}/load", headers, b'{"query": {"measures": ')
        self.assertEqual(answer.status, 400, answer.text)
        self.assertIsInstance(answer.json()["error"], str)
        self.assertNotIn("Traceback", answer.text)
        self.assertNotIn("stack", answer.json())

    async def test_form_encoded_post_is_not_parsed_as_a_form(self) -> None:
        """A form-encoded POST body is read as the JSON body it is not: 400 with Cube-style
        text, never a form field taken as the query (cubed reads JSON bodies only)."""
        server = await self.server()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **auth(server)}
        answer = await call("POST", f"{server.url}{BASE}/load", headers,
                            b'query=%7B%22measures%22%3A%5B%22Orders.count%22%5D%7D')
        self.assertEqual(answer.status, 400, answer.text)
        self.assertTrue(answer.json()["error"].startswith("Unable to decode request body as JSON"), answer.text)

    async def test_request_too_large(self) -> None:
        """A body over CUBEJS_MAX_REQUEST_SIZE answers 413; one under it is served."""
        server = await self.server(CUBEJS_MAX_REQUEST_SIZE="1kb")
        query = {"measures": ["Orders.count"]}
        small = await post_json(server, "load", {"query": query, "pad": "x" * 100})
        self.assertEqual(small.status, 200, small.text)
        large = await post_json(server, "load", {"query": query, "pad": "x" * 2048})
        self.assertEqual(large.status, 413, large.text)
        self.assertIsInstance(large.json()["error"], str)

    async def test_unknown_path(self) -> None:
        """An unknown path answers 404 with a JSON error (and the CORS header)."""
        server = await self.server()
        for path in ("/nope", f"{BASE}/nope"):
            answer = await call("GET", server.url + path, auth(server))
            self.assertEqual(answer.header("access-control-allow-origin"), "*")
            self.assertIsInstance(answer.json()["error"], str)
            self.assertEqual((answer.status, path), (404, path), answer.text)

    async def test_wrong_method_on_a_known_path(self) -> None:
        """A known path with a method it does not take answers 405, not 404."""
        server = await self.server()
        answer = await call("DELETE", server.url + f"{BASE}/meta", auth(server))
        self.assertEqual(answer.status, 405, answer.text)

    # -- CORS --------------------------------------------------------------------------------
    async def test_cors_on_every_answer(self) -> None:
        """Access-Control-Allow-Origin: * on data, auth errors, user errors and probes."""
        server = await self.server()
        answers = {
            "200": await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}), auth(server)),
            "403": await call("GET", query_url(server, "load", {"measures": ["Orders.count"]})),
            "400": await post_json(server, "load", {"query": {"measures": ["Orders.nope"]}}),
            "meta": await call("GET", f"{server.url}{BASE}/meta", auth(server)),
            "readyz": await call("GET", f"{server.url}/readyz"),
        }
        for name, answer in answers.items():
            self.assertEqual(answer.header("access-control-allow-origin"), "*", name)
        self.assertEqual([a.status for a in answers.values()], [200, 403, 400, 200, 200])

    async def test_preflight(self) -> None:
        """OPTIONS preflight answers 204 with the allowed methods and the asked headers."""
        server = await self.server()
        answer = await call("OPTIONS", f"{server.url}{BASE}/load", {
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-request-id",
        })
        self.assertEqual(answer.status, 204)
        self.assertEqual(answer.text, "")
        self.assertEqual(answer.header("access-control-allow-origin"), "*")
        methods = (answer.header("access-control-allow-methods") or "").split(",")
        self.assertTrue({"GET", "POST"} <= set(methods), methods)
        allowed = (answer.header("access-control-allow-headers") or "").lower().split(",")
        self.assertTrue({"authorization", "content-type", "x-request-id"} <= set(allowed), allowed)

    # -- request ids -------------------------------------------------------------------------
    async def test_request_id_in_log(self) -> None:
        """A given x-request-id is on the server's log events for that request."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = await self.server()
        request_id = f"{uuid.uuid4()}-span-1"
        answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}),
                            {**auth(server), "x-request-id": request_id})
        self.assertEqual(answer.status, 200, answer.text)
        lines = [format_text(event) or "" for event in events]
        mine = [line for line in lines if f"[{request_id}]" in line]
        self.assertTrue(any(f"GET {BASE}/load 200" in line for line in mine), mine)

    async def test_invalid_request_id(self) -> None:
        """An x-request-id with spaces answers 400."""
        server = await self.server()
        answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}),
                            {**auth(server), "x-request-id": "not a request id"})
        self.assertEqual(answer.status, 400, answer.text)
        self.assertIsInstance(answer.json()["error"], str)


# -- PostgreSQL: wire values, database errors, health ----------------------------------------
class PostgresApiTests(unittest.TestCase):
    """The API on the shop data in PostgreSQL, checked against the database's own answers."""

    def setUp(self) -> None:
        """Skip (or fail under CUBED_REQUIRE_SERVICES=1) without PostgreSQL."""
        require_postgres()

    async def test_load_wire_values(self) -> None:
        """GET /v1/load: counts are strings ("3000"), sums PostgreSQL's numeric text."""
        database = await shop_database(self)
        server = await start_server(self, postgres_settings(database))
        query = {"measures": ["Orders.count", "Orders.totalAmount"]}
        answer = await call("GET", query_url(server, "load", query), auth(server))
        self.assertEqual(answer.status, 200, answer.text)
        [(total,)] = await pg_rows(database, "SELECT sum(amount)::text FROM public.orders")
        self.assertEqual(answer.json()["data"], [{"Orders.count": "3000", "Orders.totalAmount": total}])
        self.assertEqual(answer.json()["dbType"], "postgres")

    async def test_post_load_time_dimension(self) -> None:
        """POST /v1/load by day: timestamps as ``YYYY-MM-DDTHH:mm:ss.SSS``, counts as strings,
        equal to PostgreSQL's own grouping."""
        database = await shop_database(self)
        server = await start_server(self, postgres_settings(database))
        query = {"measures": ["Orders.count"],
                 "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "day",
                                     "dateRange": ["2024-03-01", "2024-03-10"]}]}
        answer = await post_json(server, "load", {"query": query})
        self.assertEqual(answer.status, 200, answer.text)
        rows = answer.json()["data"]
        for row in rows:
            self.assertRegex(row["Orders.createdAt.day"], TIMESTAMP)
        expected = await pg_rows(database, """
            SELECT to_char(date_trunc('day', created_at), 'YYYY-MM-DD"T"HH24:MI:SS.MS'), count(*)::text
            FROM public.orders WHERE created_at >= '2024-03-01' AND created_at < '2024-03-11' GROUP BY 1""")
        self.assertEqual({r["Orders.createdAt.day"]: r["Orders.count"] for r in rows}, dict(expected))
        self.assertTrue(expected)

    async def test_post_load_total_and_sql(self) -> None:
        """POST /v1/load with total on PostgreSQL, and /v1/sql naming its aliases."""
        database = await shop_database(self)
        server = await start_server(self, postgres_settings(database))
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"], "order": {"Orders.status": "asc"}}
        answer = await post_json(server, "load", {"query": {**query, "limit": 2, "total": True}})
        self.assertEqual(answer.status, 200, answer.text)
        expected = await pg_rows(database, "SELECT status, count(*)::text FROM public.orders GROUP BY 1 ORDER BY 1")
        body = answer.json()
        self.assertEqual([(r["Orders.status"], r["Orders.count"]) for r in body["data"]], expected[:2])
        self.assertEqual(body["total"], len(expected))
        sql = (await post_json(server, "sql", {"query": query})).json()["sql"]
        self.assertEqual(sorted(sql["aliasNameToMember"].values()), ["Orders.count", "Orders.status"])
        self.assertEqual(sql["order"], {"Orders.status": "asc"})

    async def test_health(self) -> None:
        """/readyz and /livez answer 200 HEALTH while PostgreSQL answers."""
        database = await create_test_database(self)
        server = await start_server(self, postgres_settings(database))
        for route in ("readyz", "livez"):
            answer = await call("GET", f"{server.url}/{route}")
            self.assertEqual((answer.status, answer.json()), (200, {"health": "HEALTH"}), route)
            self.assertEqual(answer.header("access-control-allow-origin"), "*")

    async def test_health_down(self) -> None:
        """/readyz and /livez answer 500 DOWN when the database is unreachable (a closed port)."""
        closed = DataSourceSettings(db_type="postgres", host="127.0.0.1", port=free_port(),
                                    database="nowhere", user="postgres")
        server = await start_server(self, postgres_settings(closed))
        for route in ("readyz", "livez"):
            answer = await call("GET", f"{server.url}/{route}")
            self.assertEqual((answer.status, answer.json()), (500, {"health": "DOWN"}), route)

    async def test_database_error(self) -> None:
        """A cube whose SQL names a missing table: 400 with PostgreSQL's message, no traceback."""
        database = await create_test_database(self)
        model = Path(self.mktemp()).resolve()
        model.mkdir(parents=True)
        (model / "ghost.yml").write_text(
            "cubes:\n"
            "  - name: Ghost\n"
            "    sql_table: public.no_such_table\n"
            "    measures:\n"
            "      - name: count\n"
            "        type: count\n", encoding="utf-8")
        server = await start_server(self, postgres_settings(database, model=model))
        answer = await post_json(server, "load", {"query": {"measures": ["Ghost.count"]}})
        self.assertEqual(answer.status, 400, answer.text)
        body = answer.json()
        self.assertIn('relation "public.no_such_table" does not exist', body["error"])
        self.assertNotIn("stack", body)
        self.assertNotIn("Traceback", answer.text)
