local out = {}
for i = 1, #ARGV do
  local prefix = 'ckpt:{' .. ARGV[i] .. '}:'
  local m = redis.call('HMGET', prefix .. 'meta', 'status', 'drained_at', 'stalled_since',
                       'cut_off', 'pod_user')
  local undrained = redis.call('XLEN', prefix .. 'events')
  local bytes, added, state_bytes = 0, -1, 0
  if undrained > 0 then
    bytes = redis.pcall('MEMORY', 'USAGE', prefix .. 'events', 'SAMPLES', '0')
    if type(bytes) ~= 'number' then bytes = -1 end
  end
  if m[5] then
    added = 0  -- a pod job whose stream does not exist yet: none added
    state_bytes = redis.pcall('MEMORY', 'USAGE', prefix .. 'state', 'SAMPLES', '0')
    if type(state_bytes) ~= 'number' then state_bytes = 0 end
  end
  if m[5] and redis.call('EXISTS', prefix .. 'events') == 1 then
    local info = redis.call('XINFO', 'STREAM', prefix .. 'events')
    for j = 1, #info, 2 do
      if info[j] == 'entries-added' then added = info[j + 1] end
    end
  end
  out[#out + 1] = {ARGV[i], undrained, bytes, added, m[1] or '', m[2] or '', m[3] or '',
                   m[4] or '', m[5] or '', state_bytes}
end
return out
