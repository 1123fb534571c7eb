"""One orchestrator: the queues (one per data source) and the result cache of an
orchestrator id, over one store (memory or Redis), running queries on the drivers.

Store keys are prefixed by the orchestrator id (``STANDALONE`` by default), so tenants with
their own id get their own queues and caches.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from twisted.internet.defer import Deferred, gatherResults

from cubed.drivers.base import Driver, ResultSet
from cubed.errors import CompileError
from cubed.metrics import Metrics
from cubed.orchestrator.cache import CacheOptions, Fetched, QueryCache
from cubed.orchestrator.preaggregations import PreAggregationLoader
from cubed.orchestrator.queue import QueryQueue, QueueOptions
from cubed.orchestrator.refresh_keys import RefreshKey
from cubed.orchestrator.stores import CacheStore, QueuedQuery, QueueStore
from cubed.query.sql import RenderedSql

DEFAULT_ORCHESTRATOR_ID = "STANDALONE"


class Orchestrator:
    """Queues and cache of one orchestrator id (every query it runs timed by ``metrics``)."""

    def __init__(self, orchestrator_id: str, queue_store: QueueStore, cache_store: CacheStore,
                 drivers: Mapping[str, Driver], options: Mapping[str, QueueOptions], clock: Any,
                 cache_options: CacheOptions = CacheOptions(), rollup_only: bool = False,
                 metrics: Metrics | None = None) -> None:
        self.orchestrator_id = orchestrator_id
        self.metrics = metrics if metrics is not None else Metrics.disabled()
        self.drivers = self.metrics.measured_drivers(orchestrator_id, drivers)
        self.clock = clock
        self.queue_store = queue_store
        self.cache = QueryCache(orchestrator_id, cache_store, self.queue, clock, cache_options, self.metrics)
        self.started = False
        self.queues: dict[str, QueryQueue] = {}
        for name, driver in self.drivers.items():
            self.queues[name] = QueryQueue(
                f"SQL_QUERY_{orchestrator_id}_{name}", queue_store, self._executor(driver),
                options.get(name, QueueOptions()), clock, on_result=self.cache.store_result)
        self.pre_aggregations = PreAggregationLoader(orchestrator_id, self.drivers, queue_store, self.cache, cache_store,
                                                     options, clock, rollup_only=rollup_only, metrics=self.metrics)

    @staticmethod
    def _executor(driver: Driver) -> Any:
        def run(item: QueuedQuery) -> Deferred[ResultSet]:
            return driver.execute(item.sql, item.params, name=f"query {item.key[:12]}")

        return run

    def queue(self, data_source: str) -> QueryQueue:
        """Return the queue of a data source; CompileError when it has none."""
        queue = self.queues.get(data_source)
        if queue is None:
            raise CompileError(f"Unknown data source '{data_source}'")
        return queue

    def start(self) -> Deferred[Any]:
        """Start every queue's reconcile loop and completion subscription."""
        self.started = True
        return gatherResults([queue.start() for queue in self.queues.values()] + [self.pre_aggregations.start()],
                             consumeErrors=True)

    def stop(self) -> None:
        """Stop the queues (queries this process runs are cancelled)."""
        self.started = False
        for queue in self.queues.values():
            queue.stop()
        self.pre_aggregations.stop()

    async def fetch(self, data_source: str, sql: RenderedSql, keys: list[RefreshKey], mode: str = "stale-if-slow",
                    renew: bool = False, request_id: str = "", priority: int = 0,
                    interaction: str | None = None) -> Fetched:
        """Return the rows of a planned query through the cache and the queue."""
        return await self.cache.fetch(data_source, sql, keys, mode, renew, request_id, priority, interaction)

    async def ping(self) -> None:
        """Return when the store answers; raise otherwise."""
        await self.queue_store.ping()

    def with_options(self, data_source: str, **changes: Any) -> None:
        """Change the options of one data source's queue (tests)."""
        queue = self.queue(data_source)
        queue.options = replace(queue.options, **changes)
