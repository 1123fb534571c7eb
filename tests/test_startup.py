"""``twistd -n cubed`` as a user runs it: real twistd processes from the venv, each in its own
project directory, with an environment free of the developer's CUBEJS_*/CUBED_* variables.

- the issue's PostgreSQL command line (settings in the environment, then in ``.env``) serves
  the conformance model: ``/v1/load`` answers ``Orders.count = "3000"``, ``/readyz`` 200;
- a bad setting or a broken model stops start-up quickly with exactly one line on stderr
  naming the setting (or the file, cube and member), nothing on stdout, no traceback;
- SIGTERM stops the server (twistd re-raises the signal: status 143 in a shell).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.support.services import free_port, require_postgres
from tests.support.shopdata import shop_database

HERE = Path(__file__).resolve().parent
CONFORMANCE_MODEL = HERE / "conformance" / "model"
TWISTD = Path(sys.executable).parent / "twistd"
SECRET = "startup-test-secret-0123456789abcdef"
#: How long a server may take to answer /readyz, and a failing start-up to exit.
START_TIMEOUT = 30.0
FAIL_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0
#: A failing start-up must exit within this many seconds (imports included).
QUICK = 10.0


def clean_environment(**variables: str) -> dict[str, str]:
    """Return this process's environment without anything cubed reads, plus ``variables``."""
    environ = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("CUBEJS_", "CUBED_", "LISTEN_"))
        and key not in ("PORT", "REDIS_URL", "NODE_ENV")
    }
    environ.update(variables)
    return environ


class Twistd(ProcessProtocol):
    """One ``twistd`` child: its output and, once it ended, its exit status (the shell's
    number: 128 + N when killed by signal N)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.status: int | None = None
        self._waiters: list[Deferred[int]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, ProcessDone):
            self.status = 0
        elif isinstance(value, ProcessTerminated):
            self.status = value.exitCode if value.exitCode is not None else 128 + (value.signal or 0)
        else:
            self.status = -1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.status)

    def ended(self) -> Deferred[int]:
        """Return a new Deferred firing with the exit status once the child has ended."""
        if self.status is not None:
            return succeed(self.status)
        waiter: Deferred[int] = Deferred()
        self._waiters.append(waiter)
        return waiter

    @property
    def running(self) -> bool:
        return self.status is None

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def output(self) -> str:
        """Both streams, for failure messages."""
        return (f"--- stdout ---\n{self.out.decode(errors='replace')}"
                f"--- stderr ---\n{self.err.decode(errors='replace')}")


def wait(d: Deferred[Any], seconds: float, what: str) -> Deferred[Any]:
    """Return ``d`` failing with a readable message when it has not fired within ``seconds``."""
    def timed_out(failure: Failure, timeout: float) -> Failure:
        if failure.check(TimeoutError):
            raise AssertionError(f"{what}: nothing after {timeout} s")
        return failure

    return d.addTimeout(seconds, reactor).addErrback(timed_out, seconds)


class StartupTestCase(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        if not TWISTD.exists():
            raise unittest.SkipTest(f"no twistd next to {sys.executable}")

    def project(self, model: bool = True) -> Path:
        """Return a new project directory, with a copy of the conformance model in ``model/``."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        if model:
            shutil.copytree(CONFORMANCE_MODEL, directory / "model")
        return directory

    def spawn(self, args: list[str], environ: dict[str, str], cwd: Path) -> Twistd:
        """Start ``twistd -n --pidfile= <args>`` in ``cwd``; killed at cleanup if still running."""
        child = Twistd()
        argv = [str(TWISTD), "-n", "--pidfile=", *args]
        reactor.spawnProcess(child, argv[0], argv, env=environ, path=str(cwd))

        @inlineCallbacks
        def stop() -> Any:
            if child.running:
                child.signal("KILL")
            yield child.ended()

        self.addCleanup(stop)
        return child

    @inlineCallbacks
    def fails_to_start(self, args: list[str], environ: dict[str, str], cwd: Path) -> Any:
        """Run twistd expecting start-up to fail; return its one stderr line after checking
        the status, the time taken, the empty stdout and the absence of a traceback."""
        started = reactor.seconds()
        child = self.spawn(args, environ, cwd)
        status = yield wait(child.ended(), FAIL_TIMEOUT, "twistd with a bad start-up did not exit")
        elapsed = reactor.seconds() - started
        self.assertNotEqual(status, 0, child.output())
        self.assertLess(elapsed, QUICK, f"start-up failure took {elapsed:.1f} s")
        self.assertNotIn(b"Traceback", child.err + child.out, child.output())
        self.assertEqual(bytes(child.out), b"", child.output())
        lines = child.err.decode().splitlines()
        self.assertEqual(len(lines), 1, child.output())
        return lines[0]

    @inlineCallbacks
    def serve(self, args: list[str], environ: dict[str, str], cwd: Path, port: int, probe: str = "/readyz") -> Any:
        """Start twistd and wait until ``probe`` answers 200; return the child."""
        child = self.spawn(args, environ, cwd)
        deadline = reactor.seconds() + START_TIMEOUT
        last = "no answer"
        while True:
            if not child.running:
                self.fail(f"twistd exited with {child.status} before serving\n{child.output()}")
            if reactor.seconds() > deadline:
                self.fail(f"{probe} not 200 within {START_TIMEOUT} s (last: {last})\n{child.output()}")
            try:
                response = yield treq.get(f"http://127.0.0.1:{port}{probe}", persistent=False, timeout=2)
                yield treq.content(response)
                if response.code == 200:
                    return child
                last = f"status {response.code}"
            except Exception as error:
                last = f"{type(error).__name__}"
            yield deferLater(reactor, 0.2, lambda: None)

    @inlineCallbacks
    def stop(self, child: Twistd) -> Any:
        """SIGTERM the child; return its exit status."""
        child.signal("TERM")
        status = yield wait(child.ended(), START_TIMEOUT, "twistd did not stop after SIGTERM")
        return status


