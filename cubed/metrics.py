"""Prometheus metrics of one server, served at ``/metrics`` (off the base path).

One ``Metrics`` object is built in ``cubed.service.build_server`` and handed to the parts that
record: the API (requests by route template and status, latency, Continue wait answers), the
orchestrators (result cache outcomes, database queries through a measuring driver, queue sizes
read at scrape time, pre-aggregation builds), the refresh scheduler (passes) and the model
registry and tenants (compile time). It owns its ``CollectorRegistry``: nothing is recorded in
prometheus_client's global registry, so two servers in one process (tests) keep their own
counts. ``Metrics.disabled()`` (``CUBED_METRICS=false``) records nothing.

Labels are bounded: the route template (``/v1/load``, never the URL), the method, the status
code, the orchestrator id, the data source name, and small fixed sets (cache outcome, query
kind, build result, compile trigger).
"""
from __future__ import annotations

import hmac
import time
from typing import Any, Iterable, Mapping, Sequence

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Request and database latencies: a cached answer takes about a millisecond, a slow query minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0)
BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
COMPILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CACHE_OUTCOMES = ("hit", "miss", "stale", "bypass")
#: The first word of a driver query's name (cubed.orchestrator) -> the ``kind`` label.
QUERY_KINDS = {"query": "query", "build": "build", "create": "schema", "schema": "schema", "drop": "drop",
               "pre-aggregation": "tables"}
#: How long a scrape waits for the queue store (a Redis that is down hangs rather than fails).
QUEUE_SIZES_TIMEOUT = 2.0


