-- Release a lease: its units are free at once. Leasehold's Release in one
-- Redis script. Releasing a lease that already ended (expired or released)
-- answers was_held = 0; an id never granted fails LEASE_NOT_FOUND. The
-- outcome is recorded under the idempotency key for the dedup window, so
-- a retry replays it.
--
-- KEYS[1]  the idempotency record of this release
-- KEYS[2]  the scope's lease-id counter
-- ARGV[1]  the prefix of the scope's lease records
-- ARGV[2]  the lease id
-- ARGV[3]  how long the idempotency record lives, ms
-- ARGV[4]  fingerprint of the request's parameters
--
-- Returns {was_held (0/1), replayed (0/1)}.

local record = redis.call('GET', KEYS[1])
if record then
  local fp, held = string.match(record, '^(.*)|(%d)$')
  if fp ~= ARGV[4] then
    return redis.error_reply('IDEMPOTENCY_KEY_REUSED key used with other parameters')
  end
  return {tonumber(held), 1}
end

if tonumber(ARGV[2]) > tonumber(redis.call('GET', KEYS[2]) or 0) then
  return redis.error_reply('LEASE_NOT_FOUND no such lease in this scope')
end

local lease = ARGV[1] .. ARGV[2]
local holders = redis.call('GET', lease)
local held = 0
if holders then
  held = 1
  for key in string.gmatch(holders, '[^\n]+') do
    redis.call('ZREM', key, ARGV[2])
  end
  redis.call('DEL', lease)
end
redis.call('SET', KEYS[1], ARGV[4] .. '|' .. held, 'PX', tonumber(ARGV[3]))
return {held, 0}
