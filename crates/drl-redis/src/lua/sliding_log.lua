-- sliding_log: the exact log of drl_core::algorithm::sliding_log, kept as a ring of N slots in
-- one string: a 16-byte header (admissions ever counted, ring size) and 8 bytes per slot
-- (seconds, nanoseconds as big-endian u32s); admission k is in slot k mod N. The newest N
-- admissions are all that can matter, and they are sorted by time, so the oldest one still in
-- the window is found by binary search. A ring of up to LOG_WHOLE bytes is read with one GET, a
-- larger one with O(log N) GETRANGEs, so a check never copies a long ring; an admission writes the
-- header and its slots in place (SETRANGE), a new key with one SET. The layout is the one older drl versions wrote. No refund token: an
-- admission in the middle of the ring cannot be taken back, so a refunded one stays counted
-- (under-admission, never over-admission).
local LOG_WHOLE = 4096

local function sliding_log(key, s0, n0, hits, limit, window, params, dry)
  local count, size = 0, limit
  -- `whole`: the entire string, when the ring is short enough to read at once.
  local whole = nil
  local header
  local small = 16 + 8 * limit <= LOG_WHOLE
  if small then
    local raw, err = read_state(key)
    if err then return nil, err end
    header = raw and string.sub(raw, 1, 16) or ''
    whole = raw
  else
    header = redis.pcall('GETRANGE', key, 0, 15)
    if type(header) == 'table' then return nil, header end
  end
  local exists = #header == 16
  if exists then count, size = struct.unpack('>dd', header) end
  -- A ring an older drl wrote slot by slot may be shorter than its size: read it by ranges.
  if whole and 16 + 8 * size ~= #whole then whole = nil end

  local cache = {}
  local function slot_at(k)
    local pos = math.fmod(k, size)
    if whole then return struct.unpack('>I4I4', whole, 17 + 8 * pos) end
    if cache[pos] == nil then
      local off = 16 + 8 * pos
      local s, n = struct.unpack('>I4I4', redis.call('GETRANGE', key, off, off + 7))
      cache[pos] = {s, n}
    end
    return cache[pos][1], cache[pos][2]
  end

  if exists and size ~= limit then
    -- N changed: keep the newest admissions, as many as the new ring holds (the same decisions
    -- as keeping them all: the oldest ones can never be the N-th most recent).
    local keep = math.min(count, size, limit)
    local parts = {struct.pack('>dd', keep, limit)}
    for k = count - keep, count - 1 do
      local s, n = slot_at(k)
      table.insert(parts, struct.pack('>I4I4', s, n))
    end
    if not dry then redis.call('SET', key, table.concat(parts), 'KEEPTTL') end
    local ring = table.concat(parts)
    whole = nil
    cache = {}
    for k = 0, keep - 1 do
      cache[k] = {struct.unpack('>I4I4', string.sub(ring, 17 + 8 * k, 24 + 8 * k))}
    end
    count, size = keep, limit
  end

  -- Time never runs backwards for a key: not before its newest admission.
  if count > 0 then
    local s, n = slot_at(count - 1)
    if s > s0 or (s == s0 and n > n0) then s0, n0 = s, n end
  end
  local function rel(s, n) return (s - s0) * E9 + (n - n0) end

  -- The first admission still in [now - T, now].
  local lo, hi = count - math.min(count, size), count
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if rel(slot_at(mid)) >= -window then hi = mid else lo = mid + 1 end
  end
  local first = lo
  local used = count - first

  local want = math.max(hits, 1)
  local allowed = used + want <= limit
  local newest_rel = nil
  if count > 0 and used > 0 then newest_rel = rel(slot_at(count - 1)) end
  local retry_after = 0
  if allowed then
    retry_after = 0
  elseif want > limit then
    retry_after = window
  else
    local must_free = used + want - limit
    retry_after = rel(slot_at(first + must_free - 1)) + window + 1
  end
  if allowed and hits > 0 then
    if not dry then
      local slot = struct.pack('>I4I4', s0, n0)
      local pos = math.fmod(count, size)
      local head = math.min(hits, size - pos)
      if small and not exists then
        -- A new ring in one SET: header, the slots before, the new ones, the slots after.
        local ring = string.rep('\0', 8 * size)
        local wrapped = hits - head
        store(key, struct.pack('>dd', count + hits, size)
          .. string.rep(slot, wrapped)
          .. string.sub(ring, 8 * wrapped + 1, 8 * pos)
          .. string.rep(slot, head)
          .. string.sub(ring, 8 * (pos + head) + 1), window + 1)
      else
        redis.call('SETRANGE', key, 0, struct.pack('>dd', count + hits, size))
        redis.call('SETRANGE', key, 16 + 8 * pos, string.rep(slot, head))
        if hits > head then redis.call('SETRANGE', key, 16, string.rep(slot, hits - head)) end
        expire_in(key, window + 1)
      end
    end
    count = count + hits
    used = used + hits
    newest_rel = 0
  end

  local reset_after = 0
  if newest_rel ~= nil then reset_after = newest_rel + window + 1 end
  return allowed, limit - used, reset_after, retry_after, want > limit, ''
end
