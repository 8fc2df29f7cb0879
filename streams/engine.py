"""The engine: one batch of raw messages in, dead letters and segment changes out.

It is the imperative shell that strings the pure parts together —
decode (pydantic) -> delta -> Redis function -> features -> segmenter ->
Redis segment state + outbox — and knows nothing about Faust, so tests and
benchmarks drive it directly and the Faust agent stays a few lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from features import keys
from features.catalogue import compute
from features.extract import delta_of
from features.pipeline import run_pipeline
from features.state import EventDelta
from features.store import FeatureStore, load_library
from features.traits import trait_features
from segmenter.assign import Segmenter
from segmenter.changes import RETENTION_REASON
from segmenter.drift import DriftEvent, DriftMonitor
from streams.erasure import Eraser, retained, retention_deadline, retention_request
from streams.events import TRAIT_FAMILIES, ErasureRequest, Event, InvalidEvent, ProfileEvent, check_not_future, decode, decode_erasure
from streams.migrate_layout import refuse_older_layout
from streams.ordering import Turnstile
from streams.segment_store import CustomerUpdate, SegmentStore, StoredAssignment, evaluated_upto, parse_segments, stale_outbox, version_of
from streams.settings import Settings
from streams.status import Status, backlog_commands, backlog_from
from streams.topics import Topics
from streams.watermark import Watermark

log = logging.getLogger("segflow.engine")
# A batch or deadline turn longer than this waited out Redis (normal ones take tens of ms).
STALL_SECONDS = 1.0
DRIFT_STREAM_LEN = 1000  # entries kept in segflow:{drift} (about: XADD MAXLEN ~)


class InboundMessage(NamedTuple):
    """One Kafka message as the engine sees it (a named tuple: one is built per event)."""

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class DeadLetter:
    message: InboundMessage
    reason: str
    detail: str = ""

    def headers(self) -> dict[str, bytes]:
        h = {
            "segflow.reason": self.reason.encode(),
            "segflow.detail": self.detail[:1000].encode(),
            "segflow.source.topic": self.message.topic.encode(),
            "segflow.dead_lettered_at": str(int(time.time() * 1000)).encode(),
        }
        if self.message.partition is not None:
            h["segflow.source.partition"] = str(self.message.partition).encode()
        if self.message.offset is not None:
            h["segflow.source.offset"] = str(self.message.offset).encode()
        return h


# Counted by segflow_apply (and segflow_forget) itself, atomically with the event
# (features/segflow.lua): the worker keeps its own count for its progress log but does not publish it.
COUNTED_BY_REDIS = ("applied", "duplicates", "suppressed", "erased")


@dataclass
class Counters:
    received: int = 0
    batches: int = 0  # received / batches: the average batch the agent took
    applied: int = 0
    duplicates: int = 0
    suppressed: int = 0  # events of erased customers dropped (the tombstone)
    erased: int = 0  # customers forgotten
    expired: int = 0  # of those, forgotten after SEGFLOW_RETENTION_DAYS of silence (the deadline timer)
    dead_lettered: int = 0
    changes: int = 0
    deadline_evaluations: int = 0
    conflicts: int = 0  # evaluations dropped because another committed first (re-queued)
    filters_swept: int = 0  # duplicate filters trimmed or dropped without waiting for the customer's next event
    drift_detected: int = 0
    reseeds: int = 0
    changes_sent: int = 0  # acknowledged by the broker (counted by the shell's publish)
    changes_resent: int = 0  # of those, sent by a relay from the outbox
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}

    def flat(self) -> dict[str, int]:
        """The counters the worker adds to the ``segflow:stats`` hash."""
        out = {k: v for k, v in self.__dict__.items() if isinstance(v, int) and k not in (*COUNTED_BY_REDIS, "received", "batches")}
        out.update({f"dead_lettered:{reason}": n for reason, n in self.reasons.items()})
        # Last, so that a reader who sees a batch in ``received`` sees its other counts too
        # (the HINCRBYs go in one round trip, in this order, but not as one transaction).
        out.update(received=self.received, batches=self.batches)
        return out


@dataclass
class EventRun:
    """Consecutive events of a batch: folded, evaluated and committed together."""

    items: list[tuple[str, EventDelta]] = field(default_factory=list)
    sources: list[tuple[InboundMessage, Event]] = field(default_factory=list)


@dataclass
class ErasureRun:
    """Consecutive erasure requests of a batch. A batch is cut into runs at erasures, so
    that a customer's events before the request are committed before it, and the ones
    after it meet the tombstone (suppressed)."""

    requests: list[ErasureRequest] = field(default_factory=list)


def _run_of(runs: list[EventRun | ErasureRun], kind: type[EventRun] | type[ErasureRun]):
    """The last run if it is of ``kind``, else a new one appended."""
    if not runs or not isinstance(runs[-1], kind):
        runs.append(kind())
    return runs[-1]


def _check_key(msg: InboundMessage, customer_id: str) -> None:
    if msg.key is not None and msg.key.decode("utf-8", "replace") != customer_id:
        raise InvalidEvent("key_mismatch", "message key is not the event's customer_id")


@dataclass
class BatchOutcome:
    dead_letters: list[DeadLetter] = field(default_factory=list)
    changes: list[tuple[str, str]] = field(default_factory=list)  # (outbox id, change json)
    ticket: int | None = None  # its turn to publish (streams.ordering): commit order


class Engine:
    def __init__(self, settings: Settings, redis, segmenter: Segmenter):
        self.settings = settings
        self.topics: Topics = settings.topics
        self.redis = redis
        self.layout = settings.layout
        self.features = FeatureStore(redis, self.layout, settings.max_customers)
        self.watermark = Watermark(settings.idle_partition_seconds)
        self.segments = SegmentStore(redis, self.layout, settings.history_cap)
        self.eraser = Eraser(redis, self.layout, settings.erasure_suppress_ms)
        self._erased_since_snapshot = False  # a customer left the models' samples: older snapshots go
        # Input partitions this worker owns (None: not told, e.g. an engine without Faust: all).
        self.owned_partitions: set[int] | None = None
        self.segmenter = segmenter
        self.counters = Counters()
        self.drift = DriftMonitor.from_config(segmenter.config)
        self._published: dict[str, int] = {}
        # Newest offset processed per input (topic, partition), and a probe the
        # shell installs that says which of some partitions still have unread
        # messages: silent partitions are idle only when they have none.
        self.last_offsets: dict[tuple[str, int], int] = {}
        self.backlog_probe: Callable[[set[tuple[str, int]]], Awaitable[set[tuple[str, int]]]] | None = None
        # Outbox ids committed by this worker and not yet through the shell's publish
        # (it discards them when done, sent or not): never stale, see stale_outbox.
        self.publishing: set[str] = set()
        # The Faust agent and the deadline timer share a worker; evaluating one
        # customer from both at once could write stale segments.
        self.lock = asyncio.Lock()
        # Changes go out in commit order, whichever task (agent, deadline timer, relay) sends them.
        self.turnstile = Turnstile()
        # Latency observer the shell installs ((call, seconds): streams.metrics), and the
        # parts of the status (streams.status) its timers refresh.
        self.observe: Callable[[str, float], None] = lambda call, seconds: None
        self._lag: dict[str, int] | None = None
        self._backlog: tuple[int, float | None, int, float | None] | None = None
        self._apply_rate: float | None = None
        self._status_sample: tuple[float, int] | None = None

    async def start(self) -> None:
        await refuse_older_layout(self.redis, self.layout)
        await load_library(self.redis)
        snapshot = await self.segments.load_model()
        if snapshot is not None:
            if self.segmenter.restore_model(*snapshot):
                log.warning("models restored from snapshot v%s", snapshot[0])
            else:
                log.warning("snapshot v%s was made for another segments config: starting fresh models", snapshot[0])

    # -- events ---------------------------------------------------------------
    def assign(self, partitions: set[tuple[str, int]], now: float | None = None) -> None:
        """Tell the engine which input (topic, partition)s this worker owns (after a rebalance)."""
        # Trait families (profiles) neither drive nor wait for the event-time watermark.
        owned = {(family, p) for t, p in partitions if (family := self.topics.family_of(t)) and family not in TRAIT_FAMILIES}
        self.watermark.assign(owned, time.time() if now is None else now)
        # The deadlines of a partition's customers follow the partition: one worker decides for a customer.
        self.owned_partitions = {p for _, p in owned}
        if any(p >= self.settings.partitions for p in self.owned_partitions):
            log.error(
                "input topics have more partitions than SEGFLOW_PARTITIONS=%d: deadlines are kept per partition by that count; set it to the topics' count",
                self.settings.partitions,
            )

    async def process(self, messages: Sequence[InboundMessage], now: float | None = None) -> BatchOutcome:
        started = time.perf_counter()
        try:
            return await self._process(messages, now)
        finally:
            elapsed = time.perf_counter() - started
            self.observe("batch", elapsed)
            self._count_stall(elapsed)

    def _count_stall(self, elapsed: float) -> None:
        """A batch or deadline turn this long was held by Redis (outage_retry), not by
        work: the partitions were not silent meanwhile (Watermark.pause)."""
        if elapsed > STALL_SECONDS:
            self.watermark.pause(elapsed)

    async def _process(self, messages: Sequence[InboundMessage], now: float | None = None) -> BatchOutcome:
        now = time.time() if now is None else now
        out = BatchOutcome()
        before = await self._low_watermark(now)
        runs = self._decode(messages, now, out)
        # Lateness is judged against the watermark as it stood before this batch:
        # the batch's own newest events must not make its older ones late.
        late_before = None if before is None else before - self.settings.lateness_ms
        low = await self._low_watermark(now)

        async with self.lock:
            drift: list[DriftEvent] = []
            for run in runs:
                if isinstance(run, ErasureRun):
                    await self._forget(run.requests, out)
                else:
                    await self._fold(run, late_before, low, out, drift)
            self.publishing.update(i for i, _ in out.changes)
            out.ticket = self.turnstile.take() if out.changes else None
            try:
                await self._record_drift(drift)
            except BaseException:
                self._abandon(out)
                raise
        # Counted once the batch is done, with its outcome: the deadline timer publishes
        # the counters too, and may do so while this batch waits for the lock. A batch
        # counted as received then, before Redis counted it applied, made the shared
        # stats say "all received, some not applied" (CI, 2026-12-02).
        self.counters.received += len(messages)
        self.counters.batches += 1
        self._count(out)
        try:
            await self._publish_counts()
        except BaseException:
            self._abandon(out)
            raise
        return out

    def _decode(self, messages: Sequence[InboundMessage], now: float, out: BatchOutcome) -> list[EventRun | ErasureRun]:
        """Validate every message: the bad ones become dead letters, the rest runs of events
        and of erasure requests, in message order."""
        runs: list[EventRun | ErasureRun] = []
        for msg in messages:
            # Every message taken counts as processed, a dead letter too: otherwise a partition
            # whose last message was malformed would look unread for ever (lag, idle watermark).
            if msg.partition is not None and msg.offset is not None:
                self.last_offsets[(msg.topic, msg.partition)] = max(msg.offset, self.last_offsets.get((msg.topic, msg.partition), -1))
            family = self.topics.family_of(msg.topic)
            try:
                if msg.topic == self.topics.erasure:
                    request = decode_erasure(msg.value)
                    _check_key(msg, request.customer_id)
                    _run_of(runs, ErasureRun).requests.append(request)
                    continue
                if family is None:
                    raise InvalidEvent("unknown_topic", msg.topic)
                event = decode(family, msg.value)
                check_not_future(event, now, self.settings.max_future_skew_seconds)
                _check_key(msg, event.customer_id)
            except InvalidEvent as exc:
                out.dead_letters.append(DeadLetter(msg, exc.reason, exc.detail))
                continue
            offset = None if msg.partition is None or msg.offset is None else (msg.partition, msg.offset)
            delta = delta_of(event, offset)
            if family not in TRAIT_FAMILIES:
                self.watermark.observe(family, msg.partition or 0, delta.ts_ms, now)
            run = _run_of(runs, EventRun)
            run.items.append((event.customer_id, delta))
            run.sources.append((msg, event))
        return runs

    async def _fold(self, run: EventRun, late_before: int | None, low: int | None, out: BatchOutcome, drift: list[DriftEvent]) -> None:
        """Apply a run of events, evaluate each customer once on their state after it, commit."""
        t0 = time.perf_counter()
        results = await self.features.apply_batch(run.items, late_before, low)
        self.observe("apply", time.perf_counter() - t0)
        # One evaluation per customer per run, on the customer's state after the
        # run's last event: segments are written once the run is
        # folded, so evaluating each event would compare against stale segments.
        latest: dict[str, Event] = {}
        redelivered: dict[str, Event] = {}
        # Customers whose traits a profile update of this run set (or may have set: a
        # redelivered one): evaluated even when their behaviour is as evaluated before,
        # so a trait change moves their persona at once.
        profiled: set[str] = set()
        final = {r.customer_id: r for r in results if r.state is not None}
        for (msg, event), result in zip(run.sources, results, strict=False):
            if result.status == "duplicate":
                self.counters.duplicates += 1
                redelivered[event.customer_id] = event
                if isinstance(event, ProfileEvent):
                    profiled.add(event.customer_id)
                continue
            if result.status == "suppressed":  # an erased customer: dropped, and counted in Redis
                self.counters.suppressed += 1
                continue
            if result.status == "too_late":
                out.dead_letters.append(DeadLetter(msg, "too_late", f"older than the allowed lateness of {self.settings.lateness_seconds:g}s"))
                continue
            if result.status == "unverifiable":
                out.dead_letters.append(
                    DeadLetter(
                        msg,
                        "unverifiable_duplicate",
                        "not newer than an event this customer's duplicate filter (capped) had to forget within the lateness",
                    )
                )
                continue
            if result.status == "over_capacity":
                out.dead_letters.append(
                    DeadLetter(
                        msg,
                        "customer_limit",
                        f"{self.settings.max_customers} customers already have state (SEGFLOW_MAX_CUSTOMERS)",
                    )
                )
                continue
            self.counters.applied += 1
            if isinstance(event, ProfileEvent):
                profiled.add(event.customer_id)
                redelivered.setdefault(event.customer_id, event)  # evaluated, but the models learn nothing new
            else:
                latest[event.customer_id] = event
        updates = []
        # A redelivery (after a crash between the feature update and the
        # segment commit) re-evaluates too, without teaching the models twice:
        # otherwise that customer's segments would wait for a new event.
        evaluate = [(cid, ev, True) for cid, ev in latest.items()]
        evaluate += [(cid, ev, False) for cid, ev in redelivered.items() if cid not in latest]
        # A customer evaluated for a profile update alone is evaluated at the clock, as a
        # deadline would (never before their newest event): a deadline may have moved them
        # at a later time than that event, and an evaluation at the event's time would move
        # them back (a silent customer flagged at_risk looked active again).
        clock: int | None = None
        if any(cid in profiled and cid not in latest for cid, _, _ in evaluate):
            clock = await self.clock_ms()
        for customer_id, event, learn in evaluate:
            after = final[customer_id]
            state, seg_hash = after.state, after.segments
            # final holds results with state; the store returns segments along with it.
            assert state is not None and seg_hash is not None
            if not state.exists:
                # An erased customer (their state is the tombstone), or traits without behaviour
                # yet: no segments; the latter has a retention deadline from its newest trait.
                if state.known and self.settings.retention_ms:
                    updates.append(self._traits_only(customer_id, state.traits_updated_ms, seg_hash, now_ms=None))
                continue
            now_ms = state.last_seen_ms
            assert now_ms is not None  # set with first_seen_ms by the customer's first event
            upto = evaluated_upto(seg_hash)
            if not learn and customer_id not in profiled and upto is not None and upto >= now_ms:
                continue  # this state was evaluated and committed before the redelivery
            at_ms = max(now_ms, clock or 0) if customer_id in profiled and not learn else now_ms
            feats = compute(state, at_ms)
            learned = learn and self.segmenter.learn_one(feats, customer_id, now_ms)
            updates.append(
                self._evaluate(
                    customer_id,
                    feats,
                    seg_hash,
                    at_ms,
                    f"event:{event.event_id}",
                    seen_ms=now_ms,
                    drift=drift,
                    learned=learned,
                    last_seen_ms=now_ms,
                    traits=trait_features(state.traits, at_ms),
                )
            )
        t0 = time.perf_counter()
        written = await self.segments.write(updates)
        self.observe("commit", time.perf_counter() - t0)
        out.changes.extend(written.changes)
        self.counters.conflicts += len(written.conflicts)

    async def _forget(self, requests: Sequence[ErasureRequest], out: BatchOutcome) -> None:
        """Forget the customers of a run of erasure requests; their final changes join the
        batch's, after the changes of the events before them."""
        t0 = time.perf_counter()
        done = await self.eraser.forget(requests, int(time.time() * 1000))
        self.observe("forget", time.perf_counter() - t0)
        out.changes.extend(done.changes)
        self.counters.erased += len(done.customers)
        for customer_id in done.customers:
            # The churn and visit samples keep customers by id: dropped here, and the next
            # snapshot replaces the older ones that may hold them (Engine.snapshot_model).
            self._erased_since_snapshot |= self.segmenter.forget(customer_id)
        for r in requests:  # the request id, not the customer: the log is kept, the customer is not
            log.warning("erasure request %s applied (reason %r)", r.request_id, r.reason)
        if done.dropped:
            log.warning("erasure dropped %d segment changes not yet sent", done.dropped)

    async def _expire(self, requests: Sequence[ErasureRequest], out: BatchOutcome) -> None:
        """Forget customers silent past the retention, as an erasure does, but with no
        tombstone: one who comes back later is a new customer."""
        done = await self.eraser.forget(requests, int(time.time() * 1000), reason=RETENTION_REASON, suppress_ms=-1)
        out.changes.extend(done.changes)
        self.counters.expired += len(done.customers)
        for customer_id in done.customers:
            self._erased_since_snapshot |= self.segmenter.forget(customer_id)

    # -- duplicate filters -----------------------------------------------------
    async def sweep_filters(self, limit: int = 1000) -> int:
        """Trim the duplicate filters of this worker's customers that the lateness has
        passed (up to ``limit`` per partition); returns how many were swept.

        The horizon is the one the next batch would judge lateness by (this worker's
        own low watermark), and the sweep holds the lock that batches hold: a batch
        running meanwhile with an older horizon could otherwise take a duplicate of an
        entry swept under a newer one.
        """
        async with self.lock:
            low = await self._low_watermark(time.time())
            if low is None or not self.owned_partitions:
                return 0
            t0 = time.perf_counter()
            swept = await self.features.sweep_filters(low - self.settings.lateness_ms, self.owned_partitions, limit)
            self.observe("sweep_filters", time.perf_counter() - t0)
        self.counters.filters_swept += swept
        return swept

    # -- deadlines ------------------------------------------------------------
    async def clock_ms(self) -> int | None:
        """Now, as deadlines see it: wall clock, or the event-time watermark."""
        if self.settings.clock == "wall":
            return int(time.time() * 1000)
        # Partitions can turn idle without any new batch: let the watermark move on.
        low = await self._low_watermark(time.time())
        wm = await self.features.advance_watermark(low) if low is not None else await self.features.watermark_ms()
        return None if wm is None else wm - self.settings.lateness_ms

    async def fire_deadlines(self, limit: int = 1000) -> BatchOutcome:
        started = time.perf_counter()
        try:
            return await self._fire_deadlines(limit)
        finally:
            self._count_stall(time.perf_counter() - started)

    async def _fire_deadlines(self, limit: int) -> BatchOutcome:
        out = BatchOutcome()
        now_ms = await self.clock_ms()
        if now_ms is None:
            return out
        async with self.lock:
            t0 = time.perf_counter()
            due = await self.segments.claim_due(now_ms, limit, partitions=self.owned_partitions)
            self.observe("claim_due", time.perf_counter() - t0)
            if not due:
                return out
            rows = await self.features.read(due)
            updates = []
            gone = [cid for cid, (state, _) in zip(due, rows, strict=False) if not state.known]
            await self.segments.drop_deadlines(gone)  # else their lease would bring them back forever
            expired = []  # silent past SEGFLOW_RETENTION_DAYS: forgotten, not evaluated
            for cid, (state, seg_hash) in zip(due, rows, strict=False):
                if not state.known:
                    continue
                # Without behaviour (traits only), the newest profile update is all there is to go by.
                heard = state.last_seen_ms if state.exists else state.traits_updated_ms
                if not retained(heard, now_ms, self.settings.retention_ms):
                    expired.append(retention_request(cid, heard or 0, datetime.now(UTC)))
                    continue
                if not state.exists:
                    updates.append(self._traits_only(cid, heard, seg_hash, now_ms))
                    continue
                feats = compute(state, now_ms)
                traits = trait_features(state.traits, now_ms)
                updates.append(self._evaluate(cid, feats, seg_hash, now_ms, f"deadline:{now_ms}", last_seen_ms=state.last_seen_ms, traits=traits))
            t0 = time.perf_counter()
            written = await self.segments.write(updates)
            self.observe("commit", time.perf_counter() - t0)
            self.counters.deadline_evaluations += len(due)
            out.changes = list(written.changes)
            if expired:
                await self._expire(expired, out)
            self.publishing.update(i for i, _ in out.changes)
            out.ticket = self.turnstile.take() if out.changes else None
            self.counters.conflicts += len(written.conflicts)
        self._count(out)
        try:
            await self._publish_counts()
        except BaseException:
            self._abandon(out)
            raise
        return out

    def note_lag(self, lag: dict[str, int], now: float | None = None) -> None:
        """Record this worker's consumer ``lag`` (the shell reads it from its consumer, no
        I/O) and the apply rate since the last call: kept current while Redis stalls."""
        now = time.time() if now is None else now
        if self._status_sample is not None and now > self._status_sample[0]:
            self._apply_rate = (self.counters.applied - self._status_sample[1]) / (now - self._status_sample[0])
        self._status_sample = (now, self.counters.applied)
        self._lag = lag

    async def refresh_backlog(self, now: float | None = None) -> None:
        """Read the due deadlines of this worker's partitions and the outbox from Redis."""
        now = time.time() if now is None else now
        if self.settings.clock == "wall":
            clock = int(now * 1000)
        else:
            wm = await self.features.watermark_ms()
            clock = -1 if wm is None else wm - self.settings.lateness_ms  # before any event nothing is due
        partitions = range(self.settings.partitions) if self.owned_partitions is None else sorted(self.owned_partitions)
        self._backlog = backlog_from(await run_pipeline(self.redis, backlog_commands(self.layout, partitions, clock)), clock, int(now * 1000))

    @property
    def status(self) -> Status | None:
        """This worker's :class:`~streams.status.Status` (None until both parts were measured)."""
        if self._lag is None or self._backlog is None:
            return None
        due, oldest, outbox, outbox_age = self._backlog
        return Status(lag=self._lag, deadline_backlog=due, oldest_due_s=oldest, outbox=outbox, outbox_oldest_s=outbox_age, applied_per_s=self._apply_rate)

    # -- shared ---------------------------------------------------------------
    def _abandon(self, out: BatchOutcome) -> None:
        """A committed outcome that will not be published (its batch failed after the
        commit): later ones may go; its changes stay in the outbox for the relay."""
        if out.ticket is not None:
            self.turnstile.abandon(out.ticket)

    async def _low_watermark(self, now: float) -> int | None:
        silent = self.watermark.silent(now)
        pending: set[tuple[str, int]] = set()
        if silent and self.backlog_probe is not None:
            by_topic = {(self.topics.by_family[f], p): (f, p) for f, p in silent}
            pending = {by_topic[tp] for tp in await self.backlog_probe(set(by_topic))}
        return self.watermark.value(now, pending)

    def _evaluate(
        self,
        customer_id: str,
        feats: dict,
        seg_hash: dict[str, str],
        now_ms: int,
        cause: str,
        seen_ms: int | None = None,
        drift: list[DriftEvent] | None = None,
        learned: bool = False,
        last_seen_ms: int | None = None,
        traits: dict[str, float | str | None] | None = None,
    ) -> CustomerUpdate:
        previous = parse_segments(seg_hash)
        evaluation = self.segmenter.evaluate(customer_id, feats, previous, now_ms, cause, emitted_at_ms=int(time.time() * 1000), traits=traits)
        if drift is not None:  # event-driven evaluations feed the drift monitor (deadline ones would skew the shares)
            segments = {name: a.segment for name, a in evaluation.assignments.items()}
            drift += self.drift.update(now_ms, segments=segments, distance=evaluation.behaviour_distance if learned else None)
        changed = {
            name: StoredAssignment(a.segment, a.since_ms, a.reason, evaluation.model_version, a.seq)
            for name, a in evaluation.assignments.items()
            if name not in previous or previous[name].segment != a.segment
        }
        return CustomerUpdate(
            customer_id,
            changed,
            previous,
            evaluation.changes,
            evaluation.churn_propensity,
            retention_deadline(evaluation.next_deadline_ms, last_seen_ms, self.settings.retention_ms),
            version=version_of(seg_hash),
            evaluated_at_ms=now_ms,
            seen_ms=seen_ms,
        )

    def _traits_only(self, customer_id: str, heard_ms: int | None, seg_hash: dict[str, str], now_ms: int | None) -> CustomerUpdate:
        """The commit of a customer with traits and no behaviour: no segments, only the
        retention deadline, from the newest trait (none without retention)."""
        deadline = retention_deadline(None, heard_ms, self.settings.retention_ms)
        return CustomerUpdate(customer_id, {}, {}, [], None, deadline, version=version_of(seg_hash), evaluated_at_ms=now_ms or heard_ms or 0)

    async def _publish_counts(self) -> None:
        """Add the counts since the last call to the shared ``segflow:stats`` hash
        (HINCRBY: several workers add up, and a restarted worker does not reset them)."""
        current = self.counters.flat()
        # Taken synchronously: the agent and the deadline timer both publish.
        deltas = {k: v - self._published.get(k, 0) for k, v in current.items()}
        self._published = current
        deltas = {k: d for k, d in deltas.items() if d}
        if deltas:
            # (a retry after a lost reply can count a batch twice, as redis-py's pipeline could)
            await run_pipeline(self.redis, [("HINCRBY", keys.STATS, name, d) for name, d in deltas.items()])

    def _count(self, out: BatchOutcome) -> None:
        self.counters.dead_lettered += len(out.dead_letters)
        self.counters.changes += len(out.changes)
        for dl in out.dead_letters:
            self.counters.reasons[dl.reason] = self.counters.reasons.get(dl.reason, 0) + 1

    async def pending_outbox(self) -> list[tuple[str, str]]:
        """Outbox entries of this worker's partitions (all, until it is told which)."""
        return await self.segments.pending_outbox(partitions=self.owned_partitions)

    async def stale_outbox(self, now_ms: int) -> list[tuple[str, str]]:
        """Outbox entries over 10 s old of this worker's partitions that it is not publishing itself."""
        return stale_outbox(await self.segments.pending_outbox(partitions=self.owned_partitions), now_ms, self.publishing)

    async def confirm_sent(self, outbox_ids: Sequence[str]) -> None:
        await self.segments.confirm_sent(outbox_ids)

    async def _record_drift(self, events: Sequence[DriftEvent]) -> None:
        """Log and append drift events to the capped ``segflow:{drift}`` stream."""
        if not events:
            return
        version = self.segmenter.model_version
        pipe = self.redis.pipeline(transaction=False)
        for e in events:
            log.warning("drift detected: %s (%s) at %d, model v%d", e.signal, e.detail, e.at_ms, version)
            fields = {"kind": "drift", "signal": e.signal, "detail": e.detail, "at_ms": e.at_ms, "model_version": version}
            pipe.xadd(keys.DRIFT, fields, maxlen=DRIFT_STREAM_LEN, approximate=True)
        await pipe.execute()
        self.counters.drift_detected += len(events)  # counted once recorded, as every counter here

    async def reseed_if_requested(self) -> int | None:
        """Apply a pending ``segflow reseed`` request (hash ``segflow:{drift}:reseed``):
        fresh behaviour clusters, a new model version saved as a snapshot, a
        ``reseed`` entry in ``segflow:{drift}``. Returns the new version, or None
        when nothing was requested. The request is deleted only once recorded
        (a crash in between re-seeds again at the next run: harmless)."""
        raw = await self.redis.hgetall(keys.RESEED)
        if not raw:
            return None
        request = {_str(k): _str(v) for k, v in raw.items()}
        reason = request.get("reason", "")
        seed = int(request["seed"]) if request.get("seed") else None
        async with self.lock:
            version, blob = self.segmenter.reseed_behaviour(seed)
            self.drift.reset("fit:")  # distances to the old centroids say nothing about the new ones
        await self.segments.save_model(version, blob)
        self.counters.reseeds += 1
        log.warning("behaviour clusters re-seeded: model v%d, reason %r, requested at %s", version, reason, request.get("requested_at_ms"))
        entry = {
            "kind": "reseed",
            "signal": "reseed",
            "detail": reason,
            "at_ms": int(time.time() * 1000),
            "requested_at_ms": request.get("requested_at_ms", ""),
            "model_version": version,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(keys.DRIFT, entry, maxlen=DRIFT_STREAM_LEN, approximate=True)
        pipe.delete(keys.RESEED)
        await pipe.execute()
        await self._publish_counts()
        return version

    async def snapshot_model(self) -> int | None:
        snap = self.segmenter.snapshot_model()
        if snap is None:
            return None
        version, blob = snap
        erased, self._erased_since_snapshot = self._erased_since_snapshot, False
        try:
            await self.segments.save_model(version, blob, churn=json.dumps(self.segmenter.models_summary()), keep_older=not erased)
        except BaseException:
            self._erased_since_snapshot |= erased
            raise
        return version


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
