"""cubed's Debian package as an operator meets it.

The .deb is built from the checkout (``dpkg-buildpackage -us -uc -b``, tests/package/build-deb)
and installed with apt into a throwaway Debian 12 root made with debootstrap (debroot.py).
Then, as systemd would run cubed.service, the unit's exact ``ExecStart=`` command line runs
inside the root as the ``cubed`` user, in its ``WorkingDirectory=``, with the variables of its
``EnvironmentFile=`` and a ``$NOTIFY_SOCKET`` the test listens on:

- the package: lintian finds no error; files, owners and modes (cubed.env 0640 root:cubed,
  every setting commented); the ``cubed`` system user; the venv on /usr/bin/python3 with
  psycopg2/PyYAML on Debian's libpq/libyaml; bytecode and ``dropin.cache`` made by postinst;
- the units: the directives the issue asks for; ``systemd-analyze verify`` passes and
  ``systemd-analyze security`` scores cubed.service;
- ``cubed check`` and ``cubed token`` from /usr/bin;
- the service: READY=1 once listening, ``/readyz`` 200, ``/v1/load`` answers, JSON log lines
  (one per request with method, path, status, duration and request id);
- SIGHUP (ExecReload) with a changed model: RELOADING=1/READY=1, the new member in
  ``/v1/meta``, no request lost meanwhile; a broken model is refused and the old one kept;
- SIGTERM during a slow request: STOPPING=1, the request completes (200), exit status 143;
- socket activation (systemd-socket-activate): cubed serves on the socket systemd passes;
- an upgrade keeps the operator's cubed.env and model (the new versions land as .dpkg-dist);
  purge removes the user, the state, the venv and the stat override.

It takes a few minutes (build about 1.5 min, debootstrap 40 s once, apt install), so it runs
only with ``CUBED_PACKAGE_TEST=1`` (tests/package/run, which .ci/run calls), as root.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.package.debroot import REPO, STATE, DebianRoot, base_tarball, build_deb, read_environment_file, \
    read_unit, run
from tests.test_startup import Twistd

EXEC_START = "/opt/venvs/cubed/bin/twistd --nodaemon --pidfile= cubed --project-dir /etc/cubed"
VENV = "/opt/venvs/cubed"
SECRET = "package-test-secret-0123456789abcdef0123"
START_TIMEOUT = 60.0
#: A measure that keeps DuckDB busy for seconds (about 2 s on an idle 2-core machine of this kind).
SLOW_MODEL = """
cubes:
  - name: Slow
    sql: SELECT i AS id FROM range(600000000) t(i) WHERE hash(i) % 2 = 0
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
"""
REPORT = STATE / "report.txt"


def _skip_reason() -> str | None:
    if os.environ.get("CUBED_PACKAGE_TEST") != "1":
        return ("builds the .deb and installs it into a debootstrap root (minutes): "
                "run tests/package/run (.ci/run does), or set CUBED_PACKAGE_TEST=1")
    return None


def report(line: str) -> None:
    """Add a line to build/package-test/report.txt (tests/package/run prints it at the end)."""
    STATE.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as out:
        out.write(line.rstrip() + "\n")


class ServiceProcess(Twistd):
    """The service's process: its output lines and, once ended, its exit status (the shell's
    number: 128 + N when killed by signal N)."""

    def lines(self) -> list[str]:
        return self.out.decode("utf-8", "replace").splitlines()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events written so far (CUBED_LOG_FORMAT=json); a line that is not a
        JSON object fails the test."""
        events = []
        for line in self.lines():
            try:
                event = json.loads(line)
            except ValueError:
                raise AssertionError(f"log line is not JSON: {line!r}") from None
            if not isinstance(event, dict):
                raise AssertionError(f"log line is not a JSON object: {line!r}")
            events.append(event)
        return events

    def messages(self) -> list[str]:
        return [str(event.get("message")) for event in self.events()]

    def output(self) -> str:
        return (f"--- stdout ---\n{self.out.decode(errors='replace')[-6000:]}"
                f"--- stderr ---\n{self.err.decode(errors='replace')[-3000:]}")


