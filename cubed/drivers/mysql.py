"""MySQL / MariaDB driver: PyMySQL on a thread pool the driver owns, one connection per thread.

PyMySQL is pure Python (no client library to build, works wherever cubed installs) and blocks,
so every call runs on the driver's ThreadPool, never on the reactor thread; each worker thread
keeps its own connection (a PyMySQL connection is not thread-safe) and reconnects after the
connection was lost. No maintained Twisted-native MySQL client exists, and adbapi adds
nothing here that a pool of one-connection threads does not already give.

Each connection runs in autocommit mode with ``time_zone = '+00:00'`` (TIMESTAMP columns read
as UTC, as cubed treats stored times) and, on MariaDB, ``max_statement_time`` set to the query
timeout so the server stops a runaway query by itself. A client-side timer at the same timeout
answers the caller at once and sends ``KILL QUERY`` from a separate connection (also on
cancel); the socket read timeout (query timeout + grace) covers a server that stopped
answering.

SQL is a PyMySQL format string: ``%s`` placeholders, a literal ``%`` written ``%%``
(``cubed.query.sql`` renders it so); parameters are always interpolated, also when there are
none.

Wire values (the form Cube's own MySQL driver answers): integers are JSON numbers, DECIMAL is
its exact text (``"872.00"``, as PostgreSQL's numeric), FLOAT/DOUBLE numbers,
DATETIME/TIMESTAMP ``YYYY-MM-DDTHH:mm:ss.SSS`` (milliseconds truncated), DATE
``YYYY-MM-DDT00:00:00.000``, JSON its value, binary data ``\\x``-hex text. Booleans are MySQL's
integers 1/0.

Time zones: the ``mysql`` dialect converts with ``CONVERT_TZ(ts, '+00:00', 'Zone/Name')``,
which needs the server's time zone tables. Without them CONVERT_TZ answers NULL; the driver
notices (once, then whenever such a query comes while they are still missing) and fails a query
that converts to a named zone with a DatabaseError saying how to load them
(``mysql_tzinfo_to_sql``), instead of answering NULL times.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.converters
from pymysql.constants import FIELD_TYPE
from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cubed.config import DataSourceSettings
from cubed.drivers.base import Column, ResultSet
from cubed.drivers.values import convert_rows, format_bytes
from cubed.errors import ConfigError, CubedError, DatabaseError, ServiceUnavailable

DEFAULT_POOL_SIZE = 4
DEFAULT_PORT = 3306
CONNECT_TIMEOUT = 10
# The socket waits this much longer than the query timeout before giving the connection up.
_READ_GRACE = 30.0
_KILL_ATTEMPTS = 50
_KILL_INTERVAL = 0.1
TIMEOUT_MESSAGE = "canceling statement due to statement timeout"
SERVER_TIMEOUT_GRACE = 1.0
ZONE_TABLES_MESSAGE = (
    "The database has no time zone tables (CONVERT_TZ to a named zone gives NULL), so times cannot be "
    "converted to the query's time zone. Load them, e.g. "
    "`mysql_tzinfo_to_sql /usr/share/zoneinfo | mysql -u root mysql`, or query in UTC."
)
_ZONE_CHECK_SQL = "SELECT CONVERT_TZ('2000-01-01 00:00:00', '+00:00', 'Europe/Berlin')"
# How the dialect renders a conversion to a named zone (an offset like '-08:00' needs no tables).
_NAMED_ZONE_CONVERSION = re.compile(r"'\+00:00', '[A-Za-z][^']*'\)")

# Client (CR_*) and server (ER_*) errors that mean the connection cannot be had or is gone.
_UNAVAILABLE_CODES = frozenset({
    2002, 2003, 2005, 2006, 2013, 2026, 2055,     # can't connect, gone away, lost, SSL, lost (ssl)
    1040, 1044, 1045, 1049, 1053, 1129, 1152, 1184, 1927,  # too many, denied, unknown db, shutdown, killed
})
# Query interrupted by KILL QUERY / stopped by max_statement_time (MariaDB) / max_execution_time.
_TIMEOUT_CODES = frozenset({1317, 1969, 3024})


# ---------------------------------------------------------------- values


def mysql_datetime_text(value: str) -> str:
    """Return the server's ``YYYY-MM-DD HH:MM:SS[.ffffff]`` as ``YYYY-MM-DDTHH:mm:ss.SSS``."""
    if len(value) == 19:
        return f"{value[:10]}T{value[11:]}.000"
    day, sep, clock = value.partition(" ")
    if not sep:
        return value
    head, _, fraction = clock.partition(".")
    return f"{day}T{head}.{(fraction + '000')[:3]}"


