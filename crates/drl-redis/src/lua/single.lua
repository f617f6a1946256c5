-- One check of one counter: the algorithm named by the script that includes this trailer.
local s0, n0 = clock(ARGV[1])
local allowed, remaining, reset, retry, never, token = STEP(KEYS[1], s0, n0, tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4]), {ARGV[5], ARGV[6], ARGV[7]}, false)
if allowed == nil then return remaining end
return reply(allowed, remaining, reset, retry, never, token)
