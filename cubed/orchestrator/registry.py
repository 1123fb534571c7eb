"""Orchestrators by id: one per orchestrator id (``STANDALONE`` unless a hook maps the
security context to another), all over the same store, created on first use."""
from __future__ import annotations

from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger

from cubed.drivers.base import Driver
from cubed.metrics import Metrics
from cubed.orchestrator.cache import CacheOptions
from cubed.orchestrator.orchestrator import DEFAULT_ORCHESTRATOR_ID, Orchestrator
from cubed.orchestrator.queue import QueueOptions
from cubed.orchestrator.stores import CacheStore, QueueStore

class Orchestrators(Service):
    """Creates, starts and stops the orchestrators of one server (a service: it starts after
    the drivers and stops before them)."""

    name = "orchestrators"
    log = Logger()

    def __init__(self, queue_store: QueueStore, cache_store: CacheStore, drivers: Mapping[str, Driver],
                 options: Mapping[str, QueueOptions], clock: Any, cache_options: CacheOptions = CacheOptions(),
                 orchestrator_id: Any = None, rollup_only: bool = False, metrics: Metrics | None = None) -> None:
        self.queue_store = queue_store
        self.cache_store = cache_store
        self.drivers = dict(drivers)
        self.options = dict(options)
        self.clock = clock
        self.cache_options = cache_options
        self.rollup_only = rollup_only
        self.metrics = metrics if metrics is not None else Metrics.disabled()
        self._orchestrators: dict[str, Orchestrator] = {}

    def get(self, orchestrator_id: str = DEFAULT_ORCHESTRATOR_ID,
            drivers: Mapping[str, Driver] | None = None) -> Orchestrator:
        """Return the orchestrator of an id, created (and started, if running) on first use,
        running queries on ``drivers`` (a tenant's own) or the server's."""
        orchestrator = self._orchestrators.get(orchestrator_id)
        if orchestrator is None:
            orchestrator = Orchestrator(orchestrator_id, self.queue_store, self.cache_store,
                                        drivers if drivers is not None else self.drivers,
                                        self.options, self.clock, self.cache_options, rollup_only=self.rollup_only,
                                        metrics=self.metrics)
            self._orchestrators[orchestrator_id] = orchestrator
            if self.running:
                self._start(orchestrator_id, orchestrator)
        return orchestrator

    def all(self) -> list[Orchestrator]:
        """Return every orchestrator made so far."""
        return list(self._orchestrators.values())

    def _start(self, name: str, orchestrator: Orchestrator) -> None:
        orchestrator.start().addErrback(
            lambda f: self.log.warn("orchestrator {id}: cache and queue store not reachable at start: {error}",
                                    id=name, error=f.getErrorMessage()))

    def startService(self) -> None:
        """Start the orchestrators made so far and the default one (others start when first used)."""
        super().startService()
        self.get()
        for name, orchestrator in self._orchestrators.items():
            if not orchestrator.started:
                self._start(name, orchestrator)

    def stopService(self) -> Deferred[Any]:
        """Stop every orchestrator and close the store; fires when closed."""
        super().stopService()
        for orchestrator in self._orchestrators.values():
            orchestrator.stop()
        closers = [maybeDeferred(store.close) for store in {id(self.queue_store): self.queue_store,
                                                                  id(self.cache_store): self.cache_store}.values()
                   if hasattr(store, "close")]
        return gatherResults(closers, consumeErrors=True)

    async def ping(self) -> None:
        """Return when the store answers; raise otherwise."""
        await self.queue_store.ping()