def mysql_date_text(value: str) -> str:
    """Return the server's ``YYYY-MM-DD`` as ``YYYY-MM-DDT00:00:00.000``."""
    return value + "T00:00:00.000" if len(value) == 10 else value


def _text(value: str) -> str:
    return value


def _json_value(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _decoders() -> dict[Any, Any]:
    """Return PyMySQL's decoders with cubed's wire forms for times, DECIMAL and JSON."""
    decoders = dict(pymysql.converters.conversions)
    for field_type in (FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP):
        decoders[field_type] = mysql_datetime_text
    decoders[FIELD_TYPE.DATE] = mysql_date_text
    decoders[FIELD_TYPE.NEWDATE] = mysql_date_text
    for field_type in (FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.TIME):
        decoders[field_type] = _text
    decoders[FIELD_TYPE.JSON] = _json_value
    return decoders


DECODERS = _decoders()

_KINDS = {
    FIELD_TYPE.TINY: "number", FIELD_TYPE.SHORT: "number", FIELD_TYPE.LONG: "number",
    FIELD_TYPE.LONGLONG: "number", FIELD_TYPE.INT24: "number", FIELD_TYPE.YEAR: "number",
    FIELD_TYPE.DECIMAL: "number", FIELD_TYPE.NEWDECIMAL: "number", FIELD_TYPE.FLOAT: "number",
    FIELD_TYPE.DOUBLE: "number",
    FIELD_TYPE.VARCHAR: "string", FIELD_TYPE.VAR_STRING: "string", FIELD_TYPE.STRING: "string",
    FIELD_TYPE.ENUM: "string", FIELD_TYPE.SET: "string",
    FIELD_TYPE.DATETIME: "time", FIELD_TYPE.TIMESTAMP: "time",
    FIELD_TYPE.DATE: "date", FIELD_TYPE.NEWDATE: "date",
}
_BINARY_TYPES = frozenset({FIELD_TYPE.BLOB, FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB,
                           FIELD_TYPE.STRING, FIELD_TYPE.VAR_STRING, FIELD_TYPE.VARCHAR, FIELD_TYPE.BIT,
                           FIELD_TYPE.GEOMETRY})


def _binary(value: Any) -> Any:
    return format_bytes(value) if isinstance(value, (bytes, bytearray)) else value


def mysql_columns(description: Sequence[Any] | None) -> tuple[tuple[Column, ...], list[Callable[[Any], Any] | None]]:
    """Return the Columns of a PyMySQL ``cursor.description`` and one converter per column
    (``None`` where the decoded value already is the wire value: only binary data, which
    arrives as bytes, is converted here)."""
    if not description:
        return (), []
    columns: list[Column] = []
    converters: list[Callable[[Any], Any] | None] = []
    for item in description:
        type_code = item[1]
        kind = _KINDS.get(type_code, "other")
        if type_code in (FIELD_TYPE.BLOB, FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB):
            kind = "string"
        columns.append(Column(item[0], kind))
        converters.append(_binary if type_code in _BINARY_TYPES else None)
    return tuple(columns), converters


# ---------------------------------------------------------------- connection settings


def connection_params(settings: DataSourceSettings) -> dict[str, Any]:
    """Return PyMySQL connection keywords for a data source: the fields (host, port, database,
    user, password) as the base, ``url`` (``mysql://user:pass@host:port/db``) winning where it
    says something; ``ssl`` asks for TLS without certificate checks (as ``sslmode=require``)."""
    params: dict[str, Any] = {
        "host": settings.host or "localhost",
        "port": settings.port or DEFAULT_PORT,
        "user": settings.user or "root",
        "password": settings.password or "",
        "database": settings.database or None,
    }
    if settings.url:
        variable = "CUBEJS_DB_URL" if settings.name == "default" else f"CUBEJS_DS_{settings.name.upper()}_DB_URL"
        try:
            parts = urlsplit(settings.url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f'Value "{settings.url}" is not valid for {variable}: {exc}') from None
        if parts.scheme not in ("mysql", "mariadb", "mysql2"):
            raise ConfigError(f'Value "{settings.url}" is not valid for {variable}: expected mysql://user:pass@host:port/db')
        if parts.hostname:
            params["host"] = parts.hostname
        if port:
            params["port"] = port
        if parts.username:
            params["user"] = unquote(parts.username)
        if parts.password is not None:
            params["password"] = unquote(parts.password)
        if parts.path.strip("/"):
            params["database"] = unquote(parts.path.strip("/"))
    if settings.ssl:
        params["ssl"] = {"check_hostname": False}
    return params


# ---------------------------------------------------------------- errors


def mysql_error_message(exc: BaseException) -> str:
    """Return the server's (or client's) message of a PyMySQL error, on one line."""
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        text = str(args[1])
    else:
        text = str(exc)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or exc.__class__.__name__


def error_code(exc: BaseException) -> int | None:
    """Return the numeric MySQL error code of a PyMySQL error, or None."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def connection_lost(exc: BaseException) -> bool:
    """Return whether a PyMySQL error means the connection is unusable."""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    if isinstance(exc, (OSError, EOFError)):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and error_code(exc) in _UNAVAILABLE_CODES


def translate_failure(failure: Failure) -> Failure:
    """Return the cubed error of a PyMySQL failure: ServiceUnavailable when the connection
    cannot be had or was lost, DatabaseError with the server's message otherwise (the timeout
    message when the server stopped the query for its time); anything else unchanged."""
    exc = failure.value
    if isinstance(exc, CubedError):
        return failure
    if isinstance(exc, (pymysql.err.Error, OSError, EOFError)):
        if connection_lost(exc):
            return Failure(ServiceUnavailable(f"database unavailable: {mysql_error_message(exc)}"))
        if error_code(exc) in _TIMEOUT_CODES:
            return Failure(DatabaseError(TIMEOUT_MESSAGE))
        return Failure(DatabaseError(mysql_error_message(exc)))
    return failure


# ---------------------------------------------------------------- driver


@dataclass(eq=False)
class _Job:
    """One ``execute()``: the worker thread publishes the server thread id of the connection
    running it (``thread_id``); the reactor thread decides to give up on it (``abandoned``)."""

    name: str
    started: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)
    thread_id: int | None = None
    abandoned: bool = False
    killed: bool = False
    timer: DelayedCall | None = field(default=None, repr=False)
    result: Deferred[ResultSet] | None = field(default=None, repr=False)


class _Abandoned(Exception):
    """The caller gave up on the query before a worker picked it up."""


class MySQLDriver:
    """The MySQL/MariaDB data source (dialect ``mysql``): Deferred[ResultSet] per query."""

    dialect = "mysql"
    db_type = "mysql"
    log = Logger()

    def __init__(self, settings: DataSourceSettings, reactor: Any, *, threads: int | None = None) -> None:
        """Raises ConfigError when ``url`` does not parse."""
        self._reactor = reactor
        self._settings = settings
        self._params = connection_params(settings)
        self._query_timeout = max(float(settings.query_timeout), 0.0)
        size = threads or settings.max_pool or settings.concurrency or DEFAULT_POOL_SIZE
        self._pool = ThreadPool(minthreads=0, maxthreads=size, name=f"cubed-mysql-{settings.name}")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: set[Any] = set()
        self._running: set[_Job] = set()
        self._zones_loaded: bool | None = None
        self._started = False
        self._closed = False

    @property
    def label(self) -> str:
        """``host:port/database`` for logs."""
        return f"{self._params['host']}:{self._params['port']}/{self._params.get('database') or ''}"

    # -- connections ---------------------------------------------------------------------
    def _connect(self, read_timeout: float | None) -> Any:
        connection = pymysql.connect(
            **self._params, charset="utf8mb4", autocommit=True, conv=DECODERS,
            connect_timeout=CONNECT_TIMEOUT, read_timeout=read_timeout, write_timeout=read_timeout,
            init_command="SET time_zone = '+00:00'", program_name="cubed",
        )
        return connection

    def _thread_connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.open:
            return connection
        if connection is not None:
            self._forget(connection)
        read_timeout = self._query_timeout + _READ_GRACE if self._query_timeout > 0 else None
        connection = self._connect(read_timeout)
        try:
            self._session_timeout(connection)
        except BaseException:
            connection.close()
            raise
        with self._lock:
            if self._closed:
                connection.close()
                raise ServiceUnavailable("database unavailable: driver closed")
            self._connections.add(connection)
        self._local.connection = connection
        return connection

    def _session_timeout(self, connection: Any) -> None:
        """Let the server stop a query shortly after the query timeout by itself (MariaDB:
        ``max_statement_time`` in seconds; MySQL: ``max_execution_time`` in ms, SELECT only).

        The client timer (at the timeout) is what reports the timeout: a statement the server
        stops itself may end without an error (BENCHMARK() returns 0), so the server's limit
        is only the safety net, one second later."""
        if self._query_timeout <= 0:
            return
        limit = self._query_timeout + SERVER_TIMEOUT_GRACE
        version = str(getattr(connection, "server_version", "") or "")
        with connection.cursor() as cursor:
            if "mariadb" in version.lower():
                cursor.execute("SET SESSION max_statement_time = %s", (limit,))
            else:
                cursor.execute("SET SESSION max_execution_time = %s", (int(limit * 1000),))

    def _forget(self, connection: Any) -> None:
        with self._lock:
            self._connections.discard(connection)
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        try:
            connection.close()
        except Exception:
            # Already broken: it is being dropped anyway.
            pass

    def _open(self) -> bool | None:
        """Worker thread: open this thread's connection and look at the time zone tables."""
        connection = self._thread_connection()
        return self._check_zones(connection)

    def _check_zones(self, connection: Any) -> bool:
        with connection.cursor() as cursor:
            cursor.execute(_ZONE_CHECK_SQL)
            row = cursor.fetchone()
        loaded = bool(row and row[0] is not None)
        self._zones_loaded = loaded
        return loaded

    def start(self) -> Deferred[None]:
        """Start the worker threads and open a first connection; fires None, or fails with
        ServiceUnavailable (queries then retry the connection by themselves)."""
        if self._closed:
            return defer.fail(ServiceUnavailable("database unavailable: driver closed"))
        if not self._started:
            self._pool.start()
            self._started = True
        d = deferToThreadPool(self._reactor, self._pool, self._open)

        def opened(zones: bool | None) -> None:
            self.log.info("MySQL {label} connected", label=self.label)
            if zones is False:
                self.log.error("MySQL {label}: {message}", label=self.label, message=ZONE_TABLES_MESSAGE)

        def failed(f: Failure) -> Failure:
            translated = translate_failure(f)
            self.log.error("MySQL {label} not reachable: {error}", label=self.label, error=translated.value)
            return translated

        return d.addCallbacks(opened, failed)

    # -- queries -------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any], name: str = "query") -> Deferred[ResultSet]:
        """Run one statement (``%s`` placeholders, ``%%`` for a literal ``%``) on a worker
        thread; fire with its ResultSet or fail with DatabaseError (the server's message; also
        on timeout) or ServiceUnavailable. Cancelling the Deferred kills the query."""
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
            self._running.discard(job)
            if job.timer is not None and job.timer.active():
                job.timer.cancel()
            job.timer = None
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
            with job.lock:
                if job.abandoned:
                    raise _Abandoned()
            connection = self._thread_connection()
            if self._zones_loaded is not True and _NAMED_ZONE_CONVERSION.search(sql):
                if not self._check_zones(connection):
                    raise DatabaseError(ZONE_TABLES_MESSAGE)
            with job.lock:
                if job.abandoned:
                    raise _Abandoned()
                job.thread_id = connection.thread_id()
            try:
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    description = cursor.description
                    rows = list(cursor.fetchall()) if description else []
            except BaseException as exc:
                if connection_lost(exc):
                    self._forget(connection)
                raise
            finally:
                with job.lock:
                    job.thread_id = None
            columns, converters = mysql_columns(description)
            return ResultSet(columns, convert_rows(rows, converters))
        finally:
            job.finished.set()

    def _timed_out(self, job: _Job, result: Deferred[ResultSet]) -> None:
        job.timer = None
        if result.called:
            return
        self.log.warn("{name} exceeded {timeout:g} s; killing it", name=job.name, timeout=self._query_timeout)
        self._abandon(job)
        result.errback(DatabaseError(TIMEOUT_MESSAGE))

    def _abandon(self, job: _Job) -> None:
        with job.lock:
            if job.abandoned:
                return
            job.abandoned = True
            thread_id = job.thread_id
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        job.timer = None
        if thread_id is not None:
            self._kill(job, thread_id)

    def _kill(self, job: _Job, thread_id: int) -> Deferred[None]:
        """Send ``KILL QUERY`` for the job's connection from a separate connection (on the
        reactor's pool: the driver's own threads may all be busy)."""
        if job.killed:
            return defer.succeed(None)
        job.killed = True

        def kill() -> None:
            # A KILL that arrives just before the statement reaches the server is lost, so it
            # is repeated until the job lets go of its connection.
            connection = None
            try:
                for _ in range(_KILL_ATTEMPTS):
                    with job.lock:
                        if job.thread_id != thread_id:
                            return  # finished: its connection may run another query now
                    if connection is None:
                        connection = self._connect(CONNECT_TIMEOUT)
                    with connection.cursor() as cursor:
                        cursor.execute(f"KILL QUERY {int(thread_id)}")
                    if job.finished.wait(_KILL_INTERVAL):
                        return
            finally:
                if connection is not None:
                    connection.close()

        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), kill)
        d.addErrback(lambda f: self.log.warn("KILL QUERY {id} failed: {error}", id=thread_id,
                                             error=translate_failure(f).value))
        return d

    def test_connection(self) -> Deferred[None]:
        """Fire None when ``SELECT 1`` succeeds; fail otherwise."""
        return self.execute("SELECT 1", (), name="test_connection").addCallback(lambda _: None)

    # -- closing -------------------------------------------------------------------------
    def close(self) -> Deferred[None]:
        """Kill running queries (their callers get ServiceUnavailable), stop the worker threads
        and close every connection; fires None when done."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        jobs = list(self._running)
        self._running.clear()
        kills = []
        for job in jobs:
            with job.lock:
                job.abandoned = True
                thread_id = job.thread_id
            if job.timer is not None and job.timer.active():
                job.timer.cancel()
            job.timer = None
            if job.result is not None and not job.result.called:
                job.result.errback(ServiceUnavailable("database unavailable: driver closed"))
            if thread_id is not None:
                kills.append(self._kill(job, thread_id))
        d = defer.DeferredList(kills, consumeErrors=True)
        d.addCallback(lambda _: deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._shutdown))

        def closed(_: Any) -> None:
            self.log.info("MySQL {label} closed", label=self.label)

        return d.addCallback(closed)

    def _shutdown(self) -> None:
        """A reactor pool thread: join the workers, then close their connections."""
        if self._started:
            self._pool.stop()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.close()
            except Exception:
                # Closing a connection the server already dropped may complain; it is gone anyway.
                pass

