-- token_bucket: the GCRA of drl_core::algorithm::token_bucket. params: emission interval e
-- (ns), burst. State: one string packing the theoretical arrival time (seconds, nanoseconds;
-- TB_STATE). Refund token: e.
local TB_STATE = '<dd'

local function token_bucket(key, s0, n0, hits, limit, window, params, dry)
  local e = tonumber(params[1])
  local burst = tonumber(params[2])

  local raw, err = read_state(key)
  if err then return nil, err end
  local ts, tn
  if raw ~= nil then
    ts, tn = struct.unpack(TB_STATE, raw)
  else
    -- An older drl kept the arrival time in a hash under the lower-case letter: read once.
    local old = legacy(key)
    local st = old and redis.pcall('HMGET', old, 'ts', 'tn')
    if type(st) == 'table' and st.err == nil and st[1] then
      ts, tn = tonumber(st[1]), tonumber(st[2])
    end
  end
  local tat = -(s0 * E9 + n0)
  if ts then tat = (ts - s0) * E9 + (tn - n0) end

  local capacity = burst * e
  local want = math.max(hits, 1)
  local after = math.max(tat, 0) + want * e
  local allowed = want <= burst and after <= capacity
  if allowed and hits > 0 then
    tat = after
    if not dry then
      local total = n0 + after
      local carry = math.floor(total / E9)
      store(key, struct.pack(TB_STATE, s0 + carry, total - carry * E9), after)
    end
  end
  local full = math.max(tat, 0)
  local remaining = math.floor(math.max(capacity - full, 0) / e)
  local retry_after = after - capacity
  if want > burst then retry_after = window end
  return allowed, remaining, full, retry_after, want > burst, params[1]
end