class Metrics:
    """The metrics of one server and the registry they are exposed from."""

    log = Logger()

    def __init__(self, token: str | None = None, process: bool = True, enabled: bool = True) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.enabled = enabled
        self.token = token
        self.registry = CollectorRegistry(auto_describe=True)
        self._orchestrators: Any = None
        self._requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        if not enabled:
            return
        registry = self.registry
        if process:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.http_requests = Counter(
            "cubed_http_requests", "API requests answered, by route template, method and status code",
            ["route", "method", "status"], registry=registry)
        self.http_duration = Histogram(
            "cubed_http_request_duration_seconds", "Time to answer an API request, by route template",
            ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.continue_waits = Counter(
            "cubed_continue_wait", "API answers that were 'Continue wait' (the query was still queued or "
            "running), by route template", ["route"], registry=registry)
        self.cache_results = Counter(
            "cubed_cache_requests", "Result cache lookups by outcome: hit (a current entry answered), miss "
            "(the query went to the queue), stale (an outdated entry answered while the query refreshes), "
            "bypass (no-cache or renewQuery)", ["orchestrator", "data_source", "result"], registry=registry)
        self.db_duration = Histogram(
            "cubed_database_query_duration_seconds", "Time of one database query run by an orchestrator, by "
            "kind (query: results and refresh keys; build, schema, drop, tables: pre-aggregations)",
            ["orchestrator", "data_source", "kind"], buckets=LATENCY_BUCKETS, registry=registry)
        self.db_errors = Counter(
            "cubed_database_query_errors", "Database queries that failed (cancellations are not errors)",
            ["orchestrator", "data_source", "kind"], registry=registry)
        self.queue_waiting = Gauge(
            "cubed_queue_waiting_queries", "Queries waiting in a queue (read from the queue store at scrape "
            "time: with Redis, the whole fleet's)", ["orchestrator", "data_source", "queue"], registry=registry)
        self.queue_running = Gauge(
            "cubed_queue_running_queries", "Queries running from a queue (read from the queue store at scrape "
            "time: with Redis, the whole fleet's)", ["orchestrator", "data_source", "queue"], registry=registry)
        self.builds = Counter(
            "cubed_pre_aggregation_builds", "Pre-aggregation table builds, by result (success or failure)",
            ["orchestrator", "data_source", "result"], registry=registry)
        self.build_duration = Histogram(
            "cubed_pre_aggregation_build_duration_seconds", "Time to build one pre-aggregation table",
            ["orchestrator", "data_source"], buckets=BUILD_BUCKETS, registry=registry)
        self.refresh_passes = Counter(
            "cubed_refresh_passes", "Refresh passes (scheduled or /v1/run-scheduled-refresh), by result",
            ["result"], registry=registry)
        self.refresh_duration = Histogram(
            "cubed_refresh_pass_duration_seconds", "Time of one refresh pass (builds run after it, on the queues)",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.compile_duration = Histogram(
            "cubed_model_compile_duration_seconds", "Time to load and compile a data model, by trigger (startup, "
            "reload, app: a tenant's model)", ["trigger"], buckets=COMPILE_BUCKETS, registry=registry)
        self.compile_failures = Counter(
            "cubed_model_compile_failures", "Data model compiles that failed, by trigger", ["trigger"],
            registry=registry)

    @classmethod
    def disabled(cls) -> "Metrics":
        """Return a Metrics that records nothing (``CUBED_METRICS=false``, and parts built
        without one)."""
        return cls(enabled=False)

    @classmethod
    def from_settings(cls, settings: Any) -> "Metrics":
        """Return the Metrics of a server's settings (``metrics_enabled``, ``metrics_token``)."""
        if not settings.metrics_enabled:
            return cls.disabled()
        return cls(token=settings.metrics_token)

    # -- recording (each a few microseconds) -------------------------------------------------
    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered API request and its latency; returns nothing."""
        if not self.enabled:
            return
        key = (route, method, status)
        children = self._requests.get(key)
        if children is None:
            children = (self.http_requests.labels(route, method, str(status)), self.http_duration.labels(route))
            self._requests[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def continue_wait(self, route: str) -> None:
        """Count one Continue wait answer; returns nothing."""
        if self.enabled:
            self.continue_waits.labels(route).inc()

    def cache_result(self, orchestrator: str, data_source: str, outcome: str) -> None:
        """Count one result cache lookup (``outcome`` one of CACHE_OUTCOMES); returns nothing."""
        if self.enabled:
            self.cache_results.labels(orchestrator, data_source, outcome).inc()

    def database_query(self, orchestrator: str, data_source: str, kind: str, seconds: float, failed: bool) -> None:
        """Record one finished database query; returns nothing."""
        if not self.enabled:
            return
        self.db_duration.labels(orchestrator, data_source, kind).observe(seconds)
        if failed:
            self.db_errors.labels(orchestrator, data_source, kind).inc()

    def pre_aggregation_build(self, orchestrator: str, data_source: str, seconds: float, failed: bool) -> None:
        """Record one finished pre-aggregation build; returns nothing."""
        if not self.enabled:
            return
        self.builds.labels(orchestrator, data_source, "failure" if failed else "success").inc()
        if not failed:
            self.build_duration.labels(orchestrator, data_source).observe(seconds)

    def refresh_pass(self, seconds: float, failed: bool) -> None:
        """Record one finished refresh pass; returns nothing."""
        if not self.enabled:
            return
        self.refresh_passes.labels("failure" if failed else "success").inc()
        self.refresh_duration.observe(seconds)

    def model_compile(self, trigger: str, seconds: float, failed: bool) -> None:
        """Record one model compile (thread-safe: compiles run in threads); returns nothing."""
        if not self.enabled:
            return
        if failed:
            self.compile_failures.labels(trigger).inc()
        else:
            self.compile_duration.labels(trigger).observe(seconds)

    def measured_drivers(self, orchestrator: str, drivers: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``drivers`` wrapped so that every query they run for ``orchestrator`` is
        timed (the same drivers when disabled)."""
        if not self.enabled:
            return dict(drivers)
        return {name: MeasuredDriver(driver, self, orchestrator, name) for name, driver in drivers.items()}

    # -- exposition --------------------------------------------------------------------------
    def watch(self, orchestrators: Any) -> None:
        """Read queue sizes from ``orchestrators`` (cubed.orchestrator.registry.Orchestrators)
        at each scrape; returns nothing."""
        self._orchestrators = orchestrators

    def authorized(self, header: str | None) -> int | None:
        """Return None when a scrape with this Authorization header may read the metrics, else
        the HTTP status to refuse it with (401 without credentials, 403 with wrong ones)."""
        if not self.token:
            return None
        if not header:
            return 401
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self.token.encode()):
            return 403
        return None

    async def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Return the metrics (Prometheus text, or OpenMetrics when ``accept`` asks for it) and
        their content type, queue sizes read afresh from the store."""
        from prometheus_client.exposition import choose_encoder

        await self._read_queue_sizes()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def _read_queue_sizes(self) -> None:
        if self._orchestrators is None or not self.enabled:
            return
        queues = list(_queues(self._orchestrators.all()))
        reads = []
        for _labels, queue in queues:
            d = Deferred.fromCoroutine(queue.sizes())
            reads.append(d.addTimeout(QUEUE_SIZES_TIMEOUT, self._orchestrators.clock))
        outcomes = await DeferredList(reads, consumeErrors=True) if reads else []
        for (labels, _queue), (succeeded, found) in zip(queues, outcomes):
            if not succeeded:  # the store is down: the last values stay
                self.log.warn("metrics: queue sizes of {queue} not read: {error}", queue="/".join(labels),
                              error=found.getErrorMessage())
                continue
            waiting, running = found
            self.queue_waiting.labels(*labels).set(waiting)
            self.queue_running.labels(*labels).set(running)


def _queues(orchestrators: Iterable[Any]) -> Iterable[tuple[tuple[str, str, str], Any]]:
    """Yield ((orchestrator, data source, queue kind), QueryQueue) of every queue."""
    for orchestrator in orchestrators:
        for name, queue in orchestrator.queues.items():
            yield (orchestrator.orchestrator_id, name, "sql"), queue
        for name, queue in orchestrator.pre_aggregations.queues.items():
            yield (orchestrator.orchestrator_id, name, "pre_aggregations"), queue


class MeasuredDriver:
    """A driver (cubed.drivers.base.Driver) whose queries are timed and their failures counted;
    everything else is the wrapped driver's."""

    def __init__(self, driver: Any, metrics: Metrics, orchestrator: str, data_source: str) -> None:
        self.driver = driver
        self.dialect = driver.dialect
        self.db_type = driver.db_type
        self._metrics = metrics
        self._orchestrator = orchestrator
        self._data_source = data_source

    def execute(self, sql: str, params: Sequence[Any], name: str = "query") -> Deferred[Any]:
        """Return the driver's Deferred result of ``sql``, timed (cancelling it cancels the query)."""
        started = time.perf_counter()
        kind = QUERY_KINDS.get(name.split(" ", 1)[0], "other")
        d = self.driver.execute(sql, params, name=name)

        def finished(outcome: Any) -> Any:
            failed = isinstance(outcome, Failure)
            if failed and outcome.check(CancelledError):
                return outcome
            self._metrics.database_query(self._orchestrator, self._data_source, kind,
                                         time.perf_counter() - started, failed)
            return outcome

        d.addBoth(finished)
        return d

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)
