"""The MySQL driver against the test MariaDB (``CUBED_TEST_MYSQL_URL``, default
``mysql://root@127.0.0.1:3306/``) on a database of its own loaded with the shop data; skipped
without the server (failed under ``CUBED_REQUIRE_SERVICES=1``)."""
from __future__ import annotations

import atexit
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from cubed.config import DataSourceSettings
from cubed.drivers import mysql as mysql_module
from cubed.drivers.mysql import (
    TIMEOUT_MESSAGE,
    ZONE_TABLES_MESSAGE,
    MySQLDriver,
    connection_params,
    mysql_datetime_text,
)
from cubed.errors import ConfigError, DatabaseError, ServiceUnavailable
from tests.support.services import free_port, require_mysql
from tests.support.shopdata import (
    create_mysql_database_blocking,
    drop_mysql_database_blocking,
    load_shop_mysql,
    mysql_settings,
)

# Runs for minutes unless killed.
ENDLESS = "SELECT BENCHMARK(100000000000, MD5('cubed'))"

_SHOP: dict[str, str] = {}


def shop_database() -> str:
    """Return this process's shop database on the test server (created and loaded at first
    use, dropped at exit). Blocking."""
    if "name" not in _SHOP:
        name = create_mysql_database_blocking()
        atexit.register(drop_mysql_database_blocking, name)
        load_shop_mysql(name)
        _SHOP["name"] = name
    return _SHOP["name"]


