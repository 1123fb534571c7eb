"""Graceful shutdown: stop listening, let in-flight requests finish, then stop the backends.

Twisted's plain MultiService stops its children in parallel, so the database pool closes
while requests still use it and the clients get empty replies. Here the top service stops in
a fixed order instead::

    top = OrderedService(site, drain_timeout=30.0)
    pool_service.setServiceParent(top)         # backends, in start order
    redis_service.setServiceParent(top)
    top.add_listener(strports.service("tcp:4000", site))

On stop: the listeners stop accepting connections, the site waits for the requests in flight
(up to ``drain_timeout`` seconds), then the backends stop one at a time in reverse start order.
"""
from __future__ import annotations

import io
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site


class BoundedBody(io.BytesIO):
    """A request body that keeps at most ``limit + 1`` bytes and drops the rest, so that a
    body over the limit costs neither memory nor a temporary file; the handler sees that it
    has more than ``limit`` bytes and answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: Any) -> int:
        """Keep what fits in ``limit + 1`` bytes; returns the length offered (all is "taken")."""
        room = self.limit + 1 - self.tell()
        if room > 0:
            super().write(bytes(data[:room]))
        return len(data)


class CountingRequest(Request):
    """A Request that reports itself to its DrainingSite from processing until it is done, and
    whose body is bounded by the site's ``max_body_size``."""

    def gotLength(self, length: int | None) -> None:
        """Choose where the body goes: a BoundedBody when it may exceed the site's limit
        (declared too long, or chunked with no length); returns nothing."""
        limit = getattr(self.channel.site, "max_body_size", None) if self.channel else None
        if limit is not None and (length is None or length > limit):
            self.content = BoundedBody(limit)
        else:
            super().gotLength(length)

    def process(self) -> None:
        """Register with the site, then process as usual; returns nothing."""
        self.channel.site.request_started(self)
        super().process()


IDLE_TIMEOUT = 75.0


class DrainingSite(Site):
    """A Site that knows its in-flight requests and can wait for them to finish.

    A request is in flight from the moment its headers and body have arrived until its
    response is finished or its connection is lost. While draining, every response carries
    ``Connection: close`` and its connection is closed once the response is sent, so
    keep-alive clients move to another server instead of sending more requests here.
    """

    requestFactory = CountingRequest
    #: How often drain() looks whether the connections it closes are gone.
    close_poll_interval = 0.01

    def __init__(self, resource: IResource, *args: Any, max_body_size: int | None = None,
                 **kwargs: Any) -> None:
        #: Bytes of a request body kept at most (CUBEJS_MAX_REQUEST_SIZE); None: no bound.
        self.max_body_size = max_body_size
        # A connection silent this long is closed (Twisted's default is 12 hours: a client that
        # declares a body and never sends it would hold its connection that long).
        kwargs.setdefault("timeout", IDLE_TIMEOUT)
        super().__init__(resource, *args, **kwargs)
        if not issubclass(self.requestFactory, CountingRequest):
            raise TypeError("DrainingSite needs a requestFactory derived from CountingRequest")
        self._in_flight: set[Request] = set()
        # In-flight requests whose connection is to close after their response.
        self._will_close: set[Request] = set()
        # Transports closing after their last response: the response may still sit in the
        # transport's buffer, and reactor shutdown discards buffers, so drain() waits for them.
        self._closing: set[Any] = set()
        self._waiters: list[Deferred[int]] = []
        self._poll: IDelayedCall | None = None
        self._draining = False

    @property
    def in_flight(self) -> int:
        """Return the number of requests being processed now."""
        return len(self._in_flight)

    @property
    def draining(self) -> bool:
        """Return whether drain() has been called (a readiness check can answer 503)."""
        return self._draining

    def request_started(self, request: Request) -> None:
        """Count ``request`` as in flight until it finishes; returns nothing (called by
        CountingRequest)."""
        self._in_flight.add(request)
        if self._draining:
            self._close_after_response(request)
        request.notifyFinish().addBoth(self._request_done, request)

    def _request_done(self, result: object, request: Request) -> None:
        """Forget a finished or abandoned request and wake the drainers when all is sent."""
        self._in_flight.discard(request)
        if request in self._will_close:
            self._will_close.discard(request)
            self._closing.add(request.transport)
        self._check_drained()
        # A lost connection errbacks notifyFinish; that is an ordinary end here, not an error.
        return None

    def _close_after_response(self, request: Request) -> None:
        """Ask the client not to reuse the connection and close it after this response."""
        if not request.startedWriting:
            request.setHeader(b"connection", b"close")
        channel = getattr(request, "channel", None)
        # HTTP/2 streams have no persistence flag; only HTTP/1.x channels are kept alive.
        if isinstance(channel, HTTPChannel):
            channel.persistent = False
            self._will_close.add(request)

    def _unsent(self) -> int:
        """Return the requests in flight plus the connections of finished ones still open."""
        self._closing = {transport for transport in self._closing if getattr(transport, "connected", False)}
        return len(self._in_flight) + len(self._closing)

    def _check_drained(self) -> None:
        """Fire the drain waiters once nothing is in flight or left to send."""
        if not self._waiters or self._in_flight:
            return
        if self._unsent():
            # No event tells when a transport has flushed and closed, so look again shortly.
            if self._poll is None or not self._poll.active():
                self._poll = self.reactor.callLater(self.close_poll_interval, self._check_drained)
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(0)

    def drain(self, timeout: float = 30.0) -> Deferred[int]:
        """Return a Deferred that fires once every request in flight has finished and its
        response has been sent, with 0, or after ``timeout`` seconds with the number of
        requests still in flight or responses still being sent."""
        self._draining = True
        for request in list(self._in_flight):
            self._close_after_response(request)

        def forget(waiter: Deferred[int]) -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if not self._waiters and self._poll is not None and self._poll.active():
                self._poll.cancel()

        waiter: Deferred[int] = Deferred(forget)
        self._waiters.append(waiter)
        self._check_drained()
        if waiter.called:
            return waiter
        return waiter.addTimeout(timeout, self.reactor, onTimeoutCancel=lambda result, after: self._unsent())


