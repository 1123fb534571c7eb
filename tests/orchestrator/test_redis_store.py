"""RedisStore beyond the store contract: CUBEJS_REDIS_URL forms; atomicity when two processes
(two stores, two connection pools) race on the same queue; one execution for 50 identical
queries asked through two processes' queues, every waiter answered through the completion
channel; and behaviour while Redis is down and after it returns (a private redis-server on a
free port, never the shared one)."""
from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
from typing import Any, Awaitable, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from cubed.drivers.base import Column, ResultSet
from cubed.errors import ConfigError, ContinueWait, ServiceUnavailable
from cubed.orchestrator.queue import QueryQueue, QueueOptions
from cubed.orchestrator.stores import QueuedQuery
from tests.orchestrator.test_stores import delete_prefixed, item
from tests.support.services import free_port, redis_url, require_redis, service_absent, unique_redis_prefix

Q = "SQL_QUERY_STANDALONE_default"
TIMEOUT = 1.0  # command_timeout of the down/up tests
MARGIN = 0.5  # allowed lateness of a timed-out command


def sleep(seconds: float) -> Deferred[None]:
    """Return a Deferred firing after ``seconds`` of real time."""
    return deferLater(reactor, seconds, lambda: None)


def redis_store(url: str, prefix: str, **options: Any) -> Any:
    """Return a RedisStore (imported here: txredisapi imports the reactor)."""
    from cubed.orchestrator.redis_store import RedisStore

    return RedisStore.from_url(url, reactor, prefix=prefix, **options)


class RedisUrlTests(TestCase):
    """CUBEJS_REDIS_URL forms; no Redis needed."""

    def parse(self, url: str) -> Any:
        from cubed.orchestrator.redis_store import parse_redis_url

        return parse_redis_url(url)

    def test_forms(self) -> None:
        from cubed.orchestrator.redis_store import RedisAddress

        self.assertEqual(self.parse("redis://localhost"), RedisAddress("localhost", 6379, 0))
        self.assertEqual(self.parse("redis://10.0.0.5:6380/3"), RedisAddress("10.0.0.5", 6380, 3))
        self.assertEqual(self.parse("redis://:s%40cret@redis:6379/1"),
                         RedisAddress("redis", 6379, 1, password="s@cret"))
        self.assertEqual(self.parse("redis://cubed:pw@redis/2"),
                         RedisAddress("redis", 6379, 2, password="pw", username="cubed"))
        self.assertEqual(self.parse("redis://redis:6379?db=4"), RedisAddress("redis", 6379, 4))
        self.assertEqual(self.parse("rediss://cache.example.com:6380/0"),
                         RedisAddress("cache.example.com", 6380, 0, tls=True))

    def test_bad_urls_name_the_setting(self) -> None:
        for url in ("localhost:6379", "http://redis:6379", "unix:///tmp/redis.sock", "redis://", "redis://h:99999",
                    "redis://h:6379/zero", "redis://h:6379/0?timeout=5"):
            with self.assertRaises(ConfigError) as caught:
                self.parse(url)
            self.assertIn("CUBEJS_REDIS_URL", str(caught.exception))

    def test_password_never_in_descriptions(self) -> None:
        address = self.parse("redis://:topsecret@h:1/0")
        self.assertNotIn("topsecret", address.describe())
        self.assertNotIn("topsecret", repr(address).replace("password='topsecret'", ""))


class SharedRedisTestCase(TestCase):
    """Tests on the shared test Redis: stores with one unique prefix, its keys deleted at the end."""

    def setUp(self) -> None:
        require_redis()
        self.prefix = unique_redis_prefix("redis_store")
        self.stores: list[Any] = []
        self.addCleanup(self._cleanup)

    def store(self, **options: Any) -> Any:
        """Return a new store (a new connection pool: another process, as far as Redis knows)."""
        store = redis_store(redis_url(), self.prefix, **options)
        self.stores.append(store)
        return store

    async def _cleanup_async(self) -> None:
        if self.stores:
            await delete_prefixed(self.stores[0], self.prefix)
        await gatherResults([store.close() for store in self.stores])

    def _cleanup(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._cleanup_async())


