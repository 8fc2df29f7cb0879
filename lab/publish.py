"""Publishing a :class:`~lab.simulate.Simulation` to Kafka, or to a JSONL file that
``segflow produce`` replays. The transport is :mod:`streams.producer`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.simulate import Simulation, event_to_json
from streams.producer import ProduceStats, produce_events
from streams.topics import TOPICS, Topics

__all__ = ["produce_simulation", "write_jsonl"]


def produce_simulation(
    bootstrap: str,
    sim: Simulation,
    topics: Topics = TOPICS,
    rate: float | None = None,
    progress: Callable[[ProduceStats], None] | None = None,
    *,
    ground_truth_path: str | Path | None = None,
    **kwargs: Any,
) -> ProduceStats:
    """Publish a simulation in event-time order, paced to ``rate`` events/s.

    ``ground_truth_path``: where to write :meth:`Simulation.ground_truth_json`
    first (personas, churners' silence times), for scoring the engine later.
    Extra keyword arguments go to :func:`produce_events`.
    """
    if ground_truth_path is not None:
        Path(ground_truth_path).write_bytes(sim.ground_truth_json())
    items = ((family, event.customer_id.encode(), event_to_json(event)) for family, event in sim.events())
    return produce_events(bootstrap, items, topics, rate, progress, **kwargs)


def write_jsonl(sim: Simulation, path: str | Path) -> int:
    """Write every event of ``sim`` as ``{"family": ..., "event": {...}}`` lines; return the count."""
    n = 0
    with open(path, "wb") as out:
        for family, event in sim.events():
            out.write(b'{"family":"' + family.encode() + b'","event":' + event_to_json(event) + b"}\n")
            n += 1
    return n
