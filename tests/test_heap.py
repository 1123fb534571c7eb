"""cubed.heap: the heap frozen after start-up and thawed around reloads."""
from __future__ import annotations

import gc
from typing import Any, Callable

from twisted.trial.unittest import TestCase

from cubed.heap import FrozenHeap


class ImmediateReactor:
    """Runs callWhenRunning callbacks at once (the reactor already runs)."""

    def callWhenRunning(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class FrozenHeapTests(TestCase):
    def setUp(self) -> None:
        self.addCleanup(gc.unfreeze)

    def test_frozen_once_running(self) -> None:
        heap = FrozenHeap(ImmediateReactor())
        kept = [object() for _ in range(100)]  # alive at start-up: to be frozen
        heap.startService()
        self.addCleanup(heap.stopService)
        self.assertGreater(gc.get_freeze_count(), len(kept))

    def test_thaw_makes_a_replaced_model_collectable(self) -> None:
        heap = FrozenHeap(ImmediateReactor())
        heap.startService()
        self.addCleanup(heap.stopService)

        class Model:
            pass

        model = Model()
        model.cycle = model  # type: ignore[attr-defined]  # only the cycle collector frees it
        heap.freeze()
        heap.thaw()
        self.assertEqual(gc.get_freeze_count(), 0)
        del model
        gc.collect()
        self.assertFalse([o for o in gc.get_objects() if isinstance(o, Model)])
        heap.freeze()
        self.assertGreater(gc.get_freeze_count(), 0)