class AtomicityTests(SharedRedisTestCase):
    """Two processes racing on the same keys through the Lua scripts."""

    async def test_racing_acquires_never_exceed_concurrency_nor_share_a_key(self) -> None:
        a, b = self.store(), self.store()
        owners = [(a, "a1"), (a, "a2"), (b, "b1"), (b, "b2")]
        rng = random.Random(7)
        max_running = 0
        for round_ in range(40):
            keys = [f"r{round_}-{n}" for n in range(6)]
            added = await gatherResults([store.add(Q, item(key, at=float(n)), 1e12)
                                         for n, key in enumerate(keys) for store in (a, b)])
            self.assertEqual(sum(added), len(keys))  # each key newly queued exactly once
            attempts = [(store, owner, key) for key in keys for store, owner in owners]
            rng.shuffle(attempts)
            got = await gatherResults([store.acquire(Q, key, owner, 2, float(round_)) for store, owner, key in attempts])
            winners = {(owner, key) for (store, owner, key), won in zip(attempts, got) if won is not None}
            self.assertEqual(len(winners), 2, winners)
            self.assertEqual(len({key for _owner, key in winners}), 2, winners)
            waiting, running = await a.sizes(Q)
            max_running = max(max_running, running)
            self.assertEqual((waiting, running), (4, 2))
            # Completion by the owner races a release by anyone and a completion by strangers:
            # exactly one of the owner's completion and the release wins.
            by_store = dict((owner, store) for store, owner in owners)
            races = []
            for owner, key in winners:
                stranger = "b1" if owner.startswith("a") else "a1"
                races.append(gatherResults([
                    by_store[owner].complete(Q, key, owner, f'"{key}"', 30.0),
                    by_store[stranger].release(Q, key, None),
                    by_store[stranger].complete(Q, key, stranger, '"wrong"', 30.0),
                    by_store[owner].heartbeat(Q, key, owner, 99.0),
                ]))
            for (completed, released, stranger_completed, _beat), (owner, key) in zip(await gatherResults(races),
                                                                                       winners):
                self.assertFalse(stranger_completed)
                self.assertEqual(int(completed) + int(released), 1, (owner, key))
                if completed:
                    self.assertEqual(await b.result(Q, key), f'"{key}"')
            await gatherResults([store.remove(Q, key) for key in keys for store in (a, b)])
            self.assertEqual(await b.sizes(Q), (0, 0))
        self.assertEqual(max_running, 2)

    async def test_racing_adds_queue_once_and_keep_the_latest_deadline(self) -> None:
        a, b = self.store(), self.store()
        deadlines = [float(n) for n in range(1, 41)]
        random.Random(3).shuffle(deadlines)
        added = await gatherResults([(a if n % 2 else b).add(Q, item("same"), deadline)
                                     for n, deadline in enumerate(deadlines)])
        self.assertEqual(sum(added), 1)
        self.assertEqual((await a.expired(Q, 39.0, 0.0)).orphaned, [])
        self.assertEqual((await b.expired(Q, 40.0, 0.0)).orphaned, ["same"])


