"""Campaign routing, the shell: segment changes -> caps in Redis -> triggers to publish.

:mod:`segmenter.campaigns` decides which campaigns a change starts and whether
the customer is held out; this module charges the frequency caps and
cooldowns atomically in Redis (one Lua script call per trigger, pipelined per
batch) and hands back the triggers the Faust app publishes to
``campaign-triggers``.

Crash safety (at-least-once): the app publishes the triggers of a batch of
changes after Kafka has the changes and before their outbox entries are
deleted. A crash in between leaves the changes in the outbox; the next worker
re-sends them and routes them again. The trigger ids are the same, so

- caps are not charged twice: the script remembers its verdict per trigger id
  (published or refused) for 7 days of wall-clock time and answers a repeat
  with the first verdict (``recharged`` / ``refused_before``);
- a trigger charged but never published (crash between the two) is published
  on the re-send;
- subscribers see a re-sent trigger again and drop it by ``trigger_id``.

Redis keys (all of one customer share the hash tag ``{ID}``, so one slot):

- ``cust:{ID}:camp:<campaign>`` sorted set, trigger id -> ``occurred_at`` (ms)
  of the triggers charged; trimmed to twice the campaign's span (the longer of
  cap period and cooldown) behind the newest, expires after that long;
- ``cust:{ID}:camp:<campaign>:seen`` sorted set, ``1:<trigger id>`` (published)
  or ``0:<trigger id>`` (refused) -> wall-clock ms of the verdict; kept 7 days.

A customer without marketing consent (``consent`` in the campaigns file,
:class:`segmenter.campaigns.ConsentPolicy`) gets no trigger: the decision is
marked ``suppressed: no_consent``, counted as ``campaign:<name>:no_consent`` in
``segflow:stats``, and charges no cap; the segment change is published as ever.

Campaigns without cap and cooldown do not touch Redis. An erasure change (``to``
null, docs/OPERATIONS.md "Erasure") fires nothing and deletes both keys of every
configured campaign for that customer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import cast

from redis.exceptions import NoScriptError

from features.pipeline import run_pipeline
from segmenter.campaigns import (
    REMEMBER_MS,
    CampaignConfig,
    CampaignTrigger,
    CapStatus,
    CapVerdict,
    TriggerDecision,
    cap_key,
    default_campaigns,
    load_campaigns,
    parse_campaigns,
)
from segmenter.changes import SegmentChange

log = logging.getLogger("segflow.campaigns")

STATS_KEY = "segflow:stats"

# KEYS[1] charged set, KEYS[2] verdicts set (same customer, same slot)
# ARGV: trigger_id, t_ms (cap time), max (0 = no cap), period_ms, cooldown_ms, now_ms (wall), remember_ms
# Returns {status, reason}: the semantics of segmenter.campaigns.CapLedger.charge.
CAPS_LUA = r"""
local charged, seen = KEYS[1], KEYS[2]
local tid = ARGV[1]
local t = tonumber(ARGV[2])
local maxn = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local cooldown = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
local remember = tonumber(ARGV[7])
local function n(x) return string.format('%.0f', x) end
redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. n(now - remember))
if redis.call('ZSCORE', seen, '1:' .. tid) then return {'recharged', ''} end
if redis.call('ZSCORE', seen, '0:' .. tid) then return {'capped', 'refused_before'} end
local span = cooldown
if maxn > 0 and period > span then span = period end
local top = redis.call('ZRANGE', charged, -1, -1, 'WITHSCORES')
local why = ''
if top[2] and t < tonumber(top[2]) - span then
  why = 'too_old'
else
  local newest = t
  if top[2] and tonumber(top[2]) > newest then newest = tonumber(top[2]) end
  redis.call('ZREMRANGEBYSCORE', charged, '-inf', '(' .. n(newest - 2 * span))
  if cooldown > 0 and redis.call('ZCOUNT', charged, '(' .. n(t - cooldown), '(' .. n(t + cooldown)) > 0 then
    why = 'cooldown'
  elseif maxn > 0 then
    local near = redis.call('ZRANGEBYSCORE', charged, '(' .. n(t - period), '(' .. n(t + period), 'WITHSCORES')
    local times = {t}
    for i = 2, #near, 2 do times[#times + 1] = tonumber(near[i]) end
    table.sort(times)
    for _, s in ipairs(times) do
      local c = 0
      for _, x in ipairs(times) do
        if x >= s and x < s + period then c = c + 1 end
      end
      if c > maxn then why = 'frequency_cap' break end
    end
  end
end
if why == '' then
  redis.call('ZADD', charged, n(t), tid)
  redis.call('ZADD', seen, n(now), '1:' .. tid)
else
  redis.call('ZADD', seen, n(now), '0:' .. tid)
