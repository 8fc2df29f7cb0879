"""Event contracts: one pydantic model per family, sharing an envelope.

JSON on the wire, Kafka key = ``customer_id``. The family of a message is
decided by the topic it arrives on (see :mod:`streams.topics`), so a producer
cannot smuggle a purchase onto the clickstream topic.

>>> raw = b'{"event_id":"e1","customer_id":"c1","occurred_at":"2026-01-05T10:00:00Z",'
>>> raw += b'"type":"login","success":true,"channel":"web"}'
>>> event = decode("login", raw)
>>> event.customer_id, event.success
('c1', True)
>>> decode("login", b'{"customer_id": 1}')
Traceback (most recent call last):
...
streams.events.InvalidEvent: invalid: ...
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Final, Literal, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

SCHEMA_VERSION: Final = 1

# Events dated before this are not customer behaviour but broken clocks
# (epoch zero, 1900 defaults). CDNOW, the oldest real data we replay, is 1997.
EARLIEST_PLAUSIBLE = datetime(1990, 1, 1, tzinfo=UTC)
_EARLIEST_PLAUSIBLE_TS = EARLIEST_PLAUSIBLE.timestamp()

NonEmptyId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Money = Annotated[Decimal, Field(ge=0, le=Decimal("10000000"), max_digits=14, decimal_places=4)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]


# Every ``segflow.reason`` a dead-lettered message can carry, and what it means
# (docs/OPERATIONS.md is generated from this; a test checks the code uses no other).
DEAD_LETTER_REASONS = {
    "empty": "the message has no value",
    "bad_json": "the value is not JSON (or not a JSON object)",
    "invalid": "JSON that breaks the event (or erasure request) schema (`segflow schemas`); the detail names the fields",
    "unknown_event_type": "a `type` the topic's family does not know",
    "unknown_family": "no event family for the topic (internal)",
    "unknown_topic": "the message came from a topic that is not an input",
    "absurd_timestamp": "`occurred_at` before 1990, or further in the future than `SEGFLOW_MAX_FUTURE_SKEW_SECONDS`",
    "key_mismatch": "the Kafka key is not the event's (or erasure request's) `customer_id`",
    "too_late": "older than the event-time watermark minus `SEGFLOW_LATENESS_SECONDS`",
    "unverifiable_duplicate": "not newer than an event the customer's (capped) duplicate filter had to forget within the lateness",
    "customer_limit": "a customer not yet known while `SEGFLOW_MAX_CUSTOMERS` customers have state; replay it after raising the limit",
}


class InvalidEvent(ValueError):
    """A message that cannot become an event; ``reason`` is a short machine code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Envelope(BaseModel):
    """Fields every event carries, whatever its family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: NonEmptyId = Field(description="Unique per event; producers reuse it on retry.")
    customer_id: NonEmptyId = Field(description="Also the Kafka message key.")
    occurred_at: AwareDatetime = Field(description="Event time, timezone-aware ISO 8601.")
    schema_version: Literal[1] = SCHEMA_VERSION

    @cached_property  # read by validation, lateness and the delta; aware datetimes are slow to convert
    def ts(self) -> float:
        """Event time as POSIX seconds."""
        return self.occurred_at.timestamp()


CLICK_TYPES = ("session_start", "page_view", "search", "add_to_cart", "remove_from_cart", "checkout_started")


class ClickstreamEvent(Envelope):
    """A web or app interaction. ``session_start`` opens a session (as in GA4)."""

    type: Literal["session_start", "page_view", "search", "add_to_cart", "remove_from_cart", "checkout_started"]
    session_id: NonEmptyId
    page: str | None = Field(default=None, max_length=2048)
    query: str | None = Field(default=None, max_length=512)
    product_id: str | None = Field(default=None, max_length=128)
    category: Label | None = None
    price: Money | None = None


class PurchaseItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    category: Label
    quantity: int = Field(ge=1, le=10_000)
    unit_price: Money


class PurchaseEvent(Envelope):
    """A completed order. ``amount`` is what the customer paid, after ``discount``."""

    type: Literal["purchase"] = "purchase"
    order_id: NonEmptyId
    amount: Money
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    discount: Money = Decimal(0)
    items: list[PurchaseItem] = Field(default_factory=list, max_length=500)

    @model_validator(mode="after")
    def _discount_within_gross(self) -> PurchaseEvent:
        # The discount is given on the gross price (amount + discount), so any
        # non-negative discount is coherent; an absurd one is not.
        if self.discount > self.amount * 100 + 1000:
            raise ValueError("discount is implausibly larger than the amount paid")
        return self


class LoginEvent(Envelope):
    """An authentication attempt, successful or not."""

    type: Literal["login"] = "login"
    success: bool
    channel: Literal["web", "ios", "android", "api"]


SignupChannel = Literal["web", "ios", "android", "store", "referral", "paid_search", "social", "email", "partner", "other"]
SIGNUP_CHANNELS: tuple[str, ...] = get_args(SignupChannel)
# Free text of a trait: no control characters (they separate traits in Redis).
TraitText = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


class ProfileEvent(Envelope):
    """Who a customer is: traits from a CRM, a sign-up form, a settings page.

    Every trait is optional, and an update carries only what it changes: a trait
    absent (or null) is left as it is. Each trait keeps the event time it was last
    set at, and an update sets it only if it is newer (last writer wins in event
    time, per trait: a late, older update does not undo a newer one). A profile
    update is not behaviour: it moves no recency, window or churn feature.
    """

    type: Literal["profile"] = "profile"
    birth_year: int | None = Field(default=None, ge=1900, le=2100, description="Year of birth; `age` (whole years at the evaluation time) derives from it.")
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = Field(default=None, description="ISO 3166-1 alpha-2 code.")
    region: TraitText | None = Field(default=None, description="A region, state or city within the country.")
    plan: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")] | None = Field(
        default=None, description="The customer's plan or tier (lower-case slug)."
    )
    signup_channel: SignupChannel | None = Field(default=None, description="How the customer signed up.")
    marketing_consent: bool | None = Field(default=None, description="Whether the customer agreed to marketing; campaign triggers respect it.")

    @model_validator(mode="after")
    def _coherent(self) -> ProfileEvent:
        if not self.trait_values():
            raise ValueError("a profile update needs at least one trait")
        if self.birth_year is not None and self.birth_year > self.occurred_at.year:
            raise ValueError(f"birth_year {self.birth_year} is after occurred_at")
        return self

    def trait_values(self) -> dict[str, str]:
        """The traits this update sets, as the strings they are stored as.

        >>> ProfileEvent(event_id="e", customer_id="c", occurred_at="2026-01-05T10:00:00Z",
        ...              country="DE", marketing_consent=False).trait_values()
        {'country': 'DE', 'marketing_consent': '0'}
        """
        out: dict[str, str] = {}
        for name in TRAIT_NAMES:
            v = getattr(self, name)
            if v is not None:
                out[name] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out


# The traits of a profile, in the order they are stored (features/traits.py adds their codes).
TRAIT_NAMES = ("birth_year", "country", "region", "plan", "signup_channel", "marketing_consent")

Event = ClickstreamEvent | PurchaseEvent | LoginEvent | ProfileEvent

# family name -> model; the single list every other module reads.
FAMILIES: dict[str, type[Envelope]] = {
    "clickstream": ClickstreamEvent,
    "purchase": PurchaseEvent,
    "login": LoginEvent,
    "profile": ProfileEvent,
}
# Families of traits, not behaviour: their events set traits (last writer wins, in event
# time), so their order does not matter; they neither drive nor wait for the event-time
# watermark, and are never too late (docs/OPERATIONS.md, "Profiles").
TRAIT_FAMILIES = frozenset({"profile"})


class ErasureRequest(BaseModel):
    """A request to forget a customer (``segflow forget``), on the erasure topic, keyed
    by ``customer_id`` on the partition of the customer's events: the worker applies it
    in order with them. Validated like an event; a malformed one is dead-lettered."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ErasureRequest")

    type: Literal["erasure"] = "erasure"
    request_id: NonEmptyId = Field(description="Unique per request (segflow forget: a UUID); the final changes' ids derive from it.")
    customer_id: NonEmptyId = Field(description="The customer to forget; also the Kafka message key.")
    requested_at: AwareDatetime = Field(description="When the erasure was requested; the final changes' occurred_at.")
    reason: str | None = Field(default=None, max_length=1000, description="Why (a ticket number, say); logged by the worker, not published.")
    schema_version: Literal[1] = SCHEMA_VERSION


