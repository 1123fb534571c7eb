"""Rollups on real PostgreSQL through real HTTP: answers read from rollups equal the answers
from the cubes' own tables over many queries (every granularity at or above the rollup's,
filters on rollup dimensions, segments, measure filters, time zones built and not built,
partitions); queries that must not use a rollup do not; /v1/sql and usedPreAggregations say
which was used; CUBEJS_ROLLUP_ONLY; superseded table versions dropped, never one in use;
partitioned incremental refresh rebuilds only the partitions inside the update window.
"""
from __future__ import annotations

import itertools
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg2
import treq
import yaml
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cubed.config import DataSourceSettings, load_settings
from cubed.orchestrator import preaggregations as loader_module
from cubed.orchestrator.partitions import parse_table_name
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import create_test_database, require_postgres
from tests.support.shopdata import shop_database

CONFORMANCE_MODEL = Path(__file__).resolve().parent.parent / "conformance" / "model"

ORDERS_EXTRA = [
    {"name": "ordersWithSegments", "measures": ["count", "completedCount", "totalAmount", "minAmount", "maxAmount"],
     "dimensions": ["status", "Users.state"], "segments": ["bigOrders"], "time_dimension": "createdAt",
     "granularity": "day"},
]
LINE_ITEMS_EXTRA = [
    {"name": "revenue", "measures": ["revenue", "totalQuantity", "count"],
     "dimensions": ["Products.category"], "time_dimension": "createdAt", "granularity": "month",
     "partition_granularity": "year", "indexes": [{"name": "by_category", "columns": ["Products.category"]}]},
]


def write_model(directory: Path, rollups: bool) -> None:
    """Write the conformance model (without the sleeping cube) with extra rollups, or with
    no pre-aggregations at all."""
    directory.mkdir(parents=True)
    for source in sorted(CONFORMANCE_MODEL.glob("*.yml")):
        if source.name == "slow_orders.yml":
            continue
        document = yaml.safe_load(source.read_text())
        for cube in document.get("cubes", []):
            if not rollups:
                cube.pop("pre_aggregations", None)
            elif cube["name"] == "Orders":
                cube["pre_aggregations"] = cube.get("pre_aggregations", []) + ORDERS_EXTRA
            elif cube["name"] == "LineItems":
                cube["pre_aggregations"] = LINE_ITEMS_EXTRA
        (directory / source.name).write_text(yaml.safe_dump(document, sort_keys=False))


