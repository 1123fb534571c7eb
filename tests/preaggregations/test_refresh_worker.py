"""The refresh worker (issue 5): orphaned refresh jobs, the scheduled loop, one pass at a time,
and SIGTERM in the middle of a build.

- ``OrphanedRefreshJobTests`` (fake clock, memory store, a fake data source whose CREATE TABLE
  statements finish only when the test releases them, concurrency 1): the builds a refresh
  pass queues are dropped from the pre-aggregation queue once nobody renews them within the
  refresh builds' orphan timeout (the running one cancelled in the database); passes repeated
  at the worker's interval keep renewing them and every build completes, also with a timer
  longer than the queue's orphan timeout; a build a request started keeps the queue's.
- ``ScheduledLoopTests`` (real PostgreSQL, the whole server in this process on a real port,
  ``CUBEJS_REFRESH_WORKER=true`` with a 1 s timer): a rollup is built with no request at all,
  and rebuilt after new rows change its ``sql`` refresh key; ``/v1/load`` then reads the
  rebuilt table.
- ``OnePassAtATimeTests`` (the real RefreshWorker and APScheduler on the reactor, a pass that
  waits for a Deferred the test fires): passes never overlap; runs that fall due meanwhile are
  skipped, counted and logged; stopping the worker cancels the pass in progress.
- ``SigtermMidBuildTests`` (a real ``twistd -n cubed`` on PostgreSQL with the worker on): a
  build that would take 30 s is interrupted by SIGTERM; the process exits promptly and cleanly
  (status 143, "refresh worker stopped", no traceback), the CREATE TABLE is gone from
  ``pg_stat_activity`` and no table of the build remains. The same while a pass is in progress
  (waiting for a slow refresh key).

The timer is given as ``1s``: cubed reads a bare ``CUBEJS_SCHEDULED_REFRESH_TIMER=1`` as "true"
(the default 30 s), where Cube reads a number as seconds.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from cubed.drivers.base import Column, ResultSet
from cubed.errors import ContinueWait
from cubed.hooks import Hooks
from cubed.model.registry import compile_directory
from cubed.orchestrator.memory import MemoryStore
from cubed.orchestrator.orchestrator import Orchestrator
from cubed.orchestrator.partitions import parse_table_name
from cubed.orchestrator.queue import QueueOptions
from cubed.orchestrator.refresh import RefreshScheduler, RefreshWorker, refresh_orphaned_timeout
from tests.orchestrator.test_orchestrator_pg import (
    BASE, load, pg_run, request, rows_of, server_environment, settings_of, setup_database, sleep, wait_until,
    write_model,
)
from tests.support.server import start_server
from tests.support.services import free_port, require_postgres

SCHEMA = "prod_pre_aggregations"

# -- orphaned refresh jobs on a fake clock --------------------------------------------------
#: 2024-04-01T00:01:00Z: passes over the next minutes stay in one hour of the ``every`` key.
START = 1711929660.0
ORPHANED_TIMEOUT = 120.0
#: The refresh worker's default interval (CUBEJS_SCHEDULED_REFRESH_TIMER).
WORKER_INTERVAL = 30.0
#: The orphan timeout of the builds a pass queues (an hour: Cube's for refresh jobs).
REFRESH_TIMEOUT = refresh_orphaned_timeout(ORPHANED_TIMEOUT, WORKER_INTERVAL)

FAKE_MODEL = {
    "cubes": [{
        "name": "Orders",
        "sql_table": "public.orders",
        "refresh_key": {"every": "1 hour"},
        "measures": [{"name": "count", "type": "count"}, {"name": "total", "sql": "amount", "type": "sum"}],
        "dimensions": [{"name": "id", "sql": "id", "type": "number", "primary_key": True},
                       {"name": "createdAt", "sql": "created_at", "type": "time"}],
        "pre_aggregations": [{
            "name": "daily",
            "measures": ["count", "total"],
            "time_dimension": "createdAt",
            "granularity": "day",
            "partition_granularity": "month",
            "refresh_key": {"every": "1 hour"},
        }],
    }],
}
#: What the fake data source says ``min``/``max`` of ``created_at`` are: three monthly partitions.
BOUNDS = ("2024-01-03T10:00:00.000", "2024-03-20T08:00:00.000")
PARTITIONS = ["orders_daily20240301", "orders_daily20240201", "orders_daily20240101"]  # newest first
_CREATE_TABLE = re.compile(r"^CREATE TABLE (\w+)\.(\w+) AS ", re.IGNORECASE)
_DROP_TABLE = re.compile(r"^DROP TABLE IF EXISTS (\w+)\.(\w+)", re.IGNORECASE)


class FakeWarehouse:
    """A postgres-dialect data source: ``CREATE TABLE <schema>.<name> AS ...`` runs until the
    test calls ``release`` (then the table exists and ``information_schema.tables`` lists it);
    cancelling one is recorded. Everything else answers at once."""

    dialect = "postgres"
    db_type = "postgres"

    def __init__(self) -> None:
        self.tables: set[tuple[str, str]] = set()
        self.building: dict[str, Deferred[ResultSet]] = {}
        self.started: list[str] = []     # CREATE TABLE statements begun (table names), in order
        self.cancelled: list[str] = []
        self.statements: list[str] = []

    def start(self) -> Deferred[None]:
        return succeed(None)

    def test_connection(self) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)

    def execute(self, sql: str, params: Any, name: str = "query") -> Deferred[ResultSet]:
        self.statements.append(sql)
        created = _CREATE_TABLE.match(sql)
        if created:
            schema, table = created.group(1), created.group(2)
            self.started.append(table)

            def cancel(_d: Deferred[ResultSet]) -> None:
                self.cancelled.append(table)
                self.building.pop(table, None)

            build: Deferred[ResultSet] = Deferred(cancel)
            self.building[table] = build
            build.addCallback(self._created, schema, table)
            return build
        dropped = _DROP_TABLE.match(sql)
        if dropped:
            self.tables.discard((dropped.group(1), dropped.group(2)))
            return succeed(ResultSet((), []))
        if "information_schema.tables" in sql:
            schema = params[0]
            return succeed(ResultSet((Column("table_name", "string"),),
                                     [(t,) for s, t in sorted(self.tables) if s == schema]))
        if re.search(r"\bMIN\(", sql, re.IGNORECASE):
            return succeed(ResultSet((Column("min", "time"), Column("max", "time")), [BOUNDS]))
        return succeed(ResultSet((Column("value", "number"),), [(1,)]))

    def _created(self, _: Any, schema: str, table: str) -> ResultSet:
        self.tables.add((schema, table))
        return ResultSet((), [])

    def release(self, table: str) -> None:
        """Let the running CREATE TABLE of ``table`` finish."""
        self.building.pop(table).callback(None)

    @property
    def running(self) -> list[str]:
        return list(self.building)


class SchedulerOnFakeClock:
    """Refresh passes of RefreshScheduler over an Orchestrator on a fake clock and the memory
    store; one build at a time (concurrency 1), so the other partitions wait in the queue."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        (directory / "orders.yml").write_text(yaml.safe_dump(FAKE_MODEL, sort_keys=False), encoding="utf-8")
        self.compiled = compile_directory(directory, lambda _ds: "postgres", lambda _ds: "postgres")
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryStore(self.clock)
        self.warehouse = FakeWarehouse()
        options = QueueOptions(concurrency=1, continue_wait=5, orphaned_timeout=ORPHANED_TIMEOUT,
                               heartbeat_interval=30, execution_timeout=3600, reconcile_interval=1)
        self.orchestrator = Orchestrator("STANDALONE", self.store, self.store, {"default": self.warehouse},
                                         {"default": options}, self.clock)
        self.successResultOf(self.orchestrator.start())
        self.addCleanup(self.orchestrator.stop)
        self.loader = self.orchestrator.pre_aggregations
        self.queue = self.loader.queue("default")
        tenant = SimpleNamespace(compiled=self.compiled, orchestrator=self.orchestrator)

        class Tenants:
            async def resolve(self, context: Any) -> Any:
                return tenant

        self.scheduler = RefreshScheduler(Tenants(), Hooks(), ("UTC",), build_orphaned_timeout=REFRESH_TIMEOUT)

    def run_pass(self) -> Any:
        """Run one refresh pass to its end on the fake clock (the queue answers a pass's
        ``wait=0`` through a zero-delay timer); return its RefreshProgress."""
        return self.settle(ensureDeferred(self.scheduler.run_pass()))

    def settle(self, d: Deferred[Any]) -> Any:
        """Return the result of ``d`` once zero-delay timers of the fake clock have run."""
        for _ in range(50):
            if d.called:
                break
            self.clock.advance(0)
        return self.successResultOf(d)

    def advance(self, seconds: float) -> None:
        """Move the fake clock second by second (the queue reconciles every second)."""
        for _ in range(int(seconds)):
            self.clock.advance(1)

    def sizes(self) -> tuple[int, int]:
        return self.successResultOf(ensureDeferred(self.queue.sizes()))

    def build_keys(self, progress: Any) -> list[str]:
        """Return the queue keys of the builds a pass's targets need now (the same key each
        pass computes for its content version)."""
        keys = []
        for state in progress.states:
            values = self.successResultOf(ensureDeferred(self.loader.key_values(state.target, False, "")))
            content = state.target.content(values)
            keys.append(self.loader.build_item(state.target, content, values, 0, "").key)
        return keys

    def stage(self, key: str) -> Any:
        return self.successResultOf(self.store.stage(self.queue.name, key))

    def logical_of(self, physical: str) -> str:
        return physical.split("_")[0] + "_" + physical.split("_")[1]

    def check_first_pass(self, progress: Any) -> None:
        self.assertEqual([s.target.logical for s in progress.states], PARTITIONS)
        self.assertEqual([s.state for s in progress.states], ["running", "queued", "queued"])
        self.assertEqual(progress.as_json(), {"total": 3, "done": 0, "queued": 2, "running": 1, "failed": 0})
        self.assertEqual(self.sizes(), (2, 1))
        # Only the newest partition is being built; the two others wait for the only slot.
        self.assertEqual([self.logical_of(t) for t in self.warehouse.running], PARTITIONS[:1])


