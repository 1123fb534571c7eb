"""Tenant isolation through real HTTP on PostgreSQL: row-level (SECURITY_CONTEXT in the
model) and database-per-tenant (driver_factory); every endpoint, every filter operator,
blending and compare queries see one tenant's rows only; caches and queues are not shared."""
from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent
from typing import Any

import psycopg2
import treq
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cubed.config import DataSourceSettings, load_settings
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import require_postgres
from tests.support.shopdata import shop_database

ROW_LEVEL_MODEL = """
cubes:
  - name: Orders
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

# Every operator family, with values chosen so that each filter keeps some rows.
FILTERS = [
    {"member": "Orders.status", "operator": "equals", "values": ["completed"]},
    {"member": "Orders.status", "operator": "notEquals", "values": ["completed"]},
    {"member": "Orders.status", "operator": "contains", "values": ["ship"]},
    {"member": "Orders.status", "operator": "notContains", "values": ["ship"]},
    {"member": "Orders.status", "operator": "startsWith", "values": ["proc"]},
    {"member": "Orders.status", "operator": "endsWith", "values": ["ed"]},
    {"member": "Orders.amount", "operator": "gt", "values": ["500"]},
    {"member": "Orders.amount", "operator": "lte", "values": ["500"]},
    {"member": "Orders.amount", "operator": "set"},
    {"member": "Orders.createdAt", "operator": "inDateRange", "values": ["2024-01-01", "2024-12-31"]},
    {"member": "Orders.createdAt", "operator": "beforeDate", "values": ["2024-01-01"]},
    {"member": "Orders.createdAt", "operator": "afterDate", "values": ["2024-01-01"]},
    {"or": [{"member": "Orders.status", "operator": "equals", "values": ["shipped"]},
            {"member": "Orders.amount", "operator": "lt", "values": ["100"]}]},
]

SQL_OF_FILTER = [
    "o.status = 'completed'", "o.status <> 'completed'", "o.status ILIKE '%ship%'", "o.status NOT ILIKE '%ship%'",
    "o.status ILIKE 'proc%'", "o.status ILIKE '%ed'", "o.amount > 500", "o.amount <= 500", "o.amount IS NOT NULL",
    "o.created_at >= '2024-01-01' AND o.created_at < '2025-01-01'", "o.created_at < '2024-01-01'",
    "o.created_at > '2024-01-01'", "(o.status = 'shipped' OR o.amount < 100)",
]


def direct_count(database: DataSourceSettings, state: str, condition: str = "TRUE") -> int:
    """Return the count of ``state``'s orders matching ``condition``, straight from PostgreSQL."""
    connection = psycopg2.connect(host=database.host or "127.0.0.1", port=database.port or 5432,
                                  user=database.user or "postgres", dbname=database.database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM public.orders o JOIN public.users u ON u.id = o.user_id "
                           f"WHERE u.state = %s AND ({condition.replace('%', '%%')})", (state,))
            return int(cursor.fetchone()[0])
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


