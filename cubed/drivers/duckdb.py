"""DuckDB driver: one database connection, a cursor per worker thread, a thread pool it owns.

DuckDB is an in-process engine whose calls block, so every call runs on the driver's own
ThreadPool (never the reactor thread, and not the reactor's shared pool, which DNS and other
work use). One ``duckdb.connect()`` holds the file; each worker thread gets its own
``cursor()`` (a separate connection to the same database) because a DuckDB connection runs one
call at a time. SQL uses ``?`` placeholders. Values leave the worker thread already in Cube's
wire form (``cubed.drivers.values``). A query that outlives the query timeout, or whose
Deferred is cancelled, is stopped with ``interrupt()`` on its cursor.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import duckdb
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.base import DelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cubed.config import DataSourceSettings
from cubed.drivers.base import ResultSet
from cubed.drivers.values import convert_rows, duckdb_columns
from cubed.errors import CubedError, DatabaseError, ServiceUnavailable

DEFAULT_THREADS = 4
TIMEOUT_MESSAGE = "canceling statement due to statement timeout"
# DuckDB drops an interrupt() that arrives before the query has started, so an abandoned
# query is interrupted again at this interval until its thread lets go of it.
_INTERRUPT_INTERVAL = 0.05
_CLOSE_DEADLINE = 10.0


def duckdb_error_message(exc: BaseException) -> str:
    """Return DuckDB's message on one line, without the ``LINE n:`` excerpt that follows it
    (``Catalog Error: Table with name foo does not exist! Did you mean "orders"?``)."""
    text = str(exc).split("\n\nLINE ", 1)[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or exc.__class__.__name__


def translate_failure(failure: Failure) -> Failure:
    """Return the cubed error for a DuckDB failure: DatabaseError with DuckDB's message,
    ServiceUnavailable when the database cannot be opened or is closed; anything else (a bug)
    unchanged."""
    exc = failure.value
    if isinstance(exc, CubedError):
        return failure
    if isinstance(exc, (duckdb.ConnectionException, duckdb.IOException)):
        return Failure(ServiceUnavailable(f"database unavailable: {duckdb_error_message(exc)}"))
    if isinstance(exc, duckdb.Error):
        return Failure(DatabaseError(duckdb_error_message(exc)))
    return failure


@dataclass(eq=False)
class _Job:
    """One ``execute()``: shared by the worker thread (``cursor``, ``finished``) and the
    reactor thread (``abandoned``, timers); ``lock`` orders the hand-over of ``cursor``."""

    name: str
    started: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)
    cursor: Any = field(default=None, repr=False)
    abandoned: bool = False
    done: bool = False
    timer: DelayedCall | None = field(default=None, repr=False)
    retry: DelayedCall | None = field(default=None, repr=False)
    result: Deferred[ResultSet] | None = field(default=None, repr=False)

    def interrupt(self) -> None:
        """Interrupt the job's query if it is on a cursor right now; returns None."""
        with self.lock:
            cursor = self.cursor
        if cursor is not None:
            cursor.interrupt()


class _Abandoned(Exception):
    """The caller gave up on the query before a worker picked it up."""


