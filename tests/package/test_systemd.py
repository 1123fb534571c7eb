"""cubed.systemd (sd_notify, socket activation) and the SIGHUP model reload of cubed.service,
in-process: no systemd needed (a datagram socket stands in for $NOTIFY_SOCKET)."""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from cubed import systemd
from cubed.model.registry import ModelRegistry
from cubed.model.reload import ModelReloader

MODEL = """
cubes:
  - name: Orders
    sql_table: public.orders
    measures:
      - name: count
        type: count
    dimensions:
      - name: id
        sql: id
        type: number
        primary_key: true
"""


class NotifySocket:
    """A bound unix datagram socket playing systemd's side of sd_notify."""

    def __init__(self, test: TestCase, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"cubed-test-{os.getpid()}-{id(self)}"
            self.socket.bind("\0" + name)
            self.address = "@" + name
        else:
            path = Path(test.mktemp())
            path.parent.mkdir(parents=True, exist_ok=True)
            self.socket.bind(str(path))
            self.address = str(path)
        self.socket.setblocking(False)
        test.addCleanup(self.socket.close)

    def messages(self) -> list[str]:
        received = []
        while True:
            try:
                received.append(self.socket.recv(4096).decode())
            except BlockingIOError:
                return received


class NotifierTests(TestCase):
    def test_messages(self) -> None:
        listener = NotifySocket(self)
        notifier = systemd.Notifier.from_environment({"NOTIFY_SOCKET": listener.address})
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.enabled)
        self.assertTrue(notifier.ready("Serving model abc\non tcp:4000"))
        self.assertTrue(notifier.reloading())
        self.assertTrue(notifier.stopping())
        self.assertTrue(notifier.watchdog())
        ready, reloading, stopping, watchdog = listener.messages()
        self.assertEqual(ready, "READY=1\nSTATUS=Serving model abc on tcp:4000")
        lines = reloading.split("\n")
        self.assertEqual((lines[0], lines[2]), ("RELOADING=1", "STATUS=Reloading the model"))
        self.assertRegex(lines[1], r"^MONOTONIC_USEC=\d+$")
        self.assertEqual(stopping, "STOPPING=1\nSTATUS=Stopping: draining requests in flight")
        self.assertEqual(watchdog, "WATCHDOG=1")

    def test_abstract_socket(self) -> None:
        listener = NotifySocket(self, abstract=True)
        notifier = systemd.Notifier(listener.address)
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.ready("ok"))
        self.assertEqual(listener.messages(), ["READY=1\nSTATUS=ok"])

    def test_without_systemd_nothing_is_sent(self) -> None:
        notifier = systemd.Notifier.from_environment({})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready("x"))
        self.assertFalse(notifier.stopping())

    def test_a_failure_is_logged_not_raised(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        notifier = systemd.Notifier(str(Path(self.mktemp()) / "absent"))
        self.addCleanup(notifier.close)
        self.assertFalse(notifier.ready("x"))
        self.assertEqual([e["log_format"] for e in events if e.get("log_namespace", "").startswith("cubed.systemd")],
                         ["sd_notify to {address} failed: {error}"])


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    def __init__(self) -> None:
        self.port = object()

    def listen(self, factory: Any) -> Deferred[Any]:
        return succeed(self.port)


class ListeningTests(TestCase):
    def test_ready_once_listening(self) -> None:
        inner = FakeEndpoint()
        seen: list[Any] = []
        endpoint = systemd.NotifyingEndpoint(inner, seen.append)
        result: list[Any] = []
        endpoint.listen(object()).addCallback(result.append)
        self.assertEqual((seen, result), ([inner.port], [inner.port]))

    def test_failed_listen_is_not_ready(self) -> None:
        @implementer(IStreamServerEndpoint)
        class Failing:
            def listen(self, factory: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                d.errback(OSError("address in use"))
                return d

        seen: list[Any] = []
        failures: list[Any] = []
        systemd.NotifyingEndpoint(Failing(), seen.append).listen(object()).addErrback(failures.append)
        self.assertEqual(seen, [])
        self.assertEqual(len(failures), 1)


class SocketActivationTests(TestCase):
    def listening_socket(self, family: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        if family == socket.AF_UNIX:
            path = Path(self.mktemp())
            path.parent.mkdir(parents=True, exist_ok=True)
            sock.bind(str(path))
        else:
            sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        sock.listen()
        return sock

    def test_the_family_of_the_passed_socket(self) -> None:
        for family, domain in ((socket.AF_INET, "INET"), (socket.AF_INET6, "INET6"), (socket.AF_UNIX, "UNIX")):
            try:
                sock = self.listening_socket(family)
            except OSError:  # no IPv6 on this machine
                continue
            self.assertEqual(systemd.activation_listen("tcp:4000", [sock.fileno()]),
                             f"systemd:domain={domain}:index=0")
            self.assertIsNotNone(sock.getsockname())  # the probe left the descriptor open

    def test_not_activated(self) -> None:
        self.assertEqual(systemd.activation_listen("tcp:4000:interface=0.0.0.0", []), "tcp:4000:interface=0.0.0.0")
        # Outside socket activation Twisted found no descriptors (no LISTEN_PID for this process).
        self.assertEqual(systemd.activation_listen("tcp:4000"), "tcp:4000")

    def test_explicit_systemd_endpoint_is_kept(self) -> None:
        self.assertEqual(systemd.activation_listen("systemd:domain=INET6:name=web", [3]),
                         "systemd:domain=INET6:name=web")

    def test_a_descriptor_that_is_no_socket(self) -> None:
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        self.assertEqual(systemd.activation_listen("tcp:4000", [read]), "tcp:4000")


class WatchdogTests(TestCase):
    def test_interval(self) -> None:
        self.assertEqual(systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}), 30.0)
        self.assertEqual(systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2), None)
        self.assertIsNone(systemd.watchdog_interval({}))
        self.assertIsNone(systemd.watchdog_interval({"WATCHDOG_USEC": "x"}))

    def test_pings_while_running_and_stopping_at_shutdown(self) -> None:
        listener = NotifySocket(self)
        notifier = systemd.Notifier(listener.address)
        self.addCleanup(notifier.close)
        clock = FakeReactor()
        service = systemd.SystemdService(notifier, clock, {"WATCHDOG_USEC": "10000000"})
        service.startService()
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(listener.messages(), ["WATCHDOG=1"] * 3)
        clock.fire_shutdown()
        self.assertEqual(listener.messages(), ["STOPPING=1\nSTATUS=Stopping: draining requests in flight"])
        service.stopService()
        clock.advance(10)
        self.assertEqual(listener.messages(), [])
        self.assertEqual(clock.triggers, [])


