"""The PostgreSQL driver survives its server being down at start and restarting later.

Runs a private PostgreSQL server (initdb + pg_ctl in a temporary directory, on a free port);
the shared server is never touched.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Iterator

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cubed.drivers.postgres import PostgresDriver
from cubed.errors import ServiceUnavailable
from tests.support.services import start_private_postgres


def fast_backoff() -> Iterator[float]:
    """Reconnect delays short enough for a test: at once, then every 0.2 s."""
    return itertools.chain([0.0], itertools.repeat(0.2))


@defer.inlineCallbacks
def wait_for_recovery(driver: PostgresDriver, within: float = 15.0) -> Any:
    """Fire with the seconds it took until two concurrent queries both succeed (every pooled
    connection is back), or fail the last query's error after ``within`` seconds."""
    started = time.monotonic()
    while True:
        try:
            results = yield defer.gatherResults(
                [driver.execute("SELECT pg_backend_pid(), pg_sleep(0.05)", [], name="probe") for _ in range(2)],
                consumeErrors=True,
            )
        except defer.FirstError as error:
            if time.monotonic() - started > within:
                raise error.subFailure.value from None
            yield task.deferLater(reactor, 0.1, lambda: None)
            continue
        if len({r.rows[0][0] for r in results}) == 2:
            return time.monotonic() - started
        yield task.deferLater(reactor, 0.1, lambda: None)


class ReconnectTests(unittest.TestCase):
    """Server down at start, then a restart while connected."""

    timeout = 90

    @defer.inlineCallbacks
    def test_down_at_start_then_restart(self) -> Any:
        server = yield start_private_postgres(self)
        yield server.stop()

        driver = PostgresDriver(
            server.settings(max_pool=2), reactor, connect_timeout=3.0, reconnect_delays=fast_backoff,
        )
        self.addCleanup(driver.close)
        # The server is down: start() must still fire, and queries answer 503 at once.
        yield driver.start()
        started = time.monotonic()
        error = yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)
        self.assertIn("database unavailable", error.message)
        self.assertLess(time.monotonic() - started, 1.0)

        yield server.start()
        yield wait_for_recovery(driver)
        result = yield driver.execute("SELECT current_setting('TimeZone'), now() > '2000-01-01'", [])
        self.assertEqual(result.rows, [("UTC", True)])

        # A restart under an open pool: the dead connections are noticed and replaced.
        yield server.stop()
        yield self.assertFailure(driver.execute("SELECT 1", []), ServiceUnavailable)
        yield server.start()
        yield wait_for_recovery(driver)
        result = yield driver.execute("SELECT %s::int + 1", [41])
        self.assertEqual(result.rows, [(42,)])
