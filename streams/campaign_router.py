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

- caps are not charged twice: the script remembers the trigger ids it charged
  (and refused) per customer and campaign, for at least
  ``max(period, cooldown, 1 day)`` of cap time, and answers a repeat with the
  first verdict;
- subscribers see the trigger again and drop it by ``trigger_id``.

A trigger whose cap was charged but which was never published (crash between
the two) is published on the re-send, since the script answers ``recharged``.

Redis keys (all of one customer share the hash tag ``{ID}``, so one slot):
``cust:{ID}:camp:<campaign>`` sorted set, trigger id -> occurred_at (ms) of the
triggers charged; ``cust:{ID}:camp:<campaign>:refused`` the same for the ones
the caps refused. Both are trimmed to the retention on every call and expire
after it (wall clock) when the customer goes quiet.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Iterable

from segmenter.campaigns import CampaignConfig, CampaignTrigger, CapVerdict, TriggerDecision, default_campaigns, load_campaigns, parse_campaigns
from segmenter.changes import SegmentChange

log = logging.getLogger("segflow.campaigns")

STATS_KEY = "segflow:stats"

# KEYS[1] charged set, KEYS[2] refused set (same customer, same slot)
# ARGV: trigger_id, t_ms, max (0 = no cap), period_ms, cooldown_ms, keep_ms
# Returns {status, reason}; the same semantics as segmenter.campaigns.CapLedger.charge.
CAPS_LUA = r"""
local charged, refused = KEYS[1], KEYS[2]
local tid = ARGV[1]
local t = tonumber(ARGV[2])
local maxn = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local cooldown = tonumber(ARGV[5])
local keep = tonumber(ARGV[6])
if redis.call('ZSCORE', charged, tid) then return {'recharged', ''} end
if redis.call('ZSCORE', refused, tid) then return {'capped', 'refused_before'} end
local function n(x) return string.format('%.0f', x) end
redis.call('ZREMRANGEBYSCORE', charged, '-inf', '(' .. n(t - keep))
redis.call('ZREMRANGEBYSCORE', refused, '-inf', '(' .. n(t - keep))
local why = ''
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
if why ~= '' then
  redis.call('ZADD', refused, n(t), tid)
else
  redis.call('ZADD', charged, n(t), tid)
end
redis.call('PEXPIRE', charged, n(keep))
redis.call('PEXPIRE', refused, n(keep))
if why ~= '' then return {'capped', why} end
return {'charged', ''}
"""


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
        self._caps = redis.register_script(CAPS_LUA)
        self.counters: Counter[str] = Counter()

    def decide(self, payloads: Iterable[str | bytes]) -> list[TriggerDecision]:
        """The pure part: every (change, matching campaign), before caps."""
        emitted = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
        decisions: list[TriggerDecision] = []
        for payload in payloads:
            try:
                change = SegmentChange.model_validate_json(payload)
            except ValueError as exc:  # never expected: the engine wrote it
                log.error("cannot route a segment change that does not parse: %s", exc)
                continue
            decisions.extend(self.campaigns.route(change, emitted))
        return decisions

    async def charge(self, decisions: list[TriggerDecision]) -> list[CapVerdict]:
        """Charge the caps of every decision, in order, atomically per trigger."""
        verdicts: list[CapVerdict | None] = [None if d.policy.limited else CapVerdict("charged") for d in decisions]
        limited = [i for i, d in enumerate(decisions) if d.policy.limited]
        if limited:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in limited:
                    d = decisions[i]
                    p = d.policy
                    await self._caps(
                        keys=[d.cap_key, d.refused_key],
                        args=[d.trigger.trigger_id, d.occurred_at_ms, p.max_triggers or 0, p.period_ms, p.cooldown_ms, p.keep_ms],
                        client=pipe,
                    )
                results = await pipe.execute()
            for i, (status, reason) in zip(limited, results):
                verdicts[i] = CapVerdict(_text(status), _text(reason))
        return verdicts  # type: ignore[return-value]

    async def route(self, payloads: Iterable[str | bytes]) -> list[CampaignTrigger]:
        """Triggers to publish for these change payloads (caps charged, counted)."""
        decisions = self.decide(payloads)
        if not decisions:
            return []
        verdicts = await self.charge(decisions)
        out = []
        counts: Counter[str] = Counter()
        for d, v in zip(decisions, verdicts):
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


def trigger_message(trigger: CampaignTrigger) -> tuple[bytes, bytes]:
    """(key, value) of the Kafka message: keyed by customer, JSON value."""
    return trigger.customer_id.encode(), trigger.model_dump_json().encode()
