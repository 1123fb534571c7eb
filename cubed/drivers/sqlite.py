"""SQLite driver: a thread pool it owns, one connection per worker thread.

SQLite calls block, so every call runs on the driver's own ThreadPool (never the reactor
thread). Each worker thread opens its own connection to the file (``CUBEJS_DB_NAME``, as Cube's
SQLite driver reads it; ``:memory:`` or no name gives one in-memory database shared by all
threads), in autocommit mode, and registers the functions the ``sqlite`` SQL dialect
(``cubed.query.dialects.SQLiteDialect``) uses:

* ``cubed_tz(ts, zone)``: a UTC time (ISO-8601 text, ``T`` or space, optional fraction and
  ``Z``/offset; or a Julian day number, as SQLite reads numbers) as local wall-clock time in an
  IANA zone, ``YYYY-MM-DDTHH:MM:SS.SSS``. SQLite has no time zone database (its ``'localtime'``
  modifier knows only the host's zone), so this is Python's zoneinfo - exact across DST.
* ``cubed_add_months(ts, n)``: ``ts`` plus ``n`` months with the day kept in the month
  (Jan 31 + 1 month = Feb 29), as PostgreSQL's interval arithmetic; SQLite's ``'+1 months'``
  modifier overflows into the next month instead.
* ``lower(x)``/``upper(x)``: Unicode-aware (SQLite's own fold ASCII only), so the dialect's
  ``LOWER(x) LIKE LOWER(p)`` is as case-insensitive as PostgreSQL's ILIKE.

Such SQL (``/v1/sql`` shows it) runs only on connections that have these functions.

Values leave the worker thread in Cube's wire form, which for SQLite is the native value:
integers and reals are JSON numbers (SQLite has no exact decimal type to keep as text), text is
text, blobs are ``\\x``-hex text. Times computed by a query are already
``YYYY-MM-DDTHH:mm:ss.SSS`` (the dialect's form); a time column selected as it is stored stays
text and is formatted by the result layer, which knows the member's type (SQLite's
``cursor.description`` carries no types, so a column's kind is read off its first non-NULL
value).

A query that outlives the query timeout, or whose Deferred is cancelled, is stopped with the
connection's ``interrupt()`` and fails with the same message as on the other engines.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Sequence
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cubed.config import DataSourceSettings
from cubed.drivers.base import Column, ResultSet
from cubed.drivers.values import format_bytes
from cubed.errors import CubedError, DatabaseError, ServiceUnavailable

DEFAULT_THREADS = 4
TIMEOUT_MESSAGE = "canceling statement due to statement timeout"
BUSY_TIMEOUT = 5.0
# interrupt() only stops a statement that is running; one that has not started yet is
# interrupted again at this interval until its thread lets go of it.
_INTERRUPT_INTERVAL = 0.05
_CLOSE_DEADLINE = 10.0
_UNIX_EPOCH_JULIAN_DAY = 2440587.5


# ---------------------------------------------------------------- SQL functions


def parse_sqlite_time(value: Any) -> datetime | None:
    """Return the instant a SQLite time value names, as an aware UTC datetime (a naive text is
    UTC), or None when SQLite's own date functions would not read it either.

    Text: ``YYYY-MM-DD``, ``YYYY-MM-DD[ T]HH:MM[:SS[.fff]]`` with an optional ``Z`` or
    ``[+-]HH:MM``; numbers: a Julian day number.
    """
    if isinstance(value, str):
        text = value.strip()
        if len(text) < 10:
            return None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(days=float(value) - _UNIX_EPOCH_JULIAN_DAY)
        except OverflowError:
            return None
    return None


def format_sqlite_time(moment: datetime) -> str:
    """Return ``YYYY-MM-DDTHH:MM:SS.SSS`` of a (wall-clock) datetime, milliseconds truncated."""
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}.{moment.microsecond // 1000:03d}")


def sqlite_in_zone(value: Any, zone: Any) -> str | None:
    """``cubed_tz(ts, zone)``: the UTC time ``ts`` as wall-clock time in the IANA zone
    ``zone`` (``YYYY-MM-DDTHH:MM:SS.SSS``); NULL for NULL or unreadable input. An unknown zone
    is an error (the planner only renders zones it checked)."""
    if value is None or zone is None:
        return None
    moment = parse_sqlite_time(value)
    if moment is None:
        return None
    try:
        target = ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone: {zone}") from None
    try:
        return format_sqlite_time(moment.astimezone(target))
    except (OverflowError, ValueError):
        return None


def sqlite_add_months(value: Any, months: Any) -> str | None:
    """``cubed_add_months(ts, n)``: ``ts`` plus ``n`` months, the day clamped to the length of
    the target month (PostgreSQL's rule), as ``YYYY-MM-DDTHH:MM:SS.SSS``."""
    if value is None or months is None:
        return None
    moment = parse_sqlite_time(value)
    if moment is None:
        return None
    total = moment.year * 12 + (moment.month - 1) + int(months)
    year, month = divmod(total, 12)
    if not 1 <= year <= 9999:
        return None
    month += 1
    following = date(year + (month == 12), month % 12 + 1, 1)
    last_day = (following - timedelta(days=1)).day
    return format_sqlite_time(moment.replace(year=year, month=month, day=min(moment.day, last_day)))


def _sqlite_text(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text if "e" not in text else f"{value:.15g}"
    return str(value)


def sqlite_lower(value: Any) -> Any:
    """``lower(x)``, Unicode-aware; numbers are lowered as their text, blobs unchanged."""
    if value is None or isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else _sqlite_text(value)).lower()


def sqlite_upper(value: Any) -> Any:
    """``upper(x)``, Unicode-aware; numbers are raised as their text, blobs unchanged."""
    if value is None or isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else _sqlite_text(value)).upper()


