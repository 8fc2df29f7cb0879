"""Publishing events to Kafka: JSONL files and ``(family, key, value)`` streams.

Everything here is I/O; the pure pieces (:func:`parse_line`, :func:`bootstrap_servers`)
are small and tested by their doctests.

* :func:`produce_events` publishes ``(family, key, value)`` triples or
  ``(family, event)`` pairs to the family's topic, optionally paced to a rate.
* :func:`produce_file` publishes a JSONL file (format in :func:`parse_line`).
* :func:`create_topics` creates the input and output topics, idempotently.

The Kafka key is always the customer id, so one customer's events stay in order
on one partition.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.events import FAMILIES, event_to_json, family_of_type
from streams.topics import TOPICS, Topics

__all__ = [
    "DEFAULT_PRODUCER_CONFIG",
    "ProduceStats",
    "SkipLine",
    "bootstrap_servers",
    "create_topics",
    "iter_file",
    "parse_line",
    "print_progress",
    "produce_events",
    "produce_file",
]

log = logging.getLogger(__name__)

# acks=all + idempotence: no loss, no duplicates from producer retries. Batches
# fill for up to linger_ms; no compression (CPU-bound Python producer, local broker).
DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 10,
    "batch_size": 256 * 1024,
    "compression_type": None,
    "max_in_flight_requests_per_connection": 5,
    "request_timeout_ms": 30_000,
    "max_block_ms": 60_000,
}


@dataclass
class ProduceStats:
    """What a run did. ``progress`` callbacks receive this object while it fills."""

    sent: int = 0  # handed to the producer
    failed: int = 0  # delivery errors reported by the broker/client
    per_topic: Counter = field(default_factory=Counter)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), file input only
    first_error: str | None = None
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    done: bool = False

    @property
    def delivered(self) -> int:
        """Acknowledged messages; exact once ``done`` (the producer has been flushed)."""
        return self.sent - self.failed

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "failed": self.failed,
            "skipped": len(self.skipped),
            "per_topic": dict(self.per_topic),
            "elapsed": round(self.elapsed, 3),
            "rate": round(self.rate, 1),
            "done": self.done,
            "first_error": self.first_error,
        }

    # Mapping protocol, so ``dict(stats)`` / ``some_dict.update(stats)`` work.
    def keys(self):
        return self.as_dict().keys()

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        text = f"sent {self.sent} in {self.elapsed:.1f}s ({self.rate:,.0f}/s)"
        if self.failed:
            text += f", {self.failed} failed (first: {self.first_error})"
        if self.skipped:
            text += f", {len(self.skipped)} lines skipped"
        return text + (", done" if self.done else "")


Item = tuple  # (family, key: bytes | None, value: bytes) or (family, Event)


def bootstrap_servers(url: str) -> list[str]:
    """``kafka://host:port[,host:port]`` (SEGFLOW_KAFKA_URL) or ``host:port,...`` -> list.

    >>> bootstrap_servers("kafka://kafka:9092")
    ['kafka:9092']
    >>> bootstrap_servers("a:1, b:2")
    ['a:1', 'b:2']
    """
    for scheme in ("kafka://", "tcp://", "plaintext://"):
        if url.lower().startswith(scheme):
            url = url[len(scheme) :]
            break
    return [part.strip().rstrip("/") for part in url.split(",") if part.strip()]


def produce_events(
    bootstrap: str,
    items: Iterable[Item],
    topics: Topics = TOPICS,
    rate: float | None = None,
    progress: Callable[[ProduceStats], None] | None = None,
    *,
    progress_every: float = 2.0,
    producer: KafkaProducer | None = None,
    producer_config: dict[str, Any] | None = None,
    flush_timeout: float = 120.0,
    stats: ProduceStats | None = None,
    stop: threading.Event | None = None,
) -> ProduceStats:
    """Publish ``items`` to ``topics.by_family[family]``; return the run's stats.

    ``items`` yields ``(family, key, value)`` with pre-serialised bytes, or
    ``(family, event)`` (serialised here, keyed by ``event.customer_id``).
    ``rate`` is messages per wall-clock second (None: as fast as possible),
    enforced by sleeping every ~10 ms worth of messages. ``progress(stats)`` is
    called about every ``progress_every`` seconds and once at the end. No
    per-message flush: the producer batches (``linger_ms``) and is flushed once
    at the end, also on error or Ctrl-C. Setting ``stop`` (checked every ~10 ms
    of pacing or 512 messages) ends the run early, cleanly. Unknown families
    raise ``ValueError``. The stats print as a one-line summary (``str(stats)``),
    so a ``progress`` callback that takes a string works too.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 or None")
    stats = stats or ProduceStats()
    stats.started = time.monotonic()
    owned = producer is None
    if producer is None:
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers(bootstrap), **{**DEFAULT_PRODUCER_CONFIG, **(producer_config or {})})
    by_family = topics.by_family

    def on_error(exc: BaseException) -> None:
        stats.failed += 1
        if stats.first_error is None:
            stats.first_error = f"{type(exc).__name__}: {exc}"

    chunk = max(1, int(rate / 100)) if rate else 512  # messages per pacing / clock check
    next_report = stats.started + progress_every
    send = producer.send
    try:
        for item in () if stop is not None and stop.is_set() else items:
            if len(item) == 3:
                family, key, value = item
            else:
                family, event = item
                key, value = event.customer_id.encode(), event_to_json(event)
            topic = by_family.get(family)
            if topic is None:
                raise ValueError(f"unknown event family {family!r}")
            send(topic, key=key, value=value).add_errback(on_error)
            stats.sent += 1
            stats.per_topic[topic] += 1
            if stats.sent % chunk == 0:
                if stop is not None and stop.is_set():
                    break
                now = time.monotonic()
                if rate:
                    ahead = stats.started + stats.sent / rate - now
                    if ahead > 0:
                        time.sleep(ahead)
                        now = time.monotonic()
                if now >= next_report:
                    stats.elapsed = now - stats.started
                    if progress:
                        progress(stats)
                    next_report = now + progress_every
    finally:
        try:
            producer.flush(timeout=flush_timeout)
        finally:
            if owned:
                producer.close(timeout=flush_timeout)
        stats.elapsed = time.monotonic() - stats.started
        stats.done = True
    if progress:
        progress(stats)
    return stats


