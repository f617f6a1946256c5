-- sliding_window: the conservative sub-bucketed window of drl_core::algorithm::sliding_window,
-- with the same bucket geometry and the same ring: bucket b in slot b mod `slots`, and a running
-- total, so a check reads and rewrites one short string and touches only the current slot and
-- the slots that expired since the previous check (a denial also walks the ring from the oldest
-- slot, only until enough has left to say when to retry).
-- params: bucket width g (ns), ring slots, T mod g (strings).
-- State: one string, a 33-byte header (g, slots, count width, newest bucket, bucket of the
-- newest admission or -1, total; SW_HEAD) and `slots` counts of 1 byte (N ≤ 255), 2 (N ≤
-- 65 535) or 4: Lua hashes every byte of every string it makes (the state read, the state
-- written), so a smaller state is a cheaper check as well as a smaller key.
-- Refund token: the bucket the hits went into.
local SW_HEAD = '<dI4BddI4'
local SW_HEAD_LEN = 33
-- The header's last three fields, which checks change, and where they start.
local SW_TAIL = '<ddI4'
local SW_MUTABLE = 13

-- The ring position of bucket b.
local function sw_pos(b, slots)
  local p = math.fmod(b, slots)
  if p < 0 then p = p + slots end
  return p
end

-- The count at ring position p of the state string `ring` (nil: an empty ring).
local function sw_count(ring, p, width, cell)
  if ring == nil then return 0 end
  return (struct.unpack(cell, ring, SW_HEAD_LEN + 1 + p * width))
end

-- The count at ring position p, but 0 in the `cleared` slots up to position `here`: those whose
-- buckets left the ring since the state was read.
local function sw_live(ring, p, width, cell, here, cleared, slots)
  if cleared then
    local d = here - p
    if d < 0 then d = d + slots end
    if d < cleared then return 0 end
  end
  return sw_count(ring, p, width, cell)
end

-- The ring's bytes as they are after this check: `ring`'s (zeros for an empty ring) with the
-- `cleared` slots up to position `here` zeroed (those whose buckets left since the state was
-- read: a span that may wrap) and the count `mine` at `here`. A few substrings, whatever the
-- number of slots.
local function sw_body(ring, here, cleared, slots, width, mine)
  local zero = string.rep('\0', width)
  if ring == nil then
    return string.rep(zero, here) .. mine .. string.rep(zero, slots - here - 1)
  end
  local from = here - (cleared or 1) + 1
  local after = string.sub(ring, SW_HEAD_LEN + (here + 1) * width + 1)
  if from >= 0 then
    return string.sub(ring, SW_HEAD_LEN + 1, SW_HEAD_LEN + from * width)
      .. string.rep(zero, here - from) .. mine .. after
  end
  return string.rep(zero, here) .. mine
    .. string.sub(after, 1, (slots + from - here - 1) * width) .. string.rep(zero, -from)
end

-- Every count of the state string `ring`, in ring order: counts[p + 1] is position p's.
local function sw_counts(ring, slots, width)
  return {struct.unpack('<' .. string.rep('I' .. width, slots), ring, SW_HEAD_LEN + 1)}
end

-- A ring (with a header to be replaced) holding `counts` (bucket -> count) and nothing else.
local function sw_ring(counts, slots, width, cell)
  local parts = {string.rep('\0', SW_HEAD_LEN)}
  for p = 0, slots - 1 do parts[p + 2] = struct.pack(cell, counts[p] or 0) end
  return table.concat(parts)
end

