"""The event-time low watermark over a worker's input partitions.

Kafka orders messages within a partition, not across partitions or topics:
when a backlog is replayed, one partition may be read days of event time
ahead of another. Judging lateness (or firing deadlines) against the newest
event seen would then reject good events and move customers too early. As in
Flink, progress is the *minimum*, over the partitions the worker owns, of the
newest event time each has delivered. A partition that has delivered nothing
for ``idle_after_s`` seconds of wall time (since it was assigned or last
spoke) *and has nothing pending* (the caller knows the broker's high
watermark) stops holding the others back; while an assigned partition that is
not idle has delivered nothing yet, the watermark is unknown. A silent
partition with a backlog is a slow one, not an idle one: excluding it would
push the watermark past events still waiting to be read.

>>> wm = Watermark(idle_after_s=30)
>>> wm.assign({("clickstream", 0), ("login", 0)}, wall_s=0)
>>> wm.observe("clickstream", 0, ts_ms=5_000, wall_s=1)
>>> wm.value(wall_s=1) is None          # logins not heard from yet
True
>>> wm.observe("login", 0, ts_ms=2_000, wall_s=2)
>>> wm.value(wall_s=2)                  # held back by the slower partition
2000
>>> wm.silent(wall_s=40) == {("clickstream", 0), ("login", 0)}
True
>>> wm.value(wall_s=40, pending={("login", 0)})   # silent but backlogged: still counts
2000
>>> wm.value(wall_s=40)                 # both idle: the newest progress counts
5000
>>> wm.observe("login", 0, ts_ms=3_000, wall_s=41)
>>> wm.value(wall_s=41)                 # never moves backwards...
5000
>>> wm.assign({("clickstream", 0), ("login", 0), ("login", 1)}, wall_s=42)
>>> wm.value(wall_s=42) is None         # ...except after a rebalance adds a partition
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

Partition = tuple[str, int]  # (family, partition number)


@dataclass
class Watermark:
    idle_after_s: float = 30.0
    _newest: dict[Partition, int] = field(default_factory=dict)
    _heard_at: dict[Partition, float] = field(default_factory=dict)
    _last: int | None = None

    def assign(self, partitions: set[Partition], wall_s: float) -> None:
        """The partitions this worker now owns; new ones count as heard from at ``wall_s``."""
        for key in set(self._heard_at) - partitions:
            self._newest.pop(key, None)
            self._heard_at.pop(key, None)
        added = partitions - set(self._heard_at)
        for key in added:
            self._heard_at[key] = wall_s
        if added:
            # A partition taken over in a rebalance may be far behind the ones
            # this worker had: its backlog is not late. Start over from what the
            # partitions deliver (seen in the two-worker fault test: 1943 good
            # events dead-lettered as too_late).
            self._last = None

    def observe(self, family: str, partition: int, ts_ms: int, wall_s: float) -> None:
        key = (family, partition)
        if ts_ms > self._newest.get(key, -(2**62)):
            self._newest[key] = ts_ms
        self._heard_at[key] = wall_s

    def pause(self, seconds: float) -> None:
        """The worker could not read for ``seconds`` (a Redis outage held its batch):
        that time is not the partitions' silence. Without this, every partition not in
        the stalled batch looked idle right after a long stall, the watermark jumped to
        the newest partition's time, and the others' next events were dead-lettered as
        too late (seen with a 2 s idle time across a 6 s Redis Cluster primary outage).

        >>> wm = Watermark(idle_after_s=2)
        >>> wm.assign({("login", 0), ("login", 1)}, wall_s=0)
        >>> wm.observe("login", 0, ts_ms=9_000, wall_s=0)
        >>> wm.observe("login", 1, ts_ms=1_000, wall_s=0)
        >>> wm.pause(6)
        >>> wm.value(wall_s=6)                  # not idle: the worker was away, not the partition
        1000
        """
        for key in self._heard_at:
            self._heard_at[key] += seconds

    def silent(self, wall_s: float) -> set[Partition]:
        """Partitions not heard from for ``idle_after_s``: idle unless they have a backlog."""
        return {key for key, at in self._heard_at.items() if wall_s - at >= self.idle_after_s}

    def value(self, wall_s: float, pending: frozenset[Partition] | set[Partition] = frozenset()) -> int | None:
        """The low watermark (ms), never moving backwards; None while unknown.

        ``pending``: partitions known to have unread messages; never idle.
        """
        current = self._compute(wall_s, pending)
        if current is not None and (self._last is None or current > self._last):
            self._last = current
        return self._last

    def _compute(self, wall_s: float, pending) -> int | None:
        active = [key for key, at in self._heard_at.items() if wall_s - at < self.idle_after_s or key in pending]
        if any(key not in self._newest for key in active):
            return None
        if active:
            return min(self._newest[key] for key in active)
        return max(self._newest.values(), default=None)