def register_functions(connection: sqlite3.Connection) -> None:
    """Register cubed's SQL functions on one connection; returns None."""
    connection.create_function("cubed_tz", 2, sqlite_in_zone, deterministic=True)
    connection.create_function("cubed_add_months", 2, sqlite_add_months, deterministic=True)
    connection.create_function("lower", 1, sqlite_lower, deterministic=True)
    connection.create_function("upper", 1, sqlite_upper, deterministic=True)


# ---------------------------------------------------------------- values


def _kind(value: Any) -> str:
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def sqlite_result(description: Sequence[Any] | None, rows: list[tuple[Any, ...]]) -> ResultSet:
    """Return the ResultSet of a SQLite cursor's description and rows: values as they are
    (blobs as ``\\x`` hex text), kinds read off each column's first non-NULL value."""
    if not description:
        return ResultSet((), [])
    width = len(description)
    kinds: list[str | None] = [None] * width
    blob_columns: set[int] = set()
    for row in rows:
        for index in range(width):
            if kinds[index] is None and row[index] is not None:
                kinds[index] = _kind(row[index])
                if isinstance(row[index], bytes):
                    blob_columns.add(index)
        if all(kind is not None for kind in kinds):
            break
    if blob_columns:
        rows = [tuple(format_bytes(v) if isinstance(v, bytes) else v for v in row) for row in rows]
    columns = tuple(Column(item[0], kinds[i] or "other") for i, item in enumerate(description))
    return ResultSet(columns, rows)


