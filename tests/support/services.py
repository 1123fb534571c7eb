"""The external services integration tests use: PostgreSQL and Redis, found or skipped.

PostgreSQL is at ``CUBED_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth) and Redis at ``CUBED_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). When a
service is absent the test is skipped with the reason - except under
``CUBED_REQUIRE_SERVICES=1`` (CI), where absence fails the test.

Every test gets its own PostgreSQL database (``create_test_database``), dropped at cleanup, and
its own Redis key prefix (``unique_redis_prefix``). ``PostgresInstance`` runs a private
PostgreSQL server for tests that must stop or restart one (never the shared server).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import psycopg2
import psycopg2.extensions
from twisted.internet import defer, utils
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from cubed.config import DataSourceSettings

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CHECK_TIMEOUT = 3.0


class ServiceMissing(unittest.FailTest):
    """A required service is absent while ``CUBED_REQUIRE_SERVICES=1``: a test failure (trial's
    FailTest, an AssertionError, so it is reported as a failure rather than an error or skip)."""


def services_required() -> bool:
    """Return True when absent services must fail tests (``CUBED_REQUIRE_SERVICES=1``)."""
    return os.environ.get("CUBED_REQUIRE_SERVICES", "").strip().lower() in ("1", "true", "yes")


def service_absent(message: str) -> Exception:
    """Return the exception to raise for an absent service: SkipTest, or ServiceMissing under
    ``CUBED_REQUIRE_SERVICES=1``."""
    if services_required():
        return ServiceMissing(f"{message} (CUBED_REQUIRE_SERVICES=1)")
    return unittest.SkipTest(message)


def pg_url() -> str:
    """Return the URL of the test PostgreSQL server's maintenance database."""
    return os.environ.get("CUBED_TEST_PG_URL") or DEFAULT_PG_URL


def redis_url() -> str:
    """Return the URL of the test Redis server."""
    return os.environ.get("CUBED_TEST_REDIS_URL") or DEFAULT_REDIS_URL


def _pg_params(url: str) -> dict[str, Any]:
    return psycopg2.extensions.parse_dsn(url)


def _pg_where(url: str) -> str:
    params = _pg_params(url)
    return f"{params.get('host', 'local socket')}:{params.get('port', 5432)}"


def _pg_connect(url: str, dbname: str | None = None) -> Any:
    params = _pg_params(url)
    if dbname is not None:
        params["dbname"] = dbname
    params["connect_timeout"] = max(2, int(CHECK_TIMEOUT))
    connection = psycopg2.connect(**params)
    connection.autocommit = True
    return connection


def require_postgres() -> None:
    """Return None when the test PostgreSQL server answers; otherwise raise SkipTest (or
    ServiceMissing under ``CUBED_REQUIRE_SERVICES=1``).

    A blocking check, bounded by a few seconds: it runs in setUp, before the test's own
    reactor work begins.
    """
    url = pg_url()
    try:
        connection = _pg_connect(url)
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise service_absent(f"PostgreSQL not reachable at {_pg_where(url)}: {reason}") from None
    connection.close()


