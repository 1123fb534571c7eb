"""The bundled demo data set: the DuckDB build, its exact values, the model files, the CLI."""
from __future__ import annotations

import csv
import gzip
import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import duckdb
from twisted.internet import defer, reactor
from twisted.trial import unittest

from cubed.demo import (
    DEMO_TABLES,
    build_demo_database,
    demo_csv,
    demo_model_dir,
    demo_row_counts,
    ensure_demo_database,
)
from cubed.demo.__main__ import main

#: The conformance data set, copied into the checkout from ../shared/conformance/data.
CONFORMANCE_DATA = Path(__file__).resolve().parent / "conformance" / "data"
EXPECTED_COUNTS = {"users": 500, "products": 100, "orders": 3000, "line_items": 10000}


def read_csv(table: str) -> list[dict[str, str]]:
    """Return the rows of a bundled CSV as text, exactly as written (empty = NULL)."""
    with gzip.open(demo_csv(table), "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


class BuildTests(unittest.TestCase):
    """build_demo_database on a fresh path."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.path = build_demo_database(self.directory / "demo.duckdb")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        connection = duckdb.connect(str(self.path), read_only=True)
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()

    def test_row_counts(self) -> None:
        self.assertEqual(demo_row_counts(self.path), EXPECTED_COUNTS)
        self.assertEqual({t.name: t.rows for t in DEMO_TABLES}, EXPECTED_COUNTS)

    def test_no_temporary_files_are_left(self) -> None:
        self.assertEqual(sorted(p.name for p in self.directory.iterdir()), ["demo.duckdb"])

    def test_second_build_is_a_no_op(self) -> None:
        before = self.path.stat()
        self.assertEqual(build_demo_database(self.path), self.path)
        after = self.path.stat()
        self.assertEqual((before.st_ino, before.st_mtime_ns), (after.st_ino, after.st_mtime_ns))

    def test_public_schema_resolves_like_postgres(self) -> None:
        for table in EXPECTED_COUNTS:
            self.assertEqual(self.query(f"SELECT count(*) FROM public.{table}"), [(EXPECTED_COUNTS[table],)])

    def test_column_types_follow_the_postgres_schema(self) -> None:
        types = dict(self.query(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main'"
        ))
        self.assertEqual(types["orders.amount"], "DECIMAL(12,2)")
        self.assertEqual(types["products.price"], "DECIMAL(10,2)")
        self.assertEqual(types["line_items.price"], "DECIMAL(10,2)")
        self.assertEqual(types["orders.created_at"], "TIMESTAMP")
        self.assertEqual(types["users.id"], "INTEGER")
        self.assertEqual(types["users.company"], "VARCHAR")

    def test_text_round_trips_exactly(self) -> None:
        for table, columns in (
            ("users", ("first_name", "last_name", "city", "state", "gender", "company")),
            ("products", ("name", "category")),
        ):
            expected = [
                tuple(row[c] if row[c] != "" else None for c in columns) for row in read_csv(table)
            ]
            actual = self.query(f"SELECT {', '.join(columns)} FROM main.{table} ORDER BY id")
            self.assertEqual(actual, expected)
        # The awkward values are really in there (unicode, quotes, commas, apostrophes).
        names = self.query("SELECT first_name, last_name, company FROM main.users WHERE id IN (4, 30) ORDER BY id")
        self.assertEqual(names, [("Łukasz", "Núñez", "Stark Industries"),
                                 ("Joseph", 'Johnson "JJ"', 'Globex "International"')])

    def test_numbers_and_timestamps_round_trip(self) -> None:
        rows = read_csv("orders")
        expected = [
            (int(r["id"]), r["amount"] or None, r["created_at"], r["completed_at"] or None) for r in rows
        ]
        actual = self.query(
            "SELECT id, CAST(amount AS VARCHAR), strftime(created_at, '%Y-%m-%d %H:%M:%S'), "
            "strftime(completed_at, '%Y-%m-%d %H:%M:%S') FROM main.orders ORDER BY id"
        )
        self.assertEqual(actual, expected)

    def test_other_files_are_not_overwritten(self) -> None:
        other = self.directory / "mine.duckdb"
        connection = duckdb.connect(str(other))
        connection.execute("CREATE TABLE precious AS SELECT 1 AS x")
        connection.close()
        self.assertRaises(FileExistsError, build_demo_database, other)
        connection = duckdb.connect(str(other), read_only=True)
        self.assertEqual(connection.execute("SELECT x FROM precious").fetchall(), [(1,)])
        connection.close()

    def test_not_a_database_is_not_overwritten(self) -> None:
        other = self.directory / "notes.duckdb"
        other.write_text("not a database")
        self.assertRaises(FileExistsError, build_demo_database, other)
        self.assertEqual(other.read_text(), "not a database")


class EnsureTests(unittest.TestCase):
    """ensure_demo_database works off the reactor thread."""

    @defer.inlineCallbacks
    def test_ensure(self) -> Any:
        target = Path(self.mktemp()) / "nested" / "demo.duckdb"
        path = yield ensure_demo_database(target, reactor)
        self.assertEqual(path, target)
        self.assertEqual(demo_row_counts(path), EXPECTED_COUNTS)


class CommandLineTests(unittest.TestCase):
    """python -m cubed.demo build PATH."""

    def test_build_prints_row_counts(self) -> None:
        target = Path(self.mktemp()) / "demo.duckdb"
        output = io.StringIO()
        with redirect_stdout(output):
            status = main(["build", str(target)])
        self.assertEqual(status, 0)
        self.assertEqual(output.getvalue().splitlines(),
                         ["users 500", "products 100", "orders 3000", "line_items 10000"])
        self.assertTrue(target.exists())


class BundledFilesTests(unittest.TestCase):
    """The data and model files shipped in the package."""

    def test_model_files(self) -> None:
        self.assertEqual(sorted(p.name for p in demo_model_dir().glob("*.yml")),
                         ["line_items.yml", "orders.yml", "products.yml", "users.yml"])
        self.assertIn("sql: SELECT * FROM public.orders", (demo_model_dir() / "orders.yml").read_text())

    def test_csv_headers(self) -> None:
        for table in DEMO_TABLES:
            with gzip.open(demo_csv(table.name), "rt", encoding="utf-8") as handle:
                header = handle.readline().strip().split(",")
            self.assertEqual(header, [column for column, _, _ in table.columns])

    def test_csvs_are_the_conformance_bytes(self) -> None:
        for table in EXPECTED_COUNTS:
            with gzip.open(demo_csv(table), "rb") as handle:
                bundled = handle.read()
            self.assertEqual(bundled, (CONFORMANCE_DATA / f"{table}.csv").read_bytes(), table)

    def test_gzip_files_are_reproducible(self) -> None:
        # No file name or timestamp in the gzip header, so rebuilding them gives the same bytes.
        for table in EXPECTED_COUNTS:
            header = demo_csv(table).read_bytes()[:10]
            self.assertEqual(header[4:8], b"\x00\x00\x00\x00", table)
            self.assertEqual(header[3] & 0x08, 0, table)
