"""QueryQueue on the memory store with a fake clock: single execution, concurrency,
priorities, Continue wait stages, orphans, stalled queries, result grace, timeouts."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from cubed.drivers.base import Column, ResultSet
from cubed.errors import CompileError, ContinueWait, DatabaseError
from cubed.orchestrator.memory import MemoryStore
from cubed.orchestrator.queue import QueryQueue, QueueOptions
from cubed.orchestrator.stores import QueuedQuery


class FakeDatabase:
    """An executor whose queries finish when the test says so."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.pending: dict[str, Deferred[ResultSet]] = {}
        self.cancelled: list[str] = []

    def __call__(self, item: QueuedQuery) -> Deferred[ResultSet]:
        self.started.append(item.key)
        d: Deferred[ResultSet] = Deferred(lambda _d: self.cancelled.append(item.key))
        self.pending[item.key] = d
        return d

    def finish(self, key: str, value: Any = 1) -> None:
        self.pending.pop(key).callback(ResultSet((Column("v", "number"),), [(value,)]))

    def fail(self, key: str, message: str) -> None:
        self.pending.pop(key).errback(DatabaseError(message))

    @property
    def running(self) -> list[str]:
        return list(self.pending)


def item(key: str, priority: int = 0, at: float = 0.0) -> QueuedQuery:
    return QueuedQuery(key=key, data_source="default", sql=f"SELECT '{key}'", params=[], priority=priority, added_at=at)


class QueueTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        self.db = FakeDatabase()
        self.queue = QueryQueue("SQL_QUERY_STANDALONE_default", self.store, self.db,
                                QueueOptions(concurrency=2, continue_wait=5, orphaned_timeout=120,
                                             heartbeat_interval=30, result_grace=60, execution_timeout=600),
                                self.clock)
        self.queue.start()
        self.addCleanup(self.queue.stop)

    def ask(self, query: QueuedQuery, wait: float | None = None) -> Deferred[ResultSet]:
        return ensureDeferred(self.queue.execute(query, wait))

    def ask_ignoring_wait(self, query: QueuedQuery, wait: float | None = None) -> Deferred[Any]:
        """Ask like a client that will not look at this answer (Continue wait is expected)."""
        return self.ask(query, wait).addErrback(lambda f: f.trap(ContinueWait))

    def test_identical_queries_share_one_execution(self) -> None:
        answers = [self.ask(item("a")) for _ in range(20)]
        self.assertEqual(self.db.started, ["a"])
        self.db.finish("a", 42)
        for answer in answers:
            self.assertEqual(self.successResultOf(answer).rows, [(42,)])

    def test_results_stay_readable_for_the_grace_period(self) -> None:
        first = self.ask(item("a"))
        self.db.finish("a", 7)
        self.successResultOf(first)
        self.clock.advance(59)
        self.assertEqual(self.successResultOf(self.ask(item("a"))).rows, [(7,)])
        self.assertEqual(self.db.started, ["a"])
        self.clock.advance(2)
        self.ask_ignoring_wait(item("a"))
        self.assertEqual(self.db.started, ["a", "a"])

    def test_concurrency_and_priorities(self) -> None:
        for key, priority, at in (("low1", 0, 1), ("low2", 0, 2), ("low3", 0, 3), ("high", 5, 4)):
            self.ask_ignoring_wait(item(key, priority, at))
        self.assertEqual(self.db.running, ["low1", "low2"])
        self.db.finish("low1")
        self.assertEqual(self.db.running, ["low2", "high"])
        self.db.finish("low2")
        self.assertEqual(self.db.running, ["high", "low3"])

    def test_continue_wait_reports_the_stage(self) -> None:
        running = self.ask(item("a", at=1))
        self.ask_ignoring_wait(item("b", at=2))
        waiting = self.ask(item("c", at=3))
        self.clock.advance(5)
        self.assertEqual(self.failureResultOf(running, ContinueWait).value.stage,
                         {"stage": "Executing query", "timeElapsed": 5000})
        self.assertEqual(self.failureResultOf(waiting, ContinueWait).value.stage, {"stage": "#1 in queue"})
        # The query kept running; asking again later gets its result.
        self.db.finish("a", 3)
        self.assertEqual(self.successResultOf(self.ask(item("a"))).rows, [(3,)])

    def test_errors_reach_every_waiter(self) -> None:
        answers = [self.ask(item("a")) for _ in range(3)]
        self.db.fail("a", 'relation "x" does not exist')
        for answer in answers:
            self.assertEqual(self.failureResultOf(answer, DatabaseError).value.message, 'relation "x" does not exist')

    def test_orphaned_queries_are_dropped_and_cancelled(self) -> None:
        self.ask_ignoring_wait(item("a", at=1), wait=1)
        self.ask_ignoring_wait(item("b", at=2), wait=1)
        self.ask_ignoring_wait(item("c", at=3), wait=1)
        self.assertEqual(self.db.running, ["a", "b"])
        # Polling keeps "a" alive; "b" (running) and "c" (waiting) are abandoned.
        for _ in range(13):
            self.clock.advance(10)
            self.ask_ignoring_wait(item("a", at=1), wait=1)
        self.clock.advance(1)
        self.assertEqual(self.db.cancelled, ["b"])
        self.assertNotIn("c", self.db.started)
        self.assertEqual(self.successResultOf(ensureDeferred(self.queue.sizes())), (0, 1))

    def test_a_query_with_its_own_orphan_timeout_outlives_the_queues(self) -> None:
        from dataclasses import replace

        self.ask_ignoring_wait(item("short", at=1), wait=1)           # running, the queue's 120 s
        self.ask_ignoring_wait(replace(item("long", at=2), orphaned_timeout=600), wait=1)  # running
        self.ask_ignoring_wait(replace(item("queued", at=3), orphaned_timeout=600), wait=1)  # waiting
        self.assertEqual(self.db.running, ["short", "long"])
        self.clock.advance(121)
        self.assertEqual(self.db.cancelled, ["short"])
        self.assertEqual(self.db.started, ["short", "long", "queued"])  # the freed slot
        # Asked again with the queue's timeout (a request's poll): the longer deadline stands.
        self.ask_ignoring_wait(item("long", at=2), wait=1)
        self.clock.advance(600 - 122)
        self.assertEqual(self.db.cancelled, ["short"])
        self.clock.advance(2)
        self.assertEqual(self.db.cancelled, ["short", "long", "queued"])
        self.assertEqual(self.successResultOf(ensureDeferred(self.queue.sizes())), (0, 0))

    def test_stalled_queries_are_queued_again(self) -> None:
        self.ask_ignoring_wait(item("a"), wait=1)
        # Another process took "b" and then stopped beating.
        queue = "SQL_QUERY_STANDALONE_default"
        self.ask_ignoring_wait(item("b"), wait=1)
        self.successResultOf(self.store.remove(queue, "b"))
        self.successResultOf(self.store.add(queue, item("b"), 10_000))
        self.assertIsNotNone(self.successResultOf(self.store.acquire(queue, "b", "dead-process", 3, 0)))
        self.clock.advance(121)
        self.assertIn("b", self.db.started)

    def test_execution_timeout(self) -> None:
        self.queue.options = QueueOptions(concurrency=2, continue_wait=1000, execution_timeout=60, orphaned_timeout=1000)
        answer = self.ask(item("a"))
        self.clock.advance(61)
        self.assertEqual(self.failureResultOf(answer, DatabaseError).value.message,
                         "Query execution timeout after 1 min of waiting")
        self.assertEqual(self.db.cancelled, ["a"])

    def test_priority_range(self) -> None:
        self.failureResultOf(self.ask(item("a", priority=10001)), CompileError)

    def test_stop_cancels_running_queries(self) -> None:
        self.ask_ignoring_wait(item("a"), wait=1)
        self.queue.stop()
        self.assertEqual(self.db.cancelled, ["a"])