def sqlite_error_message(exc: BaseException) -> str:
    """Return SQLite's message on one line (``no such table: foo``)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or exc.__class__.__name__


_UNAVAILABLE_MESSAGES = ("unable to open database file", "database is locked", "disk i/o error",
                         "file is not a database", "database disk image is malformed")


def translate_failure(failure: Failure) -> Failure:
    """Return the cubed error for a SQLite failure: ServiceUnavailable when the file cannot be
    opened or read, DatabaseError with SQLite's message otherwise; anything that is not a
    database error (a bug) unchanged."""
    exc = failure.value
    if isinstance(exc, CubedError):
        return failure
    if isinstance(exc, sqlite3.Error):
        message = sqlite_error_message(exc)
        if message == "interrupted":
            return Failure(DatabaseError(TIMEOUT_MESSAGE))
        if any(message.lower().startswith(m) for m in _UNAVAILABLE_MESSAGES):
            return Failure(ServiceUnavailable(f"database unavailable: {message}"))
        return Failure(DatabaseError(message))
    return failure


# ---------------------------------------------------------------- driver


@dataclass(eq=False)
class _Job:
    """One ``execute()``: shared by its worker thread (``connection``, ``finished``) and the
    reactor thread (``abandoned``, timers); ``lock`` orders the hand-over of ``connection``."""

    name: str
    started: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)
    connection: Any = field(default=None, repr=False)
    abandoned: bool = False
    done: bool = False
    timer: DelayedCall | None = field(default=None, repr=False)
    retry: DelayedCall | None = field(default=None, repr=False)
    result: Deferred[ResultSet] | None = field(default=None, repr=False)

    def interrupt(self) -> None:
        """Interrupt the job's statement if it is on a connection right now; returns None."""
        with self.lock:
            connection = self.connection
        if connection is not None:
            connection.interrupt()


class _Abandoned(Exception):
    """The caller gave up on the query before a worker picked it up."""


