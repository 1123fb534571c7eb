"""The result cache: a query's rows kept with the refresh-key values they were read under.

An entry is served while the cube refresh keys still have the same values (and it is younger
than ``max_age``); otherwise the query runs again through the queue. The ``cache`` mode of a
request decides what happens meanwhile (Cube's semantics):

- ``stale-if-slow`` (default): wait for fresh data, but past the Continue-wait timeout answer
  the stale entry with ``slowQuery: true`` (the query keeps running and refills the cache);
- ``stale-while-revalidate``: answer the stale entry at once and refresh in the background;
- ``must-revalidate``: always wait for fresh data (Continue wait if slow);
- ``no-cache``: skip the cache and the refresh keys, run the query.

``renewQuery: true`` re-reads the refresh keys and the result now.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from cubed.drivers.base import ResultSet
from cubed.errors import ContinueWait, CubedError, ServiceUnavailable
from cubed.metrics import Metrics
from cubed.orchestrator.queue import QueryQueue, decode_result
from cubed.orchestrator.refresh_keys import RefreshKey
from cubed.orchestrator.stores import CacheStore, QueuedQuery
from cubed.query.sql import RenderedSql

# A key's last value is kept this long (it answers while its renewal is queued); it is
# renewed every renewal threshold.
KEY_VALUE_TTL = 24 * 3600.0
_NO_VALUE = object()
CACHE_MODES = ("stale-if-slow", "stale-while-revalidate", "must-revalidate", "no-cache")


@dataclass(frozen=True)
class Fetched:
    """A query's rows, when they were read, and whether they are a stale answer to a slow query."""

    result: ResultSet
    refreshed_at: float
    slow: bool
    refresh_key_values: list[Any]


@dataclass(frozen=True)
class CacheOptions:
    """How long entries live (seconds)."""

    expire_after: float = 24 * 3600.0
    max_age: float = 6 * 3600.0


def span_of(request_id: str) -> str:
    """Return the interaction a request belongs to: ``<span>`` of ``<span>-span-<n>`` (Cube's
    external id), which stays the same across a client's Continue-wait retries."""
    span, separator, _sequence = request_id.rpartition("-span-")
    return span if separator else request_id