local function sliding_window(key, s0, n0, hits, limit, window, params, dry)
  local g = tonumber(params[1])
  local slots = tonumber(params[2])
  local rem = tonumber(params[3])
  local width, cell, most = 2, '<I2', 65535
  if limit <= 255 then width, cell, most = 1, '<I1', 255
  elseif limit > 65535 then width, cell, most = 4, '<I4', 4294967295 end

  local ring, err = read_state(key)
  if err then return nil, err end
  local current, offset = divmod(s0, n0, g)
  local exists = ring ~= nil
  local newest, idle, total = 0, -1, 0
  local rewrite = false
  local held, from_newest, from_g = nil, 0, g
  if exists then
    local sg, sslots, swidth
    sg, sslots, swidth, newest, idle, total = struct.unpack(SW_HEAD, ring)
    local fits = sg == g and sslots == slots
    if fits and swidth ~= width then
      -- N changed across a count width (255, 65 535): the same buckets, repacked, if every
      -- count fits the new width (an admission then keeps a slot within N).
      local old = sw_counts(ring, slots, swidth)
      local counts = {}
      for p = 0, slots - 1 do
        if old[p + 1] > most then fits = false end
        counts[p] = old[p + 1]
      end
      if fits then ring, rewrite = sw_ring(counts, slots, width, cell), true end
    end
    if not fits then held, from_newest, from_g = total, newest, sg end
  else
    -- An older drl kept this counter in a hash under the lower-case letter (a field per bucket,
    -- 'g'/'s' the geometry, 'n' the newest bucket, 'i' the newest admission's): read once, when
    -- this key is made, so an upgrade keeps the windows running.
    local old = legacy(key)
    local flat = old and redis.pcall('HGETALL', old)
    if type(flat) == 'table' and flat.err == nil and #flat > 0 then
      local og, oslots, onewest, oidle, sum = nil, nil, 0, -1, 0
      local buckets = {}
      for i = 1, #flat, 2 do
        local f, v = flat[i], flat[i + 1]
        if f == 'g' then og = tonumber(v)
        elseif f == 's' then oslots = tonumber(v)
        elseif f == 'n' then onewest = tonumber(v)
        elseif f == 'i' then oidle = tonumber(v)
        elseif tonumber(f) then buckets[tonumber(f)] = tonumber(v); sum = sum + tonumber(v) end
      end
      exists, rewrite = true, true
      if og == g and oslots == slots and sum <= most then
        newest, idle = onewest, oidle
        local counts = {}
        for b, c in pairs(buckets) do
          if b > onewest - slots and b <= onewest then
            counts[sw_pos(b, slots)] = c
            total = total + c
          end
        end
        ring = sw_ring(counts, slots, width, cell)
      else
        held, from_newest, from_g = sum, onewest, og or g
      end
    end
  end
  if held ~= nil then
    -- A state of another geometry: every admission it holds moves into the bucket of now (or
    -- of its newest bucket, if later), so it stays counted for at least a full window: the
    -- change under-admits, never over-admits.
    local moved = math.floor(from_newest * from_g / g)
    if moved > current then current = moved; offset = 0 end
    newest, idle, total, ring, rewrite = current, -1, 0, nil, true
    if held > 0 then
      total = math.min(held, most)
      ring = sw_ring({[sw_pos(current, slots)] = total}, slots, width, cell)
      idle = current
    end
  end

  -- Time never runs backwards for a key: an earlier reading is the newest bucket's start.
  if current < newest then current = newest; offset = 0 end
  local here = sw_pos(current, slots)
  local moved_on = current > newest
  local last_idle = idle
  -- How many slots up to the current one were emptied (time moved on), for an in-place write.
  local cleared = nil
  if moved_on then
    -- The slots from after the newest bucket to now held buckets that have left the ring.
    local stale = current - newest
    if total == 0 or stale >= slots then
      ring, total, rewrite = nil, 0, exists
    else
      cleared = stale
      for age = 0, stale - 1 do
        total = total - sw_count(ring, sw_pos(current - age, slots), width, cell)
      end
    end
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
  local used = total
  if total > 0 then
    for age = span, slots - 1 do
      used = used - sw_live(ring, sw_pos(current - age, slots), width, cell, here, cleared, slots)
    end
  end

  local want = math.max(hits, 1)
  local allowed = used + want <= limit
  local admitted = allowed and hits > 0
  local mine = sw_live(ring, here, width, cell, here, cleared, slots)
  if admitted then
    mine = mine + hits
    total = total + hits
    used = used + hits
    idle = current
  end

  local idle_in = 0
  if idle >= 0 then idle_in = (idle + 1 - current) * g + window - offset end
  local in_place = exists and not rewrite and not moved_on and idle == last_idle and idle_in > 0
  if dry or not (admitted or (exists and (moved_on or rewrite))) then
    -- Nothing to write.
  elseif in_place and here < 128 then
    -- In place, in one SETRANGE: the header's counters, the slots before the current one as
    -- they are, and the current one (its expiry stands: the newest admission's bucket is
    -- unchanged).
    redis.call('SETRANGE', key, SW_MUTABLE, struct.pack(SW_TAIL, newest, idle, total)
      .. string.sub(ring, SW_HEAD_LEN + 1, SW_HEAD_LEN + here * width) .. struct.pack(cell, mine))
  elseif in_place then
    redis.call('SETRANGE', key, SW_MUTABLE, struct.pack(SW_TAIL, newest, idle, total))
    redis.call('SETRANGE', key, SW_HEAD_LEN + here * width, struct.pack(cell, mine))
  else
    -- The whole string in one SET, with the expiry: the newest admission's bucket is the last
    -- to leave, at (idle + 1)·g + T.
    store(key, struct.pack(SW_HEAD, g, slots, width, newest, idle, total)
      .. sw_body(ring, here, cleared, slots, width, struct.pack(cell, mine)), idle_in)
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
    -- Every count at once (one unpack, not one per slot: a denial after a burst walks the
    -- whole window), read in ring order from the oldest slot of the span; emptied slots count 0.
    local counts = {}
    if ring ~= nil then
      counts = sw_counts(ring, slots, width)
    end
    local p = here - span
    if p < 0 then p = p + slots end
    for age = span - 1, 0, -1 do
      p = p + 1
      if p == slots then p = 0 end
      local c = counts[p + 1] or 0
      if cleared then
        local d = here - p
        if d < 0 then d = d + slots end
        if d < cleared then c = 0 end
      end
      if c >= must_free then
        retry_after = (1 - age) * g + window - offset
        break
      end
      must_free = must_free - c
    end
  end
  return allowed, limit - used, reset_after, retry_after, want > limit, current
end
