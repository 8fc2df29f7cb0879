"""Campaign routing: segment changes in, campaign triggers out (the pure core).

A campaigns file says which segment moves start which campaign: on entering
(or leaving) a segment of one segmentation, optionally only when coming from
(or going to) given segments, optionally only when feature conditions hold
(the same ``{feature, op, value}`` conditions as the segmentation rules, tested
against the features the change carries). :meth:`CampaignConfig.route` turns
one :class:`~segmenter.changes.SegmentChange` into a :class:`TriggerDecision`
per matching campaign; the shell (:mod:`streams.campaign_router`) enforces the
frequency caps in Redis and publishes the triggers.

Everything here is deterministic:

- ``trigger_id`` is a hash of the change id and the campaign, so a trigger
  re-sent after a crash has the same id and subscribers drop the duplicate;
- the holdout (control) arm is a hash of the customer id and the campaign
  against the campaign's ``control_share``: a customer is always in the same
  arm of a campaign, and about ``control_share`` of all customers are held out.

Held-out triggers are published too, with ``holdout: true``, so the campaign
system records the control group's exposure; caps apply to both arms alike
(a held-out trigger consumes cap), so the two arms stay comparable.

>>> from segmenter.changes import SegmentChange
>>> campaigns = parse_campaigns('''
... version: 1
... campaigns:
...   - name: win_back
...     segmentation: lifecycle
...     enter: [at_risk]
...     from: [active, new]
...     when:
...       - {feature: purchases_total, op: ">=", value: 1}
...     control_share: 0.10
...     cap: {max: 1, period: 30d}
...     cooldown: 14d
... ''', "campaigns.yaml")
>>> change = SegmentChange.create(customer_id="c1", segmentation="lifecycle", from_segment="active",
...                               to_segment="at_risk", reason="buyer_silent_14d", model_version=3,
...                               occurred_at_ms=1_767_600_000_000, cause="deadline:1767600000000",
...                               features={"purchases_total": 2.0})
>>> [d] = campaigns.route(change)
>>> d.trigger.campaign, d.trigger.customer_id, d.trigger.to_segment
('win_back', 'c1', 'at_risk')
>>> d.trigger.trigger_id == trigger_id_of(change.change_id, "win_back")
True
>>> d.trigger.holdout == in_holdout("c1", "win_back", 0.10)
True
>>> d.cap_key
'cust:{c1}:camp:win_back'
>>> campaigns.route(change.model_copy(update={"features": {"purchases_total": 0.0}}))
[]
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from segmenter.changes import SegmentChange, datetime_to_ms
from segmenter.config import Condition, SegmentationConfig, _issue, read_config_text, validate_yaml

TRIGGER_SCHEMA_VERSION: Final = 1
CapStatus = Literal["charged", "recharged", "capped"]
DAY_MS = 86_400_000
# Verdicts are remembered per trigger id this long in wall-clock time, so a
# trigger re-sent after a crash (outbox relay) gets its first verdict again.
REMEMBER_MS = 7 * DAY_MS

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"12h"``, ``"30d"`` or ``"2w"``.

    >>> parse_duration("30d"), parse_duration("1.5h"), parse_duration(45)
    (2592000.0, 5400.0, 45.0)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.PydanticCustomError: 'soon' is not a duration: use a number of seconds or e.g. 90s, 15m, 12h, 30d, 2w
    """
    if isinstance(value, bool):
        raise PydanticCustomError("duration", "{value!r} is not a duration", {"value": value})
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise PydanticCustomError("duration", "'{value}' is not a duration: use a number of seconds or e.g. 90s, 15m, 12h, 30d, 2w", {"value": str(value)})


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
_FROZEN = ConfigDict(extra="forbid", frozen=True)
_NAME = r"^[a-z][a-z0-9_]*$"


# -- deterministic ids and arms -------------------------------------------------------


def trigger_id_of(change_id: str, campaign: str) -> str:
    """Deterministic trigger id: 32 hex chars of BLAKE2b over (change id, campaign).

    >>> trigger_id_of("abc", "win_back") == trigger_id_of("abc", "win_back") != trigger_id_of("abc", "vip")
    True
    """
    identity = json.dumps([change_id, campaign], separators=(",", ":"))
    return hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()