def environment(database: DataSourceSettings, model: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a dev-mode server on ``database`` (no refresh worker)."""
    environ = {
        "CUBEJS_DB_TYPE": "postgres", "CUBEJS_DB_HOST": database.host or "127.0.0.1",
        "CUBEJS_DB_PORT": str(database.port or 5432), "CUBEJS_DB_NAME": str(database.database),
        "CUBEJS_DB_USER": database.user or "postgres", "CUBEJS_API_SECRET": TEST_SECRET,
        "CUBEJS_SCHEMA_PATH": str(model), "CUBEJS_DEV_MODE": "true", "CUBEJS_REFRESH_WORKER": "false",
        "CUBEJS_DEFAULT_API_SCOPES": "graphql,meta,data,sql,jobs",
    }
    if database.password:
        environ["CUBEJS_DB_PASS"] = database.password
    environ.update(extra)
    return environ


async def get(server: RunningServer, path: str, params: dict[str, str] | None = None,
              wait: bool = True) -> tuple[int, Any]:
    """Return (status, body) of a GET, sent again (as the clients do) while it answers
    Continue wait when ``wait``."""
    request_id = str(uuid.uuid4())
    for span in itertools.count(1):
        response = await treq.get(f"{server.url}{path}", params=params or {}, persistent=False,
                                  headers={"Authorization": server.token(), "x-request-id": f"{request_id}-span-{span}"})
        body = json.loads(await response.text())
        if wait and isinstance(body, dict) and body.get("error") == "Continue wait" and span < 300:
            await deferLater(reactor, 0.1, lambda: None)
            continue
        return response.code, body
    raise AssertionError("unreachable")


async def load(server: RunningServer, query: dict[str, Any]) -> tuple[int, Any]:
    """Return (status, body) of /v1/load for ``query`` (after any Continue wait)."""
    return await get(server, "/cubejs-api/v1/load", {"query": json.dumps(query)})


def rows(body: dict[str, Any], ordered: bool) -> list[Any]:
    """Return the answer's rows, sorted unless the query fixed an order."""
    data = [json.dumps(row, sort_keys=True) for row in body["data"]]
    return data if ordered else sorted(data)


def matching_queries() -> list[dict[str, Any]]:
    """Return queries a rollup must answer."""
    queries: list[dict[str, Any]] = []
    ranges = [None, ["2024-01-01", "2024-06-30"], ["2023-03-01", "2025-02-28"]]
    for granularity, zone, date_range in itertools.product(
            ["day", "week", "month", "quarter", "year"], ["UTC", "America/Los_Angeles", "Asia/Kolkata"], ranges):
        td: dict[str, Any] = {"dimension": "Orders.createdAt", "granularity": granularity}
        if date_range:
            td["dateRange"] = date_range
        queries.append({"measures": ["Orders.count", "Orders.totalAmount"], "dimensions": ["Orders.status"],
                        "timeDimensions": [td], "timezone": zone})
    filters = [
        {"member": "Orders.status", "operator": "equals", "values": ["completed"]},
        {"member": "Orders.status", "operator": "notEquals", "values": ["shipped"]},
        {"member": "Orders.status", "operator": "in", "values": ["completed", "processing"]},
        {"member": "Orders.status", "operator": "contains", "values": ["ship"]},
        {"member": "Orders.status", "operator": "set"},
        {"or": [{"member": "Orders.status", "operator": "equals", "values": ["shipped"]},
                {"member": "Orders.status", "operator": "startsWith", "values": ["proc"]}]},
    ]
    for item in filters:
        queries.append({"measures": ["Orders.count"], "filters": [item],
                        "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month"}]})
    queries += [
        {"measures": ["Orders.totalAmount"]},
        {"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt", "dateRange": ["2030-01-01", "2030-12-31"]}]},
        {"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt", "dateRange": "from 2024-02-01 to 2024-02-29"}]},
        {"measures": ["Orders.count"], "dimensions": ["Orders.status"], "order": {"Orders.count": "desc"}, "limit": 2, "total": True},
        {"measures": ["Orders.count"], "dimensions": ["Orders.status"],
         "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "quarter"}],
         "filters": [{"member": "Orders.count", "operator": "gt", "values": ["60"]}]},
        # the second Orders rollup: segments, a joined dimension, min/max, a number measure
        {"measures": ["Orders.completedCount", "Orders.completedPercentage"], "dimensions": ["Users.state"],
         "segments": ["Orders.bigOrders"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "year"}]},
        {"measures": ["Orders.minAmount", "Orders.maxAmount"], "dimensions": ["Orders.status"],
         "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month", "dateRange": ["2024-01-01", "2024-12-31"]}],
         "timezone": "Europe/Berlin"},
        {"measures": ["Orders.count"], "filters": [{"member": "Users.state", "operator": "equals", "values": ["CA"]}]},
        # partitioned (by year) rollup of line items: UNION ALL of the partitions a range reaches
        {"measures": ["LineItems.revenue", "LineItems.totalQuantity"], "dimensions": ["Products.category"],
         "timeDimensions": [{"dimension": "LineItems.createdAt", "granularity": "quarter"}]},
        {"measures": ["LineItems.revenue"], "dimensions": ["Products.category"],
         "timeDimensions": [{"dimension": "LineItems.createdAt", "granularity": "month", "dateRange": ["2024-11-01", "2025-02-28"]}],
         "timezone": "Europe/Berlin"},
        {"measures": ["LineItems.count"], "timeDimensions": [{"dimension": "LineItems.createdAt", "granularity": "year"}],
         "filters": [{"member": "Products.category", "operator": "notSet"}]},
    ]
    return queries


