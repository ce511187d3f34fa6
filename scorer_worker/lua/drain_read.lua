-- The pipelined drain's first read (scorer_worker/bulk.py), many jobs a call.
-- KEYS, 3 per job: meta, state, events. ARGV: the batch's event count, the state's head
-- field, the poison fields' prefix, n, the n meta fields to read (the cursor, then
-- keys.LEVEL_FIELDS), then the meta fields that send a job to the per-job drain (a cut-off,
-- a stall). Returns, per job: {head ('' when its stream is empty), the n meta values ('' if
-- absent), special (0/1: a poison event or a special field: the per-job drain), stream
-- bytes, last entry id ('' for none)}. The events are then read with plain XRANGE up to that
-- last id, which is cheaper than passing them through Lua, and only for streams within the
-- read budget: nothing a pod appends meanwhile is read.
local function stream_bytes(key, count)
  local bytes = redis.pcall('MEMORY', 'USAGE', key, 'SAMPLES', '0')
  if type(bytes) == 'number' then return bytes end
  local total = 0  -- a server without MEMORY: the entries a batch would read
  for _, entry in ipairs(redis.call('XRANGE', key, '-', '+', 'COUNT', count)) do
    for _, part in ipairs(entry[2]) do total = total + #part end
  end
  return total
end
-- Each call from Lua costs a few microseconds of the server's time, per job: the meta hash is
-- read whole (its few fields give both the values and the special names), and the newest
-- entry alone tells whether the stream is empty.
local count, head_field, poison = ARGV[1], ARGV[2], ARGV[3]
local n = tonumber(ARGV[4])
local fields = {unpack(ARGV, 5, n + 4)}
local special_fields = {}
for i = n + 5, #ARGV do special_fields[ARGV[i]] = true end
local out = {}
for job = 1, #KEYS / 3 do
  local meta, state, events = KEYS[3 * job - 2], KEYS[3 * job - 1], KEYS[3 * job]
  local all = redis.call('HGETALL', meta)
  local values, special = {}, 0
  for i = 1, #all, 2 do
    local name = all[i]
    values[name] = all[i + 1]
    if string.sub(name, 1, #poison) == poison or special_fields[name] then special = 1 end
  end
  local head, bytes, last = '', 0, ''
  local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1]
  if newest then
    head = redis.call('HGET', state, head_field) or ''
    bytes = stream_bytes(events, count)
    last = newest[1]
  end
  local row = {head}
  for i = 1, n do row[#row + 1] = values[fields[i]] or '' end
  row[#row + 1] = special
  row[#row + 1] = bytes
  row[#row + 1] = last
  out[#out + 1] = row
end
return out
