"""The model registry: loading off the reactor thread, and keeping the last good model."""
from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cubed.errors import ModelError
from cubed.model.registry import ModelRegistry

GOOD = """
cubes:
  - name: Orders
    sql_table: public.orders
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
"""


class RegistryTests(TestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir()
        (self.directory / "orders.yml").write_text(GOOD)
        self.registry = ModelRegistry(self.directory, lambda _ds: "postgres", lambda _ds: "postgres", reactor)

    async def test_reload_keeps_the_last_good_model(self) -> None:
        first = self.registry.load_now()
        (self.directory / "orders.yml").write_text(GOOD.replace("sql: id", "sql: '{nope}'"))
        with self.assertRaises(ModelError) as caught:
            await self.registry.reload()
        self.assertIn("member 'id'", str(caught.exception))
        self.assertIs(self.registry.current, first)
        (self.directory / "orders.yml").write_text(GOOD + "      - name: status\n        sql: status\n        type: string\n")
        second = await self.registry.reload()
        self.assertIs(self.registry.current, second)
        self.assertNotEqual(second.model.version, first.model.version)
        self.assertIn("status", second.model.cubes["Orders"].dimensions)


TENANT_MODEL = """
cubes:
  - name: Orders
    sql: "SELECT * FROM orders WHERE {SECURITY_CONTEXT.shop.id.filter('shop_id')}"
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
"""


class SecurityContextKeyTests(TestCase):
    """Plans are shared by contexts that agree on the paths the model reads."""

    def test_only_the_paths_read_tell_contexts_apart(self) -> None:
        from cubed.model.registry import compile_directory
        from cubed.query.types import Query

        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "orders.yml").write_text(TENANT_MODEL)
        compiled = compile_directory(directory, lambda _ds: "postgres", lambda _ds: "postgres")
        self.assertEqual(compiled.security_paths, ("shop.id",))
        first = {"shop": {"id": 1}, "iat": 1, "exp": 100}
        renewed = {"shop": {"id": 1, "name": "x"}, "iat": 50, "exp": 150}
        other = {"shop": {"id": 2}, "iat": 1}
        self.assertEqual(compiled.context_key(first), compiled.context_key(renewed))
        self.assertNotEqual(compiled.context_key(first), compiled.context_key(other))
        self.assertEqual(compiled.context_key({}), compiled.context_key({"shop": {"id": None}}))
        query = Query(measures=("Orders.count",))
        plan = compiled.plan(query, first)
        self.assertIs(compiled.plan(query, renewed), plan)
        self.assertIsNot(compiled.plan(query, other), plan)
        self.assertNotEqual(compiled.plan(query, other).sql.params, plan.sql.params)
