"""What the data routes do, apart from HTTP: parse -> plan -> run -> shape Cube's answer.

The HTTP layer (cubed/api/app.py) hands in the raw ``query`` value and the caller's
security context and gets back the JSON-ready body, or a CubedError.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.python.failure import Failure

from cubed.config import Settings
from cubed.errors import UserError
from cubed.logs import RequestLogger
from cubed.model.registry import CompiledModel, ModelRegistry
from cubed.orchestrator.cache import Fetched
from cubed.orchestrator.registry import Orchestrators
from cubed.query.plan import QueryPlan
from cubed.query.request import expand_query, parse_query_param, pivot_query, unsupported_query_type_message
from cubed.query.results import annotation_for, format_data
from cubed.query.types import Query

REGULAR = "regularQuery"


@dataclass(frozen=True)
class RequestContext:
    """Who is asking and how to log it."""

    request_id: str
    security_context: Mapping[str, Any]
    log: RequestLogger


class Gateway:
    """The data API: ``load``, ``sql``, ``dry_run``, ``meta``."""

    def __init__(self, settings: Settings, registry: ModelRegistry, orchestrators: Orchestrators) -> None:
        self.settings = settings
        self.registry = registry
        self.orchestrators = orchestrators

    @property
    def show_hidden(self) -> bool:
        """Return whether hidden members are shown (dev mode, as Cube does)."""
        return self.settings.dev_mode

    def _normalized(self, raw: Any) -> tuple[str, list[Query]]:
        return expand_query(parse_query_param(raw), self.settings)

    def _plans(self, queries: list[Query]) -> tuple[CompiledModel, list[QueryPlan]]:
        compiled = self.registry.current
        return compiled, [compiled.plan(q) for q in queries]

    async def load(self, raw: Any, query_type_param: str | None, context: RequestContext) -> dict[str, Any]:
        """Return the ``/v1/load`` body for a raw query (object, array, or JSON text)."""
        query_type, queries = self._normalized(raw)
        compiled, plans = self._plans(queries)
        context.log.debug("load: {count} quer{y}, type {query_type}", count=len(plans),
                          y="y" if len(plans) == 1 else "ies", query_type=query_type)
        if len(plans) == 1:
            results = [await self._run_one(compiled, plans[0], query_type, context)]
        else:
            results = await gatherResults([self._result(compiled, plan, query_type, context) for plan in plans],
                                          consumeErrors=True).addErrback(_first_error)
        if query_type != REGULAR and query_type_param is None:
            raise UserError(unsupported_query_type_message(query_type))
        if query_type_param == "multi":
            pivot = pivot_query(query_type, queries)
            if query_type != "blendingQuery":
                # Cube builds the pivot query by mutating the first normalized query, so the
                # first result echoes it; clients rely on neither, but keep the wire identical.
                results[0] = dict(results[0], query=pivot)
            return {"queryType": query_type, "results": results, "pivotQuery": pivot, "slowQuery": False}
        return results[0]

    def _result(self, compiled: CompiledModel, plan: QueryPlan, query_type: str, context: RequestContext) -> Any:
        return ensureDeferred(self._run_one(compiled, plan, query_type, context))

    async def _run_one(self, compiled: CompiledModel, plan: QueryPlan, query_type: str,
                       context: RequestContext) -> dict[str, Any]:
        query = plan.query
        keys = compiled.refresh_keys.for_cubes(plan.cubes)
        orchestrator = self.orchestrators.for_context(context.security_context)

        def fetch(sql: Any) -> Deferred[Fetched]:
            return ensureDeferred(orchestrator.fetch(plan.data_source, sql, keys, query.cache_mode, query.renew_query,
                                                     context.request_id))

        if plan.total_sql is None:
            fetched: list[Fetched] = [await fetch(plan.sql)]
        else:
            fetched = await gatherResults([fetch(plan.sql), fetch(plan.total_sql)],
                                          consumeErrors=True).addErrback(_first_error)
        main = fetched[0]
        annotation = annotation_for(query, compiled.meta, self.show_hidden)
        data = format_data(plan, main.result.rows, annotation, query_type, query.response_format)
        body: dict[str, Any] = {"query": query.echo, "data": data, "lastRefreshTime": iso_time(main.refreshed_at)}
        if self.settings.dev_mode:
            body.update({"refreshKeyValues": [[{"refresh_key": value} for value in main.refresh_key_values]],
                         "usedPreAggregations": {}, "transformedQuery": None, "requestId": context.request_id})
        total = None
        if plan.total_sql is not None:
            rows = fetched[1].result.rows
            total = int(rows[0][0]) if rows else 0
        body.update({
            "annotation": annotation,
            "dataSource": plan.data_source,
            "dbType": plan.db_type,
            "external": False,
            "slowQuery": any(f.slow for f in fetched),
            "total": total if query.total else None,
        })
        return body

    def sql(self, raw: Any, context: RequestContext) -> Any:
        """Return the ``/v1/sql`` body: the SQL and what it means, without running it."""
        query_type, queries = self._normalized(raw)
        _compiled, plans = self._plans(queries)
        bodies = [{"sql": self._sql_description(plan)} for plan in plans]
        return bodies[0] if query_type == REGULAR else bodies

    def _sql_description(self, plan: QueryPlan) -> dict[str, Any]:
        return {
            "sql": [plan.sql.display, list(plan.sql.params)],
            "timeDimensionAlias": plan.time_dimension_alias,
            "timeDimensionField": plan.time_dimension_field,
            "order": {item.id: "desc" if item.desc else "asc" for item in plan.order},
            "cacheKeyQueries": [key.cache_key_query() for key in self.registry.current.refresh_keys.for_cubes(plan.cubes)],
            "preAggregations": [],
            "dataSource": plan.data_source,
            "aliasNameToMember": plan.alias_to_member,
            "external": False,
        }

    def dry_run(self, raw: Any, context: RequestContext) -> dict[str, Any]:
        """Return the ``/v1/dry-run`` body: normalized queries, their order, the pivot query."""
        query_type, queries = self._normalized(raw)
        _compiled, plans = self._plans(queries)
        pivot = pivot_query(query_type, queries)
        normalized = [q.echo for q in queries]
        if query_type != "blendingQuery":
            normalized[0] = pivot  # Cube's pivot query is the first normalized query, changed in place
        return {
            "queryType": query_type,
            "normalizedQueries": normalized,
            "queryOrder": [{item.id: "desc" if item.desc else "asc" for item in plan.order} for plan in plans],
            "transformedQueries": [None for _ in plans],
            "pivotQuery": pivot,
        }

    def meta(self, context: RequestContext) -> dict[str, Any]:
        """Return the ``/v1/meta`` body."""
        return self.registry.current.meta.meta_response(self.show_hidden)


def _first_error(failure: Failure) -> Failure:
    """Unwrap gatherResults' FirstError so the original error reaches the error mapper."""
    if failure.check(FirstError):
        return failure.value.subFailure
    return failure


def iso_time(seconds: float) -> str:
    """Return epoch seconds as Cube's ``lastRefreshTime`` (ISO 8601, milliseconds, ``Z``)."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
