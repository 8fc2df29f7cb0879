"""Garbage-collector settings for a long-running worker process.

CPython collects its youngest generation every 700 net container allocations.
A worker allocates containers per event (pydantic models, dicts, Faust's event
wrappers) that live until their batch ends, so the default threshold runs a
young collection every hundred events or so, each walking everything of the
batch still alive, and every tenth of them a middle one. Measured in-process on the bench
payloads (docs/PERFORMANCE.md), collections cost 12.6 µs per event of ~60;
with the start-up heap frozen 2.9; with a young threshold above a batch's peak
of live containers, almost nothing. Reference cycles are still collected, later.

>>> import gc
>>> before = gc.get_threshold()
>>> settle_heap(50_000)
>>> gc.get_threshold()[0]
50000
>>> gc.unfreeze(); gc.set_threshold(*before)
"""

from __future__ import annotations

import gc


def settle_heap(young_threshold: int) -> None:
    """Freeze what start-up built and space young collections ``young_threshold`` apart.

    Call once, when the process has built what it keeps for its lifetime
    (the app, models, imports): a full collection no longer walks that heap.
    Those walks paused the worker ~100 ms a few times a minute under load, the
    tail of the change latency. ``young_threshold`` 0 keeps CPython's own.
    """
    gc.collect()
    gc.freeze()
    if young_threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