def source_only_queries() -> list[dict[str, Any]]:
    """Return queries no rollup can answer (and that must still be right)."""
    month = [{"dimension": "Orders.createdAt", "granularity": "month"}]
    return [
        {"measures": ["Orders.avgAmount"], "dimensions": ["Orders.status"]},                      # not additive
        {"measures": ["Orders.uniqueUsers"], "timeDimensions": month},                              # count distinct
        {"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "hour"}],
         "limit": 50},                                                                              # finer than the rollup
        {"measures": ["Orders.count"], "timeDimensions": [
            {"dimension": "Orders.createdAt", "dateRange": ["2024-01-01T10:00:00", "2024-01-31T00:00:00"]}]},  # not day-aligned
        {"measures": ["Orders.count"], "filters": [{"member": "Orders.amount", "operator": "gt", "values": ["900"]}]},
        {"measures": ["Orders.count"], "dimensions": ["Orders.amountTier"]},
        {"measures": ["Orders.count"], "filters": [{"or": [
            {"member": "Orders.status", "operator": "equals", "values": ["shipped"]},
            {"member": "Orders.amount", "operator": "gt", "values": ["900"]}]}]},                  # and/or: Cube 0.32 got this wrong
        {"measures": ["Orders.runningTotalAmount"], "timeDimensions": [
            {"dimension": "Orders.createdAt", "granularity": "month", "dateRange": ["2024-01-01", "2024-06-30"]}]},
        {"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "day"}],
         "dimensions": ["Orders.status"], "segments": ["Orders.completed"], "limit": 100},        # segment not in a rollup
        {"measures": ["LineItems.revenue"], "dimensions": ["Orders.status"]},                        # dimension not in the rollup
        {"measures": ["Users.count", "Orders.totalAmount"], "dimensions": ["Users.state"]},        # fan-out
        {"dimensions": ["Orders.id", "Orders.status"], "measures": ["Orders.count"], "ungrouped": True, "limit": 20,
         "order": {"Orders.id": "asc"}},
    ]


