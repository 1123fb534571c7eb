"""Two cubed processes - real ``twistd -n cubed`` children - sharing one Redis: one execution per
distinct query across the fleet, counted by PostgreSQL itself.

200 clients send the same slow query at once, alternating between the two processes and
polling (on either process) while they answer Continue wait. The model's cube calls
``cubed_probe``, which bumps a sequence (not rolled back, so a cancelled run counts too) and
inserts a row, once per execution: both must say 1. A second wave is answered from the shared
cache without touching PostgreSQL.

A process killed while it runs a query hands the query over to the other one (heartbeats).

The Redis is the shared test server; the test's keys are its own (see ``isolated_redis``).
"""
from __future__ import annotations

import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial import unittest

from tests.orchestrator.test_orchestrator_pg import (
    Answer, count_of, cube, load, probe_runs, probe_starts, probed, server_environment, setup_database, sleep,
    write_model,
)
from tests.support.services import free_port, redis_url, require_postgres, require_redis, unique_redis_prefix
from tests.test_startup import TWISTD, Twistd, clean_environment

START_TIMEOUT = 30.0
CLIENTS = 200
#: The Redis databases the twistd children of each test use when the settings take no key
#: prefix (a test's processes must not see another test's queue: concurrency and stalled
#: queries are counted per queue name).
REDIS_DB = {"test_one_execution_for_200_clients": 13, "test_a_killed_process_query_is_taken_over": 14}


def isolated_redis(database: int) -> dict[str, str]:
    """Return the variables pointing a server at the shared test Redis with keys no other test
    touches: a key prefix of its own when the settings take one (``CUBED_REDIS_PREFIX``), else a
    Redis database of its own (the SQL of each test is unique too, so cache keys never meet)."""
    from cubed.config import Settings

    if "redis_prefix" in getattr(Settings, "__dataclass_fields__", {}):
        return {"CUBEJS_CACHE_AND_QUEUE_DRIVER": "redis", "CUBEJS_REDIS_URL": redis_url(),
                "CUBED_REDIS_PREFIX": unique_redis_prefix("two-processes")}
    parts = urlsplit(redis_url())
    return {"CUBEJS_CACHE_AND_QUEUE_DRIVER": "redis",
            "CUBEJS_REDIS_URL": urlunsplit((parts.scheme, parts.netloc, f"/{database}", "", ""))}


class TwoProcessesTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise unittest.SkipTest(f"no twistd next to {sys.executable}")
        require_postgres()
        require_redis()
        try:
            import cubed.orchestrator.redis_store  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("cubed.orchestrator.redis_store does not exist yet") from None

    async def serve(self, environ: dict[str, str], project: Path) -> str:
        """Start one ``twistd -n cubed`` child on a free port; return its URL once /readyz is 200
        (the child is ``self.children[url]``)."""
        port = free_port()
        child = Twistd()
        self.children = getattr(self, "children", {})
        self.children[f"http://127.0.0.1:{port}"] = child
        argv = [str(TWISTD), "-n", "--pidfile=", "cubed", "--project-dir", "."]
        reactor.spawnProcess(child, argv[0], argv, env=clean_environment(PORT=str(port), **environ), path=str(project))

        async def stop() -> None:
            if child.running:
                child.signal("TERM")
                await child.ended().addTimeout(10, reactor).addErrback(lambda _: child.signal("KILL"))
            await child.ended()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        url = f"http://127.0.0.1:{port}"
        deadline = reactor.seconds() + START_TIMEOUT
        while True:
            if not child.running:
                self.fail(f"twistd exited with {child.status}\n{child.output()}")
            if reactor.seconds() > deadline:
                self.fail(f"/readyz not 200 within {START_TIMEOUT} s\n{child.output()}")
            try:
                response = await treq.get(f"{url}/readyz", persistent=False, timeout=2)
                await treq.content(response)
                if response.code == 200:
                    return url
            except Exception:
                pass
            await sleep(0.2)

    async def test_one_execution_for_200_clients(self) -> None:
        database = await setup_database(self)
        project = Path(self.mktemp()).resolve()
        tag = f"fleet_{uuid.uuid4().hex[:10]}"
        model = write_model(project, [cube("Fleet", probed(tag, 2))])
        environ = server_environment(database, model, **isolated_redis(REDIS_DB[self._testMethodName]),
                                     CUBEJS_CONCURRENCY="2")
        urls = await gatherResults([Deferred.fromCoroutine(self.serve(environ, project)) for _ in range(2)],
                                   consumeErrors=True)
        query = {"measures": ["Fleet.count", "Fleet.total"]}
        answers: list[list[Answer]] = [[] for _ in range(CLIENTS)]

        async def client(n: int) -> Answer:
            """Ask process n % 2 first, then the other one and so on while Continue wait."""
            turn = n
            while True:
                answer = await load(urls[turn % 2], query)
                answers[n].append(answer)
                if not answer.continue_wait:
                    return answer
                turn += 1
                if len(answers[n]) > 30:
                    raise AssertionError(f"client {n}: still Continue wait after 30 tries")

        finals = await gatherResults([Deferred.fromCoroutine(client(n)) for n in range(CLIENTS)], consumeErrors=True)
        for final in finals:
            self.assertEqual((count_of(final, "Fleet.count"), count_of(final, "Fleet.total")), (10, 55), final.text)
        self.assertEqual(await probe_starts(database), 1, "PostgreSQL started the query once")
        self.assertEqual(await probe_runs(database, tag), 1)
        waits = [a for each in answers for a in each if a.continue_wait]
        self.assertTrue(waits, "the 2 s query answered Continue wait (1 s) to some clients")
        self.assertEqual({a.json()["stage"]["stage"] for a in waits}, {"Executing query"})
        polled_elsewhere = sum(1 for each in answers if len(each) > 1)
        self.assertGreater(polled_elsewhere, 0, "some clients got the result from the other process")

        again = await gatherResults([load(urls[n % 2], query) for n in range(CLIENTS)], consumeErrors=True)
        self.assertEqual({count_of(a, "Fleet.count") for a in again}, {10})
        self.assertEqual(await probe_starts(database), 1, "the second wave came from the shared cache")

    async def test_a_killed_process_query_is_taken_over(self) -> None:
        """A process killed (SIGKILL) while it runs a query stops sending heartbeats; the other
        process puts the query back in the queue after 4 heartbeats (1 s each) and runs it, so
        the client polling the survivor gets its rows."""
        database = await setup_database(self)
        project = Path(self.mktemp()).resolve()
        tag = f"takeover_{uuid.uuid4().hex[:10]}"
        model = write_model(project, [cube("Takeover", probed(tag, 2))])
        environ = server_environment(database, model, **isolated_redis(REDIS_DB[self._testMethodName]),
                                     CUBED_HEARTBEAT_INTERVAL="1", CUBED_ORPHANED_TIMEOUT="30")
        first, second = await gatherResults([Deferred.fromCoroutine(self.serve(environ, project)) for _ in range(2)],
                                            consumeErrors=True)
        query = {"measures": ["Takeover.count"]}
        answer = await load(first, query)
        self.assertTrue(answer.continue_wait, answer.text)
        self.children[first].signal("KILL")
        await self.children[first].ended()
        polls = 0
        while True:
            answer = await load(second, query)
            polls += 1
            if not answer.continue_wait:
                break
            self.assertLess(polls, 20, answer.text)
        self.assertEqual(count_of(answer, "Takeover.count"), 10)
        self.assertGreaterEqual(polls, 3, "the survivor waited for the stalled threshold")
        self.assertEqual(await probe_starts(database), 2, "run by the killed process, then by the survivor")
