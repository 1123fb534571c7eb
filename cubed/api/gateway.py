"""What the data routes do, apart from HTTP: parse -> plan -> run -> shape Cube's answer.

The HTTP layer (cubed/api/app.py) hands in the raw ``query`` value and the caller's
security context and gets back the JSON-ready body, or a CubedError.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from twisted.internet.defer import Deferred, ensureDeferred

from cubed.config import Settings
from cubed.deferreds import gather
from cubed.errors import ContinueWait, InternalError, UserError
from cubed.hooks import Hooks, call_hook
from cubed.logs import RequestLogger
from cubed.orchestrator.cache import Fetched
from cubed.orchestrator.partitions import parse_table_name
from cubed.query.plan import QueryPlan
from cubed.query.request import (check_blending_time_dimension, expand_query, normalize_query,
                                 parse_query_param, pivot_query, rewrite_input, rewrite_output,
                                 unsupported_query_type_message, validate_post_rewrite)
from cubed.query.results import annotation_for, format_data
from cubed.query.types import Query
from cubed.tenancy import Tenant, Tenants

REGULAR = "regularQuery"
ROLLUP_ONLY_NO_MATCH = ("No pre-aggregation table has been built for this query yet. "
                        "Please check your refresh worker configuration if it persists.")


@dataclass(frozen=True)
class RequestContext:
    """Who is asking and how to log it; ``hooks_context`` is the dict hooks receive
    (``securityContext``, ``authInfo``, ``requestId`` and what ``extend_context`` added)."""

    request_id: str
    security_context: Mapping[str, Any]
    log: RequestLogger
    hooks_context: Mapping[str, Any] = field(default_factory=dict)
    # The client's interaction (None: the span of its request id; "" when it sent no id).
    interaction: str | None = None


class Gateway:
    """The data API: ``load``, ``sql``, ``dry_run``, ``meta``."""

    def __init__(self, settings: Settings, tenants: Tenants, hooks: Hooks, refresher: Any = None) -> None:
        self.settings = settings
        self.tenants = tenants
        self.hooks = hooks
        self.refresher = refresher

    @property
    def show_hidden(self) -> bool:
        """Return whether hidden members are shown (dev mode, as Cube does)."""
        return self.settings.dev_mode

    async def _normalized(self, raw: Any, context: RequestContext,
                          cache_mode: str | None = None) -> tuple[str, list[Query]]:
        query_type, queries = expand_query(parse_query_param(raw), self.settings, cache_mode=cache_mode)
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

    async def load(self, raw: Any, query_type_param: str | None, context: RequestContext,
                   cache_mode: str | None = None) -> dict[str, Any]:
        """Return the ``/v1/load`` body for a raw query (object, array, or JSON text), read per
        the request's ``cache`` parameter when given (else the query's own)."""
        query_type, queries = await self._normalized(raw, context, cache_mode)
        tenant, plans = await self._plans(queries, context)
        context.log.debug("load: {count} quer{y}, type {query_type}", count=len(plans),
                          y="y" if len(plans) == 1 else "ies", query_type=query_type)
        if len(plans) == 1:
            results = [await self._run_one(tenant, plans[0], query_type, context)]
        else:
            results = await gather(self._result(tenant, plan, query_type, context) for plan in plans)
        if query_type == "blendingQuery":
            for query, result in zip(queries, results):
                data = result["data"]
                if data["dataset"] if isinstance(data, dict) else data:
                    check_blending_time_dimension(query)
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
        sql, total_sql = plan.sql, plan.total_sql
        used: dict[str, Any] = {}
        if plan.rollup is None and orchestrator.pre_aggregations.rollup_only:
            raise UserError(ROLLUP_ONLY_NO_MATCH)
        if plan.rollup is not None:
            tables = await orchestrator.pre_aggregations.tables_for(compiled, plan.rollup, context.request_id,
                                                                    context.security_context)
            if tables is None:
                # The rollup has no rows to partition yet: the cube's own tables answer.
                plan = compiled.plan_from_source(query, context.security_context)
                sql, total_sql = plan.sql, plan.total_sql
            else:
                # Results are cached under the physical tables' names: a rebuilt table is a
                # new entry, so the cubes' refresh keys are not needed.
                sql, total_sql = plan.rollup.render([physical for _logical, physical in tables])
                keys = []
                used = {logical: {"targetTableName": physical, "lastUpdatedAt": built_at(physical)}
                        for logical, physical in tables}

        def fetch(sql: Any) -> Deferred[Fetched]:
            return ensureDeferred(orchestrator.fetch(plan.data_source, sql, keys, query.cache_mode, query.renew_query,
                                                     context.request_id, interaction=context.interaction))

        if total_sql is None:
            fetched: list[Fetched] = [await fetch(sql)]
        else:
            fetched = await gather([fetch(sql), fetch(total_sql)])
        main = fetched[0]
        annotation = annotation_for(query, compiled.meta, self.show_hidden)
        data = format_data(plan, main.result.rows, annotation, query_type, query.response_format)
        body: dict[str, Any] = {"query": query.echo, "data": data, "lastRefreshTime": iso_time(main.refreshed_at)}
        if self.settings.dev_mode:
            body.update({"refreshKeyValues": [[{"refresh_key": value} for value in main.refresh_key_values]],
                         "usedPreAggregations": used, "transformedQuery": None, "requestId": context.request_id})
        total = None
        if total_sql is not None:
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
        bodies = [{"sql": self._sql_description(tenant, plan, context)} for plan in plans]
        return bodies[0] if query_type == REGULAR else bodies

    def _sql_description(self, tenant: Tenant, plan: QueryPlan, context: RequestContext) -> dict[str, Any]:
        compiled = tenant.compiled
        body = {
            "sql": [plan.sql.display, list(plan.sql.params)],
            "timeDimensionAlias": plan.time_dimension_alias,
            "timeDimensionField": plan.time_dimension_field,
            "order": {item.id: "desc" if item.desc else "asc" for item in plan.order},
            "cacheKeyQueries": [] if plan.rollup is not None else
            [key.cache_key_query() for key in compiled.refresh_keys.for_cubes(plan.cubes)],
            "preAggregations": [] if plan.rollup is None else
            [tenant.orchestrator.pre_aggregations.describe(compiled, plan.rollup, context.security_context)],
            "dataSource": plan.data_source,
            "aliasNameToMember": plan.alias_to_member,
            "external": False,
        }
        if self.settings.dev_mode:
            # Beyond Cube (its users ask why a rollup is not used): each candidate and why not.
            results = [{"preAggregationId": pre_id, "matched": False, "reason": reason}
                       for pre_id, reason in plan.rollup_reasons.items()]
            if plan.rollup is not None:
                results.append({"preAggregationId": plan.rollup.pre_aggregation.id, "matched": True, "reason": None})
            body["rollupMatchResults"] = results
        return body

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

    async def run_scheduled_refresh(self, querying_options: Any, context: RequestContext) -> dict[str, Any]:
        """Return ``{"finished": true}`` once every pre-aggregation table of the caller's tenant
        is current; Continue wait (with cubed's ``progress``) while builds are queued or running;
        the first build error otherwise."""
        from cubed.orchestrator.refresh import querying_timezones

        if self.refresher is None:
            raise InternalError("the refresh scheduler is not configured")
        options = querying_options
        if isinstance(querying_options, str) and querying_options:
            try:
                options = json.loads(querying_options)
            except ValueError as error:
                raise UserError(f"Unable to decode queryingOptions as JSON, error: {error}") from None
        zones = querying_timezones(options, self.settings.scheduled_refresh_timezones)
        progress = await self.refresher.run_pass(zones, [dict(context.hooks_context)])
        failed = next((s for s in progress.states if s.state == "failed"), None)
        if failed is not None:
            raise UserError(f"Refresh of {failed.target.qualified} failed: {failed.error}")
        if not progress.finished:
            raise ContinueWait(progress=progress.as_json())
        return {"finished": True}

    async def meta(self, context: RequestContext) -> dict[str, Any]:
        """Return the ``/v1/meta`` body (of the caller's app's model)."""
        tenant = await self.tenants.resolve(context.hooks_context)
        return tenant.compiled.meta.meta_response(self.show_hidden)


def built_at(physical: str) -> int | None:
    """Return when a pre-aggregation table was built (epoch ms, from its name)."""
    version = parse_table_name(physical.rpartition(".")[2])
    return int(version.updated_at * 1000) if version is not None else None


def iso_time(seconds: float) -> str:
    """Return epoch seconds as Cube's ``lastRefreshTime`` (ISO 8601, milliseconds, ``Z``)."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
