"""The in-process store (``CUBEJS_CACHE_AND_QUEUE_DRIVER=memory``): queues and cache in dicts.

Every method runs to completion on the reactor thread, so each change is atomic. Expiry uses
the injected clock, read lazily. Completion listeners are called synchronously.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed

from cubed.orchestrator.stores import Expired, QueuedQuery, Stage


# Seconds between two sweeps of expired cache entries.
SWEEP_INTERVAL = 60.0


@dataclass
class _Queue:
    definitions: dict[str, QueuedQuery] = field(default_factory=dict)
    waiting: dict[str, float] = field(default_factory=dict)  # key -> score
    active: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (owner, started)
    heartbeats: dict[str, float] = field(default_factory=dict)
    deadlines: dict[str, float] = field(default_factory=dict)  # orphan deadlines
    results: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (result, expires)


class MemoryStore:
    """QueueStore and CacheStore for one process."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._queues: dict[str, _Queue] = {}
        self._cache: dict[str, tuple[str, float]] = {}
        self._next_sweep = 0.0
        self._listeners: list[Callable[[str, str], None]] = []

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    # -- QueueStore ----------------------------------------------------------------------
    def add(self, queue: str, item: QueuedQuery, orphan_deadline: float) -> Deferred[bool]:
        q = self._queue(queue)
        known = item.key in q.waiting or item.key in q.active
        q.deadlines[item.key] = max(orphan_deadline, q.deadlines.get(item.key, 0.0))
        if not known:
            q.definitions[item.key] = item
            q.waiting[item.key] = item.score()
        return succeed(not known)

    def touch(self, queue: str, key: str, orphan_deadline: float) -> Deferred[None]:
        q = self._queue(queue)
        if key in q.waiting or key in q.active:
            q.deadlines[key] = max(orphan_deadline, q.deadlines.get(key, 0.0))
        return succeed(None)

    def result(self, queue: str, key: str) -> Deferred[str | None]:
        q = self._queue(queue)
        kept = q.results.get(key)
        if kept is None:
            return succeed(None)
        if kept[1] <= self.clock.seconds():
            del q.results[key]
            return succeed(None)
        return succeed(kept[0])

    def stage(self, queue: str, key: str) -> Deferred[Stage | None]:
        q = self._queue(queue)
        if key in q.active:
            return succeed(Stage(active=True, started_at=q.active[key][1]))
        if key in q.waiting:
            score = q.waiting[key]
            position = 1 + sum(1 for other in q.waiting.values() if other < score)
            return succeed(Stage(active=False, position=position))
        return succeed(None)

    def waiting(self, queue: str, limit: int) -> Deferred[list[str]]:
        q = self._queue(queue)
        return succeed(sorted(q.waiting, key=q.waiting.__getitem__)[:limit])

    def acquire(self, queue: str, key: str, owner: str, concurrency: int, now: float) -> Deferred[QueuedQuery | None]:
        q = self._queue(queue)
        if key not in q.waiting or len(q.active) >= concurrency or key not in q.definitions:
            return succeed(None)
        del q.waiting[key]
        q.active[key] = (owner, now)
        q.heartbeats[key] = now
        return succeed(q.definitions[key])

    def heartbeat(self, queue: str, key: str, owner: str, now: float) -> Deferred[bool]:
        q = self._queue(queue)
        if q.active.get(key, (None,))[0] != owner:
            return succeed(False)
        q.heartbeats[key] = now
        return succeed(True)

    def complete(self, queue: str, key: str, owner: str, result: str, keep_for: float) -> Deferred[bool]:
        q = self._queue(queue)
        if q.active.get(key, (None,))[0] != owner:
            return succeed(False)
        if keep_for > 0:
            q.results[key] = (result, self.clock.seconds() + keep_for)
        self._forget(q, key)
        for listener in list(self._listeners):
            listener(queue, key)
        return succeed(True)

    def expired(self, queue: str, now: float, stalled_before: float) -> Deferred[Expired]:
        q = self._queue(queue)
        orphaned = [k for k, deadline in q.deadlines.items() if deadline <= now]
        stalled = [k for k, beat in q.heartbeats.items() if beat < stalled_before and k in q.active]
        _drop_expired(q.results, now)
        return succeed(Expired(orphaned=orphaned, stalled=stalled))

    def remove(self, queue: str, key: str) -> Deferred[str | None]:
        q = self._queue(queue)
        owner = q.active.get(key, (None,))[0]
        self._forget(q, key)
        return succeed(owner)

    def release(self, queue: str, key: str, owner: str | None) -> Deferred[bool]:
        q = self._queue(queue)
        holder = q.active.get(key)
        if holder is None or (owner is not None and holder[0] != owner) or key not in q.definitions:
            return succeed(False)
        del q.active[key]
        q.heartbeats.pop(key, None)
        q.waiting[key] = q.definitions[key].score()
        return succeed(True)

    def sizes(self, queue: str) -> Deferred[tuple[int, int]]:
        q = self._queue(queue)
        return succeed((len(q.waiting), len(q.active)))

    def subscribe(self, listener: Callable[[str, str], None]) -> Deferred[None]:
        self._listeners.append(listener)
        return succeed(None)

    def ping(self) -> Deferred[None]:
        return succeed(None)

    @staticmethod
    def _forget(q: _Queue, key: str) -> None:
        for structure in (q.waiting, q.active, q.heartbeats, q.deadlines, q.definitions):
            structure.pop(key, None)

    # -- CacheStore ----------------------------------------------------------------------
    def get(self, key: str) -> Deferred[str | None]:
        entry = self._cache.get(key)
        if entry is None:
            return succeed(None)
        if entry[1] <= self.clock.seconds():
            del self._cache[key]
            return succeed(None)
        return succeed(entry[0])

    def set(self, key: str, value: str, ttl: float) -> Deferred[None]:
        now = self.clock.seconds()
        self._cache[key] = (value, now + ttl)
        if now >= self._next_sweep:
            self.sweep()
        return succeed(None)

    def sweep(self) -> int:
        """Drop every expired cache entry; returns how many were dropped.

        Entries that nobody reads again are otherwise never looked at: without a sweep the
        cache of a long-running process would grow with every distinct query it has seen.
        It runs at most once per ``SWEEP_INTERVAL`` from ``set``, so its cost is amortised.
        """
        now = self.clock.seconds()
        self._next_sweep = now + SWEEP_INTERVAL
        return _drop_expired(self._cache, now)

    def delete(self, key: str) -> Deferred[None]:
        self._cache.pop(key, None)
        return succeed(None)

    def close(self) -> Deferred[None]:
        """Nothing to close in memory; fires at once."""
        return succeed(None)


def _drop_expired(entries: dict[str, tuple[str, float]], now: float) -> int:
    """Delete the ``(value, expires)`` entries expired at ``now``; return how many."""
    expired = [key for key, (_value, expires) in entries.items() if expires <= now]
    for key in expired:
        del entries[key]
    return len(expired)
