"""Rollups under row-level tenancy on real PostgreSQL through real HTTP.

The cube's SQL filters on the security context (``{SECURITY_CONTEXT.state.filter('u.state')}``);
its rollups are built with the context of the request (or of the ``scheduled_refresh_contexts``
context of a refresh pass), so every tenant gets its own table versions under the same logical
name and reads only its own rows, as the same queries without rollups do:

- ``/v1/load`` under a CA token and under an NY token (one unpartitioned rollup, one
  partitioned by year, whose partitions come from each tenant's own time range);
- a refresh pass over two contexts builds two tables per logical table; with
  ``CUBEJS_ROLLUP_ONLY`` each tenant then reads its own;
- the ``pre_aggregations_schema`` hook (with ``context_to_app_id``): each tenant's rollups are
  built in its own schema.
"""
from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cubed.config import DataSourceSettings, load_settings
from cubed.orchestrator.partitions import parse_table_name
from tests.preaggregations.test_rollups_pg import _connect, _tables, environment, rows
from tests.support.server import RunningServer, start_server
from tests.support.services import require_postgres
from tests.support.shopdata import shop_database
from tests.tenancy.test_isolation import ROW_LEVEL_MODEL, project

# test_isolation's row-level model, with a filter that is 1 = 1 for a token without the key.
NO_ROLLUPS = ROW_LEVEL_MODEL.replace("requiredFilter", "filter")
MODEL = NO_ROLLUPS + """\
    pre_aggregations:
      - name: byStatus
        measures: [count, total]
        dimensions: [status]
      - name: monthly
        measures: [count, total]
        dimensions: [status]
        time_dimension: createdAt
        granularity: month
        partition_granularity: year
"""

QUERIES = [
    {"measures": ["Orders.count", "Orders.total"], "dimensions": ["Orders.status"]},               # byStatus
    {"measures": ["Orders.count"], "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "year"}]},
    {"measures": ["Orders.total"], "dimensions": ["Orders.status"],
     "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "quarter",
                         "dateRange": ["2024-01-01", "2024-12-31"]}]},
]
LOGICAL = {0: "orders_by_status", 1: "orders_monthly", 2: "orders_monthly"}
STATES = ("CA", "NY")

SCHEMA_HOOKS = """
from cubed import config

@config('context_to_app_id')
def app_id(ctx):
    return 'app_' + ctx['securityContext'].get('state', 'all').lower()

@config('pre_aggregations_schema')
def schema(ctx):
    return 'pre_' + ctx['securityContext'].get('state', 'all').lower()
"""

REFRESH_CONTEXTS = """
from cubed import config

@config('scheduled_refresh_contexts')
def contexts():
    return [{'securityContext': {'state': 'CA'}}, {'securityContext': {'state': 'NY'}}]
"""


async def request(server: RunningServer, path: str, token: str, params: dict[str, str] | None = None) -> tuple[int, Any]:
    """Return (status, body) of a GET with ``token``, sent again while it answers Continue wait."""
    request_id = str(uuid.uuid4())
    for span in itertools.count(1):
        response = await treq.get(f"{server.url}/cubejs-api/v1/{path}", params=params or {}, persistent=False,
                                  headers={"Authorization": token, "x-request-id": f"{request_id}-span-{span}"})
        body = json.loads(await response.text())
        if isinstance(body, dict) and body.get("error") == "Continue wait" and span < 300:
            await deferLater(reactor, 0.1, lambda: None)
            continue
        return response.code, body
    raise AssertionError("unreachable")


async def load(server: RunningServer, query: dict[str, Any], token: str) -> dict[str, Any]:
    """Return the /v1/load body of ``query`` under ``token`` (after any Continue wait)."""
    status, body = await request(server, "load", token, {"query": json.dumps(query)})
    assert status == 200, body
    return body


def rollup_count(database: DataSourceSettings, qualified: str) -> int:
    """Return how many orders a rollup table was built from (the sum of its count column)."""
    schema, table = qualified.split(".")
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT coalesce(sum("orders__count"), 0) FROM "{schema}"."{table}"')
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def orders_of(database: DataSourceSettings, state: str | None) -> int:
    """Return how many orders belong to users of ``state`` (all orders for None)."""
    connection = _connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM public.orders o JOIN public.users u ON u.id = o.user_id "
                           "WHERE %s IS NULL OR u.state = %s", (state, state))
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def logical_of(physical: str) -> str:
    """Return the logical table (without schema) of a physical table name."""
    version = parse_table_name(physical.rpartition(".")[2])
    assert version is not None, physical
    return version.logical


