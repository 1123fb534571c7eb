"""Rollup matching (Cube's additive and exact rules) and the SQL that reads a rollup, planned
without a database."""
from __future__ import annotations

from pathlib import Path
from textwrap import dedent

from twisted.trial.unittest import TestCase

from cubed.model.registry import compile_directory
from cubed.query.rollups import granularity_of_instant, rollup_granularity
from cubed.query.types import FilterCondition, FilterGroup, Query, TimeDimension

MODEL = """
cubes:
  - name: Orders
    sql_table: public.orders
    joins:
      - name: Users
        relationship: many_to_one
        sql: "{CUBE}.user_id = {Users}.id"
      - name: Items
        relationship: one_to_many
        sql: "{CUBE}.id = {Items}.order_id"
    measures:
      - {name: count, type: count}
      - {name: total, type: sum, sql: amount}
      - {name: biggest, type: max, sql: amount}
      - {name: average, type: avg, sql: amount}
      - {name: perOrder, type: number, sql: "{total} / NULLIF({count}, 0)"}
      - {name: buyers, type: count_distinct, sql: user_id}
      - {name: approxBuyers, type: count_distinct_approx, sql: user_id}
    dimensions:
      - {name: id, sql: id, type: number, primary_key: true}
      - {name: status, sql: status, type: string}
      - {name: amount, sql: amount, type: number}
      - {name: createdAt, sql: created_at, type: time}
    segments:
      - {name: big, sql: "{CUBE}.amount > 500"}
    pre_aggregations:
      - name: daily
        measures: [count, total, biggest]
        dimensions: [status, Users.state]
        segments: [big]
        time_dimension: createdAt
        granularity: day
      - name: weeklyAverage
        measures: [average, buyers]
        dimensions: [status]
        time_dimension: createdAt
        granularity: week
  - name: Users
    sql_table: public.users
    measures:
      - {name: count, type: count}
    dimensions:
      - {name: id, sql: id, type: number, primary_key: true}
      - {name: state, sql: state, type: string}
  - name: Items
    sql_table: public.items
    measures:
      - {name: count, type: count}
    dimensions:
      - {name: id, sql: id, type: number, primary_key: true}
"""


