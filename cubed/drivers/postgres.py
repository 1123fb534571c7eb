"""PostgreSQL driver: a txpostgres pool of asynchronous psycopg2 connections.

Every connection watches itself with a dead-connection detector and reconnects with backoff
after the server restarts or the network drops; while it is down, queries fail at once with
ServiceUnavailable instead of hanging. Each query runs in a short transaction
(``runInteraction``) that first sets a statement timeout, so the server stops a runaway query
by itself; a client-side timer (query timeout + grace) covers a server that does not answer
and then cancels the backend from a separate connection. Values arrive in Cube's wire form
straight from psycopg2's typecasters (see ``cubed.drivers.values``).

SQL is a psycopg2 format string: ``%s`` placeholders bound from ``params`` (a list value binds
as an ARRAY, for ``= any(%s)``), and a literal ``%`` must be written ``%%`` - parameters are
always interpolated, also when there are none, so the rule does not depend on the query.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import psycopg2
import psycopg2.extensions
from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres

from cubed.config import DataSourceSettings
from cubed.drivers.base import ResultSet
from cubed.drivers.values import first_line, pg_columns, register_pg_typecasters
from cubed.errors import ConfigError, CubedError, DatabaseError, ServiceUnavailable

DEFAULT_POOL_SIZE = 4

# SQLSTATEs the server sends when the connection itself is going away or cannot be had:
# class 08 (connection exception), shutdown/crash/startup (57P01-57P03), too many clients.
_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03", "53300"})

_SESSION_SETUP = "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'"
_QUERY_SETUP = "SELECT now()::text, set_config('statement_timeout', %s, true)"
_CANCEL_SQL = (
    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
    "WHERE pid = %s AND xact_start = %s::timestamptz"
)
TIMEOUT_MESSAGE = "canceling statement due to statement timeout"
_SEVERITY = re.compile(r"^(FATAL|ERROR|PANIC):\s+")


def connection_params(settings: DataSourceSettings) -> dict[str, Any]:
    """Return psycopg2 connection keywords for a data source.

    The fields (host, port, database, user, password) are the base and ``url`` wins where it
    says something, as node-postgres merges them. TCP keepalives are on so a silently dropped
    server is noticed; ``ssl`` asks for ``sslmode=require`` unless the URL chose a mode.
    Raises ConfigError naming the URL variable when the URL does not parse.
    """
    params: dict[str, Any] = {}
    for key, value in (
        ("host", settings.host),
        ("port", settings.port),
        ("dbname", settings.database),
        ("user", settings.user),
        ("password", settings.password),
    ):
        if value not in (None, ""):
            params[key] = value
    if settings.url:
        try:
            params.update(psycopg2.extensions.parse_dsn(settings.url))
        except psycopg2.ProgrammingError as exc:
            variable = "CUBEJS_DB_URL" if settings.name == "default" else f"CUBEJS_DS_{settings.name.upper()}_DB_URL"
            raise ConfigError(f"Value is not valid for {variable}: {first_line(str(exc))}") from None
    if settings.ssl:
        params.setdefault("sslmode", "require")
    params.setdefault("application_name", "cubed")
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 30)
    params.setdefault("keepalives_interval", 10)
    params.setdefault("keepalives_count", 3)
    return params


def describe_params(params: dict[str, Any]) -> str:
    """Return ``user@host:port/dbname`` for logs (never the password)."""
    host = params.get("host") or "local socket"
    port = params.get("port") or 5432
    user = params.get("user") or "-"
    return f"{user}@{host}:{port}/{params.get('dbname') or '-'}"


def pg_error_message(exc: BaseException) -> str:
    """Return the first line of the server's message for a psycopg2 error (``relation "foo"
    does not exist``), or of the client library's text when the server sent none."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if getattr(exc, "pgcode", None) and diag is not None else None
    if primary:
        return first_line(primary)
    # libpq prefixes what it relays from a refusing server with its severity.
    return _SEVERITY.sub("", first_line(str(exc))) or exc.__class__.__name__


