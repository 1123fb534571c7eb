"""The query orchestrator through the whole server on a real PostgreSQL: Continue wait and the
result on a later poll, ``#N in queue``, the concurrency limit seen in ``pg_stat_activity``,
orphaned queries dropped and cancelled on the server, refresh keys and the cache modes.

Every test gets its own database (``setup_database``): a small ``items`` table and a
``cubed_probe(tag, seconds)`` function that counts its calls (a row in ``probe_runs``, kept
only if the query commits, and ``nextval('probe_starts')``, kept even if it is cancelled)
and sleeps. A cube whose SQL calls it once per query (an uncorrelated sub-select) is a slow
query whose executions PostgreSQL itself counts; ``control.delay`` makes a cube slow on demand.

The server runs in the test process (tests.support.server.start_server) with the memory store
(``Memory*Tests``) or with Redis (``Redis*Tests``: the shared test Redis under a key prefix of
the test's own). The queue's logic on a fake clock is tested in test_queue.py and
test_cache.py; these tests take real seconds, kept short by small timeouts (Continue wait
after 1 s, sleeps of 1-3 s).

The helpers here are shared with the other modules of this package (two processes, the JS
client, failures).
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import jwt
import psycopg2
import treq
import yaml
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from cubed.config import DataSourceSettings, Settings, load_settings
from tests.support.server import TEST_SECRET, RunningServer, start_server
from tests.support.services import create_test_database, redis_url, require_postgres, require_redis, unique_redis_prefix

BASE = "/cubejs-api/v1"
REQUEST_TIMEOUT = 30.0
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

SETUP_SQL = """
SET client_min_messages = warning;
CREATE TABLE items (id serial PRIMARY KEY, category text NOT NULL, amount integer NOT NULL);
INSERT INTO items (category, amount)
    SELECT CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END, g FROM generate_series(1, 10) g;
CREATE TABLE control (delay float8 NOT NULL);
INSERT INTO control VALUES (0);
CREATE TABLE probe_runs (id bigserial PRIMARY KEY, tag text NOT NULL, started timestamptz DEFAULT clock_timestamp());
CREATE SEQUENCE probe_starts;
CREATE FUNCTION cubed_probe(tag text, seconds float8) RETURNS integer LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM nextval('probe_starts');
    INSERT INTO probe_runs (tag) VALUES (tag);
    PERFORM pg_sleep(seconds);
    RETURN 1;
END
$$;
"""


# -- the database ---------------------------------------------------------------------------
def pg_connect(database: DataSourceSettings) -> Any:
    """Return an autocommit psycopg2 connection to a test database (blocking)."""
    connection = psycopg2.connect(host=database.host, port=database.port, dbname=database.database,
                                  user=database.user, password=database.password, connect_timeout=5)
    connection.autocommit = True
    return connection


def pg_run(database: DataSourceSettings, sql: str,
           params: tuple[Any, ...] | None = None) -> Deferred[list[tuple[Any, ...]]]:
    """Run ``sql`` on the test database in a thread; fire with its rows (empty for commands)."""

    def run() -> list[tuple[Any, ...]]:
        connection = pg_connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall()) if cursor.description is not None else []
        finally:
            connection.close()

    return deferToThread(run)


async def setup_database(testcase: unittest.TestCase, **changes: Any) -> DataSourceSettings:
    """Create the test's database with the items table and the probe function."""
    database = await create_test_database(testcase, **changes)
    await pg_run(database, SETUP_SQL)
    return database


async def probe_runs(database: DataSourceSettings, tag: str | None = None) -> int:
    """Return how many queries calling ``cubed_probe(tag, ...)`` committed."""
    if tag is None:
        rows = await pg_run(database, "SELECT count(*) FROM probe_runs")
    else:
        rows = await pg_run(database, "SELECT count(*) FROM probe_runs WHERE tag = %s", (tag,))
    return int(rows[0][0])


