"""Model loading and /v1/meta against the real Cube's recorded answer for the same model."""
from __future__ import annotations

import json
from pathlib import Path

from twisted.trial.unittest import TestCase

from cubed.model.compile import ModelCompiler
from cubed.model.joins import JoinGraph
from cubed.model.loader import load_directory
from cubed.model.meta import ModelMeta, alias_name, titleize

CONFORMANCE = Path(__file__).resolve().parent.parent / "conformance"


def conformance_meta() -> ModelMeta:
    """Return the meta of the conformance model compiled for PostgreSQL."""
    model = ModelCompiler(lambda _ds: "postgres").compile(load_directory(CONFORMANCE / "model"))
    return ModelMeta(model, JoinGraph(model))


class TitleTests(TestCase):
    def test_titles_follow_cube_032(self) -> None:
        cases = {
            "createdAt": "Created at", "LineItems": "Line Items", "firstName": "First Name",
            "fromCalifornia": "From California", "users_orders": "Users Orders", "isCalifornian": "Is Californian",
            "completedAt": "Completed at", "orderId": "Order Id", "top10items": "Top10 Items", "inStock": "In Stock",
            "priceInUSD": "Price in Usd", "name_of_the_game": "Name of the Game",
        }
        for name, expected in cases.items():
            self.assertEqual(titleize(name), expected, name)

    def test_alias_names(self) -> None:
        self.assertEqual(alias_name("LineItems.createdAt"), "line_items__created_at")
        self.assertEqual(alias_name("Orders.count"), "orders__count")
        self.assertEqual(alias_name("Orders.count", "o"), "o__count")


class MetaTests(TestCase):
    def test_meta_equals_cube(self) -> None:
        expected = json.loads((CONFORMANCE / "cases" / "003_meta.json").read_text())["expect"]["body"]
        actual = conformance_meta().meta_response(show_hidden=False)
        self.assertEqual([c["name"] for c in actual["cubes"]], [c["name"] for c in expected["cubes"]])
        for got, want in zip(actual["cubes"], expected["cubes"]):
            self.assertEqual(got, want, got["name"])

    def test_dev_mode_shows_hidden_primary_keys(self) -> None:
        meta = conformance_meta()
        hidden = meta.meta_response(show_hidden=False)
        shown = meta.meta_response(show_hidden=True)
        names = lambda body: {d["name"] for c in body["cubes"] for d in c["dimensions"]}  # noqa: E731
        self.assertNotIn("LineItems.id", names(hidden))
        self.assertIn("LineItems.id", names(shown))
        self.assertIsNone(meta.visible_description("LineItems.id", show_hidden=False))