def is_connection_dead(failure: Failure) -> bool:
    """Return True when a failure means the connection is unusable and must be reopened.

    Query errors the server reports with an SQLSTATE (a bad query, a statement timeout - which
    psycopg2 files under OperationalError) leave the connection healthy.
    """
    exc = failure.value
    if isinstance(exc, txpostgres.RollbackFailed):
        return True
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        code = getattr(exc, "pgcode", None)
        return code is None or code.startswith("08") or code in _UNAVAILABLE_CODES
    return False


def translate_failure(failure: Failure) -> Failure:
    """Return the cubed error for a driver failure: DatabaseError for a query the server
    rejected, ServiceUnavailable when the server cannot be reached; anything else (a bug)
    unchanged."""
    exc = failure.value
    if isinstance(exc, CubedError):
        return failure
    if isinstance(exc, txpostgres.RollbackFailed):
        original = exc.originalFailure
        return Failure(ServiceUnavailable(f"database unavailable: {_describe_failure(original)}"))
    if isinstance(exc, psycopg2.Error):
        code = exc.pgcode
        message = pg_error_message(exc)
        if code is not None and not (code.startswith("08") or code in _UNAVAILABLE_CODES):
            return Failure(DatabaseError(message))
        return Failure(ServiceUnavailable(f"database unavailable: {message}"))
    if isinstance(exc, (reconnection.ConnectionDead, ConnectionDone, ConnectionLost, OSError)):
        return Failure(ServiceUnavailable(f"database unavailable: {_describe_failure(failure)}"))
    return failure


def _describe_failure(failure: Failure) -> str:
    exc = failure.value
    if isinstance(exc, psycopg2.Error):
        return pg_error_message(exc)
    if isinstance(exc, reconnection.ConnectionDead):
        return str(exc) or "connection lost, reconnecting"
    return first_line(str(exc)) or exc.__class__.__name__


class _Detector(reconnection.DeadConnectionDetector):
    """txpostgres' dead-connection detector with a reconnect loop that can be stopped.

    The stock one retries forever with no handle to stop it (a closed driver would keep
    reconnecting) and reports through the legacy log; this one reconnects through the
    connection's ``open()``, which resolves the host name again off the reactor thread.
    """

    log = Logger()
    connectionIsDead: bool

    def __init__(self, reactor: Any, delays: Callable[[], Iterator[float]], label: str) -> None:
        super().__init__(deathChecker=is_connection_dead, reconnectionIterator=delays, reactor=reactor)
        self.label = label
        self._delays: Iterator[float] = iter(())
        self._pending: DelayedCall | None = None
        self._stopped = False

    def setReconnectable(self, reconnectable: Any, *connargs: Any, **connkw: Any) -> None:
        # txpostgres passes the arguments of connect(); reconnecting goes through open().
        self.reconnectable = reconnectable

    def startReconnecting(self, f: Failure) -> None:
        if self._stopped:
            return
        self.log.warn("{label}: connection lost ({error}); reconnecting", label=self.label, error=_describe_failure(f))
        self._delays = iter(self.reconnectionIterator())
        self._attempt()

    def force_dead(self, f: Failure) -> None:
        """Treat the connection as dead whatever the failure was, and reconnect; returns None."""
        if self._stopped or self.connectionIsDead:
            return
        self.connectionIsDead = True
        self.startReconnecting(f)

    def start_dead(self, f: Failure) -> None:
        """Mark a connection that could not be opened at all as dead and start retrying it
        after the first backoff delay; returns None."""
        if self._stopped or self.connectionIsDead:
            return
        self.connectionIsDead = True
        self._delays = iter(self.reconnectionIterator())
        self._schedule()

    def reconnect(self) -> Deferred[Any]:
        try:
            self.reconnectable.close()
        except Exception:
            # Closing an already broken connection may complain; it is being replaced anyway.
            pass
        return self.reconnectable.open()

    def stop(self) -> None:
        """Stop reconnecting for good (the driver is closing); returns None."""
        self._stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _attempt(self) -> None:
        self._pending = None
        if self._stopped:
            return
        d = defer.maybeDeferred(self.reconnect)
        d.addCallbacks(self._succeeded, self._failed)

    def _succeeded(self, _: Any) -> Deferred[Any] | None:
        if self._stopped:
            return None
        self.log.info("{label}: reconnected", label=self.label)
        return self.connectionRecovered()

    def _failed(self, f: Failure) -> None:
        if self._stopped:
            return None
        self.log.debug("{label}: reconnect failed ({error})", label=self.label, error=_describe_failure(f))
        self._schedule()
        return None

    def _schedule(self) -> None:
        delay = next(self._delays, 10.0)
        self._pending = self.reactor.callLater(delay, self._attempt)