async def probe_starts(database: DataSourceSettings) -> int:
    """Return how many times ``cubed_probe`` started, committed or not (a sequence)."""
    rows = await pg_run(database, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM probe_starts")
    return int(rows[0][0])


async def running_probes(database: DataSourceSettings, tag: str | None = None) -> int:
    """Return how many of cubed's statements calling ``cubed_probe`` (with ``tag``) are active
    in PostgreSQL right now (pg_stat_activity of the test database)."""
    pattern = "%cubed_probe(%" if tag is None else f"%cubed_probe('{tag}'%"
    rows = await pg_run(database, (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND application_name = 'cubed' AND state = 'active' AND query ILIKE %s"), (pattern,))
    return int(rows[0][0])


# -- the model ------------------------------------------------------------------------------
HOURLY = {"every": "1 hour"}


def cube(name: str, sql: str, refresh_key: Mapping[str, Any] | None = HOURLY) -> dict[str, Any]:
    """Return a cube over rows shaped like ``items`` (count, total; id, category); its refresh
    key is ``every: 1 hour`` unless given (Cube's default, 10 s, could change while a test polls)."""
    definition: dict[str, Any] = {
        "name": name,
        "sql": sql,
        "measures": [{"name": "count", "type": "count"}, {"name": "total", "sql": "amount", "type": "sum"}],
        "dimensions": [{"name": "id", "sql": "id", "type": "number", "primary_key": True},
                       {"name": "category", "sql": "category", "type": "string"}],
    }
    if refresh_key is not None:
        definition["refresh_key"] = dict(refresh_key)
    return definition


def probed(tag: str, seconds: float | str) -> str:
    """Return the SQL of a cube over items that calls ``cubed_probe(tag, seconds)`` once per query
    (``seconds`` may be an SQL expression)."""
    return f"SELECT i.* FROM items i WHERE (SELECT cubed_probe('{tag}', {seconds})) = 1"


def write_model(directory: Path, cubes: list[dict[str, Any]]) -> Path:
    """Write ``cubes`` as ``model/cubes.yml`` under ``directory``; return the model directory."""
    model = directory / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "cubes.yml").write_text(yaml.safe_dump({"cubes": cubes}, sort_keys=False), encoding="utf-8")
    return model


def server_environment(database: DataSourceSettings, model: Path, **environ: str) -> dict[str, str]:
    """Return the CUBEJS_* variables of a server on ``database`` serving ``model``: production
    mode, Continue wait after 1 s (``environ`` adds or overrides)."""
    base = {
        "CUBEJS_DB_TYPE": "postgres",
        "CUBEJS_DB_HOST": database.host or "127.0.0.1",
        "CUBEJS_DB_PORT": str(database.port or 5432),
        "CUBEJS_DB_NAME": str(database.database),
        "CUBEJS_DB_USER": database.user or "postgres",
        "CUBEJS_API_SECRET": TEST_SECRET,
        "CUBEJS_SCHEMA_PATH": str(model),
        "CUBEJS_CONTINUE_WAIT_TIMEOUT": "1",
        "CUBEJS_LOG_LEVEL": "warn",
    }
    if database.password:
        base["CUBEJS_DB_PASS"] = database.password
    base.update(environ)
    return base


def settings_of(environ: Mapping[str, str], project: Path) -> Settings:
    """Return the Settings of an environment (nothing read from os.environ)."""
    return load_settings(dict(environ), str(project))


# -- HTTP -----------------------------------------------------------------------------------
@dataclass
class Answer:
    """One HTTP answer: status, body text, and how long it took (s)."""

    status: int
    text: str
    took: float

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def continue_wait(self) -> bool:
        """True for Cube's ``{"error": "Continue wait", ...}`` (status 200)."""
        if self.status != 200:
            return False
        try:
            return self.json().get("error") == "Continue wait"
        except ValueError:
            return False


def token(secret: str = TEST_SECRET) -> str:
    """Return a valid token for the test servers."""
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 3600}, secret, algorithm="HS256")