class RollupMatchingTests(TestCase):
    def setUp(self) -> None:
        directory = self.directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "model.yml").write_text(dedent(MODEL))
        self.compiled = compile_directory(directory, lambda _ds: "postgres", lambda _ds: "postgres")

    def used(self, **query: object) -> str | None:
        plan = self.compiled.plan(Query(**query))  # type: ignore[arg-type]
        return plan.rollup.pre_aggregation.name if plan.rollup else None

    def td(self, granularity: str | None, date_range: tuple[str, str] | None = None) -> tuple[TimeDimension, ...]:
        return (TimeDimension("Orders.createdAt", granularity, date_range),)

    def test_additive_queries_roll_up_from_finer_granularities(self) -> None:
        for granularity in ("day", "week", "month", "quarter", "year"):
            self.assertEqual(self.used(measures=("Orders.count",), time_dimensions=self.td(granularity)), "daily")
        self.assertIsNone(self.used(measures=("Orders.count",), time_dimensions=self.td("hour")))
        # a subset of the rollup's dimensions, a joined cube's dimension, a segment, max, number of leaves
        self.assertEqual(self.used(measures=("Orders.perOrder", "Orders.biggest"), dimensions=("Users.state",),
                                   segments=("Orders.big",)), "daily")
        self.assertEqual(self.used(measures=("Orders.total",), filters=(
            FilterGroup("or", (FilterCondition("Orders.status", "equals", ("a",)),
                               FilterCondition("Users.state", "equals", ("b",)))),)), "daily")

    def test_date_ranges_must_align_to_the_rollup(self) -> None:
        month = ("2024-01-01T00:00:00.000", "2024-03-31T23:59:59.999")
        self.assertEqual(self.used(measures=("Orders.count",), time_dimensions=self.td("month", month)), "daily")
        self.assertEqual(self.used(measures=("Orders.count",), time_dimensions=self.td(None, month)), "daily")
        mid_day = ("2024-01-01T10:00:00.000", "2024-01-31T23:59:59.999")
        self.assertIsNone(self.used(measures=("Orders.count",), time_dimensions=self.td("month", mid_day)))
        self.assertEqual(rollup_granularity("month", ("2024-01-01T00:00:00.000", "2024-01-10T23:59:59.999")), "day")
        self.assertEqual(rollup_granularity("year", ("2024-01-01T00:00:00.000", "2024-12-31T23:59:59.999")), "year")
        self.assertEqual(granularity_of_instant("2024-01-01T00:00:00.000"), "year")
        self.assertEqual(granularity_of_instant("2024-01-08T00:00:00.000"), "week")
        self.assertEqual(granularity_of_instant("2024-01-09T10:00:00.000"), "hour")

    def test_what_no_rollup_answers(self) -> None:
        self.assertIsNone(self.used(measures=("Orders.count",), dimensions=("Orders.amount",)))
        self.assertIsNone(self.used(measures=("Orders.count",), filters=(FilterCondition("Orders.amount", "gt", ("5",)),)))
        self.assertIsNone(self.used(measures=("Orders.count",), filters=(
            FilterGroup("and", (FilterCondition("Orders.status", "equals", ("a",)),
                                FilterCondition("Orders.amount", "gt", ("5",)))),)))
        self.assertIsNone(self.used(measures=("Orders.count", "Items.count")))  # Orders fanned out by Items
        duckdb = compile_directory(self.directory, lambda _ds: "duckdb", lambda _ds: "duckdb")
        self.assertIsNone(duckdb.plan(Query(measures=("Orders.approxBuyers",))).rollup)  # an estimate cannot be summed
        self.assertIsNotNone(duckdb.plan(Query(measures=("Orders.count",))).rollup)
        self.assertIsNone(self.used(dimensions=("Orders.id", "Orders.status"), measures=("Orders.count",), ungrouped=True))

    def test_non_additive_measures_need_the_exact_rollup(self) -> None:
        self.assertEqual(self.used(measures=("Orders.average", "Orders.buyers"), dimensions=("Orders.status",),
                                   time_dimensions=self.td("week")), "weeklyAverage")
        self.assertIsNone(self.used(measures=("Orders.average",), dimensions=("Orders.status",),
                                    time_dimensions=self.td("month")))
        self.assertIsNone(self.used(measures=("Orders.average",), time_dimensions=self.td("week")))
        self.assertIsNone(self.used(measures=("Orders.average",), dimensions=("Orders.status",)))
        # every filter on a selected dimension is fine; a segment the rollup lacks is not
        self.assertEqual(self.used(measures=("Orders.average",), dimensions=("Orders.status",), time_dimensions=self.td("week"),
                                   filters=(FilterCondition("Orders.status", "equals", ("a",)),)), "weeklyAverage")
        self.assertIsNone(self.used(measures=("Orders.average",), dimensions=("Orders.status",),
                                    time_dimensions=self.td("week"), segments=("Orders.big",)))

    def test_read_sql(self) -> None:
        plan = self.compiled.plan(Query(measures=("Orders.count", "Orders.perOrder"), dimensions=("Users.state",),
                                        time_dimensions=self.td("month", ("2024-01-01T00:00:00.000", "2024-12-31T23:59:59.999")),
                                        filters=(FilterCondition("Orders.count", "gt", ("3",)),), segments=("Orders.big",),
                                        timezone="Europe/Berlin"))
        assert plan.rollup is not None
        self.assertEqual(plan.rollup.timezone, "Europe/Berlin")
        self.assertEqual(plan.rollup.date_range, ("2024-01-01T00:00:00.000", "2024-12-31T23:59:59.999"))
        self.assertEqual(plan.sql.display, (
            'SELECT "users__state" AS "users__state", DATE_TRUNC(\'MONTH\', "orders__created_at_day") AS "orders__created_at_month", '
            'COALESCE(SUM("orders__count"), 0) AS "orders__count", '
            'SUM("orders__total") / NULLIF(COALESCE(SUM("orders__count"), 0), 0) AS "orders__per_order" '
            'FROM prod_pre_aggregations.orders_daily AS "orders__daily" '
            'WHERE ("orders__created_at_day" >= CAST($1 AS TIMESTAMP) AND "orders__created_at_day" <= CAST($2 AS TIMESTAMP)) '
            'AND ("orders__big") GROUP BY 1, 2 HAVING (COALESCE(SUM("orders__count"), 0) > $3) ORDER BY 2 ASC LIMIT 10000'))
        self.assertEqual(plan.sql.params, ("2024-01-01T00:00:00.000", "2024-12-31T23:59:59.999", "3"))
        union, _total = plan.rollup.render(["s.orders_daily2024_a_b_c", "s.orders_daily2025_a_b_c"])
        self.assertIn('FROM (SELECT * FROM s.orders_daily2024_a_b_c UNION ALL SELECT * FROM s.orders_daily2025_a_b_c) AS "orders__daily"',
                      union.text)

    def test_build_sql(self) -> None:
        build = self.compiled.planner.plan_rollup_build(self.compiled.model.pre_aggregations["Orders.daily"], "Asia/Kolkata",
                                                        ("2024-01-01T00:00:00.000", "2024-01-31T23:59:59.999"))
        rendered = build.render()
        self.assertIn("DATE_TRUNC('DAY', (CAST(\"orders\".created_at AS TIMESTAMPTZ) AT TIME ZONE 'Asia/Kolkata')) "
                      "AS \"orders__created_at_day\"", rendered.text)
        self.assertIn('"orders".amount > 500 AS "orders__big"', rendered.text)  # the segment as a column
        self.assertNotIn("ORDER BY", rendered.text)
        self.assertEqual(rendered.params, ("2023-12-31T18:30:00.000Z", "2024-01-31T18:29:59.999Z"))


