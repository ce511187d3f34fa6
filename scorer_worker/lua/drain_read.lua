local function stream_bytes(key, count)
  local bytes = redis.pcall('MEMORY', 'USAGE', key, 'SAMPLES', '0')
  if type(bytes) == 'number' then return bytes end
  local total = 0  -- a server without MEMORY: the entries a batch would read
  for _, entry in ipairs(redis.call('XRANGE', key, '-', '+', 'COUNT', count)) do
    for _, part in ipairs(entry[2]) do total = total + #part end
  end
  return total
end
local special_fields = {cut_off = true, stalled_since = true}
local out = {}
for i = 2, #ARGV do
  local prefix = 'ckpt:{' .. ARGV[i] .. '}:'
  local m = redis.call('HMGET', prefix .. 'meta', 'cursor', 'version', 'written_version',
                       'status', 'eval_version', 'last_flush_at', 'refused_version')
  local special = 0
  for _, name in ipairs(redis.call('HKEYS', prefix .. 'meta')) do
    if string.sub(name, 1, 7) == 'poison:' or special_fields[name] then special = 1 break end
  end
  local head, bytes, last = '', 0, ''
  if redis.call('XLEN', prefix .. 'events') > 0 then
    head = redis.call('HGET', prefix .. 'state', 'head') or ''
    bytes = stream_bytes(prefix .. 'events', ARGV[1])
    last = redis.call('XREVRANGE', prefix .. 'events', '+', '-', 'COUNT', 1)[1][1]
  end
  out[#out + 1] = {head, m[1] or '', m[2] or '', m[3] or '', m[4] or '', m[5] or '',
                   m[6] or '', m[7] or '', special, bytes, last}
end
return out
