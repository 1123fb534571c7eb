"""``twistd cubed``: options, and makeService, which builds every part once and wires them.

Start-up fails fast with one line on a bad setting or a broken model; the reactor is not
running yet, so loading the model synchronously here is fine. Stop order (OrderedService):
stop listening, drain in-flight requests, then close the database pools.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from twisted.application import service, strports
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage

from cubed.deferreds import gather
from cubed.errors import ConfigError, ModelError


class Options(usage.Options):
    """Command-line options of ``twistd cubed``; they win over the environment and ``.env``."""

    synopsis = "[--port PORT] [--project-dir DIR] [--demo]"
    optParameters = [
        ["port", "p", None, "Port number or endpoint to listen on (default: $PORT or 4000)."],
        ["listen", None, None, "Full endpoint description, e.g. systemd:domain=INET:index=0."],
        ["project-dir", "d", None, "Project directory holding the model, .env and cube.py (default: .)."],
    ]
    optFlags = [
        ["demo", None, "Serve the bundled demo shop on DuckDB, in dev mode."],
        ["dev", None, "Dev mode (same as CUBEJS_DEV_MODE=true)."],
    ]

    def postOptions(self) -> None:
        """Make twistd log through cubed's observer (text or JSON lines with request ids)."""
        from cubed.logs import install_for_twistd

        if install_for_twistd(self) and self["project-dir"]:
            # The observer reads CUBED_LOG_FORMAT/CUBEJS_LOG_LEVEL from the .env of
            # CUBED_PROJECT_DIR: make that the --project-dir the settings are read from.
            os.environ["CUBED_PROJECT_DIR"] = str(Path(self["project-dir"]).resolve())


class BackendsService(service.Service):
    """Opens the data source drivers on start and closes them on stop."""

    name = "backends"
    log = Logger()

    def __init__(self, drivers: Mapping[str, Any]) -> None:
        self.drivers = dict(drivers)
        self._starts: list[Deferred[Any]] = []

    def startService(self) -> None:
        """Start every driver; failures are logged (queries answer 503 until it recovers)."""
        super().startService()
        for name, driver in self.drivers.items():
            d = maybeDeferred(driver.start)
            d.addErrback(lambda f, n=name: self.log.warn("data source {name} not reachable at start: {error}",
                                                         name=n, error=f.getErrorMessage()))
            self._starts.append(d)

    def started(self) -> Deferred[Any]:
        """Return a Deferred firing once every driver's start attempt has finished."""
        return DeferredList(list(self._starts), consumeErrors=True)

    def stopService(self) -> Any:
        """Return a Deferred firing once every driver is closed."""
        super().stopService()
        return DeferredList([maybeDeferred(d.close) for d in self.drivers.values()], consumeErrors=True)


def _environment(options: Mapping[str, Any]) -> dict[str, str]:
    environ = dict(os.environ)
    if options.get("demo"):
        from cubed.demo import demo_model_dir

        environ["CUBEJS_DEV_MODE"] = "true"
        environ.setdefault("CUBEJS_DB_TYPE", "duckdb")
        environ.setdefault("CUBEJS_DB_DUCKDB_DATABASE_PATH", str(Path("var/demo.duckdb").resolve()))
        environ["CUBEJS_SCHEMA_PATH"] = str(demo_model_dir())
    return environ


@dataclass
class CubedServer:
    """Every part of one server, built once: the root service (backends, and listeners once
    added), the site, the API and what it runs on."""

    settings: Any
    root: Any
    site: Any
    api: Any
    registry: Any
    orchestrators: Any
    drivers: dict[str, Any]
    backends: BackendsService
    refresher: Any = None
    worker: Any = None
    metrics: Any = None
    tenants: Any = None


