"""Building the orchestrator's store and queue options from the settings."""
from __future__ import annotations

from typing import Any, Mapping

from cubed.config import Settings
from cubed.drivers.base import Driver
from cubed.orchestrator.queue import QueueOptions

# Cube's queue concurrency per driver when CUBEJS_CONCURRENCY is not set.
DEFAULT_CONCURRENCY = {"postgres": 2, "mysql": 2, "duckdb": 4, "sqlite": 2}


def queue_options(settings: Settings, drivers: Mapping[str, Driver]) -> dict[str, QueueOptions]:
    """Return the QueueOptions of every data source from the settings."""
    options: dict[str, QueueOptions] = {}
    for ds in settings.data_sources:
        driver = drivers[ds.name]
        options[ds.name] = QueueOptions(
            concurrency=ds.concurrency or DEFAULT_CONCURRENCY.get(driver.db_type, 2),
            continue_wait=settings.continue_wait_timeout,
            # The driver stops the database query at its own timeout; the queue's is a backstop.
            execution_timeout=ds.query_timeout + 5.0,
            orphaned_timeout=settings.orphaned_timeout,
            heartbeat_interval=settings.heartbeat_interval,
            result_grace=settings.result_grace,
        )
    return options


def make_store(settings: Settings, reactor: Any) -> Any:
    """Return the cache and queue store of the settings' driver (memory or Redis)."""
    if settings.cache_and_queue_driver == "redis":
        from cubed.orchestrator.redis_store import RedisStore

        assert settings.redis_url is not None
        return RedisStore.from_url(settings.redis_url, reactor)
    from cubed.orchestrator.memory import MemoryStore

    return MemoryStore(reactor)