class OrphanedRefreshJobTests(SchedulerOnFakeClock, unittest.TestCase):
    """Jobs queued by a pass and not renewed are dropped; renewed ones complete."""

    def test_jobs_nobody_renews_are_dropped_and_the_running_one_cancelled(self) -> None:
        progress = self.run_pass()
        self.check_first_pass(progress)
        keys = self.build_keys(progress)
        running = self.warehouse.running[0]
        self.assertEqual(self.stage(keys[0]).active, True)
        self.assertEqual([self.stage(k).position for k in keys[1:]], [1, 2])
        # Just before the refresh builds' orphan timeout everything is still there.
        self.assertEqual(REFRESH_TIMEOUT, 3600.0)
        self.advance(REFRESH_TIMEOUT - 1)
        self.assertEqual(self.sizes(), (2, 1))
        self.assertEqual(self.warehouse.cancelled, [])
        # No further pass: past the deadline (and the next reconcile) the jobs are gone.
        self.advance(2)
        self.assertEqual(self.sizes(), (0, 0))
        self.assertEqual([self.stage(k) for k in keys], [None, None, None])
        self.assertEqual(self.warehouse.cancelled, [running], "the running build was cancelled in the database")
        self.assertEqual(self.warehouse.running, [])
        # The waiting builds never started; nothing was built; nothing starts later either.
        self.assertEqual(self.warehouse.started, [running])
        self.assertEqual(self.loader.builds, 0)
        self.assertEqual(self.warehouse.tables, set())
        self.advance(60)
        self.assertEqual(self.warehouse.started, [running])
        self.assertEqual(self.sizes(), (0, 0))

    def test_refresh_orphaned_timeout(self) -> None:
        self.assertEqual(refresh_orphaned_timeout(120, 30), 3600)     # Cube's hour
        self.assertEqual(refresh_orphaned_timeout(120, 2400), 4800)   # twice a long timer
        self.assertEqual(refresh_orphaned_timeout(7200, 30), 7200)    # never below the queue's

    def test_jobs_renewed_by_repeated_passes_complete(self) -> None:
        progress = self.run_pass()
        self.check_first_pass(progress)
        keys = self.build_keys(progress)
        first = self.warehouse.running[0]
        # Passes at the worker's interval for well over twice the orphan timeout.
        elapsed = 0.0
        while elapsed < 2.5 * ORPHANED_TIMEOUT:
            self.advance(WORKER_INTERVAL)
            elapsed += WORKER_INTERVAL
            again = self.run_pass()
            self.assertEqual([s.state for s in again.states], ["running", "queued", "queued"], f"after {elapsed} s")
            self.assertEqual(self.build_keys(again), keys, "each pass asks for the same builds")
            self.assertEqual(self.sizes(), (2, 1), f"after {elapsed} s")
        self.assertEqual(self.warehouse.cancelled, [])
        self.assertEqual(self.warehouse.started, [first], "the running build was never restarted")
        # The data source finishes the builds one by one; each frees the slot for the next.
        built = []
        for logical in PARTITIONS:
            self.assertEqual([self.logical_of(t) for t in self.warehouse.running], [logical])
            table = self.warehouse.running[0]
            self.warehouse.release(table)
            built.append(table)
            self.clock.advance(0)
        self.assertEqual(self.warehouse.running, [])
        self.assertEqual(self.warehouse.cancelled, [])
        self.assertEqual(self.loader.builds, 3)
        self.assertEqual(self.warehouse.tables, {(SCHEMA, t) for t in built})
        self.assertEqual([self.stage(k) for k in keys], [None, None, None])
        # The clean-up jobs ran too: the queue is empty; the next pass finds everything current.
        self.advance(1)
        self.assertEqual(self.sizes(), (0, 0))
        final = self.run_pass()
        self.assertTrue(final.finished, final.as_json())
        self.assertEqual(final.as_json(), {"total": 3, "done": 3, "queued": 0, "running": 0, "failed": 0})
        self.assertEqual(self.warehouse.started, built)

    def test_builds_survive_a_timer_longer_than_the_queue_orphan_timeout(self) -> None:
        timer = 300.0  # e.g. CUBEJS_SCHEDULED_REFRESH_TIMER=5m, or a serverless caller every 5 min
        self.scheduler.build_orphaned_timeout = refresh_orphaned_timeout(ORPHANED_TIMEOUT, timer)
        progress = self.run_pass()
        self.check_first_pass(progress)
        keys = self.build_keys(progress)
        first = self.warehouse.running[0]
        for n in range(1, 4):
            self.advance(timer)
            # Between two passes nothing was dropped: the running build went on (well past the
            # queue's 120 s) and the waiting ones kept their places.
            self.assertEqual(self.sizes(), (2, 1), f"before pass {n + 1}")
            self.assertEqual([self.stage(k).active for k in keys], [True, False, False])
            again = self.run_pass()
            self.assertEqual([s.state for s in again.states], ["running", "queued", "queued"])
            self.assertEqual(self.build_keys(again), keys)
        self.assertEqual(self.warehouse.cancelled, [])
        self.assertEqual(self.warehouse.started, [first], "the running build was never restarted")
        for _ in PARTITIONS:
            self.warehouse.release(self.warehouse.running[0])
            self.clock.advance(0)
        self.assertEqual(self.loader.builds, 3)
        # When the passes stop, the timeout still drops what nobody asks for: a new build
        # queued by one last pass is gone after it.
        self.advance(61)  # past the results' grace period
        self.warehouse.tables.clear()
        self.loader.forget_tables("default", SCHEMA)
        last = self.run_pass()
        self.assertEqual(self.sizes(), (2, 1))
        self.advance(self.scheduler.build_orphaned_timeout + 1)
        self.assertEqual(self.sizes(), (0, 0))
        self.assertEqual(self.warehouse.cancelled, [self.warehouse.started[-1]])
        self.assertEqual([self.stage(k) for k in self.build_keys(last)], [None, None, None])

    def test_a_build_a_request_started_keeps_the_queue_orphan_timeout(self) -> None:
        pre_aggregation = self.compiled.model.pre_aggregations["Orders.daily"]
        targets = self.settle(ensureDeferred(self.loader.targets(self.compiled, pre_aggregation, "UTC")))
        asked = ensureDeferred(self.loader.load(targets[-1], "request-1"))
        self.advance(5)
        self.failureResultOf(asked, ContinueWait)
        [table] = self.warehouse.running
        self.advance(ORPHANED_TIMEOUT - 6)
        self.assertEqual(self.warehouse.cancelled, [])
        self.advance(2)
        self.assertEqual(self.warehouse.cancelled, [table], "nobody polled: dropped after the queue's timeout")
        self.assertEqual(self.sizes(), (0, 0))

    def test_a_background_rebuild_outlives_the_queue_orphan_timeout(self) -> None:
        """A request served by an older table queues a rebuild nobody waits for or renews: it
        is not dropped after the queue's 120 s."""
        pre_aggregation = self.compiled.model.pre_aggregations["Orders.daily"]
        target = self.settle(ensureDeferred(self.loader.targets(self.compiled, pre_aggregation, "UTC")))[-1]
        asked = ensureDeferred(self.loader.load(target, "request-1"))
        self.clock.advance(0)
        [table] = self.warehouse.running
        self.warehouse.release(table)
        first = self.settle(asked)
        self.advance(3600)  # the next hour: the ``every`` key, so the content, changes
        served = self.settle(ensureDeferred(self.loader.load(target, "request-2")))
        self.assertEqual(served, first, "the older table answers while the new one builds")
        [rebuild] = self.warehouse.running
        self.assertNotEqual(rebuild, table)
        self.advance(ORPHANED_TIMEOUT + 10)
        self.assertEqual(self.warehouse.cancelled, [])
        self.assertEqual(self.warehouse.running, [rebuild])
        self.warehouse.release(rebuild)
        self.clock.advance(0)
        self.assertEqual(self.loader.builds, 2)