def holdout_bucket(customer_id: str, campaign: str) -> float:
    """A number in [0, 1), uniform over customers, fixed per (customer, campaign).

    >>> 0 <= holdout_bucket("c1", "win_back") < 1
    True
    >>> holdout_bucket("c1", "win_back") == holdout_bucket("c1", "win_back")
    True
    """
    identity = json.dumps([customer_id, campaign], separators=(",", ":"))
    digest = hashlib.blake2b(identity.encode(), digest_size=8, person=b"segflow-holdout").digest()
    return int.from_bytes(digest, "big") / 2**64


def in_holdout(customer_id: str, campaign: str, control_share: float) -> bool:
    """Is this customer in the control (held-out) arm of this campaign?

    >>> in_holdout("c1", "win_back", 0.0), in_holdout("c1", "win_back", 1.0)
    (False, True)
    >>> share = sum(in_holdout(f"c{i}", "win_back", 0.1) for i in range(10_000)) / 10_000
    >>> 0.09 < share < 0.11
    True
    """
    return holdout_bucket(customer_id, campaign) < control_share


# -- caps: the pure model (streams/campaign_router.py does the same in Redis, in Lua) ----------------


@dataclass(frozen=True)
class CapPolicy:
    """At most ``max_triggers`` per ``period_ms`` (any window of that length),
    and none within ``cooldown_ms`` of another; 0 / None switch a limit off."""

    max_triggers: int | None = None
    period_ms: int = 0
    cooldown_ms: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.max_triggers) or self.cooldown_ms > 0

    @property
    def span_ms(self) -> int:
        """How far (in cap time) one charge reaches: the longer of period and cooldown."""
        return max(self.period_ms if self.max_triggers else 0, self.cooldown_ms)


def refusal(charged_ms: Iterable[int], t_ms: int, policy: CapPolicy) -> str | None:
    """Why a trigger at ``t_ms`` may not be charged given earlier charges, or None.

    Times are the changes' ``occurred_at`` (event time, so replays cap alike).
    Charges need not arrive in time order: every window of ``period_ms``
    that would contain the new trigger is checked, and the cooldown looks
    both ways.

    >>> week = 7 * DAY_MS
    >>> p = CapPolicy(max_triggers=2, period_ms=4 * week, cooldown_ms=week)
    >>> refusal([], 0, p) is None
    True
    >>> refusal([0], week - 1, p)
    'cooldown'
    >>> refusal([0, week], 2 * week, p)
    'frequency_cap'
    >>> refusal([0, week], 4 * week + week, p) is None
    True
    """
    times = list(charged_ms)
    if policy.cooldown_ms > 0 and any(abs(x - t_ms) < policy.cooldown_ms for x in times):
        return "cooldown"
    if policy.max_triggers:
        near = sorted([x for x in times if t_ms - policy.period_ms < x < t_ms + policy.period_ms] + [t_ms])
        for start in near:
            if sum(1 for x in near if start <= x < start + policy.period_ms) > policy.max_triggers:
                return "frequency_cap"
    return None


@dataclass(frozen=True)
class CapVerdict:
    """``status``: ``charged`` (new, allowed: publish), ``recharged`` (this
    trigger id was charged before: publish again, charge nothing), ``capped``
    (refused: do not publish; ``reason`` says why)."""

    status: CapStatus
    reason: str = ""

    @property
    def publish(self) -> bool:
        return self.status != "capped"


