"""Running planned SQL on its data source: a concurrency limit per data source, and identical
queries in flight sharing one execution (single flight), so a burst of the same dashboard
query reaches the database once.
"""
from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.python.failure import Failure

from cubed.drivers.base import Driver, ResultSet
from cubed.errors import CompileError
from cubed.query.sql import RenderedSql

DEFAULT_CONCURRENCY = {"postgres": 2, "duckdb": 4}


class QueryRunner:
    """Executes RenderedSql on the driver of a data source."""

    def __init__(self, drivers: Mapping[str, Driver], concurrency: Mapping[str, int | None]) -> None:
        self.drivers = dict(drivers)
        self._limits = {
            name: DeferredSemaphore(concurrency.get(name) or DEFAULT_CONCURRENCY.get(driver.db_type, 2))
            for name, driver in self.drivers.items()
        }
        self._in_flight: dict[tuple[Any, ...], list[Deferred[ResultSet]]] = {}

    def driver(self, data_source: str) -> Driver:
        """Return the driver of a data source; CompileError when there is none."""
        driver = self.drivers.get(data_source)
        if driver is None:
            raise CompileError(f"Unknown data source '{data_source}'")
        return driver

    def in_flight(self) -> int:
        """Return how many distinct queries are running or waiting for a slot."""
        return len(self._in_flight)

    def execute(self, data_source: str, sql: RenderedSql, name: str = "query") -> Deferred[ResultSet]:
        """Return a Deferred firing with the rows of ``sql`` on ``data_source``."""
        driver = self.driver(data_source)
        key = (data_source, sql.text, sql.params)
        waiter: Deferred[ResultSet] = Deferred()
        waiters = self._in_flight.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._in_flight[key] = [waiter]

        def finish(result: ResultSet | Failure) -> None:
            for each in self._in_flight.pop(key, []):
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        run = self._limits[data_source].run(driver.execute, sql.text, list(sql.params), name)
        run.addBoth(finish)
        return waiter