# -- one pass at a time ---------------------------------------------------------------------
class RefreshTimeZonesHookTests(SchedulerOnFakeClock, unittest.TestCase):
    """``scheduled_refresh_time_zones`` chooses the zones a pass builds, per context."""

    def test_the_hook_chooses_the_zones_of_each_context(self) -> None:
        seen: list[Any] = []

        def zones(context: Any) -> list[str]:
            seen.append(context["securityContext"])
            return ["America/Los_Angeles", "Europe/Berlin"] if context["securityContext"].get("tenant") == "a" \
                else ["Asia/Tokyo"]

        self.scheduler.hooks = Hooks(scheduled_refresh_contexts=lambda: [{"securityContext": {"tenant": "a"}},
                                                                         {"securityContext": {"tenant": "b"}}],
                                     scheduled_refresh_time_zones=zones)
        progress = self.run_pass()
        self.assertEqual(seen, [{"tenant": "a"}, {"tenant": "b"}])
        built = sorted({state.target.timezone for state in progress.states})
        self.assertEqual(built, ["America/Los_Angeles", "Asia/Tokyo", "Europe/Berlin"])
        # queryingOptions of /v1/run-scheduled-refresh still win over the hook.
        d = ensureDeferred(self.scheduler.run_pass(timezones=("UTC",)))
        for _ in range(50):
            self.clock.advance(0)
        self.assertEqual({s.target.timezone for s in self.successResultOf(d).states}, {"UTC"})

    def test_a_bad_answer_of_the_hook_fails_the_pass_with_its_name(self) -> None:
        from cubed.errors import InternalError

        for answer in (["Mars/Olympus"], "UTC", []):
            self.scheduler.hooks = Hooks(scheduled_refresh_time_zones=lambda context, answer=answer: answer)
            failure = self.failureResultOf(ensureDeferred(self.scheduler.run_pass()), InternalError)
            self.assertIn("scheduled_refresh_time_zones", str(failure.value))