class ExecutionTests(SharedRedisTestCase):
    """QueryQueue in two processes over one Redis."""

    async def test_fifty_identical_queries_through_two_processes_run_once(self) -> None:
        executed: list[str] = []
        columns = (Column("n", "number"), Column("s", "string"))

        def executor(query: QueuedQuery) -> Deferred[ResultSet]:
            executed.append(query.key)
            return deferLater(reactor, 0.3, lambda: ResultSet(columns, [(1, "é✓"), (2, None)]))

        # Reconcile ticks far apart: the waiters of the process that did not run the query can
        # only learn of the result through the completion channel.
        options = QueueOptions(concurrency=2, continue_wait=5.0, reconcile_interval=60.0, heartbeat_interval=30.0,
                               result_grace=30.0, orphaned_timeout=120.0)
        queues = [QueryQueue(Q, self.store(), executor, options, reactor) for _ in range(2)]
        for queue in queues:
            await queue.start()
            self.addCleanup(queue.stop)
        query = QueuedQuery(key="same-query", data_source="default", sql="SELECT 1", params=[],
                            added_at=reactor.seconds())
        started = reactor.seconds()
        results = await gatherResults([ensureDeferred(queues[n % 2].execute(query)) for n in range(50)])
        elapsed = reactor.seconds() - started
        self.assertEqual(executed, ["same-query"])
        self.assertEqual(sum(queue.executions for queue in queues), 1)
        self.assertEqual(results, [ResultSet(columns, [(1, "é✓"), (2, None)])] * 50)
        self.assertLess(elapsed, 3.0)
        # Asked again within the grace period: the kept result, no second execution.
        again = await gatherResults([ensureDeferred(queue.execute(query)) for queue in queues])
        self.assertEqual(again, [results[0]] * 2)
        self.assertEqual(len(executed), 1)
        self.assertEqual(await queues[0].sizes(), (0, 0))


    async def test_a_query_with_its_own_orphan_timeout_outlives_the_queues(self) -> None:
        from dataclasses import replace

        cancelled: list[str] = []

        def executor(query: QueuedQuery) -> Deferred[ResultSet]:
            return Deferred(lambda _d: cancelled.append(query.key))

        options = QueueOptions(concurrency=2, continue_wait=0.1, reconcile_interval=0.1, orphaned_timeout=0.5)
        queue = QueryQueue(Q, self.store(), executor, options, reactor)
        await queue.start()
        self.addCleanup(queue.stop)
        now = reactor.seconds()
        short = QueuedQuery(key="short", data_source="default", sql="SELECT 1", params=[], added_at=now)
        for query in (short, replace(short, key="long", added_at=now + 1, orphaned_timeout=2.0)):
            await self.assertFailure(ensureDeferred(queue.execute(query, wait=0)), ContinueWait)
        await sleep(1.0)
        self.assertEqual(cancelled, ["short"])
        self.assertEqual(await queue.sizes(), (0, 1))
        await sleep(1.5)
        self.assertEqual(cancelled, ["short", "long"])
        self.assertEqual(await queue.sizes(), (0, 0))

    async def test_a_completion_between_reading_the_result_and_adding_does_not_run_it_again(self) -> None:
        executed: list[str] = []
        columns = (Column("n", "number"),)

        def executor(query: QueuedQuery) -> Deferred[ResultSet]:
            executed.append(query.key)
            return deferLater(reactor, 0.1, lambda: ResultSet(columns, [(len(executed),)]))

        class LateAdder:
            """Process B's store: its add waits until process A has finished the query."""

            def __init__(self, store: Any, gate: Deferred[None]) -> None:
                self.store, self.gate = store, gate

            def __getattr__(self, name: str) -> Any:
                return getattr(self.store, name)

            async def _add(self, *args: Any) -> bool:
                await self.gate
                return bool(await self.store.add(*args))

            def add(self, *args: Any) -> Deferred[bool]:
                return Deferred.fromCoroutine(self._add(*args))

        options = QueueOptions(concurrency=2, continue_wait=3.0, reconcile_interval=60.0, result_grace=30.0)
        gate: Deferred[None] = Deferred()
        queue_a = QueryQueue(Q, self.store(), executor, options, reactor)
        queue_b = QueryQueue(Q, LateAdder(self.store(), gate), executor, options, reactor)
        for queue in (queue_a, queue_b):
            await queue.start()
            self.addCleanup(queue.stop)
        query = QueuedQuery(key="raced", data_source="default", sql="SELECT 1", params=[], added_at=1.0)
        asked_b = ensureDeferred(queue_b.execute(query))  # reads no result, then waits to add
        await sleep(0.05)
        self.assertEqual(await ensureDeferred(queue_a.execute(query)), ResultSet(columns, [(1,)]))
        gate.callback(None)
        self.assertEqual(await asked_b, ResultSet(columns, [(1,)]))
        await sleep(0.3)
        self.assertEqual(executed, ["raced"])
        self.assertEqual(await queue_a.sizes(), (0, 0))