class RowLevelRollupTests(TestCase):
    """One shop database; a server whose model has the rollups and one whose model has none."""

    timeout = 300

    async def servers(self, cube_py: str = "", **extra: str) -> tuple[RunningServer, RunningServer]:
        require_postgres()
        self.database = await shop_database(self)
        with_rollups = project(self, MODEL, cube_py)
        source_only = project(self, NO_ROLLUPS)
        server = await start_server(self, load_settings(
            environment(self.database, with_rollups / "model", **extra), str(with_rollups), {}))
        reference = await start_server(self, load_settings(
            environment(self.database, source_only / "model"), str(source_only), {}))
        return server, reference

    async def assert_tenants_read_their_own_rows(self, server: RunningServer,
                                                 reference: RunningServer) -> dict[str, dict[int, dict[str, str]]]:
        """Check every query under each tenant against the rollup-less server; return the
        tables each tenant's queries read: {state: {query index: {logical: physical}}}."""
        read: dict[str, dict[int, dict[str, str]]] = {}
        answers: dict[str, list[Any]] = {}
        for state in STATES:
            token = server.token({"state": state})
            read[state] = {}
            answers[state] = []
            for index, query in enumerate(QUERIES):
                body = await load(server, query, token)
                expected = await load(reference, query, reference.token({"state": state}))
                self.assertEqual(rows(body, False), rows(expected, False), f"{state} query {index}")
                self.assertEqual(body["usedPreAggregations"] != {}, True, f"{state} query {index} used no rollup")
                read[state][index] = {logical: used["targetTableName"]
                                      for logical, used in body["usedPreAggregations"].items()}
                self.assertTrue(all(logical_of(t).startswith(LOGICAL[index]) for t in read[state][index].values()),
                                read[state][index])
                answers[state].append(rows(body, False))
        # The tenants' answers differ (the data set has orders in both states)...
        for index in range(len(QUERIES)):
            self.assertNotEqual(answers["CA"][index], answers["NY"][index], f"query {index}")
        # ...and so do the tables they read: same logical names (in the schema of each), other
        # versions.
        for index in range(len(QUERIES)):
            self.assertEqual({name.partition(".")[2] for name in read["CA"][index]},
                             {name.partition(".")[2] for name in read["NY"][index]})
            self.assertTrue(set(read["CA"][index].values()).isdisjoint(read["NY"][index].values()),
                            (read["CA"][index], read["NY"][index]))
        # The unpartitioned table of each tenant holds that tenant's orders only.
        for state in STATES:
            [table] = read[state][0].values()
            count = await deferToThread(rollup_count, self.database, table)
            self.assertEqual(count, await deferToThread(orders_of, self.database, state), state)
        return read

    async def test_each_tenant_reads_its_own_rollup_tables(self) -> None:
        server, reference = await self.servers()
        await self.assert_tenants_read_their_own_rows(server, reference)
        # A token without the key: the filter is 1 = 1, every order (a third table version).
        body = await load(server, QUERIES[0], server.token({}))
        [table] = body["usedPreAggregations"].values()
        count = await deferToThread(rollup_count, self.database, table["targetTableName"])
        self.assertEqual(count, await deferToThread(orders_of, self.database, None))
        # /v1/sql shows each tenant's load SQL with its own bound value.
        for state in STATES:
            status, body = await request(server, "sql", server.token({"state": state}),
                                         {"query": json.dumps(QUERIES[0])})
            self.assertEqual(status, 200, body)
            [described] = body["sql"]["preAggregations"]
            self.assertEqual(described["loadSql"][1], [state])
            self.assertIn("u.state = $1", described["loadSql"][0])

    async def test_refresh_pass_builds_a_table_per_context(self) -> None:
        server, reference = await self.servers(REFRESH_CONTEXTS, CUBEJS_ROLLUP_ONLY="true")
        for _ in range(300):
            progress = await server.server.refresher.run_pass()
            if progress.finished:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(progress.finished, progress.as_json())
        tables = await deferToThread(_tables, self.database, "dev_pre_aggregations")
        by_logical: dict[str, list[str]] = {}
        for table in tables:
            by_logical.setdefault(logical_of(table), []).append(table)
        # Two versions of the unpartitioned table, one per context; two per yearly partition
        # (both states have orders in every year of the data set).
        self.assertEqual(len(by_logical.pop("orders_by_status")), 2, tables)
        self.assertTrue(by_logical)
        for logical, versions in by_logical.items():
            self.assertTrue(logical.startswith("orders_monthly"), logical)
            self.assertEqual(len(versions), 2, (logical, tables))
        # Rollup-only: nothing is built on request, each tenant reads the table built for it.
        read = await self.assert_tenants_read_their_own_rows(server, reference)
        for state in STATES:
            for tables_read in read[state].values():
                self.assertTrue({t.partition(".")[2] for t in tables_read.values()} <= set(tables))
        self.assertEqual(sorted(await deferToThread(_tables, self.database, "dev_pre_aggregations")), sorted(tables))

    async def test_pre_aggregations_schema_hook_builds_each_tenant_in_its_schema(self) -> None:
        server, reference = await self.servers(SCHEMA_HOOKS)
        read = await self.assert_tenants_read_their_own_rows(server, reference)
        for state in STATES:
            schema = f"pre_{state.lower()}"
            built = await deferToThread(_tables, self.database, schema)
            self.assertTrue(built, schema)
            for tables_read in read[state].values():
                self.assertEqual(set(tables_read), {f"{schema}.{logical_of(t)}" for t in tables_read.values()})
                self.assertTrue(all(t.startswith(f"{schema}.") for t in tables_read.values()), tables_read)
                self.assertTrue({t.partition(".")[2] for t in tables_read.values()} <= set(built))
        self.assertEqual(await deferToThread(_tables, self.database, "dev_pre_aggregations"), [])
