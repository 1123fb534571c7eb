"""The PostgreSQL driver against a real server (a database of its own per test)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from cubed.config import DataSourceSettings
from cubed.drivers.base import Column, ResultSet
from cubed.drivers.postgres import TIMEOUT_MESSAGE, PostgresDriver, connection_params
from cubed.errors import ConfigError, DatabaseError, ServiceUnavailable
from tests.support.services import create_test_database, free_port, require_postgres
from tests.support.shopdata import shop_database


def _sleepers_blocking(settings: DataSourceSettings) -> list[tuple[int, str]]:
    connection = psycopg2.connect(host=settings.host, port=settings.port, user=settings.user,
                                  dbname="postgres", connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, state FROM pg_stat_activity WHERE datname = %s AND query LIKE %s AND state = 'active'",
                (settings.database, "%pg_sleep(30)%"),
            )
            return cursor.fetchall()
    finally:
        connection.close()


@defer.inlineCallbacks
def wait_until_no_sleepers(settings: DataSourceSettings, within: float = 5.0) -> Any:
    """Fire with the backends still running ``pg_sleep(30)`` in the database after at most
    ``within`` seconds (an empty list as soon as there are none)."""
    deadline = time.monotonic() + within
    while True:
        sleepers = yield deferToThread(_sleepers_blocking, settings)
        if not sleepers or time.monotonic() > deadline:
            return sleepers
        yield task.deferLater(reactor, 0.1, lambda: None)


class ConnectionParamsTests(unittest.TestCase):
    """Settings to psycopg2 keywords; no server needed."""

    def test_fields_then_url(self) -> None:
        params = connection_params(DataSourceSettings(
            db_type="postgres", host="db", port=5433, database="shop", user="u", password="p",
            url="postgresql://other@127.0.0.1/analytics",
        ))
        self.assertEqual((params["host"], params["port"], params["dbname"], params["user"], params["password"]),
                         ("127.0.0.1", 5433, "analytics", "other", "p"))
        self.assertEqual(params["keepalives"], 1)

    def test_ssl(self) -> None:
        self.assertEqual(connection_params(DataSourceSettings(db_type="postgres", ssl=True))["sslmode"], "require")
        params = connection_params(DataSourceSettings(db_type="postgres", ssl=True, url="postgresql://h/d?sslmode=verify-full"))
        self.assertEqual(params["sslmode"], "verify-full")

    def test_bad_url_is_a_config_error(self) -> None:
        error = self.assertRaises(ConfigError, connection_params,
                                  DataSourceSettings(db_type="postgres", url="postgresql://h/d?nonsense=1"))
        self.assertIn("CUBEJS_DB_URL", str(error))


class UnreachableServerTests(unittest.TestCase):
    """Nothing listens on the port: start() still succeeds, queries answer 503 at once."""

    @defer.inlineCallbacks
    def test_queries_fail_with_service_unavailable(self) -> Any:
        settings = DataSourceSettings(db_type="postgres", host="127.0.0.1", port=free_port(), user="postgres",
                                      database="postgres", max_pool=2)
        driver = PostgresDriver(settings, reactor)
        self.addCleanup(driver.close)
        yield driver.start()
        started = time.monotonic()
        error = yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)
        self.assertTrue(error.message.startswith("database unavailable: "), error.message)
        yield self.assertFailure(driver.test_connection(), ServiceUnavailable)
        self.assertLess(time.monotonic() - started, 2.0)

    @defer.inlineCallbacks
    def test_unresolvable_host(self) -> Any:
        settings = DataSourceSettings(db_type="postgres", host="no-such-host.invalid", port=5432, max_pool=1)
        driver = PostgresDriver(settings, reactor)
        self.addCleanup(driver.close)
        yield driver.start()
        error = yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)
        self.assertIn("database unavailable", error.message)


class PostgresDriverTests(unittest.TestCase):
    """Queries on a database loaded with the shop data."""

    @defer.inlineCallbacks
    def make_driver(self, **changes: Any) -> Any:
        settings = yield shop_database(self, **changes)
        driver = PostgresDriver(settings, reactor, timeout_grace=0.5)
        self.addCleanup(driver.close)
        yield driver.start()
        return settings, driver

    def setUp(self) -> None:
        require_postgres()

    @defer.inlineCallbacks
    def test_every_type_in_wire_form(self) -> Any:
        _, driver = yield self.make_driver()
        result = yield driver.execute(
            "SELECT 1::int2 AS a, 2::int4 AS b, count(*) AS c, 872.00::numeric(10,2) AS d, "
            "340.1814285714285714::numeric AS e, 1.5::float4 AS f, 2.25::float8 AS g, true AS h, 'it''s'::text AS i, "
            "NULL::text AS j, timestamp '2024-02-24 02:54:41.123456' AS k, "
            "timestamptz '2024-02-24 02:54:41.5+02' AS l, date '2024-02-24' AS m, "
            "'12345678-1234-5678-1234-567812345678'::uuid AS n, '{\"a\": [1, 2]}'::json AS o, "
            "'{\"b\": null}'::jsonb AS p, '\\x0102'::bytea AS q, 1e30::numeric AS r, 0.00000001::numeric AS s, "
            "array[1, 2]::int8[] AS t, 9007199254740993::int8 AS u "
            "FROM public.products",
            [],
        )
        self.assertIsInstance(result, ResultSet)
        self.assertEqual(result.rows, [(
            1, 2, "100", "872.00", "340.1814285714285714", 1.5, 2.25, True, "it's", None,
            "2024-02-24T02:54:41.123", "2024-02-24T00:54:41.500", "2024-02-24T00:00:00.000",
            "12345678-1234-5678-1234-567812345678", {"a": [1, 2]}, {"b": None}, "\\x0102",
            "1000000000000000000000000000000", "0.00000001", ["1", "2"], "9007199254740993",
        )])
        self.assertEqual(
            [c.kind for c in result.columns],
            ["number"] * 7 + ["boolean", "string", "string", "time", "time", "date", "string", "other", "other",
                              "other", "number", "number", "other", "number"],
        )
        self.assertEqual(result.columns[0], Column("a", "number"))

    @defer.inlineCallbacks
    def test_shop_values_match_cubes_answers(self) -> Any:
        _, driver = yield self.make_driver()
        count = yield driver.execute("SELECT count(*) FROM public.orders", [])
        self.assertEqual(count.rows, [("3000",)])
        # Recorded from the real Cube (conformance case 020_avg_lineitems).
        avg = yield driver.execute(
            "SELECT avg(li.price) FROM public.line_items li JOIN public.products p ON p.id = li.product_id "
            "WHERE p.category = %s", ["Clothing"],
        )
        self.assertEqual(avg.rows, [("340.1814285714285714",)])
        order = yield driver.execute("SELECT amount, created_at, completed_at FROM public.orders WHERE id = %s", [2])
        self.assertEqual(order.rows, [("872.00", "2024-02-24T02:54:41.000", None)])
        user = yield driver.execute("SELECT first_name, last_name, company FROM public.users WHERE id = %s", [30])
        self.assertEqual(user.rows, [("Joseph", 'Johnson "JJ"', 'Globex "International"')])

    @defer.inlineCallbacks
    def test_params_are_bound(self) -> Any:
        _, driver = yield self.make_driver()
        tricky = "O'Reilly \"Media\"; DROP TABLE users; --"
        result = yield driver.execute("SELECT %s::text, %s = any(%s), %s::int + 1", [tricky, 3, [1, 2, 3], 41])
        self.assertEqual(result.rows, [(tricky, True, 42)])
        cities = yield driver.execute(
            "SELECT count(*) FROM public.users WHERE city = any(%s)", [["Coeur d'Alene", "Montréal"]],
        )
        expected = yield driver.execute(
            "SELECT count(*) FROM public.users WHERE city IN ('Coeur d''Alene', 'Montréal')", [],
        )
        self.assertEqual(cities.rows, expected.rows)
        self.assertNotEqual(cities.rows, [("0",)])

    @defer.inlineCallbacks
    def test_literal_percent_is_doubled(self) -> Any:
        _, driver = yield self.make_driver()
        result = yield driver.execute("SELECT 'a%%b', %s::text", ["%"])
        self.assertEqual(result.rows, [("a%b", "%")])
        result = yield driver.execute("SELECT 'a%%b'", [])
        self.assertEqual(result.rows, [("a%b",)])

    @defer.inlineCallbacks
    def test_statement_without_rows(self) -> Any:
        _, driver = yield self.make_driver()
        result = yield driver.execute("CREATE TEMP TABLE t (x int)", [])
        self.assertEqual((result.columns, result.rows), ((), []))

    @defer.inlineCallbacks
    def test_sql_error_is_a_database_error_and_the_pool_stays_usable(self) -> Any:
        _, driver = yield self.make_driver(max_pool=1)
        error = yield self.assertFailure(driver.execute("SELECT * FROM foo", []), DatabaseError)
        self.assertEqual(error.message, 'relation "foo" does not exist')
        self.assertEqual(error.body(), {"error": 'Error: relation "foo" does not exist'})
        error = yield self.assertFailure(driver.execute("SELECT 1/0", []), DatabaseError)
        self.assertEqual(error.message, "division by zero")
        result = yield driver.execute("SELECT 1", [])
        self.assertEqual(result.rows, [(1,)])

    @defer.inlineCallbacks
    def test_statement_timeout_cancels_the_backend(self) -> Any:
        settings, driver = yield self.make_driver(max_pool=1, query_timeout=0.5)
        started = time.monotonic()
        error = yield self.assertFailure(driver.execute("SELECT pg_sleep(30)", [], name="sleepy"), DatabaseError)
        self.assertEqual(error.message, TIMEOUT_MESSAGE)
        self.assertLess(time.monotonic() - started, 0.5 + 0.5)
        sleepers = yield wait_until_no_sleepers(settings)
        self.assertEqual(sleepers, [])
        # The statement timeout is a query error: the single connection must still serve.
        result = yield driver.execute("SELECT 1", [])
        self.assertEqual(result.rows, [(1,)])

    @defer.inlineCallbacks
    def test_client_timeout_cancels_a_query_the_server_does_not_stop(self) -> Any:
        settings, driver = yield self.make_driver(max_pool=1, query_timeout=0.5)
        started = time.monotonic()
        error = yield self.assertFailure(
            driver.execute("SET LOCAL statement_timeout = 0; SELECT pg_sleep(30)", [], name="unstoppable"),
            DatabaseError,
        )
        elapsed = time.monotonic() - started
        self.assertEqual(error.message, TIMEOUT_MESSAGE)
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 2.0)
        sleepers = yield wait_until_no_sleepers(settings)
        self.assertEqual(sleepers, [])
        result = yield driver.execute("SELECT 2", [])
        self.assertEqual(result.rows, [(2,)])

    @defer.inlineCallbacks
    def test_cancelling_the_deferred_cancels_the_backend(self) -> Any:
        settings, driver = yield self.make_driver(max_pool=1)
        running = driver.execute("SELECT pg_sleep(30)", [], name="cancel-me")
        yield task.deferLater(reactor, 0.3, lambda: None)
        running.cancel()
        yield self.assertFailure(running, defer.CancelledError)
        sleepers = yield wait_until_no_sleepers(settings)
        self.assertEqual(sleepers, [])
        result = yield driver.execute("SELECT 3", [])
        self.assertEqual(result.rows, [(3,)])

    @defer.inlineCallbacks
    def test_concurrent_queries_use_the_pool(self) -> Any:
        _, driver = yield self.make_driver(max_pool=3)
        started = time.monotonic()
        results = yield defer.gatherResults(
            [driver.execute("SELECT pg_backend_pid(), pg_sleep(0.3)", []) for _ in range(3)]
        )
        self.assertLess(time.monotonic() - started, 0.85)
        self.assertEqual(len({r.rows[0][0] for r in results}), 3)

    @defer.inlineCallbacks
    def test_host_name_is_resolved(self) -> Any:
        settings = yield create_test_database(self, max_pool=1)
        if settings.host not in ("127.0.0.1", "::1", "localhost"):
            raise unittest.SkipTest("the test server is not on this machine")
        driver = PostgresDriver(replace(settings, host="localhost"), reactor)
        self.addCleanup(driver.close)
        yield driver.start()
        result = yield driver.execute("SELECT current_database()", [])
        self.assertEqual(result.rows, [(settings.database,)])

    @defer.inlineCallbacks
    def test_session_runs_in_utc(self) -> Any:
        _, driver = yield self.make_driver()
        result = yield driver.execute("SELECT current_setting('TimeZone'), current_setting('DateStyle')", [])
        self.assertEqual(result.rows, [("UTC", "ISO, MDY")])

    @defer.inlineCallbacks
    def test_closed_driver_refuses_queries(self) -> Any:
        _, driver = yield self.make_driver()
        yield driver.close()
        yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)

    @defer.inlineCallbacks
    def test_close_fails_running_queries(self) -> Any:
        _, driver = yield self.make_driver(max_pool=1)
        running = driver.execute("SELECT pg_sleep(30)", [])
        waiting = driver.execute("SELECT 1", [])
        yield task.deferLater(reactor, 0.2, lambda: None)
        yield driver.close()
        yield self.assertFailure(running, ServiceUnavailable)
        yield self.assertFailure(waiting, ServiceUnavailable)


class TestDatabaseTests(unittest.TestCase):
    """create_test_database gives an empty database of one's own."""

    @defer.inlineCallbacks
    def test_fresh_database(self) -> Any:
        settings = yield create_test_database(self, max_pool=1)
        self.assertTrue(settings.database.startswith("cubed_test_"))
        driver = PostgresDriver(settings, reactor)
        self.addCleanup(driver.close)
        yield driver.start()
        result = yield driver.execute(
            "SELECT current_database(), count(*) FROM information_schema.tables WHERE table_schema = 'public'", [],
        )
        self.assertEqual(result.rows, [(settings.database, "0")])