class RedisProcess(ProcessProtocol):
    """A private redis-server child process (output discarded)."""

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class PrivateRedis:
    """A redis-server of our own on a free port (no persistence), started and stopped at will."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.options: list[str] = []  # more redis-server options, e.g. --requirepass
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="cubed-redis-")
        self.process: RedisProcess | None = None

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.settimeout(0.5)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    async def start(self) -> None:
        """Start the server and wait until it answers PING."""
        self.process = RedisProcess()
        argv = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", self.directory, *self.options]
        reactor.spawnProcess(self.process, self.executable, argv, env=dict(os.environ), path=self.directory)
        deadline = reactor.seconds() + 10
        while not self._answers():
            if reactor.seconds() > deadline or self.process.ended.called:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            await sleep(0.05)

    def command(self, *lines: str) -> bytes:
        """Send inline commands on a fresh connection; return the raw replies (blocking, local)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall("".join(f"{line}\r\n" for line in lines).encode())
            replies = b""
            while replies.count(b"\r\n") < len(lines):
                replies += sock.recv(4096)
            return replies

    async def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 5 s) and wait until it has exited."""
        process, self.process = self.process, None
        if process is None or process.ended.called:
            return
        process.transport.signalProcess("TERM")
        deadline = reactor.seconds() + 5
        while not process.ended.called and reactor.seconds() < deadline:
            await sleep(0.02)
        if not process.ended.called:
            process.transport.signalProcess("KILL")
            await process.ended

    async def destroy(self) -> None:
        """Stop the server and remove its directory."""
        await self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisOutageTests(TestCase):
    """A private Redis stopped and started again under a live store."""

    def setUp(self) -> Awaitable[None]:
        executable = shutil.which("redis-server")
        if executable is None:
            raise service_absent("redis-server is not installed (needed to stop and restart a private Redis)")
        self.redis = PrivateRedis(executable)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.redis.destroy()))
        self.prefix = unique_redis_prefix("outage")
        return Deferred.fromCoroutine(self.redis.start())

    def store(self) -> Any:
        store = redis_store(self.redis.url, self.prefix, command_timeout=TIMEOUT, reconnect_max_delay=2.0)
        self.addCleanup(store.close)
        return store

    async def timed(self, operation: Callable[[], Deferred[Any]]) -> tuple[float, Any]:
        """Return (seconds taken, result or Failure) of one operation."""
        started = reactor.seconds()
        try:
            result: Any = await operation()
        except Exception:
            result = Failure()
        return reactor.seconds() - started, result

    async def until_answering(self, store: Any, within: float) -> float:
        """Return the seconds until ``store.ping()`` succeeds again (fail after ``within``)."""
        started = reactor.seconds()
        while True:
            elapsed, result = await self.timed(store.ping)
            if not isinstance(result, Failure):
                return reactor.seconds() - started
            if reactor.seconds() - started > within:
                self.fail(f"Redis store did not answer {within} s after Redis came back: {result.getErrorMessage()}")
            await sleep(0.1)

    async def until_subscribed(self, store: Any, within: float) -> float:
        """Return the seconds until a new ``store.subscribe`` fires (it fires once the
        subscription is in place, or fails after the command timeout)."""
        started = reactor.seconds()
        while True:
            elapsed, result = await self.timed(lambda: store.subscribe(lambda queue, key: None))
            if not isinstance(result, Failure):
                return reactor.seconds() - started
            if reactor.seconds() - started > within:
                self.fail(f"the subscriber did not reconnect within {within} s: {result.getErrorMessage()}")

    def operations(self, store: Any) -> dict[str, Callable[[], Deferred[Any]]]:
        return {
            "ping": store.ping,
            "get": lambda: store.get("k"),
            "set": lambda: store.set("k", "v", 10.0),
            "delete": lambda: store.delete("k"),
            "add": lambda: store.add(Q, item("x"), 100.0),
            "touch": lambda: store.touch(Q, "x", 200.0),
            "result": lambda: store.result(Q, "x"),
            "stage": lambda: store.stage(Q, "x"),
            "waiting": lambda: store.waiting(Q, 5),
            "acquire": lambda: store.acquire(Q, "x", "o", 2, 1.0),
            "heartbeat": lambda: store.heartbeat(Q, "x", "o", 2.0),
            "complete": lambda: store.complete(Q, "x", "o", '"r"', 10.0),
            "expired": lambda: store.expired(Q, 1.0, 1.0),
            "remove": lambda: store.remove(Q, "x"),
            "release": lambda: store.release(Q, "x", None),
            "sizes": lambda: store.sizes(Q),
        }

    async def test_commands_fail_within_the_timeout_while_down_and_work_again_after_restart(self) -> None:
        from cubed.orchestrator.redis_store import RedisUnavailable

        store = self.store()
        heard: list[tuple[str, str]] = []
        await store.subscribe(lambda queue, key: heard.append((queue, key)))
        await store.ping()
        self.assertTrue(await store.add(Q, item("before"), 100.0))
        await self.redis.stop()

        names = list(self.operations(store))
        outcomes = await gatherResults([ensureDeferred(self.timed(operation))
                                        for operation in self.operations(store).values()])
        for name, (elapsed, result) in zip(names, outcomes):
            self.assertIsInstance(result, Failure, name)
            self.assertTrue(result.check(RedisUnavailable), (name, result))
            self.assertIsInstance(result.value, ServiceUnavailable)  # a 503
            self.assertLessEqual(elapsed, TIMEOUT + MARGIN, name)
        # One at a time too (nothing queued behind anything).
        for name in ("ping", "add", "get"):
            operation = self.operations(store)[name]
            elapsed, result = await self.timed(operation)
            self.assertTrue(isinstance(result, Failure) and result.check(RedisUnavailable), name)
            self.assertLessEqual(elapsed, TIMEOUT + MARGIN, name)
        elapsed, result = await self.timed(lambda: store.subscribe(lambda queue, key: None))
        self.assertTrue(isinstance(result, Failure) and result.check(RedisUnavailable))
        self.assertLessEqual(elapsed, TIMEOUT + MARGIN)

        await self.redis.start()  # same port, empty (no persistence), no script cache
        recovered = await self.until_answering(store, within=8.0)
        self.assertLess(recovered, 8.0)
        for name, operation in self.operations(store).items():
            elapsed, result = await self.timed(operation)
            self.assertFalse(isinstance(result, Failure), (name, result))
        # The subscriber is back (a completion published before it resubscribes is not heard:
        # QueryQueue's reconcile tick reads results of its waiters for that case).
        await self.until_subscribed(store, within=8.0)
        # The scripts run again (NOSCRIPT -> EVAL) and the completion is heard.
        await store.add(Q, item("after"), 100.0)
        self.assertIsNotNone(await store.acquire(Q, "after", "o", 2, 1.0))
        self.assertTrue(await store.complete(Q, "after", "o", '"done"', 10.0))
        deadline = reactor.seconds() + 8
        while (Q, "after") not in heard and reactor.seconds() < deadline:
            await sleep(0.05)
        self.assertIn((Q, "after"), heard)

    async def test_start_up_while_redis_is_down_does_not_block_and_recovers(self) -> None:
        from cubed.orchestrator.redis_store import RedisUnavailable

        await self.redis.stop()
        store = self.store()
        heard: list[tuple[str, str]] = []
        elapsed, result = await self.timed(lambda: store.subscribe(lambda queue, key: heard.append((queue, key))))
        self.assertTrue(isinstance(result, Failure) and result.check(RedisUnavailable))
        self.assertLessEqual(elapsed, TIMEOUT + MARGIN)
        elapsed, result = await self.timed(store.ping)
        self.assertTrue(isinstance(result, Failure) and result.check(RedisUnavailable))
        self.assertLessEqual(elapsed, TIMEOUT + MARGIN)

        await sleep(0.5)  # more failed reconnection attempts
        await self.redis.start()
        await self.until_answering(store, within=8.0)
        # Subscribing goes on in the background: a later subscribe fires once it is in place.
        await self.until_subscribed(store, within=8.0)
        deadline = reactor.seconds() + 2
        await store.add(Q, item("a"), 100.0)
        await store.acquire(Q, "a", "o", 2, 1.0)
        self.assertTrue(await store.complete(Q, "a", "o", '"r"', 10.0))
        # The listener registered while Redis was down hears it.
        while (Q, "a") not in heard and reactor.seconds() < deadline:
            await sleep(0.02)
        self.assertEqual(heard, [(Q, "a")])

    async def test_close_while_redis_is_down(self) -> None:
        store = redis_store(self.redis.url, self.prefix, command_timeout=TIMEOUT)
        await store.ping()
        await store.subscribe(lambda queue, key: None)
        await self.redis.stop()
        elapsed, result = await self.timed(store.close)
        self.assertNotIsInstance(result, Failure)
        self.assertLess(elapsed, 2.0)
        elapsed, result = await self.timed(store.ping)  # closed: fails at once
        self.assertIsInstance(result, Failure)
        self.assertLess(elapsed, 0.1)

    async def test_a_failed_login_is_retried_until_it_works(self) -> None:
        from cubed.orchestrator.redis_store import RedisUnavailable

        await self.redis.stop()
        self.redis.options = ["--requirepass", "right"]
        await self.redis.start()
        store = redis_store(f"redis://:wr%40ng@127.0.0.1:{self.redis.port}/1", self.prefix, command_timeout=TIMEOUT,
                            reconnect_max_delay=1.0)
        self.addCleanup(store.close)
        elapsed, result = await self.timed(store.ping)
        self.assertTrue(isinstance(result, Failure) and result.check(RedisUnavailable), result)
        self.assertLessEqual(elapsed, TIMEOUT + MARGIN)
        # The operator fixes the password on the server: the pool logs in by itself.
        self.assertEqual(self.redis.command("AUTH right", "CONFIG SET requirepass wr@ng"), b"+OK\r\n+OK\r\n")
        await self.until_answering(store, within=8.0)
        await store.set("k", "in db 1", 10.0)
        self.assertEqual(await store.get("k"), "in db 1")
        self.assertIn(b"in db 1", self.redis.command("AUTH wr@ng", "SELECT 1", f"GET {self.prefix}k"))
        await self.until_subscribed(store, within=8.0)