class _Cursor(txpostgres.Cursor):
    """A txpostgres cursor that keeps psycopg2's QueryCanceledError.

    txpostgres turns it into a bare CancelledError, which would hide the server's message
    (``canceling statement due to statement timeout``); cubed cancels through the server, not
    through Deferred cancellation of the cursor.
    """

    def _handleCancellation(self, f: Failure) -> Failure:
        return f


class _PgConnection(txpostgres.Connection):
    """One asynchronous connection: opens with a timeout, resolves the host name off the
    reactor thread (libpq would block on DNS), registers cubed's typecasters and sets the
    session to UTC/ISO."""

    log = Logger()
    cursorFactory = _Cursor

    def __init__(
        self,
        reactor: Any,
        params: dict[str, Any],
        connect_timeout: float,
        label: str,
        detector: _Detector | None = None,
    ) -> None:
        super().__init__(reactor, None, detector)
        self.params = params
        self.connect_timeout = connect_timeout
        self.label = label
        self.ready = False
        self.shut = False
        self.last_error: str | None = None
        self._timed_out = False
        if detector is not None:
            detector.reconnectable = self

    @property
    def usable(self) -> bool:
        """True when the connection is open and not being replaced."""
        dead = self.detector is not None and self.detector.connectionIsDead
        return self.ready and not dead and self._connection is not None and not self._connection.closed

    def open(self) -> Deferred[Any]:
        """Connect (host resolution, login, session setup); fires with self, or fails with
        a psycopg2 OperationalError (also on timeout)."""
        self.ready = False
        self._timed_out = False
        if self.shut:
            return defer.fail(reconnection.ConnectionDead("driver closed"))
        d = self._resolve()
        d.addCallback(self._connect)
        return d

    def _resolve(self) -> Deferred[dict[str, Any]]:
        params = dict(self.params)
        host = str(params.get("host") or "")
        if not host or "hostaddr" in params or "," in host or host.startswith("/") or host.startswith("@"):
            return defer.succeed(params)
        try:
            ipaddress.ip_address(host)
            return defer.succeed(params)
        except ValueError:
            pass
        port = int(params.get("port") or 5432)
        pool = self.reactor.getThreadPool()

        def chosen(infos: list[Any]) -> dict[str, Any]:
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            # One host entry per address keeps libpq's fallback from one address to the next
            # (e.g. localhost as ::1, then 127.0.0.1) and the name for TLS and .pgpass.
            params["host"] = ",".join([host] * len(addresses))
            params["hostaddr"] = ",".join(addresses)
            return params

        def unresolved(f: Failure) -> Failure:
            f.trap(OSError)
            reason = f.value.strerror if isinstance(f.value, OSError) and f.value.strerror else f.value
            failure = Failure(psycopg2.OperationalError(f'could not translate host name "{host}" to address: {reason}'))
            self.last_error = _describe_failure(failure)
            return failure

        d = deferToThreadPool(self.reactor, pool, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        return d.addCallbacks(chosen, unresolved)

    def _connect(self, params: dict[str, Any]) -> Deferred[_PgConnection]:
        if self.shut:
            raise reconnection.ConnectionDead("driver closed")
        timer = self.reactor.callLater(self.connect_timeout, self._connect_timed_out)
        d = self.connect(**params)
        d.addCallback(self._prepare)

        def settle(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if self._timed_out:
                    result = Failure(psycopg2.OperationalError(
                        f"timeout expired after {self.connect_timeout:g} s connecting to {describe_params(self.params)}"
                    ))
                self.last_error = _describe_failure(result)
            else:
                self.last_error = None
            return result

        return d.addBoth(settle)

    def _connect_timed_out(self) -> None:
        self._timed_out = True
        self.close()

    def _prepare(self, _: Any) -> Deferred[_PgConnection]:
        register_pg_typecasters(self._connection)
        d = self.cursor().execute(_SESSION_SETUP)

        def ready(_: Any) -> _PgConnection:
            self.ready = True
            return self

        return d.addCallback(ready)

    def _runInteraction(self, interaction: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        # txpostgres' version reports a failed rollback through the legacy log as an error;
        # here a failed rollback only means the connection died, which the detector handles.
        cursor = self.cursor()
        d = cursor.execute("begin")
        d.addCallback(interaction, *args, **kwargs)

        def commit(result: Any) -> Deferred[Any]:
            return cursor.execute("commit").addCallback(lambda _: result)

        def rollback(f: Failure) -> Deferred[Any]:
            attempt = defer.maybeDeferred(cursor.execute, "rollback")

            def failed(rf: Failure) -> Failure:
                self.log.debug("{label}: rollback failed: {error}", label=self.label, error=_describe_failure(rf))
                return Failure(txpostgres.RollbackFailed(self, f))

            return attempt.addCallbacks(lambda _: f, failed)

        d.addCallback(commit)
        d.addErrback(rollback)
        return d

    def doRead(self) -> None:
        try:
            super().doRead()
        except Exception:
            # An idle connection heard the server go away; nobody is waiting to be told.
            f = Failure()
            self.ready = False
            self.last_error = _describe_failure(f)
            if isinstance(self.detector, _Detector):
                self.detector.force_dead(f)
            else:
                self.close()

    def connectionLost(self, reason: Failure) -> None:
        self.ready = False
        super().connectionLost(reason)

    def close(self) -> None:
        self.ready = False
        if self._connection is None:
            return
        super().close()

    def shutdown(self) -> None:
        """Close for good: no reconnection afterwards; returns None."""
        self.shut = True
        if isinstance(self.detector, _Detector):
            self.detector.stop()
        self.close()


class _Pool(txpostgres.ConnectionPool):
    """A fixed-size txpostgres pool that hands out live connections only."""

    def __init__(self, reactor: Any, make_connection: Callable[[], _PgConnection], size: int) -> None:
        self.reactor = reactor
        self.connectionFactory = lambda _reactor, _cooperator: make_connection()
        super().__init__(None, min=size)
        self.every: tuple[_PgConnection, ...] = tuple(self.connections)

    def start(self) -> Deferred[list[Failure]]:
        """Open every connection; fires with the failures (connections that failed keep
        retrying in the background)."""

        def one(connection: _PgConnection) -> Deferred[Any]:
            d = connection.open()

            def failed(f: Failure) -> Failure:
                if isinstance(connection.detector, _Detector):
                    connection.detector.start_dead(f)
                return f

            return d.addErrback(failed)

        dl = defer.DeferredList([one(c) for c in self.every], consumeErrors=True)
        return dl.addCallback(lambda results: [r for ok, r in results if not ok])

    def _runInteraction(self, interaction: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        connection = next((c for c in self.connections if c.usable), None)
        if connection is None:
            # Fail fast rather than queue behind a reconnect that may take many seconds.
            reason = next((c.last_error for c in self.every if c.last_error), "reconnecting")
            return defer.fail(reconnection.ConnectionDead(f"no live connection ({reason})"))
        self.connections.remove(connection)
        d = connection.runInteraction(interaction, *args, **kwargs)
        return d.addBoth(self._putBackAndPassthrough, connection)

    def close(self) -> None:
        for connection in self.every:
            connection.shutdown()


@dataclass(eq=False)
class _Query:
    """The state of one ``execute()`` shared by its callbacks, its timer and its canceller."""

    name: str
    started: float
    backend_pid: int | None = None
    xact_start: str | None = None
    abandoned: bool = False
    done: bool = False
    timer: DelayedCall | None = field(default=None, repr=False)


class _Abandoned(Exception):
    """The caller gave up on the query before it reached the server."""


class PostgresDriver:
    """The PostgreSQL data source (dialect ``postgres``): Deferred[ResultSet] per query."""

    dialect = "postgres"
    db_type = "postgres"
    log = Logger()

    def __init__(
        self,
        settings: DataSourceSettings,
        reactor: Any,
        *,
        connect_timeout: float = 10.0,
        timeout_grace: float = 1.0,
        reconnect_delays: Callable[[], Iterator[float]] | None = None,
    ) -> None:
        self._reactor = reactor
        self._params = connection_params(settings)
        self._where = describe_params(self._params)
        self._size = settings.max_pool or DEFAULT_POOL_SIZE
        self._query_timeout = max(float(settings.query_timeout), 0.0)
        self._connect_timeout = connect_timeout
        self._timeout_grace = timeout_grace
        self._delays = reconnect_delays or reconnection.defaultReconnectionIterator
        self._closed = False
        self._running: set[_Query] = set()
        self._cancellers: set[_PgConnection] = set()
        # Cancels on their way to the server: closing waits for them (each is bounded by its
        # connection's own timer), so that a query cancelled at shutdown stops on the server.
        self._cancelling: set[Deferred[None]] = set()
        counter = iter(range(1, self._size + 1))
        self._pool = _Pool(reactor, lambda: self._make_connection(f"pg[{next(counter)}] {self._where}"), self._size)

    def _make_connection(self, label: str) -> _PgConnection:
        detector = _Detector(self._reactor, self._delays, label)
        return _PgConnection(self._reactor, self._params, self._connect_timeout, label, detector)

    def start(self) -> Deferred[None]:
        """Open the pool; fires None once every connection has connected or failed. When the
        server is down this is logged and the connections keep retrying in the background
        (queries fail with ServiceUnavailable meanwhile)."""
        d = self._pool.start()

        def report(failures: list[Failure]) -> None:
            if failures:
                self.log.warn(
                    "PostgreSQL {where} unavailable at start ({failed} of {size} connections): {error}; "
                    "retrying in the background",
                    where=self._where, failed=len(failures), size=self._size, error=_describe_failure(failures[0]),
                )
            else:
                self.log.info("PostgreSQL {where}: {size} connections open", where=self._where, size=self._size)

        return d.addCallback(report)

    def execute(self, sql: str, params: Sequence[Any], name: str = "query") -> Deferred[ResultSet]:
        """Run one statement; fire with its ResultSet (values in wire form), or fail with
        DatabaseError (the server's message, also on timeout) or ServiceUnavailable. Cancelling
        the returned Deferred cancels the query on the server."""
        if self._closed:
            return defer.fail(ServiceUnavailable("database unavailable: driver closed"))
        query = _Query(name=name, started=self._reactor.seconds())
        result: Deferred[ResultSet] = Deferred(lambda _d: self._abandon(query, "cancelled"))
        if self._query_timeout > 0:
            deadline = self._query_timeout + self._timeout_grace
            query.timer = self._reactor.callLater(deadline, self._timed_out, query, result)
        self._running.add(query)
        inner = self._pool.runInteraction(self._interaction, sql, tuple(params), query)

        def finished(outcome: Any) -> None:
            query.done = True
            self._running.discard(query)
            if query.timer is not None and query.timer.active():
                query.timer.cancel()
            elapsed = (self._reactor.seconds() - query.started) * 1000
            if isinstance(outcome, Failure):
                if self._closed:
                    translated = Failure(ServiceUnavailable("database unavailable: driver closed"))
                else:
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

    def _interaction(self, cursor: Any, sql: str, params: tuple[Any, ...], query: _Query) -> Deferred[ResultSet]:
        if query.abandoned:
            raise _Abandoned()
        query.backend_pid = cursor.connection.get_backend_pid()
        timeout_ms = str(int(self._query_timeout * 1000)) if self._query_timeout > 0 else "0"
        d = cursor.execute(_QUERY_SETUP, (timeout_ms,))

        def run(_: Any) -> Deferred[Any]:
            query.xact_start = cursor.fetchone()[0]
            if query.abandoned:
                raise _Abandoned()
            return cursor.execute(sql, params)

        def fetch(_: Any) -> ResultSet:
            description = cursor.description
            rows = cursor.fetchall() if description is not None else []
            return ResultSet(pg_columns(description), rows)

        return d.addCallback(run).addCallback(fetch)

    def _timed_out(self, query: _Query, result: Deferred[ResultSet]) -> None:
        query.timer = None
        if result.called:
            return
        self.log.warn(
            "{name} exceeded {timeout:g} s; cancelling it on the server",
            name=query.name, timeout=self._query_timeout,
        )
        self._abandon(query, "timeout")
        result.errback(DatabaseError(TIMEOUT_MESSAGE))

    def _abandon(self, query: _Query, reason: str) -> None:
        if query.abandoned:
            return
        query.abandoned = True
        if query.timer is not None and query.timer.active():
            query.timer.cancel()
        query.timer = None
        if query.done or query.xact_start is None or query.backend_pid is None:
            # Not on the server yet (or finished): the interaction checks `abandoned` itself.
            return
        self._cancel_backend(query, reason)

    def _cancel_backend(self, query: _Query, reason: str) -> None:
        # A separate connection, not the pool: the pool may be full of the very queries that
        # need cancelling. The xact_start guard avoids hitting a later query on that backend.
        connection = _PgConnection(self._reactor, self._params, self._connect_timeout, f"cancel {self._where}")
        self._cancellers.add(connection)
        timer = self._reactor.callLater(self._connect_timeout * 2, connection.shutdown)
        d = connection.open()
        d.addCallback(lambda _: connection.runQuery(_CANCEL_SQL, (query.backend_pid, query.xact_start)))

        finished: Deferred[None] = Deferred()
        self._cancelling.add(finished)

        def done(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
            self._cancellers.discard(connection)
            self._cancelling.discard(finished)
            finished.callback(None)
            connection.shutdown()
            if isinstance(outcome, Failure):
                self.log.warn(
                    "could not cancel {name} (backend {pid}, {reason}): {error}",
                    name=query.name, pid=query.backend_pid, reason=reason, error=_describe_failure(outcome),
                )
            else:
                self.log.info(
                    "cancelled {name} on backend {pid} ({reason})",
                    name=query.name, pid=query.backend_pid, reason=reason,
                )

        d.addBoth(done)

    def test_connection(self) -> Deferred[None]:
        """Fire None when ``SELECT 1`` succeeds; fail with ServiceUnavailable otherwise."""
        return self.execute("SELECT 1", (), name="test_connection").addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        """Close every connection and stop reconnecting; queries still running fail with
        ServiceUnavailable. Fires None."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        pending = list(self._cancelling)
        if not pending:
            self._close_now()
            return defer.succeed(None)
        self.log.info("PostgreSQL {where}: waiting for {count} cancel(s) to reach the server before closing",
                      where=self._where, count=len(pending))
        waiting = defer.DeferredList(pending, consumeErrors=True)
        return waiting.addCallback(lambda _: self._close_now())

    def _close_now(self) -> None:
        self._pool.close()
        for connection in list(self._cancellers):
            connection.shutdown()
        self._cancellers.clear()
        for query in list(self._running):
            if query.timer is not None and query.timer.active():
                query.timer.cancel()
        self.log.info("PostgreSQL {where}: pool closed", where=self._where)