async def request(method: str, url: str, body: Any = None, timeout: float = REQUEST_TIMEOUT,
                  headers: Mapping[str, str] | None = None) -> Answer:
    """Send one request (no connection pool) and return its Answer."""
    sent = {"Authorization": token(), **(headers or {})}
    data = None
    if body is not None:
        sent["Content-Type"] = "application/json"
        data = json.dumps(body).encode("utf-8")
    started = time.monotonic()
    response = await treq.request(method, url, headers=sent, data=data, persistent=False, timeout=timeout)
    raw = await response.content()
    return Answer(response.code, raw.decode("utf-8"), time.monotonic() - started)


def load(base_url: str, query: Mapping[str, Any], timeout: float = REQUEST_TIMEOUT) -> Deferred[Answer]:
    """POST ``/v1/load`` with ``query``; fire with the Answer."""
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(request("POST", f"{base_url}{BASE}/load", {"query": dict(query)}, timeout))


async def poll(base_url: str, query: Mapping[str, Any], deadline: float = 30.0,
               every: float = 0.0) -> tuple[Answer, list[Answer]]:
    """Repeat ``/v1/load`` of ``query`` as a client does while it answers Continue wait (a pause
    of ``every`` s between tries); return the final answer and the Continue wait answers before it."""
    waits: list[Answer] = []
    end = time.monotonic() + deadline
    while True:
        answer = await load(base_url, query)
        if not answer.continue_wait:
            return answer, waits
        waits.append(answer)
        if time.monotonic() > end:
            raise AssertionError(f"still Continue wait after {deadline} s: {answer.text}")
        if every:
            await sleep(every)


def sleep(seconds: float) -> Deferred[None]:
    """Return a Deferred firing after ``seconds`` of real time."""
    return deferLater(reactor, seconds, lambda: None)


def rows_of(answer: Answer) -> list[dict[str, Any]]:
    """Return the data rows of a 200 /v1/load answer (failing the test on anything else)."""
    assert answer.status == 200 and not answer.continue_wait, answer.text
    return answer.json()["data"]


def count_of(answer: Answer, member: str) -> int:
    """Return the single value of ``member`` in a /v1/load answer."""
    return int(rows_of(answer)[0][member])


async def wait_until(check: Callable[[], Any], seconds: float, what: str, every: float = 0.1) -> Any:
    """Call the async ``check`` until it returns something true; fail after ``seconds``."""
    end = time.monotonic() + seconds
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {seconds} s (last: {value!r})")
        await sleep(every)


def same_time(one: Answer, other: Answer, tolerance_ms: int = 50) -> bool:
    """Return whether two answers carry the same lastRefreshTime (within ``tolerance_ms``: the
    answer that ran the query reports its own time, a little after the cache entry's)."""
    from datetime import datetime

    times = [datetime.strptime(a.json()["lastRefreshTime"], "%Y-%m-%dT%H:%M:%S.%fZ") for a in (one, other)]
    return abs((times[0] - times[1]).total_seconds()) * 1000 <= tolerance_ms


async def equals(value: Any, expected: Any) -> bool:
    """Return whether the awaited ``value`` equals ``expected`` (for wait_until)."""
    return (await value) == expected


async def stale_setup(testcase: ServerTestCase, delay: int = 3) -> tuple[RunningServer, DataSourceSettings,
                                                                        dict[str, Any], Answer]:
    """Start a server on the Tunable cube (slow as control.delay says, refresh key max(id)),
    cache its answer (one miss, then one hit), then add a row and make the source slow for
    ``delay`` s; return the server, its database, the query and the second (cached) answer.
    The refresh key is past its renewal threshold: the next request finds the entry stale."""
    server, database = await testcase.start([cube("Tunable", probed("tunable", "(SELECT delay FROM control)"),
                                                  {"sql": "SELECT max(id) FROM items", "every": "1 second"})])
    query = {"measures": ["Tunable.count"]}
    testcase.assertEqual(count_of(await load(server.url, query), "Tunable.count"), 10)
    first = await load(server.url, query)  # from the cache: lastRefreshTime is the entry's time
    testcase.assertEqual(count_of(first, "Tunable.count"), 10)
    await pg_run(database, "INSERT INTO items (category, amount) VALUES ('odd', 11);"
                           f"UPDATE control SET delay = {delay}")
    await sleep(1.2)  # past the refresh key's renewal threshold
    return server, database, query, first


