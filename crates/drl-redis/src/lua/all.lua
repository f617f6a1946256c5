-- All or nothing over several counters of one slot, atomically: every counter is tried first
-- without writing; only if every one would be admitted (and ARGV[2] is 'commit') are they all
-- run for real, at the same instant, so the trials' decisions are the ones taken.
-- ARGV[1] test time or ''; ARGV[2] 'trial' or 'commit'; then 7 per key, in KEYS order: the
-- algorithm's letter (w, l, f, t), hits, N, T in ns, and three parameters.
-- Reply: {admitted, {reply of key 1}, {reply of key 2}, ...}.
local steps = {w = sliding_window, l = sliding_log, f = fixed_window, t = token_bucket}
local s0, n0 = clock(ARGV[1])
local results = {}
local all = true
for i, key in ipairs(KEYS) do
  local a = 3 + (i - 1) * 7
  local step = steps[ARGV[a]]
  local args = {tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    {ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]}}
  local allowed, remaining, reset, retry, never, token =
    step(key, s0, n0, args[1], args[2], args[3], args[4], true)
  if allowed == nil then return remaining end
  all = all and allowed
  results[i] = {step, args, reply(allowed, remaining, reset, retry, never, token)}
end
local out = {0}
if all and ARGV[2] == 'commit' then
  out[1] = 1
  for i, key in ipairs(KEYS) do
    local r = results[i]
    r[3] = reply(r[1](key, s0, n0, r[2][1], r[2][2], r[2][3], r[2][4], false))
  end
end
for i = 1, #KEYS do out[i + 1] = results[i][3] end
return out