class Notifications(DatagramProtocol):
    """The sd_notify messages the service sends, each as {KEY: value}."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        fields = dict(line.partition("=")[::2] for line in datagram.decode().splitlines() if "=" in line)
        self.received.append(fields)

    def keys(self) -> list[str]:
        """Return the state keys received, in order (READY, RELOADING, STOPPING, ...)."""
        return [key for message in self.received for key in message if key != "STATUS" and key != "MONOTONIC_USEC"]


async def eventually(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str],
                     interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds
    with ``what`` (a callable: made when failing, e.g. to show the output until then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what}: not within {timeout} s")
        await deferLater(reactor, interval, lambda: None)


class Service:
    """cubed.service run from a Debian root as systemd would run it (see the module doc)."""

    def __init__(self, test: unittest.TestCase, root: DebianRoot) -> None:
        self.test = test
        self.root = root
        unit = read_unit(root.host("/lib/systemd/system/cubed.service"))["Service"]
        self.environ = {
            # What systemd gives every service, then the unit's EnvironmentFile=.
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
            "LANG": "C.UTF-8",
            "USER": unit["User"][-1],
            "LOGNAME": unit["User"][-1],
            "HOME": "/var/lib/cubed",
            "SHELL": "/usr/sbin/nologin",
            **read_environment_file(root.host(unit["EnvironmentFile"][-1])),
        }
        self.port = int(self.environ["PORT"])
        notify_dir = root.host("/run/cubed-test")
        notify_dir.mkdir(parents=True, exist_ok=True)
        notify_dir.chmod(0o755)
        self.notify_path = notify_dir / f"notify-{os.getpid()}-{time.monotonic_ns()}"
        self.environ["NOTIFY_SOCKET"] = "/" + str(self.notify_path.relative_to(root.path))
        self.notifications = Notifications()
        listening = reactor.listenUNIXDatagram(str(self.notify_path), self.notifications)
        self.notify_path.chmod(0o666)  # the cubed user sends to it
        test.addCleanup(listening.stopListening)
        test.addCleanup(lambda: self.notify_path.unlink(missing_ok=True))
        self.argv = root.chroot_argv(shlex.split(unit["ExecStart"][-1]), user=unit["User"][-1],
                                      cwd=unit["WorkingDirectory"][-1])
        self.process = ServiceProcess()

    def start(self) -> "Service":
        reactor.spawnProcess(self.process, self.argv[0], self.argv, env=self.environ)
        self.test.addCleanup(self._kill)
        return self

    async def _kill(self) -> None:
        if self.process.running:
            self.process.signal("KILL")
        await self.process.ended()

    @property
    def pid(self) -> int:
        return int(self.process.transport.pid)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def ready(self) -> None:
        """Wait for READY=1, then for /readyz 200."""
        await eventually(lambda: not self.process.running or "READY" in self.notifications.keys(),
                         START_TIMEOUT, lambda: f"READY=1 from the service\n{self.process.output()}")
        if not self.process.running:
            raise AssertionError(f"the service exited with {self.process.status}\n{self.process.output()}")
        last = ["no answer"]

        async def ready() -> bool:
            try:
                response = await treq.get(self.url("/readyz"), persistent=False, timeout=5)
                await treq.content(response)
            except Exception as error:
                last[0] = repr(error)
                return False
            last[0] = f"status {response.code}"
            return response.code == 200

        deadline = time.monotonic() + START_TIMEOUT
        while not await ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"/readyz not 200 (last: {last[0]})\n{self.process.output()}")
            await deferLater(reactor, 0.2, lambda: None)

    async def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": token} if token else {}
        response = await treq.request(method, self.url(path), headers=headers, persistent=False, timeout=60,
                                      **kwargs)
        body = await treq.content(response)
        try:
            return response.code, json.loads(body)
        except ValueError:
            return response.code, body

    async def load(self, token: str, query: dict[str, Any]) -> tuple[int, Any]:
        return await self.request("POST", "/cubejs-api/v1/load", token, json={"query": query})

    async def meta_members(self, token: str) -> set[str]:
        status, body = await self.request("GET", "/cubejs-api/v1/meta", token)
        self.test.assertEqual(status, 200, body)
        return {member["name"] for cube in body["cubes"] for kind in ("measures", "dimensions")
                for member in cube[kind]}

    async def stop(self) -> int:
        """SIGTERM (systemctl stop); return the exit status."""
        self.process.signal("TERM")
        deadline = time.monotonic() + START_TIMEOUT
        while self.process.running:
            if time.monotonic() > deadline:
                raise AssertionError(f"the service did not stop after SIGTERM\n{self.process.output()}")
            await deferLater(reactor, 0.1, lambda: None)
        assert self.process.status is not None
        return self.process.status


class Installed:
    """The .deb built and installed into a fresh debootstrap root: made once per test run by
    installed() (trial has no setUpClass), shared by the PackageTests, removed at exit."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise AssertionError("the package test runs as root (debootstrap, chroot, apt)")
        REPORT.unlink(missing_ok=True)
        started = time.monotonic()
        self.deb = build_deb()
        seconds = self.deb.parent / "build-seconds"
        report(f"package:   {self.deb.name}, {self.deb.stat().st_size / 1e6:.1f} MB; dpkg-buildpackage took "
               f"{seconds.read_text().strip() if seconds.exists() else '?'} s "
               f"({time.monotonic() - started:.0f} s in this run: 0 when cached)")
        _, made = base_tarball()
        report("root:      debootstrap --variant=minbase bookworm"
               + (f" made in {made:.0f} s" if made else " (cached tarball)"))
        started = time.monotonic()
        self.root = DebianRoot.fresh()
        if os.environ.get("CUBED_PACKAGE_TEST_KEEP") != "1":
            atexit.register(self.root.remove)
        self.root.install(self.deb)
        report(f"install:   apt-get install ./{self.deb.name} into a fresh root took {time.monotonic() - started:.0f} s")
        env_file = self.root.host("/etc/cubed/cubed.env")
        self.pristine_env = env_file.read_bytes()
        self.pristine_env_stat = env_file.stat()
        self.pristine_model = self.root.host("/etc/cubed/model/example.yml").read_text()
        # What an operator does next: the secret and the listening address, in the conffile.
        with env_file.open("a") as out:
            out.write(f"\n# Set by the package test\nCUBEJS_API_SECRET={SECRET}\nPORT={_free_port()}\n"
                      "CUBED_HOST=127.0.0.1\nCUBED_LOG_FORMAT=json\nCUBEJS_CONTINUE_WAIT_TIMEOUT=60\n")