class RollupAnswerTests(TestCase):
    """Two servers on one shop database: one with rollups, one whose model has none."""

    timeout = 600

    async def servers(self, **extra: str) -> tuple[RunningServer, RunningServer, DataSourceSettings]:
        require_postgres()
        database = await shop_database(self)
        with_rollups, source_only = Path(self.mktemp()).resolve(), Path(self.mktemp()).resolve()
        write_model(with_rollups, rollups=True)
        write_model(source_only, rollups=False)
        server = await start_server(self, load_settings(environment(database, with_rollups, **extra), str(with_rollups), {}))
        reference = await start_server(self, load_settings(environment(database, source_only), str(source_only), {}))
        return server, reference, database

    async def test_rollups_answer_as_the_cubes_do(self) -> None:
        server, reference, database = await self.servers()
        used_count = 0
        for query in matching_queries() + source_only_queries():
            status, body = await load(server, query)
            expected_status, expected = await load(reference, query)
            self.assertEqual((status, expected_status), (200, 200), (query, body.get("error"), expected.get("error")))
            ordered = "order" in query
            self.assertEqual(rows(body, ordered), rows(expected, ordered), query)
            self.assertEqual(body.get("total"), expected.get("total"), query)
            self.assertEqual(expected["usedPreAggregations"], {})
            if query in matching_queries():
                self.assertNotEqual(body["usedPreAggregations"], {}, f"no rollup used for {query}")
                used_count += 1
            else:
                self.assertEqual(body["usedPreAggregations"], {}, f"a rollup answered {query}")
        self.assertEqual(used_count, len(matching_queries()))
        tables = await deferToThread(_tables, database, "dev_pre_aggregations")
        self.assertTrue(any(t.startswith("orders_orders_by_status_daily_") for t in tables), tables)
        # partitions of the yearly-partitioned rollup, with their index
        for year in ("2023", "2024", "2025"):
            self.assertTrue(any(t.startswith(f"line_items_revenue{year}0101_") for t in tables), tables)
        indexes = await deferToThread(_indexes, database, "dev_pre_aggregations")
        self.assertTrue(any(i.startswith("by_category_") for i in indexes), indexes)

    async def test_used_rollup_is_reported(self) -> None:
        server, _reference, _database = await self.servers()
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"],
                 "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month", "dateRange": ["2024-01-01", "2024-03-31"]}]}
        status, body = await get(server, "/cubejs-api/v1/sql", {"query": json.dumps(query)})
        self.assertEqual(status, 200, body)
        sql = body["sql"]
        self.assertEqual([p["preAggregationId"] for p in sql["preAggregations"]], ["Orders.ordersByStatusDaily"])
        described = sql["preAggregations"][0]
        self.assertEqual(described["tableName"], "dev_pre_aggregations.orders_orders_by_status_daily")
        self.assertEqual(described["preAggregationsSchema"], "dev_pre_aggregations")
        self.assertTrue(described["loadSql"][0].startswith("CREATE TABLE dev_pre_aggregations.orders_orders_by_status_daily AS SELECT"))
        self.assertIn("FROM dev_pre_aggregations.orders_orders_by_status_daily AS", sql["sql"][0])
        self.assertEqual(sql["sql"][1], ["2024-01-01T00:00:00.000", "2024-03-31T23:59:59.999"])
        self.assertEqual(sql["cacheKeyQueries"], [])
        self.assertEqual(sql["rollupMatchResults"],
                         [{"preAggregationId": "Orders.ordersByStatusDaily", "matched": True, "reason": None}])
        # why not, in dev mode
        status, body = await get(server, "/cubejs-api/v1/sql",
                                 {"query": json.dumps({"measures": ["Orders.avgAmount"], "dimensions": ["Orders.status"]})})
        reasons = {r["preAggregationId"]: r["reason"] for r in body["sql"]["rollupMatchResults"]}
        self.assertEqual(set(reasons), {"Orders.ordersByStatusDaily", "Orders.ordersWithSegments"})
        self.assertIn("not every measure is additive", reasons["Orders.ordersByStatusDaily"])
        self.assertEqual(body["sql"]["preAggregations"], [])
        # /v1/load names the physical table it read
        status, body = await load(server, query)
        used = body["usedPreAggregations"]["dev_pre_aggregations.orders_orders_by_status_daily"]
        version = parse_table_name(used["targetTableName"].split(".")[1])
        self.assertIsNotNone(version)
        assert version is not None
        self.assertEqual(version.logical, "orders_orders_by_status_daily")
        self.assertEqual(used["lastUpdatedAt"], int(version.updated_at * 1000))

    async def test_sql_explanation_is_dev_mode_only(self) -> None:
        server, _reference, _database = await self.servers(CUBEJS_DEV_MODE="false")
        status, body = await get(server, "/cubejs-api/v1/sql",
                                 {"query": json.dumps({"measures": ["Orders.avgAmount"]})})
        self.assertEqual(status, 200, body)
        self.assertNotIn("rollupMatchResults", body["sql"])
        status, body = await get(server, "/cubejs-api/v1/sql", {"query": json.dumps({"measures": ["Orders.count"]})})
        self.assertEqual(body["sql"]["preAggregations"][0]["tableName"], "prod_pre_aggregations.orders_orders_by_status_daily")

    async def test_rollup_only(self) -> None:
        server, _reference, database = await self.servers(CUBEJS_ROLLUP_ONLY="true")
        query = {"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "year"}]}
        status, body = await load(server, query)
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"], loader_module.ROLLUP_ONLY_ERROR)
        status, body = await load(server, {"measures": ["Orders.avgAmount"]})
        self.assertEqual((status, body["error"]), (400, "No pre-aggregation table has been built for this query yet. "
                                                         "Please check your refresh worker configuration if it persists."))
        self.assertEqual(await deferToThread(_tables, database, "dev_pre_aggregations"), [])
        status, body = await get(server, "/cubejs-api/v1/run-scheduled-refresh")
        self.assertEqual((status, body), (200, {"finished": True}))
        status, body = await load(server, query)
        self.assertEqual(status, 200, body)
        self.assertNotEqual(body["usedPreAggregations"], {})
        self.assertEqual(sum(int(r["Orders.count"]) for r in body["data"]), 3000)


class ConcurrentBuildTests(TestCase):
    """Many requests needing the same unbuilt rollup share one build."""

    timeout = 300

    async def test_one_build_for_concurrent_requests(self) -> None:
        require_postgres()
        database = await shop_database(self)
        model = Path(self.mktemp()).resolve()
        write_model(model, rollups=True)
        server = await start_server(self, load_settings(environment(database, model), str(model), {}))
        loader = server.server.orchestrators.get().pre_aggregations
        queries = [{"measures": ["Orders.count"], "dimensions": ["Orders.status"],
                    "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": granularity}]}
                   for granularity in ("day", "week", "month", "quarter", "year")] * 4
        answers = await gatherResults([ensureDeferred(load(server, q)) for q in queries])
        self.assertEqual({status for status, _body in answers}, {200})
        self.assertTrue(all(body["usedPreAggregations"] for _status, body in answers))
        self.assertEqual(loader.builds, 1)
        tables = await deferToThread(_tables, database, "dev_pre_aggregations")
        self.assertEqual(len([t for t in tables if t.startswith("orders_orders_by_status_daily_")]), 1)