# -- the tests ------------------------------------------------------------------------------
class ServerTestCase(unittest.TestCase):
    """A test that starts a server on a database of its own (memory store)."""

    timeout = 60

    def setUp(self) -> None:
        require_postgres()

    def store_environment(self) -> dict[str, str]:
        """Return the variables choosing the cache and queue store."""
        return {"CUBEJS_CACHE_AND_QUEUE_DRIVER": "memory"}

    async def start(self, cubes: list[dict[str, Any]], **environ: str) -> tuple[RunningServer, DataSourceSettings]:
        """Create the database, write the model and start a server on them."""
        self.database = await setup_database(self)
        project = Path(self.mktemp()).resolve()
        model = write_model(project, cubes)
        environment = server_environment(self.database, model, **self.store_environment(), **environ)
        server = await start_server(self, settings_of(environment, project))
        return server, self.database


class RedisServerTestCase(ServerTestCase):
    """The same with the Redis store: the shared test Redis, under a key prefix of this test's
    own (the settings take no prefix yet, so the server's store is made with one here)."""

    def setUp(self) -> None:
        super().setUp()
        use_redis_store(self, "orchestrator")

    def store_environment(self) -> dict[str, str]:
        return redis_store_environment()


def redis_store_environment() -> dict[str, str]:
    """Return the variables choosing the Redis store (the shared test Redis)."""
    return {"CUBEJS_CACHE_AND_QUEUE_DRIVER": "redis", "CUBEJS_REDIS_URL": redis_url()}