end
if redis.call('EXISTS', charged) == 1 then redis.call('PEXPIRE', charged, n(2 * span)) end
redis.call('PEXPIRE', seen, n(remember))
if why ~= '' then return {'capped', why} end
return {'charged', ''}
"""
CAPS_SHA = hashlib.sha1(CAPS_LUA.encode()).hexdigest()  # what EVALSHA names it by


def campaigns_for(settings) -> CampaignConfig:
    """The campaigns a worker with these settings routes: ``campaigns_file`` or
    the shipped defaults, checked against the segmentation config in use."""
    from segmenter.config import default_config, load_config

    if settings.segments_config is None and settings.campaigns_file is None:
        return default_campaigns()
    segments = load_config(settings.segments_config) if settings.segments_config else default_config()
    if settings.campaigns_file is not None:
        return load_campaigns(settings.campaigns_file, segments)
    from pathlib import Path

    import segmenter.campaigns as core

    text = (Path(core.__file__).parent / core.DEFAULT_CAMPAIGNS_NAME).read_text()
    return parse_campaigns(text, core.DEFAULT_CAMPAIGNS_NAME + " (against SEGFLOW_SEGMENTS_CONFIG; set SEGFLOW_CAMPAIGNS_FILE)", segments)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CampaignRouter:
    """Routes batches of segment-change payloads to the triggers to publish."""

    def __init__(self, campaigns: CampaignConfig, redis, clock=time.time):
        self.campaigns = campaigns
        self.redis = redis
        self.clock = clock
        self.counters: Counter[str] = Counter()

    def decide(self, payloads: Iterable[str | bytes]) -> list[TriggerDecision]:
        """The pure part: every (change, matching campaign), before caps."""
        return self._decide(_changes_of(payloads))

    def _decide(self, changes: list[SegmentChange]) -> list[TriggerDecision]:
        emitted = datetime.fromtimestamp(self.clock(), tz=UTC)
        # A customer erased in this batch gets nothing, not even for the changes before
        # the erasure: their triggers would go out after the customer was forgotten.
        erased = erased_customers(changes)
        return [d for change in changes if change.customer_id not in erased for d in self.campaigns.route(change, emitted)]

    async def forget(self, customer_ids: Iterable[str]) -> None:
        """Delete the cap and verdict keys of erased customers (one DEL each: a
        customer's keys share the hash tag ``{ID}``). Keys of campaigns no longer
        configured are not known here; they expire by themselves (7 days at most for
        verdicts, twice the campaign's span for charges)."""
        names = self.campaigns.names()
        commands = [("DEL", *(k for name in names for k in (cap_key(cid, name), cap_key(cid, name) + ":seen"))) for cid in customer_ids]
        if names and commands:
            await run_pipeline(self.redis, commands)

    async def charge(self, decisions: list[TriggerDecision]) -> list[CapVerdict]:
        """Charge the caps of every decision, in order, atomically per trigger."""
        verdicts: list[CapVerdict | None] = [None if d.policy.limited else CapVerdict("charged") for d in decisions]
        limited = [i for i, d in enumerate(decisions) if d.policy.limited]
        now_ms = int(self.clock() * 1000)
        if limited:
            commands = []
            for i in limited:
                d = decisions[i]
                p = d.policy
                commands.append(
                    (
                        "EVALSHA",
                        CAPS_SHA,
                        2,
                        d.cap_key,
                        d.seen_key,
                        d.trigger.trigger_id,
                        d.occurred_at_ms,
                        p.max_triggers or 0,
                        p.period_ms,
                        p.cooldown_ms,
                        now_ms,
                        REMEMBER_MS,
                    )
                )
            try:
                results = await run_pipeline(self.redis, commands)
            except NoScriptError:
                # Scripts do not survive a Redis restart, which can fall between loading
                # this one and running it (a worker crashed on it in a soak). Nothing
                # ran (every command is this script); load it and run them again.
                await self.redis.script_load(CAPS_LUA)
                results = await run_pipeline(self.redis, commands)
            for i, (status, reason) in zip(limited, results, strict=False):
                verdicts[i] = CapVerdict(cast(CapStatus, _text(status)), _text(reason))  # CAPS_LUA returns only these
        return verdicts  # type: ignore[return-value]

    async def route(self, payloads: Iterable[str | bytes]) -> list[CampaignTrigger]:
        """Triggers to publish for these change payloads (caps charged, counted); an
        erasure change deletes the customer's keys here."""
        changes = _changes_of(payloads)
        await self.forget(erased_customers(changes))
        decided = self._decide(changes)
        # Without the customer's consent: no trigger, no cap charged; counted per campaign.
        counts: Counter[str] = Counter(f"campaign:{d.trigger.campaign}:{d.suppressed}" for d in decided if d.suppressed)
        decisions = [d for d in decided if not d.suppressed]
        verdicts = await self.charge(decisions) if decisions else []
        out = []
        for d, v in zip(decisions, verdicts, strict=False):
            name = d.trigger.campaign
            if v.publish:
                out.append(d.trigger)
            if v.status == "charged":
                counts[f"campaign:{name}:{'holdout' if d.trigger.holdout else 'treatment'}"] += 1
            elif v.status == "recharged":
                counts[f"campaign:{name}:resent"] += 1
            elif v.reason != "refused_before":
                counts[f"campaign:{name}:capped"] += 1
        self.counters.update(counts)
        if counts:
            async with self.redis.pipeline(transaction=False) as pipe:
                for field, n in counts.items():
                    pipe.hincrby(STATS_KEY, field, n)
                await pipe.execute()
        return out


def _changes_of(payloads: Iterable[str | bytes]) -> list[SegmentChange]:
    changes = []
    for payload in payloads:
        try:
            changes.append(SegmentChange.model_validate_json(payload))
        except ValueError as exc:  # never expected: the engine wrote it
            log.error("cannot route a segment change that does not parse: %s", exc)
    return changes


def erased_customers(changes: Iterable[SegmentChange]) -> set[str]:
    """Customers whose erasure is among these changes.

    >>> from segmenter.changes import SegmentChange
    >>> c = lambda cid, to: SegmentChange.create(customer_id=cid, segmentation="value", from_segment="loyal", to_segment=to,
    ...                                          reason="r", model_version=None, occurred_at_ms=0, cause="x", features={})
    >>> erased_customers([c("a", "lost"), c("b", None)])
    {'b'}
    """
    return {c.customer_id for c in changes if c.erased}


def trigger_message(trigger: CampaignTrigger) -> tuple[bytes, bytes]:
    """(key, value) of the Kafka message: keyed by customer, JSON value."""
    return trigger.customer_id.encode(), trigger.model_dump_json().encode()
