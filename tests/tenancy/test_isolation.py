"""Tenant isolation through real HTTP on PostgreSQL, one matrix for both tenancy modes:
row-level (``SECURITY_CONTEXT`` in the model, tenants CA and NY of one database) and
database-per-tenant (``driver_factory``, tenants a and b, b's database holding a third of the
orders), each on the memory and the Redis store.

Each tenant has its own token. For every endpoint (load, sql, dry-run, meta), every filter
operator (and ``and``/``or`` groups, nested), blending and compareDateRange queries, a tenant
sees exactly its rows: counts, sums and the very order ids equal what PostgreSQL holds for that
tenant. The same query under the two tenants' contexts is never answered from the other's cache
entry (while each tenant's repeat is a cache hit, so the cache is really in play)."""
from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent
from decimal import Decimal
from typing import Any, Callable

import psycopg2
import treq
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cubed.config import DataSourceSettings, load_settings
from tests.orchestrator.test_orchestrator_pg import redis_store_environment, use_redis_store
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import require_postgres
from tests.support.shopdata import shop_database

ROW_LEVEL_MODEL = """
cubes:
  - name: Orders
    # A constant key: cache entries stay valid for the whole test (the default, every 10 s,
    # would renew them whenever a test crosses a 10-second boundary).
    refresh_key:
      sql: SELECT 1
    sql: >
      SELECT o.* FROM public.orders o JOIN public.users u ON u.id = o.user_id
      WHERE {SECURITY_CONTEXT.state.requiredFilter('u.state')}
    measures:
      - name: count
        type: count
      - name: total
        type: sum
        sql: amount
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
        public: true
      - name: status
        sql: status
        type: string
      - name: amount
        sql: amount
        type: number
      - name: createdAt
        sql: created_at
        type: time
"""

# Every operator, with values chosen so that each filter keeps some rows of every tenant; the
# condition is what the filter means, as SQL over ``public.orders o``.
FILTER_CASES: list[tuple[dict[str, Any], str]] = [
    ({"member": "Orders.status", "operator": "equals", "values": ["completed"]}, "o.status = 'completed'"),
    ({"member": "Orders.status", "operator": "equals", "values": ["completed", "shipped"]},
     "o.status IN ('completed', 'shipped')"),
    ({"member": "Orders.status", "operator": "notEquals", "values": ["completed"]}, "o.status <> 'completed'"),
    ({"member": "Orders.status", "operator": "contains", "values": ["ship"]}, "o.status ILIKE '%ship%'"),
    ({"member": "Orders.status", "operator": "contains", "values": ["ship", "proc"]},
     "(o.status ILIKE '%ship%' OR o.status ILIKE '%proc%')"),
    ({"member": "Orders.status", "operator": "notContains", "values": ["ship"]}, "o.status NOT ILIKE '%ship%'"),
    ({"member": "Orders.status", "operator": "startsWith", "values": ["proc"]}, "o.status ILIKE 'proc%'"),
    ({"member": "Orders.status", "operator": "notStartsWith", "values": ["proc"]}, "o.status NOT ILIKE 'proc%'"),
    ({"member": "Orders.status", "operator": "endsWith", "values": ["ed"]}, "o.status ILIKE '%ed'"),
    ({"member": "Orders.status", "operator": "notEndsWith", "values": ["ed"]}, "o.status NOT ILIKE '%ed'"),
    ({"member": "Orders.amount", "operator": "gt", "values": ["500"]}, "o.amount > 500"),
    ({"member": "Orders.amount", "operator": "gte", "values": ["500"]}, "o.amount >= 500"),
    ({"member": "Orders.amount", "operator": "lt", "values": ["100"]}, "o.amount < 100"),
    ({"member": "Orders.amount", "operator": "lte", "values": ["500"]}, "o.amount <= 500"),
    ({"member": "Orders.amount", "operator": "set"}, "o.amount IS NOT NULL"),
    ({"member": "Orders.amount", "operator": "notSet"}, "o.amount IS NULL"),
    ({"member": "Orders.createdAt", "operator": "inDateRange", "values": ["2024-01-01", "2024-12-31"]},
     "o.created_at >= '2024-01-01' AND o.created_at < '2025-01-01'"),
    ({"member": "Orders.createdAt", "operator": "notInDateRange", "values": ["2024-01-01", "2024-12-31"]},
     "NOT (o.created_at >= '2024-01-01' AND o.created_at < '2025-01-01')"),
    ({"member": "Orders.createdAt", "operator": "beforeDate", "values": ["2024-01-01"]}, "o.created_at < '2024-01-01'"),
    # As in Cube, an absolute date of beforeOrOnDate/afterDate is a start of day (T00:00:00.000).
    ({"member": "Orders.createdAt", "operator": "beforeOrOnDate", "values": ["2024-06-30"]},
     "o.created_at <= '2024-06-30 00:00:00'"),
    ({"member": "Orders.createdAt", "operator": "afterDate", "values": ["2024-01-01"]}, "o.created_at > '2024-01-01'"),
    ({"member": "Orders.createdAt", "operator": "afterOrOnDate", "values": ["2024-07-01"]},
     "o.created_at >= '2024-07-01'"),
    ({"or": [{"member": "Orders.status", "operator": "equals", "values": ["shipped"]},
             {"member": "Orders.amount", "operator": "lt", "values": ["100"]}]},
     "(o.status = 'shipped' OR o.amount < 100)"),
    ({"and": [{"member": "Orders.status", "operator": "equals", "values": ["shipped"]},
              {"member": "Orders.amount", "operator": "gte", "values": ["200"]}]},
     "(o.status = 'shipped' AND o.amount >= 200)"),
    ({"or": [{"and": [{"member": "Orders.status", "operator": "startsWith", "values": ["comp"]},
                      {"member": "Orders.createdAt", "operator": "afterDate", "values": ["2024-06-30"]}]},
             {"member": "Orders.amount", "operator": "notSet"}]},
     "((o.status ILIKE 'comp%' AND o.created_at > '2024-06-30') OR o.amount IS NULL)"),
]


