"""SIGHUP reloads the model (``systemctl reload cubed``) without dropping a request."""
from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from cubed.errors import ModelError

if TYPE_CHECKING:
    from cubed.heap import FrozenHeap
    from cubed.model.registry import ModelRegistry
    from cubed.systemd import Notifier
    from cubed.tenancy import Tenants


class ModelReloader(service.Service):
    """SIGHUP (``systemctl reload cubed``) reloads the model: it compiles in a thread while the
    current model keeps answering, then replaces it; a broken model is logged and the current
    one kept. Requests are never interrupted. A SIGHUP during a reload runs one more after it.
    systemd hears RELOADING=1 and READY=1 around each reload (cubed.systemd)."""

    name = "model-reloader"
    log = Logger()

    def __init__(self, registry: ModelRegistry, notifier: Notifier, reactor: Any, listen: str,
                 heap: FrozenHeap | None = None, tenants: Tenants | None = None) -> None:
        self.heap = heap
        self.tenants = tenants
        self.registry = registry
        self.notifier = notifier
        self.reactor = reactor
        self.listen = listen
        self._reloading: Deferred[None] | None = None
        self._again = False
        self._previous_handler: Any = None

    def startService(self) -> None:
        """Handle SIGHUP from now on; returns nothing."""
        super().startService()
        self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self) -> None:
        """Give SIGHUP back to its previous handler; returns nothing."""
        super().stopService()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None

    def _on_sighup(self, signum: int, frame: Any) -> None:
        # A signal handler may not touch the reactor's state: hand the reload over to it.
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Deferred[None]:
        """Reload the model; the Deferred fires (never fails) once it has been taken or refused."""
        if self._reloading is not None:
            self._again = True
            return self._reloading
        self._reloading = ensureDeferred(self._reload())
        return self._reloading

    async def _reload(self) -> None:
        try:
            again = True
            while again:
                self._again = False
                old = self.registry.current.model.version
                self.notifier.reloading(f"Reloading the model from {self.registry.directory}")
                self.log.info("SIGHUP: reloading the model from {directory} (serving version {version})",
                              directory=str(self.registry.directory), version=old)
                if self.heap is not None:
                    self.heap.thaw()  # the model being replaced must stay collectable
                try:
                    compiled = await self.registry.reload()
                except ModelError as error:
                    self.log.error("model reload failed, still serving version {version}: {error}",
                                   version=old, error=str(error))
                except Exception:
                    self.log.failure("model reload failed, still serving version {version}", version=old)
                else:
                    self.log.info("model reloaded: version {old} -> {version} ({cubes} cubes and views)",
                                  old=old, version=compiled.model.version, cubes=len(compiled.model.cubes))
                if self.tenants is not None:
                    # Models compiled per app (context_to_app_id, repository_factory) are
                    # compiled again on their next request; a broken one keeps answering.
                    self.tenants.reload_models()
                if self.heap is not None:
                    self.heap.freeze()
                self.notifier.ready(f"Serving model {self.registry.current.model.version} on {self.listen}")
                again = self._again
        finally:
            self._reloading = None
