-- The limit check's read (scorer_worker/limits.py), many jobs a call.
-- KEYS, 3 per job: meta, events, state. ARGV: the meta fields status, drained_at,
-- stalled_since, cut_off, pod_user (in this order). Returns, per job: {undrained entries,
-- stream bytes (-1: unknown), entries added to its stream ever (-1 without a pod user), the
-- five meta values ('' if absent), state bytes (pod jobs; 0 else)}.
local out = {}
for job = 1, #KEYS / 3 do
  local meta, events, state = KEYS[3 * job - 2], KEYS[3 * job - 1], KEYS[3 * job]
  local m = redis.call('HMGET', meta, unpack(ARGV, 1, 5))
  local undrained = redis.call('XLEN', events)
  local bytes, added, state_bytes = 0, -1, 0
  if undrained > 0 then
    bytes = redis.pcall('MEMORY', 'USAGE', events, 'SAMPLES', '0')
    if type(bytes) ~= 'number' then bytes = -1 end
  end
  if m[5] then
    added = 0  -- a pod job whose stream does not exist yet: none added
    state_bytes = redis.pcall('MEMORY', 'USAGE', state, 'SAMPLES', '0')
    if type(state_bytes) ~= 'number' then state_bytes = 0 end
  end
  if m[5] and redis.call('EXISTS', events) == 1 then
    local info = redis.call('XINFO', 'STREAM', events)
    for j = 1, #info, 2 do
      if info[j] == 'entries-added' then added = info[j + 1] end
    end
  end
  out[#out + 1] = {undrained, bytes, added, m[1] or '', m[2] or '', m[3] or '', m[4] or '',
                   m[5] or '', state_bytes}
end
return out
