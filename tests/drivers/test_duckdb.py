"""The DuckDB driver on the built demo database (and on an in-memory one)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cubed.config import DataSourceSettings
from cubed.demo import ensure_demo_database
from cubed.drivers.base import Column
from cubed.drivers.duckdb import TIMEOUT_MESSAGE, DuckDBDriver, duckdb_error_message
from cubed.errors import DatabaseError, ServiceUnavailable

# Long enough to outlast any timeout used here (about a minute of work), interruptible.
ENDLESS = "SELECT sum(i * i) FROM range(30000000000) t(i)"


class DemoDatabaseDriverTests(unittest.TestCase):
    """Queries on the demo shop database file."""

    path: Path

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        # One file for the whole run, in trial's working directory (emptied at each run):
        # the first test builds it, the others find it complete and reuse it.
        self.path = yield ensure_demo_database(Path.cwd() / "duckdb-demo" / "demo.duckdb", reactor)

    @defer.inlineCallbacks
    def make_driver(self, **changes: Any) -> Any:
        threads = changes.pop("threads", None)
        settings = DataSourceSettings(db_type="duckdb", duckdb_path=self.path, **changes)
        driver = DuckDBDriver(settings, reactor, read_only=True, threads=threads)
        self.addCleanup(driver.close)
        yield driver.start()
        return driver

    @defer.inlineCallbacks
    def test_counts_are_strings(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute(
            "SELECT (SELECT count(*) FROM public.users), (SELECT count(*) FROM public.products), "
            "(SELECT count(*) FROM public.orders), (SELECT count(*) FROM main.line_items)", [],
        )
        self.assertEqual(result.rows, [("500", "100", "3000", "10000")])
        self.assertEqual({c.kind for c in result.columns}, {"number"})

    @defer.inlineCallbacks
    def test_decimals_keep_their_scale(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute("SELECT amount, amount * 2 FROM public.orders WHERE id = ?", [2])
        self.assertEqual(result.rows, [("872.00", "1744.00")])
        total = yield driver.execute("SELECT sum(price) FROM public.products WHERE id IN (1, 2)", [])
        # 340.37 + 475.32, as DECIMAL(38,2).
        self.assertEqual(total.rows, [("815.69",)])
        self.assertEqual(total.columns, (Column("sum(price)", "number"),))

    @defer.inlineCallbacks
    def test_timestamps_and_dates(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute(
            "SELECT created_at, completed_at, CAST(created_at AS DATE), date_trunc('month', created_at), "
            "TIMESTAMPTZ '2024-02-24 02:54:41.5+02' FROM public.orders WHERE id = 1", [],
        )
        self.assertEqual(result.rows, [(
            "2025-05-15T20:05:45.000", None, "2025-05-15T00:00:00.000", "2025-05-01T00:00:00.000",
            "2024-02-24T00:54:41.500",
        )])
        self.assertEqual([c.kind for c in result.columns], ["time", "time", "date", "time", "time"])

    @defer.inlineCallbacks
    def test_text_nulls_and_booleans(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute(
            "SELECT first_name, last_name, company, company IS NULL, id FROM public.users "
            "WHERE id IN (?, ?) ORDER BY id",
            [1, 30],
        )
        self.assertEqual(result.rows, [
            ("William", "Jones", None, True, 1),
            ("Joseph", 'Johnson "JJ"', 'Globex "International"', False, 30),
        ])
        self.assertEqual([c.kind for c in result.columns], ["string", "string", "string", "boolean", "number"])

    @defer.inlineCallbacks
    def test_params_are_bound(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute("SELECT count(*) FROM public.users WHERE city = ?", ["Coeur d'Alene"])
        self.assertNotEqual(result.rows, [("0",)])
        listed = yield driver.execute("SELECT count(*) FROM public.users WHERE list_contains(?, city)",
                                      [["Coeur d'Alene"]])
        self.assertEqual(listed.rows, result.rows)

    @defer.inlineCallbacks
    def test_concurrent_queries(self) -> Any:
        driver = yield self.make_driver(threads=4)
        sql = "SELECT count(*), sum(quantity) FROM public.line_items WHERE order_id % 8 = ?"
        expected = []
        for bucket in range(8):
            single = yield driver.execute(sql, [bucket])
            expected.append(single.rows)
        results = yield defer.gatherResults([driver.execute(sql, [bucket]) for bucket in range(8)])
        self.assertEqual([r.rows for r in results], expected)
        self.assertEqual(sum(int(rows[0][0]) for rows in expected), 10000)

    @defer.inlineCallbacks
    def test_error_is_a_database_error(self) -> Any:
        driver = yield self.make_driver(threads=1)
        error = yield self.assertFailure(driver.execute("SELECT * FROM foo", []), DatabaseError)
        self.assertTrue(error.message.startswith("Catalog Error: Table with name foo does not exist!"), error.message)
        self.assertNotIn("LINE 1", error.message)
        result = yield driver.execute("SELECT 1", [])
        self.assertEqual(result.rows, [(1,)])

    @defer.inlineCallbacks
    def test_timeout_interrupts_the_query(self) -> Any:
        # One worker thread: the next query can only run once the long one was interrupted.
        driver = yield self.make_driver(threads=1, query_timeout=0.3)
        started = time.monotonic()
        error = yield self.assertFailure(driver.execute(ENDLESS, [], name="endless"), DatabaseError)
        self.assertEqual(error.message, TIMEOUT_MESSAGE)
        self.assertLess(time.monotonic() - started, 1.5)
        result = yield driver.execute("SELECT 42", [])
        self.assertEqual(result.rows, [(42,)])
        self.assertLess(time.monotonic() - started, 3.0)

    @defer.inlineCallbacks
    def test_cancel_interrupts_the_query(self) -> Any:
        driver = yield self.make_driver(threads=1)
        running = driver.execute(ENDLESS, [], name="endless")
        yield task.deferLater(reactor, 0.2, lambda: None)
        started = time.monotonic()
        running.cancel()
        yield self.assertFailure(running, defer.CancelledError)
        result = yield driver.execute("SELECT 7", [])
        self.assertEqual(result.rows, [(7,)])
        self.assertLess(time.monotonic() - started, 2.0)

    @defer.inlineCallbacks
    def test_close_fails_running_queries(self) -> Any:
        driver = yield self.make_driver(threads=1)
        running = driver.execute(ENDLESS, [])
        queued = driver.execute("SELECT 1", [])
        yield task.deferLater(reactor, 0.2, lambda: None)
        started = time.monotonic()
        yield driver.close()
        self.assertLess(time.monotonic() - started, 3.0)
        yield self.assertFailure(running, ServiceUnavailable)
        yield self.assertFailure(queued, ServiceUnavailable)
        yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    @defer.inlineCallbacks
    def test_test_connection(self) -> Any:
        driver = yield self.make_driver()
        value = yield driver.test_connection()
        self.assertIsNone(value)


class DuckDBDriverTests(unittest.TestCase):
    """Driver behaviour that needs no demo file."""

    @defer.inlineCallbacks
    def test_memory_database_is_shared_by_all_threads(self) -> Any:
        driver = DuckDBDriver(DataSourceSettings(db_type="duckdb"), reactor, threads=4)
        self.addCleanup(driver.close)
        yield driver.start()
        yield driver.execute("CREATE TABLE t AS SELECT range AS x FROM range(100)", [])
        results = yield defer.gatherResults(
            [driver.execute("SELECT count(*) FROM t WHERE x < ?", [n]) for n in range(8)]
        )
        self.assertEqual([r.rows for r in results], [[(str(n),)] for n in range(8)])

    @defer.inlineCallbacks
    def test_unopenable_file_fails_start(self) -> Any:
        path = Path(self.mktemp()) / "missing-directory" / "db.duckdb"
        driver = DuckDBDriver(DataSourceSettings(db_type="duckdb", duckdb_path=path), reactor)
        self.addCleanup(driver.close)
        error = yield self.assertFailure(driver.start(), ServiceUnavailable)
        self.assertIn("database unavailable", error.message)
        yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    def test_execute_before_start(self) -> Any:
        driver = DuckDBDriver(DataSourceSettings(db_type="duckdb"), reactor)
        return self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    def test_error_message_drops_the_excerpt(self) -> None:
        error = Exception('Catalog Error: Table with name foo does not exist!\nDid you mean "orders"?\n\n'
                          "LINE 1: select * from foo\n                      ^")
        self.assertEqual(duckdb_error_message(error),
                         'Catalog Error: Table with name foo does not exist! Did you mean "orders"?')
