"""Graceful shutdown against a real listening port and a real HTTP client (treq)."""
from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from cubed.api.draining import DrainingSite, OrderedService


@implementer(IStreamServerEndpoint)
class RecordingEndpoint:
    """A server endpoint that remembers the port it listened on (the tests listen on port 0)."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self._endpoint = endpoint
        self.port_number: int | None = None

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        """Return the wrapped endpoint's Deferred, recording the port it fires with."""

        def record(port: IListeningPort) -> IListeningPort:
            self.port_number = port.getHost().port
            return port

        return self._endpoint.listen(factory).addCallback(record)


class SlowResource(Resource):
    """``/slow`` answers only when release() is called; ``/fast`` answers at once."""

    isLeaf = True

    def __init__(self, events: list[str], body: bytes = b"done") -> None:
        super().__init__()
        self.events = events
        self.body = body
        self.pending: list[Request] = []
        self.started: Deferred[Request] = Deferred()

    def render_GET(self, request: Request) -> bytes | int:
        """Return ``fast`` for /fast; hold any other request until release()."""
        if request.path == b"/fast":
            return b"fast"
        self.pending.append(request)
        if not self.started.called:
            self.started.callback(request)
        return NOT_DONE_YET

    def release(self) -> None:
        """Finish every held request whose client is still there."""
        pending, self.pending = self.pending, []
        for request in pending:
            if request.finished or request._disconnected:
                continue
            self.events.append("request finished")
            request.setHeader(b"content-length", b"%d" % len(self.body))
            request.write(self.body)
            request.finish()


class RecordingBackend(Service):
    """A backend whose stop is recorded and takes one reactor turn, like closing a pool."""

    def __init__(self, name: str, events: list[str], fail: bool = False) -> None:
        self.name = name
        self.events = events
        self.fail = fail

    def startService(self) -> None:
        """Record the start; returns nothing."""
        super().startService()
        self.events.append(f"started {self.name}")

    def stopService(self) -> Deferred[None]:
        """Return a Deferred firing on the next reactor turn (failing if asked to)."""
        super().stopService()
        self.events.append(f"stopping {self.name}")

        def done() -> None:
            if self.fail:
                raise RuntimeError(f"{self.name} would not close")
            self.events.append(f"stopped {self.name}")

        return deferLater(reactor, 0, done)


class RawClient(Protocol):
    """Collects every byte the server sends; ``closed`` fires when the server hangs up."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


class Server:
    """A DrainingSite under an OrderedService with two backends, listening on 127.0.0.1."""

    def __init__(self, drain_timeout: float = 5.0, body: bytes = b"done", failing: str = "") -> None:
        self.events: list[str] = []
        self.resource = SlowResource(self.events, body)
        self.site = DrainingSite(self.resource)
        self.top = OrderedService(self.site, drain_timeout=drain_timeout)
        self.endpoint = RecordingEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.listener = StreamServerEndpointService(self.endpoint, self.site)
        self.listener.setName("http")
        self.stopping: Deferred[None] | None = None
        # The listener is added first on purpose: start order must not depend on add order.
        self.top.add_listener(self.listener)
        for name in ("pg", "redis"):
            RecordingBackend(name, self.events, fail=name == failing).setServiceParent(self.top)

    def start(self) -> None:
        """Start the way twistd does; returns nothing."""
        self.top.privilegedStartService()
        self.top.startService()

    def stop(self) -> Deferred[None]:
        """Return the Deferred of the one stopService call, making that call the first time."""
        if self.stopping is None:
            self.stopping = self.top.stopService()
        return self.stopping

    def url(self, path: str) -> str:
        """Return the URL of ``path`` on the listening port."""
        assert self.endpoint.port_number is not None
        return f"http://127.0.0.1:{self.endpoint.port_number}{path}"


@inlineCallbacks
def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> Any:
    """Return (as a Deferred) once ``predicate()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        yield deferLater(reactor, 0.01, lambda: None)