class SkipLine(ValueError):
    """A JSONL line whose family cannot be determined; it is reported, not published."""


def parse_line(line: bytes | str, default_family: str | None = None) -> tuple[str, bytes | None, bytes] | None:
    """One JSONL line -> ``(family, key, value)``; None for a blank line; :class:`SkipLine` otherwise.

    Accepted line shapes:

    1. ``{"family": "purchase", "event": {...}}`` - the wrapper :func:`write_jsonl`
       writes; ``event`` may also be a JSON string (published verbatim).
    2. A bare event object; its family comes from ``type`` (session_start,
       page_view, search, add_to_cart, remove_from_cart, checkout_started ->
       clickstream; purchase -> purchase; login -> login). The line is published
       byte for byte.
    3. Anything else (not JSON, not an object, unknown type): published raw to
       ``default_family``'s topic when one is given, so the worker's dead-letter
       path sees it; otherwise skipped.

    The key is the event's ``customer_id`` when it is a non-empty string, else None.
    Nothing is validated here: validation is the worker's job.

    >>> parse_line(b'{"family":"login","event":{"customer_id":"c1","type":"login"}}')
    ('login', b'c1', b'{"customer_id":"c1","type":"login"}')
    >>> parse_line('{"type":"add_to_cart","customer_id":"c2"}')
    ('clickstream', b'c2', b'{"type":"add_to_cart","customer_id":"c2"}')
    >>> parse_line(b'not json', default_family="purchase")
    ('purchase', None, b'not json')
    >>> parse_line(b'   ') is None
    True
    >>> parse_line(b'{"type":"teleport"}')
    Traceback (most recent call last):
    ...
    streams.producer.SkipLine: unknown event type 'teleport' and no default family
    """
    raw = line.encode() if isinstance(line, str) else line
    raw = raw.strip()
    if not raw:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "event" in obj and "family" in obj:
        family, event = obj["family"], obj["event"]
        if family not in FAMILIES:
            raise SkipLine(f"unknown family {family!r}")
        if isinstance(event, str):
            value = event.encode()
            key = None
        else:
            value = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
            key = _key_of(event)
        return family, key, value
    if isinstance(obj, dict):
        kind = obj.get("type")
        family = family_of_type(kind) if isinstance(kind, str) else None
        if family is not None:
            return family, _key_of(obj), raw
        if default_family in FAMILIES:
            return default_family, _key_of(obj), raw
        raise SkipLine(f"unknown event type {kind!r} and no default family")
    if default_family in FAMILIES:
        return default_family, _key_of(obj), raw
    raise SkipLine("not a JSON object and no default family" if obj is None else "JSON is not an object and no default family")


