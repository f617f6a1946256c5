-- token_bucket: the GCRA of drl_core::algorithm::token_bucket. params: emission interval e
-- (ns), burst. State: a hash; 'ts'/'tn' the theoretical arrival time. Refund token: e.
local function token_bucket(key, s0, n0, hits, limit, window, params, dry)
  local e = tonumber(params[1])
  local burst = tonumber(params[2])

  local st = redis.call('HMGET', key, 'ts', 'tn')
  local tat = -(s0 * E9 + n0)
  if st[1] then tat = (tonumber(st[1]) - s0) * E9 + (tonumber(st[2]) - n0) end

  local capacity = burst * e
  local want = math.max(hits, 1)
  local after = math.max(tat, 0) + want * e
  local allowed = want <= burst and after <= capacity
  if allowed and hits > 0 then
    tat = after
    if not dry then
      local total = n0 + after
      local carry = math.floor(total / E9)
      redis.call('HSET', key, 'ts', s0 + carry, 'tn', total - carry * E9)
      expire_in(key, after)
    end
  end
  local full = math.max(tat, 0)
  local remaining = math.floor(math.max(capacity - full, 0) / e)
  local retry_after = after - capacity
  if want > burst then retry_after = window end
  return allowed, remaining, full, retry_after, want > burst, params[1]
end
