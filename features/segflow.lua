#!lua name=segflow
-- segflow's server-side functions. `segflow_apply` folds one event into a
-- customer's hash atomically and idempotently, in one round trip; its
-- reference semantics is features/state.py:apply_delta (tests compare both).
-- Field names are short on purpose: they are stored once per customer.

local BUCKET_DAYS = 90
local CATEGORY_CAP = 8
local OTHER_CATEGORY = '~other'
local DEDUPE_CAP = 64
local DAY_MS = 86400000
local NMETRICS = 11
local PURCHASES, REVENUE, DISCOUNT = 6, 7, 8 -- 0-based metric positions
local TOMBSTONE = 'x' -- an erased customer's only field (features/codec.py TOMBSTONE)

local function num(v)
  if v == false or v == nil then return nil end
  return tonumber(v)
end

local function split(s, sep)
  local out = {}
  if s == nil or s == '' then return out end
  for piece in string.gmatch(s, '([^' .. sep .. ']+)') do out[#out + 1] = piece end
  return out
end

local function decode_bucket(s)
  local b = {}
  for i = 1, NMETRICS do b[i] = 0 end
  if s then
    -- Walk the commas by hand: Lua 5.1's gmatch('([^,]*)') also yields an
    -- empty match after every value, which shifts the positions.
    local i, pos = 1, 1
    while i <= NMETRICS do
      local comma = string.find(s, ',', pos, true)
      local v = string.sub(s, pos, comma and comma - 1 or -1)
      if v ~= '' then b[i] = tonumber(v) end
      if not comma then break end
      pos, i = comma + 1, i + 1
    end
  end
  return b
end

local function encode_bucket(b)
  local last = 0
  for i = 1, NMETRICS do if b[i] ~= 0 then last = i end end
  local parts = {}
  for i = 1, last do parts[i] = (b[i] == 0) and '' or string.format('%d', b[i]) end
  return table.concat(parts, ',')
end

local function fmt(n) return string.format('%d', n) end

-- The duplicate filter's times in base 36: 8 characters instead of 13 (the filter
-- is the largest part of a customer's hash, docs/PERFORMANCE.md).
local DIGITS36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function base36(n)
  local out = {}
  repeat
    local d = n % 36
    out[#out + 1] = string.sub(DIGITS36, d + 1, d + 1)
    n = (n - d) / 36
  until n == 0
  return string.reverse(table.concat(out))
end

-- The duplicate filter, field `q`: 'token.time;token.time;...' sorted by (time, token),
-- the first time absolute (ms), each next one the difference to the one before it,
-- all in base 36. Sorted, so what the lateness or the cap forgets is a prefix and the
-- usual event (newer than all) is appended without parsing; differences, so an entry
-- takes ~14 bytes instead of 19. The legacy field `r` ('token.time' or 'token:ms',
-- unsorted, absolute) is read and rewritten as `q` on the customer's next event.
-- What the lateness passes goes with the next event (ring_trim), or with the
-- worker's sweep for a customer that has none (sweep_filters).
local function ring_decode(q, out)
  if not q or q == '' then return out end
  local at = nil
  for t, d in string.gmatch(q, '([^.;]+)%.(%w+)') do
    local v = tonumber(d, 36)
    at = at and at + v or v
    out[#out + 1] = {t, at}
  end
  return out
end

local function ring_encode(ring)
  local parts, prev = {}, nil
  for _, e in ipairs(ring) do
    parts[#parts + 1] = e[1] .. '.' .. base36(prev and (e[2] - prev) or e[2])
    prev = e[2]
  end
  return table.concat(parts, ';')
end

local function older(a, b) return a[2] < b[2] or (a[2] == b[2] and a[1] < b[1]) end

-- Insert (token, ts) into a sorted filter, walking from the front: an event older
-- than the customer's newest usually comes from a lagging partition, so its place
-- is near the front. Only the entry after it is rewritten (its difference changes).
local function ring_insert(q, token, ts)
  local pos, at = 1, nil
  while true do
    local t, d = string.match(q, '^([^.;]+)%.(%w+)', pos)
    local v = tonumber(d, 36)
    local here = at and at + v or v
    if ts < here or (ts == here and token < t) then
      local sep = string.find(q, ';', pos, true)
      local entry = token .. '.' .. base36(at and ts - at or ts) .. ';' .. t .. '.' .. base36(here - ts)
      return string.sub(q, 1, pos - 1) .. entry .. (sep and string.sub(q, sep) or '')
    end
    at = here
    local sep = string.find(q, ';', pos, true)
    if not sep then return q .. ';' .. token .. '.' .. base36(ts - at) end
    pos = sep + 1
  end
end

-- Forget, from the front of a sorted filter, what the lateness rules out, then the
-- oldest past DEDUPE_CAP, remembering in `floors` (per family: a token's first
-- character) the newest time forgotten while still within the lateness.
-- Returns the filter kept and the customer's new lateness floor `lf` (nil: unchanged
-- from `late_floor`): the newest time the lateness forgot. A worker that does not know
-- the watermark yet (just started, or given the partition in a rebalance) must still
-- refuse a copy of a forgotten event (seen in CI: a full replay applied one twice).
local function ring_trim(q, late_before, floors, late_floor)
  local _, seps = string.gsub(q, ';', '')
  local n, pos, at, dropped, expired_at = seps + 1, 1, nil, 0, nil
  local function raised()
    if expired_at and (not late_floor or expired_at > late_floor) then return expired_at end
  end
  while true do
    local t, d = string.match(q, '^([^.;]+)%.(%w+)', pos)
    local v = tonumber(d, 36)
    at = at and at + v or v
    local expired = late_before and at < late_before
    if not expired and n - dropped <= DEDUPE_CAP then
      if dropped == 0 then return q, nil end
      local rest = string.find(q, ';', pos, true)
      return t .. '.' .. base36(at) .. (rest and string.sub(q, rest) or ''), raised()
    end
    if expired then
      expired_at = at
    else
      local c = string.sub(t, 1, 1)
      if not floors[c] or at > floors[c] then floors[c] = at end
    end
    dropped = dropped + 1
    local sep = string.find(q, ';', pos, true)
    if not sep then return '', raised() end
    pos = sep + 1
  end
end

-- Profile traits (features/traits.py): field `t`, per trait <code><value>\31<ms in base 36>,
-- joined by \30, in TRAIT_ORDER; the time is left out where it is the previous trait's (an
-- update sets several traits at once). Each trait is a last-writer-wins register in event time.
local TRAITS_FIELD = 't'
local TRAIT_ORDER = {'b', 'c', 'r', 'p', 's', 'm'}

-- a > b byte by byte (Lua's own comparison of strings follows the server's locale)
local function bytes_gt(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end

-- A profile update (family 'profile'; ARGV as segflow_apply's, the traits in place of the
-- categories: <code><value> joined by \30). Sets each trait the update carries unless the
-- trait was set at a later event time (on a tie the larger value wins), so updates
-- commute and repeat harmlessly: no duplicate filter, no lateness, and nothing of the
-- customer's behaviour (first/last seen, counters, days) moves. A customer with traits
-- and no behaviour yet counts towards max_customers like one with behaviour.
local function apply_profile(keys, args, reply)
  local cust = keys[1]
  local ts = tonumber(args[1])
  local partition, offset = args[4], tonumber(args[5])
  local cur = redis.call('HMGET', cust, TOMBSTONE, 'o:profile', TRAITS_FIELD, 'fs')
  if cur[1] then return reply('suppressed') end
  if partition ~= '' and cur[2] then
    local seen = split(cur[2], ':')
    if seen[1] == partition and offset <= tonumber(seen[2]) then return reply('duplicate') end
  end
  if not cur[3] and not cur[4] then
    local limit = tonumber(args[11]) or 0
    if limit > 0 and tonumber(redis.call('GET', keys[3]) or '0') >= limit then return reply('over_capacity') end
    redis.call('INCR', keys[3])
  end
  local traits, at = {}, nil
  for _, entry in ipairs(split(cur[3] or '', '\30')) do
    local code, value, t = string.match(entry, '^(.)(.*)\31(%w+)$')
    if code then at = tonumber(t, 36) else code, value = string.sub(entry, 1, 1), string.sub(entry, 2) end
    if at then traits[code] = {value, at} end
  end
  for _, entry in ipairs(split(args[9], '\30')) do
    local code, value = string.sub(entry, 1, 1), string.sub(entry, 2)
    local old = traits[code]
    if not old or ts > old[2] or (ts == old[2] and bytes_gt(value, old[1])) then traits[code] = {value, ts} end
  end
  local parts, prev = {}, nil
  for _, code in ipairs(TRAIT_ORDER) do
    local t = traits[code]
    if t then
      parts[#parts + 1] = code .. t[1] .. (t[2] == prev and '' or '\31' .. base36(t[2]))
      prev = t[2]
    end
  end
  local set = {TRAITS_FIELD, table.concat(parts, '\30')}
  if partition ~= '' then set[3] = 'o:profile'; set[4] = partition .. ':' .. fmt(offset) end
  redis.call('HSET', cust, unpack(set))
  return reply('applied')
end

-- KEYS: cust:{id}, cust:{id}:seg, segflow:customers (how many customers have state),
--       segflow:stats (the applied, duplicates and suppressed counters),
--       segflow:filters (the partition's duplicate filters to sweep, see sweep_filters)
-- ARGV: ts_ms, token, family, partition ('' if none), offset, late_before_ms ('' if unknown),
--       flags (p=purchase v=visit l=login), increments "i:n,i:n", categories "cat\31qty\30...",
--       want_state ('1': also return the hashes; the worker asks only for a customer's
--       last event in a batch, since decoding every event's state was a quarter of its CPU),
--       max_customers ('0': no limit; a customer not yet known is refused once that many are),
--       customer_id (its member in segflow:filters)
-- Returns {status} or {status, <customer hash as flat list>, <segment hash as flat list>};
-- status 'suppressed' for an erased customer's event (the tombstone is in the HMGET below).
local function apply(keys, args)
  local cust, seg = keys[1], keys[2]
  local ts = tonumber(args[1])
  local token, family = args[2], args[3]
  local partition, offset = args[4], tonumber(args[5])
  local late_before = tonumber(args[6]) -- nil while the watermark is unknown
  local flags = args[7]
  local function reply(status)
    -- Counted here, in the same atomic call, so the counts survive a worker's
    -- SIGKILL exactly (counted in the worker, they lost the batch in flight).
    if status == 'applied' then redis.call('HINCRBY', keys[4], 'applied', 1)
    elseif status == 'duplicate' then redis.call('HINCRBY', keys[4], 'duplicates', 1)
    elseif status == 'suppressed' then redis.call('HINCRBY', keys[4], 'suppressed', 1) end
    if args[10] == '1' then return {status, redis.call('HGETALL', cust), redis.call('HGETALL', seg)} end
    return {status}
  end
  if family == 'profile' then return apply_profile(keys, args, reply) end

  -- Everything the event may read, in one HMGET; everything it changes, in one HSET
  -- (and one HDEL when old buckets or a legacy filter go): each command a function
  -- runs costs about a microsecond of dispatch, more than the work it does here.
  local initial = string.sub(token, 1, 1)
  local day = math.floor(ts / DAY_MS)
  local day_field = 'd:' .. fmt(day)
  local is_visit = string.find(flags, 'v', 1, true)
  local is_login = string.find(flags, 'l', 1, true)
  local is_purchase = string.find(flags, 'p', 1, true)
  local incs = {}
  for _, pair in ipairs(split(args[8], ',')) do
    local i, n = string.match(pair, '^(%d+):(-?%d+)$')
    incs[tonumber(i)] = tonumber(n)
  end
  local buys = (incs[PURCHASES] or 0) > 0
  -- Only the fields this kind of event can read: each one is a walk along the hash.
  local wanted = {'fs', 'ls', 'o:' .. family, 'q', 'df:' .. initial, 'r', 'n', 'ad', day_field, TOMBSTONE, 'lf'}
  local FS, LS, OFF, Q, DF, R, N, AD, DAY, ERASED, LF = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
  local function want(field) wanted[#wanted + 1] = field; return #wanted end
  local LV = is_visit and want('lv')
  local LL = is_login and want('ll')
  local FP, LP, PP, PD
  if is_purchase or buys then FP, LP, PP, PD = want('fp'), want('lp'), want('pp'), want('pd') end
  local NP = is_purchase and incs[PURCHASES] and want('np')
  local RV = is_purchase and incs[REVENUE] and want('rv')
  local DC = is_purchase and incs[DISCOUNT] and want('dc')
  local cats, NC, OTHER = {}, nil, nil
  if args[9] ~= '' then
    NC, OTHER = want('nc'), want('c:' .. OTHER_CATEGORY)
    for _, pair in ipairs(split(args[9], '\30')) do
      local cat, qty = string.match(pair, '^(.*)\31(%d+)$')
      cats[#cats + 1] = {'c:' .. cat, tonumber(qty), want('c:' .. cat)}
    end
  end
  local cur = redis.call('HMGET', cust, unpack(wanted))
  if cur[ERASED] then return reply('suppressed') end
  local first_seen, last_seen = num(cur[FS]), num(cur[LS])
  if partition ~= '' and cur[OFF] then
    local seen = split(cur[OFF], ':')
    if seen[1] == partition and offset <= tonumber(seen[2]) then return reply('duplicate') end
  end
  local q = cur[Q] or ''
  if q ~= '' and string.find(';' .. q, ';' .. token .. '.', 1, true) then return reply('duplicate') end
  local legacy = nil
  if cur[R] then
    legacy = {}
    for _, entry in ipairs(split(cur[R], ';')) do
      -- token.<ms in base 36>, or token:<ms in decimal> from older versions
      local t, sep, at = string.match(entry, '^([^:.]+)([:.])(%w+)$')
      if t == token then return reply('duplicate') end
      legacy[#legacy + 1] = {t, tonumber(at, sep == '.' and 36 or 10)}
    end
  end
  if late_before and ts < late_before then return reply('too_late') end
  -- Not newer than what the lateness made the filter forget: too late when it was
  -- forgotten, whatever this worker knows of the watermark now.
  local late_floor = num(cur[LF])
  if late_floor and ts <= late_floor then return reply('too_late') end
  local dedupe_floor = num(cur[DF])
  if dedupe_floor and ts <= dedupe_floor then return reply('unverifiable') end

  if not first_seen and redis.call('HEXISTS', cust, TRAITS_FIELD) == 0 then
    -- A new customer: counted, and refused past the limit, so a flood of made-up
    -- ids cannot grow Redis without bound (the event goes to the dead-letter topic).
    -- (One with traits from a profile update was counted then.)
    local limit = tonumber(args[11]) or 0
    if limit > 0 and tonumber(redis.call('GET', keys[3]) or '0') >= limit then return reply('over_capacity') end
    redis.call('INCR', keys[3])
  end

  local newest = last_seen
  if not newest or ts > newest then newest = ts end
  local set = {'ls', fmt(newest), 'n', fmt((num(cur[N]) or 0) + 1)}
  local function put(field, value) set[#set + 1] = field; set[#set + 1] = value end
  if not first_seen or ts < first_seen then put('fs', fmt(ts)) end
  if partition ~= '' then put('o:' .. family, partition .. ':' .. fmt(offset)) end

  if is_visit then
    local lv = num(cur[LV])
    if not lv or ts > lv then put('lv', fmt(ts)) end
  end
  if is_login then
    local ll = num(cur[LL])
    if not ll or ts > ll then put('ll', fmt(ts)) end
  end
  -- The event's daily bucket: a purchase asks whether its day already had one
  -- (distinct purchase days, 'pd'), and the bucket is updated below.
  local newest_day = math.floor(newest / DAY_MS)
  local in_window = day > newest_day - BUCKET_DAYS
  local bucket_raw = in_window and (cur[DAY] or nil) or nil

  -- A new active day ('ad'): its bucket does not exist yet (or, older than the buckets,
  -- it is not the day of the first or the newest event).
  local new_active
  if in_window then
    new_active = not bucket_raw
  else
    new_active = not ((first_seen and math.floor(first_seen / DAY_MS) == day) or (last_seen and math.floor(last_seen / DAY_MS) == day))
  end
  if new_active then put('ad', fmt((num(cur[AD]) or 0) + 1)) end

  local fp, lp, pp
  if FP then fp, lp, pp = num(cur[FP]), num(cur[LP]), num(cur[PP]) end
  if buys then
    local new_day
    if in_window then
      new_day = decode_bucket(bucket_raw)[PURCHASES + 1] == 0
    else
      -- older than the buckets (a lateness over BUCKET_DAYS): new unless it is the
      -- day of a purchase still remembered
      new_day = not ((fp and math.floor(fp / DAY_MS) == day) or (lp and math.floor(lp / DAY_MS) == day)
        or (pp and math.floor(pp / DAY_MS) == day))
    end
    if new_day then put('pd', fmt((num(cur[PD]) or 0) + 1)) end
  end

  if is_purchase then
    if not fp or ts < fp then put('fp', fmt(ts)) end
    if not lp or ts >= lp then
      if lp then put('pp', fmt(lp)) end
      put('lp', fmt(ts))
    elseif not pp or ts > pp then
      put('pp', fmt(ts))
    end
    if incs[PURCHASES] then put('np', fmt((num(cur[NP]) or 0) + incs[PURCHASES])) end
    if incs[REVENUE] then put('rv', fmt((num(cur[RV]) or 0) + incs[REVENUE])) end
    if incs[DISCOUNT] then put('dc', fmt((num(cur[DC]) or 0) + incs[DISCOUNT])) end
  end

  -- Daily bucket of the event, then drop the buckets that fell out of the
  -- longest window when this customer's newest day moved forward.
  if in_window then
    local b = decode_bucket(bucket_raw)
    for i, n in pairs(incs) do b[i + 1] = b[i + 1] + n end
    put(day_field, encode_bucket(b))
  end
  local gone = {}
  if last_seen then
    local old_day = math.floor(last_seen / DAY_MS)
    if newest_day > old_day then
      local from_day = old_day - BUCKET_DAYS + 1
      local to_day = math.min(old_day, newest_day - BUCKET_DAYS)
      for d = from_day, to_day do gone[#gone + 1] = 'd:' .. fmt(d) end
    end
  end

  if #cats > 0 then
    -- per field: its count so far (nil: not yet in the hash); past CATEGORY_CAP
    -- distinct categories, new ones count as OTHER_CATEGORY
    local other = 'c:' .. OTHER_CATEGORY
    local vals, touched = {[other] = num(cur[OTHER])}, {}
    local ncat0 = num(cur[NC]) or 0
    local ncat = ncat0
    for _, c in ipairs(cats) do
      local field = c[1]
      if vals[field] == nil then vals[field] = num(cur[c[3]]) end
      if vals[field] == nil then
        if ncat >= CATEGORY_CAP then field = other else ncat = ncat + 1 end
      end
      if not touched[field] then touched[field] = true; touched[#touched + 1] = field end
      vals[field] = (vals[field] or 0) + c[2]
    end
    if ncat ~= ncat0 then put('nc', fmt(ncat)) end
    for _, field in ipairs(touched) do put(field, fmt(vals[field])) end
  end

  -- Duplicate filter: remember this event; forget what the lateness rules out anyway.
  -- A non-empty filter's newest entry is the customer's newest event (last_seen):
  -- the lateness and the cap forget the oldest first.
  local floors = {}
  if legacy then
    -- An older version's filter: sorted and written in this one's form, then kept
    -- like any other (not appended to blindly: its newest entry may not be last_seen).
    local ring = ring_decode(q, legacy)
    table.sort(ring, older)
    q = ring_encode(ring)
    gone[#gone + 1] = 'r'
  end
  if q == '' then q = token .. '.' .. base36(ts)
  elseif not legacy and last_seen and ts > last_seen then q = q .. ';' .. token .. '.' .. base36(ts - last_seen)
  else q = ring_insert(q, token, ts) end
  local new_late_floor
  q, new_late_floor = ring_trim(q, late_before, floors, late_floor)
  if new_late_floor then put('lf', fmt(new_late_floor)) end
  for c, at in pairs(floors) do
    local f = 'df:' .. c
    local old = (c == initial) and dedupe_floor or num(redis.call('HGET', cust, f))
    if not old or at > old then set[#set + 1] = f; set[#set + 1] = fmt(at) end
  end
  set[#set + 1] = 'q'; set[#set + 1] = q
  -- A filter that starts anew (empty, or all of it past the lateness: a customer back
  -- after a pause) joins the sweep; while it holds entries, the sweep keeps it there.
  if (cur[Q] or '') == '' or legacy or (late_before and last_seen and last_seen < late_before) then
    redis.call('ZADD', keys[5], 'LT', ts, args[12])
  end

  redis.call('HSET', cust, unpack(set))
  if #gone > 0 then redis.call('HDEL', cust, unpack(gone)) end
  return reply('applied')
end

-- KEYS: watermark key. ARGV: ts_ms. Keeps the largest event time seen.
local function advance_watermark(keys, args)
  local ts = tonumber(args[1])
  local cur = tonumber(redis.call('GET', keys[1]) or '-1')
  if ts > cur then redis.call('SET', keys[1], fmt(ts)); return ts end
  return cur
end

-- Sweep the duplicate filters of one partition's customers: forget what the lateness
-- rules out, as the customer's next event would (ring_trim), without waiting for that
-- event. Idle customers held their last filter for good before (docs/PERFORMANCE.md,
-- memory). A customer is in the sweep's sorted set while its filter holds entries,
-- scored by an event time no later than its newest entry's: once late_before passes the
-- score, the filter is trimmed, then dropped (and the customer leaves the set) or
-- re-scored with its newest entry (last_seen).
-- KEYS: segflow:filters of the partition. ARGV: late_before_ms, limit, the prefix of the
-- partition's customer keys ('cf:{tag}:'; those keys are in KEYS[1]'s slot).
-- Returns the number of customers swept.
local function sweep_filters(keys, args)
  local late_before = tonumber(args[1])
  local due = redis.call('ZRANGE', keys[1], '-inf', '(' .. args[1], 'BYSCORE', 'LIMIT', 0, tonumber(args[2]))
  for _, cid in ipairs(due) do
    local cust = args[3] .. cid
    local cur = redis.call('HMGET', cust, 'q', 'ls', 'lf')
    local q = cur[1] or ''
    local kept, new_late_floor = q, nil
    if q ~= '' then kept, new_late_floor = ring_trim(q, late_before, {}, num(cur[3])) end
    if new_late_floor then redis.call('HSET', cust, 'lf', fmt(new_late_floor)) end
    if kept == '' then
      if q ~= '' then redis.call('HDEL', cust, 'q') end
      redis.call('ZREM', keys[1], cid)
    else
      -- (no floors: the set holds a filter after its apply, within DEDUPE_CAP, so only
      -- the lateness trims it here)
      if kept ~= q then redis.call('HSET', cust, 'q', kept) end
      redis.call('ZADD', keys[1], tonumber(cur[2]), cid)
    end
  end
  return #due
end

-- KEYS: deadlines zset. ARGV: now_ms, limit, lease_until_ms. Atomically claims
-- due customers so that several workers do not re-evaluate the same one at once.
-- A claim is a lease, not a removal: the deadline moves to lease_until_ms, and
-- the commit of the evaluation replaces it (next deadline, or none). A worker
-- that dies between claim and commit leaves the lease to run out, and the
-- customer is claimed again (removing it lost that deadline for good).
local function claim_due(keys, args)
  local due = redis.call('ZRANGE', keys[1], '-inf', args[1], 'BYSCORE', 'LIMIT', 0, tonumber(args[2]))
  if #due > 0 then
    local leased = {}
    for i, cid in ipairs(due) do leased[2 * i - 1] = args[3]; leased[2 * i] = cid end
    redis.call('ZADD', keys[1], 'XX', unpack(leased))
  end
  return due
end

-- Commit one customer's evaluation, only if nobody committed another since it
-- read the segments (compare-and-set on the `_v` field): with several workers,
-- a deadline re-evaluation on one could otherwise overwrite a fresher
-- decision made on another from a newer event.
-- KEYS: cust:{id}:seg, cust:{id}:hist, outbox, deadlines, then the member-set
--       and flow keys that ARGV refers to by position.
-- ARGV: customer_id, expected_version, churn ('' none), deadline_ms ('' none),
--       history_cap, flow_ttl_s, retry_at_ms, seen_ms (newest event time the
--       evaluation saw, '' from a deadline), commit token ('' without changes: kept
--       as `_t` so that a retry of a commit whose reply was lost can tell it landed),
--       n_assign, then per assignment:
--       field, json, old_set_key# (0 none), new_set_key#; n_changes, then per
--       change: payload (outbox), history entry, flow_key#, flow_field.
-- Returns {'ok', outbox ids...}, {'conflict'} (the customer is then queued for an
-- immediate re-evaluation at retry_at_ms), or {'landed'} when this very commit
-- (same token) was applied before: its outbox entries are the caller's to send.
local function commit(keys, args)
  local seg, hist, outbox, deadlines = keys[1], keys[2], keys[3], keys[4]
  local cid = args[1]
  local expected = tonumber(args[2])
  local current = tonumber(redis.call('HGET', seg, '_v') or '0')
  if current ~= expected then
    if args[9] ~= '' and current == expected + 1 and redis.call('HGET', seg, '_t') == args[9] then return {'landed'} end
    redis.call('ZADD', deadlines, 'LT', tonumber(args[7]), cid)
    return {'conflict'}
  end
  local i = 10
  local n_assign = tonumber(args[i]); i = i + 1
  local fields = {}
  for _ = 1, n_assign do
    local field, json, old_k, new_k = args[i], args[i + 1], tonumber(args[i + 2]), tonumber(args[i + 3])
    i = i + 4
    fields[#fields + 1] = field; fields[#fields + 1] = json
    if old_k > 0 then redis.call('SREM', keys[old_k], cid) end
    redis.call('SADD', keys[new_k], cid)
  end
  if n_assign > 0 then redis.call('HINCRBY', seg, '_v', 1) end
  if args[3] ~= '' then fields[#fields + 1] = '_churn'; fields[#fields + 1] = args[3] end
  if args[8] ~= '' then fields[#fields + 1] = '_e'; fields[#fields + 1] = args[8] end
  if args[9] ~= '' then fields[#fields + 1] = '_t'; fields[#fields + 1] = args[9] end
  if #fields > 0 then redis.call('HSET', seg, unpack(fields)) end
  local out = {'ok'}
  local n_changes = tonumber(args[i]); i = i + 1
  local cap, ttl = tonumber(args[5]), tonumber(args[6])
  -- History was a stream before it became a list: drop an old one rather than fail.
  if n_changes > 0 and redis.call('TYPE', hist).ok == 'stream' then redis.call('DEL', hist) end
  for _ = 1, n_changes do
    local payload, entry, flow_k, flow_field = args[i], args[i + 1], tonumber(args[i + 2]), args[i + 3]
    i = i + 4
    redis.call('LPUSH', hist, entry)
    redis.call('LTRIM', hist, 0, cap - 1)
    out[#out + 1] = redis.call('XADD', outbox, '*', 'change', payload)
    redis.call('HINCRBY', keys[flow_k], flow_field, 1)
    redis.call('EXPIRE', keys[flow_k], ttl)
  end
  if args[4] == '' then redis.call('ZREM', deadlines, cid) else redis.call('ZADD', deadlines, tonumber(args[4]), cid) end
  return out
end

-- The customer's changes that Kafka has not acknowledged yet (a scan of the partition's
-- outbox, which holds only those: a few entries, more while Kafka is away): never sent
-- now. `needle` is `"customer_id":<the id as JSON>`, as the payloads spell it. An
-- earlier erasure's final changes (`"to":null`, nothing else has it) stay: a request
-- repeated while Kafka is away must not take them from the subscribers.
local function drop_pending(outbox, needle)
  local gone = {}
  for _, entry in ipairs(redis.call('XRANGE', outbox, '-', '+')) do
    local payload = entry[2][2]
    if string.find(payload, needle, 1, true) and not string.find(payload, '"to":null', 1, true) then gone[#gone + 1] = entry[1] end
  end
  if #gone > 0 then redis.call('XDEL', outbox, unpack(gone)) end
  return #gone
end

-- Forget a customer (`segflow forget`), compare-and-set on the segments' `_v` as commit
-- does: the final changes were built from the segments the caller read.
-- KEYS: features, segments, history, outbox, deadlines, customers, stats, filters (the
--       partition's), then the member set of each segment the customer is in
-- ARGV: customer_id, expected_version, erased_at_ms, suppress_ms (0: the tombstone stays; -1: none),
--       outbox needle (see drop_pending), then per member set the change that takes the
--       customer out of it (to: null), in the same order
-- Returns {'ok', outbox entries dropped, outbox ids of the final changes...} or {'conflict'}.
-- Everything goes but a tombstone (the profile traits, field `t` of the features hash, too):
-- the features hash with only TOMBSTONE, expiring after
-- suppress_ms, which segflow_apply reads to drop the customer's later events.
local function forget(keys, args)
  local cust, seg, hist, outbox = keys[1], keys[2], keys[3], keys[4]
  local cid = args[1]
  if tonumber(redis.call('HGET', seg, '_v') or '0') ~= tonumber(args[2]) then return {'conflict'} end
  if redis.call('HEXISTS', cust, 'fs') == 1 or redis.call('HEXISTS', cust, TRAITS_FIELD) == 1 then redis.call('DECR', keys[6]) end
  redis.call('DEL', cust, seg, hist)
  local suppress_ms = tonumber(args[4])
  if suppress_ms >= 0 then -- retention passes -1: no tombstone, a returning customer starts anew
    redis.call('HSET', cust, TOMBSTONE, args[3])
    if suppress_ms > 0 then redis.call('PEXPIRE', cust, args[4]) end
  end
  redis.call('ZREM', keys[5], cid)
  redis.call('ZREM', keys[8], cid)
  local out = {'ok', drop_pending(outbox, args[5])}
  for i = 9, #keys do
    redis.call('SREM', keys[i], cid)
    out[#out + 1] = redis.call('XADD', outbox, '*', 'change', args[i - 3])
  end
  redis.call('HINCRBY', keys[7], 'erased', 1)
  return out
end

redis.register_function('segflow_apply', apply)
redis.register_function('segflow_advance_watermark', advance_watermark)
redis.register_function('segflow_claim_due', claim_due)
redis.register_function('segflow_sweep_filters', sweep_filters)
redis.register_function('segflow_commit', commit)
redis.register_function('segflow_forget', forget)
