"""The garbage collector of a long-running server: shorter pauses.

After start-up the process holds hundreds of thousands of objects that live as long as it does
(modules, the compiled model, sqlglot's and DuckDB's tables). CPython's collector walks all of
them in every collection of the oldest generation, and every request waits meanwhile (35-95 ms
measured under load, bench/README.md). ``gc.freeze()`` moves them to a permanent generation the
collector never walks. The thresholds stay CPython's: a first threshold of 50 000 (tried too)
made each young collection long enough to triple the p99 at 16 connections.
"""
from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger


class FrozenHeap(Service):
    """Freezes the heap once the reactor runs, and around model reloads (``thaw`` before,
    ``freeze`` after, so that a replaced model can still be collected)."""

    name = "frozen-heap"
    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def startService(self) -> None:
        """Freeze once start-up is over (the reactor runs); returns nothing."""
        super().startService()
        self.reactor.callWhenRunning(self.freeze)

    def freeze(self) -> int:
        """Collect, then move every live object out of the collector's generations; returns
        how many objects were frozen."""
        gc.collect()
        gc.freeze()
        frozen = gc.get_freeze_count()
        self.log.debug("heap frozen: {frozen} objects outside the collector's generations", frozen=frozen)
        return frozen

    def thaw(self) -> None:
        """Return the frozen objects to the oldest generation (a model about to be replaced
        must be collectable); returns nothing."""
        gc.unfreeze()
