"""Several named data sources (CUBEJS_DATASOURCES): each cube queries its own database, a
query joining cubes of two sources is refused, and sql_alias renames a cube's SQL aliases."""
from __future__ import annotations

import json
from pathlib import Path

import treq
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cubed.config import load_settings
from cubed.demo import build_demo_database, demo_model_dir
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import require_postgres
from tests.support.shopdata import shop_database

EXTRA_MODEL = """
cubes:
  - name: PgOrders
    sql_table: public.orders
    data_source: warehouse
    sql_alias: pgo
    measures:
      - name: count
        type: count
      - name: totalAmount
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
"""


class DataSourceTests(TestCase):
    async def server(self) -> RunningServer:
        """Start a server whose default source is the DuckDB demo and whose ``warehouse``
        source is a PostgreSQL database with the same shop data."""
        require_postgres()
        warehouse = await shop_database(self)
        demo = Path(self.mktemp()).resolve() / "demo.duckdb"
        demo.parent.mkdir()
        await deferToThread(build_demo_database, demo)
        model = Path(self.mktemp()).resolve()
        model.mkdir()
        for source in demo_model_dir().glob("*.yml"):
            (model / source.name).write_text(source.read_text())
        (model / "warehouse.yml").write_text(EXTRA_MODEL)
        environ = {
            "CUBEJS_DATASOURCES": "default,warehouse",
            "CUBEJS_DB_TYPE": "duckdb", "CUBEJS_DB_DUCKDB_DATABASE_PATH": str(demo),
            "CUBEJS_DS_WAREHOUSE_DB_TYPE": "postgres", "CUBEJS_DS_WAREHOUSE_DB_HOST": warehouse.host or "127.0.0.1",
            "CUBEJS_DS_WAREHOUSE_DB_PORT": str(warehouse.port or 5432),
            "CUBEJS_DS_WAREHOUSE_DB_NAME": warehouse.database or "",
            "CUBEJS_DS_WAREHOUSE_DB_USER": warehouse.user or "postgres",
            "CUBEJS_API_SECRET": TEST_SECRET, "CUBEJS_SCHEMA_PATH": str(model),
        }
        return await start_server(self, load_settings(environ, str(model), {}))

    async def load(self, server: RunningServer, query: dict) -> tuple[int, dict]:
        """Return (status, body) of a /v1/load of ``query``."""
        response = await treq.get(f"{server.url}/cubejs-api/v1/load", params={"query": json.dumps(query)},
                                  headers={"Authorization": server.token()}, persistent=False)
        return response.code, json.loads(await response.text())

    async def test_each_cube_queries_its_own_data_source(self) -> None:
        server = await self.server()
        status, body = await self.load(server, {"measures": ["PgOrders.count", "PgOrders.totalAmount"]})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["dataSource"], "warehouse")
        self.assertEqual(body["dbType"], "postgres")
        self.assertEqual(body["data"], [{"PgOrders.count": "3000", "PgOrders.totalAmount": "1487975.25"}])
        status, body = await self.load(server, {"measures": ["Orders.count"]})
        self.assertEqual((status, body["dataSource"], body["dbType"]), (200, "default", "duckdb"))
        self.assertEqual(body["data"], [{"Orders.count": "3000"}])

    async def test_sql_alias_renames_the_cube_in_sql(self) -> None:
        server = await self.server()
        response = await treq.get(f"{server.url}/cubejs-api/v1/sql",
                                  params={"query": json.dumps({"measures": ["PgOrders.count"], "dimensions": ["PgOrders.status"]})},
                                  headers={"Authorization": server.token()}, persistent=False)
        body = json.loads(await response.text())["sql"]
        self.assertIn('FROM public.orders AS "pgo"', body["sql"][0])
        self.assertEqual(body["aliasNameToMember"], {"pgo__count": "PgOrders.count", "pgo__status": "PgOrders.status"})
        status, data = await self.load(server, {"measures": ["PgOrders.count"], "dimensions": ["PgOrders.status"],
                                                "order": {"PgOrders.status": "asc"}})
        self.assertEqual(status, 200)
        self.assertEqual([row["PgOrders.status"] for row in data["data"]], ["completed", "processing", "shipped"])

    async def test_joining_cubes_of_two_sources_is_refused(self) -> None:
        server = await self.server()
        status, body = await self.load(server, {"measures": ["PgOrders.count", "Orders.count"]})
        self.assertEqual(status, 400)
        self.assertTrue(body["error"].startswith("To join across data sources use rollupJoin with Cube Store."), body)
        self.assertIn("Found data sources: warehouse, default", body["error"])