_installed: list[Installed | BaseException] = []


def installed() -> Installed:
    """Return the shared installation, made on first use; a failure to make it fails every
    test that needs it (with the same error, without trying again)."""
    if not _installed:
        try:
            _installed.append(Installed())
        except BaseException as error:
            _installed.append(error)
    value = _installed[0]
    if isinstance(value, BaseException):
        raise AssertionError(f"installing the package failed: {value}") from value
    return value


class PackageTests(unittest.TestCase):
    """The .deb installed into one debootstrap root, shared by the tests of this class (they
    do not change the installed system, except the model, which each test sets)."""

    skip = _skip_reason()
    timeout = 1200

    def setUp(self) -> None:
        fixture = installed()
        self.root = fixture.root
        self.deb = fixture.deb
        self.pristine_env = fixture.pristine_env
        self.pristine_env_stat = fixture.pristine_env_stat
        self.pristine_model = fixture.pristine_model
        self.set_model({"example.yml": self.pristine_model})

    def set_model(self, files: dict[str, str]) -> None:
        """Make /etc/cubed/model hold exactly ``files`` (name -> YAML), owned by root."""
        model = self.root.host("/etc/cubed/model")
        for old in model.iterdir():
            old.unlink()
        for name, text in files.items():
            (model / name).write_text(text)
            (model / name).chmod(0o644)

    def token(self, claims: str = "{}") -> str:
        """Return a token made by the packaged ``cubed token``."""
        process = self.root.chroot("/usr/bin/cubed", "token", "--secret", SECRET, "--claims", claims)
        return process.stdout.strip()

    # -- the package -----------------------------------------------------------------------
    def test_lintian_reports_no_error(self) -> None:
        lintian = (self.deb.parent / "lintian.txt").read_text()
        tags = re.findall(r"^([EWIPXO]): cubed[^:]*: (\S+)", lintian, re.M)
        errors = sorted({tag for kind, tag in tags if kind == "E"})
        warnings = sorted({tag for kind, tag in tags if kind == "W"})
        report(f"lintian:   {sum(k == 'E' for k, _ in tags)} errors, {sum(k == 'W' for k, _ in tags)} warnings"
               + (f" ({', '.join(warnings)})" if warnings else "") + ", overrides in debian/cubed.lintian-overrides")
        self.assertEqual(errors, [], lintian[-3000:])

    def test_installed_files(self) -> None:
        root = self.root
        # The venv runs Debian's own python3; psycopg2 and PyYAML use Debian's libpq and libyaml.
        self.assertEqual(os.readlink(root.host(f"{VENV}/bin/python3")), "/usr/bin/python3")
        probe = root.chroot(f"{VENV}/bin/python", "-c", "import sys, yaml, psycopg2, duckdb, klein, txpostgres, "
                            "txredisapi, sqlglot; print(sys.version_info[:2], yaml.__with_libyaml__, "
                            "psycopg2.__libpq_version__ > 0)")
        self.assertEqual(probe.stdout.strip(), "(3, 11) True True")
        ldd = root.chroot("ldd", *[str(Path("/") / p.relative_to(root.path))
                                   for p in root.host(f"{VENV}/lib").glob("python3.*/site-packages/psycopg2/_psycopg*.so")])
        self.assertIn("libpq.so.5 => /lib/x86_64-linux-gnu/libpq.so.5", ldd.stdout.replace("/usr/lib", "/lib"))

        # The system user: no login, home = the state directory.
        entry = root.chroot("getent", "passwd", "cubed").stdout.strip().split(":")
        self.assertLess(int(entry[2]), 1000, entry)
        self.assertEqual(entry[5:], ["/var/lib/cubed", "/usr/sbin/nologin"])
        uid, gid = root.ids("cubed")

        # cubed.env: the shipped file, every setting commented, 0640 root:cubed; a conffile.
        self.assertEqual(self.pristine_env, (REPO / "etc" / "cubed" / "cubed.env").read_bytes())
        settings = [line for line in self.pristine_env.decode().splitlines() if line.strip()]
        self.assertEqual([line for line in settings if not line.startswith("#")], [])
        self.assertGreater(len([line for line in settings if re.match(r"^#[A-Z_]+=", line)]), 40)
        for stat in (self.pristine_env_stat, root.host("/etc/cubed/cubed.env").stat()):
            self.assertEqual((oct(stat.st_mode & 0o7777), stat.st_uid, stat.st_gid), (oct(0o640), 0, gid))
        conffiles = root.chroot("dpkg-query", "-W", "-f=${Conffiles}", "cubed").stdout
        self.assertIn("/etc/cubed/cubed.env", conffiles)
        self.assertIn("/etc/cubed/model/example.yml", conffiles)
        self.assertIn("root cubed 640 /etc/cubed/cubed.env",
                      root.chroot("dpkg-statoverride", "--list").stdout.splitlines())

        # State directory: the service's working directory.
        state = root.host("/var/lib/cubed").stat()
        self.assertEqual((oct(state.st_mode & 0o7777), state.st_uid, state.st_gid), (oct(0o750), uid, gid))

        # postinst: bytecode, and a twistd plugin cache newer than every plugin module.
        site = next(root.host(f"{VENV}/lib").glob("python3.*/site-packages"))
        self.assertTrue(list((site / "cubed" / "__pycache__").glob("service.cpython-311.pyc")))
        plugins = site / "twisted" / "plugins"
        cache = plugins / "dropin.cache"
        self.assertTrue(cache.exists(), "postinst did not write dropin.cache")
        self.assertGreaterEqual(cache.stat().st_mtime, max(p.stat().st_mtime for p in plugins.glob("*.py")))
        listed = root.chroot(f"{VENV}/bin/twistd", "--help", user="cubed").stdout
        self.assertIn("cubed", listed)
        # Up to date: a plugin scan by root (who could write it) leaves it as it is.
        written = cache.stat().st_mtime_ns
        root.chroot(f"{VENV}/bin/python", "-c", "from twisted.plugin import IPlugin, getPlugins; "
                    "list(getPlugins(IPlugin))")
        self.assertEqual(cache.stat().st_mtime_ns, written, "dropin.cache was stale")

        # The command on PATH.
        self.assertEqual(os.readlink(root.host("/usr/bin/cubed")), f"{VENV}/bin/cubed")

    def test_units(self) -> None:
        service = read_unit(self.root.host("/lib/systemd/system/cubed.service"))["Service"]
        expected = {
            "Type": "notify", "User": "cubed", "EnvironmentFile": "/etc/cubed/cubed.env", "ExecStart": EXEC_START,
            "ExecReload": "/bin/kill -HUP $MAINPID", "Restart": "on-failure", "NoNewPrivileges": "yes",
            "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "ReadWritePaths": "/var/lib/cubed",
            "WorkingDirectory": "/var/lib/cubed",
        }
        self.assertEqual({key: service.get(key, ["(unset)"])[-1] for key in expected}, expected)
        socket_unit = read_unit(self.root.host("/lib/systemd/system/cubed.socket"))
        self.assertEqual(socket_unit["Socket"]["ListenStream"], ["4000"])

        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed on this machine (apt-get install systemd)")
        verify = run([analyze, "verify", f"--root={self.root.path}", "cubed.service", "cubed.socket"], check=False)
        self.assertEqual((verify.returncode, verify.stdout + verify.stderr), (0, ""))
        report("verify:    systemd-analyze verify cubed.service cubed.socket: no finding")
        security = run([analyze, "security", "--offline=yes", f"--root={self.root.path}", "--no-pager",
                        "cubed.service"], check=False)
        match = re.search(r"Overall exposure level for cubed\.service: ([0-9.]+) (\w+)", security.stdout)
        self.assertIsNotNone(match, security.stdout + security.stderr)
        assert match is not None
        report(f"security:  systemd-analyze security cubed.service: exposure {match.group(1)} {match.group(2)}"
               " (0 = most protected, 10 = unprotected)")
        self.assertLessEqual(float(match.group(1)), 2.0, security.stdout)

    def test_cubed_command(self) -> None:
        claims = jwt.decode(self.token('{"tenant": "a"}'), SECRET, algorithms=["HS256"])
        self.assertEqual(claims["tenant"], "a")
        # check, as the service would see its settings (the env file read by a shell).
        check = self.root.chroot("/bin/sh", "-c", "set -a; . /etc/cubed/cubed.env; exec cubed check --project-dir /etc/cubed",
                                 user="cubed")
        self.assertIn("cube Orders: 2 measures, 3 dimensions", check.stdout)
        self.assertIn("/etc/cubed/model", check.stdout)
        self.set_model({"example.yml": "cubes: [ {name: Broken"})
        broken = self.root.chroot("/bin/sh", "-c", "set -a; . /etc/cubed/cubed.env; exec cubed check --project-dir /etc/cubed",
                                  user="cubed", check=False)
        self.assertEqual(broken.returncode, 1, broken.stdout + broken.stderr)
        self.assertIn("example.yml", broken.stderr)

    # -- the service -----------------------------------------------------------------------
    async def test_service_starts_serves_and_logs(self) -> None:
        service = Service(self, self.root).start()
        await service.ready()
        self.assertEqual(service.notifications.keys()[0], "READY")
        self.assertIn(f"on tcp:{service.port}", service.notifications.received[0]["STATUS"])
        token = self.token()
        status, body = await service.load(token, {"measures": ["Orders.count", "Orders.totalAmount"]})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["data"], [{"Orders.count": "5", "Orders.totalAmount": "500.40"}])
        status, body = await service.request("GET", "/cubejs-api/v1/load", None,
                                             params={"query": json.dumps({"measures": ["Orders.count"]})})
        self.assertEqual(status, 403, body)

        # One JSON line per request: method, path, status, duration and request id.
        def logged() -> list[dict[str, Any]]:
            return [e for e in service.process.events() if e.get("path") == "/cubejs-api/v1/load"]

        await eventually(lambda: len(logged()) >= 2, 10, lambda: f"two request log lines\n{service.process.output()}")
        requests = logged()
        self.assertEqual([(e["method"], e["status"]) for e in requests], [("POST", 200), ("GET", 403)])
        for event in requests:
            self.assertTrue(event["request_id"], event)
            self.assertIsInstance(event["duration"], float, event)
            self.assertIn(f"{event['method']} /cubejs-api/v1/load {event['status']}", event["message"])
        self.assertEqual(await service.stop(), 143, service.process.output())
        self.assertEqual(service.notifications.keys(), ["READY", "STOPPING"])
        self.assertEqual(service.process.err.decode(), "")

    async def test_sighup_reloads_the_model(self) -> None:
        service = Service(self, self.root).start()
        await service.ready()
        token = self.token()
        before = await service.meta_members(token)
        self.assertNotIn("Orders.maxAmount", before)

        # An operator adds a measure and reloads (ExecReload: kill -HUP $MAINPID) while
        # requests keep coming: none of them fails.
        self.set_model({"example.yml": self.pristine_model.replace(
            "      - name: totalAmount\n", "      - name: maxAmount\n        type: max\n        sql: amount\n"
            "      - name: totalAmount\n")})
        loads = [service.load(token, {"measures": ["Orders.count"]}) for _ in range(10)]
        os.kill(service.pid, signal.SIGHUP)
        loads += [service.load(token, {"measures": ["Orders.count"]}) for _ in range(10)]
        results = await gatherResults([Deferred.fromCoroutine(load) for load in loads])
        self.assertEqual({status for status, _ in results}, {200}, results)
        await eventually(lambda: service.notifications.keys()[-2:] == ["RELOADING", "READY"], 30,
                         lambda: f"RELOADING=1 then READY=1\n{service.process.output()}")
        after = await service.meta_members(token)
        self.assertEqual(after - before, {"Orders.maxAmount"})
        status, body = await service.load(token, {"measures": ["Orders.maxAmount"]})
        self.assertEqual((status, body.get("data")), (200, [{"Orders.maxAmount": "240.00"}]))
        reloaded = [e for e in service.process.events() if str(e.get("message", "")).startswith("model reloaded")]
        self.assertEqual(len(reloaded), 1, service.process.output())
        self.assertIn(f"-> {reloaded[0]['version']}", reloaded[0]["message"])

        # A broken model is refused: the last good one keeps serving.
        self.set_model({"example.yml": self.pristine_model, "broken.yml": "cubes: [ {name: Broken"})
        os.kill(service.pid, signal.SIGHUP)
        await eventually(lambda: service.notifications.keys()[-4:] == ["RELOADING", "READY"] * 2, 30,
                         lambda: f"second reload\n{service.process.output()}")
        failed = await eventually(lambda: [e for e in service.process.events()
                                           if str(e.get("message", "")).startswith("model reload failed")],
                                  10, "the failed reload's log line")
        self.assertEqual(failed[0]["level"], "error")
        self.assertIn(f"still serving version {reloaded[0]['version']}", failed[0]["message"])
        self.assertIn("broken.yml", failed[0]["message"])
        self.assertEqual(await service.meta_members(token), after)
        self.assertEqual(await service.stop(), 143, service.process.output())

    async def test_sigterm_lets_a_slow_request_finish(self) -> None:
        self.set_model({"example.yml": self.pristine_model, "slow.yml": SLOW_MODEL})
        service = Service(self, self.root).start()
        await service.ready()
        token = self.token()
        started = time.monotonic()
        slow = Deferred.fromCoroutine(service.load(token, {"measures": ["Slow.count"]}))
        await deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(slow.called, "the slow query finished within 0.5 s: make SLOW_MODEL slower")
        os.kill(service.pid, signal.SIGTERM)
        status, body = await slow
        elapsed = time.monotonic() - started
        self.assertEqual(status, 200, body)
        self.assertGreater(int(body["data"][0]["Slow.count"]), 0)
        report(f"drain:     a {elapsed:.1f} s request in flight at SIGTERM completed with 200")
        while service.process.running:
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(service.process.status, 143, service.process.output())
        self.assertEqual(service.notifications.keys(), ["READY", "STOPPING"])
        messages = service.process.messages()
        self.assertIn("Draining 1 in-flight request(s), waiting up to 30.0 s", messages)
        self.assertIn("Drained: no request in flight", messages)

    async def test_socket_activation(self) -> None:
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise unittest.SkipTest("systemd-socket-activate is not installed on this machine")
        port = _free_port()
        # As systemd with cubed.socket: the socket is passed as fd 3 with LISTEN_FDS,
        # LISTEN_PID and LISTEN_FDNAMES; PORT of cubed.env is then not used.
        # systemd-socket-activate passes on only the variables named with -E.
        service = Service(self, self.root)
        service.argv[:0] = [activate, f"--listen=127.0.0.1:{port}", "--fdname=cubed.socket",
                            *[f"--setenv={name}" for name in service.environ]]
        service.port = port
        service.start()
        # systemd-socket-activate starts the command on the first connection, as systemd does.
        await eventually(lambda: _connects(port), 30, lambda: f"a connection to :{port}\n{service.process.output()}")
        await service.ready()
        self.assertIn("on systemd:domain=INET:index=0", service.notifications.received[0]["STATUS"])
        self.assertFalse(_connects(int(service.environ["PORT"])), "cubed listened on PORT too")
        status, body = await service.load(self.token(), {"measures": ["Orders.count"]})
        self.assertEqual((status, body.get("data")), (200, [{"Orders.count": "5"}]))
        self.assertEqual(await service.stop(), 143, service.process.output())


