"""systemd integration: state notifications (sd_notify) and socket activation.

Under ``Type=notify`` (debian/cubed.service) cubed tells systemd, over the datagram socket
named by ``$NOTIFY_SOCKET``:

- ``READY=1`` once the HTTP listener listens (``STATUS=`` says where and which model version);
- ``RELOADING=1`` when a model reload starts (SIGHUP, ``systemctl reload cubed``) and
  ``READY=1`` when it has ended, whether the new model was taken or refused;
- ``STOPPING=1`` when shutdown begins (before the drain of requests in flight);
- ``WATCHDOG=1`` every half ``WatchdogSec=``, when the unit sets one, while the reactor runs.

Without ``$NOTIFY_SOCKET`` (not under systemd) every notification is a no-op. The protocol is
sd_notify(3)'s: one datagram of ``KEY=value`` lines to a unix socket path (``@`` starts an
abstract name).

Socket activation (debian/cubed.socket): when systemd passed this process listening sockets,
:func:`activation_listen` returns the ``systemd:`` endpoint of the first one, which cubed then
listens on instead of ``PORT``.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
_DOMAINS = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}


class Notifier:
    """Sends sd_notify messages to ``address`` (a socket path, or ``@name`` for an abstract
    socket); with no address every call does nothing and returns False."""

    log = Logger()

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        """Return a Notifier for ``$NOTIFY_SOCKET`` of ``environ`` (default: os.environ)."""
        return cls((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Return whether there is a socket to notify (cubed runs under Type=notify)."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``READY=1``, ``STATUS=...``) as one message; return whether it was
        sent. A failure is logged, never raised: systemd's bookkeeping must not stop cubed."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(lines).encode("utf-8"), target)
        except OSError as error:
            self.log.warn("sd_notify to {address} failed: {error}", address=self.address,
                          error=error.strerror or str(error))
            return False
        return True

    def ready(self, status: str) -> bool:
        """Tell systemd that cubed serves (after start-up or a reload)."""
        return self.notify("READY=1", f"STATUS={_one_line(status)}")

    def reloading(self, status: str = "Reloading the model") -> bool:
        """Tell systemd that a reload has started; ready() ends it."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", f"STATUS={_one_line(status)}")

    def stopping(self, status: str = "Stopping: draining requests in flight") -> bool:
        """Tell systemd that shutdown has begun."""
        return self.notify("STOPPING=1", f"STATUS={_one_line(status)}")

    def watchdog(self) -> bool:
        """Tell systemd's watchdog that the reactor is alive."""
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket (a later notification opens it again)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    """Return ``text`` on one line (a newline would start another KEY=value)."""
    return " ".join(text.split())


@implementer(IStreamServerEndpoint)
class NotifyingEndpoint:
    """A server endpoint that calls ``on_listening(port)`` once ``endpoint`` listens, e.g. to
    send READY=1 only when connections are accepted."""

    def __init__(self, endpoint: IStreamServerEndpoint, on_listening: Callable[[IListeningPort], object]) -> None:
        self.endpoint = endpoint
        self.on_listening = on_listening

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        """Listen as the wrapped endpoint does; fires with its port after on_listening."""

        def listening(port: IListeningPort) -> IListeningPort:
            self.on_listening(port)
            return port

        return self.endpoint.listen(protocolFactory).addCallback(listening)


class SystemdService(Service):
    """Sends STOPPING=1 when the reactor begins to shut down, and WATCHDOG=1 while it runs
    when systemd asked for it (``$WATCHDOG_USEC``, from ``WatchdogSec=``)."""

    name = "systemd"

    def __init__(self, notifier: Notifier, reactor: Any, environ: Mapping[str, str] | None = None) -> None:
        self.notifier = notifier
        self.reactor = reactor
        self.watchdog_interval = watchdog_interval(os.environ if environ is None else environ)
        self._trigger: Any = None
        self._watchdog: LoopingCall | None = None

    def startService(self) -> None:
        """Register the shutdown notification and start the watchdog pings; returns nothing."""
        super().startService()
        if not self.notifier.enabled:
            return
        self._trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self.notifier.stopping)
        if self.watchdog_interval:
            self._watchdog = LoopingCall(self.notifier.watchdog)
            self._watchdog.clock = self.reactor
            self._watchdog.start(self.watchdog_interval / 2, now=True)

    def stopService(self) -> None:
        """Stop the watchdog pings and forget the trigger; returns nothing."""
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        if self._trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):  # already fired and removed: shutdown is under way
                pass
            self._trigger = None


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Return systemd's watchdog timeout in seconds for this process, or None when unset."""
    if environ.get("WATCHDOG_PID") not in (None, str(os.getpid() if pid is None else pid)):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def inherited_descriptors() -> list[int]:
    """Return the listening descriptors systemd passed this process (none outside socket
    activation).

    Twisted reads ``LISTEN_PID``/``LISTEN_FDS`` when ``twisted.internet.endpoints`` is first
    imported (twistd does so before makeService) and removes them from the environment; the
    ``systemd:`` endpoint then uses what it read, so that is asked first.
    """
    from twisted.internet import endpoints

    daemon = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    if daemon is not None:
        return list(daemon.inheritedDescriptors())
    from twisted.python.systemd import ListenFDs

    return list(ListenFDs.fromEnvironment(dict(os.environ)).inheritedDescriptors())


def activation_listen(listen: str, descriptors: list[int] | None = None) -> str:
    """Return the endpoint cubed listens on: ``listen``, or under socket activation (systemd
    passed a listening socket) ``systemd:domain=<its family>:index=0``. A ``listen`` that is
    already a ``systemd:`` endpoint is kept as it is."""
    if listen.startswith("systemd:"):
        return listen
    descriptors = inherited_descriptors() if descriptors is None else descriptors
    if not descriptors:
        return listen
    try:
        probe = socket.socket(fileno=descriptors[0])
    except OSError:  # not a socket: let the configured endpoint serve
        return listen
    try:
        domain = _DOMAINS.get(probe.family)
    finally:
        probe.detach()
    return f"systemd:domain={domain}:index=0" if domain else listen