def pg_rows(database: DataSourceSettings, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` on ``database`` and commit; return its rows (blocking: run it in a thread)."""
    connection = psycopg2.connect(host=database.host or "127.0.0.1", port=database.port or 5432,
                                  user=database.user or "postgres", dbname=database.database)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
    finally:
        connection.close()


async def get(server: RunningServer, route: str, query: Any, token: str, **params: str) -> tuple[int, Any]:
    """Return (status, body) of a GET of ``route`` with ``query``."""
    response = await treq.get(f"{server.url}/cubejs-api/v1/{route}", params={"query": json.dumps(query), **params},
                              headers={"Authorization": token}, persistent=False)
    return response.code, json.loads(await response.text())


def project(testcase: TestCase, model: str, cube_py: str = "") -> Path:
    """Return a project directory with ``model/orders.yml`` and an optional ``cube.py``."""
    directory = Path(testcase.mktemp()).resolve()
    (directory / "model").mkdir(parents=True)
    (directory / "model" / "orders.yml").write_text(dedent(model))
    if cube_py:
        (directory / "cube.py").write_text(dedent(cube_py))
    return directory


def postgres_environment(database: DataSourceSettings) -> dict[str, str]:
    """Return the variables of a server whose configured data source is ``database``."""
    return {"CUBEJS_DB_TYPE": "postgres", "CUBEJS_DB_HOST": database.host or "127.0.0.1",
            "CUBEJS_DB_PORT": str(database.port or 5432), "CUBEJS_DB_NAME": database.database or "",
            "CUBEJS_DB_USER": database.user or "postgres", "CUBEJS_API_SECRET": TEST_SECRET}


def number(value: Any) -> Decimal | None:
    """Return a measure's value as a Decimal (None stays None)."""
    return None if value is None else Decimal(str(value))


# Two queries on one time dimension and granularity (Cube's data blending).
MONTHS = {"dimension": "Orders.createdAt", "granularity": "month", "dateRange": ["2024-01-01", "2024-06-30"]}
BLEND = [{"measures": ["Orders.count"], "timeDimensions": [MONTHS]},
         {"measures": ["Orders.total"], "timeDimensions": [MONTHS],
          "filters": [{"member": "Orders.status", "operator": "equals", "values": ["shipped"]}]}]


class IsolationMatrix:
    """The matrix, for a tenancy mode (``setUp`` starts ``self.server`` and fills ``self.tokens``,
    two tenants -> token) on a store (``store_environment``)."""

    server: RunningServer
    tokens: dict[str, str]
    assertEqual: Callable[..., None]
    assertNotEqual: Callable[..., None]
    assertIn: Callable[..., None]
    assertNotIn: Callable[..., None]
    assertTrue: Callable[..., None]

    def store_environment(self) -> dict[str, str]:
        """Return the variables choosing the cache and queue store."""
        return {"CUBEJS_CACHE_AND_QUEUE_DRIVER": "memory"}

    async def direct(self, tenant: str, select: str, condition: str = "TRUE") -> list[tuple[Any, ...]]:
        """Return ``SELECT <select>`` over ``tenant``'s orders ``o`` matching ``condition``,
        straight from PostgreSQL."""
        raise NotImplementedError

    def assert_sql_of_tenant(self, tenant: str, sql: list[Any]) -> None:
        """Check that a /v1/sql ``sql`` field ([text, params]) is ``tenant``'s and no other's."""

    async def load(self, tenant: str, query: Any, **params: str) -> Any:
        status, body = await get(self.server, "load", query, self.tokens[tenant], **params)
        self.assertEqual(status, 200, body)
        return body

    async def assert_tenant_rows(self, tenant: str, filters: list[Any], condition: str) -> tuple[Any, ...]:
        """Check count, sum and order ids of ``tenant`` under ``filters``; return them."""
        body = await self.load(tenant, {"measures": ["Orders.count", "Orders.total"], "filters": filters})
        row = body["data"][0]
        got = (int(row["Orders.count"]), number(row["Orders.total"]))
        [(count, total)] = await self.direct(tenant, "count(*), sum(o.amount)", condition)
        self.assertEqual(got, (count, total), f"{tenant} {filters}")
        self.assertTrue(count > 0, f"{tenant} {filters}: the filter keeps none of the tenant's rows")
        body = await self.load(tenant, {"dimensions": ["Orders.id"], "filters": filters, "limit": 5000})
        ids = sorted(int(r["Orders.id"]) for r in body["data"])
        self.assertEqual(ids, sorted(i for (i,) in await self.direct(tenant, "o.id", condition)), f"{tenant} {filters}")
        return got

    async def test_load_under_every_filter(self) -> None:
        """/v1/load under no filter and each filter: each tenant gets exactly its rows."""
        unfiltered = {tenant: await self.assert_tenant_rows(tenant, [], "TRUE") for tenant in self.tokens}
        self.assertNotEqual(*unfiltered.values())
        for filters, condition in FILTER_CASES:
            for tenant in self.tokens:
                await self.assert_tenant_rows(tenant, [filters], condition)

    async def test_sql(self) -> None:
        """/v1/sql under each tenant's token: that tenant's SQL."""
        for tenant, token in self.tokens.items():
            query = {"measures": ["Orders.count"], "filters": [FILTER_CASES[0][0]]}
            status, body = await get(self.server, "sql", query, token)
            self.assertEqual(status, 200, body)
            self.assertIn("completed", body["sql"]["sql"][1])
            self.assert_sql_of_tenant(tenant, body["sql"]["sql"])

    async def test_dry_run(self) -> None:
        """/v1/dry-run under each tenant's token: the normalized query, for a regular and a
        blending query."""
        query = {"measures": ["Orders.count"], "filters": [FILTER_CASES[-1][0]]}
        for token in self.tokens.values():
            status, body = await get(self.server, "dry-run", query, token)
            self.assertEqual(status, 200, body)
            self.assertEqual(body["queryType"], "regularQuery")
            self.assertEqual(body["normalizedQueries"][0]["measures"], ["Orders.count"])
            self.assertEqual(body["normalizedQueries"][0]["filters"], [FILTER_CASES[-1][0]])
            status, body = await get(self.server, "dry-run", BLEND, token)
            self.assertEqual(status, 200, body)
            self.assertEqual((body["queryType"], len(body["normalizedQueries"])), ("blendingQuery", 2))

    async def test_meta(self) -> None:
        """/v1/meta under each tenant's token: the model's cube and its members."""
        for token in self.tokens.values():
            response = await treq.get(f"{self.server.url}/cubejs-api/v1/meta", headers={"Authorization": token},
                                      persistent=False)
            body = json.loads(await response.text())
            self.assertEqual(response.code, 200, body)
            [orders] = body["cubes"]
            self.assertEqual(sorted(m["name"] for m in orders["measures"]), ["Orders.count", "Orders.total"])

    async def test_compare_date_range(self) -> None:
        """compareDateRange: each period's count is the tenant's."""
        compare = {"measures": ["Orders.count"], "timeDimensions": [{
            "dimension": "Orders.createdAt", "compareDateRange": [["2024-01-01", "2024-12-31"], ["2023-01-01", "2023-12-31"]]}]}
        for tenant in self.tokens:
            body = await self.load(tenant, compare, queryType="multi")
            expected = [(await self.direct(tenant, "count(*)", f"o.created_at >= '{y}-01-01' AND o.created_at < '{y + 1}-01-01'"))[0][0]
                        for y in (2024, 2023)]
            self.assertEqual([int(r["data"][0]["Orders.count"]) for r in body["results"]], expected, tenant)

    async def test_blending(self) -> None:
        """A blending query (two queries on one time dimension): each result is the tenant's."""
        for tenant in self.tokens:
            body = await self.load(tenant, BLEND, queryType="multi")
            self.assertEqual(body["queryType"], "blendingQuery")
            period = "o.created_at >= '2024-01-01' AND o.created_at < '2024-07-01'"
            counts = dict(await self.direct(tenant, "to_char(date_trunc('month', o.created_at), 'YYYY-MM'), count(*)",
                                            f"{period} GROUP BY 1"))
            totals = dict(await self.direct(tenant, "to_char(date_trunc('month', o.created_at), 'YYYY-MM'), sum(o.amount)",
                                            f"{period} AND o.status = 'shipped' GROUP BY 1"))
            got_counts = {r["Orders.createdAt.month"][:7]: int(r["Orders.count"]) for r in body["results"][0]["data"]}
            got_totals = {r["Orders.createdAt.month"][:7]: number(r["Orders.total"]) for r in body["results"][1]["data"]}
            self.assertEqual((got_counts, got_totals), (counts, totals), tenant)

    async def test_same_query_is_not_served_across_tenants_from_cache(self) -> None:
        """The same query under the two tenants' contexts, in turns: each answer is its own
        tenant's, and each tenant's repeat comes from its own cache entry."""
        for query, select in (({"measures": ["Orders.count"]}, "count(*)"),
                              ({"measures": ["Orders.total"], "filters": [FILTER_CASES[0][0]]}, "sum(o.amount)")):
            member = query["measures"][0]
            condition = "o.status = 'completed'" if "filters" in query else "TRUE"
            expected = {t: number((await self.direct(t, select, condition))[0][0]) for t in self.tokens}
            self.assertNotEqual(*expected.values())
            cached: dict[str, list[str]] = {tenant: [] for tenant in self.tokens}
            for tenant in list(self.tokens) * 3:
                body = await self.load(tenant, query)
                self.assertEqual(number(body["data"][0][member]), expected[tenant], f"{tenant} {query}")
                cached[tenant].append(body["lastRefreshTime"])
            for tenant, times in cached.items():
                # The first answer ran the query (its own time); the repeats read the entry it stored.
                self.assertEqual(times[1], times[2], f"{tenant} {query}: not answered from its cache entry")


DATABASE_PER_TENANT_HOOKS = """
from cubed import config

DATABASES = {DATABASES!r}

@config('context_to_orchestrator_id')
def orchestrator_id(ctx):
    return 'tenant_' + ctx['securityContext']['tenant']

@config('driver_factory')
def driver(ctx):
    return {{'type': 'postgres', 'host': '{HOST}', 'port': {PORT}, 'user': '{USER}',
             'database': DATABASES[ctx['securityContext']['tenant']]}}

@config('context_to_api_scopes')
def scopes(ctx, default_scopes):
    return default_scopes if ctx['securityContext'].get('role') != 'viewer' else ['meta']
"""

PLAIN_MODEL = ROW_LEVEL_MODEL.replace(
    "SELECT o.* FROM public.orders o JOIN public.users u ON u.id = o.user_id\n      WHERE {SECURITY_CONTEXT.state.requiredFilter('u.state')}",
    "SELECT * FROM public.orders")



class RowLevel(IsolationMatrix):
    """SECURITY_CONTEXT.state in the model: tenants CA and NY of one database."""

    async def setUp(self) -> None:
        require_postgres()
        self.database = await shop_database(self)  # type: ignore[arg-type]
        environ = {**postgres_environment(self.database), **self.store_environment()}
        self.server = await start_server(self, load_settings(environ, str(project(self, ROW_LEVEL_MODEL)), {}))  # type: ignore[arg-type]
        self.tokens = {"CA": self.server.token({"state": "CA"}), "NY": self.server.token({"state": "NY"})}

    async def direct(self, tenant: str, select: str, condition: str = "TRUE") -> list[tuple[Any, ...]]:
        return await deferToThread(
            pg_rows, self.database, f"SELECT {select} FROM public.orders o JOIN public.users u ON u.id = o.user_id "
                                     f"WHERE u.state = %s AND {condition.replace('%', '%%')}", (tenant,))

    def assert_sql_of_tenant(self, tenant: str, sql: list[Any]) -> None:
        # The state is a bound parameter, never spliced into the text.
        self.assertIn(tenant, sql[1])
        for other in self.tokens:
            self.assertNotIn(f"'{other}'", sql[0])
            if other != tenant:
                self.assertNotIn(other, sql[1])

    async def test_a_token_without_the_key_is_refused(self) -> None:
        """A token without ``state``: /v1/load, /v1/sql and /v1/dry-run refuse it (400)."""
        for route in ("load", "sql", "dry-run"):
            status, body = await get(self.server, route, {"measures": ["Orders.count"]}, self.server.token({}))
            self.assertEqual((status, body["error"]), (400, "Filter for u.state is required"), route)


class DatabasePerTenant(IsolationMatrix):
    """driver_factory: tenants a and b, each with a database of its own (b's holds the orders
    with id <= 1000)."""

    async def setUp(self) -> None:
        require_postgres()
        self.databases = {"a": await shop_database(self), "b": await shop_database(self)}  # type: ignore[arg-type]
        await deferToThread(pg_rows, self.databases["b"], "DELETE FROM public.orders WHERE id > 1000 RETURNING id")
        a = self.databases["a"]
        hooks = DATABASE_PER_TENANT_HOOKS.format(
            DATABASES={name: db.database for name, db in self.databases.items()}, HOST=a.host or "127.0.0.1",
            PORT=a.port or 5432, USER=a.user or "postgres")
        environ = {**postgres_environment(a), **self.store_environment()}
        self.server = await start_server(self, load_settings(environ, str(project(self, PLAIN_MODEL, hooks)), {}))  # type: ignore[arg-type]
        self.tokens = {tenant: self.server.token({"tenant": tenant}) for tenant in self.databases}

    async def direct(self, tenant: str, select: str, condition: str = "TRUE") -> list[tuple[Any, ...]]:
        return await deferToThread(pg_rows, self.databases[tenant],
                                   f"SELECT {select} FROM public.orders o WHERE {condition.replace('%', '%%')}")

    async def test_each_tenant_has_its_own_orchestrator(self) -> None:
        """Each tenant's requests go through an orchestrator (queues, cache, databases) of its own."""
        for tenant in self.tokens:
            await self.load(tenant, {"measures": ["Orders.count"]})
        orchestrators = self.server.server.orchestrators
        self.assertEqual(sorted(orchestrators._orchestrators), ["STANDALONE", "tenant_a", "tenant_b"])

    async def test_api_scopes_from_the_hook(self) -> None:
        viewer = self.server.token({"tenant": "a", "role": "viewer"})
        status, body = await get(self.server, "load", {"measures": ["Orders.count"]}, viewer)
        self.assertEqual((status, body), (403, {"error": "API scope is missing: data"}))
        response = await treq.get(f"{self.server.url}/cubejs-api/v1/meta", headers={"Authorization": viewer},
                                  persistent=False)
        self.assertEqual(response.code, 200)


class RedisStore:
    """The Redis store (the shared test Redis, under a key prefix of the test's own)."""

    def store_environment(self) -> dict[str, str]:
        use_redis_store(self, "tenancy")  # type: ignore[arg-type]
        return redis_store_environment()


class RowLevelMemoryTests(RowLevel, TestCase):
    """Row-level tenancy, memory store."""


class RowLevelRedisTests(RedisStore, RowLevel, TestCase):
    """Row-level tenancy, Redis store."""


class DatabasePerTenantMemoryTests(DatabasePerTenant, TestCase):
    """A database per tenant, memory store."""


class DatabasePerTenantRedisTests(RedisStore, DatabasePerTenant, TestCase):
    """A database per tenant, Redis store."""
