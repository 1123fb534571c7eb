"""Backends failing under load: PostgreSQL restarted, Redis killed and started again.

Each test runs its own PostgreSQL (tests.support.services.start_private_postgres) or its own
redis-server on a free port - never the shared ones - and a cubed server in the test process,
while a few clients keep sending /v1/load. What must hold:

- while a backend is down, every request is answered promptly (no hang): 503 with a message
  naming what is unavailable, or data that is right; ``/readyz`` answers DOWN (500);
- when the backend is back, requests and ``/readyz`` recover by themselves within seconds;
- no answer ever carries wrong data (a cache entry half written during the outage, an error
  kept as a result): the count always equals what the database held.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from cubed.config import DataSourceSettings
from tests.orchestrator.test_orchestrator_pg import (
    SETUP_SQL, Answer, cube, load, pg_run, request, server_environment, settings_of, sleep, wait_until, write_model,
)
from tests.support.server import RunningServer, start_server
from tests.support.services import free_port, require_postgres, service_absent, start_private_postgres

#: No answer may take longer than this while a backend is down (Redis command timeout 2 s,
#: the database fails at once; plus scheduling slack on a busy machine).
PROMPT = 6.0
#: A backend that is back must serve again within this many seconds.
RECOVERY = 20.0

ITEMS = cube("Items", "SELECT * FROM items", {"sql": "SELECT max(id) FROM items", "every": "1 second"})
QUERIES = [{"measures": ["Items.count"]},
           {"measures": ["Items.count"], "filters": [{"member": "Items.id", "operator": "gt", "values": ["0"]}]}]


@dataclass
class Sent:
    """One request of the load: when it was sent (monotonic s) and what came back."""

    at: float
    answer: Answer | None
    error: str | None = None


@dataclass
class Load:
    """``clients`` loops repeating /v1/load of the queries in turn until stopped."""

    url: str
    clients: int = 4
    pause: float = 0.05
    sent: list[Sent] = field(default_factory=list)
    _running: bool = True
    _loops: list[Deferred[None]] = field(default_factory=list)

    def start(self) -> None:
        self._loops = [Deferred.fromCoroutine(self._loop(n)) for n in range(self.clients)]

    async def _loop(self, n: int) -> None:
        turn = n
        while self._running:
            query = QUERIES[turn % len(QUERIES)]
            turn += 1
            at = time.monotonic()
            try:
                answer = await load(self.url, query, timeout=PROMPT * 3)
                self.sent.append(Sent(at, answer))
            except Exception as error:  # a transport error or a client timeout: recorded
                self.sent.append(Sent(at, None, f"{type(error).__name__}: {error}"))
            await sleep(self.pause)

    async def stop(self) -> None:
        self._running = False
        await gatherResults(self._loops, consumeErrors=True)

    def summary(self) -> str:
        """Return the count of answers by status and the slowest answer (for messages)."""
        from collections import Counter

        statuses = Counter((s.answer.status if s.answer else s.error) for s in self.sent)
        slowest = max((s.answer.took for s in self.sent if s.answer), default=0.0)
        refused = next((s.answer.text for s in self.sent if s.answer and s.answer.status != 200), "")
        return f"{len(self.sent)} requests {dict(statuses)}, slowest {slowest:.2f} s, e.g. {refused}"

    def since(self, moment: float) -> list[Sent]:
        return [s for s in self.sent if s.at >= moment]

    def check(self, testcase: unittest.TestCase, counts: dict[float, int]) -> None:
        """Every request answered promptly with 200 or 503; a 200 carries a count the database
        held (``counts``: time -> count from then on) while the request ran, or just before."""
        changes = sorted(counts.items())
        for sent in self.sent:
            testcase.assertIsNotNone(sent.answer, sent.error)
            assert sent.answer is not None
            testcase.assertLess(sent.answer.took, PROMPT, sent.answer.text)
            if sent.answer.continue_wait:
                continue
            if sent.answer.status == 503:
                testcase.assertIsInstance(sent.answer.json()["error"], str, sent.answer.text)
                testcase.assertIn("unavailable", sent.answer.json()["error"], sent.answer.text)
                continue
            testcase.assertEqual(sent.answer.status, 200, sent.answer.text)
            count = int(sent.answer.json()["data"][0]["Items.count"])
            allowed = held(changes, sent.at, sent.at + sent.answer.took)
            testcase.assertIn(count, allowed, f"sent at {sent.at}: {sent.answer.text}; database: {changes}")


def held(changes: list[tuple[float, int]], start: float, end: float, staleness: float = 2.0) -> set[int]:
    """Return the counts the database held between ``start - staleness`` and ``end`` (a cached
    answer may lag by the refresh key's renewal threshold, 1 s, plus slack)."""
    values = set()
    for i, (moment, value) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else float("inf")
        if moment <= end and until >= start - staleness:
            values.add(value)
    return values


async def all_served(traffic: Load) -> bool:
    """Return whether the last half second of the load saw requests, each answered 200."""
    recent = traffic.since(time.monotonic() - 0.5)
    return len(recent) >= 4 and all(s.answer is not None and s.answer.status == 200 for s in recent)


async def readyz(server: RunningServer) -> Answer:
    """GET /readyz (no token needed)."""
    return await request("GET", f"{server.url}/readyz", timeout=PROMPT * 2)


async def health_is(server: RunningServer, status: int) -> bool:
    """Return whether /readyz answers ``status`` now."""
    return (await readyz(server)).status == status


class PostgresRestartTests(unittest.TestCase):
    """PostgreSQL stopped and started again while clients load (memory store)."""

    timeout = 120

    def setUp(self) -> None:
        require_postgres()

    async def test_restart_during_load(self) -> None:
        instance = await start_private_postgres(self)
        database: DataSourceSettings = instance.settings(query_timeout=5.0)
        await pg_run(database, SETUP_SQL)
        project = Path(self.mktemp()).resolve()
        environment = server_environment(database, write_model(project, [ITEMS]))
        server = await start_server(self, settings_of(environment, project))
        counts = {0.0: 10}
        traffic = Load(server.url)
        traffic.start()
        try:
            await sleep(1.0)
            self.assertTrue(any(s.answer and s.answer.status == 200 for s in traffic.sent), traffic.summary())
            down_at = time.monotonic()
            await instance.stop()
            await wait_until(lambda: health_is(server, 500), PROMPT, "/readyz DOWN while PostgreSQL is stopped")
            self.assertEqual((await readyz(server)).json(), {"health": "DOWN"})
            await sleep(2.0)
            during = [s for s in traffic.since(down_at + 0.5) if s.answer is not None]
            self.assertTrue(any(s.answer.status == 503 for s in during), [s.answer.text for s in during[-5:]])
            await instance.start()
            up_at = time.monotonic()
            await wait_until(lambda: health_is(server, 200), RECOVERY, "/readyz HEALTH once PostgreSQL is back")

            await wait_until(lambda: all_served(traffic), RECOVERY, "every request served again once PostgreSQL is back")
            recovered_in = time.monotonic() - up_at
            await pg_run(database, "INSERT INTO items (category, amount) VALUES ('odd', 11)")
            counts[time.monotonic()] = 11
            await sleep(2.0)  # past the refresh key's renewal threshold (1 s)
            latest = traffic.since(time.monotonic() - 0.5)
            self.assertTrue(latest and all(int(s.answer.json()["data"][0]["Items.count"]) == 11 for s in latest),
                            [s.answer.text for s in latest])
        finally:
            await traffic.stop()
        traffic.check(self, counts)
        self.assertLess(recovered_in, RECOVERY, traffic.summary())


# -- Redis ------------------------------------------------------------------------------------
class RedisProcess(ProcessProtocol):
    """A private ``redis-server`` child on ``port`` (no persistence)."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()
        self.running = False

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.ended = Deferred()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory)]
        reactor.spawnProcess(self, binary, argv, env=dict(os.environ), path=str(self.directory))
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        ended, self.ended = self.ended, Deferred()
        ended.callback(None)

    async def kill(self) -> None:
        if not self.running:
            return
        ended = self.ended
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            return
        await ended

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


async def start_private_redis(testcase: unittest.TestCase) -> RedisProcess:
    """Start a redis-server for one test on a free port (killed at cleanup); fire when it answers."""
    if shutil.which("redis-server") is None:
        raise service_absent("redis-server is not installed (apt-get install redis-server)")
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir(parents=True)
    process = RedisProcess(free_port(), directory)
    process.start()
    testcase.addCleanup(lambda: Deferred.fromCoroutine(process.kill()))
    await wait_until(lambda: redis_answers(process.port), 10, "private redis-server answering")
    return process


async def redis_answers(port: int) -> bool:
    """Return whether a Redis on 127.0.0.1:``port`` answers PING."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Ping(Protocol):
        def __init__(self) -> None:
            self.reply: Deferred[bytes] = Deferred()

        def connectionMade(self) -> None:
            self.transport.write(b"PING\r\n")

        def dataReceived(self, data: bytes) -> None:
            if not self.reply.called:
                self.reply.callback(data)
            self.transport.loseConnection()

    try:
        protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1), Ping())
        reply = await protocol.reply.addTimeout(1, reactor)
    except Exception:
        return False
    return reply.startswith(b"+PONG")