def decode_erasure(raw: bytes | str | None) -> ErasureRequest:
    """Parse and validate an erasure request; raise :class:`InvalidEvent` with the
    reasons :func:`decode` uses (``empty``, ``bad_json``, ``invalid``, ``unknown_event_type``,
    ``absurd_timestamp``).

    >>> decode_erasure(b'{"request_id":"r1","customer_id":"c1","requested_at":"2026-01-05T10:00:00Z"}').customer_id
    'c1'
    >>> decode_erasure(b'{"request_id":"r1","customer_id":"","requested_at":"2026-01-05T10:00:00Z"}')
    Traceback (most recent call last):
    ...
    streams.events.InvalidEvent: invalid: customer_id: ...
    """
    if raw is None or len(raw) == 0:
        raise InvalidEvent("empty", "message has no value")
    try:
        request = ErasureRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise _classify(exc) from None
    if request.requested_at.timestamp() < _EARLIEST_PLAUSIBLE_TS:
        raise InvalidEvent("absurd_timestamp", f"requested_at {request.requested_at.isoformat()} is before 1990")
    return request


def decode(family: str, raw: bytes | str | None) -> Event:
    """Parse and validate one message of ``family``; raise :class:`InvalidEvent`.

    Reasons: ``empty``, ``unknown_family``, ``bad_json``, ``invalid`` (schema),
    ``unknown_event_type``, ``absurd_timestamp``.
    """
    if raw is None or len(raw) == 0:
        raise InvalidEvent("empty", "message has no value")
    model = FAMILIES.get(family)
    if model is None:
        raise InvalidEvent("unknown_family", repr(family))
    try:
        event = model.__pydantic_validator__.validate_json(raw)  # model_validate_json minus its wrapper
    except ValidationError as exc:
        raise _classify(exc) from None
    if event.ts < _EARLIEST_PLAUSIBLE_TS:
        raise InvalidEvent("absurd_timestamp", f"occurred_at {event.occurred_at.isoformat()} is before 1990")
    return event


