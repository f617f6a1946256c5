-- The common hand-written sliding-window limiter: a sorted set of request timestamps.
-- KEYS[1] the user's key; ARGV[1] window (ms), ARGV[2] limit, ARGV[3] a unique request id.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, t[1] .. t[2] .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 1
end
return 0