def build_server(settings: Any, reactor: Any) -> CubedServer:
    """Return a CubedServer for ``settings`` with its model loaded; nothing listens yet.

    Raises ConfigError or ModelError when the settings or the model are broken.
    """
    from cubed.api.app import CubedApi
    from cubed.api.auth import Authenticator
    from cubed.api.draining import DrainingSite, OrderedService
    from cubed.api.gateway import Gateway
    from cubed.api.health import CachedProbe
    from cubed.drivers.factory import make_driver
    from cubed.model.registry import ModelRegistry
    from cubed.orchestrator.refresh import RefreshScheduler, RefreshWorker, refresh_orphaned_timeout
    from cubed.orchestrator.registry import Orchestrators
    from cubed.hooks import load_hooks
    from cubed.metrics import Metrics
    from cubed.orchestrator.setup import make_store, queue_options
    from cubed.tenancy import Tenants

    metrics = Metrics.from_settings(settings)
    drivers = {ds.name: make_driver(ds, reactor) for ds in settings.data_sources}
    registry = ModelRegistry(settings.resolved_schema_path,
                             lambda name: drivers[name].dialect, lambda name: drivers[name].db_type, reactor,
                             settings.pre_aggregations_schema_name, metrics=metrics)
    registry.load_now()
    store = make_store(settings, reactor)
    orchestrators = Orchestrators(store, store, drivers, queue_options(settings, drivers), reactor,
                                  rollup_only=settings.rollup_only, metrics=metrics)
    metrics.watch(orchestrators)
    hooks = load_hooks(settings.project_dir)
    tenants = Tenants(settings, hooks, registry, orchestrators, make_driver, reactor)
    default_driver = drivers[settings.default_data_source.name]

    async def test_connections(opened: list[Any]) -> None:
        # Concurrently (one slow tenant does not use up the probe's time), failing with the first error.
        await gather(maybeDeferred(d.test_connection) for d in opened)
        await orchestrators.ping()

    # With driver_factory every query goes to its tenant's databases (opened by the tenant's first
    # request); the configured data sources serve none, so only the tenants' connections count.
    async def ready() -> None:
        # Single tenant: the default data source; multi-tenant: the tenants connected so far.
        await test_connections(tenants.drivers() if hooks.driver_factory is not None else [default_driver])

    async def live() -> None:
        # Cube's /livez: every data source connection already opened (none open: healthy) —
        # without driver_factory the configured data sources, opened at start.
        await test_connections(tenants.drivers() if hooks.driver_factory is not None else list(drivers.values()))

    refresher = RefreshScheduler(tenants, hooks, settings.scheduled_refresh_timezones, metrics=metrics,
                                 build_orphaned_timeout=refresh_orphaned_timeout(settings.orphaned_timeout,
                                                                                 settings.scheduled_refresh_timer))
    api = CubedApi(
        settings=settings,
        gateway=Gateway(settings, tenants, hooks, refresher),
        authenticator=Authenticator(settings),
        readiness=CachedProbe("readiness", ready, reactor),
        liveness=CachedProbe("liveness", live, reactor),
        reactor=reactor,
        hooks=hooks,
        metrics=metrics,
    )
    # cubed reads JSON bodies only; parsing form uploads cost a quarter of a request's CPU.
    site = DrainingSite(api.resource(), parsePOSTFormSubmission=False,
                        max_body_size=settings.max_request_size)
    site.displayTracebacks = False
    # cubed logs one line per request itself (with the request id); no second access log.
    site.log = lambda request: None
    root = OrderedService(site=site)
    root.setName("cubed")
    backends = BackendsService(drivers)
    backends.setServiceParent(root)
    orchestrators.setServiceParent(root)
    tenants.setServiceParent(root)
    worker = None
    if settings.refresh_worker:
        # Started last, so stopped first: a pass never outlives the queues and databases.
        worker = RefreshWorker(refresher, settings.scheduled_refresh_timer, reactor)
        worker.setServiceParent(root)
    return CubedServer(settings=settings, root=root, site=site, api=api, registry=registry,
                       orchestrators=orchestrators, drivers=drivers, backends=backends, refresher=refresher,
                       worker=worker, metrics=metrics, tenants=tenants)


def makeService(options: Mapping[str, Any]) -> service.IService:
    """Return the root service of a cubed server, built from options, environment and ``.env``."""
    from twisted.internet import reactor

    from cubed import systemd
    from cubed.heap import FrozenHeap
    from cubed.model.reload import ModelReloader
    from cubed.config import load_settings

    try:
        settings = load_settings(_environment(options), options.get("project-dir"), options)
        if options.get("demo"):
            from cubed.demo import build_demo_database

            path = settings.default_data_source.duckdb_path
            assert path is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            build_demo_database(path)
        server = build_server(settings, reactor)
    except (ConfigError, ModelError) as error:
        raise SystemExit(f"cubed: {error}") from None
    # Socket-activated (cubed.socket): the socket systemd passed, whatever PORT says.
    listen = systemd.activation_listen(settings.listen)
    try:
        listener = strports.service(listen, server.site)
    except Exception as error:  # e.g. systemd:... without a socket passed by systemd
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if listen.startswith("systemd:") and isinstance(error, (IndexError, KeyError)):
            reason = "no such socket passed by systemd (LISTEN_FDS)"
        raise SystemExit(f"cubed: cannot listen on {listen}: {reason}") from None
    listener.setName("http")
    # sd_notify (Type=notify): READY=1 once the port listens; STOPPING=1 at shutdown.
    notifier = systemd.Notifier.from_environment()
    listener.endpoint = systemd.NotifyingEndpoint(listener.endpoint, lambda port: notifier.ready(
        f"Serving model {server.registry.current.model.version} on {listen}"))
    server.root.add_listener(listener)
    systemd.SystemdService(notifier, reactor).setServiceParent(server.root)
    heap = FrozenHeap(reactor)
    heap.setServiceParent(server.root)
    ModelReloader(server.registry, notifier, reactor, listen, heap, server.tenants).setServiceParent(server.root)
    Logger().info("cubed serving {model} on {listen} ({mode})", model=str(settings.resolved_schema_path),
                  listen=listen, mode="dev mode" if settings.dev_mode else "production")
    return server.root