def _key_of(obj: Any) -> bytes | None:
    if isinstance(obj, dict):
        cid = obj.get("customer_id")
        if isinstance(cid, str) and cid:
            return cid.encode()
    return None


def iter_file(path: str | Path, default_family: str | None = None, skipped: list[tuple[int, str]] | None = None) -> Iterator[tuple[str, bytes | None, bytes]]:
    """Stream ``(family, key, value)`` from a JSONL file (``-`` = stdin); skipped lines go to ``skipped``."""
    if default_family is not None and default_family not in FAMILIES:
        raise ValueError(f"unknown family {default_family!r}; expected one of {sorted(FAMILIES)}")
    handle = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    try:
        for number, line in enumerate(handle, start=1):
            try:
                parsed = parse_line(line, default_family)
            except SkipLine as exc:
                if skipped is not None:
                    skipped.append((number, str(exc)))
                log.warning("line %d skipped: %s", number, exc)
                continue
            if parsed is not None:
                yield parsed
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def produce_file(
    bootstrap: str,
    path: str | Path,
    topics: Topics = TOPICS,
    rate: float | None = None,
    progress: Callable[[ProduceStats], None] | None = None,
    *,
    default_family: str | None = None,
    **kwargs: Any,
) -> ProduceStats:
    """Publish a JSONL file (line format: :func:`parse_line`); ``stats.skipped`` lists
    ``(line number, reason)`` for lines whose family could not be determined."""
    stats = ProduceStats()
    items = iter_file(path, default_family, stats.skipped)
    return produce_events(bootstrap, items, topics, rate, progress, stats=stats, **kwargs)


def create_topics(
    bootstrap: str,
    topics: Topics = TOPICS,
    partitions: int = 6,
    replication_factor: int = 1,
    names: Iterable[str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the input and output topics that do not exist yet; return the ones created.

    Idempotent (existing topics are left alone, whatever their partition count)
    and waits until the broker lists every topic. Call it before producing:
    broker-side auto-creation is not relied on.
    """
    wanted = list(names) if names is not None else [*topics.inputs, *topics.outputs]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(bootstrap), request_timeout_ms=int(timeout_s * 1000))
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for name in wanted:
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor, topic_configs=topics.config_of(name))])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout_s
        while set(wanted) - set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not visible after {timeout_s}s: {sorted(set(wanted) - set(admin.list_topics()))}")
            time.sleep(0.1)
    finally:
        admin.close()
    return created


def print_progress(stats: ProduceStats, stream=sys.stderr) -> None:
    """A ready-made ``progress`` callback: one line per report."""
    print(f"[segflow producer] {stats.summary()}", file=stream, flush=True)