class GatedScheduler:
    """A RefreshScheduler stand-in whose passes last until the test fires their gate; it
    records how many passes run at once."""

    def __init__(self) -> None:
        self.passes = 0
        self.active = 0
        self.max_active = 0
        self.finished = 0
        self.cancelled = 0
        self.gates: list[Deferred[None]] = []

    async def run_pass(self) -> None:
        self.passes += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            gate: Deferred[None] = Deferred()
            self.gates.append(gate)
            await gate
            self.finished += 1
        except CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    def release(self) -> None:
        """Let every waiting pass finish."""
        gates, self.gates = self.gates, []
        for gate in gates:
            if not gate.called:
                gate.callback(None)


class OnePassAtATimeTests(unittest.TestCase):
    """The real RefreshWorker (APScheduler's TwistedScheduler on the reactor) with a pass that
    outlasts the interval."""

    timeout = 30
    INTERVAL = 0.2

    def setUp(self) -> None:
        self.scheduler = GatedScheduler()
        self.worker = RefreshWorker(self.scheduler, self.INTERVAL, reactor)  # type: ignore[arg-type]
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        # APScheduler reports through the standard logging module.
        self.records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = self.records.append  # type: ignore[method-assign]
        aps = logging.getLogger("apscheduler")
        aps.addHandler(handler)
        self.addCleanup(aps.removeHandler, handler)
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.worker.running:
            self.worker.stopService()
        self.scheduler.release()

    def logged(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events if text in str(e.get("log_format", ""))]

    async def test_passes_never_overlap_and_skipped_runs_are_counted(self) -> None:
        self.worker.startService()
        await wait_until(_async(lambda: self.scheduler.passes == 1), 5, "the first pass starts at once")
        # The pass lasts 1.2 s, six intervals: the runs falling due meanwhile are skipped.
        await sleep(1.2)
        self.assertEqual(self.scheduler.passes, 1)
        self.assertEqual(self.scheduler.max_active, 1)
        self.assertGreaterEqual(self.worker.skipped, 3)
        errors = self.logged("Refresh Scheduler Interval Error")
        self.assertEqual(len(errors), self.worker.skipped)
        self.assertEqual(errors[0]["log_level"].name, "warn")
        self.assertEqual(errors[0]["interval"], self.INTERVAL)
        # Released, the loop goes on: one pass after another, never two at once.
        self.scheduler.release()
        for _ in range(4):
            passes = self.scheduler.passes
            await wait_until(_async(lambda: self.scheduler.passes > passes), 5, "the next pass")
            self.assertEqual(self.scheduler.active, 1)
            await sleep(0.3)
            self.scheduler.release()
        self.assertEqual(self.scheduler.max_active, 1)
        self.assertEqual(self.scheduler.cancelled, 0)
        self.assertEqual(self.scheduler.finished, self.scheduler.passes - self.scheduler.active)

    async def test_stop_cancels_the_pass_in_progress(self) -> None:
        self.worker.startService()
        await wait_until(_async(lambda: self.scheduler.active == 1), 5, "a pass in progress")
        self.worker.stopService()
        self.assertEqual((self.scheduler.cancelled, self.scheduler.active), (1, 0))
        self.assertEqual(len(self.logged("refresh worker stopped")), 1)
        passes = self.scheduler.passes
        await sleep(5 * self.INTERVAL)
        self.assertEqual(self.scheduler.passes, passes, "no pass after the worker stopped")
        self.assertEqual([e for e in self.events if e.get("log_level") is not None
                          and e["log_level"].name in ("error", "critical")], [])
        self.assertEqual([e for e in self.events if e.get("log_failure") is not None], [])
        # Nothing reports the cancelled pass as an error with a traceback (APScheduler logs
        # through the standard logging module, which twistd prints raw to stderr).
        tracebacks = [(r.levelname, r.getMessage()) for r in self.records if r.exc_info or r.levelno >= logging.ERROR]
        self.assertEqual(tracebacks, [])


