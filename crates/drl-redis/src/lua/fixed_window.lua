-- fixed_window: drl_core::algorithm::fixed_window, windows aligned to multiples of T.
-- State: one string packing the window's start (seconds, nanoseconds) and its count (FW_STATE).
-- Refund token: 'ss:sn'.
local FW_STATE = '<ddd'

local function fixed_window(key, s0, n0, hits, limit, window, params, dry)
  local raw, err = read_state(key)
  if err then return nil, err end
  local exists = raw ~= nil
  local ss, sn, count = 0, 0, 0
  if exists then
    ss, sn, count = struct.unpack(FW_STATE, raw)
  else
    -- An older drl kept this counter in a hash under the lower-case letter: read once, when
    -- this key is made, so an upgrade keeps the window's count.
    local old = legacy(key)
    local st = old and redis.pcall('HMGET', old, 'ss', 'sn', 'c')
    if type(st) == 'table' and st.err == nil and st[1] then
      ss, sn, count = tonumber(st[1]) or 0, tonumber(st[2]) or 0, tonumber(st[3]) or 0
      exists = true
    end
  end
  -- Time never runs backwards for a key: not before its window's start.
  if ss > s0 or (ss == s0 and sn > n0) then s0, n0 = ss, sn end
  local start_rel = (ss - s0) * E9 + (sn - n0)
  local rolled = false
  if start_rel + window <= 0 then
    local _, r = divmod(s0, n0, window)
    local total = n0 - r
    local carry = math.floor(total / E9)
    ss, sn = s0 + carry, total - carry * E9
    start_rel = -r
    count = 0
    rolled = true
  end

  local want = math.max(hits, 1)
  local allowed = count + want <= limit
  local admitted = allowed and hits > 0
  if admitted then count = count + hits end
  if not dry and (admitted or (exists and rolled) or (exists and raw == nil)) then
    store(key, struct.pack(FW_STATE, ss, sn, count), start_rel + window)
  end

  local reset_after = 0
  if count > 0 then reset_after = start_rel + window end
  local retry_after = start_rel + window
  if want > limit then retry_after = window end
  return allowed, limit - count, reset_after, retry_after, want > limit, field(ss) .. ':' .. field(sn)
end
