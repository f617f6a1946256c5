-- A lease: a check that asks for up to k admissions of one counter and is granted g ≤ k (all
-- that fit, fewer near the limit, none at it), every one of them counted in the shared window
-- now, as if all g hits had arrived at this instant. Whatever the node then does with them, the
-- window already holds them: the bound cannot be broken by a lease. sliding_window and
-- fixed_window only.
-- KEYS[1] the counter. ARGV[1] '' or a test time (ns); ARGV[2] the letter (w or f); ARGV[3] k;
-- ARGV[4] N; ARGV[5] T in ns; ARGV[6..8] the algorithm's parameters; ARGV[9] and ARGV[10] a
-- previous slice's refund token and its unused admissions, to give back first (0: none).
-- Reply: the single check's six fields for the first of the g (allowed: g ≥ 1; remaining: what
-- is left after all g), then g, the slice's life in ns (how long from this instant the bucket
-- the g were counted in stays current: the node may hand them out only until then), and how
-- many of the returned admissions were taken back.
local steps = {w = sliding_window, f = fixed_window}
local s0, n0 = clock(ARGV[1])
local key, alg = KEYS[1], ARGV[2]
local step = steps[alg]
if step == nil then return redis.error_reply('lease: no leases for algorithm ' .. alg) end
local k, limit, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local params = {ARGV[6], ARGV[7], ARGV[8]}
local returned = 0
if ARGV[10] and tonumber(ARGV[10]) > 0 then
  returned = take_back(key, alg, tonumber(ARGV[10]), ARGV[9], s0, n0, window)
end
-- A trial of one hit (writes nothing): if admitted, it says how many more fit.
local allowed, remaining, reset, retry, never, token = step(key, s0, n0, 1, limit, window, params, true)
if allowed == nil then return remaining end
local granted = 0
local life = 0
if allowed and k >= 1 then
  granted = math.min(k, remaining + 1)
  allowed, remaining, reset, retry, never, token =
    step(key, s0, n0, granted, limit, window, params, false)
  if not allowed then granted = 0 end
end
if granted > 0 then
  if alg == 'w' then
    local g = tonumber(params[1])
    local current, offset = divmod(s0, n0, g)
    life = (tonumber(token) - current + 1) * g - offset
    if life > g then life = g end
  else
    local ss, sn = string.match(token, '^(%d+):(%d+)$')
    life = (tonumber(ss) - s0) * E9 + (tonumber(sn) - n0) + window
    if life > window then life = window end
  end
  if life < 0 then life = 0 end
end
local out = reply(allowed, remaining, reset, retry, never, token)
out[7] = granted
out[8] = life
out[9] = returned
return out
