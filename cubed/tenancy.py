"""Tenants: which compiled model, orchestrator and databases serve a request.

Without hooks everything is the one standalone model and orchestrator. With ``cube.py``:
``context_to_app_id`` picks the compiled model (one per app id, kept in a bounded LRU, compiled
off the reactor thread with the request context as ``COMPILE_CONTEXT``; ``repository_factory``
gives each app its own model directory); ``context_to_orchestrator_id`` picks the queues and
caches (default: the app id); ``driver_factory`` gives each orchestrator its own databases.
Concurrent first requests of a tenant share one compile and one driver set-up.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from cubed.config import DataSourceSettings, Settings
from cubed.drivers.base import Driver
from cubed.errors import ConfigError, InternalError, ModelError
from cubed.hooks import Hooks, call_hook
from cubed.model.registry import CompiledModel, ModelRegistry, timed_compile
from cubed.orchestrator.orchestrator import DEFAULT_ORCHESTRATOR_ID, Orchestrator
from cubed.orchestrator.registry import Orchestrators

APP_CACHE_SIZE = 250
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
DRIVER_KEYS = {"type": "db_type", "db_type": "db_type", "host": "host", "port": "port", "database": "database",
               "user": "user", "password": "password", "url": "url", "ssl": "ssl", "max_pool": "max_pool",
               "query_timeout": "query_timeout", "concurrency": "concurrency", "duckdb_path": "duckdb_path",
               "database_path": "duckdb_path"}


@dataclass(frozen=True)
class Tenant:
    """What serves one request: its app's compiled model and its orchestrator."""

    app_id: str
    orchestrator_id: str
    compiled: CompiledModel
    orchestrator: Orchestrator


class _SingleFlight:
    """Runs one async job per key at a time; concurrent callers of a key share its result."""

    def __init__(self) -> None:
        self._pending: dict[Any, list[Deferred[Any]]] = {}

    async def run(self, key: Any, job: Callable[[], Awaitable[Any]]) -> Any:
        waiters = self._pending.get(key)
        if waiters is not None:
            waiter: Deferred[Any] = Deferred()
            waiters.append(waiter)
            return await waiter
        self._pending[key] = []
        try:
            result = await job()
        except BaseException as error:
            for waiter in self._pending.pop(key, []):
                waiter.errback(error)
            raise
        for waiter in self._pending.pop(key, []):
            waiter.callback(result)
        return result


def data_source_settings(name: str, value: Any, defaults: DataSourceSettings) -> DataSourceSettings:
    """Return the DataSourceSettings a ``driver_factory`` hook returned (a DataSourceSettings,
    or a dict like ``{"type": "postgres", "host": ..., "database": ...}``)."""
    if isinstance(value, DataSourceSettings):
        return value
    if not isinstance(value, Mapping):
        raise InternalError(f"driver_factory must return a dict of connection settings, got {type(value).__name__}")
    known = {f.name for f in fields(DataSourceSettings)}
    changes: dict[str, Any] = {"name": name}
    for key, raw in value.items():
        target = DRIVER_KEYS.get(key, key)
        if target not in known:
            raise InternalError(f"driver_factory returned an unknown setting '{key}'")
        changes[target] = Path(raw) if target == "duckdb_path" and raw is not None else raw
    return DataSourceSettings(**{**{f.name: getattr(defaults, f.name) for f in fields(DataSourceSettings)}, **changes})


