"""What the query queue and the result cache keep, and the interface of the stores that keep it.

Two stores implement it: in memory (one process) and Redis (many processes sharing one
queue and cache). Every change that touches several keys is atomic in both. Times are
passed in by the caller (seconds, from the orchestrator's clock), so that queue order,
orphan deadlines and heartbeats are the same numbers in every process and a fake clock
drives the memory store in tests.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

PRIORITY_MIN = -10000
PRIORITY_MAX = 10000


@dataclass(frozen=True)
class QueuedQuery:
    """A query waiting for or holding an execution slot: enough for any process to run it."""

    key: str
    data_source: str
    sql: str
    params: list[Any]
    priority: int = 0
    added_at: float = 0.0
    request_id: str = ""
    cache_key: str | None = None
    renewal_key: str | None = None
    result_ttl: float = 0.0
    # What a pre-aggregation queue runs instead of ``sql`` (a build or a clean-up), as JSON.
    job: dict[str, Any] | None = None
    # False: the result goes to the waiters of this execution only and is not kept for later
    # requests (a no-cache read by a client whose retries cannot be told apart).
    keep_result: bool = True
    # Seconds nobody may ask for this query before it is dropped as an orphan (None: the
    # queue's ``orphaned_timeout``). Refresh-pass builds outlive the refresh interval with it.
    orphaned_timeout: float | None = None

    def score(self) -> float:
        """Return the queue order of this query: higher priority first, then first come.

        Priority takes 1e10 s per step so that the sum stays exact in a double (Redis scores).
        """
        return (PRIORITY_MAX - self.priority) * 1e10 + self.added_at

    def encode(self) -> str:
        """Return the JSON text stored for this query."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> "QueuedQuery":
        """Return the QueuedQuery of a stored JSON text (fields this version does not know,
        written by a newer process sharing the store, are ignored)."""
        data = json.loads(text)
        return cls(**{name: value for name, value in data.items() if name in _FIELDS})


_FIELDS = frozenset(f.name for f in fields(QueuedQuery))


@dataclass(frozen=True)
class Stage:
    """Where a query is: running (since ``started_at``) or waiting at ``position`` (1-based)."""

    active: bool
    started_at: float | None = None
    position: int | None = None

    def as_json(self, now: float) -> dict[str, Any]:
        """Return Cube's ``stage`` object: ``Executing query`` with ``timeElapsed`` (ms) or
        ``#N in queue``."""
        if self.active:
            started = now if self.started_at is None else self.started_at
            return {"stage": "Executing query", "timeElapsed": int(max(0.0, now - started) * 1000)}
        return {"stage": f"#{self.position or 1} in queue"}


@dataclass(frozen=True)
class Expired:
    """Queries to clean up: nobody asked for them in time, or their runner stopped beating."""

    orphaned: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)


class QueueStore(Protocol):
    """Keeps the queues: waiting queries in score order, active ones with their owner and
    heartbeat, orphan deadlines, definitions, and finished results for a grace period."""

    def add(self, queue: str, item: QueuedQuery, orphan_deadline: float) -> Deferred[bool]:
        """Queue ``item`` unless it is queued or running already (then only its orphan
        deadline moves); fire True when it was newly added."""

    def touch(self, queue: str, key: str, orphan_deadline: float) -> Deferred[None]:
        """Move the orphan deadline of a queued or running query."""

    def result(self, queue: str, key: str) -> Deferred[str | None]:
        """Fire with the finished result of ``key`` (a JSON text) while it is kept, else None."""

    def stage(self, queue: str, key: str) -> Deferred[Stage | None]:
        """Fire with where ``key`` is, or None when it is neither waiting nor running."""

    def waiting(self, queue: str, limit: int) -> Deferred[list[str]]:
        """Fire with up to ``limit`` keys waiting (not running), first to run first."""

    def acquire(self, queue: str, key: str, owner: str, concurrency: int, now: float) -> Deferred[QueuedQuery | None]:
        """Atomically make ``key`` active for ``owner`` if it is waiting and fewer than
        ``concurrency`` queries of the queue run; fire with its definition, else None."""

    def heartbeat(self, queue: str, key: str, owner: str, now: float) -> Deferred[bool]:
        """Record that ``owner`` still runs ``key``; fire False when it no longer owns it."""

    def complete(self, queue: str, key: str, owner: str, result: str, keep_for: float) -> Deferred[bool]:
        """If ``owner`` still owns ``key``: keep ``result`` for ``keep_for`` seconds and remove
        the query from every structure, atomically; fire whether it did."""

    def expired(self, queue: str, now: float, stalled_before: float) -> Deferred[Expired]:
        """Fire with the queries whose orphan deadline passed and the running ones whose last
        heartbeat is older than ``stalled_before``."""

    def remove(self, queue: str, key: str) -> Deferred[str | None]:
        """Remove ``key`` from every structure; fire with its owner if it was running."""

    def release(self, queue: str, key: str, owner: str | None) -> Deferred[bool]:
        """Put a running ``key`` back to waiting (its runner stalled or gave up); with an
        ``owner``, only if that owner still holds it."""

    def sizes(self, queue: str) -> Deferred[tuple[int, int]]:
        """Fire with (waiting, running) counts."""

    def subscribe(self, listener: Callable[[str, str], None]) -> Deferred[None]:
        """Call ``listener(queue, key)`` whenever any process completes a query."""

    def ping(self) -> Deferred[None]:
        """Fire when the store answers; fail otherwise."""


class CacheStore(Protocol):
    """Keeps cache entries (JSON texts) with an expiry."""

    def get(self, key: str) -> Deferred[str | None]:
        """Fire with the entry of ``key``, or None."""

    def set(self, key: str, value: str, ttl: float) -> Deferred[None]:
        """Keep ``value`` under ``key`` for ``ttl`` seconds."""

    def delete(self, key: str) -> Deferred[None]:
        """Drop the entry of ``key``."""
