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
