"""The store contract (QueueStore and CacheStore), run against both stores: MemoryStore on a
fake clock and RedisStore on the test Redis (its own key prefix, deleted at cleanup).

Times handed to the stores (``now``, deadlines, heartbeats) are plain numbers chosen by the
tests; only the expiry of kept results and cache entries uses the store's own clock (the fake
clock, or Redis' real one: short real expiries there).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from cubed.orchestrator.memory import MemoryStore
from cubed.orchestrator.stores import Expired, QueuedQuery, Stage
from tests.support.services import redis_url, require_redis, unique_redis_prefix

Q = "SQL_QUERY_STANDALONE_default"
OTHER_Q = "SQL_QUERY_tenant_b_default"
KEEP = 0.3  # seconds a result or cache entry is kept in the expiry tests


def item(key: str, priority: int = 0, at: float = 1000.0) -> QueuedQuery:
    """Return a query definition for ``key`` added at ``at`` with ``priority``."""
    return QueuedQuery(key=key, data_source="default", sql=f"SELECT '{key}', 'é✓' WHERE x = $1", params=[1, "a"],
                       priority=priority, added_at=at, request_id=f"req-{key}", cache_key=f"cache:{key}",
                       renewal_key='[1,"x"]', result_ttl=5.5)


class StoreContract:
    """Tests every store must pass. Subclasses set ``self.store`` in setUp and implement
    ``wait`` (let ``seconds`` pass on the store's clock) and ``eventually``."""

    store: Any

    def wait(self, seconds: float) -> Deferred[None]:
        raise NotImplementedError

    async def eventually(self, check: Callable[[], bool], within: float = 2.0) -> bool:
        """Return True once ``check()`` holds (the memory store is synchronous: at once)."""
        raise NotImplementedError

    # -- add -------------------------------------------------------------------------------
    async def test_add_is_new_once(self) -> None:
        self.assertTrue(await self.store.add(Q, item("a"), 100.0))
        self.assertFalse(await self.store.add(Q, item("a"), 100.0))
        self.assertEqual(await self.store.sizes(Q), (1, 0))
        self.assertIsNotNone(await self.store.acquire(Q, "a", "owner-1", 2, 10.0))
        # Running: still not added again, still one of it.
        self.assertFalse(await self.store.add(Q, item("a", priority=5), 100.0))
        self.assertEqual(await self.store.sizes(Q), (0, 1))

    async def test_add_keeps_the_first_definition(self) -> None:
        await self.store.add(Q, item("a", priority=1, at=5.0), 100.0)
        await self.store.add(Q, QueuedQuery(key="a", data_source="other", sql="SELECT 2", params=[]), 100.0)
        self.assertEqual(await self.store.acquire(Q, "a", "o", 2, 10.0), item("a", priority=1, at=5.0))

    async def test_definitions_keep_their_own_orphan_timeout(self) -> None:
        from dataclasses import replace

        await self.store.add(Q, replace(item("a"), orphaned_timeout=3600.0), 100.0)
        acquired = await self.store.acquire(Q, "a", "o", 2, 10.0)
        self.assertEqual(acquired, replace(item("a"), orphaned_timeout=3600.0))
        self.assertEqual(acquired.orphaned_timeout, 3600.0)
        # A definition written by a newer process with fields this one does not know.
        self.assertEqual(QueuedQuery.decode(item("b").encode()[:-1] + ',"future_field":1}'), item("b"))

    async def test_add_moves_the_orphan_deadline_to_the_later_one(self) -> None:
        await self.store.add(Q, item("a"), 100.0)
        await self.store.add(Q, item("a"), 50.0)  # an earlier deadline does not win
        self.assertEqual((await self.store.expired(Q, 99.0, 0.0)).orphaned, [])
        self.assertEqual((await self.store.expired(Q, 100.0, 0.0)).orphaned, ["a"])  # deadline <= now
        await self.store.add(Q, item("a"), 200.0)
        self.assertEqual((await self.store.expired(Q, 150.0, 0.0)).orphaned, [])
        self.assertEqual((await self.store.expired(Q, 200.0, 0.0)).orphaned, ["a"])

    async def test_touch_moves_the_deadline_of_known_queries_only(self) -> None:
        await self.store.add(Q, item("a"), 100.0)
        await self.store.touch(Q, "a", 300.0)
        await self.store.touch(Q, "a", 200.0)
        self.assertEqual((await self.store.expired(Q, 299.0, 0.0)).orphaned, [])
        self.assertEqual((await self.store.expired(Q, 300.0, 0.0)).orphaned, ["a"])
        await self.store.touch(Q, "ghost", 500.0)
        self.assertEqual((await self.store.expired(Q, 600.0, 0.0)).orphaned, ["a"])
        # A later add of the untouched key starts from its own deadline.
        await self.store.add(Q, item("ghost"), 10.0)
        self.assertEqual(sorted((await self.store.expired(Q, 20.0, 0.0)).orphaned), ["ghost"])
        # A running query's deadline moves too.
        await self.store.acquire(Q, "a", "o", 2, 1.0)
        await self.store.touch(Q, "a", 900.0)
        self.assertEqual(sorted((await self.store.expired(Q, 899.0, 0.0)).orphaned), ["ghost"])

    # -- order and stage -------------------------------------------------------------------
    async def test_waiting_is_priority_first_then_first_come(self) -> None:
        await self.store.add(Q, item("late-low", priority=-5, at=10.0), 100.0)
        await self.store.add(Q, item("late", at=30.0), 100.0)
        await self.store.add(Q, item("early", at=20.0), 100.0)
        await self.store.add(Q, item("urgent", priority=10, at=40.0), 100.0)
        await self.store.add(Q, item("urgent-early", priority=10, at=35.5), 100.0)
        await self.store.add(Q, item("lowest", priority=-10000, at=1.0), 100.0)
        await self.store.add(Q, item("highest", priority=10000, at=99.0), 100.0)
        expected = ["highest", "urgent-early", "urgent", "early", "late", "late-low", "lowest"]
        self.assertEqual(await self.store.waiting(Q, 10), expected)
        self.assertEqual(await self.store.waiting(Q, 3), expected[:3])
        self.assertEqual(await self.store.waiting(Q, 0), [])
        self.assertEqual(await self.store.waiting(OTHER_Q, 10), [])

    async def test_fifo_within_a_priority_at_real_timestamps(self) -> None:
        # Scores near 2e14 (priority steps of 1e10 s plus epoch seconds) stay ordered.
        base = 1_764_000_000.0
        for n, key in enumerate(["first", "second", "third"]):
            await self.store.add(Q, item(key, priority=-9999, at=base + n * 0.25), 100.0)
        self.assertEqual(await self.store.waiting(Q, 10), ["first", "second", "third"])

    async def test_stage_positions(self) -> None:
        for n, key in enumerate(["a", "b", "c"]):
            await self.store.add(Q, item(key, at=10.0 + n), 100.0)
        self.assertEqual(await self.store.stage(Q, "a"), Stage(active=False, position=1))
        self.assertEqual(await self.store.stage(Q, "c"), Stage(active=False, position=3))
        self.assertIsNone(await self.store.stage(Q, "nope"))
        await self.store.acquire(Q, "a", "o", 2, 1234.5)
        self.assertEqual(await self.store.stage(Q, "a"), Stage(active=True, started_at=1234.5))
        self.assertEqual(await self.store.stage(Q, "b"), Stage(active=False, position=1))
        self.assertEqual(await self.store.stage(Q, "c"), Stage(active=False, position=2))
        await self.store.add(Q, item("d", priority=3, at=50.0), 100.0)
        self.assertEqual(await self.store.stage(Q, "d"), Stage(active=False, position=1))
        self.assertEqual(await self.store.stage(Q, "c"), Stage(active=False, position=3))

    # -- acquire / heartbeat / complete ----------------------------------------------------
    async def test_acquire_respects_concurrency_across_owners(self) -> None:
        for n, key in enumerate(["a", "b", "c"]):
            await self.store.add(Q, item(key, at=10.0 + n), 100.0)
        self.assertEqual(await self.store.acquire(Q, "a", "owner-1", 2, 1.0), item("a", at=10.0))
        self.assertIsNone(await self.store.acquire(Q, "a", "owner-2", 2, 1.0))  # already running
        self.assertEqual((await self.store.acquire(Q, "b", "owner-2", 2, 1.0)).key, "b")
        self.assertIsNone(await self.store.acquire(Q, "c", "owner-3", 2, 1.0))  # two run already
        self.assertIsNone(await self.store.acquire(Q, "ghost", "owner-3", 5, 1.0))  # never queued
        self.assertEqual(await self.store.sizes(Q), (1, 2))
        # Another queue has its own slots.
        await self.store.add(OTHER_Q, item("c"), 100.0)
        self.assertIsNotNone(await self.store.acquire(OTHER_Q, "c", "owner-3", 1, 1.0))
        # A freed slot is taken.
        self.assertTrue(await self.store.complete(Q, "a", "owner-1", '{"rows":[]}', 10.0))
        self.assertIsNotNone(await self.store.acquire(Q, "c", "owner-3", 2, 2.0))
        self.assertEqual(await self.store.sizes(Q), (0, 2))

    async def test_heartbeat_only_by_the_owner(self) -> None:
        await self.store.add(Q, item("a"), 100.0)
        self.assertFalse(await self.store.heartbeat(Q, "a", "owner-1", 5.0))  # waiting: nobody owns it
        await self.store.acquire(Q, "a", "owner-1", 2, 1.0)
        self.assertTrue(await self.store.heartbeat(Q, "a", "owner-1", 50.0))
        self.assertFalse(await self.store.heartbeat(Q, "a", "owner-2", 60.0))
        # The owner's beat at 50 counts; the stranger's at 60 did not.
        self.assertEqual((await self.store.expired(Q, 0.0, 50.0)).stalled, [])
        self.assertEqual((await self.store.expired(Q, 0.0, 55.0)).stalled, ["a"])

    async def test_complete_only_by_the_owner_keeps_the_result_and_removes_the_rest(self) -> None:
        await self.store.add(Q, item("a"), 100.0)
        self.assertFalse(await self.store.complete(Q, "a", "owner-1", '"early"', KEEP))  # not running
        await self.store.acquire(Q, "a", "owner-1", 2, 1.0)
        self.assertFalse(await self.store.complete(Q, "a", "owner-2", '"theirs"', KEEP))
        self.assertIsNone(await self.store.result(Q, "a"))
        payload = '{"columns":[["v","number"]],"rows":[[1,"é✓"]]}'
        self.assertTrue(await self.store.complete(Q, "a", "owner-1", payload, KEEP))
        self.assertEqual(await self.store.result(Q, "a"), payload)
        self.assertIsNone(await self.store.result(OTHER_Q, "a"))
        self.assertEqual(await self.store.sizes(Q), (0, 0))
        self.assertIsNone(await self.store.stage(Q, "a"))
        # (Not 1e12: the memory store drops results kept until before ``now`` in expired().)
        self.assertEqual(await self.store.expired(Q, 200.0, 200.0), Expired([], []))
        self.assertFalse(await self.store.heartbeat(Q, "a", "owner-1", 2.0))
        self.assertFalse(await self.store.complete(Q, "a", "owner-1", '"twice"', KEEP))
        self.assertIsNone(await self.store.remove(Q, "a"))
        self.assertEqual(await self.store.result(Q, "a"), payload)  # remove leaves the result
        await self.wait(KEEP + 0.1)
        self.assertIsNone(await self.store.result(Q, "a"))
        self.assertTrue(await self.store.add(Q, item("a"), 100.0))  # asked again: a new query

    async def test_complete_without_grace_keeps_nothing(self) -> None:
        await self.store.add(Q, item("a"), 100.0)
        await self.store.acquire(Q, "a", "o", 2, 1.0)
        self.assertTrue(await self.store.complete(Q, "a", "o", '"x"', 0.0))
        self.assertIsNone(await self.store.result(Q, "a"))
        self.assertEqual(await self.store.sizes(Q), (0, 0))

    # -- expired / remove / release --------------------------------------------------------
    async def test_expired_lists_orphans_and_stalled_and_changes_nothing(self) -> None:
        await self.store.add(Q, item("waiting-old", at=1.0), 50.0)
        await self.store.add(Q, item("waiting-new", at=2.0), 500.0)
        await self.store.add(Q, item("running-stalled", at=3.0), 500.0)
        await self.store.add(Q, item("running-fine", at=4.0), 60.0)
        await self.store.acquire(Q, "running-stalled", "o1", 5, 10.0)
        await self.store.acquire(Q, "running-fine", "o2", 5, 10.0)
        await self.store.heartbeat(Q, "running-fine", "o2", 90.0)
        expired = await self.store.expired(Q, 60.0, 90.0)
        self.assertEqual(sorted(expired.orphaned), ["running-fine", "waiting-old"])
        self.assertEqual(expired.stalled, ["running-stalled"])
        self.assertEqual((await self.store.expired(Q, 0.0, 10.0)).stalled, [])  # strictly older
        self.assertEqual(sorted((await self.store.expired(Q, 0.0, 90.5)).stalled), ["running-fine", "running-stalled"])
        self.assertEqual(await self.store.sizes(Q), (2, 2))
        self.assertEqual(await self.store.expired(OTHER_Q, 1e12, 1e12), Expired([], []))

    async def test_remove_returns_the_owner(self) -> None:
        await self.store.add(Q, item("w"), 100.0)
        await self.store.add(Q, item("r", at=2000.0), 100.0)
        await self.store.acquire(Q, "r", "owner-1", 2, 1.0)
        self.assertIsNone(await self.store.remove(Q, "w"))
        self.assertEqual(await self.store.remove(Q, "r"), "owner-1")
        self.assertIsNone(await self.store.remove(Q, "r"))
        self.assertIsNone(await self.store.remove(Q, "ghost"))
        self.assertEqual(await self.store.sizes(Q), (0, 0))
        for key in ("w", "r"):
            self.assertIsNone(await self.store.stage(Q, key))
            self.assertIsNone(await self.store.acquire(Q, key, "owner-2", 2, 2.0))
        self.assertFalse(await self.store.heartbeat(Q, "r", "owner-1", 3.0))
        self.assertFalse(await self.store.complete(Q, "r", "owner-1", '"late"', KEEP))
        self.assertIsNone(await self.store.result(Q, "r"))
        self.assertEqual(await self.store.expired(Q, 1e12, 1e12), Expired([], []))
        self.assertTrue(await self.store.add(Q, item("r"), 100.0))  # a fresh start

    async def test_release_puts_a_running_query_back_in_its_place(self) -> None:
        await self.store.add(Q, item("first", priority=-7, at=1_764_000_000.125), 100.0)
        await self.store.add(Q, item("second", priority=-7, at=1_764_000_001.5), 100.0)
        await self.store.acquire(Q, "first", "owner-1", 2, 1.0)
        self.assertFalse(await self.store.release(Q, "first", "owner-2"))
        self.assertFalse(await self.store.release(Q, "second", None))  # waiting, not running
        self.assertFalse(await self.store.release(Q, "ghost", None))
        self.assertTrue(await self.store.release(Q, "first", "owner-1"))
        self.assertEqual(await self.store.waiting(Q, 5), ["first", "second"])
        self.assertEqual(await self.store.stage(Q, "first"), Stage(active=False, position=1))
        self.assertEqual(await self.store.sizes(Q), (2, 0))
        self.assertFalse(await self.store.heartbeat(Q, "first", "owner-1", 2.0))
        self.assertFalse(await self.store.complete(Q, "first", "owner-1", '"x"', KEEP))
        self.assertEqual((await self.store.expired(Q, 0.0, 1e12)).stalled, [])
        # Anyone may release a stalled query (owner None); another process then takes it.
        await self.store.acquire(Q, "first", "owner-1", 2, 3.0)
        self.assertTrue(await self.store.release(Q, "first", None))
        self.assertEqual((await self.store.acquire(Q, "first", "owner-2", 2, 4.0)).key, "first")
        self.assertEqual(await self.store.stage(Q, "first"), Stage(active=True, started_at=4.0))

    # -- subscribe -------------------------------------------------------------------------
    async def test_subscribers_hear_of_completions(self) -> None:
        heard: list[tuple[str, str]] = []
        also: list[tuple[str, str]] = []
        await self.store.subscribe(lambda queue, key: heard.append((queue, key)))
        await self.store.subscribe(lambda queue, key: also.append((queue, key)))
        await self.store.add(OTHER_Q, item("a"), 100.0)
        await self.store.acquire(OTHER_Q, "a", "o", 2, 1.0)
        self.assertFalse(await self.store.complete(OTHER_Q, "a", "stranger", '"x"', KEEP))
        self.assertTrue(await self.store.complete(OTHER_Q, "a", "o", '"x"', KEEP))
        self.assertTrue(await self.eventually(lambda: len(heard) >= 1 and len(also) >= 1))
        await self.wait(0.05)
        self.assertEqual(heard, [(OTHER_Q, "a")])
        self.assertEqual(also, [(OTHER_Q, "a")])

    async def test_ping(self) -> None:
        self.assertIsNone(await self.store.ping())

    # -- cache -----------------------------------------------------------------------------
    async def test_cache_get_set_expiry_delete(self) -> None:
        key = "STANDALONE:result:abc"
        self.assertIsNone(await self.store.get(key))
        await self.store.set(key, '{"v":"é✓"}', 60.0)
        self.assertEqual(await self.store.get(key), '{"v":"é✓"}')
        await self.store.set(key, "007", 60.0)  # texts stay texts
        self.assertEqual(await self.store.get(key), "007")
        await self.store.delete(key)
        self.assertIsNone(await self.store.get(key))
        await self.store.delete(key)  # deleting nothing is fine
        await self.store.set(key, "short", KEEP)
        await self.store.set("STANDALONE:other", "long", 60.0)
        self.assertEqual(await self.store.get(key), "short")
        await self.wait(KEEP + 0.1)
        self.assertIsNone(await self.store.get(key))
        self.assertEqual(await self.store.get("STANDALONE:other"), "long")
        await self.store.set(key, "gone", 0.0)
        self.assertIsNone(await self.store.get(key))


class MemoryStoreContractTests(StoreContract, TestCase):
    """The contract on MemoryStore, driven by a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore(self.clock)

    def wait(self, seconds: float) -> Deferred[None]:
        self.clock.advance(seconds)
        return succeed(None)

    async def eventually(self, check: Callable[[], bool], within: float = 2.0) -> bool:
        return check()

    async def test_expired_entries_nobody_reads_are_swept(self) -> None:
        """Distinct queries never asked again do not pile up: a later ``set`` sweeps them."""
        from cubed.orchestrator.memory import SWEEP_INTERVAL

        for i in range(1000):
            await self.store.set(f"STANDALONE:q{i}", "result", 10.0)
        await self.store.set("STANDALONE:kept", "long", 10 * SWEEP_INTERVAL)
        self.assertEqual(len(self.store._cache), 1001)
        self.clock.advance(SWEEP_INTERVAL + 1)
        await self.store.set("STANDALONE:new", "fresh", 10.0)
        self.assertEqual(sorted(self.store._cache), ["STANDALONE:kept", "STANDALONE:new"])
        self.assertEqual(await self.store.get("STANDALONE:kept"), "long")


async def delete_prefixed(store: Any, prefix: str) -> None:
    """Delete every key of ``prefix`` (SCAN + DEL; never the whole database)."""
    cursor = "0"
    while True:
        cursor, keys = await store._pool.execute_command("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 500)
        if keys:
            await store._pool.execute_command("DEL", *keys)
        if str(cursor) == "0":
            return


class RedisStoreContractTests(StoreContract, TestCase):
    """The contract on RedisStore with the test Redis and a unique key prefix."""

    def setUp(self) -> Awaitable[None]:
        require_redis()
        from cubed.orchestrator.redis_store import RedisStore

        self.prefix = unique_redis_prefix("stores")
        self.store = RedisStore.from_url(redis_url(), reactor, prefix=self.prefix, command_timeout=2.0)
        self.addCleanup(self.store.close)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.assert_only_prefixed_keys_then_delete()))
        return Deferred.fromCoroutine(self._ready())

    async def _ready(self) -> None:
        await self.store.ping()

    async def assert_only_prefixed_keys_then_delete(self) -> None:
        await delete_prefixed(self.store, self.prefix)
        leftover = await self.store._pool.execute_command("KEYS", self.prefix + "*")
        self.assertEqual(leftover, [])

    def wait(self, seconds: float) -> Deferred[None]:
        return deferLater(reactor, seconds, lambda: None)

    async def eventually(self, check: Callable[[], bool], within: float = 2.0) -> bool:
        deadline = reactor.seconds() + within
        while not check():
            if reactor.seconds() > deadline:
                return False
            await self.wait(0.01)
        return True

    async def test_keys_live_under_the_prefix(self) -> None:
        await self.store.add(Q, item("a"), 100.0)
        await self.store.add(Q, item("b"), 100.0)
        await self.store.acquire(Q, "a", "o", 2, 1.0)
        await self.store.set("STANDALONE:cache", "v", 60.0)
        keys = sorted(await self.store._pool.execute_command("KEYS", self.prefix + "*"))
        base = self.prefix + Q
        self.assertEqual(keys, sorted([f"{base}:queue", f"{base}:active", f"{base}:heartbeat", f"{base}:recent",
                                       f"{base}:queries", f"{base}:owner", f"{self.prefix}STANDALONE:cache"]))
        self.assertTrue(await self.store.complete(Q, "a", "o", '"r"', 60.0))
        ttl = await self.store._pool.execute_command("PTTL", f"{base}:result:a")
        self.assertTrue(59_000 < int(ttl) <= 60_000, ttl)
        ttl = await self.store._pool.execute_command("PTTL", f"{self.prefix}STANDALONE:cache")
        self.assertTrue(59_000 < int(ttl) <= 60_000, ttl)

    async def test_add_while_the_result_is_kept_does_not_queue_again(self) -> None:
        # QueryQueue.execute reads the result, then adds: a completion in between (one round
        # trip, any process) must not queue the query for a second execution.
        await self.store.add(Q, item("a"), 100.0)
        await self.store.acquire(Q, "a", "o", 2, 1.0)
        await self.store.complete(Q, "a", "o", '"r"', KEEP)
        self.assertFalse(await self.store.add(Q, item("a"), 500.0))
        self.assertEqual(await self.store.sizes(Q), (0, 0))
        self.assertEqual(await self.store.expired(Q, 1e12, 1e12), Expired([], []))  # no deadline either
        await self.wait(KEEP + 0.1)
        self.assertTrue(await self.store.add(Q, item("a"), 100.0))

    async def test_release_restores_the_exact_score(self) -> None:
        query = item("a", priority=-7, at=1_764_000_000.123456)
        await self.store.add(Q, query, 100.0)
        before = await self.store._pool.execute_command("ZSCORE", self.prefix + Q + ":queue", "a")
        await self.store.acquire(Q, "a", "o", 2, 1.0)
        await self.store.release(Q, "a", "o")
        after = await self.store._pool.execute_command("ZSCORE", self.prefix + Q + ":queue", "a")
        self.assertEqual(float(before), query.score())
        self.assertEqual(float(after), query.score())
