"""Fan-out: measures of cubes a one_to_many chain multiplies are computed without double
counting, the way Cube does it, on DuckDB and on PostgreSQL.

The model (``models/fanout``) is a chain of three cubes over the shop tables:
``Customers`` (users) one_to_many ``Orders`` one_to_many ``LineItems``, with count, sum, avg,
min, max and count_distinct measures on each. Joined from Customers, every customer row is
repeated once per line item of each of its orders, so a naive ``SUM`` over the joined rows
inflates the Customers and Orders sums (each test shows that it would). cubed's numbers are
compared with totals computed directly in SQL *per cube*: each cube's aggregates over its own
rows, reached through the joins without repeating them (e.g. ``sum(amount)`` over orders joined
to users only; customers per order status over ``SELECT DISTINCT user_id, status``).
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping, Sequence

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from cubed.config import DataSourceSettings, Settings
from cubed.demo import build_demo_database
from cubed.drivers.factory import make_driver
from cubed.errors import CompileError, ModelError
from cubed.model.registry import CompiledModel, compile_directory
from cubed.query.plan import QueryPlan
from cubed.query.request import expand_query
from tests.support.services import require_postgres
from tests.support.shopdata import shop_database

FANOUT_MODEL = Path(__file__).resolve().parent / "models" / "fanout"

# Each cube's measures as aggregates over its own table alias (c = users, o = orders,
# li = line_items); the reference queries below reach each row of a cube at most once per group.
CUSTOMERS = {
    "Customers.count": "COUNT(c.id)",
    "Customers.idTotal": "SUM(c.id)",
    "Customers.avgId": "AVG(c.id)",
    "Customers.minId": "MIN(c.id)",
    "Customers.maxId": "MAX(c.id)",
    "Customers.cities": "COUNT(DISTINCT c.city)",
}
ORDERS = {
    "Orders.count": "COUNT(o.id)",
    "Orders.completedCount": "COUNT(CASE WHEN o.status = 'completed' THEN o.id END)",
    "Orders.totalAmount": "SUM(o.amount)",
    "Orders.avgAmount": "AVG(o.amount)",
    "Orders.minAmount": "MIN(o.amount)",
    "Orders.maxAmount": "MAX(o.amount)",
    "Orders.statuses": "COUNT(DISTINCT o.status)",
}
LINE_ITEMS = {
    "LineItems.count": "COUNT(li.id)",
    "LineItems.quantity": "SUM(li.quantity)",
    "LineItems.revenue": "SUM(li.price * li.quantity)",
    "LineItems.avgPrice": "AVG(li.price)",
    "LineItems.minPrice": "MIN(li.price)",
    "LineItems.maxPrice": "MAX(li.price)",
    "LineItems.products": "COUNT(DISTINCT li.product_id)",
}
ALL_MEASURES = {**CUSTOMERS, **ORDERS, **LINE_ITEMS}

#: The measures the issue calls out: the ones fan-out would inflate on the multiplied cubes.
INFLATABLE = ("Customers.count", "Customers.idTotal", "Customers.avgId", "Orders.count", "Orders.completedCount",
              "Orders.totalAmount", "Orders.avgAmount")

USERS_ORDERS = "public.users AS c LEFT JOIN public.orders AS o ON o.user_id = c.id"
USERS_ORDERS_ITEMS = USERS_ORDERS + " LEFT JOIN public.line_items AS li ON li.order_id = o.id"

Key = tuple[Any, ...]
Table = dict[Key, dict[str, Decimal | str | None]]


def number(value: Any) -> Decimal | None:
    """Return a number in wire form (number or numeric text) as Decimal."""
    if value is None:
        return None
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def agree(a: Decimal | None, b: Decimal | None) -> bool:
    """Return whether two numbers agree: exactly, or within a relative 1e-9 (averages)."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= Decimal("1e-9") * max(Decimal(1), abs(a), abs(b))


def select(keys: Sequence[str], measures: Mapping[str, str], source: str, where: str = "") -> str:
    """Return ``SELECT keys, aggregates FROM source [WHERE] GROUP BY keys``."""
    columns = [f"{expression} AS k{i}" for i, expression in enumerate(keys)]
    columns += [f'{expression} AS "{member}"' for member, expression in measures.items()]
    sql = f"SELECT {', '.join(columns)} FROM {source}"
    if where:
        sql += f" WHERE {where}"
    if keys:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(keys)))
    return sql