class SQLiteDriver:
    """The SQLite data source (dialect ``sqlite``): Deferred[ResultSet] per query."""

    dialect = "sqlite"
    db_type = "sqlite"
    log = Logger()

    def __init__(self, settings: DataSourceSettings, reactor: Any, *, threads: int | None = None,
                 read_only: bool | None = None) -> None:
        """``read_only=None`` opens read-only exactly when the file is not writable by this
        process."""
        self._reactor = reactor
        name = (settings.database or "").strip()
        self._path = name if name and name != ":memory:" else ":memory:"
        self._read_only = read_only
        self._query_timeout = max(float(settings.query_timeout), 0.0)
        size = threads or settings.max_pool or settings.concurrency or DEFAULT_THREADS
        self._pool = ThreadPool(minthreads=0, maxthreads=size, name=f"cubed-sqlite-{settings.name}")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._memory_uri = f"file:cubed-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self._keeper: sqlite3.Connection | None = None
        self._running: set[_Job] = set()
        self._started = False
        self._closed = False

    @property
    def path(self) -> str:
        """The database file (or ``:memory:``)."""
        return self._path

    # -- connections ---------------------------------------------------------------------
    def _uri(self) -> str:
        if self._path == ":memory:":
            return self._memory_uri
        read_only = self._read_only
        if read_only is None:
            read_only = os.path.exists(self._path) and not os.access(self._path, os.W_OK)
        # mode=rw: a missing file is an error, not a new empty database.
        return f"file:{quote(os.path.abspath(self._path))}?mode={'ro' if read_only else 'rw'}"

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._uri(), uri=True, timeout=BUSY_TIMEOUT, isolation_level=None,
                                     check_same_thread=False)
        try:
            register_functions(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _thread_connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            with self._lock:
                if self._closed:
                    connection.close()
                    raise ServiceUnavailable("database unavailable: driver closed")
                self._connections.append(connection)
            self._local.connection = connection
        return connection

    def _open(self) -> None:
        """Worker thread: open (and keep) the first connection; for ``:memory:`` it holds the
        shared in-memory database for the driver's lifetime."""
        connection = self._thread_connection()
        connection.execute("SELECT 1").fetchall()
        if self._path == ":memory:":
            with self._lock:
                if self._keeper is None:
                    self._keeper = self._connect()

    def start(self) -> Deferred[None]:
        """Start the worker threads and open the database; fires None, or fails with
        ServiceUnavailable when the file cannot be opened."""
        if self._closed:
            return defer.fail(ServiceUnavailable("database unavailable: driver closed"))
        if not self._started:
            self._pool.start()
            self._started = True
        d = deferToThreadPool(self._reactor, self._pool, self._open)

        def opened(_: Any) -> None:
            self.log.info("SQLite {path} open", path=self._path)

        def failed(f: Failure) -> Failure:
            translated = translate_failure(f)
            self.log.error("SQLite {path} cannot be opened: {error}", path=self._path, error=translated.value)
            return translated

        return d.addCallbacks(opened, failed)

    # -- queries -------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any], name: str = "query") -> Deferred[ResultSet]:
        """Run one statement (``?`` placeholders) on a worker thread; fire with its ResultSet
        or fail with DatabaseError (SQLite's message; also on timeout) or ServiceUnavailable.
        Cancelling the returned Deferred interrupts the statement."""
        if self._closed or not self._started:
            return defer.fail(ServiceUnavailable("database unavailable: driver not running"))
        job = _Job(name=name, started=self._reactor.seconds())
        result: Deferred[ResultSet] = Deferred(lambda _d: self._abandon(job))
        job.result = result
        if self._query_timeout > 0:
            job.timer = self._reactor.callLater(self._query_timeout, self._timed_out, job, result)
        self._running.add(job)
        inner = deferToThreadPool(self._reactor, self._pool, self._run, job, sql, tuple(params))

        def finished(outcome: Any) -> None:
            job.done = True
            self._running.discard(job)
            self._stop_timers(job)
            elapsed = (self._reactor.seconds() - job.started) * 1000
            if isinstance(outcome, Failure):
                translated = translate_failure(outcome)
                if not result.called:
                    self.log.warn("{name} failed after {ms:.1f} ms: {error}", name=name, ms=elapsed,
                                  error=translated.value)
                    result.errback(translated)
                elif not outcome.check(_Abandoned):
                    self.log.debug("{name} (abandoned) ended: {error}", name=name, error=translated.value)
            elif not result.called:
                self.log.debug("{name}: {rows} rows in {ms:.1f} ms", name=name, rows=len(outcome.rows), ms=elapsed)
                result.callback(outcome)
            return None

        inner.addBoth(finished)
        return result

    def _run(self, job: _Job, sql: str, params: tuple[Any, ...]) -> ResultSet:
        """Worker thread: run the statement on this thread's connection."""
        try:
            connection = self._thread_connection()
            with job.lock:
                if job.abandoned:
                    raise _Abandoned()
                job.connection = connection
            try:
                cursor = connection.execute(sql, params)
                try:
                    description = cursor.description
                    rows = cursor.fetchall() if description else []
                finally:
                    cursor.close()
            finally:
                with job.lock:
                    job.connection = None
            return sqlite_result(description, rows)
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

    # -- closing -------------------------------------------------------------------------
    def close(self) -> Deferred[None]:
        """Interrupt running statements (their callers get ServiceUnavailable), stop the
        worker threads and close every connection; fires None when done."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        jobs = list(self._running)
        for job in jobs:
            with job.lock:
                job.abandoned = True
            self._stop_timers(job)
        self._running.clear()
        for job in jobs:
            if job.result is not None and not job.result.called:
                job.result.errback(ServiceUnavailable("database unavailable: driver closed"))
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._shutdown, jobs)

        def closed(_: Any) -> None:
            self.log.info("SQLite {path} closed", path=self._path)

        return d.addCallback(closed)

    def _shutdown(self, jobs: list[_Job]) -> None:
        """A reactor pool thread: interrupt until every worker let go, join them, close."""
        deadline = time.monotonic() + _CLOSE_DEADLINE
        pending = [job for job in jobs if not job.finished.is_set()]
        while pending and time.monotonic() < deadline:
            for job in pending:
                job.interrupt()
            pending[0].finished.wait(_INTERRUPT_INTERVAL)
            pending = [job for job in pending if not job.finished.is_set()]
        if pending:
            self.log.warn("SQLite {path}: {n} queries still running at close", path=self._path, n=len(pending))
        if self._started:
            self._pool.stop()
        with self._lock:
            connections, self._connections = self._connections, []
            keeper, self._keeper = self._keeper, None
        for connection in connections + ([keeper] if keeper is not None else []):
            try:
                connection.close()
            except sqlite3.Error:
                pass
