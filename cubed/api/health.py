"""``/readyz`` and ``/livez``: data source round-trips, memoised for a second so probes
arriving together share one check (Cube's cached handler)."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger

PROBE_LIFETIME = 1.0
PROBE_TIMEOUT = 5.0


class CachedProbe:
    """Runs an async check at most once per ``lifetime`` seconds; concurrent callers share it."""

    log = Logger()

    def __init__(self, name: str, check: Callable[[], Awaitable[None]], reactor: Any,
                 lifetime: float = PROBE_LIFETIME, timeout: float = PROBE_TIMEOUT) -> None:
        self.name = name
        self.check = check
        self.reactor = reactor
        self.lifetime = lifetime
        self.timeout = timeout
        self._result: bool | None = None
        self._checked_at = 0.0
        self._running: list[Deferred[bool]] | None = None

    def healthy(self) -> Deferred[bool]:
        """Return a Deferred firing True when the last (or a fresh) check passed."""
        now = self.reactor.seconds()
        if self._result is not None and now - self._checked_at < self.lifetime:
            return succeed(self._result)
        waiter: Deferred[bool] = Deferred()
        if self._running is not None:
            self._running.append(waiter)
            return waiter
        self._running = [waiter]
        d = ensureDeferred(self.check())  # type: ignore[arg-type]
        d.addTimeout(self.timeout, self.reactor)

        def done(result: Any) -> None:
            ok = not hasattr(result, "check")
            if not ok:
                self.log.warn("{probe} probe failed: {error}", probe=self.name, error=result.getErrorMessage())
            self._result, self._checked_at = ok, self.reactor.seconds()
            waiters, self._running = self._running or [], None
            for each in waiters:
                each.callback(ok)

        d.addBoth(done)
        return waiter