class RowLevelTests(TestCase):
    async def setUp(self) -> None:
        require_postgres()
        self.database = await shop_database(self)
        directory = project(self, ROW_LEVEL_MODEL)
        environ = {"CUBEJS_DB_TYPE": "postgres", "CUBEJS_DB_HOST": self.database.host or "127.0.0.1",
                   "CUBEJS_DB_PORT": str(self.database.port or 5432), "CUBEJS_DB_NAME": self.database.database or "",
                   "CUBEJS_DB_USER": self.database.user or "postgres", "CUBEJS_API_SECRET": TEST_SECRET}
        self.server = await start_server(self, load_settings(environ, str(directory), {}))
        self.ca = self.server.token({"state": "CA"})
        self.ny = self.server.token({"state": "NY"})

    async def count(self, token: str, filters: list[Any] | None = None) -> int:
        status, body = await get(self.server, "load", {"measures": ["Orders.count"], "filters": filters or []}, token)
        self.assertEqual(status, 200, body)
        return int(body["data"][0]["Orders.count"])

    async def test_each_tenant_sees_its_rows_under_every_filter(self) -> None:
        for filters, condition in [([], "TRUE")] + [([f], sql) for f, sql in zip(FILTERS, SQL_OF_FILTER)]:
            for token, state in ((self.ca, "CA"), (self.ny, "NY")):
                expected = await deferToThread(direct_count, self.database, state, condition)
                self.assertEqual(await self.count(token, filters), expected, f"{state} {filters}")

    async def test_same_query_is_not_served_across_tenants_from_cache(self) -> None:
        ca_first = await self.count(self.ca)
        ny = await self.count(self.ny)
        ca_again = await self.count(self.ca)
        self.assertNotEqual(ca_first, ny)
        self.assertEqual(ca_first, ca_again)

    async def test_compare_blending_sql_and_dry_run_stay_in_the_tenant(self) -> None:
        compare = {"measures": ["Orders.count"], "timeDimensions": [{
            "dimension": "Orders.createdAt", "compareDateRange": [["2024-01-01", "2024-12-31"], ["2023-01-01", "2023-12-31"]]}]}
        status, body = await get(self.server, "load", compare, self.ca, queryType="multi")
        self.assertEqual(status, 200, body)
        expected = [await deferToThread(direct_count, self.database, "CA",
                                         f"o.created_at >= '{y}-01-01' AND o.created_at < '{y + 1}-01-01'")
                    for y in (2024, 2023)]
        self.assertEqual([int(r["data"][0]["Orders.count"]) for r in body["results"]], expected)
        blend = [{"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "year",
                                                                     "dateRange": ["2024-01-01", "2024-12-31"]}]}] * 2
        status, body = await get(self.server, "load", blend, self.ny, queryType="multi")
        self.assertEqual(status, 200, body)
        self.assertEqual(int(body["results"][0]["data"][0]["Orders.count"]), expected_ny_2024 := await deferToThread(
            direct_count, self.database, "NY", "o.created_at >= '2024-01-01' AND o.created_at < '2025-01-01'"))
        self.assertGreater(expected_ny_2024, 0)
        status, body = await get(self.server, "sql", {"measures": ["Orders.count"]}, self.ca)
        self.assertEqual(body["sql"]["sql"][1], ["CA"])
        self.assertNotIn("'CA'", body["sql"]["sql"][0])

    async def test_a_token_without_the_key_is_refused(self) -> None:
        status, body = await get(self.server, "load", {"measures": ["Orders.count"]}, self.server.token({}))
        self.assertEqual((status, body["error"]), (400, "Filter for u.state is required"))


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


class DatabasePerTenantTests(TestCase):
    async def setUp(self) -> None:
        require_postgres()
        self.a = await shop_database(self)
        self.b = await shop_database(self)
        await deferToThread(self._shrink, self.b)
        hooks = DATABASE_PER_TENANT_HOOKS.format(
            DATABASES={"a": self.a.database, "b": self.b.database}, HOST=self.a.host or "127.0.0.1",
            PORT=self.a.port or 5432, USER=self.a.user or "postgres")
        directory = project(self, PLAIN_MODEL, hooks)
        environ = {"CUBEJS_DB_TYPE": "postgres", "CUBEJS_DB_HOST": self.a.host or "127.0.0.1",
                   "CUBEJS_DB_PORT": str(self.a.port or 5432), "CUBEJS_DB_NAME": self.a.database or "",
                   "CUBEJS_DB_USER": self.a.user or "postgres", "CUBEJS_API_SECRET": TEST_SECRET}
        self.server = await start_server(self, load_settings(environ, str(directory), {}))

    @staticmethod
    def _shrink(database: DataSourceSettings) -> None:
        connection = psycopg2.connect(host=database.host or "127.0.0.1", port=database.port or 5432,
                                      user=database.user or "postgres", dbname=database.database)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM public.orders WHERE id > 1000")
        connection.close()

    async def test_each_tenant_reads_its_own_database_queue_and_cache(self) -> None:
        query = {"measures": ["Orders.count"]}
        for tenant, expected in (("a", "3000"), ("b", "1000"), ("a", "3000"), ("b", "1000")):
            status, body = await get(self.server, "load", query, self.server.token({"tenant": tenant}))
            self.assertEqual((status, body["data"]), (200, [{"Orders.count": expected}]), tenant)
        orchestrators = self.server.server.orchestrators
        self.assertEqual(sorted(orchestrators._orchestrators), ["STANDALONE", "tenant_a", "tenant_b"])

    async def test_api_scopes_from_the_hook(self) -> None:
        viewer = self.server.token({"tenant": "a", "role": "viewer"})
        status, body = await get(self.server, "load", {"measures": ["Orders.count"]}, viewer)
        self.assertEqual((status, body), (403, {"error": "API scope is missing: data"}))
        response = await treq.get(f"{self.server.url}/cubejs-api/v1/meta", headers={"Authorization": viewer},
                                  persistent=False)
        self.assertEqual(response.code, 200)
