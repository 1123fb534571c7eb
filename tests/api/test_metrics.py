"""``/metrics`` through a real listening server on the demo data (DuckDB): every count equals
what the test did. Stale answers are counted on PostgreSQL, whose source can be made slow on
demand (``StaleServeMetricsTests``).

The model is the test's own (written to a temporary directory) over the demo's tables, with
refresh keys of one day, so that no refresh-key period ends between two requests of a test: a
slow cube (about a second of DuckDB work per query), a cube over a table that does not exist
(a database error) and a rollup (one pre-aggregation table, built by a refresh pass).

What is counted: requests to the API routes under the base path (``route`` is the template
without the base path, e.g. ``/v1/load``). Scrapes of ``/metrics``, the probes (``/readyz``,
``/livez``), the OpenAPI document and unknown paths are not API requests and are not counted.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.api.test_http import BASE, Answer, auth, call, duckdb_settings, post_json, query_url
from tests.orchestrator.test_orchestrator_pg import (
    ServerTestCase, count_of, equals, load, probe_runs, stale_setup, wait_until,
)
from tests.support.server import RunningServer, start_server

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "etc" / "grafana" / "cubed-dashboard.json"

MODEL = """\
cubes:
  - name: Orders
    sql: SELECT * FROM public.orders
    refresh_key:
      every: 1 day
    measures:
      - name: count
        type: count
      - name: maxAmount
        type: max
        sql: amount
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
      - name: status
        sql: status
        type: string
      - name: createdAt
        sql: created_at
        type: time
    pre_aggregations:
      - name: ordersByStatusDaily
        type: rollup
        measures: [count]
        dimensions: [status]
        time_dimension: createdAt
        granularity: day
        refresh_key:
          every: 1 day

  - name: Slow
    sql: >
      SELECT o.* FROM public.orders o
      WHERE (SELECT sum(hash(r.range)) FROM range(80000000) r) <> 0
    refresh_key:
      every: 1 day
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true

  - name: Broken
    sql: SELECT * FROM public.no_such_table
    refresh_key:
      every: 1 day
    measures:
      - name: count
        type: count
"""
# Not answered by the rollup (maxAmount is not in it): each one runs its own SQL.
UNROLLED = {"measures": ["Orders.maxAmount"], "dimensions": ["Orders.status"]}
CONTINUE_WAIT = {"error": "Continue wait"}


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """Return the sum of the samples called ``name`` that carry ``labels`` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, have), v in self.samples.items() if n == name and wanted <= have)

    def label_values(self, name: str, label: str) -> set[str]:
        """Return the values of ``label`` among the samples called ``name``."""
        return {dict(have)[label] for (n, have) in self.samples if n == name and label in dict(have)}

    def sample_names(self) -> set[str]:
        """Return every sample name a scrape may show for its families (also those without
        samples yet: a counter's ``_total``, a histogram's ``_bucket``/``_count``/``_sum``)."""
        names = {n for (n, _labels) in self.samples}
        for family, kind in self.families.items():
            suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                        "summary": ("_count", "_sum", "_created"), "info": ("_info",)}.get(kind, ("",))
            names.update(family + suffix for suffix in suffixes)
        return names


async def scrape(server: RunningServer, headers: dict[str, str] | None = None) -> Scrape:
    """Return the parsed /metrics of ``server`` (which must answer 200)."""
    answer = await call("GET", f"{server.url}/metrics", headers)
    if answer.status != 200:
        raise AssertionError(f"/metrics answered {answer.status}: {answer.text}")
    return Scrape(answer.text)


async def sleep(seconds: float) -> None:
    """Return after ``seconds`` of reactor time."""
    await deferLater(reactor, seconds, lambda: None)


def sql_executions(server: RunningServer) -> int:
    """Return how many queries the server's SQL queues ran (every orchestrator, data source)."""
    return sum(queue.executions for orchestrator in server.server.orchestrators.all()
               for queue in orchestrator.queues.values())