@dataclass
class CapLedger:
    """One customer's caps for one campaign, in memory: the reference semantics
    of the Redis script in :mod:`streams.campaign_router`.

    ``charged``: trigger id -> cap time (the change's ``occurred_at``, ms) of
    the triggers charged; charges older than the newest minus twice the span
    are forgotten, and a trigger older than the newest charge minus the span is
    refused as ``too_old`` (its windows may reach forgotten charges).
    ``verdicts``: trigger id -> (wall-clock ms, published?), kept
    :data:`REMEMBER_MS`, so a re-sent trigger gets its first verdict and is
    never charged twice.

    >>> ledger, p = CapLedger(), CapPolicy(max_triggers=1, period_ms=30 * DAY_MS)
    >>> ledger.charge("t1", 0, p, now_ms=0), ledger.charge("t1", 0, p, now_ms=1)
    (CapVerdict(status='charged', reason=''), CapVerdict(status='recharged', reason=''))
    >>> ledger.charge("t2", DAY_MS, p, now_ms=2)
    CapVerdict(status='capped', reason='frequency_cap')
    >>> ledger.charge("t2", DAY_MS, p, now_ms=3)
    CapVerdict(status='capped', reason='refused_before')
    """

    charged: dict[str, int] = field(default_factory=dict)
    verdicts: dict[str, tuple[int, bool]] = field(default_factory=dict)

    def charge(self, trigger_id: str, t_ms: int, policy: CapPolicy, now_ms: int) -> CapVerdict:
        if not policy.limited:
            return CapVerdict("charged")
        self.verdicts = {k: v for k, v in self.verdicts.items() if v[0] >= now_ms - REMEMBER_MS}
        if trigger_id in self.verdicts:
            return CapVerdict("recharged") if self.verdicts[trigger_id][1] else CapVerdict("capped", "refused_before")
        span = policy.span_ms
        newest = max(self.charged.values(), default=None)
        if newest is not None and t_ms < newest - span:
            why: str | None = "too_old"
        else:
            horizon = max(t_ms, newest if newest is not None else t_ms) - 2 * span
            self.charged = {k: v for k, v in self.charged.items() if v >= horizon}
            why = refusal(self.charged.values(), t_ms, policy)
        self.verdicts[trigger_id] = (now_ms, why is None)
        if why:
            return CapVerdict("capped", why)
        self.charged[trigger_id] = t_ms
        return CapVerdict("charged")


# -- the trigger on the wire ---------------------------------------------------------


class CampaignTrigger(BaseModel):
    """What a campaign system receives on ``campaign-triggers`` (keyed by customer_id)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        serialize_by_alias=True,
        title="CampaignTrigger",
        json_schema_serialization_defaults_required=True,
    )

    trigger_id: str = Field(description="Deterministic hash of (change_id, campaign): a re-sent trigger has the same id; de-duplicate on it.")
    campaign: str
    customer_id: str
    holdout: bool = Field(description="Control arm: record the exposure, do not contact. Fixed per (customer, campaign).")
    control_share: float = Field(ge=0, le=1, description="The campaign's configured control share when the trigger was routed.")
    segmentation: str
    from_segment: str | None = Field(alias="from", description="The segment left; null on the customer's first assignment.")
    to_segment: str = Field(alias="to", description="The segment entered.")
    change_id: str = Field(description="The segment change that caused the trigger (see the segment-change schema).")
    reason: str = Field(description="The segment change's reason (rule id, cluster, RFM scores).")
    occurred_at: AwareDatetime = Field(description="Event time of the segment change; caps and cooldowns are counted in this time.")
    emitted_at: AwareDatetime = Field(description="When the trigger was routed (worker wall clock); differs on a re-send.")
    schema_version: Literal[1] = TRIGGER_SCHEMA_VERSION


def campaign_trigger_json_schema() -> dict[str, Any]:
    """JSON Schema of the trigger message as it is on the wire (``from`` / ``to``)."""
    return CampaignTrigger.model_json_schema(by_alias=True, mode="serialization")


# -- config ------------------------------------------------------------------------------


class Cap(BaseModel):
    """At most ``max`` triggers of the campaign per customer in any ``period``."""

    model_config = _FROZEN

    max: int = Field(ge=1)
    period: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class Campaign(BaseModel):
    """One campaign: which segment moves start it, its control share and its caps."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    name: str = Field(pattern=_NAME)
    description: str = ""
    segmentation: Literal["lifecycle", "behaviour", "value", "persona"]
    enter: tuple[str, ...] | None = Field(None, min_length=1)
    leave: tuple[str, ...] | None = Field(None, min_length=1)
    from_: tuple[str | None, ...] | None = Field(None, alias="from", min_length=1)
    to: tuple[str, ...] | None = Field(None, min_length=1)
    when: tuple[Condition, ...] = ()
    any_of: tuple[Condition, ...] = Field(default=(), alias="any")
    control_share: float = Field(0.0, ge=0, le=1)
    cap: Cap | None = None
    cooldown: Duration = 0.0

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Campaign:
        if (self.enter is None) == (self.leave is None):
            raise _issue("a campaign needs exactly one of 'enter' or 'leave' (a list of segments)", "enter")
        if self.enter is not None and self.to is not None:
            raise _issue("'to' goes with 'leave'; with 'enter' the entered segments are the 'enter' list", "to")
        if self.leave is not None and self.from_ is not None:
            raise _issue("'from' goes with 'enter'; with 'leave' the segments left are the 'leave' list", "from")
        segments: SegmentationConfig | None = (info.context or {}).get("segments")
        if segments is not None:
            known = segments.segments_of(self.segmentation)
            for attr, alias in (("enter", "enter"), ("leave", "leave"), ("from_", "from"), ("to", "to")):
                for j, seg in enumerate(getattr(self, attr) or ()):
                    if seg is not None and seg not in known:
                        raise _issue(f"'{seg}' is not a {self.segmentation} segment {list(known)}", alias, j)
        return self

    def matches(self, change: SegmentChange) -> bool:
        """Does this change start the campaign?"""
        if change.segmentation != self.segmentation:
            return False
        if self.enter is not None:
            if change.to_segment not in self.enter or (self.from_ is not None and change.from_segment not in self.from_):
                return False
        else:
            assert self.leave is not None  # exactly one of enter / leave (_consistent)
            if change.from_segment not in self.leave or (self.to is not None and change.to_segment not in self.to):
                return False
        feats = change.features
        return all(c.holds(feats) for c in self.when) and (not self.any_of or any(c.holds(feats) for c in self.any_of))

    @property
    def policy(self) -> CapPolicy:
        return CapPolicy(
            max_triggers=self.cap.max if self.cap else None,
            period_ms=int(self.cap.period * 1000) if self.cap else 0,
            cooldown_ms=int(self.cooldown * 1000),
        )

    def describe(self) -> str:
        """One line: when it fires (for docs and ``segflow campaigns``)."""
        if self.enter is not None:
            what = f"enters {self.segmentation} {'/'.join(self.enter)}"
            if self.from_ is not None:
                what += " from " + "/".join("(first assignment)" if s is None else s for s in self.from_)
        else:
            assert self.leave is not None  # exactly one of enter / leave (_consistent)
            what = f"leaves {self.segmentation} {'/'.join(self.leave)}"
            if self.to is not None:
                what += " to " + "/".join(self.to)
        conds = [f"{c.feature} {c.op} {c.value:g}" if c.value is not None else f"{c.feature} {c.op}" for c in self.when]
        if self.any_of:
            conds.append("any of (" + ", ".join(f"{c.feature} {c.op} {c.value:g}" if c.value is not None else f"{c.feature} {c.op}" for c in self.any_of) + ")")
        if conds:
            what += ", when " + " and ".join(conds)
        return what


