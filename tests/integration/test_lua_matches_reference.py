"""The Redis function folds events exactly as the pure reference does."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.codec import ring_entries, state_from_hash
from features.keys import Layout
from features.state import BUCKET_DAYS, DAY_MS, METRICS, CustomerState, EventDelta, apply_delta, forgotten, sweep_filter
from features.store import apply_call, load_library_sync
from features.traits import base36
from streams.erasure import forget_call
from streams.events import TRAIT_NAMES

pytestmark = pytest.mark.integration
LAYOUT = Layout(4)

behaviour_deltas = st.builds(
    EventDelta,
    # Mostly a few days (many events share a day's bucket), sometimes months (expiry).
    ts_ms=st.integers(20_000 * DAY_MS, 20_000 * DAY_MS + 3 * DAY_MS) | st.integers(20_000 * DAY_MS, 20_000 * DAY_MS + 200 * DAY_MS),
    token=st.text("0123456789abcdef", min_size=2, max_size=3),
    family=st.sampled_from(["clickstream", "purchase", "login"]),
    increments=st.dictionaries(st.integers(0, len(METRICS) - 1), st.integers(1, 50_000), max_size=3),
    categories=st.dictionaries(st.sampled_from([f"cat{i}" for i in range(12)]), st.integers(1, 5), max_size=3),
    purchase=st.booleans(),
    visit=st.booleans(),
    login=st.booleans(),
    offset=st.none() | st.tuples(st.integers(0, 1), st.integers(0, 30)),
)
# Profile updates among them: traits, last writer wins per trait in event time.
profile_deltas = st.builds(
    EventDelta,
    ts_ms=st.integers(20_000 * DAY_MS, 20_000 * DAY_MS + 3 * DAY_MS),
    token=st.text("0123456789abcdef", min_size=2, max_size=3).map(lambda t: "f" + t),
    family=st.just("profile"),
    increments=st.just({}),
    offset=st.none() | st.tuples(st.integers(0, 1), st.integers(0, 30)),
    traits=st.dictionaries(
        st.sampled_from(TRAIT_NAMES), st.sampled_from(["1990", "DE", "FR", "pro", "free", "1", "0", "Zürich", "Zurich"]), min_size=1, max_size=4
    ),
)
deltas = behaviour_deltas | profile_deltas


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(deltas, st.none() | st.integers(20_000 * DAY_MS, 20_000 * DAY_MS + 200 * DAY_MS)), max_size=40))
def test_lua_apply_equals_python_apply(redis_client, events):
    run_both(redis_client, events)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.just("forget") | st.tuples(deltas, st.none() | st.integers(20_000 * DAY_MS, 20_000 * DAY_MS + 200 * DAY_MS)), max_size=30))
def test_lua_forget_then_apply_equals_the_reference(redis_client, ops):
    """Erasures among the events: segflow_forget leaves what features.state.forgotten
    holds (the tombstone), and segflow_apply suppresses every later event, as apply_delta does."""
    load_library_sync(redis_client)
    redis_client.delete(LAYOUT.customer_key("c"), LAYOUT.segments_key("c"))
    ref = CustomerState()
    for i, op in enumerate(ops):
        if op == "forget":
            ref = forgotten(i)
            assert redis_client.execute_command(*forget_call(LAYOUT, "c", 0, [], i, 60_000))[0] == "ok"
        else:
            delta, late_before = op
            assert redis_client.execute_command(*apply_call(LAYOUT, "c", delta, late_before))[0] == apply_delta(ref, delta, late_before)
    assert state_from_hash(redis_client.hgetall(LAYOUT.customer_key("c"))) == ref


horizons = st.none() | st.integers(20_000 * DAY_MS, 20_000 * DAY_MS + 200 * DAY_MS)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(deltas, horizons) | st.just(("sweep", None)), max_size=40), data=st.data())
def test_sweeping_filters_between_events_equals_the_reference(redis_client, ops, data):
    """Sweeps among the events (``segflow_sweep_filters``, the worker's timer): a sweep
    forgets what features.state.sweep_filter forgets, so every later event has the
    reference's outcome; and while the filter holds entries the customer is in the
    partition's sweep set, scored no later than its newest event, so the sweep comes
    for the whole filter once the lateness has passed it."""
    load_library_sync(redis_client)
    p = LAYOUT.partition("c")
    sweep_set, prefix = LAYOUT.filters_key(p), LAYOUT.customer_key_prefix(p)
    redis_client.delete(LAYOUT.customer_key("c"), sweep_set)
    ref = CustomerState()
    for op, arg in ops:
        if op == "sweep":
            # A horizon at, just after or just before an entry of the filter, or anywhere.
            near = st.sampled_from(sorted(ref.recent.values())).flatmap(lambda t: st.sampled_from([t - 1, t, t + 1])) if ref.recent else st.nothing()
            arg = data.draw(near | st.integers(20_000 * DAY_MS, 20_000 * DAY_MS + 4 * DAY_MS), label="horizon")
            due = (score := redis_client.zscore(sweep_set, "c")) is not None and score < arg
            assert redis_client.execute_command("FCALL", "segflow_sweep_filters", 1, sweep_set, arg, 10, prefix) == int(due)
            if due:
                sweep_filter(ref, arg)
        else:
            assert redis_client.execute_command(*apply_call(LAYOUT, "c", op, arg))[0] == apply_delta(ref, op, arg)
        assert state_from_hash(redis_client.hgetall(LAYOUT.customer_key("c"))) == ref
        score = redis_client.zscore(sweep_set, "c")
        if ref.recent:
            assert score is not None and score <= ref.last_seen_ms
    if ref.recent:  # the lateness passing the newest event empties the filter
        horizon = ref.last_seen_ms + 1
        assert redis_client.execute_command("FCALL", "segflow_sweep_filters", 1, sweep_set, horizon, 10, prefix) == 1
        sweep_filter(ref, horizon)
        assert not ref.recent and "q" not in redis_client.hgetall(LAYOUT.customer_key("c"))
        assert redis_client.zscore(sweep_set, "c") is None


def test_a_sweep_forgets_only_what_lies_before_the_horizon(redis_client):
    """At the boundary: an entry at the horizon stays (an event at that time is not too
    late), the one before it goes; the filter goes once the horizon passes its newest
    entry. A customer whose filter an older version left unswept joins the sweep with its
    next event after a pause longer than the lateness."""
    load_library_sync(redis_client)
    p = LAYOUT.partition("c")
    sweep_set, prefix = LAYOUT.filters_key(p), LAYOUT.customer_key_prefix(p)
    redis_client.delete(LAYOUT.customer_key("c"), sweep_set)
    base = 20_000 * DAY_MS

    def sweep(horizon: int) -> int:
        return redis_client.execute_command("FCALL", "segflow_sweep_filters", 1, sweep_set, horizon, 10, prefix)

    for i in range(3):
        assert redis_client.execute_command(*apply_call(LAYOUT, "c", EventDelta(base + i, f"l{i}", "login", {9: 1}), None))[0] == "applied"
    assert redis_client.zscore(sweep_set, "c") == base  # scored by the event that started the filter
    assert sweep(base) == 0  # nothing before the horizon: not due
    assert sweep(base + 1) == 1
    assert state_from_hash(redis_client.hgetall(LAYOUT.customer_key("c"))).recent == {"l1": base + 1, "l2": base + 2}
    assert redis_client.zscore(sweep_set, "c") == base + 2  # re-scored by its newest entry
    assert sweep(base + 2) == 0
    assert sweep(base + 3) == 1
    assert "q" not in redis_client.hgetall(LAYOUT.customer_key("c")) and redis_client.zscore(sweep_set, "c") is None
    # A duplicate of a swept event is still refused: it is older than the horizon,
    # also for a worker that does not know the horizon (a new consumer group's replay,
    # a rebalanced partition): the sweep left the lateness floor.
    assert redis_client.execute_command(*apply_call(LAYOUT, "c", EventDelta(base + 2, "l2", "login", {9: 1}), base + 3))[0] == "too_late"
    assert redis_client.hget(LAYOUT.customer_key("c"), "lf") == str(base + 2)
    for i in range(3):
        assert redis_client.execute_command(*apply_call(LAYOUT, "c", EventDelta(base + i, f"l{i}", "login", {9: 1}), None))[0] == "too_late"

    # An older version's customer: a filter, no place in the sweep set.
    redis_client.hset(LAYOUT.customer_key("c"), "q", "l2." + base36(base + 2))
    assert redis_client.execute_command(*apply_call(LAYOUT, "c", EventDelta(base + 9, "l9", "login", {9: 1}), base + 1))[0] == "applied"
    assert redis_client.zscore(sweep_set, "c") is None  # its newest event (base + 2) was within the lateness
    assert redis_client.execute_command(*apply_call(LAYOUT, "c", EventDelta(base + DAY_MS, "la", "login", {9: 1}), base + 10))[0] == "applied"
    assert redis_client.zscore(sweep_set, "c") == base + DAY_MS  # back after a pause past the lateness: swept from now on


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(behaviour_deltas, min_size=1, max_size=8, unique_by=lambda d: d.token),
    ops=st.lists(st.tuples(st.integers(0, 7), st.booleans(), horizons) | st.just(("sweep", None, None)), max_size=40),
    data=st.data(),
)
def test_no_event_is_applied_twice_whatever_the_horizon(redis_client, events, ops, data):
    """The contract a subscriber relies on: copies of one event (producer retries with a
    new offset or none, replays), each met with any horizon a worker may hold, including
    none (a new consumer group, a rebalanced partition), and sweeps between them: the
    event is applied at most once. Lua and the reference agree throughout."""
    load_library_sync(redis_client)
    p = LAYOUT.partition("c")
    sweep_set, prefix = LAYOUT.filters_key(p), LAYOUT.customer_key_prefix(p)
    redis_client.delete(LAYOUT.customer_key("c"), sweep_set)
    ref, applied = CustomerState(), []
    for which, same_offset, horizon in ops:
        if which == "sweep":
            arg = data.draw(st.integers(20_000 * DAY_MS, 20_000 * DAY_MS + 200 * DAY_MS), label="sweep horizon")
            if (score := redis_client.zscore(sweep_set, "c")) is not None and score < arg:
                redis_client.execute_command("FCALL", "segflow_sweep_filters", 1, sweep_set, arg, 10, prefix)
                sweep_filter(ref, arg)
            continue
        delta = events[which % len(events)]
        if not same_offset:
            delta = delta._replace(offset=None)
        status = redis_client.execute_command(*apply_call(LAYOUT, "c", delta, horizon))[0]
        assert status == apply_delta(ref, delta, horizon)
        if status == "applied":
            applied.append(delta.token)
    assert len(applied) == len(set(applied)), applied
    assert state_from_hash(redis_client.hgetall(LAYOUT.customer_key("c"))) == ref


def test_several_counters_in_one_day_bucket(redis_client):
    """Regression: Lua 5.1's gmatch shifted counters after an empty field (revenue read as discount)."""
    day = 20_000 * DAY_MS
    run_both(
        redis_client,
        [
            (EventDelta(day + 1, "a", "purchase", {6: 1, 7: 1200}, purchase=True), None),
            (EventDelta(day + 2, "b", "purchase", {6: 1, 7: 7700}, purchase=True), None),
            (EventDelta(day + 3, "c", "clickstream", {0: 1, 1: 2}, visit=True), day),
            (EventDelta(day + 4, "d", "clickstream", {1: 1}, visit=True), day),
        ],
    )


def run_both(redis_client, events):
    load_library_sync(redis_client)
    redis_client.delete(LAYOUT.customer_key("c"))
    ref = CustomerState()
    for delta, late_before in events:
        expected = apply_delta(ref, delta, late_before)
        reply = redis_client.execute_command(*apply_call(LAYOUT, "c", delta, late_before))
        assert reply[0] == expected
    stored = state_from_hash(redis_client.hgetall(LAYOUT.customer_key("c")))
    assert stored == ref
    if ref.last_seen_ms is not None:
        newest_day = ref.last_seen_ms // DAY_MS
        assert all(newest_day - BUCKET_DAYS < d for d in stored.buckets)


def test_lua_refuses_a_retry_after_the_duplicate_filter_overflowed(redis_client):
    base = 20_000 * DAY_MS
    burst = [(EventDelta(base + i, f"t{i}", "login", {9: 1}), base - DAY_MS) for i in range(80)]
    run_both(redis_client, [*burst, burst[3]])  # run_both asserts the same status ('unverifiable') and state
    assert redis_client.hget(LAYOUT.customer_key("c"), "df:t") == str(base + 80 - 64 - 1)


@pytest.mark.parametrize("legacy", ["cold:{day}", "cold.{day36}", "cold.{day36};cmid:{later}"])
def test_a_duplicate_filter_written_by_an_older_version_still_catches_duplicates(redis_client, legacy):
    """Older versions kept the filter in ``r``, unsorted, as ``token:<decimal ms>`` or
    ``token.<base 36 ms>``: it still catches duplicates, and the next applied event
    moves it to ``q`` (sorted, time differences)."""
    load_library_sync(redis_client)
    day = 20_000 * DAY_MS
    r_value = legacy.format(day=day, day36=base36(day), later=day + 9)
    redis_client.delete(LAYOUT.customer_key("c"))
    redis_client.hset(LAYOUT.customer_key("c"), mapping={"fs": day, "ls": day + 9, "n": 1, "r": r_value})
    assert redis_client.execute_command(*apply_call(LAYOUT, "c", EventDelta(day, "cold", "clickstream", {1: 1}), None))[0] == "duplicate"
    assert redis_client.execute_command(*apply_call(LAYOUT, "c", EventDelta(day + 5, "cnew", "clickstream", {1: 1}), None))[0] == "applied"
    h = redis_client.hgetall(LAYOUT.customer_key("c"))
    expected = {"cold": day, "cnew": day + 5, **({"cmid": day + 9} if "cmid" in legacy else {})}
    assert "r" not in h and ring_entries(h["q"]) == sorted(expected.items(), key=lambda kv: kv[1])
    assert state_from_hash(h).recent == expected
    assert redis_client.execute_command(*apply_call(LAYOUT, "c", EventDelta(day, "cold", "clickstream", {1: 1}), None))[0] == "duplicate"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(times=st.lists(st.integers(0, 40), min_size=1, max_size=90), horizon=st.none() | st.integers(0, 30))
def test_the_filter_stays_sorted_with_in_order_and_late_events(redis_client, times, horizon):
    """In-order events take the append path, older ones the rebuild path: either way
    ``q`` is sorted by (time, token), holds what the reference holds, and its floors match."""
    base = 20_000 * DAY_MS
    run_both(
        redis_client, [(EventDelta(base + t * 1000, f"t{i}", "login", {9: 1}), None if horizon is None else base + horizon * 1000) for i, t in enumerate(times)]
    )
    entries = ring_entries(redis_client.hget(LAYOUT.customer_key("c"), "q") or "")
    assert entries == sorted(entries, key=lambda kv: (kv[1], kv[0]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    old=st.dictionaries(st.text("abcdef", min_size=2, max_size=3), st.integers(0, 40), max_size=90),
    decimal=st.booleans(),
    new=st.integers(0, 45),
    horizon=st.none() | st.integers(0, 30),
)
def test_an_older_filter_is_converted_as_the_reference_reads_it(redis_client, old, decimal, new, horizon):
    """An ``r`` filter (unsorted, absolute times, past the cap or the lateness) and the
    next event: the Lua function ends with the same state, floors and ``q`` as the
    reference that reads ``r`` (features.codec.state_from_hash)."""
    load_library_sync(redis_client)
    base = 20_000 * DAY_MS
    times = {f"l{token}": base + t * 1000 for token, t in old.items()}
    r_value = ";".join(f"{token}:{at}" if decimal else f"{token}.{base36(at)}" for token, at in reversed(times.items()))
    newest = max(times.values(), default=base)
    seeded = {"fs": base, "ls": newest, "n": 1, **({"r": r_value} if r_value else {})}
    redis_client.delete(LAYOUT.customer_key("c"))
    redis_client.hset(LAYOUT.customer_key("c"), mapping=seeded)
    ref = state_from_hash(seeded)
    delta = EventDelta(base + new * 1000, "lnew", "login", {9: 1})
    late_before = None if horizon is None else base + horizon * 1000
    status = redis_client.execute_command(*apply_call(LAYOUT, "c", delta, late_before))[0]
    assert status == apply_delta(ref, delta, late_before)
    h = redis_client.hgetall(LAYOUT.customer_key("c"))
    assert state_from_hash(h) == ref
    if status == "applied":  # the others leave the hash as it was, `r` included
        entries = ring_entries(h.get("q", ""))
        assert "r" not in h and entries == sorted(entries, key=lambda kv: (kv[1], kv[0]))


def test_a_customer_is_counted_once_whether_traits_or_behaviour_come_first(redis_client):
    """The max_customers count: a customer with traits, behaviour or both is one customer,
    and an erasure takes them off the count either way."""
    load_library_sync(redis_client)
    day = 20_000 * DAY_MS
    profile = EventDelta(day, "fa", "profile", {}, traits={"plan": "pro"})
    login = EventDelta(day, "la", "login", {9: 1}, login=True)
    for cid, first, then in (("p1", profile, login), ("b1", login, profile), ("o1", profile, None)):
        p = LAYOUT.partition(cid)
        before = int(redis_client.get(LAYOUT.customers(p)) or 0)
        for delta in filter(None, (first, then)):
            assert redis_client.execute_command(*apply_call(LAYOUT, cid, delta, None))[0] == "applied"
        assert int(redis_client.get(LAYOUT.customers(p))) == before + 1, cid
        assert redis_client.execute_command(*forget_call(LAYOUT, cid, 0, [], 5, 60_000))[0] == "ok"
        assert int(redis_client.get(LAYOUT.customers(p))) == before, cid
    # Past the limit, a new customer's profile update is refused like an event.
    p = LAYOUT.partition("p2")
    redis_client.set(LAYOUT.customers(p), 3)
    assert redis_client.execute_command(*apply_call(LAYOUT, "p2", profile, None, max_customers=3))[0] == "over_capacity"
    assert not redis_client.exists(LAYOUT.customer_key("p2"))
