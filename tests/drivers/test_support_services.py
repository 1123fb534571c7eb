"""The test support helpers everyone's integration tests rely on (tests/support)."""
from __future__ import annotations

import os
from typing import Any, Callable

import psycopg2
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.support.services import (
    ServiceMissing,
    create_test_database,
    database_exists,
    free_port,
    pg_url,
    redis_url,
    require_postgres,
    require_redis,
    unique_database_name,
    unique_redis_prefix,
)
from tests.support.shopdata import SHOP_ROW_COUNTS, load_shop_data_blocking


class _CleanupRecorder:
    """Stands in for a TestCase to capture the cleanups a helper registers."""

    def __init__(self) -> None:
        self.cleanups: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def addCleanup(self, fn: Callable[..., Any], *args: Any) -> None:
        self.cleanups.append((fn, args))


class EnvironmentTests(unittest.TestCase):
    """URLs and the skip-or-fail rule."""

    def set_env(self, **values: str | None) -> None:
        for key, value in values.items():
            previous = os.environ.get(key)
            self.addCleanup(self._restore, key, previous)
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    @staticmethod
    def _restore(key: str, value: str | None) -> None:
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    def test_default_urls(self) -> None:
        self.set_env(CUBED_TEST_PG_URL=None, CUBED_TEST_REDIS_URL=None)
        self.assertEqual(pg_url(), "postgresql://postgres@127.0.0.1:5432/postgres")
        self.assertEqual(redis_url(), "redis://127.0.0.1:6379/0")

    def test_overridden_urls(self) -> None:
        self.set_env(CUBED_TEST_PG_URL="postgresql://u@db:6543/x", CUBED_TEST_REDIS_URL="redis://r:1/2")
        self.assertEqual((pg_url(), redis_url()), ("postgresql://u@db:6543/x", "redis://r:1/2"))

    def test_absent_postgres_is_a_skip(self) -> None:
        self.set_env(CUBED_TEST_PG_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                     CUBED_REQUIRE_SERVICES=None)
        error = self.assertRaises(unittest.SkipTest, require_postgres)
        self.assertIn("PostgreSQL not reachable at 127.0.0.1:", str(error))

    def test_absent_postgres_fails_when_services_are_required(self) -> None:
        self.set_env(CUBED_TEST_PG_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                     CUBED_REQUIRE_SERVICES="1")
        error = self.assertRaises(ServiceMissing, require_postgres)
        self.assertIsInstance(error, AssertionError)
        self.assertIn("CUBED_REQUIRE_SERVICES=1", str(error))

    def test_absent_redis(self) -> None:
        self.set_env(CUBED_TEST_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", CUBED_REQUIRE_SERVICES=None)
        error = self.assertRaises(unittest.SkipTest, require_redis)
        self.assertIn("Redis not reachable at 127.0.0.1:", str(error))
        self.set_env(CUBED_REQUIRE_SERVICES="1")
        self.assertRaises(ServiceMissing, require_redis)

    @defer.inlineCallbacks
    def test_create_database_against_absent_server(self) -> Any:
        self.set_env(CUBED_TEST_PG_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                     CUBED_REQUIRE_SERVICES=None)
        recorder = _CleanupRecorder()
        yield self.assertFailure(create_test_database(recorder), unittest.SkipTest)  # type: ignore[arg-type]
        self.assertEqual(recorder.cleanups, [])

    def test_unique_names(self) -> None:
        self.assertNotEqual(unique_redis_prefix(), unique_redis_prefix())
        self.assertTrue(unique_redis_prefix("queue").startswith(f"cubed_test:queue:{os.getpid()}:"))
        self.assertTrue(unique_redis_prefix().endswith(":"))
        name = unique_database_name()
        self.assertRegex(name, rf"^cubed_test_{os.getpid()}_[0-9a-f]{{12}}$")


class DatabaseLifecycleTests(unittest.TestCase):
    """create_test_database creates, its cleanup drops; the shop data loads in full."""

    def setUp(self) -> None:
        require_postgres()

    @defer.inlineCallbacks
    def test_created_then_dropped_with_open_connections(self) -> Any:
        recorder = _CleanupRecorder()
        settings = yield create_test_database(recorder)  # type: ignore[arg-type]
        exists = yield deferToThread(database_exists, settings.database)
        self.assertTrue(exists)
        counts = yield deferToThread(load_shop_data_blocking, settings)
        self.assertEqual(counts, SHOP_ROW_COUNTS)
        # An open session must not stop the drop.
        lingering = yield deferToThread(
            psycopg2.connect, host=settings.host, port=settings.port, user=settings.user, dbname=settings.database,
        )
        self.addCleanup(lingering.close)
        self.assertEqual(len(recorder.cleanups), 1)
        fn, args = recorder.cleanups[0]
        yield fn(*args)
        exists = yield deferToThread(database_exists, settings.database)
        self.assertFalse(exists)

    def test_real_redis_answers_the_check(self) -> None:
        # Skipped without Redis; under CUBED_REQUIRE_SERVICES=1 this proves the PING check.
        require_redis()