@dataclass(frozen=True)
class TriggerDecision:
    """A campaign a change starts: the trigger to publish if the caps allow it.

    ``suppressed``: why it must not go out whatever the caps say (``no_consent``:
    the customer has not agreed to marketing, see :class:`ConsentPolicy`); the
    router counts it and neither charges nor publishes it.
    """

    trigger: CampaignTrigger
    policy: CapPolicy
    suppressed: str | None = None

    @property
    def cap_key(self) -> str:
        """Redis sorted set: trigger ids charged to this customer for this campaign."""
        return cap_key(self.trigger.customer_id, self.trigger.campaign)

    @property
    def seen_key(self) -> str:
        """Redis sorted set: verdicts by trigger id (``1:<id>`` published, ``0:<id>`` refused), by wall-clock ms."""
        return self.cap_key + ":seen"

    @property
    def occurred_at_ms(self) -> int:
        return datetime_to_ms(self.trigger.occurred_at)


def cap_key(customer_id: str, campaign: str) -> str:
    """The customer's cap key; ``{customer_id}`` is the hash tag of all their keys."""
    return f"cust:{{{customer_id}}}:camp:{campaign}"


CONSENT_FEATURE = "marketing_consent"  # features.traits: 1 agreed, 0 declined, null never said
NO_CONSENT = "no_consent"