def use_redis_store(testcase: unittest.TestCase, label: str) -> None:
    """Make the servers ``testcase`` builds keep their Redis keys under a prefix of its own
    (``unique_redis_prefix(label)``); skip when Redis is absent. Returns None."""
    try:
        from cubed.orchestrator import redis_store
    except ImportError:
        raise unittest.SkipTest("cubed.orchestrator.redis_store does not exist yet") from None
    require_redis()
    import cubed.orchestrator.setup

    prefix = unique_redis_prefix(label)

    def make_store(settings: Settings, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        return redis_store.RedisStore.from_url(settings.redis_url, reactor, prefix=prefix)

    testcase.patch(cubed.orchestrator.setup, "make_store", make_store)


# The groups of tests below run with each store (the classes at the end); type checkers see
# them as the test cases they become.
_Mixin: Any = ServerTestCase if TYPE_CHECKING else object


class QueueTests(_Mixin):
    """The queue through the server: Continue wait, positions, concurrency, orphans, timeouts."""

    async def test_continue_wait_then_result(self) -> None:
        """A 3 s query answers Continue wait with its stage after 1 s; the same request repeated
        gets the data; PostgreSQL ran it once; a later request is answered from the cache."""
        server, database = await self.start([cube("Slow", probed("slow", 3))])
        query = {"measures": ["Slow.count", "Slow.total"]}
        first = await load(server.url, query)
        self.assertTrue(first.continue_wait, first.text)
        body = first.json()
        self.assertEqual(sorted(body), ["error", "stage"])
        self.assertEqual(body["stage"]["stage"], "Executing query")
        self.assertEqual(sorted(body["stage"]), ["stage", "timeElapsed"])
        self.assertIsInstance(body["stage"]["timeElapsed"], int)
        self.assertTrue(800 <= body["stage"]["timeElapsed"] <= 4000, body)
        self.assertTrue(0.9 <= first.took < 4, first.took)
        final, waits = await poll(server.url, query)
        self.assertEqual(rows_of(final), [{"Slow.count": "10", "Slow.total": "55"}])
        self.assertTrue(ISO_TIME.match(final.json()["lastRefreshTime"]), final.text)
        self.assertIs(final.json()["slowQuery"], False)
        elapsed = [w.json()["stage"]["timeElapsed"] for w in waits]
        self.assertEqual(elapsed, sorted(elapsed), "timeElapsed grows from poll to poll")
        self.assertEqual(await probe_runs(database, "slow"), 1)
        again = await load(server.url, query)
        self.assertEqual(rows_of(again), rows_of(final))
        self.assertLess(again.took, 0.5)
        self.assertEqual(await probe_starts(database), 1)

    async def test_queue_position(self) -> None:
        """With concurrency 1, a second slow query waits: ``#1 in queue`` while the first runs,
        then ``Executing query``; both complete for a client that keeps polling."""
        server, database = await self.start([cube("SlowA", probed("a", 2)), cube("SlowB", probed("b", 2))],
                                            CUBEJS_CONCURRENCY="1")
        first = load(server.url, {"measures": ["SlowA.count"]})
        await wait_until(lambda: running_probes(database, "a"), 5, "query a running")
        second = await load(server.url, {"measures": ["SlowB.count"]})
        self.assertEqual(second.json(), {"error": "Continue wait", "stage": {"stage": "#1 in queue"}})
        self.assertTrue((await first).continue_wait)
        final_b, waits = await poll(server.url, {"measures": ["SlowB.count"]})
        stages = [w.json()["stage"]["stage"] for w in waits]
        self.assertIn("Executing query", stages)
        self.assertEqual(count_of(final_b, "SlowB.count"), 10)
        final_a, _ = await poll(server.url, {"measures": ["SlowA.count"]})
        self.assertEqual(count_of(final_a, "SlowA.count"), 10)
        self.assertEqual((await probe_runs(database, "a"), await probe_runs(database, "b")), (1, 1))

    async def test_concurrency_limit_in_postgres(self) -> None:
        """Concurrency 2 and 10 distinct slow queries: PostgreSQL never runs more than 2 at once
        (pg_stat_activity sampled every 50 ms), and every client that keeps polling gets its rows."""
        server, database = await self.start([cube("Slow", probed("slow", 0.5))], CUBEJS_CONCURRENCY="2")
        queries = [{"measures": ["Slow.count"], "filters": [
            {"member": "Slow.id", "operator": "lte", "values": [str(n)]}]} for n in range(1, 11)]
        samples: list[int] = []
        done = False

        async def sample() -> None:
            while not done:
                samples.append(await running_probes(database))
                await sleep(0.05)

        sampler = Deferred.fromCoroutine(sample())
        clients = gatherResults([Deferred.fromCoroutine(poll(server.url, q, deadline=40)) for q in queries],
                                consumeErrors=True)
        try:
            finals = await clients
        finally:
            done = True
            await sampler
        self.assertEqual([count_of(final, "Slow.count") for final, _ in finals], list(range(1, 11)))
        self.assertEqual(await probe_runs(database, "slow"), 10)
        self.assertLessEqual(max(samples), 2, samples)
        self.assertEqual(max(samples), 2, "two ran at once at some point")
        positions = {w.json()["stage"]["stage"] for _, waits in finals for w in waits}
        self.assertTrue(any(p.endswith("in queue") for p in positions), positions)

    async def test_orphaned_query_is_cancelled(self) -> None:
        """A query nobody polls for is dropped after the orphaned timeout (3 s) and its backend
        cancelled in PostgreSQL; a query still polled for (4.5 s) outlives the same timeout and
        completes."""
        server, database = await self.start([cube("Forgotten", probed("forgotten", 60)),
                                             cube("Wanted", probed("wanted", 4.5))],
                                            CUBED_ORPHANED_TIMEOUT="3", CUBED_HEARTBEAT_INTERVAL="1",
                                            CUBEJS_CONCURRENCY="2")
        forgotten = await load(server.url, {"measures": ["Forgotten.count"]})
        self.assertTrue(forgotten.continue_wait, forgotten.text)
        started = time.monotonic()
        wanted = Deferred.fromCoroutine(poll(server.url, {"measures": ["Wanted.count"]}, every=0.5))
        self.assertEqual(await running_probes(database, "forgotten"), 1)
        await wait_until(lambda: equals(running_probes(database, "forgotten"), 0), 10,
                         "the forgotten query cancelled in PostgreSQL")
        gone_after = time.monotonic() - started
        self.assertGreaterEqual(gone_after, 1.5)
        self.assertEqual(await probe_runs(database, "forgotten"), 0, "cancelled: its transaction rolled back")
        final, waits = await wanted
        self.assertEqual(count_of(final, "Wanted.count"), 10)
        self.assertGreaterEqual(len(waits), 2)
        self.assertEqual(await probe_runs(database, "wanted"), 1)
        self.assertEqual(await probe_starts(database), 2)

    async def test_execution_timeout(self) -> None:
        """A query longer than CUBEJS_DB_QUERY_TIMEOUT (2 s) ends with an error for the client
        that polls, not with Continue wait forever; PostgreSQL stopped it."""
        server, database = await self.start([cube("Slow", probed("slow", 30))], CUBEJS_DB_QUERY_TIMEOUT="2")
        started = time.monotonic()
        final, waits = await poll(server.url, {"measures": ["Slow.count"]}, deadline=20)
        self.assertEqual(final.status, 400, final.text)
        self.assertIn("timeout", final.json()["error"], final.text)
        self.assertGreaterEqual(len(waits), 1)
        self.assertLess(time.monotonic() - started, 20, "ended by the 2 s timeout, not by the 30 s query")
        # The cancel reaches PostgreSQL on its own connection: give a loaded machine a moment.
        for _ in range(50):
            if await running_probes(database, "slow") == 0:
                break
            await sleep(0.1)
        self.assertEqual(await running_probes(database, "slow"), 0)


class StaleCacheTests(_Mixin):
    """Refresh keys and the cache modes that answer stale entries or wait for fresh ones."""

    async def test_refresh_key_change(self) -> None:
        """refresh_key {sql: max(id), every: 1 second}: a new row is in the next answer after
        the renewal threshold; until then the cached answer; lastRefreshTime moves."""
        server, database = await self.start([cube("Items", "SELECT * FROM items",
                                                  {"sql": "SELECT max(id) FROM items", "every": "1 second"})])
        query = {"measures": ["Items.count"]}
        first = await load(server.url, query)
        read_at = time.monotonic()
        self.assertEqual(count_of(first, "Items.count"), 10)
        await pg_run(database, "INSERT INTO items (category, amount) VALUES ('odd', 11)")
        cached = await load(server.url, query)
        if time.monotonic() - read_at < 0.8:
            self.assertEqual(count_of(cached, "Items.count"), 10)
            self.assertTrue(same_time(cached, first), (cached.text, first.text))
        await sleep(max(0.0, 1.2 - (time.monotonic() - read_at)))
        fresh = await load(server.url, query)
        self.assertEqual(count_of(fresh, "Items.count"), 11)
        self.assertGreater(fresh.json()["lastRefreshTime"], first.json()["lastRefreshTime"])
        self.assertIs(fresh.json()["slowQuery"], False)

    async def stale_setup(self, delay: int = 3) -> tuple[RunningServer, DataSourceSettings, dict[str, Any], Answer]:
        """See ``stale_setup`` (the module function)."""
        return await stale_setup(self, delay)

    async def test_cached_answer_while_the_queue_is_busy(self) -> None:
        """With the only execution slot taken by a slow query, a query whose answer is cached
        is still answered at once when its sql refresh key is due: the key is read in the
        background and the last value serves meanwhile (Cube's foreground path), not queued
        behind the slow query as Continue wait."""
        server, database = await self.start([
            cube("Items", "SELECT * FROM items", {"sql": "SELECT max(id) FROM items", "every": "1 second"}),
            cube("Slow", probed("slow", 4)),
        ], CUBEJS_CONCURRENCY="1")
        query = {"measures": ["Items.count"]}
        self.assertEqual(count_of(await load(server.url, query), "Items.count"), 10)
        slow = await load(server.url, {"measures": ["Slow.count"]})
        self.assertTrue(slow.continue_wait, slow.text)
        await sleep(1.2)  # the refresh key is due
        answer = await load(server.url, query)
        self.assertEqual(count_of(answer, "Items.count"), 10)
        self.assertLess(answer.took, 0.5)

    async def test_stale_if_slow(self) -> None:
        """stale-if-slow (the default): the refresh takes 3 s, so after the Continue-wait timeout
        the stale entry is answered with slowQuery: true; the refresh completes and is served."""
        server, database, query, first = await self.stale_setup()
        stale = await load(server.url, {**query, "cache": "stale-if-slow"})
        self.assertEqual(count_of(stale, "Tunable.count"), 10)
        self.assertIs(stale.json()["slowQuery"], True)
        self.assertEqual(stale.json()["lastRefreshTime"], first.json()["lastRefreshTime"])
        self.assertTrue(0.9 <= stale.took < 2.9, stale.took)
        await wait_until(lambda: equals(probe_runs(database, "tunable"), 2), 10, "refresh done")
        fresh = await load(server.url, query)
        self.assertEqual((count_of(fresh, "Tunable.count"), fresh.json()["slowQuery"]), (11, False))
        self.assertGreater(fresh.json()["lastRefreshTime"], first.json()["lastRefreshTime"])

    async def test_stale_while_revalidate(self) -> None:
        """stale-while-revalidate answers the stale entry at once and refreshes behind it."""
        server, database, query, first = await self.stale_setup()
        stale = await load(server.url, {**query, "cache": "stale-while-revalidate"})
        self.assertEqual(count_of(stale, "Tunable.count"), 10)
        self.assertLess(stale.took, 0.9)
        self.assertEqual(stale.json()["lastRefreshTime"], first.json()["lastRefreshTime"])
        await wait_until(lambda: equals(probe_runs(database, "tunable"), 2), 10, "refresh done")
        fresh = await load(server.url, {**query, "cache": "stale-while-revalidate"})
        self.assertEqual(count_of(fresh, "Tunable.count"), 11)

    async def test_must_revalidate(self) -> None:
        """must-revalidate never answers the stale entry: Continue wait until the fresh rows."""
        server, database, query, _first = await self.stale_setup()
        final, waits = await poll(server.url, {**query, "cache": "must-revalidate"})
        self.assertGreaterEqual(len(waits), 1)
        self.assertEqual(waits[0].json()["stage"]["stage"], "Executing query")
        self.assertEqual(count_of(final, "Tunable.count"), 11)
        self.assertEqual(await probe_runs(database, "tunable"), 2)


class CacheModeTests(_Mixin):
    """no-cache, renewQuery, failed executions, the request's cache parameter."""

    async def test_no_cache_reads_the_source_every_time(self) -> None:
        """no-cache runs the query on every request, even right after an identical one, and
        does not read the refresh key."""
        server, database = await self.start([cube("Tunable", probed("tunable", "(SELECT delay FROM control)"),
                                                  {"sql": "SELECT max(id) FROM items", "every": "1 hour"})])
        query = {"measures": ["Tunable.count"], "cache": "no-cache"}
        counts = []
        for extra in range(3):
            counts.append(count_of(await load(server.url, query), "Tunable.count"))
            await pg_run(database, "INSERT INTO items (category, amount) VALUES ('odd', 1)")
        self.assertEqual(counts, [10, 11, 12])
        self.assertEqual(await probe_runs(database, "tunable"), 3)

    async def test_slow_no_cache_polled_without_request_id(self) -> None:
        """A slow no-cache query polled by a client that sends no x-request-id (curl, a script)
        completes: the polls join the running execution instead of starting new ones."""
        server, database = await self.start([cube("Tunable", probed("tunable", "(SELECT delay FROM control)"))])
        await pg_run(database, "UPDATE control SET delay = 2")
        final, waits = await poll(server.url, {"measures": ["Tunable.count"], "cache": "no-cache"}, deadline=5)
        self.assertEqual(count_of(final, "Tunable.count"), 10)
        self.assertEqual(await probe_starts(database), 1, f"{len(waits)} Continue waits")

    async def test_slow_no_cache_polled_with_one_span(self) -> None:
        """The same client with Cube's request ids (``<span>-span-<n>``, one span for its retries,
        as @cubejs-client/core sends them) gets the rows of one execution."""
        server, database = await self.start([cube("Tunable", probed("tunable", "(SELECT delay FROM control)"))])
        await pg_run(database, "UPDATE control SET delay = 2")
        span = uuid.uuid4().hex
        query = {"measures": ["Tunable.count"], "cache": "no-cache"}
        for n in range(1, 20):
            answer = await request("POST", f"{server.url}{BASE}/load", {"query": query},
                                   headers={"x-request-id": f"{span}-span-{n}"})
            if not answer.continue_wait:
                break
        self.assertEqual(count_of(answer, "Tunable.count"), 10)
        self.assertEqual(await probe_starts(database), 1)

    async def test_renew_query(self) -> None:
        """renewQuery: true re-reads the source although the refresh key did not change."""
        server, database = await self.start([cube("Tunable", probed("tunable", "(SELECT delay FROM control)"),
                                                  {"sql": "SELECT max(id) FROM items", "every": "1 hour"})])
        query = {"measures": ["Tunable.total"]}
        self.assertEqual(count_of(await load(server.url, query), "Tunable.total"), 55)
        await pg_run(database, "UPDATE items SET amount = amount + 1 WHERE id = 1")  # max(id) unchanged
        self.assertEqual(count_of(await load(server.url, query), "Tunable.total"), 55)  # cached
        renewed = await load(server.url, {**query, "renewQuery": True})
        self.assertEqual(count_of(renewed, "Tunable.total"), 56)
        self.assertEqual(count_of(await load(server.url, query), "Tunable.total"), 56)
        self.assertEqual(await probe_runs(database, "tunable"), 2)

    async def test_failed_query_runs_again(self) -> None:
        """A query that failed (division by zero while control.delay is 0) runs again on the next
        request once the cause is gone, as in Cube (an error reaches the waiters of that
        execution; it is not kept as the query's result for later requests)."""
        fragile = "SELECT i.* FROM items i WHERE (SELECT 1 / delay FROM control) > 0"
        server, database = await self.start([cube("Fragile", fragile)])
        await pg_run(database, "UPDATE control SET delay = 0")
        failed = await load(server.url, {"measures": ["Fragile.count"]})
        self.assertEqual((failed.status, failed.json()), (400, {"error": "Error: division by zero"}))
        await pg_run(database, "UPDATE control SET delay = 1")
        again = await load(server.url, {"measures": ["Fragile.count"]})
        self.assertEqual(count_of(again, "Fragile.count"), 10)

    async def test_cache_mode_of_the_request(self) -> None:
        """The request's own ``cache`` parameter (POST body and GET URL, beside ``query``) sets
        the cache mode: no-cache reads the source although the entry is fresh."""
        server, database = await self.start([cube("Tunable", probed("tunable", "(SELECT delay FROM control)"))])
        query = {"measures": ["Tunable.count"]}
        self.assertEqual(count_of(await load(server.url, query), "Tunable.count"), 10)
        await pg_run(database, "INSERT INTO items (category, amount) VALUES ('odd', 1)")
        posted = await request("POST", f"{server.url}{BASE}/load", {"query": query, "cache": "no-cache"})
        self.assertEqual(count_of(posted, "Tunable.count"), 11)
        await pg_run(database, "INSERT INTO items (category, amount) VALUES ('odd', 1)")
        url = f"{server.url}{BASE}/load?" + urlencode({"query": json.dumps(query), "cache": "no-cache"})
        self.assertEqual(count_of(await request("GET", url), "Tunable.count"), 12)


class MemoryQueueTests(QueueTests, ServerTestCase):
    """The queue with the memory store."""


class MemoryStaleCacheTests(StaleCacheTests, ServerTestCase):
    """Refresh keys and stale answers with the memory store."""


class MemoryCacheModeTests(CacheModeTests, ServerTestCase):
    """The other cache modes with the memory store."""


class RedisQueueTests(QueueTests, RedisServerTestCase):
    """The queue with the Redis store."""


class RedisStaleCacheTests(StaleCacheTests, RedisServerTestCase):
    """Refresh keys and stale answers with the Redis store."""


class RedisCacheModeTests(CacheModeTests, RedisServerTestCase):
    """The other cache modes with the Redis store."""