def _async(check: Any) -> Any:
    async def checked() -> Any:
        return check()

    return checked


# -- the scheduled loop on PostgreSQL -------------------------------------------------------
def items_cube(pre_aggregation: dict[str, Any], sql: str = "SELECT * FROM items") -> dict[str, Any]:
    """Return a cube over the ``items`` table of tests.orchestrator's test database (ids 1-10,
    amounts 1-10) with one pre-aggregation."""
    return {
        "name": "Items",
        "sql": sql,
        "refresh_key": {"every": "1 hour"},
        "measures": [{"name": "count", "type": "count"}, {"name": "total", "sql": "amount", "type": "sum"}],
        "dimensions": [{"name": "id", "sql": "id", "type": "number", "primary_key": True},
                       {"name": "category", "sql": "category", "type": "string"}],
        "pre_aggregations": [pre_aggregation],
    }


async def rollup_tables(database: Any) -> list[str]:
    """Return the tables in prod_pre_aggregations, oldest build first."""
    rows = await pg_run(database, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                        (SCHEMA,))
    names = [str(r[0]) for r in rows]
    return sorted(names, key=lambda n: (parse_table_name(n).updated_at if parse_table_name(n) else 0, n))


class RunScheduledRefreshHttpTests(unittest.TestCase):
    """``/v1/run-scheduled-refresh`` over HTTP: Continue wait with cubed's progress while the
    build runs, then ``{"finished": true}``; the pass's build has the refresh orphan timeout."""

    timeout = 60

    async def test_continue_wait_with_progress_then_finished(self) -> None:
        require_postgres()
        database = await setup_database(self)
        project = Path(self.mktemp()).resolve()
        model = write_model(project, [items_cube({"name": "totals", "measures": ["count", "total"]},
                                                 sql="SELECT * FROM items WHERE (SELECT pg_sleep(3)::text) = ''")])
        environment = server_environment(database, model, CUBEJS_CACHE_AND_QUEUE_DRIVER="memory",
                                         CUBEJS_REFRESH_WORKER="false", CUBEJS_SCHEDULED_REFRESH_TIMER="2400s",
                                         CUBEJS_DEFAULT_API_SCOPES="meta,data,sql,jobs")
        server = await start_server(self, settings_of(environment, project))
        self.assertIsNone(server.server.worker)
        # Twice the timer: a pass every 40 min keeps its builds.
        self.assertEqual(server.server.refresher.build_orphaned_timeout, 4800.0)
        url = f"{server.url}{BASE}/run-scheduled-refresh"
        answers = []
        for _ in range(40):
            answer = await request("GET", url)
            self.assertEqual(answer.status, 200, answer.text)
            answers.append(answer.json())
            if answers[-1] == {"finished": True}:
                break
            await sleep(0.25)
        self.assertEqual(answers[-1], {"finished": True})
        waiting = answers[:-1]
        self.assertGreaterEqual(len(waiting), 3, answers)  # the build takes 3 s
        for body in waiting:
            self.assertEqual(set(body), {"error", "progress"}, body)
            self.assertEqual(body["error"], "Continue wait")
            progress = body["progress"]
            self.assertEqual((progress["total"], progress["done"], progress["failed"]), (1, 0, 0), body)
            self.assertEqual(progress["queued"] + progress["running"], 1, body)
        self.assertEqual(waiting[-1]["progress"]["running"], 1, waiting)
        tables = await rollup_tables(database)
        self.assertEqual(len(tables), 1, tables)
        self.assertEqual(server.server.orchestrators.get().pre_aggregations.builds, 1)