class SupersededTablesTests(TestCase):
    """A rebuilt rollup's old versions are dropped, never while a request reads them."""

    timeout = 300

    async def test_old_versions_dropped_when_unused(self) -> None:
        require_postgres()
        self.patch(loader_module, "TOUCH_WINDOW", 2.0)
        self.patch(loader_module, "TOUCH_THROTTLE", 0.0)
        self.patch(loader_module, "TABLE_LIST_TTL", 0.0)
        database = await shop_database(self)
        model = Path(self.mktemp()).resolve()
        model.mkdir()
        (model / "orders.yml").write_text(yaml.safe_dump({"cubes": [{
            "name": "Orders", "sql_table": "public.orders",
            "measures": [{"name": "count", "type": "count"}],
            "dimensions": [{"name": "id", "sql": "id", "type": "number", "primary_key": True},
                           {"name": "status", "sql": "status", "type": "string"}],
            "pre_aggregations": [{"name": "byStatus", "measures": ["count"], "dimensions": ["status"],
                                  "refresh_key": {"sql": "SELECT count(*) FROM public.orders"}}],
        }]}))
        server = await start_server(self, load_settings(environment(database, model), str(model), {}))
        query = {"measures": ["Orders.count"], "dimensions": ["Orders.status"]}

        async def versions() -> list[str]:
            return sorted(await deferToThread(_tables, database, "dev_pre_aggregations"))

        async def wait_for_versions(count: int) -> list[str]:
            for _ in range(100):
                found = await versions()
                if len(found) == count:
                    return found
                await deferLater(reactor, 0.1, lambda: None)
            self.fail(f"expected {count} versions, have {await versions()}")

        async def total() -> int:
            status, body = await load(server, query)
            self.assertEqual(status, 200, body)
            return sum(int(r["Orders.count"]) for r in body["data"])

        self.assertEqual(await total(), 3000)
        [first] = await versions()
        await deferToThread(_insert_order, database)
        await deferLater(reactor, 11, lambda: None)  # the sql refresh key is re-read every 10 s
        # The key changed: this request reads (and so marks as in use) the old version while a
        # new one is built in the background; the clean-up after that build keeps the old one.
        self.assertEqual(await total(), 3000)
        second_set = await wait_for_versions(2)
        self.assertIn(first, second_set)
        await deferLater(reactor, 1, lambda: None)
        self.assertIn(first, await versions())
        self.assertEqual(await total(), 3001)
        # Once nobody has read it for the touch window, the next rebuild drops it.
        await deferLater(reactor, 2.5, lambda: None)
        await deferToThread(_insert_order, database)
        status, body = await get(server, "/cubejs-api/v1/run-scheduled-refresh")  # re-reads the keys
        self.assertEqual((status, body), (200, {"finished": True}))
        remaining = await wait_for_versions(1)
        self.assertNotIn(first, remaining)
        self.assertEqual(await total(), 3002)


