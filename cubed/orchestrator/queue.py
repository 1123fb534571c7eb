"""The query queue of one data source: identical queries share one execution, at most
``concurrency`` run at once (across every process sharing the store), the rest wait in
priority order; a request waits ``continue_wait`` seconds for its result and otherwise
answers Continue wait with the query's stage while it keeps running.

A query nobody asks for again within ``orphaned_timeout`` (the query's own, else the
queue's) is removed and, if running, cancelled (its database query too); a running query whose process stops sending heartbeats
is put back to waiting for another process. Finished results stay readable by every waiter
for ``result_grace`` seconds (Cube hands a result to its first waiter only); an error is
handed to the waiters of that execution only.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cubed.drivers.base import Column, ResultSet
from cubed.errors import CompileError, ContinueWait, CubedError, DatabaseError, ServiceUnavailable
from cubed.orchestrator.stores import PRIORITY_MAX, PRIORITY_MIN, QueuedQuery, QueueStore

KEPT_FOR_POLLS_MAX = 10000
Executor = Callable[[QueuedQuery], Deferred[ResultSet]]


@dataclass(frozen=True)
class QueueOptions:
    """Timing and size of a queue (seconds)."""

    concurrency: int = 2
    continue_wait: float = 5.0
    execution_timeout: float = 600.0
    orphaned_timeout: float = 120.0
    heartbeat_interval: float = 30.0
    result_grace: float = 60.0
    reconcile_interval: float = 1.0
    poll_interval: float = 0.5


def encode_result(result: ResultSet) -> str:
    """Return the JSON text a finished query is kept as."""
    return json.dumps({"columns": [[c.name, c.kind] for c in result.columns], "rows": result.rows},
                      separators=(",", ":"), default=str)


def encode_error(error: BaseException) -> str:
    """Return the JSON text a failed query is kept as (every waiter gets the same error)."""
    if isinstance(error, DatabaseError):
        kind = "database"
    elif isinstance(error, ServiceUnavailable):
        kind = "unavailable"
    elif isinstance(error, CubedError):
        kind = "user"
    else:
        kind = "internal"
    message = error.message if isinstance(error, CubedError) else f"{type(error).__name__}: {error}"
    return json.dumps({"error": {"kind": kind, "message": message}})


def decode_result(payload: str) -> ResultSet:
    """Return the ResultSet of a kept result, or raise the error it holds."""
    data = json.loads(payload)
    if "error" in data:
        kind, message = data["error"]["kind"], data["error"]["message"]
        if kind == "database":
            raise DatabaseError(message)
        if kind == "unavailable":
            raise ServiceUnavailable(message)
        if kind == "user":
            raise CompileError(message)
        raise DatabaseError(message)
    return ResultSet(tuple(Column(name, kind) for name, kind in data["columns"]), [tuple(row) for row in data["rows"]])


class QueryQueue:
    """The queue of one data source within one orchestrator (``name`` is the store's prefix)."""

    log = Logger()

    def __init__(self, name: str, store: QueueStore, executor: Executor, options: QueueOptions,
                 clock: Any, on_result: Callable[[QueuedQuery, str], Deferred[None]] | None = None) -> None:
        self.name = name
        self.store = store
        self.executor = executor
        self.options = options
        self.clock = clock
        self.on_result = on_result
        self.owner = uuid.uuid4().hex
        self._waiters: dict[str, list[Deferred[str]]] = {}
        self._running: dict[str, Deferred[ResultSet]] = {}
        self._kept_for_polls: set[str] = set()
        self._reconciling = False
        self._again = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self.executions = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Deferred[None]:
        """Subscribe to completions and start the periodic reconcile; fires when subscribed."""
        self._loop.start(self.options.reconcile_interval, now=False)
        return self.store.subscribe(self._completed_elsewhere)

    def stop(self) -> None:
        """Stop reconciling and cancel the queries this process runs."""
        if self._loop.running:
            self._loop.stop()
        for running in list(self._running.values()):
            running.cancel()

    def _tick(self) -> None:
        self.reconcile()
        if self._waiters:
            for key in list(self._waiters):
                d = ensureDeferred(self._check_result(key))
                d.addErrback(lambda f: None)

    # -- the request path ----------------------------------------------------------------
    async def execute(self, item: QueuedQuery, wait: float | None = None) -> ResultSet:
        """Return the result of ``item``, running it once for every concurrent asker; raise
        ContinueWait (with the stage) when it is not done within ``wait`` seconds."""
        if not PRIORITY_MIN <= item.priority <= PRIORITY_MAX:
            raise CompileError(f"Priority should be between {PRIORITY_MIN} and {PRIORITY_MAX}")
        wait = self.options.continue_wait if wait is None else wait
        payload = await self._store(self.store.result(self.name, item.key))
        if payload is not None:
            return decode_result(payload)
        timeout = self.options.orphaned_timeout if item.orphaned_timeout is None else item.orphaned_timeout
        # The stores keep the later deadline: a short-lived asker never shortens a longer one.
        deadline = self.clock.seconds() + timeout
        await self._store(self.store.add(self.name, item, deadline))
        waiter: Deferred[str] = Deferred()
        self._waiters.setdefault(item.key, []).append(waiter)
        waiter.addTimeout(wait, self.clock)
        # The result may have landed between the first look and the registration.
        await self._check_result(item.key)
        self.reconcile()
        try:
            payload = await waiter
        except TimeoutError:
            if wait > 0:
                if len(self._kept_for_polls) >= KEPT_FOR_POLLS_MAX:  # keys run by other processes
                    self._kept_for_polls.clear()
                self._kept_for_polls.add(item.key)
            stage = await self._store(self.store.stage(self.name, item.key))
            if stage is None:
                # Finished (or dropped) in the meantime: one more look before giving up.
                late = await self._store(self.store.result(self.name, item.key))
                if late is not None:
                    return decode_result(late)
                raise ContinueWait({"stage": "#1 in queue"}) from None
            raise ContinueWait(stage.as_json(self.clock.seconds())) from None
        finally:
            waiters = self._waiters.get(item.key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[item.key]
        return decode_result(payload)

    async def _store(self, d: Deferred[Any]) -> Any:
        try:
            return await d
        except CubedError:
            raise
        except Exception as error:
            raise ServiceUnavailable(f"cache and queue store unavailable: {error}") from None

    async def _check_result(self, key: str) -> None:
        if key not in self._waiters:
            return
        payload = await self.store.result(self.name, key)
        if payload is not None:
            self._deliver(key, payload)

    def _deliver(self, key: str, payload: str) -> None:
        for waiter in self._waiters.pop(key, []):
            if not waiter.called:
                waiter.callback(payload)

    def _completed_elsewhere(self, queue: str, key: str) -> None:
        if queue == self.name and key in self._waiters:
            d = ensureDeferred(self._check_result(key))
            d.addErrback(lambda f: self.log.warn("reading result of {key} failed: {error}", key=key,
                                                 error=f.getErrorMessage()))

    # -- reconcile: drop orphans, requeue stalled, start what fits -------------------------
    def reconcile(self) -> None:
        """Run one reconcile pass soon (single flight: a request during a pass runs one more)."""
        if self._reconciling:
            self._again = True
            return
        self._reconciling = True
        d = ensureDeferred(self._reconcile())
        d.addErrback(lambda f: self.log.warn("queue {queue}: reconcile failed: {error}", queue=self.name,
                                             error=f.getErrorMessage()))
        d.addBoth(self._reconciled)

    def _reconciled(self, _: Any) -> None:
        self._reconciling = False
        if self._again:
            self._again = False
            self.reconcile()

    async def _reconcile(self) -> None:
        now = self.clock.seconds()
        expired = await self.store.expired(self.name, now, now - 4 * self.options.heartbeat_interval)
        for key in expired.orphaned:
            owner = await self.store.remove(self.name, key)
            self.log.info("queue {queue}: removing orphaned query {key} ({state})", queue=self.name, key=key[:12],
                          state="running" if owner else "waiting")
            running = self._running.get(key)
            if running is not None:
                running.cancel()
        for key in expired.stalled:
            if key not in self._running and await self.store.release(self.name, key, None):
                self.log.warn("queue {queue}: query {key} stalled (no heartbeat); queued again", queue=self.name,
                              key=key[:12])
        if len(self._running) >= self.options.concurrency:
            return
        for key in await self.store.waiting(self.name, self.options.concurrency):
            item = await self.store.acquire(self.name, key, self.owner, self.options.concurrency, self.clock.seconds())
            if item is not None:
                self._process(item)

    # -- running one query ---------------------------------------------------------------
    def _process(self, item: QueuedQuery) -> None:
        self.executions += 1
        started = self.clock.seconds()
        running = self.executor(item)
        running.addTimeout(self.options.execution_timeout, self.clock)
        self._running[item.key] = running
        beat = LoopingCall(self._heartbeat, item.key, running)
        beat.clock = self.clock
        beat.start(self.options.heartbeat_interval, now=False)

        def finished(outcome: Any) -> Deferred[None]:
            if beat.running:
                beat.stop()
            self._running.pop(item.key, None)
            if isinstance(outcome, Failure):
                if outcome.check(CancelledError):
                    # Dropped as an orphan (or at shutdown): nobody is waiting for it.
                    self.log.info("queue {queue}: query {key} cancelled", queue=self.name, key=item.key[:12])
                    return ensureDeferred(self._after(item, None, False))
                error = outcome.value
                if outcome.check(TimeoutError):
                    minutes = self.options.execution_timeout / 60
                    error = DatabaseError(f"Query execution timeout after {minutes:g} min of waiting")
                return ensureDeferred(self._after(item, encode_error(error), False))
            self.log.debug("queue {queue}: {key} done in {ms:.0f} ms", queue=self.name, key=item.key[:12],
                           ms=(self.clock.seconds() - started) * 1000)
            return ensureDeferred(self._after(item, encode_result(outcome), True))

        running.addBoth(finished)

    async def _after(self, item: QueuedQuery, payload: str | None, succeeded: bool) -> None:
        try:
            if payload is not None:
                # An error reaches the waiters of this execution and is not kept: the next
                # request runs the query again (the cause may be gone), as in Cube.
                # A result not meant to be kept still is when its execution made a client
                # wait (Continue wait): that client's next poll must find it.
                polled = item.key in self._kept_for_polls
                self._kept_for_polls.discard(item.key)
                keep_for = self.options.result_grace if succeeded and (item.keep_result or polled) else 0.0
                kept = await self.store.complete(self.name, item.key, self.owner, payload, keep_for)
                if kept and succeeded and self.on_result is not None:
                    await self.on_result(item, payload)
                # Waiters in this process get the result even if the store lost it.
                self._deliver(item.key, payload)
            else:
                await self.store.remove(self.name, item.key)
        except Exception as error:  # the store is down: waiters will time out and retry
            self.log.warn("queue {queue}: storing the result of {key} failed: {error}", queue=self.name,
                          key=item.key[:12], error=error)
            if payload is not None:
                self._deliver(item.key, payload)
        finally:
            self.reconcile()

    def _heartbeat(self, key: str, running: Deferred[ResultSet]) -> Deferred[None]:
        d = self.store.heartbeat(self.name, key, self.owner, self.clock.seconds())

        def checked(still_ours: bool) -> None:
            if not still_ours and not running.called:
                self.log.info("queue {queue}: {key} was removed elsewhere; cancelling it", queue=self.name, key=key[:12])
                running.cancel()

        d.addCallback(checked)
        d.addErrback(lambda f: self.log.warn("queue {queue}: heartbeat failed: {error}", queue=self.name,
                                             error=f.getErrorMessage()))
        return d

    async def sizes(self) -> tuple[int, int]:
        """Return (waiting, running) counts of this queue in the store."""
        return await self._store(self.store.sizes(self.name))
