"""Pre-aggregation definitions: Cube's YAML forms compiled to PreAggregation, and every
invalid definition a ModelError naming the file, the cube and the pre-aggregation."""
from __future__ import annotations

from textwrap import dedent, indent

from twisted.trial.unittest import TestCase

from cubed.errors import ModelError
from cubed.model.intervals import Every
from tests.model.test_compile import compile_text

MODEL = """
cubes:
  - name: Orders
    sql_table: public.orders
    joins:
      - name: Users
        relationship: many_to_one
        sql: "{CUBE}.user_id = {Users}.id"
    measures:
      - name: count
        type: count
      - name: total
        type: sum
        sql: amount
      - name: runningTotal
        type: running_total
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
    segments:
      - name: big
        sql: "{CUBE}.amount > 500"
    pre_aggregations:
%s
  - name: Users
    sql_table: public.users
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
"""


def model_with(pre_aggregations: str) -> str:
    """Return the model with ``pre_aggregations`` (YAML list items) under Orders."""
    return MODEL % indent(dedent(pre_aggregations).strip("\n"), " " * 6)


class PreAggregationDefinitionTests(TestCase):
    def compile(self, pre_aggregations: str) -> dict:
        return compile_text(self, model_with(pre_aggregations)).pre_aggregations

    def assertRefused(self, pre_aggregations: str, *fragments: str) -> None:
        with self.assertRaises(ModelError) as caught:
            self.compile(pre_aggregations)
        message = str(caught.exception)
        self.assertIn("shop.yml", message)
        self.assertIn("cube 'Orders'", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_rollup_with_every_property(self) -> None:
        found = self.compile("""
            - name: main
              type: rollup
              measures: [total, count, Users.count]
              dimensions: [status, Users.state]
              segments: [big]
              timeDimension: CUBE.createdAt
              granularity: day
              partitionGranularity: month
              refreshKey:
                every: 2 hours
                incremental: true
                updateWindow: 3 day
              buildRangeStart:
                sql: SELECT NOW() - interval '1 year'
              build_range_end:
                sql: SELECT NOW()
              indexes:
                - name: by_status
                  columns: [status, createdAt]
              scheduled_refresh: false
              sql_alias: m
        """)
        main = found["Orders.main"]
        self.assertEqual(main.measures, ("Orders.count", "Orders.total", "Users.count"))  # sorted, as Cube sorts
        self.assertEqual(main.dimensions, ("Orders.status", "Users.state"))
        self.assertEqual(main.segments, ("Orders.big",))
        self.assertEqual((main.time_dimension, main.granularity, main.partition_granularity),
                         ("Orders.createdAt", "day", "month"))
        self.assertEqual(main.refresh.every, Every(7200.0))
        self.assertTrue(main.refresh.incremental)
        self.assertEqual(main.refresh.update_window, 3 * 86400.0)
        self.assertEqual(main.build_range_start, "SELECT NOW() - interval '1 year'")
        self.assertEqual(main.indexes, (("by_status", ("Orders.status", "Orders.createdAt")),))
        self.assertFalse(main.scheduled_refresh)
        self.assertEqual(main.sql_alias, "m")

    def test_defaults_and_original_sql(self) -> None:
        found = self.compile("""
            - name: counts
              measures: [count]
            - name: source
              type: originalSql
              refresh_key:
                sql: SELECT max(id) FROM public.orders
        """)
        self.assertEqual(found["Orders.counts"].type, "rollup")
        self.assertTrue(found["Orders.counts"].scheduled_refresh)
        self.assertEqual(found["Orders.source"].type, "original_sql")
        self.assertEqual(found["Orders.source"].refresh.sql, "SELECT max(id) FROM public.orders")

    def test_invalid_definitions(self) -> None:
        cases = [
            ("- name: x\n  measures: [count]\n  colour: red", "unknown property: colour"),
            ("- name: x\n  type: rollupJoin", "needs Cube Store"),
            ("- name: x\n  type: cube", "type must be one of rollup, original_sql"),
            ("- name: x\n  measures: [nope]", "measure 'nope' not found"),
            ("- name: x\n  dimensions: [Users.nope]", "dimension 'Users.nope' not found"),
            ("- name: x\n  measures: count", "measures must be a list"),
            ("- name: x\n  measures: [runningTotal]", "rolling window / running total"),
            ("- name: x\n  time_dimension: status\n  granularity: day", "is not a time dimension"),
            ("- name: x\n  time_dimension: createdAt", "time_dimension and granularity go together"),
            ("- name: x\n  time_dimension: createdAt\n  granularity: fortnight", "granularity must be one of"),
            ("- name: x\n  measures: [count]\n  partition_granularity: month", "partition_granularity needs a time_dimension"),
            ("- name: x\n  time_dimension: createdAt\n  granularity: day\n  partition_granularity: minute",
             "partition_granularity must be one of"),
            ("- name: x\n  type: original_sql\n  measures: [count]", "original_sql pre-aggregation has no measures"),
            ("- name: x\n  measures: [count]\n  refresh_key:\n    every: sometimes", "refresh_key"),
            ("- name: x\n  measures: [count]\n  refresh_key:\n    update_window: a while", "update_window must be like"),
            ("- name: x\n  measures: [count]\n  refresh_key:\n    often: true", "unknown refresh_key property: often"),
            ("- name: x\n  measures: [count]\n  indexes:\n    - columns: [status]", "every index needs a name"),
            ("- name: x\n  measures: [count]\n  indexes:\n    - name: i\n      columns: [nope]", "'nope' not found"),
            ("- name: x\n  measures: [count]\n  build_range_start: NOW()", "build_range_start must be a mapping with sql"),
            ("- name: my rollup\n  measures: [count]", "name must be an identifier"),
            ("- name: x\n  measures: [count]\n  sql_alias: a-b", "sql_alias must be an identifier"),
            ("- name: x\n  measures: [count]\n  use_original_sql_pre_aggregations: true", "not supported by cubed"),
        ]
        for text, fragment in cases:
            with self.subTest(text=text):
                self.assertRefused(text, fragment)
