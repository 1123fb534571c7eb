"""The refresh scheduler: one refresh pass re-reads every cube's refresh keys and queues the
builds of every pre-aggregation with ``scheduled_refresh`` whose table is out of date (per
``scheduled_refresh_contexts`` context and per time zone, newest partitions first); the
refresh worker runs a pass every ``CUBEJS_SCHEDULED_REFRESH_TIMER`` seconds from an
APScheduler TwistedScheduler, on the reactor thread, never two at once.

A pass does not wait for builds: they run on the pre-aggregation queues. Each pass renews the
orphan deadline of the builds it finds still queued. Those builds have their own orphan timeout
(``refresh_orphaned_timeout``: an hour as in Cube, or twice the refresh timer, or the queue's
``CUBED_ORPHANED_TIMEOUT`` when longer), so that they outlive the interval between two passes
(of the worker, or of a caller of ``/v1/run-scheduled-refresh`` every few minutes) and a build
running longer than the queue's timeout is not cancelled; builds no pass (and no request) has
asked for within it are dropped, so passes that stop leave nothing behind. Builds a request
starts keep the queue's timeout.
"""
from __future__ import annotations

import time
import logging
import uuid
from typing import Any, Mapping, Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger

from cubed.errors import CubedError, InternalError, UserError
from cubed.hooks import Hooks, call_hook
from cubed.metrics import Metrics
from cubed.orchestrator.preaggregations import REFRESH_ORPHANED_TIMEOUT, RefreshProgress, TargetState
from cubed.orchestrator.stores import PRIORITY_MIN


SCHEDULER_LOGGER = "cubed.refresh.apscheduler"


def refresh_orphaned_timeout(orphaned_timeout: float, timer: float) -> float:
    """Return the orphan timeout of builds a refresh pass queues: at least an hour, twice the
    refresh timer (a pass may start late or be skipped once), and never below the queue's."""
    return max(orphaned_timeout, 2 * timer, REFRESH_ORPHANED_TIMEOUT)


class _TwistedHandler(logging.Handler):
    """Passes APScheduler's standard-library records to twisted.logger (errors only: its
    warnings repeat what the worker logs itself, e.g. a skipped pass)."""

    log = Logger(namespace=SCHEDULER_LOGGER)

    def emit(self, record: logging.LogRecord) -> None:
        self.log.error("{message}", message=self.format(record))


def _scheduler_logger() -> logging.Logger:
    """Return the standard-library logger APScheduler writes to, forwarding to twisted.logger."""
    logger = logging.getLogger(SCHEDULER_LOGGER)
    logger.propagate = False
    logger.setLevel(logging.ERROR)
    if not any(isinstance(h, _TwistedHandler) for h in logger.handlers):
        logger.addHandler(_TwistedHandler())
    return logger


class RefreshScheduler:
    """Runs refresh passes for every tenant the ``scheduled_refresh_contexts`` hook names (the
    default tenant without it)."""

    log = Logger()

    def __init__(self, tenants: Any, hooks: Hooks, timezones: Sequence[str], metrics: Metrics | None = None,
                 build_orphaned_timeout: float = REFRESH_ORPHANED_TIMEOUT) -> None:
        self.tenants = tenants
        self.hooks = hooks
        self.timezones = tuple(timezones)
        self.metrics = metrics if metrics is not None else Metrics.disabled()
        self.build_orphaned_timeout = build_orphaned_timeout
        self.passes = 0

    async def contexts(self) -> list[Mapping[str, Any]]:
        """Return the request contexts a pass refreshes (``[{}]`` without the hook)."""
        if self.hooks.scheduled_refresh_contexts is None:
            return [{}]
        found = await call_hook("scheduled_refresh_contexts", self.hooks.scheduled_refresh_contexts)
        if not isinstance(found, (list, tuple)) or not all(isinstance(c, Mapping) for c in found):
            raise InternalError("scheduled_refresh_contexts must return a list of contexts "
                                "(dicts like {'securityContext': {...}})")
        return [dict(c) for c in found]

    async def context_timezones(self, context: Mapping[str, Any]) -> tuple[str, ...]:
        """Return the time zones a pass builds for one context: what the
        ``scheduled_refresh_time_zones`` hook returns for it, else CUBEJS_SCHEDULED_REFRESH_TIMEZONES."""
        hook = self.hooks.scheduled_refresh_time_zones
        if hook is None:
            return self.timezones
        found = await call_hook("scheduled_refresh_time_zones", hook, context)
        if not isinstance(found, (list, tuple)) or not found or not all(isinstance(z, str) for z in found):
            raise InternalError("scheduled_refresh_time_zones must return a non-empty list of time zone names")
        try:
            return querying_timezones({"timezones": list(found)}, self.timezones)
        except UserError as error:
            raise InternalError(f"scheduled_refresh_time_zones: {error}") from None

    async def run_pass(self, timezones: Sequence[str] | None = None,
                       contexts: list[Mapping[str, Any]] | None = None) -> RefreshProgress:
        """Run one pass; return the state of every pre-aggregation table it looked at."""
        self.passes += 1
        started = time.monotonic()
        try:
            progress = await self._run_pass(timezones, contexts)
        except CancelledError:  # the worker stopped: not a failed pass
            raise
        except Exception:
            self.metrics.refresh_pass(time.monotonic() - started, True)
            raise
        self.metrics.refresh_pass(time.monotonic() - started, False)
        return progress

    async def _run_pass(self, timezones: Sequence[str] | None,
                        contexts: list[Mapping[str, Any]] | None) -> RefreshProgress:
        request_id = f"scheduler-{uuid.uuid4()}-span-1"  # one interaction: keys are read afresh once
        states: list[TargetState] = []
        for context in contexts if contexts is not None else await self.contexts():
            hooks_context = {"securityContext": {}, **context, "requestId": request_id}
            zones = tuple(timezones) if timezones else await self.context_timezones(hooks_context)
            tenant = await self.tenants.resolve(hooks_context)
            compiled = tenant.compiled
            orchestrator = tenant.orchestrator
            cube_keys = list(compiled.refresh_keys.keys.values())
            await orchestrator.cache.key_values(cube_keys, True, request_id)
            loader = orchestrator.pre_aggregations
            for pre_aggregation in compiled.model.pre_aggregations.values():
                if not pre_aggregation.scheduled_refresh:
                    continue
                for zone in zones:
                    targets = await loader.targets(compiled, pre_aggregation, zone, None, True, request_id,
                                                   hooks_context["securityContext"])
                    for index, target in enumerate(reversed(targets)):  # newest partition first
                        priority = max(PRIORITY_MIN, -1 - index)
                        states.append(await loader.refresh_target(target, priority, request_id,
                                                                  self.build_orphaned_timeout))
        progress = RefreshProgress(tuple(states))
        self.log.info("refresh pass: {done} of {total} pre-aggregation tables current, {queued} queued, "
                      "{running} building, {failed} failed", **progress.as_json())
        for state in states:
            if state.state == "failed":
                self.log.warn("refresh of {table} failed: {error}", table=state.target.qualified, error=state.error)
        return progress


