-- Takes admissions back (all-or-nothing checks across slots, when a later slot denied).
-- 4 args per key, in KEYS order: the algorithm's letter, hits, the refund token, and unused.
-- Conservative by construction: a refund only ever lowers a count it can find unchanged, and a
-- sliding_log admission is not refunded at all.
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  local alg, hits, token = ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  if alg == 'w' and redis.call('HEXISTS', key, token) == 1 then
    if redis.call('HINCRBY', key, token, -hits) <= 0 then redis.call('HDEL', key, token) end
  elseif alg == 'f' then
    local st = redis.call('HMGET', key, 'ss', 'sn', 'c')
    if st[1] and (st[1] .. ':' .. st[2]) == token then
      redis.call('HSET', key, 'c', math.max(tonumber(st[3]) - hits, 0))
    end
  elseif alg == 't' then
    local st = redis.call('HMGET', key, 'ts', 'tn')
    if st[1] then
      -- tat - hits·e, carried over the seconds boundary.
      local total = tonumber(st[2]) - hits * tonumber(token)
      local carry = math.floor(total / E9)
      redis.call('HSET', key, 'ts', tonumber(st[1]) + carry, 'tn', total - carry * E9)
    end
  end
end
return #KEYS
