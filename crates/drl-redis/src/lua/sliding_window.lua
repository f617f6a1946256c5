-- sliding_window: the conservative sub-bucketed window of drl_core::algorithm::sliding_window,
-- with the same bucket geometry. ARGV[5] bucket width g (ns), ARGV[6] ring slots, ARGV[7] T mod g.
-- State: a hash; field 'g'/'s' the geometry it was built with, 'n' the newest bucket index (time
-- never goes back past its start), 'i' the bucket of the newest admission, and one field per
-- bucket index holding its count. Buckets older than the ring are deleted as time moves on.
local key = KEYS[1]
local s0, n0 = clock(ARGV[1])
local hits = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local g = tonumber(ARGV[5])
local slots = tonumber(ARGV[6])
local rem = tonumber(ARGV[7])
local function field(x) return string.format('%.0f', x) end

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
if exists and (state_g ~= ARGV[5] or state_slots ~= ARGV[6]) then
  -- The rules changed the geometry: every admission still held moves into the bucket of now,
  -- so it stays counted for at least a full window (under-admits, never over-admits).
  local held = 0
  for _, c in pairs(buckets) do held = held + c end
  local moved = math.floor(newest * tonumber(state_g) / g)
  if moved > current then current = moved; offset = 0 end
  newest = current
  buckets = {}
  idle = nil
  if held > 0 then buckets[current] = held; idle = current end
  redis.call('DEL', key)
  rewrite = true
end

-- Time never runs backwards for a key: an earlier reading is the newest bucket's start.
if current < newest then current = newest; offset = 0 end
local moved_on = current > newest
if moved_on then
  for idx, _ in pairs(buckets) do
    if idx <= current - slots then
      buckets[idx] = nil
      if not rewrite then redis.call('HDEL', key, field(idx)) end
    end
  end
  newest = current
end

-- Buckets overlapping [now - T, now]: all of the ring but the one extra slot when g does not
-- divide T, unless now is early in its bucket; in the first window after the origin, all so far.
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

if rewrite and (exists or admitted) then
  local args = {'g', ARGV[5], 's', ARGV[6], 'n', field(newest)}
  if idle ~= nil then table.insert(args, 'i'); table.insert(args, field(idle)) end
  for idx, c in pairs(buckets) do table.insert(args, field(idx)); table.insert(args, c) end
  redis.call('HSET', key, unpack(args))
elseif exists then
  if admitted then
    redis.call('HINCRBY', key, field(current), hits)
    redis.call('HSET', key, 'n', field(newest), 'i', field(idle))
  elseif moved_on then
    redis.call('HSET', key, 'n', field(newest))
  end
end

-- The bucket of the newest admission is the last to leave: at (idle + 1)·g + T.
local idle_in = 0
if idle ~= nil then idle_in = (idle + 1 - current) * g + window - offset end
if exists or admitted then expire_in(key, idle_in) end
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
return reply(allowed, limit - used, reset_after, retry_after, want > limit)
