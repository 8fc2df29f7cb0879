"""Profile updates through the real broker, worker and Redis: traits stored, a late
older update does not win, a bad one is dead-lettered with its reason."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from features.codec import state_from_hash
from streams.erasure import erasure_request, publish_request
from streams.queries import customer_view
from streams.settings import Settings
from streams.topic_reader import read_to_end
from tests.integration.reliability_helpers import WORKER_LAYOUT
from tests.integration.test_pipeline import T0, publish, shopping_session
from tests.kafka_helpers import fresh_topics, read_until, send

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def profile(event_id: str, customer: str, when: datetime, **traits) -> bytes:
    return json.dumps({"event_id": event_id, "customer_id": customer, "occurred_at": when.isoformat(), "type": "profile", **traits}).encode()


def login(event_id: str, customer: str, when: datetime) -> bytes:
    doc = {"event_id": event_id, "customer_id": customer, "occurred_at": when.isoformat(), "type": "login", "success": True, "channel": "web"}
    return json.dumps(doc).encode()


def traits_of(redis_client, customer: str) -> dict[str, str]:
    return {name: value for name, (value, _) in state_from_hash(redis_client.hgetall(WORKER_LAYOUT.customer_key(customer))).traits.items()}


def wait_for(predicate, what: str, timeout: float = 60, worker=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what + (f"\n{worker.log()[-4000:]}" if worker is not None else "")
        time.sleep(0.2)


def test_traits_are_stored_a_late_older_update_does_not_win_and_a_bad_one_is_dead_lettered(broker, redis_server, start_worker, redis_client):
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_IDLE_PARTITION_SECONDS=2)
    send(broker, topics.logins, [(b"pia", login("l1", "pia", NOW - timedelta(minutes=5)))])
    newer = profile("p2", "pia", NOW - timedelta(minutes=1), country="DE", plan="pro", marketing_consent=True)
    send(broker, topics.profiles, [(b"pia", newer)])
    wait_for(lambda: traits_of(redis_client, "pia").get("plan") == "pro", "the profile update was not applied", worker=worker)

    # Older than the update above, and arriving after it: its country does not win; its
    # region, which no newer update set, is taken; the plan, absent from it, stays.
    older = profile("p1", "pia", NOW - timedelta(hours=2), country="FR", region="Bretagne", marketing_consent=False)
    bad = profile("p3", "pia", NOW, country="Germany")
    empty = profile("p4", "pia", NOW)
    send(broker, topics.profiles, [(b"pia", older), (b"pia", bad), (b"pia", empty)])
    # A customer known by a profile alone: traits stored, no behaviour, no segments.
    send(broker, topics.profiles, [(b"quinn", profile("q1", "quinn", NOW, birth_year=1950, signup_channel="store"))])
    wait_for(lambda: traits_of(redis_client, "pia").get("region") == "Bretagne", "the older update's new trait was not applied")
    assert traits_of(redis_client, "pia") == {"country": "DE", "region": "Bretagne", "plan": "pro", "marketing_consent": "1"}
    wait_for(lambda: traits_of(redis_client, "quinn") == {"birth_year": "1950", "signup_channel": "store"}, "a profile-only customer")
    state = state_from_hash(redis_client.hgetall(WORKER_LAYOUT.customer_key("pia")))
    assert state.events_total == 1 and state.last_seen_ms == int((NOW - timedelta(minutes=5)).timestamp() * 1000)  # a profile is not behaviour

    records = read_until(broker, topics.dead_letter, lambda rs: len(rs) >= 2, timeout=60)
    reasons = {r.value: dict(r.headers) for r in records}
    assert reasons[bad]["segflow.reason"] == b"invalid" and b"country" in reasons[bad]["segflow.detail"]
    assert reasons[bad]["segflow.source.topic"].decode() == topics.profiles
    assert reasons[empty]["segflow.reason"] == b"invalid" and b"at least one trait" in reasons[empty]["segflow.detail"]

    settings = Settings(redis_url=redis_server.url, partitions=2, clock="event")
    view = customer_view(redis_client, "pia", settings)
    assert view is not None and view["traits"]["country"]["value"] == "DE"
    assert view["traits"]["region"]["set_at"] == (NOW - timedelta(hours=2)).isoformat()
    profile_only = customer_view(redis_client, "quinn", settings)
    assert profile_only is not None and profile_only["segments"] == {} and profile_only["traits"]["birth_year"]["value"] == "1950"
    assert redis_client.get(WORKER_LAYOUT.customers(WORKER_LAYOUT.partition("quinn"))) is not None

    # An erasure takes the traits with it, and a later profile update does not bring them back.
    for cid in ("pia", "quinn"):
        publish_request(broker.bootstrap, topics, WORKER_LAYOUT.partitions, erasure_request(cid, "test", NOW))
    wait_for(lambda: not traits_of(redis_client, "pia") and not traits_of(redis_client, "quinn"), "the traits were not erased", worker=worker)
    send(broker, topics.profiles, [(b"pia", profile("p5", "pia", NOW, plan="gold"))])
    wait_for(lambda: int(redis_client.hget(WORKER_LAYOUT.stats(WORKER_LAYOUT.partition("pia")), "suppressed") or 0) >= 1, "not suppressed", worker=worker)
    assert traits_of(redis_client, "pia") == {} and customer_view(redis_client, "pia", settings) is None


CAMPAIGNS = """
version: 1
consent: {unknown: suppress}
campaigns:
  - name: hello
    segmentation: lifecycle
    enter: [new, active]
    from: [null]
  - name: premium_upsell
    segmentation: persona
    enter: [premium_members]
