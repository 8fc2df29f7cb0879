"""An example campaign system: read ``campaign-triggers`` (or ``segment-changes``) as a subscriber would.

What a real subscriber must do, in a few lines (``segflow subscribe``):

- consume in a Kafka consumer group, so several instances share the partitions
  and a restart continues where the group left off;
- keep only its campaign's triggers (all campaigns share the topic; messages
  are keyed by customer, so one customer's triggers stay in order);
- drop duplicates by ``trigger_id``: segflow publishes at least once, and a
  trigger re-sent after a worker crash has the same id. This example remembers
  ids in memory while it runs; a real system keeps them where it records
  sends (e.g. a unique key in its database);
- treat ``holdout: true`` as "record the exposure, do not contact";
- commit offsets only after handling the triggers (at-least-once again).

:func:`subscribe_changes` (``segflow subscribe --changes``) does the same for the
change stream, where a change's ``seq`` is the one comparison that drops a repeat
or a stale re-send.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from segmenter.campaigns import CampaignTrigger

SEEN_IDS = 100_000  # trigger ids remembered for de-duplication


class _SeenIds:
    """The last ``size`` trigger ids, oldest forgotten first.

    >>> seen = _SeenIds(2)
    >>> [seen.add(i) for i in ("a", "b", "a", "c", "b")]  # "b" was forgotten for "c"
    [True, True, False, True, True]
    """

    def __init__(self, size: int = SEEN_IDS):
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, trigger_id: str) -> bool:
        """Remember ``trigger_id``; False when it was already there (a duplicate)."""
        if trigger_id in self._ids:
            self._ids.move_to_end(trigger_id)
            return False
        self._ids[trigger_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


def subscribe(
    settings,
    campaign: str,
    *,
    group: str | None = None,
    from_beginning: bool = False,
    max_triggers: int | None = None,
    idle_timeout: float | None = None,
    out: Callable[[str], None] = print,
    note: Callable[[str], None] = lambda msg: None,
) -> dict[str, int]:
    """Print ``campaign``'s triggers (JSON, one per line) until stopped; return counts."""
    from kafka.structs import OffsetAndMetadata

    consumer = _group_consumer(
        settings, settings.topics.campaign_triggers, group or f"segflow-campaign-{campaign}", f"segflow-subscribe-{campaign}", from_beginning
    )
    seen = _SeenIds()
    stats = {"received": 0, "treatment": 0, "holdout": 0, "duplicates": 0, "other": 0, "invalid": 0}
    last_trigger = time.monotonic()
    try:
        while max_triggers is None or stats["received"] < max_triggers:
            if idle_timeout is not None and time.monotonic() - last_trigger > idle_timeout:
                break
            batches = consumer.poll(timeout_ms=500)
            offsets = {}
            for tp, records in batches.items():
                for record in records:
                    offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
                    try:
                        trigger = CampaignTrigger.model_validate_json(record.value)
                    except ValueError as exc:
                        stats["invalid"] += 1
                        note(f"skipping a message that is not a trigger ({tp.partition}:{record.offset}): {str(exc)[:200]}")
                        continue
                    if trigger.campaign != campaign:
                        stats["other"] += 1
                        continue
                    if not seen.add(trigger.trigger_id):
                        stats["duplicates"] += 1
                        note(f"duplicate trigger {trigger.trigger_id} dropped")
                        continue
                    out(record.value.decode())
                    stats["received"] += 1
                    stats["holdout" if trigger.holdout else "treatment"] += 1
                    last_trigger = time.monotonic()
                    if max_triggers is not None and stats["received"] >= max_triggers:
                        break
                if max_triggers is not None and stats["received"] >= max_triggers:
                    break
            if offsets:
                consumer.commit(offsets)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return stats


def _group_consumer(settings, topic: str, group: str, client_id: str, from_beginning: bool):
    """A kafka-python consumer in ``group`` on ``topic``; ``from_beginning`` seeks each
    partition to its start the first time it is assigned."""
    from kafka import ConsumerRebalanceListener, KafkaConsumer

    from streams.admin import bootstrap_of
    from streams.kafka_security import kafka_python_config

    session_ms = int(settings.session_timeout_seconds * 1000)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_of(settings.kafka_url),
        group_id=group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(100, min(1000, session_ms // 3)),
        **kafka_python_config(settings),
    )

    class FromBeginning(ConsumerRebalanceListener):
        def __init__(self) -> None:
            self.done: set = set()

        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, assigned):
            fresh = [tp for tp in assigned if tp not in self.done]
            if from_beginning and fresh:
                consumer.seek_to_beginning(*fresh)
            self.done.update(fresh)

    consumer.subscribe([topic], listener=FromBeginning())
    return consumer


def subscribe_changes(
    settings,
    *,
    group: str | None = None,
    from_beginning: bool = False,
    max_changes: int | None = None,
    idle_timeout: float | None = None,
    out: Callable[[str], None] = print,
    note: Callable[[str], None] = lambda msg: None,
) -> dict[str, int]:
    """Print segment changes (JSON, one per line) as a subscriber applies them: per
    partition in offset order, dropping a change whose ``seq`` is not above the last
    one applied for its customer and segmentation (:class:`~streams.change_audit.ChangeFollower`).
    Returns counts, chain breaks and seq gaps included (0 and 0 when the contract holds)."""
    import json

    from kafka.structs import OffsetAndMetadata

    from streams.change_audit import ChangeFollower

    consumer = _group_consumer(settings, settings.topics.segment_changes, group or "segflow-changes", "segflow-subscribe-changes", from_beginning)
    follower = ChangeFollower()
    last = time.monotonic()
    try:
        while max_changes is None or follower.applied < max_changes:
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
            offsets = {}
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
                    change = json.loads(record.value)
                    if follower.apply(change) == "repeat":
                        note(f"change {change['change_id']} (seq {change['seq']}) dropped: not newer than what was applied")
                        continue
                    out(record.value.decode())
                    last = time.monotonic()
            if offsets:
                consumer.commit(offsets)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return follower.summary()