class PostgresCommandLineTests(StartupTestCase):
    """The issue's command line, against the shop data in a fresh PostgreSQL database:

        CUBEJS_DB_TYPE=postgres CUBEJS_DB_HOST=127.0.0.1 CUBEJS_DB_NAME=shop CUBEJS_DB_USER=postgres
        CUBEJS_API_SECRET=... CUBEJS_SCHEMA_PATH=model twistd -n cubed --project-dir .

    (the database gets a unique name; PORT picks a free port; twistd also gets ``--pidfile=``).
    """

    def setUp(self) -> None:
        super().setUp()
        require_postgres()

    @inlineCallbacks
    def database_variables(self) -> Any:
        database = yield shop_database(self)
        variables = {
            "CUBEJS_DB_TYPE": "postgres",
            "CUBEJS_DB_HOST": database.host or "127.0.0.1",
            "CUBEJS_DB_NAME": database.database,
            "CUBEJS_DB_USER": database.user or "postgres",
            "CUBEJS_API_SECRET": SECRET,
            "CUBEJS_SCHEMA_PATH": "model",
        }
        # Only when the test server is not the default 127.0.0.1:5432 with trust auth.
        if database.port and database.port != 5432:
            variables["CUBEJS_DB_PORT"] = str(database.port)
        if database.password:
            variables["CUBEJS_DB_PASS"] = database.password
        return variables

    @inlineCallbacks
    def check_serves(self, child: Twistd, port: int) -> Any:
        token = jwt.encode({"sub": "startup-test"}, SECRET, algorithm="HS256")
        response = yield treq.get(
            f"http://127.0.0.1:{port}/cubejs-api/v1/load",
            params={"query": '{"measures":["Orders.count"]}'},
            headers={"Authorization": token}, persistent=False, timeout=REQUEST_TIMEOUT,
        )
        body = yield treq.json_content(response)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["data"], [{"Orders.count": "3000"}], body)
        self.assertEqual(body["dbType"], "postgres")

        response = yield treq.get(f"http://127.0.0.1:{port}/cubejs-api/v1/load",
                                  params={"query": '{"measures":["Orders.count"]}'},
                                  persistent=False, timeout=REQUEST_TIMEOUT)
        yield treq.content(response)
        self.assertEqual(response.code, 403, "production mode: a token is required")

        response = yield treq.get(f"http://127.0.0.1:{port}/readyz", persistent=False, timeout=REQUEST_TIMEOUT)
        yield treq.content(response)
        self.assertEqual(response.code, 200)

        status = yield self.stop(child)
        self.assertEqual(status, 128 + signal.SIGTERM, child.output())
        self.assertNotIn(b"Traceback", child.err + child.out, child.output())

    @inlineCallbacks
    def test_settings_in_environment(self) -> Any:
        variables = yield self.database_variables()
        project = self.project()
        port = free_port()
        environ = clean_environment(PORT=str(port), **variables)
        child = yield self.serve(["cubed", "--project-dir", "."], environ, project, port)
        yield self.check_serves(child, port)

    @inlineCallbacks
    def test_settings_in_dotenv(self) -> Any:
        """The same settings from ``<project>/.env`` (written with ``export``, quotes and
        comments), and nothing but PATH and the like in the environment."""
        variables = yield self.database_variables()
        project = self.project()
        port = free_port()
        lines = ["# cubed settings for the shop", f"PORT={port}"]
        for number, (key, value) in enumerate(variables.items()):
            lines.append(f'export {key}="{value}"' if number % 2 else f"{key}={value}  # {key.lower()}")
        (project / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")
        child = yield self.serve(["cubed", "--project-dir", "."], clean_environment(), project, port)
        yield self.check_serves(child, port)

    @inlineCallbacks
    def test_project_dir_elsewhere(self) -> Any:
        """``--project-dir`` is what the model path and ``.env`` are relative to, not the
        working directory."""
        variables = yield self.database_variables()
        project = self.project()
        port = free_port()
        (project / ".env").write_text(f"PORT={port}\n", encoding="utf-8")
        elsewhere = self.project(model=False)
        child = yield self.serve(["cubed", "--project-dir", str(project)], clean_environment(**variables),
                                 elsewhere, port)
        yield self.check_serves(child, port)


class BadSettingTests(StartupTestCase):
    """A bad setting: non-zero exit within seconds, one line on stderr naming it."""

    def environ(self, **variables: str) -> dict[str, str]:
        return clean_environment(**{"CUBEJS_API_SECRET": SECRET, "PORT": str(free_port()), **variables})

    @inlineCallbacks
    def test_db_type(self) -> Any:
        line = yield self.fails_to_start(["cubed"], self.environ(CUBEJS_DB_TYPE="oracle"), self.project())
        self.assertEqual(line, 'cubed: Value "oracle" is not valid for CUBEJS_DB_TYPE. Must be one of: duckdb, postgres, sqlite, mysql.')

    @inlineCallbacks
    def test_port(self) -> Any:
        line = yield self.fails_to_start(["cubed"], self.environ(PORT="abc"), self.project())
        self.assertEqual(line, 'cubed: Value "abc" is not valid for PORT. Must be a port number or an endpoint string.')

    @inlineCallbacks
    def test_port_option(self) -> Any:
        line = yield self.fails_to_start(["cubed", "--port", "99999"], self.environ(), self.project())
        self.assertIn("--port", line)
        self.assertIn('"99999"', line)

    @inlineCallbacks
    def test_duration(self) -> Any:
        line = yield self.fails_to_start(["cubed"], self.environ(CUBEJS_DB_QUERY_TIMEOUT="10x"), self.project())
        self.assertIn('"10x" is not valid for CUBEJS_DB_QUERY_TIMEOUT', line)

    @inlineCallbacks
    def test_missing_secret(self) -> Any:
        environ = clean_environment(PORT=str(free_port()))
        line = yield self.fails_to_start(["cubed"], environ, self.project())
        self.assertIn("CUBEJS_API_SECRET", line)

    @inlineCallbacks
    def test_bad_dotenv_line(self) -> Any:
        project = self.project()
        (project / ".env").write_text("CUBEJS_DEV_MODE=true\nthis is not a setting\n", encoding="utf-8")
        line = yield self.fails_to_start(["cubed", "--project-dir", str(project)], self.environ(), project)
        self.assertEqual(line, f"cubed: {project / '.env'}:2: not a KEY=value line")

    @inlineCallbacks
    def test_bad_value_in_dotenv(self) -> Any:
        project = self.project()
        (project / ".env").write_text("CUBEJS_LOG_LEVEL=loud\n", encoding="utf-8")
        line = yield self.fails_to_start(["cubed", "--project-dir", "."], self.environ(), project)
        self.assertIn('"loud" is not valid for CUBEJS_LOG_LEVEL', line)

    @inlineCallbacks
    def test_systemd_socket_missing(self) -> Any:
        """A well-formed systemd endpoint outside systemd: the listener cannot be made."""
        line = yield self.fails_to_start(["cubed", "--listen", "systemd:domain=INET:index=0"], self.environ(),
                                         self.project())
        self.assertEqual(line, "cubed: cannot listen on systemd:domain=INET:index=0: "
                               "no such socket passed by systemd (LISTEN_FDS)")

    @inlineCallbacks
    def test_missing_project_dir(self) -> Any:
        project = self.project()
        line = yield self.fails_to_start(["cubed", "--project-dir", "nowhere"], self.environ(), project)
        self.assertIn("--project-dir", line)


class BrokenModelTests(StartupTestCase):
    """A model error names the file, the cube and the member, and stops start-up."""

    @inlineCallbacks
    def test_unknown_reference(self) -> Any:
        project = self.project()
        orders = project / "model" / "orders.yml"
        text = orders.read_text(encoding="utf-8")
        broken = text.replace('sql: "upper({CUBE}.status)"', 'sql: "upper({CUBE}.status) || {noSuchMember}"')
        self.assertNotEqual(broken, text, "the conformance model changed: adjust this test")
        orders.write_text(broken, encoding="utf-8")
        environ = clean_environment(CUBEJS_DEV_MODE="true", PORT=str(free_port()))
        line = yield self.fails_to_start(["cubed", "--project-dir", "."], environ, project)
        self.assertTrue(line.startswith("cubed: orders.yml:"), line)
        self.assertIn("'Orders'", line)
        self.assertIn("'statusUpper'", line)
        self.assertIn("{noSuchMember}", line)

    @inlineCallbacks
    def test_missing_model_directory(self) -> Any:
        project = self.project(model=False)
        environ = clean_environment(CUBEJS_DEV_MODE="true", PORT=str(free_port()), CUBEJS_SCHEMA_PATH="schema")
        line = yield self.fails_to_start(["cubed", "--project-dir", "."], environ, project)
        self.assertIn(str(project / "schema"), line)
        self.assertIn("CUBEJS_SCHEMA_PATH", line)


class SignalTests(StartupTestCase):
    @inlineCallbacks
    def test_sigterm_stops_the_server(self) -> Any:
        """SIGTERM: twistd stops the services, logs its shut-down and re-raises the signal."""
        project = self.project()
        port = free_port()
        environ = clean_environment(CUBEJS_DEV_MODE="true", PORT=str(port))
        child = yield self.serve(["cubed", "--project-dir", "."], environ, project, port, probe="/livez")
        started = reactor.seconds()
        status = yield self.stop(child)
        self.assertEqual(status, 143, child.output())
        self.assertLess(reactor.seconds() - started, QUICK, "an idle server stops at once")
        self.assertIn(b"Server Shut Down.", child.out, child.output())
        self.assertNotIn(b"Traceback", child.err + child.out, child.output())


class ProjectDotenvLoggingTests(StartupTestCase):
    @inlineCallbacks
    def test_log_format_from_project_dotenv(self) -> Any:
        """CUBED_LOG_FORMAT in ``<--project-dir>/.env`` shapes twistd's log, whatever the
        working directory."""
        project = self.project()
        port = free_port()
        (project / ".env").write_text(f"CUBED_LOG_FORMAT=json\nCUBEJS_DEV_MODE=true\nPORT={port}\n", encoding="utf-8")
        elsewhere = self.project(model=False)
        child = yield self.serve(["cubed", "--project-dir", str(project)], clean_environment(), elsewhere, port,
                                 probe="/livez")
        status = yield self.stop(child)
        self.assertEqual(status, 143, child.output())
        lines = [line for line in child.out.decode().splitlines() if line.strip()]
        self.assertTrue(lines, child.output())
        for line in lines:
            record = json.loads(line)
            self.assertIn("level", record)
