local function call_in_chunks(command, key, first, count)
  local last = first + 2 * count - 1  -- count (field, value) or (score, member) pairs
  for from = first, last, 400 do  -- 200 pairs a call: few calls, and within Lua's stack
    redis.call(command, key, unpack(ARGV, from, math.min(from + 399, last)))
  end
end
local out = {}
local i = 1
while i <= #ARGV do
  local prefix = 'ckpt:{' .. ARGV[i] .. '}:'
  local ok = (redis.call('HGET', prefix .. 'state', 'head') or '') == ARGV[i + 1]
  if ok then redis.call('HSET', prefix .. 'state', 'head', ARGV[i + 2]) end
  i = i + 3
  for _, target in ipairs({{'HSET', 'state'}, {'HSET', 'meta'}, {'ZADD', 'changes'},
                           {'HSET', 'decision'}}) do
    local n = tonumber(ARGV[i])
    if ok then call_in_chunks(target[1], prefix .. target[2], i + 1, n) end
    i = i + 1 + 2 * n
  end
  if ok then redis.call('XTRIM', prefix .. 'events', 'MINID', ARGV[i]) end
  i = i + 1
  out[#out + 1] = ok and 1 or 0
end
return out
