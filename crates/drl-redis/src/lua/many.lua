-- Many independent checks in one call, for keys of any slots served by this node (Redis 7's
-- allow-cross-slot-keys flag): each is the single script's check, in order, at one instant, so
-- two checks of one key see each other as two calls would.
-- KEYS[1] the first check's key (a call must declare keys of one slot: it routes the call);
-- ARGV[1] test time or ''; ARGV[2] the number P of distinct policies; then 6 per policy: the
-- algorithm's letter (w, l, f, t), N, T in ns, and three parameters; then 3 per check: its key,
-- its policy's number (1 to P) and hits. A policy is read once per call, however many checks
-- share it.
-- Reply: one element per check, in order: the single script's reply, or, for a key this node
-- cannot serve, the error's text as a plain string ("Script attempted to access a non local key
-- in a cluster node"; not an error reply, which clients raise for the whole call), and that
-- check did nothing.
local steps = {w = sliding_window, l = sliding_log, f = fixed_window, t = token_bucket}
local s0, n0 = clock(ARGV[1])
local policies = {}
local count = tonumber(ARGV[2])
for p = 1, count do
  local a = 3 + (p - 1) * 6
  policies[p] = {steps[ARGV[a]], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
    {ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]}}
end
local out = {}
local first = 3 + count * 6
for i = 1, math.floor((#ARGV - first + 1) / 3) do
  local a = first + (i - 1) * 3
  local policy = policies[tonumber(ARGV[a + 1])]
  local allowed, remaining, reset, retry, never, token = policy[1](ARGV[a], s0, n0,
    tonumber(ARGV[a + 2]), policy[2], policy[3], policy[4], false)
  if allowed == nil then
    out[i] = remaining.err
  else
    out[i] = reply(allowed, remaining, reset, retry, never, token)
  end
end
return out
