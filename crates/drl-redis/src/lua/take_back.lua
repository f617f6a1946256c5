-- Takes `hits` admissions back from `key`, counted by the algorithm of letter `alg` with the
-- refund token `token` (what its step returned); returns how many it took back. Conservative by
-- construction: it only ever lowers a count it can find unchanged (a sliding_window bucket still
-- in the ring, the same fixed window), never below zero, and a sliding_log admission is not
-- taken back at all. The state keeps its expiry. With the time (s0, n0), a bucket or window
-- that time has moved past (no longer counted, though not yet cleared) gives nothing back.
local function take_back(key, alg, hits, token, s0, n0, window)
  local raw = read_state(key)
  if raw == nil or hits <= 0 then return 0 end
  if alg == 'w' then
    -- The bucket, if still in the ring: lower it and the total by what it holds of the hits.
    local g, slots, width, newest, idle, total = struct.unpack(SW_HEAD, raw)
    local bucket = tonumber(token)
    local floor = newest - slots
    if s0 then floor = math.max(floor, (divmod(s0, n0, g)) - slots) end
    if bucket and bucket <= newest and bucket > floor then
      local cell = '<I' .. width
      local at = SW_HEAD_LEN + math.fmod(bucket, slots) * width
      local c = struct.unpack(cell, raw, at + 1)
      local taken = math.min(c, hits)
      redis.call('SET', key, struct.pack(SW_HEAD, g, slots, width, newest, idle, total - taken)
        .. string.sub(raw, SW_HEAD_LEN + 1, at) .. struct.pack(cell, c - taken)
        .. string.sub(raw, at + width + 1), 'KEEPTTL')
      return taken
    end
  elseif alg == 'f' then
    local ss, sn, c = struct.unpack(FW_STATE, raw)
    local over = false
    if s0 then over = (ss - s0) * E9 + (sn - n0) + window <= 0 end
    if not over and (field(ss) .. ':' .. field(sn)) == token then
      local taken = math.min(c, hits)
      redis.call('SET', key, struct.pack(FW_STATE, ss, sn, c - taken), 'KEEPTTL')
      return taken
    end
  elseif alg == 't' then
    -- tat - hits·e, carried over the seconds boundary.
    local ts, tn = struct.unpack(TB_STATE, raw)
    local total = tn - hits * tonumber(token)
    local carry = math.floor(total / E9)
    redis.call('SET', key, struct.pack(TB_STATE, ts + carry, total - carry * E9), 'KEEPTTL')
    return hits
  end
  return 0
end