class DuckDBDriver:
    """The DuckDB data source (dialect ``duckdb``): Deferred[ResultSet] per query."""

    dialect = "duckdb"
    db_type = "duckdb"
    log = Logger()

    def __init__(
        self,
        settings: DataSourceSettings,
        reactor: Any,
        *,
        read_only: bool | None = None,
        threads: int | None = None,
    ) -> None:
        """``read_only=None`` opens read-only exactly when the file exists and is not
        writable by this process (a shared, prepared file)."""
        self._reactor = reactor
        self._path = str(settings.duckdb_path) if settings.duckdb_path else ":memory:"
        self._read_only = read_only
        self._query_timeout = max(float(settings.query_timeout), 0.0)
        size = threads or settings.max_pool or settings.concurrency or DEFAULT_THREADS
        self._pool = ThreadPool(minthreads=0, maxthreads=size, name=f"cubed-duckdb-{settings.name}")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connection: Any = None
        self._cursors: list[Any] = []
        self._running: set[_Job] = set()
        self._started = False
        self._closed = False

    @property
    def path(self) -> str:
        """The database file (or ``:memory:``)."""
        return self._path

    def start(self) -> Deferred[None]:
        """Start the worker threads and open the database; fires None, or fails with
        ServiceUnavailable when the file cannot be opened (e.g. locked by another process)."""
        if self._closed:
            return defer.fail(ServiceUnavailable("database unavailable: driver closed"))
        if not self._started:
            self._pool.start()
            self._started = True
        d = deferToThreadPool(self._reactor, self._pool, self._open)

        def opened(read_only: bool) -> None:
            self.log.info("DuckDB {path} open{mode}", path=self._path, mode=" (read-only)" if read_only else "")

        def failed(f: Failure) -> Failure:
            translated = translate_failure(f)
            self.log.error("DuckDB {path} cannot be opened: {error}", path=self._path, error=translated.value)
            return translated

        return d.addCallbacks(opened, failed)

    def _open(self) -> bool:
        with self._lock:
            if self._connection is not None:
                return bool(self._read_only)
        read_only = self._read_only
        if read_only is None:
            read_only = self._path != ":memory:" and os.path.exists(self._path) and not os.access(self._path, os.W_OK)
        if self._path == ":memory:":
            connection = duckdb.connect(":memory:")
        else:
            connection = duckdb.connect(self._path, read_only=read_only)
        with self._lock:
            if self._closed:
                connection.close()
                raise ServiceUnavailable("database unavailable: driver closed")
            self._connection = connection
            self._read_only = read_only
        return read_only

    def _thread_cursor(self) -> Any:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            with self._lock:
                if self._connection is None:
                    raise ServiceUnavailable("database unavailable: database not open")
                cursor = self._connection.cursor()
                # Naive timestamps cast to TIMESTAMPTZ are read in the session zone; queries
                # convert to the query's zone themselves, so the session must be UTC, not the host's.
                cursor.execute("SET TimeZone = 'UTC'")
                # DuckDB 2.0.1 answers (id IN (1) OR id IS NULL) AND (id IN (10) OR id IS NULL)
                # wrongly when an ART index (a PRIMARY KEY) serves the IN: no index scans.
                cursor.execute("SET index_scan_max_count = 0")
                self._cursors.append(cursor)
            self._local.cursor = cursor
        return cursor

    def execute(self, sql: str, params: Sequence[Any], name: str = "query") -> Deferred[ResultSet]:
        """Run one statement on a worker thread; fire with its ResultSet (values in wire form)
        or fail with DatabaseError (DuckDB's message; also on timeout) or ServiceUnavailable.
        Cancelling the returned Deferred interrupts the query."""
        if self._closed or not self._started:
            return defer.fail(ServiceUnavailable("database unavailable: driver not running"))
        job = _Job(name=name, started=self._reactor.seconds())
        result: Deferred[ResultSet] = Deferred(lambda _d: self._abandon(job))
        job.result = result
        if self._query_timeout > 0:
            job.timer = self._reactor.callLater(self._query_timeout, self._timed_out, job, result)
        self._running.add(job)
        inner = deferToThreadPool(self._reactor, self._pool, self._run, job, sql, list(params))

        def finished(outcome: Any) -> None:
            job.done = True
            self._running.discard(job)
            self._stop_timers(job)
            elapsed = (self._reactor.seconds() - job.started) * 1000
            if isinstance(outcome, Failure):
                translated = translate_failure(outcome)
                if not result.called:
                    self.log.warn("{name} failed after {ms:.1f} ms: {error}",
                                  name=name, ms=elapsed, error=translated.value)
                    result.errback(translated)
                elif not outcome.check(_Abandoned):
                    self.log.debug("{name} (abandoned) ended: {error}", name=name, error=translated.value)
            elif not result.called:
                self.log.debug("{name}: {rows} rows in {ms:.1f} ms", name=name, rows=len(outcome.rows), ms=elapsed)
                result.callback(outcome)
            return None

        inner.addBoth(finished)
        return result

    def _run(self, job: _Job, sql: str, params: list[Any]) -> ResultSet:
        """Worker thread: run the query on this thread's cursor and convert its rows."""
        try:
            cursor = self._thread_cursor()
            with job.lock:
                if job.abandoned:
                    raise _Abandoned()
                job.cursor = cursor
            try:
                cursor.execute(sql, params)
                description = cursor.description
                rows = cursor.fetchall() if description else []
            finally:
                with job.lock:
                    job.cursor = None
            columns, converters = duckdb_columns(description)
            return ResultSet(columns, convert_rows(rows, converters))
        finally:
            job.finished.set()

    def _timed_out(self, job: _Job, result: Deferred[ResultSet]) -> None:
        job.timer = None
        if result.called:
            return
        self.log.warn("{name} exceeded {timeout:g} s; interrupting it", name=job.name, timeout=self._query_timeout)
        self._abandon(job)
        result.errback(DatabaseError(TIMEOUT_MESSAGE))

    def _abandon(self, job: _Job) -> None:
        with job.lock:
            if job.abandoned:
                return
            job.abandoned = True
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        job.timer = None
        self._interrupt(job)

    def _interrupt(self, job: _Job) -> None:
        job.retry = None
        if job.done or job.finished.is_set():
            return
        job.interrupt()
        if not self._closed:
            job.retry = self._reactor.callLater(_INTERRUPT_INTERVAL, self._interrupt, job)

    def _stop_timers(self, job: _Job) -> None:
        for timer in (job.timer, job.retry):
            if timer is not None and timer.active():
                timer.cancel()
        job.timer = job.retry = None

    def test_connection(self) -> Deferred[None]:
        """Fire None when ``SELECT 1`` succeeds; fail otherwise."""
        return self.execute("SELECT 1", (), name="test_connection").addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        """Interrupt running queries (they fail with ServiceUnavailable), stop the worker
        threads and close the database; fires None when the file is released."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        jobs = list(self._running)
        for job in jobs:
            with job.lock:
                job.abandoned = True
            self._stop_timers(job)
        self._running.clear()
        # Answer the callers now: the worker threads may take a moment to notice the interrupt.
        for job in jobs:
            if job.result is not None and not job.result.called:
                job.result.errback(ServiceUnavailable("database unavailable: driver closed"))
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._shutdown, jobs)

        def closed(_: Any) -> None:
            self.log.info("DuckDB {path} closed", path=self._path)

        return d.addCallback(closed)

    def _shutdown(self, jobs: list[_Job]) -> None:
        """A reactor pool thread: interrupt until every worker let go, join them, close."""
        deadline = time.monotonic() + _CLOSE_DEADLINE
        pending = [job for job in jobs if not job.finished.is_set()]
        while pending and time.monotonic() < deadline:
            # All at once: a queued job only finishes after the one ahead of it on its thread.
            for job in pending:
                job.interrupt()
            pending[0].finished.wait(_INTERRUPT_INTERVAL)
            pending = [job for job in pending if not job.finished.is_set()]
        if pending:
            self.log.warn("DuckDB {path}: {n} queries still running at close", path=self._path, n=len(pending))
        if self._started:
            self._pool.stop()
        with self._lock:
            cursors, self._cursors = self._cursors, []
            connection, self._connection = self._connection, None
        for cursor in cursors:
            cursor.close()
        if connection is not None:
            connection.close()