class ConsentPolicy(BaseModel):
    """Marketing consent, from the customer's profile (trait ``marketing_consent``, which
    every segment change carries in its features). A customer who declined
    (``marketing_consent: false``) gets no campaign trigger, ever. ``unknown`` says what
    happens to a customer whose consent was never said (no profile received, or none
    with ``marketing_consent``): ``allow`` (the default: as before profiles existed, an
    opt-out regime) or ``suppress`` (opt-in: only customers who said yes are contacted).
    Either way the segment change itself is published."""

    model_config = _FROZEN

    unknown: Literal["allow", "suppress"] = "allow"

    def refuses(self, change: SegmentChange) -> bool:
        """Whether the customer behind ``change`` may not be contacted.

        >>> from segmenter.changes import SegmentChange
        >>> c = SegmentChange.create(customer_id="c", segmentation="value", from_segment=None, to_segment="loyal",
        ...                          reason="r", model_version=1, occurred_at_ms=0, cause="x", features={})
        >>> [ConsentPolicy(unknown=u).refuses(c.model_copy(update={"features": {CONSENT_FEATURE: v}}))
        ...  for u in ("allow", "suppress") for v in (1.0, 0.0, None)]
        [False, True, False, False, True, True]
        """
        consent = change.features.get(CONSENT_FEATURE)
        if consent is None:
            return self.unknown == "suppress"
        return consent < 1


class CampaignConfig(BaseModel):
    model_config = _FROZEN

    version: Literal[1] = 1
    consent: ConsentPolicy = ConsentPolicy()
    campaigns: tuple[Campaign, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> CampaignConfig:
        seen: set[str] = set()
        for i, c in enumerate(self.campaigns):
            if c.name in seen:
                raise _issue(f"duplicate campaign name '{c.name}'", "campaigns", i, "name")
            seen.add(c.name)
        return self

    def route(self, change: SegmentChange, emitted_at: datetime | None = None) -> list[TriggerDecision]:
        """The triggers this change starts (before caps), one per matching campaign.

        ``emitted_at`` (the router's clock) defaults to the change's own.
        """
        to_segment = change.to_segment
        if to_segment is None:  # an erasure: an erased customer is contacted by no campaign
            return []
        suppressed = NO_CONSENT if self.campaigns and self.consent.refuses(change) else None
        out = []
        for c in self.campaigns:
            if not c.matches(change):
                continue
            trigger = CampaignTrigger(
                trigger_id=trigger_id_of(change.change_id, c.name),
                campaign=c.name,
                customer_id=change.customer_id,
                holdout=in_holdout(change.customer_id, c.name, c.control_share),
                control_share=c.control_share,
                segmentation=change.segmentation,
                from_segment=change.from_segment,
                to_segment=to_segment,
                change_id=change.change_id,
                reason=change.reason,
                occurred_at=change.occurred_at,
                emitted_at=emitted_at or change.emitted_at,
            )
            out.append(TriggerDecision(trigger, c.policy, suppressed))
        return out

    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.campaigns)


# -- loading, with line numbers ----------------------------------------------------------


def parse_campaigns(text: str, source_name: str = "<campaigns>", segments: SegmentationConfig | None = None) -> CampaignConfig:
    """Validate the YAML ``text``; raise :class:`~segmenter.config.ConfigError` naming lines.

    With ``segments`` (the segmentation config in use), segment names are checked too.

    >>> parse_campaigns('''
    ... campaigns:
    ...   - name: vip
    ...     segmentation: value
    ...     enter: [champion]
    ... ''', "campaigns.yaml", segments=_default_segments())
    Traceback (most recent call last):
    ...
    segmenter.config.ConfigError: campaigns.yaml line 5: campaigns[0].enter[0]: 'champion' is not a value segment ['champions', 'loyal', 'need_attention', 'at_risk', 'lost']
    """
    return validate_yaml(text, source_name, CampaignConfig, "the campaigns file must be a YAML mapping with a 'campaigns' list", context={"segments": segments})


def load_campaigns(path: str | Path, segments: SegmentationConfig | None = None) -> CampaignConfig:
    """Read and validate the campaigns file at ``path``."""
    path = Path(path)
    return parse_campaigns(read_config_text(path), path.name, segments)


DEFAULT_CAMPAIGNS_NAME = "default_campaigns.yaml"


def _default_segments() -> SegmentationConfig:
    from segmenter.config import default_config

    return default_config()


@functools.lru_cache(maxsize=1)
def default_campaigns() -> CampaignConfig:
    """The campaigns shipped with segflow (``segmenter/default_campaigns.yaml``)."""
    text = (Path(__file__).parent / DEFAULT_CAMPAIGNS_NAME).read_text()
    return parse_campaigns(text, DEFAULT_CAMPAIGNS_NAME, _default_segments())
