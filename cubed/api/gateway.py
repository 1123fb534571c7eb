"""What the data routes do, apart from HTTP: parse -> plan -> run -> shape Cube's answer.

The HTTP layer (cubed/api/app.py) hands in the raw ``query`` value and the caller's
security context and gets back the JSON-ready body, or a CubedError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.python.failure import Failure

from cubed.config import Settings
from cubed.errors import InternalError, UserError
from cubed.hooks import Hooks, call_hook
from cubed.logs import RequestLogger
from cubed.model.registry import CompiledModel
from cubed.orchestrator.cache import Fetched
from cubed.query.plan import QueryPlan
from cubed.query.request import (expand_query, normalize_query, parse_query_param, pivot_query,
                                 rewrite_input, rewrite_output, unsupported_query_type_message,
                                 validate_post_rewrite)
from cubed.query.results import annotation_for, format_data
from cubed.query.types import Query
from cubed.tenancy import Tenant, Tenants

REGULAR = "regularQuery"


@dataclass(frozen=True)
class RequestContext:
    """Who is asking and how to log it; ``hooks_context`` is the dict hooks receive
    (``securityContext``, ``authInfo``, ``requestId`` and what ``extend_context`` added)."""

    request_id: str
    security_context: Mapping[str, Any]
    log: RequestLogger
    hooks_context: Mapping[str, Any] = field(default_factory=dict)


class Gateway:
    """The data API: ``load``, ``sql``, ``dry_run``, ``meta``."""

    def __init__(self, settings: Settings, tenants: Tenants, hooks: Hooks) -> None:
        self.settings = settings
        self.tenants = tenants
        self.hooks = hooks

    @property
    def show_hidden(self) -> bool:
        """Return whether hidden members are shown (dev mode, as Cube does)."""
        return self.settings.dev_mode

    async def _normalized(self, raw: Any, context: RequestContext) -> tuple[str, list[Query]]:
        query_type, queries = expand_query(parse_query_param(raw), self.settings)
        if self.hooks.query_rewrite is not None:
            queries = [await self._rewrite(query, context) for query in queries]
        return query_type, queries

    async def _rewrite(self, query: Query, context: RequestContext) -> Query:
        """Return ``query`` as the ``query_rewrite`` hook changes it (validated again)."""
        assert self.hooks.query_rewrite is not None
        rewritten = await call_hook("query_rewrite", self.hooks.query_rewrite, rewrite_input(query),
                                    dict(context.hooks_context))
        if rewritten is None:
            raise InternalError("queryTransformer returned null query. Please check your queryTransformer implementation")
        normalized, _limit = normalize_query(rewrite_output(rewritten), self.settings, cache_mode=query.cache_mode)
        return validate_post_rewrite(normalized)

    async def _plans(self, queries: list[Query], context: RequestContext) -> tuple[Tenant, list[QueryPlan]]:
        tenant = await self.tenants.resolve(context.hooks_context)
        return tenant, [tenant.compiled.plan(q, context.security_context) for q in queries]

    async def load(self, raw: Any, query_type_param: str | None, context: RequestContext) -> dict[str, Any]:
        """Return the ``/v1/load`` body for a raw query (object, array, or JSON text)."""
        query_type, queries = await self._normalized(raw, context)
        tenant, plans = await self._plans(queries, context)
        context.log.debug("load: {count} quer{y}, type {query_type}", count=len(plans),
                          y="y" if len(plans) == 1 else "ies", query_type=query_type)
        if len(plans) == 1:
            results = [await self._run_one(tenant, plans[0], query_type, context)]
        else:
            results = await gatherResults([self._result(tenant, plan, query_type, context) for plan in plans],
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

    def _result(self, tenant: Tenant, plan: QueryPlan, query_type: str, context: RequestContext) -> Any:
        return ensureDeferred(self._run_one(tenant, plan, query_type, context))

    async def _run_one(self, tenant: Tenant, plan: QueryPlan, query_type: str,
                       context: RequestContext) -> dict[str, Any]:
        query = plan.query
        compiled = tenant.compiled
        keys = compiled.refresh_keys.for_cubes(plan.cubes)
        orchestrator = tenant.orchestrator

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

    async def sql(self, raw: Any, context: RequestContext) -> Any:
        """Return the ``/v1/sql`` body: the SQL and what it means, without running it."""
        query_type, queries = await self._normalized(raw, context)
        tenant, plans = await self._plans(queries, context)
        bodies = [{"sql": self._sql_description(tenant.compiled, plan)} for plan in plans]
        return bodies[0] if query_type == REGULAR else bodies

    def _sql_description(self, compiled: CompiledModel, plan: QueryPlan) -> dict[str, Any]:
        return {
            "sql": [plan.sql.display, list(plan.sql.params)],
            "timeDimensionAlias": plan.time_dimension_alias,
            "timeDimensionField": plan.time_dimension_field,
            "order": {item.id: "desc" if item.desc else "asc" for item in plan.order},
            "cacheKeyQueries": [key.cache_key_query() for key in compiled.refresh_keys.for_cubes(plan.cubes)],
            "preAggregations": [],
            "dataSource": plan.data_source,
            "aliasNameToMember": plan.alias_to_member,
            "external": False,
        }

    async def dry_run(self, raw: Any, context: RequestContext) -> dict[str, Any]:
        """Return the ``/v1/dry-run`` body: normalized queries, their order, the pivot query."""
        query_type, queries = await self._normalized(raw, context)
        _tenant, plans = await self._plans(queries, context)
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

    async def meta(self, context: RequestContext) -> dict[str, Any]:
        """Return the ``/v1/meta`` body (of the caller's app's model)."""
        tenant = await self.tenants.resolve(context.hooks_context)
        return tenant.compiled.meta.meta_response(self.show_hidden)


def _first_error(failure: Failure) -> Failure:
    """Unwrap gatherResults' FirstError so the original error reaches the error mapper."""
    if failure.check(FirstError):
        return failure.value.subFailure
    return failure


def iso_time(seconds: float) -> str:
    """Return epoch seconds as Cube's ``lastRefreshTime`` (ISO 8601, milliseconds, ``Z``)."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
