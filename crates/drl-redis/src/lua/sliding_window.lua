-- sliding_window: the conservative sub-bucketed window of drl_core::algorithm::sliding_window,
-- with the same bucket geometry. params: bucket width g (ns), ring slots, T mod g (strings).
-- State: a hash; field 'g'/'s' the geometry it was built with, 'n' the newest bucket index (time
-- never goes back past its start), 'i' the bucket of the newest admission, and one field per
-- bucket index holding its count. Buckets older than the ring are deleted as time moves on.
-- Refund token: the bucket the hits went into.
local function sliding_window(key, s0, n0, hits, limit, window, params, dry)
  local g = tonumber(params[1])
  local slots = tonumber(params[2])
  local rem = tonumber(params[3])

  local flat = redis.call('HGETALL', key)
  local exists = #flat > 0
  local state_g, state_slots, newest, idle = nil, nil, 0, nil
  local buckets = {}
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    if f == 'g' then state_g = v
    elseif f == 's' then state_slots = v
    elseif f == 'n' then newest = tonumber(v)
    elseif f == 'i' then idle = tonumber(v)
    else buckets[tonumber(f)] = tonumber(v) end
  end

  local current, offset = divmod(s0, n0, g)
  local rewrite = not exists
  if exists and (state_g ~= params[1] or state_slots ~= params[2]) then
    -- The rules changed the geometry: every admission still held moves into the bucket of
    -- now, so it stays counted for at least a full window (under-admits, never over-admits).
    local held = 0
    for _, c in pairs(buckets) do held = held + c end
    local moved = math.floor(newest * tonumber(state_g) / g)
    if moved > current then current = moved; offset = 0 end
    newest = current
    buckets = {}
    idle = nil
    if held > 0 then buckets[current] = held; idle = current end
    rewrite = true
  end

  -- Time never runs backwards for a key: an earlier reading is the newest bucket's start.
  if current < newest then current = newest; offset = 0 end
  local moved_on = current > newest
  local stale = {}
  if moved_on then
    for idx, _ in pairs(buckets) do
      if idx <= current - slots then table.insert(stale, idx) end
    end
    for _, idx in ipairs(stale) do buckets[idx] = nil end
    newest = current
  end

  -- Buckets overlapping [now - T, now]: all of the ring but the one extra slot when g does not
  -- divide T, unless now is early in its bucket; in the first window after the origin, all so
  -- far.
  local span
  if current * g + offset >= window then
    span = slots
    if rem > 0 then span = span - 1 end
    if offset < rem then span = span + 1 end
  else
    span = current + 1
  end
  local used = 0
  for idx, c in pairs(buckets) do
    if idx > current - span then used = used + c end
  end

  local want = math.max(hits, 1)
  local allowed = used + want <= limit
  local admitted = allowed and hits > 0
  if admitted then
    buckets[current] = (buckets[current] or 0) + hits
    used = used + hits
    idle = current
  end

  local idle_in = 0
  if idle ~= nil then idle_in = (idle + 1 - current) * g + window - offset end
  if not dry and (exists or admitted) then
    if rewrite then
      redis.call('DEL', key)
      local args = {'g', params[1], 's', params[2], 'n', field(newest)}
      if idle ~= nil then table.insert(args, 'i'); table.insert(args, field(idle)) end
      for idx, c in pairs(buckets) do table.insert(args, field(idx)); table.insert(args, c) end
      redis.call('HSET', key, unpack(args))
    else
      for _, idx in ipairs(stale) do redis.call('HDEL', key, field(idx)) end
      if admitted then
        redis.call('HINCRBY', key, field(current), hits)
        redis.call('HSET', key, 'n', field(newest), 'i', field(idle))
      elseif moved_on then
        redis.call('HSET', key, 'n', field(newest))
      end
    end
    -- The bucket of the newest admission is the last to leave: at (idle + 1)·g + T.
    expire_in(key, idle_in)
  end
  local reset_after = 0
  if used > 0 then reset_after = idle_in end

  local retry_after = 0
  if allowed then
    retry_after = 0
  elseif want > limit then
    retry_after = window
  else
    -- Free buckets from the oldest on until enough hits have left the window.
    local must_free = used + want - limit
    retry_after = reset_after
    for age = span - 1, 0, -1 do
      local c = buckets[current - age] or 0
      if c >= must_free then
        retry_after = (1 - age) * g + window - offset
        break
      end
      must_free = must_free - c
    end
  end
  return allowed, limit - used, reset_after, retry_after, want > limit, field(current)
end