class Tenants(Service):
    """Resolves request contexts to tenants (a service: stopping closes tenant databases)."""

    name = "tenants"
    log = Logger()

    def __init__(self, settings: Settings, hooks: Hooks, registry: ModelRegistry, orchestrators: Orchestrators,
                 make_driver: Callable[[DataSourceSettings, Any], Driver], reactor: Any,
                 app_cache_size: int = APP_CACHE_SIZE) -> None:
        self.settings = settings
        self.hooks = hooks
        self.registry = registry
        self.orchestrators = orchestrators
        self.make_driver = make_driver
        self.reactor = reactor
        self.app_cache_size = app_cache_size
        if hooks.driver_factory is not None and hooks.context_to_orchestrator_id is None \
                and hooks.context_to_app_id is None:
            raise ConfigError("cube.py: driver_factory needs context_to_orchestrator_id (or context_to_app_id): "
                              "without it every tenant would share one set of databases, queues and caches")
        self.default_app_id = settings.extra.get("CUBEJS_APP") or DEFAULT_ORCHESTRATOR_ID
        self._models: OrderedDict[str, CompiledModel] = OrderedDict()
        # Apps whose model is to be compiled again (after SIGHUP); the old one answers until then.
        self._stale: set[str] = set()
        self._compiling = _SingleFlight()
        self._connecting = _SingleFlight()
        self._tenant_drivers: dict[str, dict[str, Driver]] = {}

    async def resolve(self, context: Mapping[str, Any]) -> Tenant:
        """Return the tenant of a request context (``securityContext``, ``requestId``, ...)."""
        hooks = self.hooks
        app_id = self.default_app_id
        if hooks.context_to_app_id is not None:
            app_id = str(await call_hook("context_to_app_id", hooks.context_to_app_id, dict(context)))
        orchestrator_id = app_id if hooks.context_to_app_id is not None else DEFAULT_ORCHESTRATOR_ID
        if hooks.context_to_orchestrator_id is not None:
            orchestrator_id = str(await call_hook("context_to_orchestrator_id", hooks.context_to_orchestrator_id,
                                                  dict(context)))
        orchestrator = await self._orchestrator(orchestrator_id, context)
        compiled = await self._model(app_id, context, orchestrator)
        return Tenant(app_id=app_id, orchestrator_id=orchestrator_id, compiled=compiled, orchestrator=orchestrator)

    async def _orchestrator(self, orchestrator_id: str, context: Mapping[str, Any]) -> Orchestrator:
        if self.hooks.driver_factory is None or orchestrator_id in self._tenant_drivers:
            return self.orchestrators.get(orchestrator_id)

        async def connect() -> Orchestrator:
            drivers: dict[str, Driver] = {}
            for defaults in self.settings.data_sources:
                hook_context = {**context, "dataSource": defaults.name}
                value = await call_hook("driver_factory", self.hooks.driver_factory, hook_context)
                try:
                    drivers[defaults.name] = self.make_driver(data_source_settings(defaults.name, value, defaults),
                                                              self.reactor)
                except ConfigError as error:
                    raise InternalError(f"driver_factory: {error}") from None
            for name, driver in drivers.items():
                try:
                    await driver.start()
                except Exception as error:  # queries answer 503 until it is reachable
                    self.log.warn("tenant {id}: data source {name} not reachable: {error}", id=orchestrator_id,
                                  name=name, error=error)
            self._tenant_drivers[orchestrator_id] = drivers
            return self.orchestrators.get(orchestrator_id, drivers)

        return await self._connecting.run(orchestrator_id, connect)

    async def _model(self, app_id: str, context: Mapping[str, Any], orchestrator: Orchestrator) -> CompiledModel:
        if self.hooks.context_to_app_id is None and self.hooks.repository_factory is None \
                and self.hooks.pre_aggregations_schema is None:
            return self.registry.current
        cached = self._models.get(app_id)
        if cached is not None and app_id not in self._stale:
            self._models.move_to_end(app_id)
            return cached

        async def compile_app() -> CompiledModel:
            directory = self.registry.directory
            if self.hooks.repository_factory is not None:
                found = await call_hook("repository_factory", self.hooks.repository_factory, dict(context))
                path = Path(found["path"] if isinstance(found, Mapping) else found)
                directory = path if path.is_absolute() else (self.settings.project_dir / path)
            drivers = orchestrator.drivers
            schema = self.settings.pre_aggregations_schema_name
            if self.hooks.pre_aggregations_schema is not None:
                schema = str(await call_hook("pre_aggregations_schema", self.hooks.pre_aggregations_schema, dict(context)))
                if not _IDENTIFIER.fullmatch(schema):
                    raise InternalError(f"pre_aggregations_schema must return a plain identifier, got {schema!r}")
            try:
                compiled = await threads.deferToThreadPool(
                    self.reactor, self.reactor.getThreadPool(), timed_compile, self.registry.metrics, "app", directory,
                    lambda ds: drivers[ds].dialect, lambda ds: drivers[ds].db_type, dict(context), schema)
            except ModelError as error:
                self._stale.discard(app_id)
                if cached is not None:
                    self.log.error("app {app}: model reload failed, still serving version {version}: {error}",
                                   app=app_id, version=cached.model.version, error=str(error))
                    return cached
                raise InternalError(f"model of app '{app_id}': {error}") from None
            self._stale.discard(app_id)
            self._models[app_id] = compiled
            while len(self._models) > self.app_cache_size:
                self._models.popitem(last=False)
            self.log.info("app {app}: model {version} compiled from {directory}", app=app_id,
                          version=compiled.model.version, directory=str(directory))
            return compiled

        return await self._compiling.run(app_id, compile_app)

    def reload_models(self) -> None:
        """Have every model compiled per app compiled again on its app's next request (SIGHUP);
        until then, and if the new one is broken, the current one answers. Returns nothing."""
        self._stale = set(self._models)

    def drivers(self) -> list[Driver]:
        """Return the databases of every tenant connected so far (none without driver_factory)."""
        return [driver for drivers in self._tenant_drivers.values() for driver in drivers.values()]

    def stopService(self) -> Deferred[Any]:
        """Close every tenant's databases; fires when closed."""
        super().stopService()
        return DeferredList([maybeDeferred(driver.close) for driver in self.drivers()], consumeErrors=True)