class MetricsTests(unittest.TestCase):
    """/metrics on the DuckDB demo data."""

    timeout = 120

    def model_dir(self) -> Path:
        """Return a directory holding the test model."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        (directory / "model.yml").write_text(MODEL)
        return directory

    async def server(self, **environ: str) -> RunningServer:
        """Start a server on the test model with extra environment variables."""
        # Pre-aggregation tables in a schema of the test's own: the demo database is shared by
        # every test of the process, and a table another test built would not be built again.
        environ.setdefault("CUBEJS_PRE_AGGREGATIONS_SCHEMA", f"metrics_{uuid.uuid4().hex[:12]}")
        settings = await duckdb_settings(CUBEJS_SCHEMA_PATH=str(self.model_dir()), **environ)
        return await start_server(self, settings)

    async def load(self, server: RunningServer, query: Any) -> Answer:
        """POST /v1/load of ``query`` with a valid token."""
        return await post_json(server, "load", {"query": query})

    # -- requests --------------------------------------------------------------------------
    async def test_requests_by_route_and_status(self) -> None:
        """N requests of each kind show as exactly N under their route and status (200, 400,
        403), with as many latency observations as requests per route; GET and POST apart."""
        server = await self.server()
        for _ in range(7):
            self.assertEqual((await self.load(server, {"measures": ["Orders.count"]})).status, 200)
        for _ in range(3):
            answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}), auth(server))
            self.assertEqual(answer.status, 200, answer.text)
        for _ in range(4):  # no token
            answer = await call("GET", query_url(server, "load", {"measures": ["Orders.count"]}))
            self.assertEqual(answer.status, 403, answer.text)
        for _ in range(2):  # unknown member
            self.assertEqual((await self.load(server, {"measures": ["Orders.nope"]})).status, 400)
        for _ in range(5):
            answer = await call("GET", f"{server.url}{BASE}/meta", auth(server))
            self.assertEqual(answer.status, 200, answer.text)
        first = await scrape(server)
        requests = "cubed_http_requests_total"
        self.assertEqual(first.value(requests, route="/v1/load", method="POST", status="200"), 7)
        self.assertEqual(first.value(requests, route="/v1/load", method="GET", status="200"), 3)
        self.assertEqual(first.value(requests, route="/v1/load", method="GET", status="403"), 4)
        self.assertEqual(first.value(requests, route="/v1/load", method="POST", status="400"), 2)
        self.assertEqual(first.value(requests, route="/v1/meta", method="GET", status="200"), 5)
        self.assertEqual(first.value(requests), 21)
        self.assertEqual(first.value("cubed_http_request_duration_seconds_count", route="/v1/load"), 16)
        self.assertEqual(first.value("cubed_http_request_duration_seconds_count", route="/v1/meta"), 5)
        self.assertEqual(first.value("cubed_http_request_duration_seconds_bucket", route="/v1/load", le="+Inf"), 16)
        self.assertGreater(first.value("cubed_http_request_duration_seconds_sum", route="/v1/load"), 0)
        self.assertEqual(first.label_values(requests, "route"), {"/v1/load", "/v1/meta"})

        # Probes, unknown paths and scrapes are not API requests.
        await call("GET", f"{server.url}/readyz")
        await call("GET", f"{server.url}/livez")
        await call("GET", f"{server.url}{BASE}/nope", auth(server))
        second = await scrape(server)
        self.assertEqual(second.value(requests), 21)
        self.assertEqual(second.value("cubed_http_request_duration_seconds_count"), 21)

    async def test_off_the_base_path(self) -> None:
        """/metrics is at the root, not under CUBEJS_BASE_PATH; with another base path the
        routes are labelled by their template all the same."""
        server = await self.server(CUBEJS_BASE_PATH="/analytics")
        self.assertEqual((await call("GET", f"{server.url}/analytics/metrics")).status, 404)
        self.assertEqual((await call("GET", f"{server.url}{BASE}/metrics")).status, 404)
        answer = await call("POST", f"{server.url}/analytics/v1/load",
                            {"Content-Type": "application/json", **auth(server)},
                            json.dumps({"query": {"measures": ["Orders.count"]}}).encode())
        self.assertEqual(answer.status, 200, answer.text)
        metrics = await call("GET", f"{server.url}/metrics")
        self.assertEqual(metrics.status, 200)
        self.assertTrue(metrics.header("content-type").startswith("text/plain; version="), metrics.header("content-type"))
        self.assertEqual(Scrape(metrics.text).value("cubed_http_requests_total", route="/v1/load", status="200"), 1)
        # OpenMetrics when asked for it (as Prometheus does).
        open_metrics = await call("GET", f"{server.url}/metrics", {"Accept": "application/openmetrics-text"})
        self.assertTrue(open_metrics.header("content-type").startswith("application/openmetrics-text"))
        self.assertTrue(open_metrics.text.rstrip().endswith("# EOF"))

    async def test_token(self) -> None:
        """With CUBED_METRICS_TOKEN: 401 without credentials, 403 with wrong ones (the API's
        JWT is not the metrics token), 200 with ``Bearer <token>``."""
        server = await self.server(CUBED_METRICS_TOKEN="scrape-me-0123")
        missing = await call("GET", f"{server.url}/metrics")
        self.assertEqual((missing.status, missing.json()), (401, {"error": "Authorization header isn't set"}))
        self.assertEqual(missing.header("www-authenticate"), 'Bearer realm="metrics"')
        for header in ("Bearer wrong", "scrape-me-0123", "Basic scrape-me-0123", "Bearer scrape-me-01234",
                       auth(server, bearer=True)["Authorization"]):
            answer = await call("GET", f"{server.url}/metrics", {"Authorization": header})
            self.assertEqual((answer.status, answer.json()), (403, {"error": "Invalid token"}), header)
        scraped = await scrape(server, {"Authorization": "Bearer scrape-me-0123"})
        self.assertIn("cubed_http_requests", scraped.families)
        self.assertEqual(scraped.value("cubed_http_requests_total"), 0)

    async def test_disabled(self) -> None:
        """CUBED_METRICS=false: no /metrics (404); the API answers as before."""
        server = await self.server(CUBED_METRICS="false")
        self.assertEqual((await call("GET", f"{server.url}/metrics")).status, 404)
        self.assertEqual((await self.load(server, {"measures": ["Orders.count"]})).status, 200)

    # -- orchestrator ----------------------------------------------------------------------
    async def test_cache_hits_and_misses(self) -> None:
        """The same query twice: one miss, then one hit; a third with renewQuery bypasses the
        cache; cache: no-cache too."""
        server = await self.server()
        for _ in range(2):
            self.assertEqual((await self.load(server, UNROLLED)).status, 200)
        scraped = await scrape(server)
        cache = "cubed_cache_requests_total"
        labels = {"orchestrator": "STANDALONE", "data_source": "default"}
        self.assertEqual(scraped.value(cache, result="miss", **labels), 1)
        self.assertEqual(scraped.value(cache, result="hit", **labels), 1)
        self.assertEqual((await self.load(server, {**UNROLLED, "renewQuery": True})).status, 200)
        answer = await self.load(server, {**UNROLLED, "cache": "no-cache"})
        self.assertEqual(answer.status, 200, answer.text)
        scraped = await scrape(server)
        self.assertEqual(scraped.value(cache, result="bypass", **labels), 2)
        self.assertEqual(scraped.value(cache, result="miss", **labels), 1)
        self.assertEqual(scraped.value(cache, result="hit", **labels), 1)
        self.assertEqual(scraped.value(cache, result="stale", **labels), 0)

    async def test_database_queries(self) -> None:
        """K distinct queries run K database queries: the duration histogram counts exactly the
        queries the SQL queues ran; a query the database rejects counts as an error."""
        server = await self.server()
        for limit in range(1, 6):
            self.assertEqual((await self.load(server, {**UNROLLED, "limit": limit})).status, 200)
        for _ in range(2):  # the same again: answered from the cache
            self.assertEqual((await self.load(server, {**UNROLLED, "limit": 1})).status, 200)
        scraped = await scrape(server)
        duration = "cubed_database_query_duration_seconds_count"
        labels = {"orchestrator": "STANDALONE", "data_source": "default", "kind": "query"}
        self.assertEqual(scraped.value(duration, **labels), 5)
        self.assertEqual(scraped.value(duration, **labels), sql_executions(server))
        self.assertEqual(scraped.value("cubed_database_query_errors_total"), 0)
        broken = await self.load(server, {"measures": ["Broken.count"]})
        self.assertEqual(broken.status, 400, broken.text)
        scraped = await scrape(server)
        self.assertEqual(scraped.value(duration, **labels), 6)
        self.assertEqual(scraped.value(duration, **labels), sql_executions(server))
        self.assertEqual(scraped.value("cubed_database_query_errors_total", **labels), 1)
        self.assertEqual(scraped.value("cubed_http_requests_total", route="/v1/load", status="400"), 1)

    async def test_continue_wait_and_queue_sizes(self) -> None:
        """CUBEJS_CONTINUE_WAIT_TIMEOUT=0 and a query that takes about a second: each Continue
        wait answer counts once (and as a 200 request); while the query runs the SQL queue shows
        it running; once answered, nothing waits or runs."""
        server = await self.server(CUBEJS_CONTINUE_WAIT_TIMEOUT="0")
        answers: list[Answer] = []
        running_seen = 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = await self.load(server, {"measures": ["Slow.count"]})
            answers.append(answer)
            self.assertEqual(answer.status, 200, answer.text)
            if answer.json().get("error") != "Continue wait":
                break
            during = await scrape(server)
            running_seen = max(running_seen, during.value("cubed_queue_running_queries", orchestrator="STANDALONE",
                                                          data_source="default", queue="sql"))
            await sleep(0.1)
        waits = sum(1 for a in answers if a.json().get("error") == "Continue wait")
        self.assertGreaterEqual(waits, 1, "the slow query answered at once")
        self.assertIn("data", answers[-1].json())
        self.assertEqual(running_seen, 1)
        scraped = await scrape(server)
        self.assertEqual(scraped.value("cubed_continue_wait_total", route="/v1/load"), waits)
        self.assertEqual(scraped.value("cubed_http_requests_total", route="/v1/load", status="200"), len(answers))
        for gauge in ("cubed_queue_running_queries", "cubed_queue_waiting_queries"):
            for queue in ("sql", "pre_aggregations"):
                self.assertEqual(scraped.value(gauge, orchestrator="STANDALONE", data_source="default", queue=queue),
                                 0, (gauge, queue))
                self.assertIn(("orchestrator", "STANDALONE"), set().union(
                    *(have for (n, have) in scraped.samples if n == gauge)))

    async def test_pre_aggregation_builds_and_refresh_passes(self) -> None:
        """/v1/run-scheduled-refresh until finished: one refresh pass per call, one build of the
        rollup's table with its duration, the build's statements among the database queries."""
        server = await self.server(CUBEJS_DEFAULT_API_SCOPES="graphql,meta,data,sql,jobs")
        calls = 0
        body: Any = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = await call("GET", f"{server.url}{BASE}/run-scheduled-refresh", auth(server))
            calls += 1
            self.assertEqual(answer.status, 200, answer.text)
            body = answer.json()
            if body.get("finished"):
                break
            await sleep(0.2)
        self.assertEqual(body, {"finished": True})
        scraped = await scrape(server)
        labels = {"orchestrator": "STANDALONE", "data_source": "default"}
        self.assertEqual(scraped.value("cubed_refresh_passes_total", result="success"), calls)
        self.assertEqual(scraped.value("cubed_refresh_pass_duration_seconds_count"), calls)
        self.assertEqual(scraped.value("cubed_pre_aggregation_builds_total", result="success", **labels), 1)
        self.assertEqual(scraped.value("cubed_pre_aggregation_build_duration_seconds_count", **labels), 1)
        self.assertEqual(scraped.value("cubed_pre_aggregation_builds_total", result="failure", **labels), 0)
        built = server.server.orchestrators.get().pre_aggregations.builds
        self.assertEqual(built, 1)
        self.assertGreaterEqual(scraped.value("cubed_database_query_duration_seconds_count", kind="build", **labels), 1)
        self.assertEqual(scraped.value("cubed_continue_wait_total", route="/v1/run-scheduled-refresh"), calls - 1)
        # Current now: another call finds nothing to build.
        again = await call("GET", f"{server.url}{BASE}/run-scheduled-refresh", auth(server))
        self.assertEqual(again.json(), {"finished": True})
        scraped = await scrape(server)
        self.assertEqual(scraped.value("cubed_refresh_passes_total", result="success"), calls + 1)
        self.assertEqual(scraped.value("cubed_pre_aggregation_builds_total", **labels), 1)

    # -- model -----------------------------------------------------------------------------
    async def test_model_compile_time(self) -> None:
        """The start-up compile is recorded; a reload adds one under ``reload``; a reload of a
        broken model counts a failure and no duration."""
        server = await self.server()
        scraped = await scrape(server)
        self.assertEqual(scraped.value("cubed_model_compile_duration_seconds_count", trigger="startup"), 1)
        self.assertGreater(scraped.value("cubed_model_compile_duration_seconds_sum", trigger="startup"), 0)
        registry = server.server.registry
        await registry.reload()
        scraped = await scrape(server)
        self.assertEqual(scraped.value("cubed_model_compile_duration_seconds_count", trigger="reload"), 1)
        (registry.directory / "broken.yml").write_text("cubes:\n  - name: Orders\n    sql: SELECT 1\n")
        with self.assertRaises(Exception):
            await registry.reload()
        scraped = await scrape(server)
        self.assertEqual(scraped.value("cubed_model_compile_duration_seconds_count", trigger="reload"), 1)
        self.assertEqual(scraped.value("cubed_model_compile_failures_total", trigger="reload"), 1)

    # -- the Grafana dashboard --------------------------------------------------------------
    async def test_grafana_dashboard(self) -> None:
        """etc/grafana/cubed-dashboard.json is a Grafana dashboard whose every query names
        metrics a real /metrics shows, with the Prometheus data source as a variable, and a
        panel for every cubed metric family."""
        dashboard = json.loads(DASHBOARD.read_text())
        self.assertTrue(dashboard["title"] and dashboard["uid"])
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        self.assertEqual((variables["datasource"]["type"], variables["datasource"]["query"]), ("datasource", "prometheus"))
        server = await self.server()
        self.assertEqual((await self.load(server, {"measures": ["Orders.count"]})).status, 200)
        scraped = await scrape(server)
        known = scraped.sample_names()
        metric = re.compile(r"\b((?:cubed|process|python)_[a-z_]+)\b")
        used: set[str] = set()
        panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
        self.assertGreater(len(panels), 10)
        ids = [p["id"] for p in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        expressions = [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                       for v in dashboard["templating"]["list"] if v["type"] == "query"]
        for panel in panels:
            self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
            self.assertTrue(panel["targets"], panel["title"])
            for target in panel["targets"]:
                self.assertEqual(target["datasource"]["uid"], "${datasource}", panel["title"])
                expressions.append(target["expr"])
        for expression in expressions:
            names = set(metric.findall(expression))
            self.assertTrue(names, expression)
            self.assertLessEqual(names, known, f"not in /metrics: {sorted(names - known)} ({expression})")
            used |= names
        families = {name for name in scraped.families if name.startswith("cubed_") and not name.endswith("_created")}
        unused = {family for family in families if not any(u.startswith(family) for u in used)}
        self.assertEqual(unused, set(), "cubed metric families without a panel")


class StaleServeMetricsTests(ServerTestCase):
    """Stale answers counted (``result="stale"``), on PostgreSQL: the source is made slow and the
    refresh key changed behind a cached answer (test_orchestrator_pg's ``stale_setup``)."""

    async def assert_outcomes(self, server: RunningServer, **expected: int) -> None:
        scraped = await scrape(server)
        labels = {"orchestrator": "STANDALONE", "data_source": "default"}
        self.assertEqual({result: scraped.value("cubed_cache_requests_total", result=result, **labels)
                          for result in expected}, expected)

    async def test_stale_if_slow(self) -> None:
        """stale-if-slow (the default): the renewal outlasts Continue wait, the stale entry is
        answered with slowQuery: true and counted once as stale, not as a miss; the refreshed
        entry is then a hit."""
        server, database, query, first = await stale_setup(self)
        await self.assert_outcomes(server, miss=1, hit=1, stale=0)
        stale = await load(server.url, query)
        self.assertEqual((count_of(stale, "Tunable.count"), stale.json()["slowQuery"]), (10, True))
        await self.assert_outcomes(server, miss=1, hit=1, stale=1)
        await wait_until(lambda: equals(probe_runs(database, "tunable"), 2), 10, "refresh done")
        fresh = await load(server.url, query)
        self.assertEqual((count_of(fresh, "Tunable.count"), fresh.json()["slowQuery"]), (11, False))
        await self.assert_outcomes(server, miss=1, hit=2, stale=1)

    async def test_stale_while_revalidate(self) -> None:
        """stale-while-revalidate: the stale entry answered at once with slowQuery: true, counted
        once as stale."""
        server, database, query, first = await stale_setup(self)
        stale = await load(server.url, {**query, "cache": "stale-while-revalidate"})
        self.assertEqual((count_of(stale, "Tunable.count"), stale.json()["slowQuery"]), (10, True))
        await self.assert_outcomes(server, miss=1, hit=1, stale=1)