class FakeReactor(Clock):
    """A Clock with system event triggers (for SystemdService)."""

    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[tuple[str, str, Any]] = []

    def addSystemEventTrigger(self, phase: str, event: str, callable: Any) -> Any:
        trigger = (phase, event, callable)
        self.triggers.append(trigger)
        return trigger

    def removeSystemEventTrigger(self, trigger: Any) -> None:
        self.triggers.remove(trigger)

    def fire_shutdown(self) -> None:
        for phase, event, callable in list(self.triggers):
            if (phase, event) == ("before", "shutdown"):
                callable()


class RecordingNotifier:
    def __init__(self) -> None:
        self.states: list[str] = []

    def reloading(self, status: str = "") -> bool:
        self.states.append("RELOADING")
        return True

    def ready(self, status: str) -> bool:
        self.states.append(f"READY {status}")
        return True


class ModelReloaderTests(TestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir()
        (self.directory / "orders.yml").write_text(MODEL)
        self.registry = ModelRegistry(self.directory, lambda _ds: "postgres", lambda _ds: "postgres", reactor)
        self.first = self.registry.load_now()
        self.notifier = RecordingNotifier()
        self.reloader = ModelReloader(self.registry, self.notifier, reactor, "tcp:4000")
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, level: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events
                if e.get("log_namespace") == "cubed.model.reload.ModelReloader" and e["log_level"].name == level]

    async def test_sighup_reloads(self) -> None:
        self.reloader.startService()
        self.addCleanup(self.reloader.stopService)
        (self.directory / "orders.yml").write_text(MODEL + "      - name: status\n        sql: status\n        type: string\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if self.registry.current is not self.first and self.reloader._reloading is None:
                break
            await deferLater(reactor, 0.02, lambda: None)
        second = self.registry.current
        self.assertIsNot(second, self.first)
        self.assertIn("status", second.model.cubes["Orders"].dimensions)
        self.assertEqual(self.notifier.states, ["RELOADING", f"READY Serving model {second.model.version} on tcp:4000"])
        self.assertIn(f"model reloaded: version {self.first.model.version} -> {second.model.version} "
                      "(1 cubes and views)", self.logged("info"))

    def test_stop_gives_sighup_back(self) -> None:
        before = signal.getsignal(signal.SIGHUP)
        self.reloader.startService()
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), before)
        self.reloader.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

    async def test_broken_model_keeps_the_current_one(self) -> None:
        (self.directory / "broken.yml").write_text("cubes: [ {name: Broken")
        await self.reloader.reload()
        self.assertIs(self.registry.current, self.first)
        self.assertEqual(self.notifier.states, ["RELOADING", f"READY Serving model {self.first.model.version} on tcp:4000"])
        [error] = self.logged("error")
        self.assertTrue(error.startswith(f"model reload failed, still serving version {self.first.model.version}: "
                                         "broken.yml"), error)

    async def test_a_signal_during_a_reload_reloads_once_more(self) -> None:
        first = self.reloader.reload()
        again = self.reloader.reload()
        third = self.reloader.reload()
        self.assertIs(again, first)
        self.assertIs(third, first)
        await first
        self.assertEqual([s.split(" ")[0] for s in self.notifier.states], ["RELOADING", "READY"] * 2)
