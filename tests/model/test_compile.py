"""Model compilation: Cube's YAML forms accepted, and every model error naming file, cube, member."""
from __future__ import annotations

from pathlib import Path
from textwrap import dedent

from twisted.trial.unittest import TestCase

from cubed.errors import ModelError
from cubed.model.compile import ModelCompiler
from cubed.model.joins import JoinGraph
from cubed.model.loader import load_directory
from cubed.model.schema import Model


def compile_text(testcase: TestCase, text: str, name: str = "shop.yml") -> Model:
    """Return the model compiled from one YAML file written into a temporary directory."""
    directory = Path(testcase.mktemp())
    directory.mkdir()
    (directory / name).write_text(dedent(text), encoding="utf-8")
    return ModelCompiler(lambda _ds: "postgres").compile(load_directory(directory))


BASE = """
cubes:
  - name: Orders
    sql_table: public.orders
    joins:
      - name: Users
        relationship: belongs_to
        sql: "{CUBE}.user_id = {Users}.id"
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primaryKey: true
  - name: Users
    sql: SELECT * FROM public.users
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
"""


class CompileTests(TestCase):
    def assertModelError(self, text: str, *fragments: str) -> None:
        with self.assertRaises(ModelError) as caught:
            compile_text(self, text)
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_camel_and_snake_keys_and_legacy_relationships(self) -> None:
        model = compile_text(self, BASE)
        self.assertEqual(model.cubes["Orders"].primary_keys, ("id",))
        self.assertEqual(model.cubes["Orders"].joins[0].relationship, "many_to_one")
        self.assertEqual(JoinGraph(model).build(("Orders", "Users")).root, "Orders")

    def test_unknown_reference_names_file_cube_member(self) -> None:
        self.assertModelError(BASE + """
  - name: Broken
    sql_table: t
    dimensions:
      - name: label
        sql: "{CUBE}.x || {nothing}"
        type: string
""", "shop.yml", "cube 'Broken'", "member 'label'", "{nothing}")

    def test_duplicate_member(self) -> None:
        self.assertModelError("""
cubes:
  - name: A
    sql_table: t
    dimensions:
      - name: x
        sql: x
        type: string
    measures:
      - name: x
        type: count
""", "cube 'A'", "'x' is defined twice")

    def test_bad_relationship(self) -> None:
        self.assertModelError(BASE.replace("belongs_to", "sideways"), "cube 'Orders'", "join 'Users'", "relationship")

    def test_join_needs_primary_key(self) -> None:
        self.assertModelError(BASE.replace("        primaryKey: true\n", ""),
                              "primary key for 'Orders' is required when join is defined")

    def test_sql_and_sql_table(self) -> None:
        self.assertModelError("""
cubes:
  - name: A
    sql: select 1
    sql_table: t
""", "You must use either sql or sqlTable within a model, but not both")

    def test_unknown_property_and_type(self) -> None:
        self.assertModelError("""
cubes:
  - name: A
    sql_table: t
    measures:
      - name: m
        type: median
        sql: x
""", "member 'm'", "measure type must be one of")
        self.assertModelError("""
cubes:
  - name: A
    sql_table: t
    dimensions:
      - name: d
        sql: x
        type: string
        colour: red
""", "member 'd'", "unknown property: colour")

    def test_circular_reference(self) -> None:
        self.assertModelError("""
cubes:
  - name: A
    sql_table: t
    dimensions:
      - name: a
        sql: "{b} + 1"
        type: number
      - name: b
        sql: "{a} + 1"
        type: number
""", "circular reference")

    def test_unparseable_sql_and_yaml(self) -> None:
        self.assertModelError("""
cubes:
  - name: A
    sql_table: t
    dimensions:
      - name: d
        sql: "x +* (("
        type: number
""", "member 'd'", "cannot parse sql")
        self.assertModelError("cubes: [name: A", "shop.yml", "invalid YAML")
        self.assertModelError("widgets: []", "Unexpected YAML key: widgets")

    def test_extends_inherits_members(self) -> None:
        model = compile_text(self, BASE + """
  - name: BigOrders
    extends: Orders
    sql: SELECT * FROM public.orders WHERE amount > 500
    measures:
      - name: total
        type: sum
        sql: amount
""")
        big = model.cubes["BigOrders"]
        self.assertEqual(list(big.measures), ["count", "total"])
        self.assertEqual(big.primary_keys, ("id",))
        self.assertIsNone(big.sql_table)
        self.assertEqual(big.joins[0].target, "Users")

    def test_unknown_join_target(self) -> None:
        self.assertModelError(BASE.replace("name: Users\n        relationship", "name: Nobody\n        relationship"),
                              "Cube Nobody doesn't exist")


VIEWS = BASE + """
views:
  - name: Shop
    cubes:
      - join_path: Orders
        includes: "*"
        excludes: [id]
      - join_path: Orders.Users
        prefix: true
        alias: customer
        includes:
          - name: count
            alias: customers
            title: Customers
"""


class ViewTests(TestCase):
    def test_view_members_expose_cube_members_with_their_join_path(self) -> None:
        model = compile_text(self, VIEWS)
        view = model.cubes["Shop"]
        self.assertTrue(view.is_view)
        self.assertEqual(list(view.measures), ["count", "customers"])
        self.assertEqual(view.measures["customers"].alias_of, "Users.count")
        self.assertEqual(view.measures["customers"].join_path, ("Orders", "Users"))
        self.assertEqual(view.measures["customers"].title, "Customers")
        self.assertNotIn("id", view.dimensions)

    def test_view_errors(self) -> None:
        with self.assertRaises(ModelError) as caught:
            compile_text(self, VIEWS.replace("join_path: Orders.Users", "join_path: Users.Orders"))
        self.assertIn("view 'Shop'", str(caught.exception))
        self.assertIn("'Users' has no join to 'Orders'", str(caught.exception))
        with self.assertRaises(ModelError) as caught:
            compile_text(self, VIEWS.replace("            alias: customers\n", "").replace("prefix: true", "prefix: false"))
        self.assertIn("included twice", str(caught.exception))