class UpgradeTests(unittest.TestCase):
    """An upgrade, then a purge, on a root of its own."""

    skip = _skip_reason()
    timeout = 900

    async def test_upgrade_keeps_configuration_and_purge_removes_everything(self) -> None:
        if os.geteuid() != 0:
            raise AssertionError("the package test runs as root (debootstrap, chroot, apt)")
        deb = build_deb()
        root = DebianRoot.fresh("root-upgrade")
        if os.environ.get("CUBED_PACKAGE_TEST_KEEP") != "1":
            self.addCleanup(root.remove)
        root.install(deb)

        # The operator's configuration: a secret and port in cubed.env, an edited example and
        # a model file of their own.
        env_file = root.host("/etc/cubed/cubed.env")
        port = _free_port()
        with env_file.open("a") as out:
            out.write(f"CUBEJS_API_SECRET={SECRET}\nPORT={port}\nCUBED_HOST=127.0.0.1\nCUBED_LOG_FORMAT=json\n")
        operator_env = env_file.read_text()
        example = root.host("/etc/cubed/model/example.yml")
        example.write_text(example.read_text().replace("name: Orders", "name: Sales"))
        operator_example = example.read_text()
        own = root.host("/etc/cubed/model/own.yml")
        own.write_text("cubes:\n  - name: Own\n    sql: SELECT 1 AS id\n    measures:\n      - name: count\n"
                       "        type: count\n    dimensions:\n      - name: id\n        sql: id\n"
                       "        type: number\n        primary_key: true\n")

        # A newer package whose cubed.env and example changed too (dpkg must then choose).
        newer = _newer_package(deb, Path(self.mktemp()))
        upgrade = root.install(newer, "--force-confold")
        self.assertIn("0.1.0+upgradetest1", root.chroot("dpkg-query", "-W", "-f=${Version}", "cubed").stdout)
        self.assertEqual(env_file.read_text(), operator_env, upgrade.stdout)
        self.assertEqual(example.read_text(), operator_example)
        self.assertTrue(own.exists())
        self.assertIn("# upgrade test", root.host("/etc/cubed/cubed.env.dpkg-dist").read_text())
        stat = env_file.stat()
        self.assertEqual((oct(stat.st_mode & 0o7777), stat.st_uid, stat.st_gid),
                         (oct(0o640), 0, root.ids("cubed")[1]))

        # The upgraded service serves the operator's model with the operator's settings.
        service = Service(self, root).start()
        await service.ready()
        token = jwt.encode({}, SECRET, algorithm="HS256")
        for member, count in (("Sales.count", "5"), ("Own.count", "1")):
            status, body = await service.load(token, {"measures": [member]})
            self.assertEqual((status, body.get("data")), (200, [{member: count}]))
        self.assertEqual(await service.stop(), 143, service.process.output())

        # Purge: the user, the state, the venv (with postinst's bytecode), the configuration.
        root.chroot("apt-get", "purge", "-y", "-q", "cubed")
        self.assertEqual(root.chroot("getent", "passwd", "cubed", check=False).returncode, 2)
        self.assertEqual(root.chroot("getent", "group", "cubed", check=False).returncode, 2)
        for path in ("/var/lib/cubed", "/opt/venvs/cubed", "/etc/cubed/cubed.env", "/usr/bin/cubed",
                     "/lib/systemd/system/cubed.service"):
            self.assertFalse(os.path.lexists(root.host(path)), f"{path} is left after purge")
        # (dpkg-statoverride --list exits 1 when it lists nothing)
        self.assertNotIn("cubed", root.chroot("dpkg-statoverride", "--list", check=False).stdout)


def _newer_package(deb: Path, work: Path) -> Path:
    """Return a copy of ``deb`` as version 0.1.0+upgradetest1 whose cubed.env and example
    model differ from the original's."""
    tree = work / "tree"
    work.mkdir(parents=True)
    run(["dpkg-deb", "-R", str(deb), str(tree)])
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", "Version: 0.1.0+upgradetest1", control.read_text(), flags=re.M))
    for path in ("etc/cubed/cubed.env", "etc/cubed/model/example.yml"):
        with (tree / path).open("a") as out:
            out.write("# upgrade test: the new version changed this file\n")
    md5sums = run(["sh", "-c", "find . -path ./DEBIAN -prune -o -type f -printf '%P\\0' | sort -z | "
                   "xargs -0 md5sum"], cwd=tree).stdout
    (tree / "DEBIAN" / "md5sums").write_text(md5sums)
    newer = work / "cubed_0.1.0+upgradetest1_amd64.deb"
    run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(newer)], timeout=900)
    return newer


def _connects(port: int) -> bool:
    """Return whether a TCP connection to 127.0.0.1:``port`` is accepted (then closed)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
