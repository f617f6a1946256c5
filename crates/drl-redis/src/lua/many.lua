-- Many independent checks in one call, for keys of any slots served by this node (Redis 7's
-- allow-cross-slot-keys flag): each is the single script's check, in order, at one instant, so
-- two checks of one key see each other as two calls would.
-- KEYS[1] the first check's key (a call must declare keys of one slot: it routes the call);
-- ARGV[1] test time or ''; then 8 per check: its key, the algorithm's letter (w, l, f, t), hits,
-- N, T in ns, and three parameters.
-- Reply: one element per check, in order: the single script's reply, or, for a key this node
-- cannot serve, the error's text as a plain string ("Script attempted to access a non local key
-- in a cluster node"; not an error reply, which clients raise for the whole call), and that
-- check did nothing.
local steps = {w = sliding_window, l = sliding_log, f = fixed_window, t = token_bucket}
local s0, n0 = clock(ARGV[1])
local out = {}
for i = 1, math.floor((#ARGV - 1) / 8) do
  local a = 2 + (i - 1) * 8
  local allowed, remaining, reset, retry, never, token = steps[ARGV[a + 1]](ARGV[a], s0, n0,
    tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
    {ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]}, false)
  if allowed == nil then
    out[i] = remaining.err
  else
    out[i] = reply(allowed, remaining, reset, retry, never, token)
  end
end
return out
