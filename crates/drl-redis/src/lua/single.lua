-- One check of one counter: the algorithm named by the script that includes this trailer.
local s0, n0 = clock(ARGV[1])
return reply(STEP(KEYS[1], s0, n0, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]),
  {ARGV[5], ARGV[6], ARGV[7]}, false))