def digest(*parts: Any) -> str:
    """Return a stable hex digest of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, separators=(",", ":"), default=str).encode()).hexdigest()


class QueryCache:
    """Cached results of one orchestrator, read and refilled through its queues."""

    log = Logger()

    def __init__(self, prefix: str, store: CacheStore, queue_for: Callable[[str], QueryQueue], clock: Any,
                 options: CacheOptions = CacheOptions(), metrics: Metrics | None = None) -> None:
        self.prefix = prefix
        self.metrics = metrics if metrics is not None else Metrics.disabled()
        self.store = store
        self.queue_for = queue_for
        self.clock = clock
        self.options = options

    async def _store(self, operation: Any) -> Any:
        try:
            return await operation
        except CubedError:
            raise
        except Exception as error:
            raise ServiceUnavailable(f"cache and queue store unavailable: {error}") from None

    def result_key(self, data_source: str, sql: RenderedSql) -> str:
        """Return the cache key of a query's result: (data source, SQL, parameters)."""
        return f"{self.prefix}:result:{digest(data_source, sql.text, list(sql.params))}"

    async def store_result(self, item: QueuedQuery, payload: str) -> None:
        """Keep a finished query's rows as the cache entry it was queued for (called by the
        queue in whichever process ran it)."""
        if item.cache_key is None:
            return
        entry = json.dumps({"time": self.clock.seconds(), "renewal_key": item.renewal_key, "result": payload})
        await self.store.set(item.cache_key, entry, self.options.expire_after)

    async def fetch(self, data_source: str, sql: RenderedSql, keys: list[RefreshKey], mode: str = "stale-if-slow",
                    renew: bool = False, request_id: str = "", priority: int = 0,
                    interaction: str | None = None) -> Fetched:
        """Return the rows of ``sql`` per the cache mode; ContinueWait when they are not ready
        in time and there is nothing (allowed) to answer with meanwhile.

        Each call counts one cache outcome: hit, miss (the query went to the queue), stale (an
        outdated entry answered) or bypass (no-cache, renewQuery)."""
        queue = self.queue_for(data_source)
        now = self.clock.seconds()
        if mode == "no-cache":
            self.metrics.cache_result(self.prefix, data_source, "bypass")
            # A fresh read per interaction; its Continue-wait retries find their own result.
            item = QueuedQuery(key=digest(data_source, sql.text, list(sql.params), "no-cache", interaction),
                               data_source=data_source,
                               sql=sql.text, params=list(sql.params), priority=priority, added_at=now,
                               request_id=request_id, keep_result=interaction != "")
            result = await queue.execute(item)
            return Fetched(result, self.clock.seconds(), False, [])
        values = await self.key_values(keys, renew, request_id, interaction)
        renewal_key = json.dumps(values, separators=(",", ":"))
        cache_key = self.result_key(data_source, sql)
        entry = None if renew else await self._store(self.store.get(cache_key))
        stale: tuple[ResultSet, float] | None = None
        if entry is not None:
            cached = json.loads(entry)
            if cached["renewal_key"] == renewal_key and now - cached["time"] < self.options.max_age:
                self.metrics.cache_result(self.prefix, data_source, "hit")
                return Fetched(decode_result(cached["result"]), cached["time"], False, values)
            stale = (decode_result(cached["result"]), cached["time"])
        key = digest(cache_key, renewal_key, interaction) if renew else digest(cache_key, renewal_key)
        item = QueuedQuery(key=key, data_source=data_source, sql=sql.text, keep_result=not (renew and interaction == ""),
                           params=list(sql.params), priority=priority, added_at=now, request_id=request_id,
                           cache_key=cache_key, renewal_key=renewal_key)
        if stale is not None and mode == "stale-while-revalidate":
            refresh = ensureDeferred(queue.execute(item, wait=0))
            refresh.addErrback(lambda f: None if f.check(ContinueWait) else self.log.warn(
                "background refresh failed: {error}", error=f.getErrorMessage()))
            self.metrics.cache_result(self.prefix, data_source, "stale")
            return Fetched(stale[0], stale[1], True, values)
        outcome = "bypass" if renew else "miss"
        try:
            result = await queue.execute(item)
        except ContinueWait:
            if stale is not None and mode == "stale-if-slow":
                self.log.info("slow query: answering the cached result of {at} while it refreshes", at=stale[1])
                outcome = "stale"
                return Fetched(stale[0], stale[1], True, values)
            raise
        finally:
            self.metrics.cache_result(self.prefix, data_source, outcome)
        return Fetched(result, self.clock.seconds(), False, values)

    async def _renew_key(self, queue: QueryQueue, item: QueuedQuery) -> ResultSet | None:
        """Return the renewed value of a due key when the data source has a free slot for it
        (waiting up to Continue wait), or None after queueing it behind the queries that hold
        the slots (it goes on in the background)."""
        waiting, running = await self._store(queue.sizes())
        if waiting == 0 and running < queue.options.concurrency:
            try:
                return await queue.execute(item)
            except ContinueWait:
                return None
        try:
            return await queue.execute(item, wait=0)  # its value if renewed already
        except ContinueWait:
            return None

    async def key_values(self, keys: list[RefreshKey], renew: bool = False, request_id: str = "",
                         interaction: str | None = None) -> list[Any]:
        """Return the current value of each refresh key (``every`` keys from the clock,
        ``sql`` keys from the database at most once per renewal threshold)."""
        now = self.clock.seconds()
        values: list[Any] = []
        for key in keys:
            if key.sql is None:
                assert key.every is not None
                values.append(key.every.value(now))
                continue
            cache_key = f"{self.prefix}:{key.sql_cache_key()}"
            cached = None if renew else await self._store(self.store.get(cache_key))
            stale: Any = _NO_VALUE
            if cached is not None:
                entry = json.loads(cached)
                if now - entry["at"] < key.renewal_threshold:
                    values.append(entry["value"])
                    continue
                stale = entry["value"]
            # One execution per key and renewal period, however many requests ask (a renewQuery
            # interaction reads it afresh).
            period: Any = int(now // key.renewal_threshold)
            if renew:
                period = [period, span_of(request_id) if interaction is None else interaction]
            item = QueuedQuery(key=digest("refresh_key", key.data_source, key.sql.text, list(key.sql.params), period),
                               data_source=key.data_source, sql=key.sql.text, params=list(key.sql.params),
                               added_at=now, request_id=request_id)
            queue = self.queue_for(key.data_source)
            try:
                if stale is _NO_VALUE:
                    result = await queue.execute(item)
                else:
                    result = await self._renew_key(queue, item)
                    if result is None:
                        # Its renewal waits behind other queries: the last value answers now
                        # and the renewal goes on (Cube's renewal of a key in the background).
                        values.append(stale)
                        continue
            except ContinueWait:
                raise
            except CubedError as error:
                # Cube logs refresh-key failures and carries on; the result is then re-read.
                self.log.warn("refresh key of {cube} failed: {error}", cube=key.cube, error=error.message)
                values.append(None)
                continue
            value = result.rows[0][0] if result.rows and result.rows[0] else None
            entry_text = json.dumps({"value": value, "at": self.clock.seconds()}, default=str)
            await self._store(self.store.set(cache_key, entry_text, KEY_VALUE_TTL))
            values.append(json.loads(entry_text)["value"])
        return values