class IncrementalPartitionTests(TestCase):
    """Daily partitions refreshed incrementally: a refresh pass rebuilds only the partitions
    whose update window is still open, and their new rows show."""

    timeout = 300

    async def test_only_open_partitions_are_rebuilt(self) -> None:
        require_postgres()
        database = await create_test_database(self)
        today = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0, tzinfo=None)
        days = [0, 3, 5, 10]
        await deferToThread(_create_events, database, [(today - timedelta(days=d), 10 + d) for d in days])
        model = Path(self.mktemp()).resolve()
        model.mkdir()
        (model / "events.yml").write_text(yaml.safe_dump({"cubes": [{
            "name": "Events", "sql_table": "public.events",
            "measures": [{"name": "count", "type": "count"}, {"name": "total", "type": "sum", "sql": "value"}],
            "dimensions": [{"name": "id", "sql": "id", "type": "number", "primary_key": True},
                           {"name": "at", "sql": "at", "type": "time"}],
            "pre_aggregations": [{"name": "daily", "measures": ["count", "total"], "time_dimension": "at",
                                  "granularity": "day", "partition_granularity": "day",
                                  "refresh_key": {"sql": "SELECT count(*) FROM public.events", "incremental": True,
                                                  "update_window": "1 day"}}],
        }]}))
        server = await start_server(self, load_settings(environment(database, model), str(model), {}))
        loader = server.server.orchestrators.get().pre_aggregations
        status, body = await get(server, "/cubejs-api/v1/run-scheduled-refresh")
        self.assertEqual((status, body), (200, {"finished": True}))
        self.assertEqual(loader.builds, 11)  # every day from the oldest row to today
        query = {"measures": ["Events.count", "Events.total"],
                 "timeDimensions": [{"dimension": "Events.at", "granularity": "day"}]}
        status, body = await load(server, query)
        self.assertNotEqual(body["usedPreAggregations"], {})
        self.assertEqual(sum(int(r["Events.count"]) for r in body["data"]), 4)
        before = set(await deferToThread(_tables, database, "dev_pre_aggregations"))

        await deferToThread(_insert_events, database, [(today, 100), (today, 200)])
        status, body = await get(server, "/cubejs-api/v1/run-scheduled-refresh")
        self.assertEqual((status, body), (200, {"finished": True}))
        after = set(await deferToThread(_tables, database, "dev_pre_aggregations"))
        rebuilt = {parse_table_name(t).logical for t in after - before}  # type: ignore[union-attr]
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        still_open = {f"events_daily{(today - timedelta(days=d)):%Y%m%d}" for d in range(0, 12)
                      if (today - timedelta(days=d)).replace(hour=0) + timedelta(days=2) > now}
        self.assertEqual(rebuilt, still_open)
        self.assertEqual(loader.builds, 11 + len(still_open))
        status, body = await load(server, query)
        by_day = {r["Events.at.day"][:10]: int(r["Events.total"]) for r in body["data"]}
        self.assertEqual(by_day[f"{today:%Y-%m-%d}"], 10 + 100 + 200)
        self.assertEqual(sum(int(r["Events.count"]) for r in body["data"]), 6)


    async def test_build_range_and_original_sql(self) -> None:
        require_postgres()
        database = await create_test_database(self)
        today = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0, tzinfo=None)
        await deferToThread(_create_events, database, [(today - timedelta(days=d), d) for d in (0, 1, 2, 30, 60)])
        model = Path(self.mktemp()).resolve()
        model.mkdir()
        (model / "events.yml").write_text(yaml.safe_dump({"cubes": [{
            "name": "Events", "sql": "SELECT * FROM public.events",
            "measures": [{"name": "count", "type": "count"}],
            "dimensions": [{"name": "id", "sql": "id", "type": "number", "primary_key": True},
                           {"name": "at", "sql": "at", "type": "time"}],
            "pre_aggregations": [
                {"name": "recent", "measures": ["count"], "time_dimension": "at", "granularity": "day",
                 "partition_granularity": "week",
                 "build_range_start": {"sql": "SELECT NOW() - interval '7 day'"},
                 "build_range_end": {"sql": "SELECT NOW()"}},
                {"name": "source", "type": "original_sql"},
                {"name": "notScheduled", "measures": ["count"], "scheduled_refresh": False},
            ],
        }]}))
        server = await start_server(self, load_settings(environment(database, model), str(model), {}))
        status, body = await get(server, "/cubejs-api/v1/run-scheduled-refresh")
        self.assertEqual((status, body), (200, {"finished": True}))
        logical = {parse_table_name(t).logical for t in await deferToThread(_tables, database, "dev_pre_aggregations")}  # type: ignore[union-attr]
        monday = today - timedelta(days=today.weekday())
        weeks = {f"events_recent{(monday - timedelta(days=7 * w)):%Y%m%d}" for w in (0, 1)
                 if monday - timedelta(days=7 * w) + timedelta(days=7) > today - timedelta(days=7)}
        self.assertEqual(logical, weeks | {"events_source"})  # the unscheduled rollup is built on demand only
        rows_in_source = await deferToThread(_count, database, "dev_pre_aggregations",
                                             next(t for t in await deferToThread(_tables, database, "dev_pre_aggregations")
                                                  if t.startswith("events_source_")))
        self.assertEqual(rows_in_source, 5)
        # The rollup holds the build range only: the rows of 30 and 60 days ago are not in it.
        status, body = await load(server, {"measures": ["Events.count"],
                                           "timeDimensions": [{"dimension": "Events.at", "granularity": "day"}]})
        self.assertNotEqual(body["usedPreAggregations"], {})
        self.assertEqual(sum(int(r["Events.count"]) for r in body["data"]), 3)