class ShopDatabaseTests(unittest.TestCase):
    """Queries on the shop database."""

    def setUp(self) -> None:
        require_mysql()

    @defer.inlineCallbacks
    def make_driver(self, **changes: Any) -> Any:
        threads = changes.pop("threads", None)
        database = yield deferToThread(shop_database)
        driver = MySQLDriver(mysql_settings(database, **changes), reactor, threads=threads)
        self.addCleanup(driver.close)
        yield driver.start()
        return driver

    @defer.inlineCallbacks
    def test_integers_are_numbers_and_decimals_exact_text(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT sum(quantity) FROM line_items), "
            "(SELECT amount FROM orders WHERE id = %s), (SELECT sum(price) FROM products WHERE id IN (1, 2)), "
            "(SELECT CAST(1.5 AS DOUBLE))", [2])
        self.assertEqual(result.rows, [(500, "30006", "872.00", "815.69", 1.5)])
        self.assertEqual({c.kind for c in result.columns}, {"number"})

    @defer.inlineCallbacks
    def test_times_dates_text_and_nulls(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute(
            "SELECT orders.created_at, completed_at, DATE(orders.created_at), CAST('2024-01-02 03:04:05.678912' AS DATETIME(6)), "
            "city, company, X'0102' FROM orders JOIN users ON users.id = orders.user_id WHERE orders.id = %s", [2])
        self.assertEqual(result.rows, [("2024-02-24T02:54:41.000", None, "2024-02-24T00:00:00.000",
                                        "2024-01-02T03:04:05.678", "Chicago", "O'Reilly Media", "\\x0102")])
        self.assertEqual([c.kind for c in result.columns], ["time", "time", "date", "time", "string", "string", "string"])

    @defer.inlineCallbacks
    def test_session_is_utc(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute("SELECT @@session.time_zone, FROM_UNIXTIME(0)", [])
        self.assertEqual(result.rows, [("+00:00", "1970-01-01T00:00:00.000")])

    @defer.inlineCallbacks
    def test_percent_and_params(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute("SELECT DATE_FORMAT('2024-05-06', '%%Y/%%m'), %s, %s", ["50%", None])
        self.assertEqual(result.rows, [("2024/05", "50%", None)])
        bare = yield driver.execute("SELECT '100%%'", [])
        self.assertEqual(bare.rows, [("100%",)])

    @defer.inlineCallbacks
    def test_named_zones_convert(self) -> Any:
        driver = yield self.make_driver()
        result = yield driver.execute(
            "SELECT CONVERT_TZ(CAST('2024-10-27 00:30:00' AS DATETIME), '+00:00', 'Europe/Berlin'), "
            "CONVERT_TZ(CAST('2024-10-27 01:30:00' AS DATETIME), '+00:00', 'Europe/Berlin')", [])
        self.assertEqual(result.rows, [("2024-10-27T02:30:00.000", "2024-10-27T02:30:00.000")])

    @defer.inlineCallbacks
    def test_missing_zone_tables_fail_zone_queries_with_how_to_load_them(self) -> Any:
        driver = yield self.make_driver()
        # Stand in for a server without time zone tables: the check answers NULL.
        self.patch(mysql_module, "_ZONE_CHECK_SQL", "SELECT NULL")
        driver._zones_loaded = None
        failure = yield self.assertFailure(
            driver.execute("SELECT CONVERT_TZ(created_at, '+00:00', 'America/Los_Angeles') FROM orders LIMIT 1", []),
            DatabaseError)
        self.assertEqual(str(failure), ZONE_TABLES_MESSAGE)
        # UTC and offsets need no tables.
        result = yield driver.execute("SELECT CONVERT_TZ('2024-01-01 00:00:00', '+00:00', '-08:00')", [])
        self.assertEqual(result.rows, [("2023-12-31T16:00:00.000",)])

    @defer.inlineCallbacks
    def test_error_is_a_database_error(self) -> Any:
        driver = yield self.make_driver()
        failure = yield self.assertFailure(driver.execute("SELECT * FROM nope", []), DatabaseError)
        self.assertRegex(str(failure), r"^Table '.*\.nope' doesn't exist$")
        result = yield driver.execute("SELECT 1", [])
        self.assertEqual(result.rows, [(1,)])

    @defer.inlineCallbacks
    def test_timeout_stops_the_query(self) -> Any:
        driver = yield self.make_driver(query_timeout=0.5, threads=1)
        started = reactor.seconds()
        failure = yield self.assertFailure(driver.execute(ENDLESS, []), DatabaseError)
        self.assertEqual(str(failure), TIMEOUT_MESSAGE)
        # The only worker thread is free again soon.
        result = yield driver.execute("SELECT 2", [])
        self.assertEqual(result.rows, [(2,)])
        self.assertLess(reactor.seconds() - started, 10)

    @defer.inlineCallbacks
    def test_cancel_kills_the_query(self) -> Any:
        driver = yield self.make_driver(threads=1)
        running = driver.execute(ENDLESS, [])
        yield task.deferLater(reactor, 0.3, lambda: None)
        started = reactor.seconds()
        running.cancel()
        yield self.assertFailure(running, defer.CancelledError)
        result = yield driver.execute("SELECT 3", [])
        self.assertEqual(result.rows, [(3,)])
        self.assertLess(reactor.seconds() - started, 10)

    @defer.inlineCallbacks
    def test_lost_connection_reconnects(self) -> Any:
        driver = yield self.make_driver(threads=1)
        first = yield driver.execute("SELECT CONNECTION_ID()", [])
        # Another session kills this one's connection: the next query fails as unavailable,
        # the one after runs on a new connection.
        other = MySQLDriver(driver._settings, reactor, threads=1)
        self.addCleanup(other.close)
        yield other.start()
        yield other.execute(f"KILL CONNECTION {int(first.rows[0][0])}", [])
        yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)
        again = yield driver.execute("SELECT CONNECTION_ID()", [])
        self.assertNotEqual(again.rows, first.rows)

    @defer.inlineCallbacks
    def test_close_fails_running_queries(self) -> Any:
        driver = yield self.make_driver()
        running = driver.execute(ENDLESS, [])
        yield task.deferLater(reactor, 0.2, lambda: None)
        yield driver.close()
        yield self.assertFailure(running, ServiceUnavailable)
        yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    @defer.inlineCallbacks
    def test_test_connection(self) -> Any:
        driver = yield self.make_driver()
        yield driver.test_connection()


class MySQLDriverTests(unittest.TestCase):

    @defer.inlineCallbacks
    def test_unreachable_server_is_unavailable(self) -> Any:
        settings = DataSourceSettings(db_type="mysql", host="127.0.0.1", port=free_port(), user="root")
        driver = MySQLDriver(settings, reactor)
        self.addCleanup(driver.close)
        failure = yield self.assertFailure(driver.start(), ServiceUnavailable)
        self.assertIn("Can't connect to MySQL server", str(failure))
        yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    @defer.inlineCallbacks
    def test_unknown_database_is_unavailable(self) -> Any:
        require_mysql()
        driver = MySQLDriver(mysql_settings("cubed_no_such_database"), reactor)
        self.addCleanup(driver.close)
        failure = yield self.assertFailure(driver.start(), ServiceUnavailable)
        self.assertIn("Unknown database", str(failure))

    def test_execute_before_start(self) -> Any:
        driver = MySQLDriver(DataSourceSettings(db_type="mysql"), reactor)
        return self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    def test_connection_params(self) -> None:
        params = connection_params(DataSourceSettings(db_type="mysql", host="db", database="shop", user="u", password="p"))
        self.assertEqual(params, {"host": "db", "port": 3306, "user": "u", "password": "p", "database": "shop"})
        params = connection_params(DataSourceSettings(db_type="mysql", host="db", user="u", ssl=True,
                                                      url="mysql://me:s%40cret@other:3307/sales"))
        self.assertEqual(params, {"host": "other", "port": 3307, "user": "me", "password": "s@cret",
                                  "database": "sales", "ssl": {"check_hostname": False}})
        error = self.assertRaises(ConfigError, connection_params,
                                  DataSourceSettings(db_type="mysql", url="postgres://x/y"))
        self.assertTrue(str(error).startswith('Value "postgres://x/y" is not valid for CUBEJS_DB_URL'))

    def test_datetime_text(self) -> None:
        self.assertEqual(mysql_datetime_text("2024-01-02 03:04:05"), "2024-01-02T03:04:05.000")
        self.assertEqual(mysql_datetime_text("2024-01-02 03:04:05.5"), "2024-01-02T03:04:05.500")
        self.assertEqual(mysql_datetime_text("2024-01-02 03:04:05.123456"), "2024-01-02T03:04:05.123")

    def test_named_zone_conversion_is_recognised(self) -> None:
        self.assertIsNotNone(mysql_module._NAMED_ZONE_CONVERSION.search(
            "CONVERT_TZ(`o`.created_at, '+00:00', 'America/Los_Angeles')"))
        self.assertIsNone(mysql_module._NAMED_ZONE_CONVERSION.search("CONVERT_TZ(x, '+00:00', '-08:00')"))