class ScheduledLoopTests(unittest.TestCase):
    """The worker in a server on a real port: no request builds or rebuilds anything."""

    timeout = 60

    def setUp(self) -> None:
        require_postgres()

    async def test_stale_rollup_is_rebuilt_without_any_request(self) -> None:
        database = await setup_database(self)
        project = Path(self.mktemp()).resolve()
        model = write_model(project, [items_cube({
            "name": "totals", "measures": ["count", "total"],
            "refresh_key": {"sql": "SELECT max(id) FROM items"},
        })])
        environment = server_environment(database, model, CUBEJS_CACHE_AND_QUEUE_DRIVER="memory",
                                         CUBEJS_REFRESH_WORKER="true", CUBEJS_SCHEDULED_REFRESH_TIMER="1s")
        settings = settings_of(environment, project)
        self.assertEqual((settings.refresh_worker, settings.scheduled_refresh_timer), (True, 1.0))
        server = await start_server(self, settings)
        self.assertIsNotNone(server.server.worker)
        loader = server.server.orchestrators.get().pre_aggregations

        # Built by the loop alone: nobody has sent a request.
        first = (await wait_until(lambda: rollup_tables(database), 15, "a rollup table built by the worker"))
        self.assertEqual(len(first), 1, first)
        self.assertTrue(first[0].startswith("items_totals_"), first)
        self.assertEqual(loader.builds, 1)
        # Passes go on every second; with nothing changed nothing is rebuilt.
        passes = server.server.refresher.passes
        await wait_until(_async(lambda: server.server.refresher.passes >= passes + 2), 10, "two more passes")
        self.assertEqual(await rollup_tables(database), first)
        self.assertEqual(loader.builds, 1)

        # The rollup answers; its plan names it.
        query = {"measures": ["Items.count", "Items.total"]}
        planned = await request("POST", f"{server.url}{BASE}/sql", {"query": query})
        self.assertEqual(planned.status, 200, planned.text)
        self.assertEqual([p["tableName"] for p in planned.json()["sql"]["preAggregations"]], [f"{SCHEMA}.items_totals"])
        self.assertEqual(rows_of(await load(server.url, query)), [{"Items.count": "10", "Items.total": "55"}])

        # New rows change the refresh key (max(id)); the loop rebuilds, again with no request.
        await pg_run(database, "INSERT INTO items (category, amount) SELECT 'new', 100 FROM generate_series(1, 5)")

        async def rebuilt() -> list[str]:
            return [t for t in await rollup_tables(database) if t.startswith("items_totals_") and t not in first]

        second = await wait_until(rebuilt, 15, "a new version of the rollup built by the worker")
        self.assertEqual(len(second), 1, second)
        self.assertEqual(loader.builds, 2)
        old_parts, new_parts = first[0].rsplit("_", 3), second[0].rsplit("_", 3)
        self.assertNotEqual(old_parts[1], new_parts[1], "a new content version")
        self.assertEqual(old_parts[2], new_parts[2], "the same structure version")

        # A change the refresh key does not see: the source now says 1555, the rollup 555.
        await pg_run(database, "UPDATE items SET amount = amount + 1000 WHERE id = 1")
        source = await pg_run(database, "SELECT count(*), sum(amount) FROM items")
        self.assertEqual([tuple(int(v) for v in source[0])], [(15, 1555)])
        answer = await load(server.url, query)
        self.assertEqual(rows_of(answer), [{"Items.count": "15", "Items.total": "555"}],
                         "/v1/load is answered from the rebuilt rollup, new rows included")
        passes = server.server.refresher.passes
        await wait_until(_async(lambda: server.server.refresher.passes >= passes + 2), 10, "two more passes")
        self.assertEqual(loader.builds, 2, "nothing rebuilt while the refresh key stays the same")