"""


def test_consent_is_respected_end_to_end_and_a_trait_change_moves_the_persona_at_once(broker, redis_server, start_worker, redis_client, tmp_path):
    topics = fresh_topics(broker)
    campaigns_file = tmp_path / "campaigns.yaml"
    campaigns_file.write_text(CAMPAIGNS)
    start_worker(topics.prefix, SEGFLOW_CAMPAIGNS_FILE=campaigns_file, SEGFLOW_IDLE_PARTITION_SECONDS=2)
    hour_ago = NOW - timedelta(hours=1)
    send(
        broker,
        topics.profiles,
        [(b"ann", profile("a0", "ann", hour_ago, marketing_consent=True)), (b"bob", profile("b0", "bob", hour_ago, marketing_consent=False))],
    )
    wait_for(lambda: traits_of(redis_client, "ann") and traits_of(redis_client, "bob"), "the profiles were not applied")
    # ann said yes, bob said no, cid never said (this campaigns file: unknown -> suppress).
    for cid in ("ann", "bob", "cid"):
        send(broker, topics.logins, [(cid.encode(), login(f"l-{cid}", cid, NOW - timedelta(minutes=30)))])

    def lifecycle_first(rs):
        return {c["customer_id"]: c for c in map(json.loads, (r.value for r in rs)) if c["segmentation"] == "lifecycle" and c["from"] is None}

    changes = read_until(broker, topics.segment_changes, lambda rs: len(lifecycle_first(rs)) == 3, timeout=90)
    first = lifecycle_first(changes)  # the changes flow for everyone, consent or not
    assert first["ann"]["features"]["marketing_consent"] == 1.0
    assert first["bob"]["features"]["marketing_consent"] == 0.0
    assert first["cid"]["features"].get("marketing_consent") is None

    # A trait change alone (no event) moves the persona at once.
    later = NOW - timedelta(minutes=10)
    send(broker, topics.profiles, [(b"ann", profile("a1", "ann", later, plan="premium")), (b"bob", profile("b1", "bob", later, plan="gold"))])

    def premium(rs):
        return {c["customer_id"]: c for c in map(json.loads, (r.value for r in rs)) if c["segmentation"] == "persona" and c["to"] == "premium_members"}

    moved = premium(read_until(broker, topics.segment_changes, lambda rs: len(premium(rs)) == 2, timeout=60))
    assert moved["ann"]["from"] == "unprofiled" and moved["ann"]["reason"] == "premium_plan"

    def counted() -> bool:
        stats = redis_client.hgetall("segflow:stats")
        return stats.get("campaign:hello:no_consent") == "2" and stats.get("campaign:premium_upsell:no_consent") == "1"

    wait_for(counted, "the suppressed triggers were not counted")
    triggers = read_until(
        broker,
        topics.campaign_triggers,
        lambda rs: {(t["campaign"], t["customer_id"]) for t in map(json.loads, (r.value for r in rs))} >= {("hello", "ann"), ("premium_upsell", "ann")},
    )
    assert {json.loads(r.value)["customer_id"] for r in triggers} == {"ann"}


def test_a_profile_update_after_a_silence_moves_the_persona_and_not_the_customer_back_in_time(broker, redis_server, start_worker, redis_client):
    """Alice goes silent; a deadline moves her lifecycle on. A profile update then moves her
    persona, evaluated at the clock: her lifecycle stays where the silence put it."""
    topics = fresh_topics(broker)
    worker = start_worker(topics.prefix, SEGFLOW_IDLE_PARTITION_SECONDS=2)
    publish(broker, topics, shopping_session("alice", T0))
    publish(broker, topics, shopping_session("bob", T0 + timedelta(days=90), base=100))  # the event clock moves on

    def lifecycle_of(cid: str) -> list[dict]:
        return [c for c in changes_of_customer(broker, topics, cid) if c["segmentation"] == "lifecycle"]

    wait_for(
        lambda: [c["to"] for c in lifecycle_of("alice")][-1:] in (["at_risk"], ["dormant"], ["churned"]),
        "alice's silence was not noticed",
        timeout=90,
        worker=worker,
    )
    silent = lifecycle_of("alice")[-1]
    send(broker, topics.profiles, [(b"alice", profile("a1", "alice", T0 + timedelta(days=89), plan="gold"))])

    def persona_moved() -> bool:
        return any(c["segmentation"] == "persona" and c["to"] == "premium_members" for c in changes_of_customer(broker, topics, "alice"))

    wait_for(persona_moved, "alice's persona did not move", worker=worker)
    moved = next(c for c in changes_of_customer(broker, topics, "alice") if c["segmentation"] == "persona" and c["to"] == "premium_members")
    assert moved["occurred_at"] >= silent["occurred_at"]  # evaluated at the clock, not at her last event
    assert lifecycle_of("alice")[-1] == silent  # and her lifecycle did not go back to active


def changes_of_customer(broker, topics, customer_id: str) -> list[dict]:
    return [c for c in (json.loads(r.value) for r in read_to_end(broker.bootstrap, topics.segment_changes)) if c["customer_id"] == customer_id]
