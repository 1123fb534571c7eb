"""The SQLite driver on a file loaded with the shop data (and on an in-memory database)."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cubed.config import DataSourceSettings, load_settings
from cubed.drivers.base import Column
from cubed.drivers.sqlite import TIMEOUT_MESSAGE, SQLiteDriver, parse_sqlite_time, sqlite_result
from cubed.errors import DatabaseError, ServiceUnavailable
from tests.support.shopdata import load_shop_sqlite

# Counts without end; only interrupt() stops it.
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"

_SHOP: dict[str, str] = {}


def shop_file() -> str:
    """Return the shop SQLite file of this test process (loaded at first use, in trial's
    working directory, which is emptied at each run)."""
    if "path" not in _SHOP:
        directory = Path.cwd() / "sqlite-shop"
        directory.mkdir(exist_ok=True)
        path = str(directory / f"shop-{os.getpid()}.sqlite")
        load_shop_sqlite(path)
        _SHOP["path"] = path
    return _SHOP["path"]


class ShopDatabaseTests(unittest.TestCase):
    """Queries on the shop database file."""

    @defer.inlineCallbacks
    def make_driver(self, **changes: Any) -> Any:
        threads = changes.pop("threads", None)
        settings = DataSourceSettings(db_type="sqlite", database=shop_file(), **changes)
        driver = SQLiteDriver(settings, reactor, threads=threads)
        self.addCleanup(driver.close)
        yield driver.start()
        return driver

    @defer.inlineCallbacks
    def test_numbers_are_native(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT sum(quantity) FROM line_items), "
            "(SELECT amount FROM orders WHERE id = 2), (SELECT amount FROM orders WHERE id = 1)", [])
        self.assertEqual(result.rows, [(500, 30006, 872, 795.98)])
        self.assertEqual({c.kind for c in result.columns}, {"number"})

    @defer.inlineCallbacks
    def test_text_nulls_and_stored_times(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute("SELECT city, company, created_at FROM users WHERE id = ?", [1])
        self.assertEqual(result.rows, [("New York", None, "2025-08-26 19:01:54")])
        self.assertEqual(result.columns, (Column("city", "string"), Column("company", "other"),
                                          Column("created_at", "string")))

    @defer.inlineCallbacks
    def test_zone_and_truncation_functions_on_every_connection(self) -> Any:
        driver = yield self.make_driver(threads=3)
        sql = ("SELECT cubed_tz(created_at, 'Asia/Kolkata'), "
               "STRFTIME('%Y-%m-%dT00:00:00.000', cubed_tz(created_at, 'Asia/Kolkata'), 'weekday 0', '-6 days'), "
               "cubed_add_months(created_at, 1), lower('ÄÖÜ') FROM users WHERE id = ?")
        results = yield defer.gatherResults([driver.execute(sql, [1]) for _ in range(6)])
        for result in results:
            self.assertEqual(result.rows, [("2025-08-27T00:31:54.000", "2025-08-25T00:00:00.000",
                                            "2025-09-26T19:01:54.000", "äöü")])

    @defer.inlineCallbacks
    def test_blobs_are_hex_text(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute("SELECT x'0102ff', ?", [b"\x00a"])
        self.assertEqual(result.rows, [("\\x0102ff", "\\x0061")])

    @defer.inlineCallbacks
    def test_concurrent_queries(self) -> Any:
        driver = yield self.make_driver(threads=4)
        results = yield defer.gatherResults([
            driver.execute("SELECT count(*) FROM orders WHERE user_id = ?", [n]) for n in range(1, 21)
        ])
        self.assertEqual(len(results), 20)
        self.assertEqual(sum(r.rows[0][0] for r in results),
                         (yield driver.execute("SELECT count(*) FROM orders WHERE user_id BETWEEN 1 AND 20", [])).rows[0][0])

    @defer.inlineCallbacks
    def test_error_is_a_database_error(self) -> Any:
        driver = yield self.make_driver()
        failure = yield self.assertFailure(driver.execute("SELECT * FROM nope", []), DatabaseError)
        self.assertEqual(str(failure), "no such table: nope")
        # The connection is still good.
        result = yield driver.execute("SELECT 1", [])
        self.assertEqual(result.rows, [(1,)])

    @defer.inlineCallbacks
    def test_timeout_interrupts_the_query(self) -> Any:
        driver = yield self.make_driver(query_timeout=0.3, threads=1)
        failure = yield self.assertFailure(driver.execute(ENDLESS, []), DatabaseError)
        self.assertEqual(str(failure), TIMEOUT_MESSAGE)
        # The only worker thread is free again.
        result = yield driver.execute("SELECT 2", [])
        self.assertEqual(result.rows, [(2,)])

    @defer.inlineCallbacks
    def test_cancel_interrupts_the_query(self) -> Any:
        driver = yield self.make_driver(threads=1)
        running = driver.execute(ENDLESS, [])
        yield task.deferLater(reactor, 0.2, lambda: None)
        running.cancel()
        yield self.assertFailure(running, defer.CancelledError)
        result = yield driver.execute("SELECT 3", [])
        self.assertEqual(result.rows, [(3,)])

    @defer.inlineCallbacks
    def test_close_fails_running_queries(self) -> Any:
        driver = yield self.make_driver()
        running = driver.execute(ENDLESS, [])
        yield task.deferLater(reactor, 0.1, lambda: None)
        yield driver.close()
        yield self.assertFailure(running, ServiceUnavailable)
        yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    @defer.inlineCallbacks
    def test_test_connection(self) -> Any:
        driver = yield self.make_driver()
        yield driver.test_connection()


class SQLiteDriverTests(unittest.TestCase):

    @defer.inlineCallbacks
    def test_memory_database_is_shared_by_all_threads(self) -> Any:
        driver = SQLiteDriver(DataSourceSettings(db_type="sqlite"), reactor, threads=3)
        self.addCleanup(driver.close)
        yield driver.start()
        self.assertEqual(driver.path, ":memory:")
        yield driver.execute("CREATE TABLE t (x INTEGER)", [])
        yield defer.gatherResults([driver.execute("INSERT INTO t VALUES (?)", [n]) for n in range(10)])
        counts = yield defer.gatherResults([driver.execute("SELECT count(*) FROM t", []) for _ in range(6)])
        self.assertEqual({c.rows[0][0] for c in counts}, {10})

    @defer.inlineCallbacks
    def test_missing_file_fails_start(self) -> Any:
        path = Path(self.mktemp()) / "absent.sqlite"
        driver = SQLiteDriver(DataSourceSettings(db_type="sqlite", database=str(path)), reactor)
        self.addCleanup(driver.close)
        failure = yield self.assertFailure(driver.start(), ServiceUnavailable)
        self.assertIn("unable to open database file", str(failure))
        self.assertFalse(path.exists())

    @defer.inlineCallbacks
    def test_read_only_file(self) -> Any:
        path = Path(self.mktemp() + ".sqlite")
        connection = sqlite3.connect(str(path))
        connection.execute("CREATE TABLE t (x)")
        connection.close()
        driver = SQLiteDriver(DataSourceSettings(db_type="sqlite", database=str(path)), reactor, read_only=True)
        self.addCleanup(driver.close)
        yield driver.start()
        failure = yield self.assertFailure(driver.execute("INSERT INTO t VALUES (1)", []), DatabaseError)
        self.assertIn("readonly", str(failure))

    def test_settings_find_the_file_from_the_project(self) -> None:
        project = Path(self.mktemp()).resolve()
        project.mkdir()
        settings = load_settings({"CUBEJS_API_SECRET": "s", "CUBEJS_DB_TYPE": "sqlite", "CUBEJS_DB_NAME": "shop.sqlite"},
                                 project)
        self.assertEqual(settings.default_data_source.database, str(project / "shop.sqlite"))
        memory = load_settings({"CUBEJS_API_SECRET": "s", "CUBEJS_DB_TYPE": "sqlite", "CUBEJS_DB_NAME": ":memory:"},
                               project)
        self.assertEqual(memory.default_data_source.database, ":memory:")

    def test_execute_before_start(self) -> Any:
        driver = SQLiteDriver(DataSourceSettings(db_type="sqlite"), reactor)
        return self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    def test_parse_sqlite_time(self) -> None:
        self.assertEqual(str(parse_sqlite_time("2024-01-01 10:00:00")), "2024-01-01 10:00:00+00:00")
        self.assertEqual(str(parse_sqlite_time("2024-01-01T10:00:00.5+02:00")), "2024-01-01 08:00:00.500000+00:00")
        self.assertEqual(str(parse_sqlite_time("2024-01-01")), "2024-01-01 00:00:00+00:00")
        self.assertEqual(str(parse_sqlite_time(2460310.5)), "2024-01-01 00:00:00+00:00")
        self.assertIsNone(parse_sqlite_time("yesterday"))
        self.assertIsNone(parse_sqlite_time(b"2024-01-01"))

    def test_result_kinds_from_first_value(self) -> None:
        result = sqlite_result((("a",), ("b",), ("c",)), [(None, "x", b"\x01"), (1.5, None, None)])
        self.assertEqual([c.kind for c in result.columns], ["number", "string", "other"])
        self.assertEqual(result.rows, [(None, "x", "\\x01"), (1.5, None, None)])