def _name(service: IService) -> str:
    """Return a service's name for the log, or its class name when it has none."""
    return getattr(service, "name", None) or type(service).__name__


class OrderedService(MultiService):
    """A MultiService that starts backends before listeners and stops in a safe order.

    Children added with add_listener accept connections; every other child is a backend
    (database pool, Redis, scheduler). Start: backends in the order added, then listeners.
    Stop: listeners (all at once), drain the site, then backends one by one in reverse order.
    A child that fails to stop is logged and the others still stop. Children that are not
    running are left alone.
    """

    _log = Logger()

    def __init__(self, site: DrainingSite | None = None, drain_timeout: float = 30.0) -> None:
        super().__init__()
        self.site = site
        self.drain_timeout = drain_timeout
        self._listeners: list[IService] = []

    def add_listener(self, service: IService) -> None:
        """Add a child that accepts connections; returns nothing."""
        self._listeners.append(service)
        service.setServiceParent(self)

    def removeService(self, service: IService) -> Deferred[None] | None:
        """Remove a child (listener or backend); returns what MultiService returns."""
        if service in self._listeners:
            self._listeners.remove(service)
        return super().removeService(service)

    def _backends(self) -> list[IService]:
        """Return the non-listener children in the order they were added."""
        return [service for service in self if service not in self._listeners]

    def _start_order(self) -> list[IService]:
        """Return the children in start order: backends, then listeners."""
        return self._backends() + [service for service in self if service in self._listeners]

    def privilegedStartService(self) -> None:
        """Run every child's privileged start in start order; returns nothing."""
        Service.privilegedStartService(self)
        for service in self._start_order():
            service.privilegedStartService()

    def startService(self) -> None:
        """Start every child in start order; returns nothing."""
        Service.startService(self)
        for service in self._start_order():
            service.startService()

    def stopService(self) -> Deferred[None]:
        """Return a Deferred that fires when listeners, the drain and the backends are done."""
        Service.stopService(self)
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        listeners = [service for service in self if service in self._listeners and service.running]
        if listeners:
            results = await DeferredList(
                [maybeDeferred(service.stopService) for service in listeners], consumeErrors=True
            )
            for service, (ok, result) in zip(listeners, results, strict=True):
                if not ok:
                    self._log.failure(
                        "Stopping listener {service} failed", result, LogLevel.error, service=_name(service)
                    )
            self._log.info("Stopped listening ({count} listener(s))", count=len(listeners))

        if self.site is not None:
            self._log.info(
                "Draining {in_flight} in-flight request(s), waiting up to {timeout} s",
                in_flight=self.site.in_flight,
                timeout=self.drain_timeout,
            )
            remaining = await self.site.drain(self.drain_timeout)
            if remaining:
                self._log.warn(
                    "Drain timed out after {timeout} s with {in_flight} request(s) still in flight",
                    timeout=self.drain_timeout,
                    in_flight=remaining,
                )
            else:
                self._log.info("Drained: no request in flight")

        for service in reversed(self._backends()):
            if not service.running:
                continue
            self._log.info("Stopping {service}", service=_name(service))
            try:
                await maybeDeferred(service.stopService)
            except Exception:
                self._log.failure("Stopping {service} failed", Failure(), LogLevel.error, service=_name(service))
            else:
                self._log.info("Stopped {service}", service=_name(service))
