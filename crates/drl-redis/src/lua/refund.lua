-- Takes admissions back (all-or-nothing checks across slots, when a later slot denied).
-- 4 args per key, in KEYS order: the algorithm's letter, hits, the refund token, and unused.
-- Conservative by construction: a refund only ever lowers a count it can find unchanged, and a
-- sliding_log admission is not refunded at all. The state keeps its expiry.
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  local alg, hits, token = ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  local raw = read_state(key)
  if raw == nil then
    -- Gone: nothing to take back.
  elseif alg == 'w' then
    -- The bucket, if still in the ring: lower it and the total by what it holds of the hits.
    local g, slots, width, newest, idle, total = struct.unpack(SW_HEAD, raw)
    local bucket = tonumber(token)
    if bucket and bucket <= newest and bucket > newest - slots then
      local cell = width == 2 and '<I2' or '<I4'
      local at = SW_HEAD_LEN + math.fmod(bucket, slots) * width
      local c = struct.unpack(cell, raw, at + 1)
      local taken = math.min(c, hits)
      redis.call('SET', key, struct.pack(SW_HEAD, g, slots, width, newest, idle, total - taken)
        .. string.sub(raw, SW_HEAD_LEN + 1, at) .. struct.pack(cell, c - taken)
        .. string.sub(raw, at + width + 1), 'KEEPTTL')
    end
  elseif alg == 'f' then
    local ss, sn, c = struct.unpack(FW_STATE, raw)
    if (field(ss) .. ':' .. field(sn)) == token then
      redis.call('SET', key, struct.pack(FW_STATE, ss, sn, math.max(c - hits, 0)), 'KEEPTTL')
    end
  elseif alg == 't' then
    -- tat - hits·e, carried over the seconds boundary.
    local ts, tn = struct.unpack(TB_STATE, raw)
    local total = tn - hits * tonumber(token)
    local carry = math.floor(total / E9)
    redis.call('SET', key, struct.pack(TB_STATE, ts + carry, total - carry * E9), 'KEEPTTL')
  end
end
return #KEYS
