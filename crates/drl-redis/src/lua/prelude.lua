-- Shared by every drl script (prepended to each). Redis Lua numbers are doubles: exact for
-- integers below 2^53 ns (104 days), so absolute times (about 2^61 ns since the epoch) are kept
-- as a pair (s, n) of whole seconds and nanoseconds, and arithmetic is done on differences
-- measured from the current second `S0`, which are small.
--
-- Each algorithm is a function step(key, s0, n0, hits, N, T, params, dry) that decides (and,
-- unless `dry`, writes) and returns allowed, remaining, reset_after_ns, retry_after_ns, never,
-- and a refund token (what `refund.lua` needs to take an admission back), or nil and the error
-- reply when the key cannot be read here (a key of another node, in a call carrying several
-- slots); the key is then left untouched. `dry` runs the check without writing anything: the
-- trial of an all-or-nothing check.
--
-- Every script starts with a `#!lua` line (Redis 7 script flags): Redis then refuses a call
-- whole, before it runs, when it could not write (out of memory, a read-only replica), instead
-- of failing between two writes.
--
-- ARGV[1] of every script is its clock: '' (read the server clock, production) or a decimal
-- time in ns (test vectors only), prefixed by 'o' when a key not yet made is to be read from an
-- older drl's key first (`store.redis.read_old_keys`, while upgrading; see `legacy`).
--
-- A single check: KEYS[1] the counter; ARGV[1] the clock; ARGV[2] hits; ARGV[3] N; ARGV[4] T
-- in ns; ARGV[5..7] the algorithm's parameters. Reply: {allowed, remaining, reset_after_ns, retry_after_ns, never,
-- token}.
local E9 = 1000000000
-- A test time was given: expiries are then set in the server's real time, which the test's
-- clock does not follow, so they are made long enough to outlast the test.
local TEST_CLOCK = false
-- Whether `legacy` names older keys (the clock argument's 'o').
local READ_OLD = false

-- The time of this check as (s, n): the server clock unless a test time is given.
local function clock(arg)
  if arg ~= nil and string.byte(arg, 1) == 111 then
    READ_OLD = true
    arg = string.sub(arg, 2)
  end
  if arg ~= nil and arg ~= '' then
    TEST_CLOCK = true
    local len = #arg
    if len <= 9 then return 0, tonumber(arg) end
    return tonumber(string.sub(arg, 1, len - 9)), tonumber(string.sub(arg, len - 8))
  end
  local t = redis.call('TIME')
  return tonumber(t[1]), tonumber(t[2]) * 1000
end

-- floor((s*1e9 + n) / m) and the remainder, exactly. Whole-second widths and widths dividing a
-- second (every default geometry) take one division; others, below 2^49 ns (6.5 days), a long
-- division over the nine decimal digits of n; beyond, m must be whole seconds (every
-- configured window is), and the remainder is exact below 2^53 ns.
local function divmod(s, n, m)
  if m % E9 == 0 then
    local ms = m / E9
    local rs = math.fmod(s, ms)
    return (s - rs) / ms, rs * E9 + n
  end
  if E9 % m == 0 and s * (E9 / m) < 9007199254740992 then
    local rn = math.fmod(n, m)
    return s * (E9 / m) + (n - rn) / m, rn
  end
  local r = math.fmod(s, m)
  local q = (s - r) / m
  local p = 100000000
  local d = n
  for _ = 1, 9 do
    local digit = math.floor(d / p)
    d = d - digit * p
    p = p / 10
    r = r * 10 + digit
    local k = math.floor(r / m)
    local rest = r - k * m
    if rest < 0 then k = k - 1; rest = rest + m elseif rest >= m then k = k + 1; rest = rest - m end
    q = q * 10 + k
    r = rest
  end
  return q, r
end

-- Sets the key to vanish `ns` from now (rounded up to ms, plus 1 ms), or deletes it at once.
local function expire_in(key, ns)
  if ns <= 0 then
    redis.call('DEL', key)
  elseif TEST_CLOCK then
    redis.call('PEXPIRE', key, 600000)
  else
    redis.call('PEXPIRE', key, math.ceil(ns / 1000000) + 1)
  end
end

-- Stores `value` in the string `key` for `ns` from now (as `expire_in`), or deletes the key: a
-- state in one SET.
local function store(key, value, ns)
  if ns <= 0 then
    redis.call('DEL', key)
  elseif TEST_CLOCK then
    redis.call('SET', key, value, 'PX', 600000)
  else
    redis.call('SET', key, value, 'PX', math.ceil(ns / 1000000) + 1)
  end
end

-- A key's state as one string: the reply of GET, or nil for a missing key; a second value, the
-- error reply, when the key cannot be read here (not local in a cluster, wrong type).
local function read_state(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then return nil, raw end
  if raw == false then return nil end
  return raw
end

-- The key of an older drl's state of the same counter: its letter in lower case (`drl:W{...`
-- was `drl:w{...`), or nil for a key that has none, and when the node does not read old keys
-- (a deployment that never ran the older layout: each new key then costs one read less).
local function legacy(key)
  if not READ_OLD then return nil end
  local letter = string.sub(key, 5, 5)
  if string.sub(key, 1, 4) ~= 'drl:' or letter == string.lower(letter) then return nil end
  return 'drl:' .. string.lower(letter) .. string.sub(key, 6)
end

local function reply(allowed, remaining, reset_ns, retry_ns, never, token)
  if remaining < 0 then remaining = 0 end
  if reset_ns < 0 then reset_ns = 0 end
  if retry_ns < 0 then retry_ns = 0 end
  return {allowed and 1 or 0, remaining, reset_ns, retry_ns, never and 1 or 0, token or ''}
end

local function field(x) return string.format('%.0f', x) end

