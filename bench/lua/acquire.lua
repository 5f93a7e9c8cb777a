-- Acquire one unit against every constraint of a request, atomically, or
-- say why not: Leasehold's Acquire for amount 1, in one Redis script.
--
-- Holders of a concurrency key are members of a ZSET scored by their
-- expiry (ms); a holder stops counting the moment its expiry passes. A
-- throttle is GCRA over a stored theoretical arrival time (TAT, in µs):
-- emission interval T = ceil(period / limit), at most burst + 1 units at
-- one instant. A grant writes a lease record (the holder sets it counts
-- in) and an idempotency record that a retry with the same key replays,
-- until the lease ends plus the dedup window. Denials are not recorded.
-- Time is the server's, from TIME.
--
-- KEYS[1]    the idempotency record of this acquire
-- KEYS[2]    the scope's lease-id counter (ids double as fencing tokens)
-- KEYS[3..]  the holder sets of the concurrency constraints, then the TAT
--            keys of the throttles, each group in request order
-- ARGV[1]    the prefix of the scope's lease records
-- ARGV[2]    lease ttl, ms
-- ARGV[3]    how long the idempotency record outlives the lease, ms
-- ARGV[4]    fingerprint of the request's parameters
-- ARGV[5]    nc, the number of concurrency constraints
-- ARGV[6..]  nc limits, then limit, period_ms, burst of each throttle
--
-- Returns {1, lease_id, expires_at_ms, replayed (0/1)} for a grant, or
-- {0, retry_after_ms} for a denial.

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

local record = redis.call('GET', KEYS[1])
if record then
  local fp, id, expires = string.match(record, '^(.*)|(%d+)|(%d+)$')
  if fp ~= ARGV[4] then
    return redis.error_reply('IDEMPOTENCY_KEY_REUSED key used with other parameters')
  end
  return {1, tonumber(id), tonumber(expires), 1}
end

local ttl_ms = tonumber(ARGV[2])
local nc = tonumber(ARGV[5])
local nt = #KEYS - 2 - nc
local blocked = false
local retry_after = 0

for i = 1, nc do
  local key = KEYS[2 + i]
  local limit = tonumber(ARGV[5 + i])
  -- Expired holders count no more: drop them.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  local held = redis.call('ZCARD', key)
  if held + 1 > limit then
    blocked = true
    -- Admitted once held - limit + 1 holders have expired.
    local nth = redis.call('ZRANGE', key, held - limit, held - limit, 'WITHSCORES')
    local wait = tonumber(nth[2]) - now_ms
    if wait > retry_after then retry_after = wait end
  end
end

local tats = {}
for j = 1, nt do
  local key = KEYS[2 + nc + j]
  local base = 5 + nc + 3 * (j - 1)
  local limit = tonumber(ARGV[base + 1])
  local period_ms = tonumber(ARGV[base + 2])
  local burst = tonumber(ARGV[base + 3])
  local interval_us = math.ceil(period_ms * 1000 / limit)
  local tat = tonumber(redis.call('GET', key) or now_us)
  if tat < now_us then tat = now_us end
  -- Admitted when the bucket, after this unit, holds at most burst + 1.
  local allow_at_us = tat - burst * interval_us
  if now_us < allow_at_us then
    blocked = true
    local wait = math.ceil((allow_at_us - now_us) / 1000)
    if wait > retry_after then retry_after = wait end
  end
  tats[j] = tat + interval_us
end

if blocked then
  return {0, retry_after}
end

local id = redis.call('INCR', KEYS[2])
local expires = now_ms + ttl_ms
local holders = {}
for i = 1, nc do
  local key = KEYS[2 + i]
  redis.call('ZADD', key, expires, id)
  -- The set lives as long as its latest holder.
  if redis.call('PEXPIRETIME', key) < expires then
    redis.call('PEXPIREAT', key, expires)
  end
  holders[i] = key
end
for j = 1, nt do
  local key = KEYS[2 + nc + j]
  redis.call('SET', key, tats[j], 'PX', math.ceil((tats[j] - now_us) / 1000) + 1)
end
redis.call('SET', ARGV[1] .. id, table.concat(holders, '\n'), 'PX', ttl_ms)
redis.call('SET', KEYS[1],
  ARGV[4] .. '|' .. string.format('%.0f|%.0f', id, expires),
  'PX', ttl_ms + tonumber(ARGV[3]))
return {1, id, expires, 0}
