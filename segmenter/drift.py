"""Drift of the population: how well the clusters fit, and segment shares.

:class:`DriftMonitor` watches two kinds of signal, each with its own River
``drift.ADWIN`` detector (adaptive window; it flags when the mean of the
recent part of the window differs significantly from the older part):

- ``fit:behaviour`` -- the distance (z-space) of each *learned* point to its
  nearest behaviour centroid. When the population's feature distribution
  moves away from where the clusters sit, this distance moves; one stream
  instead of one per feature keeps the number of detectors (and of false
  alarms) small.
- ``share:<segmentation>:<segment>`` -- a 0/1 stream per segment: 1 when an
  evaluation lands in that segment. Its mean is the segment's share of
  evaluations, so a shift in segment shares is a drift of that stream.

Like River's models it is pure (``at_ms`` is given; no clock, no I/O): the
shell (:mod:`streams.engine`) feeds it and records the :class:`DriftEvent` s.
The windows live in memory only; a restarted worker starts new ones.

>>> import random
>>> rng = random.Random(7)
>>> monitor = DriftMonitor({"lifecycle": ("active", "at_risk")}, grace_period=100)
>>> events = []
>>> for i in range(4000):
...     share = 0.2 if i < 2000 else 0.6          # at_risk jumps from 20 % to 60 %
...     seg = "at_risk" if rng.random() < share else "active"
...     events += monitor.update(i, segments={"lifecycle": seg}, distance=rng.gauss(1.0, 0.2))
>>> sorted({e.signal for e in events})
['share:lifecycle:active', 'share:lifecycle:at_risk']
>>> first = min(e.at_ms for e in events)
>>> 2000 <= first < 2300
True
>>> events[0].detail  # doctest: +ELLIPSIS
'mean ... -> ...'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from river import drift

if TYPE_CHECKING:
    from segmenter.config import SegmentationConfig

# Detector settings. ``DELTA`` is ADWIN's significance: with ~15 signals fed
# on every evaluation, River's default 0.002 gave false alarms on stationary
# streams; 0.0002 does not (tests/unit/test_drift.py) and still sees a shift of
# a few percentage points within a few hundred evaluations. ``GRACE_PERIOD``:
# points before a detector may flag (the first evaluations after a start are
# a replay's oldest ones, not a population). ``CLOCK``: ADWIN checks every
# CLOCK points (River's default), which bounds the cost per update.
DELTA = 0.0002
GRACE_PERIOD = 1000
CLOCK = 32
FIT_SIGNAL = "fit:behaviour"


@dataclass(frozen=True)
class DriftEvent:
    """``signal`` drifted at ``at_ms``; ``detail`` says from which mean to which."""

    signal: str
    detail: str
    at_ms: int


class DriftMonitor:
    """One ADWIN per signal; :meth:`update` returns the drifts it detected."""

    def __init__(self, segments_of: Mapping[str, Sequence[str]], *, delta: float = DELTA, grace_period: int = GRACE_PERIOD, clock: int = CLOCK):
        self.segments_of = {name: tuple(segs) for name, segs in segments_of.items()}
        self.delta, self.grace_period, self.clock = delta, grace_period, clock
        self.detectors: dict[str, drift.ADWIN] = {}
        self.n_detected = 0

    @classmethod
    def from_config(cls, config: SegmentationConfig, **kw: Any) -> DriftMonitor:
        """A monitor for every segment of a :class:`~segmenter.config.SegmentationConfig`."""
        from segmenter.config import SEGMENTATIONS

        return cls({name: config.segments_of(name) for name in SEGMENTATIONS}, **kw)

    def _detector(self, signal: str) -> drift.ADWIN:
        d = self.detectors.get(signal)
        if d is None:
            d = self.detectors[signal] = drift.ADWIN(delta=self.delta, clock=self.clock, grace_period=self.grace_period)  # type: ignore[no-untyped-call]  # river: unannotated
        return d

    def _feed(self, signal: str, x: float, at_ms: int, out: list[DriftEvent]) -> None:
        d = self._detector(signal)
        before = d.estimation
        d.update(x)  # type: ignore[no-untyped-call]  # river: unannotated
        if d.drift_detected:
            out.append(DriftEvent(signal, f"mean {before:.4g} -> {d.estimation:.4g}", int(at_ms)))

    def update(self, at_ms: int, *, segments: Mapping[str, str] | None = None, distance: float | None = None) -> list[DriftEvent]:
        """Feed one evaluation: ``segments`` (segmentation -> segment it landed in)
        and, for a learned point, ``distance`` to its nearest centroid.

        Segments the monitor does not know (a config change) are ignored.
        """
        out: list[DriftEvent] = []
        if distance is not None:
            self._feed(FIT_SIGNAL, float(distance), at_ms, out)
        for name, segment in (segments or {}).items():
            known = self.segments_of.get(name, ())
            if segment not in known:
                continue
            for s in known:
                self._feed(f"share:{name}:{s}", 1.0 if s == segment else 0.0, at_ms, out)
        self.n_detected += len(out)
        return out

    def reset(self, prefix: str = "") -> None:
        """Forget the windows of signals starting with ``prefix`` (all by default),
        e.g. ``fit:`` after the clustering was re-seeded."""
        for signal in [s for s in self.detectors if s.startswith(prefix)]:
            del self.detectors[signal]