class FanoutChecks:
    """The scenarios, run against one backend (a mixin for a trial TestCase).

    Subclasses set ``self.model`` (the fan-out model compiled for the backend's dialect) and
    ``self.driver`` (a started driver on the shop data) in ``setUp``.
    """

    model: CompiledModel
    driver: Any

    # -- running things ----------------------------------------------------------------------
    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        result = await self.driver.execute(sql, list(params))
        return list(result.rows)

    async def reference(self, key_count: int, *queries: str) -> Table:
        """Run per-cube reference queries (``key_count`` key columns, then one column per
        measure named by the member) and merge them by key."""
        merged: Table = {}
        for sql in queries:
            result = await self.driver.execute(sql, [])
            names = [c.name for c in result.columns]
            for row in result.rows:
                key = tuple(row[:key_count])
                merged.setdefault(key, {}).update({name: number(value) for name, value in zip(names[key_count:],
                                                                                           row[key_count:])})
        return merged

    def plan(self, query: dict[str, Any]) -> QueryPlan:
        _, normalized = expand_query(query, Settings())
        return self.model.plan(normalized[0])

    async def cubed(self, query: dict[str, Any]) -> tuple[QueryPlan, Table]:
        """Plan and run ``query``; return the plan and its rows keyed by the dimension values."""
        plan = self.plan(query)
        result = await self.driver.execute(plan.sql.text, list(plan.sql.params))
        kinds = [c.kind for c in plan.columns]
        members = [c.member for c in plan.columns]
        table: Table = {}
        for row in result.rows:
            key = tuple(value for value, kind in zip(row, kinds) if kind != "measure")
            self.assertNotIn(key, table, f"group {key} returned twice")
            table[key] = {m: number(v) for m, v, kind in zip(members, row, kinds) if kind == "measure"}
        return plan, table

    def assertSameNumbers(self, got: Table, expected: Table, measures: Sequence[str], label: str) -> None:
        self.assertEqual(set(got), set(expected), f"{label}: groups")
        wrong = [(key, m, expected[key][m], got[key][m]) for key in expected for m in measures
                 if not agree(got[key][m], expected[key][m])]
        self.assertEqual(wrong, [], f"{label}: (group, measure, expected, got)")

    def assertNaiveDiffers(self, naive: Table, expected: Table, measures: Sequence[str]) -> None:
        """The naive join's numbers differ from the right ones for every measure of a
        multiplied cube in ``measures``, in at least one group: the test can fail."""
        for member in measures:
            inflated = [key for key in expected if not agree(naive[key][member], expected[key][member])]
            self.assertTrue(inflated, f"a naive join gives the right {member} everywhere: the test proves nothing")

    # -- scenarios --------------------------------------------------------------------------
    async def test_grouped_by_the_top_cube(self) -> None:
        """Every measure of the three cubes by Customers.state equals each cube's own totals."""
        keys = ["c.state"]
        expected = await self.reference(
            1,
            select(keys, CUSTOMERS, "public.users AS c"),
            select(keys, ORDERS, USERS_ORDERS),
            select(keys, LINE_ITEMS, USERS_ORDERS_ITEMS),
        )
        plan, got = await self.cubed({"measures": list(ALL_MEASURES), "dimensions": ["Customers.state"]})
        self.assertIn('"keys"', plan.sql.text)  # sums of multiplied cubes through key sub-queries
        self.assertSameNumbers(got, expected, list(ALL_MEASURES), "by Customers.state")
        naive = await self.reference(1, select(keys, ALL_MEASURES, USERS_ORDERS_ITEMS))
        self.assertNaiveDiffers(naive, expected, INFLATABLE)

    async def test_grouped_by_the_middle_cube(self) -> None:
        """By Orders.status: a customer counts once per status of its orders; customers
        without orders make the NULL group (LEFT JOIN from the root)."""
        customers_by_status = ("public.users AS c LEFT JOIN (SELECT DISTINCT user_id, status FROM public.orders) AS k "
                               "ON k.user_id = c.id")
        expected = await self.reference(
            1,
            select(["k.status"], CUSTOMERS, customers_by_status),
            select(["o.status"], ORDERS, USERS_ORDERS),
            select(["o.status"], LINE_ITEMS, USERS_ORDERS_ITEMS),
        )
        self.assertIn((None,), expected)
        plan, got = await self.cubed({"measures": list(ALL_MEASURES), "dimensions": ["Orders.status"]})
        self.assertSameNumbers(got, expected, list(ALL_MEASURES), "by Orders.status")
        naive = await self.reference(1, select(["o.status"], ALL_MEASURES, USERS_ORDERS_ITEMS))
        self.assertNaiveDiffers(naive, expected, INFLATABLE)

    async def test_grouped_by_the_top_and_middle_cubes_with_total(self) -> None:
        """By Customers.state and Orders.status, with ``total: true`` and a limit: the rows
        returned are right and the total counts every group."""
        customers = ("public.users AS c LEFT JOIN (SELECT DISTINCT user_id, status FROM public.orders) AS k "
                     "ON k.user_id = c.id")
        expected = await self.reference(
            2,
            select(["c.state", "k.status"], CUSTOMERS, customers),
            select(["c.state", "o.status"], ORDERS, USERS_ORDERS),
            select(["c.state", "o.status"], LINE_ITEMS, USERS_ORDERS_ITEMS),
        )
        measures = ["Customers.idTotal", "Orders.totalAmount", "LineItems.revenue", "Customers.count"]
        query = {"measures": measures, "dimensions": ["Customers.state", "Orders.status"], "total": True, "limit": 7}
        plan, got = await self.cubed(query)
        self.assertEqual(len(got), 7)
        for key, values in got.items():
            for member in measures:
                self.assertTrue(agree(values[member], expected[key][member]), (key, member, values, expected[key]))
        # The first measure descending is the default order: the 7 largest customer id totals.
        top = sorted((v["Customers.idTotal"] for v in expected.values()), reverse=True)[:7]
        self.assertEqual(sorted((v["Customers.idTotal"] for v in got.values()), reverse=True), top)
        assert plan.total_sql is not None
        [(total,)] = await self.rows(plan.total_sql.text, plan.total_sql.params)
        self.assertEqual(int(total), len(expected))
        _, everything = await self.cubed({**query, "total": False, "limit": 10000})
        self.assertSameNumbers(everything, expected, measures, "by Customers.state, Orders.status")

    async def test_measure_filters(self) -> None:
        """Measure filters (on a selected measure of a multiplied cube and on one not selected)
        keep the groups whose right - not inflated - values pass; in the fan-out shape they are
        an outer WHERE, not a HAVING over the joined rows."""
        keys = ["c.state"]
        expected = await self.reference(
            1,
            select(keys, CUSTOMERS, "public.users AS c"),
            select(keys, ORDERS, USERS_ORDERS),
            select(keys, LINE_ITEMS, USERS_ORDERS_ITEMS),
        )
        amounts = sorted(v["Orders.totalAmount"] for v in expected.values() if v["Orders.totalAmount"] is not None)
        amount_bound = amounts[len(amounts) // 3]
        customers = sorted(v["Customers.count"] for v in expected.values())
        count_bound = customers[len(customers) // 4]
        kept = {key: values for key, values in expected.items()
                if values["Orders.totalAmount"] is not None and values["Orders.totalAmount"] > amount_bound
                and values["Customers.count"] >= count_bound}
        self.assertTrue(0 < len(kept) < len(expected), "the filter must drop some groups and keep others")
        naive = await self.reference(1, select(keys, ALL_MEASURES, USERS_ORDERS_ITEMS))
        naive_kept = {key for key, values in naive.items()
                      if values["Orders.totalAmount"] is not None and values["Orders.totalAmount"] > amount_bound
                      and values["Customers.count"] >= count_bound}
        self.assertNotEqual(naive_kept, set(kept), "a naive HAVING keeps the same groups: the test proves nothing")
        measures = ["Orders.totalAmount", "LineItems.revenue", "Orders.avgAmount"]
        plan, got = await self.cubed({
            "measures": measures,
            "dimensions": ["Customers.state"],
            "filters": [
                {"member": "Orders.totalAmount", "operator": "gt", "values": [format(amount_bound, "f")]},
                {"member": "Customers.count", "operator": "gte", "values": [str(count_bound)]},
            ],
        })
        self.assertSameNumbers(got, kept, measures, "measure filters")
        self.assertNotIn("HAVING", plan.sql.text.upper())

    async def test_time_dimension_with_granularity(self) -> None:
        """By month of Orders.createdAt over the first half of 2024: a customer counts once per
        month it ordered in; the date range keeps only customers with orders in it."""
        month = "date_trunc('month', {})"
        in_range = "{0} >= '2024-01-01 00:00:00' AND {0} <= '2024-06-30 23:59:59.999'"
        customers = (
            "public.users AS c JOIN (SELECT DISTINCT user_id, " + month.format("created_at") + " AS m "
            "FROM public.orders WHERE " + in_range.format("created_at") + ") AS k ON k.user_id = c.id"
        )
        orders_items = ("public.users AS c JOIN public.orders AS o ON o.user_id = c.id "
                        "LEFT JOIN public.line_items AS li ON li.order_id = o.id")
        expected = await self.reference(
            1,
            select(["k.m"], CUSTOMERS, customers),
            select([month.format("o.created_at")], ORDERS, "public.users AS c JOIN public.orders AS o ON o.user_id = c.id",
                   in_range.format("o.created_at")),
            select([month.format("o.created_at")], LINE_ITEMS, orders_items, in_range.format("o.created_at")),
        )
        self.assertEqual(len(expected), 6)
        plan, got = await self.cubed({
            "measures": list(ALL_MEASURES),
            "timeDimensions": [{"dimension": "Orders.createdAt", "granularity": "month",
                                "dateRange": ["2024-01-01", "2024-06-30"]}],
            "total": True,
        })
        wire = {(str(key[0]).replace(" ", "T")[:19] + ".000",): values for key, values in expected.items()}
        self.assertSameNumbers(got, wire, list(ALL_MEASURES), "by Orders.createdAt.month")
        assert plan.total_sql is not None
        [(total,)] = await self.rows(plan.total_sql.text, plan.total_sql.params)
        self.assertEqual(int(total), 6)
        naive = await self.reference(1, select([month.format("o.created_at")], ALL_MEASURES, orders_items,
                                               in_range.format("o.created_at")))
        self.assertNaiveDiffers(naive, expected, INFLATABLE)

    async def test_grand_totals(self) -> None:
        """Without dimensions: each cube's totals over the rows the root reaches (orders without
        a customer are not reached from Customers)."""
        expected = await self.reference(
            0,
            select([], CUSTOMERS, "public.users AS c"),
            select([], ORDERS, USERS_ORDERS),
            select([], LINE_ITEMS, USERS_ORDERS_ITEMS),
        )
        [(customers, orders, reached_orders)] = await self.rows(
            "SELECT (SELECT COUNT(*) FROM public.users), (SELECT COUNT(*) FROM public.orders), "
            "(SELECT COUNT(*) FROM public.orders WHERE user_id IN (SELECT id FROM public.users))")
        self.assertEqual(expected[()]["Customers.count"], number(customers))
        self.assertEqual(expected[()]["Orders.count"], number(reached_orders))
        self.assertLess(int(reached_orders), int(orders))
        _, got = await self.cubed({"measures": list(ALL_MEASURES)})
        self.assertSameNumbers(got, expected, list(ALL_MEASURES), "grand totals")


# -- backends ---------------------------------------------------------------------------------
_demo_dir: Path | None = None


def _demo_database() -> Path:
    """Return this process's demo DuckDB file (the shop data), built on first use (blocking)."""
    global _demo_dir
    if _demo_dir is None:
        _demo_dir = Path(tempfile.mkdtemp(prefix="cubed-fanout-"))
        atexit.register(shutil.rmtree, str(_demo_dir), True)
    return build_demo_database(_demo_dir / "demo.duckdb")


class DuckDBFanoutTests(FanoutChecks, unittest.TestCase):
    """The scenarios on DuckDB (the demo database holds the shop tables)."""

    async def setUp(self) -> None:
        path = await deferToThread(_demo_database)
        self.model = compile_directory(FANOUT_MODEL, lambda _ds: "duckdb", lambda _ds: "duckdb")
        self.driver = make_driver(DataSourceSettings(db_type="duckdb", duckdb_path=path), reactor)
        await self.driver.start()
        self.addCleanup(self.driver.close)


class PostgresFanoutTests(FanoutChecks, unittest.TestCase):
    """The scenarios on PostgreSQL (a fresh database with the shop tables)."""

    async def setUp(self) -> None:
        require_postgres()
        database: DataSourceSettings = await shop_database(self)
        self.model = compile_directory(FANOUT_MODEL, lambda _ds: "postgres", lambda _ds: "postgres")
        self.driver = make_driver(database, reactor)
        await self.driver.start()
        self.addCleanup(self.driver.close)


# -- model errors ------------------------------------------------------------------------------
PARENT = """\
cubes:
  - name: Customers
    sql_table: public.users
    joins:
      - name: Orders
        relationship: one_to_many
        sql: "{{CUBE}}.id = {{Orders}}.user_id"
    measures:
      - name: count
        type: count
    dimensions:
{parent_key}      - name: state
        sql: state
        type: string
"""
CHILD = """\
cubes:
  - name: Orders
    sql_table: public.orders
    measures:
      - name: total
        type: {measure_type}
        sql: amount
    dimensions:
{child_key}      - name: status
        sql: status
        type: string
"""
KEY = """\
      - name: id
        sql: id
        type: number
        primary_key: true
"""

#: Customers -> Orders -> LineItems where the multiplied middle cube has no primary key and only
#: measures Cube's validator does not ask a key for.
KEYLESS_MIDDLE = """\
cubes:
  - name: Customers
    sql_table: public.users
    joins:
      - name: Orders
        relationship: one_to_many
        sql: "{CUBE}.id = {Orders}.user_id"
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
      - name: state
        sql: state
        type: string
  - name: Orders
    sql_table: public.orders
    joins:
      - name: LineItems
        relationship: one_to_many
        sql: "{CUBE}.id = {LineItems}.order_id"
    measures:
      - name: maxAmount
        type: max
        sql: amount
    dimensions:
      - name: status
        sql: status
        type: string
  - name: LineItems
    sql_table: public.line_items
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
"""


class PrimaryKeyTests(unittest.TestCase):
    """A join whose cube lacks a primary key (and has measures that need one) is a model
    error naming that cube."""

    def compile(self, parent_key: bool, child_key: bool, measure_type: str = "sum") -> CompiledModel:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        (directory / "customers.yml").write_text(PARENT.format(parent_key=KEY if parent_key else ""))
        (directory / "orders.yml").write_text(CHILD.format(child_key=KEY if child_key else "",
                                                           measure_type=measure_type))
        return compile_directory(directory, lambda _ds: "duckdb", lambda _ds: "duckdb")

    def test_joined_cube_without_primary_key(self) -> None:
        for measure_type in ("sum", "avg", "count"):
            with self.assertRaises(ModelError) as caught:
                self.compile(parent_key=True, child_key=False, measure_type=measure_type)
            message = str(caught.exception)
            self.assertIn("primary key for 'Orders' is required when join is defined in order to make aggregates "
                          "work properly", message)
            self.assertIn("Customers", message)  # where: the cube declaring the join

    def test_joining_cube_without_primary_key(self) -> None:
        with self.assertRaises(ModelError) as caught:
            self.compile(parent_key=False, child_key=True)
        self.assertIn("primary key for 'Customers' is required", str(caught.exception))

    def test_both_keys_present(self) -> None:
        model = self.compile(parent_key=True, child_key=True)
        _, normalized = expand_query({"measures": ["Customers.count", "Orders.total"],
                                      "dimensions": ["Customers.state"]}, Settings())
        self.assertIn('COUNT(DISTINCT "customers".id)', model.plan(normalized[0]).sql.text)

    def test_keyless_cube_with_only_min_max_measures(self) -> None:
        """Cube's validator asks for a key only when the cube has sum/avg/count/number
        measures; a key-less cube with max or count_distinct measures compiles, and a query
        that multiplies it is then refused naming the cube (never computed wrong)."""
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        (directory / "model.yml").write_text(KEYLESS_MIDDLE)
        try:
            model = compile_directory(directory, lambda _ds: "duckdb", lambda _ds: "duckdb")
        except ModelError as error:
            self.assertIn("'Orders'", str(error))
            return
        _, normalized = expand_query({"measures": ["Orders.maxAmount", "LineItems.count"],
                                      "dimensions": ["Customers.state"]}, Settings())
        with self.assertRaises(CompileError) as caught:
            model.plan(normalized[0])
        self.assertIn("Primary key is required for 'Orders", str(caught.exception))

    def test_fanout_model_compiles(self) -> None:
        model = compile_directory(FANOUT_MODEL, lambda _ds: "duckdb", lambda _ds: "duckdb")
        self.assertEqual(sorted(model.model.cubes), ["Customers", "LineItems", "Orders"])
        self.assertEqual(set(model.joins.build(("Customers", "Orders", "LineItems")).multiplied),
                         {"Customers", "Orders"})
