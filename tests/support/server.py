"""Starting a whole cubed server in the test process, listening on a free local port."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks

from cubed.config import Settings
from cubed.service import CubedServer, build_server

TEST_SECRET = "cubed-test-secret-0123456789abcdef-0123"


@dataclass
class RunningServer:
    """A listening test server: its base URL and the parts tests may poke at."""

    url: str
    server: CubedServer

    def token(self, claims: dict[str, Any] | None = None, secret: str = TEST_SECRET) -> str:
        """Return an HS256 token for this server (or signed with another secret)."""
        return jwt.encode(dict(claims or {}), secret, algorithm="HS256")


@inlineCallbacks
def start_server(testcase: Any, settings: Settings) -> Deferred[RunningServer]:
    """Start a server for ``settings`` on 127.0.0.1:<free port>; stopped at test cleanup."""
    server = build_server(settings, reactor)
    server.root.startService()
    port = reactor.listenTCP(0, server.site, interface="127.0.0.1")

    @inlineCallbacks
    def stop() -> Any:
        yield port.stopListening()
        yield server.root.stopService()

    testcase.addCleanup(stop)
    yield server.backends.started()
    return RunningServer(url=f"http://127.0.0.1:{port.getHost().port}", server=server)