# -- SIGTERM in the middle of a build -------------------------------------------------------
TWISTD = Path(sys.executable).parent / "twistd"
#: How long the slow build would take in PostgreSQL, and how soon the process must be gone.
BUILD_SECONDS = 30
PROMPT_EXIT = 5.0


class Twistd(ProcessProtocol):
    """One ``twistd`` child: its output and, once it ended, its exit status (128 + N when
    killed by signal N)."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.status: int | None = None
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, ProcessDone):
            self.status = 0
        elif isinstance(value, ProcessTerminated):
            self.status = value.exitCode if value.exitCode is not None else 128 + (value.signal or 0)
        else:
            self.status = -1
        self.ended.callback(self.status)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


async def active_statements(database: Any, pattern: str) -> list[tuple[int, str]]:
    """Return (pid, query) of the statements of other sessions of the test database matching
    the ILIKE ``pattern`` that PostgreSQL is running now."""
    rows = await pg_run(database, (
        "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND state = 'active' AND query ILIKE %s"), (pattern,))
    return [(int(r[0]), str(r[1])) for r in rows]


class SigtermMidBuildTests(unittest.TestCase):
    """``twistd -n cubed`` with the worker on: SIGTERM while the worker's build runs."""

    timeout = 60

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise unittest.SkipTest(f"no twistd next to {sys.executable}")
        require_postgres()

    def spawn(self, project: Path, environ: dict[str, str]) -> Twistd:
        child = Twistd()
        argv = [str(TWISTD), "-n", "--pidfile=", "cubed", "--project-dir", str(project)]
        reactor.spawnProcess(child, argv[0], argv, env=environ, path=str(project))

        async def stop() -> None:
            if child.status is None:
                child.signal("KILL")
                await child.ended

        self.addCleanup(lambda: ensureDeferred(stop()))
        return child

    async def start(self, pre_aggregation: dict[str, Any], cube_sql: str = "SELECT * FROM items",
                    **environ: str) -> tuple[Any, Twistd]:
        """Create the test database, write the model and start twistd with the worker on
        (a pass every second, info logs)."""
        database = await setup_database(self)
        project = Path(self.mktemp()).resolve()
        model = write_model(project, [items_cube(pre_aggregation, sql=cube_sql)])
        variables = {key: value for key, value in os.environ.items()
                     if not key.startswith(("CUBEJS_", "CUBED_", "LISTEN_")) and key not in ("PORT", "REDIS_URL")}
        variables.update(server_environment(database, model, PORT=str(free_port()), CUBEJS_LOG_LEVEL="info",
                                            CUBEJS_CACHE_AND_QUEUE_DRIVER="memory", CUBEJS_REFRESH_WORKER="true",
                                            CUBEJS_SCHEDULED_REFRESH_TIMER="1s", **environ))
        return database, self.spawn(project, variables)

    async def logged(self, child: Twistd, pattern: str, seconds: float, what: str) -> Any:
        """Return the match of ``pattern`` in the child's log once it appears."""
        async def found() -> Any:
            if child.status is not None:
                raise AssertionError(f"twistd exited with {child.status}\n{child.text}")
            return re.search(pattern, child.text)

        return await wait_until(found, seconds, what)

    async def terminate(self, child: Twistd) -> None:
        """SIGTERM the child; check it exits promptly and cleanly, saying the worker stopped."""
        started = time.monotonic()
        child.signal("TERM")
        ended = child.ended
        ended.addTimeout(BUILD_SECONDS / 2, reactor)
        status = await ended
        took = time.monotonic() - started
        self.assertIn(status, (128 + signal.SIGTERM, 0), child.text)
        self.assertLess(took, PROMPT_EXIT, f"SIGTERM took {took:.1f} s\n{child.text}")
        self.assertIn("refresh worker stopped", child.text)
        shutdown = child.text[child.text.find("Received SIGTERM"):]
        for bad in ("Traceback", "Unhandled"):
            lines = [line for line in child.text.splitlines() if bad in line]
            self.assertEqual(lines, [], f"{bad} in the log; the shutdown logged:\n{shutdown}")

    async def gone(self, database: Any, pattern: str, child: Twistd) -> None:
        """Check that no statement matching ``pattern`` runs in PostgreSQL (within 3 s of the
        exit: cubed cancels on the server what it abandons)."""
        remaining = await active_statements(database, pattern)
        deadline = time.monotonic() + 3
        while remaining and time.monotonic() < deadline:
            await sleep(0.1)
            remaining = await active_statements(database, pattern)
        self.assertEqual(remaining, [], f"still running in PostgreSQL after cubed exited\n{child.text}")

    async def test_sigterm_mid_build(self) -> None:
        """The cube's SQL sleeps 30 s in PostgreSQL (once per query), so the worker's build,
        CREATE TABLE ... AS SELECT, runs that long; SIGTERM arrives while it runs."""
        database, child = await self.start(
            {"name": "totals", "measures": ["count", "total"], "refresh_key": {"every": "1 hour"}},
            cube_sql=f"SELECT i.* FROM items i WHERE (SELECT cubed_probe('build', {BUILD_SECONDS})) = 1")
        found = await self.logged(child, r"building pre-aggregation table (\S+)", 30, "the worker's build starting")
        table = found.group(1)
        schema, physical = table.split(".")
        self.assertEqual(schema, SCHEMA)
        self.assertTrue(physical.startswith("items_totals_"), physical)
        creates = await wait_until(lambda: active_statements(database, "CREATE TABLE%"), 10,
                                   "the CREATE TABLE running in PostgreSQL")
        self.assertEqual(len(creates), 1, creates)
        self.assertIn(physical, creates[0][1])
        # SIGTERM just after a pass has ended (it found the build running), so that what stops
        # is the build alone, not also a pass (test_sigterm_mid_pass is that case).
        passes = child.text.count("refresh pass:")
        await wait_until(_async(lambda: child.text.count("refresh pass:") > passes), 5, "the next pass")
        last = [line for line in child.text.splitlines() if "refresh pass:" in line][-1]
        self.assertIn("0 of 1 pre-aggregation tables current, 0 queued, 1 building", last)

        await self.terminate(child)
        # The build is stopped in PostgreSQL too, and rolled back: no table, no probe row.
        await self.gone(database, "CREATE TABLE%", child)
        self.assertEqual(await rollup_tables(database), [])
        self.assertEqual(await pg_run(database, "SELECT to_regclass(%s)", (table,)), [(None,)])
        self.assertEqual(await pg_run(database, "SELECT count(*) FROM probe_runs WHERE tag = 'build'"), [(0,)])

    async def test_sigterm_mid_pass(self) -> None:
        """The rollup's refresh key takes 30 s, and a pass waits for it (Continue wait after
        60 s): SIGTERM arrives while the pass is in progress, and cancels it quietly."""
        database, child = await self.start(
            {"name": "totals", "measures": ["count", "total"],
             "refresh_key": {"sql": f"SELECT cubed_probe('key', {BUILD_SECONDS})"}},
            CUBEJS_CONTINUE_WAIT_TIMEOUT="60")
        await wait_until(lambda: active_statements(database, "%cubed_probe('key'%"), 30,
                         "the pass reading the refresh key")
        await self.terminate(child)
        self.assertNotIn("building pre-aggregation table", child.text)
        await self.gone(database, "%cubed_probe('key'%", child)
        self.assertEqual(await rollup_tables(database), [])