def _classify(exc: ValidationError) -> InvalidEvent:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    loc = ".".join(str(p) for p in first["loc"])
    if kind in ("json_invalid", "json_type"):
        return InvalidEvent("bad_json", first["msg"])
    if loc == "type" and kind == "literal_error":
        return InvalidEvent("unknown_event_type", first["msg"])
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5])
    return InvalidEvent("invalid", detail)


def check_not_future(event: Envelope, now: float, max_skew_seconds: float) -> None:
    """Reject events stamped further in the future than producers' clocks can drift."""
    if event.ts > now + max_skew_seconds:
        raise InvalidEvent(
            "absurd_timestamp",
            f"occurred_at {event.occurred_at.isoformat()} is more than {max_skew_seconds:.0f}s in the future",
        )


def dedupe_token(event_id: str) -> str:
    """A short, fixed-size stand-in for an event id, kept per customer to drop duplicates:
    48 bits of a hash, in 8 URL-safe base64 characters (never ``:``, ``.`` or ``;``,
    the separators of the filter in Redis).

    >>> dedupe_token("order-1"), len(dedupe_token("x" * 1000))
    ('AC0ieY3W', 8)
    """
    return base64.urlsafe_b64encode(hashlib.blake2b(event_id.encode(), digest_size=6).digest()).decode()


def json_schemas() -> dict[str, dict]:
    """JSON Schema of every event family and of the erasure request, for producers in any language."""
    schemas = {family: model.model_json_schema(mode="validation") for family, model in FAMILIES.items()}
    return {**schemas, "erasure-request": ErasureRequest.model_json_schema(mode="validation")}


def family_of_type(event_type: str) -> str | None:
    """The family an event ``type`` belongs to, or None.

    >>> family_of_type("add_to_cart"), family_of_type("purchase"), family_of_type("login"), family_of_type("profile"), family_of_type("x")
    ('clickstream', 'purchase', 'login', 'profile', None)
    """
    return _TYPE_FAMILY.get(event_type)


_TYPE_FAMILY = {
    "session_start": "clickstream",
    "page_view": "clickstream",
    "search": "clickstream",
    "add_to_cart": "clickstream",
    "remove_from_cart": "clickstream",
    "checkout_started": "clickstream",
    "purchase": "purchase",
    "login": "login",
    "profile": "profile",
}


def event_to_json(event: Event) -> bytes:
    """Compact JSON bytes of an event (``None`` fields left out), as published on Kafka."""
    return event.model_dump_json(exclude_none=True).encode()