class RedisOutageTests(unittest.TestCase):
    """Redis killed and started again while clients load (PostgreSQL: the shared server)."""

    timeout = 120

    def setUp(self) -> None:
        require_postgres()
        try:
            import cubed.orchestrator.redis_store  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("cubed.orchestrator.redis_store does not exist yet") from None

    async def test_redis_killed_during_load(self) -> None:
        from tests.orchestrator.test_orchestrator_pg import setup_database

        redis = await start_private_redis(self)
        database = await setup_database(self)
        project = Path(self.mktemp()).resolve()
        environment = server_environment(database, write_model(project, [ITEMS]), CUBEJS_CACHE_AND_QUEUE_DRIVER="redis",
                                         CUBEJS_REDIS_URL=redis.url)
        server = await start_server(self, settings_of(environment, project))
        counts = {0.0: 10}
        traffic = Load(server.url)
        traffic.start()
        try:
            await sleep(1.0)
            self.assertTrue(any(s.answer and s.answer.status == 200 for s in traffic.sent), traffic.summary())
            down_at = time.monotonic()
            await redis.kill()
            await wait_until(lambda: health_is(server, 500), PROMPT, "/readyz DOWN while Redis is down")
            await sleep(3.0)
            during = [s for s in traffic.since(down_at + 0.5) if s.answer is not None]
            self.assertTrue(during, "requests were answered while Redis was down")
            self.assertTrue(all(s.answer.status == 503 for s in during), [s.answer.text for s in during[-5:]])
            redis.start()
            up_at = time.monotonic()
            await wait_until(lambda: health_is(server, 200), RECOVERY, "/readyz HEALTH once Redis is back")

            await wait_until(lambda: all_served(traffic), RECOVERY, "every request served again once Redis is back")
            recovered_in = time.monotonic() - up_at
            await pg_run(database, "INSERT INTO items (category, amount) VALUES ('odd', 11)")
            counts[time.monotonic()] = 11
            await sleep(2.0)
            latest = traffic.since(time.monotonic() - 0.5)
            self.assertTrue(latest and all(int(s.answer.json()["data"][0]["Items.count"]) == 11 for s in latest),
                            [s.answer.text for s in latest])
        finally:
            await traffic.stop()
        traffic.check(self, counts)
        self.assertLess(recovered_in, RECOVERY, traffic.summary())