class DrainingTests(TestCase):
    def setUp(self) -> None:
        self.log_events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)

    def server(self, **kwargs: Any) -> Server:
        server = Server(**kwargs)
        server.start()

        @inlineCallbacks
        def cleanup() -> Any:
            server.resource.release()
            yield server.stop()

        self.addCleanup(cleanup)
        return server

    def shutdown_log(self) -> list[str]:
        """Return the OrderedService's log messages, formatted, in order."""
        return [
            formatEvent(event)
            for event in self.log_events
            if event.get("log_namespace", "").endswith("draining.OrderedService")
        ]

    @inlineCallbacks
    def test_in_flight_request_completes_during_stop(self) -> Any:
        server = self.server()
        self.assertEqual(server.events, ["started pg", "started redis"])
        response_d = treq.get(server.url("/slow"), persistent=False)
        yield server.resource.started
        self.assertEqual(server.site.in_flight, 1)

        stopping = server.stop()
        yield wait_until(lambda: server.site.draining)
        self.assertFalse(stopping.called)

        # The port is closed: a new client cannot even connect.
        yield self.assertFailure(treq.get(server.url("/fast"), persistent=False), ConnectionRefusedError)
        self.assertEqual(server.events, ["started pg", "started redis"])

        server.resource.release()
        response = yield response_d
        self.assertEqual(response.code, 200)
        self.assertEqual((yield treq.content(response)), b"done")
        yield stopping

        self.assertEqual(
            server.events,
            [
                "started pg",
                "started redis",
                "request finished",
                "stopping redis",
                "stopped redis",
                "stopping pg",
                "stopped pg",
            ],
        )
        self.assertEqual(server.site.in_flight, 0)
        self.assertEqual(
            self.shutdown_log(),
            [
                "Stopped listening (1 listener(s))",
                "Draining 1 in-flight request(s), waiting up to 5.0 s",
                "Drained: no request in flight",
                "Stopping redis",
                "Stopped redis",
                "Stopping pg",
                "Stopped pg",
            ],
        )

    @inlineCallbacks
    def test_response_is_sent_before_stop_completes(self) -> Any:
        # twistd's reactor shutdown drops whatever is still in a transport's buffer, so stop
        # must not complete while a large response is still being written.
        body = b"x" * (4 * 1024 * 1024)
        server = self.server(body=body)
        response_d = treq.get(server.url("/slow"), persistent=False)
        request = yield server.resource.started
        transport = request.transport

        def drop_connections(result: object) -> object:
            # What reactor.disconnectAll() does at the end of a twistd shutdown.
            transport.abortConnection()
            return result

        stopping = server.stop().addCallback(drop_connections)
        yield wait_until(lambda: server.site.draining)
        server.resource.release()
        response = yield response_d
        content = yield treq.content(response)
        yield stopping
        self.assertEqual(response.code, 200)
        self.assertEqual(len(content), len(body))

    @inlineCallbacks
    def test_keep_alive_client_is_told_to_close(self) -> Any:
        # treq hides the hop-by-hop Connection header, so this client reads the raw bytes.
        server = self.server()
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", server.endpoint.port_number).connect(
            Factory.forProtocol(RawClient)
        )
        client.transport.write(b"GET /fast HTTP/1.1\r\nHost: test\r\n\r\n")
        yield wait_until(lambda: client.received.endswith(b"fast"))
        self.assertNotIn(b"connection: close", client.received.lower())
        self.assertFalse(client.closed.called)

        client.received = b""
        client.transport.write(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        yield server.resource.started
        stopping = server.stop()
        yield wait_until(lambda: server.site.draining)
        server.resource.release()
        yield client.closed
        yield stopping
        head, _, body = client.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "))
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(body, b"done")


    @inlineCallbacks
    def test_drain_timeout(self) -> Any:
        server = self.server(drain_timeout=0.2)
        response_d = treq.get(server.url("/slow"), persistent=False)
        yield server.resource.started

        began = time.monotonic()
        yield server.stop()
        elapsed = time.monotonic() - began

        self.assertGreaterEqual(elapsed, 0.2)
        self.assertLess(elapsed, 2.0)
        self.assertEqual(
            server.events,
            ["started pg", "started redis", "stopping redis", "stopped redis", "stopping pg", "stopped pg"],
        )
        self.assertIn("Drain timed out after 0.2 s with 1 request(s) still in flight", self.shutdown_log())
        warnings = [event for event in self.log_events if event.get("log_level") == LogLevel.warn]
        self.assertEqual([event["in_flight"] for event in warnings], [1])

        # The connection outlives the drain: the late response still reaches the client.
        server.resource.release()
        response = yield response_d
        self.assertEqual(response.code, 200)
        self.assertEqual((yield treq.content(response)), b"done")

    @inlineCallbacks
    def test_client_that_hangs_up_is_no_longer_in_flight(self) -> Any:
        server = self.server()
        response_d = treq.get(server.url("/slow"), persistent=False)
        yield server.resource.started
        self.assertEqual(server.site.in_flight, 1)
        response_d.cancel()
        yield self.assertFailure(response_d, Exception)
        yield wait_until(lambda: server.site.in_flight == 0)
        remaining = yield server.site.drain(5.0)
        self.assertEqual(remaining, 0)

    @inlineCallbacks
    def test_drain_with_nothing_in_flight_fires_at_once(self) -> Any:
        server = self.server()
        fast = yield treq.get(server.url("/fast"), persistent=False)
        yield treq.content(fast)
        yield wait_until(lambda: server.site.in_flight == 0)
        drained = server.site.drain(5.0)
        self.assertEqual(self.successResultOf(drained), 0)
        self.assertTrue(server.site.draining)

    @inlineCallbacks
    def test_failing_backend_does_not_stop_the_others(self) -> Any:
        server = self.server(failing="redis")
        yield server.stop()
        self.assertEqual(
            server.events,
            ["started pg", "started redis", "stopping redis", "stopping pg", "stopped pg"],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("Stopping redis failed", self.shutdown_log())
        self.assertFalse(server.top.running)

    def test_request_factory_must_count(self) -> None:
        self.assertRaises(TypeError, DrainingSite, Resource(), requestFactory=Request)


class BodyLengthResource(Resource):
    """Answers with how many bytes of the request body the site kept."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        """Return the number of body bytes kept, as text."""
        request.content.seek(0)
        return str(len(request.content.read())).encode()


class BoundedBodyTests(TestCase):
    """A body over the site's max_body_size keeps limit + 1 bytes, declared or chunked."""

    async def post(self, site: DrainingSite, payload: bytes) -> bytes:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        answer = await treq.post(url, data=payload, timeout=10, persistent=False)
        length = await treq.content(answer)
        producer = FileBodyProducer(io.BytesIO(payload))
        producer.length = UNKNOWN_LENGTH  # sent chunked
        chunked = await treq.post(url, data=producer, timeout=10, persistent=False)
        self.assertEqual(await treq.content(chunked), length)  # no Content-Length: the same bound
        return length

    async def test_body_over_the_limit_is_not_kept(self) -> None:
        site = DrainingSite(BodyLengthResource(), max_body_size=1000)
        self.assertEqual(await self.post(site, b"x" * 5_000_000), b"1001")
        self.assertEqual(await self.post(site, b"y" * 1000), b"1000")

    async def test_no_limit_keeps_everything(self) -> None:
        site = DrainingSite(BodyLengthResource())
        self.assertEqual(await self.post(site, b"z" * 300_000), b"300000")