# -- blocking helpers (run in threads) -------------------------------------------------------
def _connect(database: DataSourceSettings) -> Any:
    connection = psycopg2.connect(host=database.host or "127.0.0.1", port=database.port or 5432,
                                  dbname=database.database, user=database.user or "postgres",
                                  password=database.password)
    connection.autocommit = True
    return connection


def _tables(database: DataSourceSettings, schema: str) -> list[str]:
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def _count(database: DataSourceSettings, schema: str, table: str) -> int:
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT count(*) FROM "{schema}"."{table}"')
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def _indexes(database: DataSourceSettings, schema: str) -> list[str]:
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def _insert_order(database: DataSourceSettings) -> None:
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO public.orders (id, user_id, status, amount, created_at) "
                           "SELECT max(id) + 1, 1, 'completed', 10, '2024-05-05 10:00:00' FROM public.orders")
    finally:
        connection.close()


def _create_events(database: DataSourceSettings, rows: list[tuple[datetime, int]]) -> None:
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE public.events (id serial PRIMARY KEY, at timestamp NOT NULL, value int)")
    finally:
        connection.close()
    _insert_events(database, rows)


def _insert_events(database: DataSourceSettings, rows: list[tuple[datetime, int]]) -> None:
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.executemany("INSERT INTO public.events (at, value) VALUES (%s, %s)", rows)
    finally:
        connection.close()