TENANT_MODEL = """
cubes:
  - name: Orders
    sql: "SELECT * FROM public.orders WHERE {SECURITY_CONTEXT.tenant.filter('tenant_id')}"
    measures:
      - {name: count, type: count}
    dimensions:
      - {name: id, sql: id, type: number, primary_key: true}
      - {name: createdAt, sql: created_at, type: time}
    pre_aggregations:
      - {name: monthly, measures: [count], time_dimension: createdAt, granularity: month, partition_granularity: year}
      - {name: copy, type: original_sql}
"""


class SecurityContextBuildTests(TestCase):
    """A pre-aggregation's build SQL, original SQL and time bounds are rendered for a security
    context: its values are bound parameters (1 = 1 without one), as in a query."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "model.yml").write_text(dedent(TENANT_MODEL))
        self.compiled = compile_directory(directory, lambda _ds: "postgres", lambda _ds: "postgres")
        self.planner = self.compiled.planner
        self.monthly = self.compiled.model.pre_aggregations["Orders.monthly"]
        self.copy = self.compiled.model.pre_aggregations["Orders.copy"]

    def test_build_select_binds_the_context(self) -> None:
        for context, condition, params in (({"tenant": "a"}, "tenant_id = $1", ("a",)),
                                           ({"tenant": ["a", "b"]}, "tenant_id IN ($1, $2)", ("a", "b")),
                                           (None, "1 = 1", ())):
            rendered = self.planner.plan_rollup_build(self.monthly, "UTC", None, context).render()
            self.assertIn(f"WHERE {condition}", rendered.display)
            self.assertEqual(rendered.params, params)
            original = self.planner.plan_rollup_build(self.copy, "UTC", None, context).render()
            self.assertEqual(original.display, f'SELECT * FROM (SELECT * FROM public.orders WHERE {condition}) AS "orders"')
            self.assertEqual(original.params, params)
            bounds = self.planner.plan_rollup_bounds(self.monthly, "UTC", context)
            self.assertIn(f"WHERE {condition}", bounds.display)
            self.assertEqual(bounds.params, params)
        partition = self.planner.plan_rollup_build(self.monthly, "UTC", ("2024-01-01T00:00:00.000",
                                                                         "2024-12-31T23:59:59.999"), {"tenant": "a"})
        self.assertEqual(partition.render().params, ("a", "2024-01-01T00:00:00.000Z", "2024-12-31T23:59:59.999Z"))
