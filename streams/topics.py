"""Every Kafka topic segflow reads or writes: the one list docs and CLI read.

>>> TOPICS.family_of(TOPICS.purchases)
'purchase'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from features.keys import partition_of  # noqa: F401  (re-exported: the partitioner is the layout's)


@dataclass(frozen=True)
class Topics:
    """Topic names, optionally prefixed (one cluster, several environments)."""

    prefix: str = ""
    clickstream: str = field(init=False)
    purchases: str = field(init=False)
    logins: str = field(init=False)
    profiles: str = field(init=False)
    segment_changes: str = field(init=False)
    segment_state: str = field(init=False)
    dead_letter: str = field(init=False)
    campaign_triggers: str = field(init=False)
    erasure: str = field(init=False)

    def __post_init__(self) -> None:
        for attr, base in _BASE_NAMES.items():
            object.__setattr__(self, attr, f"{self.prefix}{base}")

    @cached_property
    def by_family(self) -> dict[str, str]:
        """Event family -> input topic."""
        return {"clickstream": self.clickstream, "purchase": self.purchases, "login": self.logins, "profile": self.profiles}

    @cached_property
    def _family_by_topic(self) -> dict[str, str]:
        return {topic: family for family, topic in self.by_family.items()}

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the worker consumes: the event topics and the erasure requests (ordered
        with a customer's events: same key, same partition)."""
        return (*self.by_family.values(), self.erasure)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.segment_changes, self.segment_state, self.dead_letter, self.campaign_triggers)

    def config_of(self, topic: str) -> dict[str, str]:
        """Topic configs segflow creates a topic with (the state topic is compacted)."""
        return {"cleanup.policy": "compact"} if topic == self.segment_state else {}

    def family_of(self, topic: str) -> str | None:
        return self._family_by_topic.get(topic)

    def describe(self) -> list[tuple[str, str]]:
        """(topic, what it carries), for `segflow topics` and docs."""
        return [(getattr(self, attr), _PURPOSE[attr]) for attr in _BASE_NAMES]


_BASE_NAMES = {
    "clickstream": "clickstream",
    "purchases": "purchases",
    "logins": "logins",
    "profiles": "profiles",
    "segment_changes": "segment-changes",
    "segment_state": "segment-state",
    "dead_letter": "segflow-deadletter",
    "campaign_triggers": "campaign-triggers",
    "erasure": "segflow-erasure",
}

_PURPOSE = {
    "clickstream": "input: session_start, page_view, search, add_to_cart, remove_from_cart, checkout_started",
    "purchases": "input: completed orders",
    "logins": "input: login attempts (success or failure)",
    "profiles": "input: profile updates (traits: birth year, country, region, plan, signup channel, marketing consent), keyed by customer id; last writer wins per trait in event time",
    "segment_changes": "output: one message per segment change (see `segflow schemas`), in seq order per customer",
    "segment_state": "output, compacted: each customer's current segment per segmentation (key [customer_id, segmentation]); a new subscriber starts here",
    "dead_letter": "output: rejected input, original bytes as value, reason in headers",
    "campaign_triggers": "output: campaign triggers routed from segment changes",
    "erasure": "input: erasure requests (`segflow forget`), keyed by customer id on the partition of the customer's events; the worker forgets the customer",
}

TOPICS = Topics()
