"""The compiled model a server answers with: loaded off the reactor thread, compiled once,
swapped atomically on reload (keeping the last good model when the new one is broken), with
a bounded cache of planned SQL per normalized query.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cubed.metrics import Metrics
from cubed.model.compile import ModelCompiler, member_templates
from cubed.model.joins import JoinGraph
from cubed.model.loader import load_directory
from cubed.model.meta import ModelMeta
from cubed.model.schema import Model
from cubed.model.templates import SECURITY_CONTEXT
from cubed.orchestrator.refresh_keys import RefreshKeys
from cubed.query.plan import QueryPlan, QueryPlanner
from cubed.query.types import Query

PLAN_CACHE_SIZE = 10000


@dataclass
class CompiledModel:
    """A model with everything derived from it: join graph, meta, planner, plan cache."""

    model: Model
    joins: JoinGraph
    meta: ModelMeta
    planner: QueryPlanner
    refresh_keys: RefreshKeys
    #: The ``SECURITY_CONTEXT`` paths the model's SQL reads (plans depend on their values only).
    security_paths: tuple[str, ...] = ()
    plan_cache_size: int = PLAN_CACHE_SIZE
    _plans: "OrderedDict[Query, QueryPlan]" = field(default_factory=OrderedDict)

    def plan(self, query: Query, security_context: Mapping[str, Any] | None = None) -> QueryPlan:
        """Return the plan of a normalized query (for a security context when the model's SQL
        reads one), from the cache when planned before."""
        key: Any = query
        if self.uses_security_context:
            key = (query, self.context_key(security_context))
        cached = self._plans.get(key)
        if cached is not None:
            self._plans.move_to_end(key)
            return cached
        plan = self.planner.plan(query, security_context)
        self._plans[key] = plan
        if len(self._plans) > self.plan_cache_size:
            self._plans.popitem(last=False)
        return plan

    @property
    def uses_security_context(self) -> bool:
        """Return whether any SQL of the model reads ``SECURITY_CONTEXT``."""
        return bool(self.security_paths)

    def context_key(self, security_context: Mapping[str, Any] | None) -> str | None:
        """Return what tells two security contexts apart for this model: the values at the
        paths its SQL reads (a missing key as null, which the SQL treats alike), so tokens
        that differ only in other claims (``iat``, ``exp``) share plans; None when it reads none."""
        if not self.security_paths:
            return None
        return json.dumps([_context_value(security_context or {}, path) for path in self.security_paths],
                          sort_keys=True, default=str)

    def plan_from_source(self, query: Query, security_context: Mapping[str, Any] | None = None) -> QueryPlan:
        """Return the plan of a query read from the cubes' own tables, never a rollup (when
        the rollup has nothing to read; rare, so not cached)."""
        return self.planner.plan(query, security_context, rollups=False)


def compile_directory(directory: Path, dialect_for: Callable[[str], str], db_type_for: Callable[[str], str],
                      compile_context: Mapping[str, Any] | None = None,
                      pre_aggregations_schema: str = "prod_pre_aggregations") -> CompiledModel:
    """Return the CompiledModel of a model directory (blocking: run it in a thread), with
    ``{COMPILE_CONTEXT...}`` taken from ``compile_context``, its pre-aggregations built in
    ``pre_aggregations_schema``."""
    model = ModelCompiler(dialect_for).compile(load_directory(directory), compile_context)
    joins = JoinGraph(model)
    return CompiledModel(model=model, joins=joins, meta=ModelMeta(model, joins),
                         planner=QueryPlanner(model, joins, dialect_for, db_type_for, pre_aggregations_schema),
                         refresh_keys=RefreshKeys(model, dialect_for),
                         security_paths=_security_paths(model))


def timed_compile(metrics: Metrics, trigger: str, directory: Path, dialect_for: Callable[[str], str],
                  db_type_for: Callable[[str], str], compile_context: Mapping[str, Any] | None = None,
                  pre_aggregations_schema: str = "prod_pre_aggregations") -> CompiledModel:
    """Return compile_directory(...) of the arguments, its time (or failure) recorded in
    ``metrics`` under ``trigger`` (blocking: run it in a thread)."""
    started = time.perf_counter()
    try:
        compiled = compile_directory(directory, dialect_for, db_type_for, compile_context, pre_aggregations_schema)
    except Exception:
        metrics.model_compile(trigger, time.perf_counter() - started, True)
        raise
    metrics.model_compile(trigger, time.perf_counter() - started, False)
    return compiled


def _security_paths(model: Model) -> tuple[str, ...]:
    """Return the ``SECURITY_CONTEXT`` paths any SQL of the model reads, sorted."""
    paths = {match.group(1)
             for cube in model.cubes.values() for _member, template in member_templates(cube)
             for ref in template.refs if (match := SECURITY_CONTEXT.match(ref.text)) is not None}
    return tuple(sorted(paths))


def _context_value(context: Mapping[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class ModelRegistry:
    """Holds the current compiled model of one model directory."""

    log = Logger()

    def __init__(self, directory: Path, dialect_for: Callable[[str], str], db_type_for: Callable[[str], str],
                 reactor: Any, pre_aggregations_schema: str = "prod_pre_aggregations",
                 metrics: Metrics | None = None) -> None:
        self.directory = directory
        self.metrics = metrics if metrics is not None else Metrics.disabled()
        self.pre_aggregations_schema = pre_aggregations_schema
        self.dialect_for = dialect_for
        self.db_type_for = db_type_for
        self.reactor = reactor
        self._current: CompiledModel | None = None

    @property
    def current(self) -> CompiledModel:
        """Return the model in service (raises if none was loaded yet)."""
        if self._current is None:
            raise RuntimeError("the model has not been loaded")
        return self._current

    def load_now(self) -> CompiledModel:
        """Load and install the model synchronously (start-up, where failing fast is wanted)."""
        compiled = timed_compile(self.metrics, "startup", self.directory, self.dialect_for, self.db_type_for,
                                 pre_aggregations_schema=self.pre_aggregations_schema)
        self._install(compiled)
        return compiled

    def reload(self) -> Deferred[CompiledModel]:
        """Load the model in a thread and install it; on error keep the current one and fail."""
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), timed_compile, self.metrics,
                                      "reload", self.directory, self.dialect_for, self.db_type_for, None,
                                      self.pre_aggregations_schema)
        d.addCallback(self._install)
        return d

    def _install(self, compiled: CompiledModel) -> CompiledModel:
        self._current = compiled
        self.log.info("model {version} loaded from {directory}: {cubes} cubes",
                      version=compiled.model.version, directory=str(self.directory), cubes=len(compiled.model.cubes))
        return compiled