def require_redis() -> None:
    """Return None when the test Redis server answers PING; otherwise raise SkipTest (or
    ServiceMissing under ``CUBED_REQUIRE_SERVICES=1``). Blocking, bounded by a few seconds."""
    url = redis_url()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=CHECK_TIMEOUT) as sock:
            sock.settimeout(CHECK_TIMEOUT)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        raise service_absent(f"Redis not reachable at {host}:{port}: {exc}") from None
    # -NOAUTH still proves a Redis is listening; the client under test brings the password.
    if not (reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")):
        raise service_absent(f"Redis not reachable at {host}:{port}: unexpected reply {reply[:40]!r}")


def require_mysql() -> None:
    """Return None when the test MySQL/MariaDB server answers at ``CUBED_TEST_MYSQL_URL``
    (default ``mysql://root@127.0.0.1:3306/``); otherwise raise SkipTest (or ServiceMissing
    under ``CUBED_REQUIRE_SERVICES=1``). Blocking, bounded by a few seconds."""
    import pymysql

    parts = urlsplit(os.environ.get("CUBED_TEST_MYSQL_URL") or "mysql://root@127.0.0.1:3306/")
    host, port = parts.hostname or "127.0.0.1", parts.port or 3306
    try:
        connection = pymysql.connect(host=host, port=port, user=parts.username or "root",
                                     password=parts.password or "", connect_timeout=int(CHECK_TIMEOUT))
    except (pymysql.err.Error, OSError) as exc:
        reason = exc.args[1] if len(exc.args) > 1 else str(exc)
        raise service_absent(f"MySQL/MariaDB not reachable at {host}:{port}: {reason}") from None
    connection.close()


def unique_redis_prefix(label: str = "test") -> str:
    """Return a key prefix no other test (or test run) uses: ``cubed_test:<label>:<pid>:<random>:``."""
    return f"cubed_test:{label}:{os.getpid()}:{uuid4().hex[:12]}:"


def unique_database_name() -> str:
    """Return a fresh database name: ``cubed_test_<pid>_<random>``."""
    return f"cubed_test_{os.getpid()}_{uuid4().hex[:12]}"


def settings_for(url: str, database: str, **changes: Any) -> DataSourceSettings:
    """Return postgres DataSourceSettings for ``database`` on the server of ``url``."""
    params = _pg_params(url)
    port = params.get("port")
    values: dict[str, Any] = {
        "db_type": "postgres",
        "host": params.get("host"),
        "port": int(port) if port else None,
        "database": database,
        "user": params.get("user"),
        "password": params.get("password"),
        "query_timeout": 30.0,
    }
    values.update(changes)
    return DataSourceSettings(**values)


def _create_database(url: str, name: str) -> None:
    try:
        connection = _pg_connect(url)
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise service_absent(f"PostgreSQL not reachable at {_pg_where(url)}: {reason}") from None
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def _drop_database(url: str, name: str) -> None:
    connection = _pg_connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


def drop_database_now(name: str) -> None:
    """Drop database ``name`` on the test server, blocking and quietly when the server is gone
    (for ``atexit``: a database shared by several tests outlives each of them)."""
    try:
        _drop_database(pg_url(), name)
    except psycopg2.Error:
        pass


def create_test_database(testcase: unittest.TestCase, **changes: Any) -> Deferred[DataSourceSettings]:
    """Create a uniquely named database on the test server and return a Deferred firing with
    its DataSourceSettings (``changes`` override fields, e.g. ``query_timeout``). A cleanup
    drops it, terminating its connections first. Fails with SkipTest/ServiceMissing when the
    server is absent. The blocking psycopg2 work runs in a thread."""
    url = pg_url()
    name = unique_database_name()
    d = deferToThread(_create_database, url, name)

    def created(_: Any) -> DataSourceSettings:
        testcase.addCleanup(deferToThread, _drop_database, url, name)
        return settings_for(url, name, **changes)

    return d.addCallback(created)


def database_exists(name: str) -> bool:
    """Return True when the test server has a database called ``name`` (blocking)."""
    connection = _pg_connect(pg_url())
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cursor.fetchone() is not None
    finally:
        connection.close()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin_dir() -> Path | None:
    """Return the directory holding initdb/pg_ctl (``CUBED_PG_BIN``, the Debian PostgreSQL
    directories, or PATH), or None."""
    candidates: list[Path] = []
    if os.environ.get("CUBED_PG_BIN"):
        candidates.append(Path(os.environ["CUBED_PG_BIN"]))
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        versions = sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates.extend(p / "bin" for p in versions)
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


@dataclass
class PostgresInstance:
    """A private PostgreSQL server in a temporary directory, for tests that stop and restart
    one. initdb refuses to run as root, so as root it runs as the ``postgres`` system user
    through runuser. Every command runs as a child process, never blocking the reactor."""

    bin_dir: Path
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cubed-pg-")))
    run_as: str | None = None

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def url(self) -> str:
        """A URL for the ``postgres`` database of this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def settings(self, **changes: Any) -> DataSourceSettings:
        """Return DataSourceSettings for this server's ``postgres`` database."""
        return settings_for(self.url, "postgres", **changes)

    def _command(self, program: str, *args: str) -> tuple[str, list[str]]:
        executable = str(self.bin_dir / program)
        if self.run_as:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            return runuser, [runuser, "-u", self.run_as, "--", executable, *args]
        return executable, [executable, *args]

    @defer.inlineCallbacks
    def _run(self, program: str, *args: str) -> Any:
        executable, argv = self._command(program, *args)
        out, err, code = yield utils.getProcessOutputAndValue(
            executable, argv[1:], env=dict(os.environ), path=str(self.root),
        )
        if code != 0:
            raise RuntimeError(f"{program} exited with {code}: {(err or out).decode(errors='replace').strip()[-800:]}")
        return out

    @defer.inlineCallbacks
    def init(self) -> Any:
        """Create the cluster (trust auth, user postgres); fires None."""
        if self.run_as:
            shutil.chown(self.root, user=self.run_as)
        yield self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    def start(self) -> Deferred[Any]:
        """Start the server and wait until it accepts connections; fires when it does."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        log = str(self.root / "server.log")
        return self._run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", log, "-w", "-t", "30", "start")

    def stop(self) -> Deferred[Any]:
        """Stop the server (fast shutdown: sessions are disconnected); fires when it is down."""
        return self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")

    @defer.inlineCallbacks
    def destroy(self) -> Any:
        """Stop the server if it runs and delete its directory; fires None."""
        if (self.data_dir / "postmaster.pid").exists():
            try:
                yield self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30", "stop")
            except RuntimeError:
                pass
        yield deferToThread(shutil.rmtree, self.root, True)


def new_private_postgres(testcase: unittest.TestCase) -> PostgresInstance:
    """Return a PostgresInstance for one test, not yet created (destroyed at cleanup); fails
    with SkipTest/ServiceMissing when the PostgreSQL server binaries are not installed, or when
    running as root without a ``postgres`` user to run them as."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise service_absent("PostgreSQL server binaries (initdb, pg_ctl) not found; set CUBED_PG_BIN")
    run_as = None
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            raise service_absent("running as root and there is no postgres user to run initdb as") from None
        run_as = "postgres"
    instance = PostgresInstance(bin_dir=bin_dir, run_as=run_as)
    testcase.addCleanup(instance.destroy)
    return instance


@defer.inlineCallbacks
def start_private_postgres(testcase: unittest.TestCase) -> Any:
    """Start a PostgresInstance for one test (destroyed at cleanup) and return a Deferred
    firing with it. Fails with SkipTest/ServiceMissing when the PostgreSQL server binaries
    are not installed or the cluster cannot be created."""
    instance = new_private_postgres(testcase)
    try:
        yield instance.init()
        yield instance.start()
    except RuntimeError as exc:
        raise service_absent(f"could not start a private PostgreSQL: {exc}") from None
    return instance
