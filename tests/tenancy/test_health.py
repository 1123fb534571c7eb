"""``/livez`` and ``/readyz`` by tenancy mode (reference §1.7, REST API page), through real HTTP
on PostgreSQL.

- Single tenant: both test the configured data source (opened at start): 500 DOWN while its
  database is gone, 200 HEALTH again once it is back.
- A database per tenant (``driver_factory``): both test the connections opened so far, i.e. the
  tenants that made a request, never the configured data source (which serves no tenant). No
  tenant yet: HEALTH, even with the configured data source unreachable; one tenant's database
  gone: DOWN; back: HEALTH.

A database "goes down" by being dropped (its sessions terminated) and "comes back" by being
created again; the drivers reconnect by themselves.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cubed.config import DataSourceSettings, load_settings
from tests.orchestrator.test_failures import RECOVERY
from tests.orchestrator.test_orchestrator_pg import request, wait_until
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import (
    _create_database, _drop_database, create_test_database, free_port, pg_url, require_postgres,
)
from tests.tenancy.test_isolation import DATABASE_PER_TENANT_HOOKS, get, project

#: A cube that needs no table: any database answers it.
ONES_MODEL = """
cubes:
  - name: Ones
    sql: SELECT 1 AS id
    measures:
      - name: count
        type: count
"""

HEALTH = (200, {"health": "HEALTH"})
DOWN = (500, {"health": "DOWN"})
PROBES = ("livez", "readyz")


def environment(database: DataSourceSettings, port: int | None = None) -> dict[str, str]:
    """Return the variables of a server whose configured data source is ``database`` (on
    ``port`` instead when given: a closed port makes it unreachable)."""
    return {"CUBEJS_DB_TYPE": "postgres", "CUBEJS_DB_HOST": database.host or "127.0.0.1",
            "CUBEJS_DB_PORT": str(port or database.port or 5432), "CUBEJS_DB_NAME": database.database or "",
            "CUBEJS_DB_USER": database.user or "postgres", "CUBEJS_API_SECRET": TEST_SECRET,
            "CUBEJS_CACHE_AND_QUEUE_DRIVER": "memory"}


async def probe(server: RunningServer, route: str) -> tuple[int, Any]:
    """Return (status, body) of GET /<route>, without a token."""
    answer = await request("GET", f"{server.url}/{route}", headers={"Authorization": ""})
    return answer.status, answer.json()


async def all_probes(server: RunningServer) -> dict[str, tuple[int, Any]]:
    """Return {route: (status, body)} of /livez and /readyz now."""
    return {route: await probe(server, route) for route in PROBES}


async def wait_for(server: RunningServer, expected: tuple[int, Any], seconds: float, what: str) -> None:
    """Wait until /livez and /readyz both answer ``expected`` (each memoises its check for 1 s)."""
    async def both() -> bool:
        return all(answer == expected for answer in (await all_probes(server)).values())

    await wait_until(both, seconds, what, every=0.3)


def drop(database: DataSourceSettings) -> Any:
    """Drop ``database`` (terminating its sessions); fires when gone."""
    return deferToThread(_drop_database, pg_url(), database.database)


def recreate(database: DataSourceSettings) -> Any:
    """Create ``database`` again (empty); fires when it exists."""
    return deferToThread(_create_database, pg_url(), database.database)


class SingleTenantHealthTests(TestCase):
    timeout = 60

    async def test_configured_data_source_down_and_back(self) -> None:
        """HEALTH while the database answers, DOWN (500) while it is gone, HEALTH once it is back."""
        require_postgres()
        database = await create_test_database(self)
        server = await start_server(self, load_settings(environment(database), str(project(self, ONES_MODEL)), {}))
        self.assertEqual(await all_probes(server), {route: HEALTH for route in PROBES})
        await drop(database)
        await wait_for(server, DOWN, 10, "/livez and /readyz DOWN while the database is gone")
        await recreate(database)
        await wait_for(server, HEALTH, RECOVERY, "/livez and /readyz HEALTH once the database is back")


class DatabasePerTenantHealthTests(TestCase):
    timeout = 90

    async def setUp(self) -> None:
        require_postgres()
        self.a = await create_test_database(self)
        self.b = await create_test_database(self)
        hooks = DATABASE_PER_TENANT_HOOKS.format(
            DATABASES={"a": self.a.database, "b": self.b.database}, HOST=self.a.host or "127.0.0.1",
            PORT=self.a.port or 5432, USER=self.a.user or "postgres")
        # The configured data source is unreachable (a closed port): no tenant uses it.
        settings = load_settings(environment(self.a, port=free_port()), str(project(self, ONES_MODEL, hooks)), {})
        self.server = await start_server(self, settings)

    async def connect(self, tenant: str) -> None:
        """Make a request as ``tenant`` (opening its database) and check its answer."""
        status, body = await get(self.server, "load", {"measures": ["Ones.count"]},
                                 self.server.token({"tenant": tenant}))
        self.assertEqual((status, body.get("data")), (200, [{"Ones.count": "1"}]), body)

    async def test_no_tenant_yet_is_healthy(self) -> None:
        """Before any tenant's request no connection is open: HEALTH, although the configured
        data source does not answer; still HEALTH once a tenant is connected."""
        self.assertEqual(await all_probes(self.server), {route: HEALTH for route in PROBES})
        await self.connect("a")
        await wait_for(self.server, HEALTH, 5, "/livez and /readyz HEALTH with tenant a connected")

    async def test_a_tenant_database_down_and_back(self) -> None:
        """Tenants a and b connected; b's database gone: DOWN (500) although a's answers; back:
        HEALTH again, and b is served again."""
        await self.connect("a")
        await self.connect("b")
        self.assertEqual(await all_probes(self.server), {route: HEALTH for route in PROBES})
        await drop(self.b)
        await wait_for(self.server, DOWN, 10, "/livez and /readyz DOWN while tenant b's database is gone")
        await self.connect("a")
        await recreate(self.b)
        await wait_for(self.server, HEALTH, RECOVERY, "/livez and /readyz HEALTH once tenant b's database is back")
        await self.connect("b")

    async def test_a_tenant_unreachable_from_its_first_request(self) -> None:
        """A tenant whose database never answered still counts once its request opened it: DOWN."""
        await self.connect("a")
        await drop(self.b)
        status, body = await get(self.server, "load", {"measures": ["Ones.count"]}, self.server.token({"tenant": "b"}))
        self.assertEqual(status, 503, body)
        await wait_for(self.server, DOWN, 10, "/livez and /readyz DOWN with tenant b unreachable")
