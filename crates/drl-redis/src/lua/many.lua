-- Many independent checks in one call, for keys of any slots served by this node (Redis 7's
-- allow-cross-slot-keys flag): each is the single script's check, in order, at one instant, so
-- two checks of one key see each other as two calls would.
-- KEYS[1] the first check's key (a call must declare keys of one slot: it routes the call);
-- ARGV[1] the clock (prelude); ARGV[2] 'r' when some key comes more than once in the call (the
-- node knows; a call without repeats skips looking for them), else ''; ARGV[3] the number P of
-- distinct policies; then 6 per policy: the
-- algorithm's letter (w, l, f, t), N, T in ns, and three parameters; then 3 per check: its key,
-- its policy's number (1 to P) and hits. A policy is read once per call, however many checks
-- share it, and its parameters are turned into numbers once (those that are numbers).
-- Reply: one flat array, 6 elements per check, in order: the single script's reply, or, for a
-- key this node cannot serve, the error's text as a plain string ("Script attempted to access a
-- non local key in a cluster node"; not an error reply, which clients raise for the whole call)
-- and 5 zeros, and that check did nothing. (Flat: a table per check cost Redis about 0.6 µs a
-- check to build and convert.)
--
-- Checks of one hit on one key (a hot key's checks, which a node sends together) are decided
-- as one: when every check of that key in the call asks one hit under one policy (a sliding or
-- fixed window, a token bucket), the first k that fit are admitted in one step (the key is read
-- and written once, not k times) and the rest are denied as the next one-hit check would be. The
-- replies are those of k separate checks: an admitted check's remaining counts down in arrival
-- order; the windows answer every admission of one instant with the same reset, the token bucket
-- with a reset one emission interval later per admission; the refund token is the same. Other
-- keys (mixed hits or policies, a sliding log) are checked one by one.
local steps = {w = sliding_window, l = sliding_log, f = fixed_window, t = token_bucket}
-- Per algorithm decided as one: how much later each admission's reset is (ns), from its params.
local later = {w = function() return 0 end, f = function() return 0 end,
  t = function(params) return tonumber(params[1]) end}
local s0, n0 = clock(ARGV[1])
local policies = {}
local count = tonumber(ARGV[3])
for p = 1, count do
  local a = 4 + (p - 1) * 6
  policies[p] = {steps[ARGV[a]], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
    {tonumber(ARGV[a + 3]) or ARGV[a + 3], tonumber(ARGV[a + 4]) or ARGV[a + 4],
      tonumber(ARGV[a + 5]) or ARGV[a + 5]}}
  if later[ARGV[a]] then policies[p][5] = later[ARGV[a]](policies[p][4]) end
end
local first = 4 + count * 6
local checks = math.floor((#ARGV - first + 1) / 3)

-- Which keys come more than once, each time with one hit under one policy: key -> how many.
local seen, units = {}, nil
for i = 1, ARGV[2] == 'r' and checks or 0 do
  local a = first + (i - 1) * 3
  local key, p = ARGV[a], ARGV[a + 1]
  local before = seen[key]
  if ARGV[a + 2] ~= '1' then
    seen[key] = false
  elseif before == nil then
    seen[key] = p
  elseif before == p then
    units = units or {}
    units[key] = (units[key] or 1) + 1
  else
    seen[key] = false
  end
end

local out = {}

-- Check i's reply, in its 6 places of `out` (as `reply` clamps it).
local function put(i, allowed, remaining, reset, retry, never, token)
  local o = (i - 1) * 6
  if remaining < 0 then remaining = 0 end
  if reset < 0 then reset = 0 end
  if retry < 0 then retry = 0 end
  out[o + 1] = allowed and 1 or 0
  out[o + 2] = remaining
  out[o + 3] = reset
  out[o + 4] = retry
  out[o + 5] = never and 1 or 0
  out[o + 6] = token or ''
end

-- Check i's error text (its key is not served here).
local function refuse(i, text)
  local o = (i - 1) * 6
  out[o + 1] = text
  for j = 2, 6 do out[o + j] = 0 end
end

-- The replies of `k` one-hit checks of `key` under `policy`, in order: each {allowed,
-- remaining, reset, retry, never, token}, or the error's text.
local function decide_units(key, policy, k)
  local step, limit, window, params = policy[1], policy[2], policy[3], policy[4]
  local allowed, remaining, reset, retry, never, token = step(key, s0, n0, k, limit, window,
    params, false)
  local replies = {next = 0}
  if allowed == nil then
    for j = 1, k do replies[j] = remaining.err end
    return replies
  end
  local fit = k
  if not allowed then
    -- Not all of them: as many as fit (the denial's remaining), admitted at once.
    fit = math.max(math.min(remaining, k), 0)
    if fit > 0 then
      allowed, remaining, reset, retry, never, token = step(key, s0, n0, fit, limit, window,
        params, false)
      if not allowed then fit = 0 end
    end
  end
  for j = 1, fit do
    replies[j] = {true, remaining + fit - j, reset - (fit - j) * policy[5], retry, never, token}
  end
  if fit < k then
    local denied = {step(key, s0, n0, 1, limit, window, params, true)}
    for j = fit + 1, k do replies[j] = denied end
  end
  return replies
end

local grouped = {}
for i = 1, checks do
  local a = first + (i - 1) * 3
  local key = ARGV[a]
  local policy = policies[tonumber(ARGV[a + 1])]
  local k = units and policy[5] and seen[key] and units[key]
  if k then
    local group = grouped[key]
    if group == nil then
      group = decide_units(key, policy, k)
      grouped[key] = group
    end
    group.next = group.next + 1
    local r = group[group.next]
    if type(r) == 'string' then refuse(i, r) else put(i, r[1], r[2], r[3], r[4], r[5], r[6]) end
  else
    local allowed, remaining, reset, retry, never, token = policy[1](key, s0, n0,
      tonumber(ARGV[a + 2]), policy[2], policy[3], policy[4], false)
    if allowed == nil then
      refuse(i, remaining.err)
    else
      put(i, allowed, remaining, reset, retry, never, token)
    end
  end
end
return out