def querying_timezones(options: Any, default: Sequence[str]) -> tuple[str, ...]:
    """Return the time zones of a ``queryingOptions`` value (``timezone`` or ``timezones``)."""
    from cubed.query.plan import IANA_ZONES

    if options is None:
        return tuple(default)
    if not isinstance(options, Mapping):
        raise UserError("queryingOptions must be an object")
    zones: list[str] = []
    if options.get("timezones") is not None:
        if not isinstance(options["timezones"], list) or not all(isinstance(z, str) for z in options["timezones"]):
            raise UserError("queryingOptions.timezones must be an array of time zone names")
        zones = list(options["timezones"])
    elif options.get("timezone") is not None:
        if not isinstance(options["timezone"], str):
            raise UserError("queryingOptions.timezone must be a time zone name")
        zones = [options["timezone"]]
    for zone in zones:
        if zone not in IANA_ZONES:
            raise UserError(f"Invalid time zone: {zone}")
    return tuple(zones) or tuple(default)


class RefreshWorker(Service):
    """The refresh loop (``CUBEJS_REFRESH_WORKER``): an APScheduler TwistedScheduler job every
    ``interval`` seconds running a pass on the reactor thread, one at a time. Stopping it
    (SIGTERM) stops the schedule and abandons the pass in progress; builds already running
    stop with the queues."""

    name = "refresh-worker"
    log = Logger()

    def __init__(self, scheduler: RefreshScheduler, interval: float, reactor: Any) -> None:
        self.scheduler = scheduler
        self.interval = interval
        self.reactor = reactor
        self.skipped = 0
        self._apscheduler: Any = None
        self._current: Deferred[Any] | None = None

    def startService(self) -> None:
        """Start the schedule (first pass right away); returns nothing."""
        super().startService()
        # Imported here: APScheduler's Twisted module installs the default reactor on import.
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES
        from apscheduler.executors.base import BaseExecutor, run_coroutine_job
        from apscheduler.schedulers.twisted import TwistedScheduler

        worker = self

        class ReactorExecutor(BaseExecutor):  # type: ignore[misc]
            """Runs coroutine jobs on the reactor thread (the default runs them in threads)."""

            def _do_submit_job(self, job: Any, run_times: Any) -> None:
                d = ensureDeferred(run_coroutine_job(job, job._jobstore_alias, run_times, SCHEDULER_LOGGER))
                worker._current = d
                d.addCallbacks(lambda events: self._run_job_success(job.id, events),
                               lambda f: self._run_job_error(job.id, f.value, f.getTracebackObject()))

        self._apscheduler = TwistedScheduler(reactor=self.reactor, timezone="UTC", logger=_scheduler_logger(),
                                             executors={"default": ReactorExecutor()})
        self._apscheduler.add_listener(self._missed, EVENT_JOB_MAX_INSTANCES)
        self._apscheduler.add_listener(self._failed, EVENT_JOB_ERROR)
        from datetime import datetime, timezone

        self._apscheduler.add_job(self._pass, "interval", seconds=self.interval, id="scheduled-refresh",
                                  max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc),
                                  misfire_grace_time=None)
        self._apscheduler.start()
        self.log.info("refresh worker: a pass every {interval} s", interval=self.interval)

    async def _pass(self) -> None:
        try:
            await self.scheduler.run_pass()
        except CancelledError:
            return  # stopped with the service
        except CubedError as error:
            self.log.warn("Refresh Scheduler Error: {error}", error=error.message)

    def _missed(self, event: Any) -> None:
        self.skipped += 1
        self.log.warn("Refresh Scheduler Interval Error: previous pass was not finished within the "
                      "{interval} s interval; this one is skipped", interval=self.interval)

    def _failed(self, event: Any) -> None:
        if isinstance(event.exception, CancelledError):
            return  # the pass stopped with the service
        self.log.error("Refresh Scheduler Error: {error!r}", error=event.exception)

    def stopService(self) -> None:
        """Stop the schedule and the pass in progress; returns nothing."""
        super().stopService()
        if self._apscheduler is not None and self._apscheduler.running:
            self._apscheduler.shutdown(wait=False)
        if self._current is not None and not self._current.called:
            self._current.cancel()
        self.log.info("refresh worker stopped")
