"""The result cache with a fake clock: refresh keys (every, sql), the four cache modes,
slowQuery, renewQuery, and refresh-key definitions."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from cubed.drivers.base import Column, ResultSet
from cubed.errors import ContinueWait, ModelError
from cubed.model.intervals import Every, parse_every
from cubed.model.schema import Cube
from cubed.orchestrator.cache import Fetched, QueryCache
from cubed.orchestrator.memory import MemoryStore
from cubed.orchestrator.queue import QueryQueue, QueueOptions
from cubed.orchestrator.refresh_keys import RefreshKey, refresh_key_of
from cubed.orchestrator.stores import QueuedQuery
from cubed.query.sql import RenderedSql

MAIN = RenderedSql("SELECT count(*) FROM orders", (), "SELECT count(*) FROM orders")
KEY_SQL = RenderedSql("SELECT max(id) FROM orders", (), "SELECT max(id) FROM orders")


class Database:
    """An executor answering the main query with ``rows`` and the key query with ``key``;
    ``slow`` holds results back until ``release``."""

    def __init__(self) -> None:
        self.rows = 1
        self.key = 100
        self.slow = False
        self.executed: list[str] = []
        self.held: list[tuple[Deferred[ResultSet], ResultSet]] = []

    def __call__(self, item: QueuedQuery) -> Deferred[ResultSet]:
        self.executed.append(item.sql)
        value = self.key if item.sql == KEY_SQL.text else self.rows
        result = ResultSet((Column("v", "number"),), [(value,)])
        if self.slow and item.sql == MAIN.text:
            d: Deferred[ResultSet] = Deferred()
            self.held.append((d, result))
            return d
        return succeed(result)

    def release(self) -> None:
        for d, result in self.held:
            d.callback(result)
        self.held = []

    def main_runs(self) -> int:
        return self.executed.count(MAIN.text)


class CacheTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        store = MemoryStore(self.clock)
        self.db = Database()
        self.cache: QueryCache
        queue = QueryQueue("q", store, self.db, QueueOptions(continue_wait=5, result_grace=1), self.clock,
                           on_result=lambda item, payload: ensureDeferred(self.cache.store_result(item, payload)))
        self.cache = QueryCache("STANDALONE", store, lambda _ds: queue, self.clock)
        queue.start()
        self.addCleanup(queue.stop)

    def fetch(self, keys: list[RefreshKey], mode: str = "stale-if-slow", renew: bool = False) -> Deferred[Fetched]:
        return ensureDeferred(self.cache.fetch("default", MAIN, keys, mode, renew))

    def value(self, d: Deferred[Fetched]) -> Any:
        return self.successResultOf(d).result.rows[0][0]

    every = [RefreshKey("Orders", "default", Every(10), None, 10)]
    by_sql = [RefreshKey("Orders", "default", None, KEY_SQL, 10)]

    def test_every_key_serves_the_cache_until_the_next_interval(self) -> None:
        self.clock.advance(10 - self.clock.seconds() % 10)
        self.assertEqual(self.value(self.fetch(self.every)), 1)
        self.db.rows = 2
        self.clock.advance(9)
        fetched = self.successResultOf(self.fetch(self.every))
        self.assertEqual((fetched.result.rows[0][0], fetched.slow), (1, False))
        self.clock.advance(1)
        self.assertEqual(self.value(self.fetch(self.every)), 2)
        self.assertEqual(self.db.main_runs(), 2)

    def test_sql_key_change_refreshes_after_the_renewal_threshold(self) -> None:
        self.assertEqual(self.value(self.fetch(self.by_sql)), 1)
        self.db.rows, self.db.key = 2, 101
        self.clock.advance(5)
        self.assertEqual(self.value(self.fetch(self.by_sql)), 1)  # key value still cached
        self.clock.advance(6)
        self.assertEqual(self.value(self.fetch(self.by_sql)), 2)
        self.assertEqual(self.db.executed.count(KEY_SQL.text), 2)
        self.clock.advance(11)
        self.assertEqual(self.value(self.fetch(self.by_sql)), 2)  # same key value: no new read
        self.assertEqual(self.db.main_runs(), 2)

    def stale(self) -> None:
        """Fill the cache, then make it stale and the source slow."""
        self.successResultOf(self.fetch(self.by_sql))
        self.db.rows, self.db.key, self.db.slow = 2, 101, True
        self.clock.advance(11)

    def test_stale_if_slow_answers_the_stale_entry_after_the_timeout(self) -> None:
        self.stale()
        answer = self.fetch(self.by_sql)
        self.assertNoResult(answer)
        self.clock.advance(5)
        fetched = self.successResultOf(answer)
        self.assertEqual((fetched.result.rows[0][0], fetched.slow), (1, True))
        self.db.release()
        self.assertEqual(self.value(self.fetch(self.by_sql)), 2)

    def test_stale_while_revalidate_answers_at_once_and_refreshes(self) -> None:
        self.stale()
        fetched = self.successResultOf(self.fetch(self.by_sql, "stale-while-revalidate"))
        self.assertEqual((fetched.result.rows[0][0], fetched.slow), (1, True))
        self.assertEqual(self.db.main_runs(), 2)
        self.db.release()
        self.assertEqual(self.value(self.fetch(self.by_sql)), 2)

    def test_must_revalidate_waits(self) -> None:
        self.stale()
        answer = self.fetch(self.by_sql, "must-revalidate")
        self.clock.advance(5)
        self.failureResultOf(answer, ContinueWait)

    def test_no_cache_always_reads_the_source(self) -> None:
        self.assertEqual(self.value(self.fetch(self.by_sql)), 1)
        self.db.rows = 5
        self.clock.advance(2)  # past the result grace
        self.assertEqual(self.value(self.fetch(self.by_sql, "no-cache")), 5)
        self.assertNotIn(KEY_SQL.text, self.db.executed[1:])

    def test_renew_query_rereads_keys_and_result(self) -> None:
        self.assertEqual(self.value(self.fetch(self.by_sql)), 1)
        self.db.rows, self.db.key = 3, 105
        self.clock.advance(2)
        fetched = self.successResultOf(self.fetch(self.by_sql, renew=True))
        self.assertEqual((fetched.result.rows[0][0], fetched.refresh_key_values), (3, [105]))


class RefreshKeyDefinitionTests(TestCase):
    def test_defaults_and_thresholds(self) -> None:
        default = refresh_key_of(Cube(name="A", file="a.yml"), "postgres")
        self.assertEqual((default.every, default.renewal_threshold), (Every(10.0), 10.0))
        self.assertEqual(default.cache_key_query()[0], "SELECT FLOOR((EXTRACT(EPOCH FROM NOW())) / 10) as refresh_key")
        hourly = refresh_key_of(Cube(name="A", file="a.yml", refresh_key={"every": "1 hour"}), "postgres")
        self.assertEqual(hourly.renewal_threshold, 300)
        by_sql = refresh_key_of(Cube(name="A", file="a.yml", refresh_key={"sql": "select max(id) from t", "every": "30 seconds"}),
                                "postgres")
        self.assertEqual((by_sql.every, by_sql.renewal_threshold), (None, 30.0))
        self.assertEqual(by_sql.cache_key_query(), ["SELECT MAX(id) FROM t", [], {"external": False, "renewalThreshold": 30.0}])

    def test_cron_every(self) -> None:
        self.assertEqual(parse_every("*/5 * * * *"), Every(300.0, 0.0))
        with self.assertRaises(ModelError) as caught:
            parse_every("0 9 * * 1-5")
        self.assertIn("we support only equal time intervals", str(caught.exception))
