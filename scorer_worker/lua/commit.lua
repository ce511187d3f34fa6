-- One drain commit per job (scorer_worker/commit.py), many jobs a call.
-- KEYS, 6 per job (keys.drain_keys): state, meta, events, changes, decision, dead.
-- ARGV[1]: the state's head field. Then, per job: the head read ('' for none), the new head,
-- flags ('F': the state is rewritten whole, 'R': the decision is replaced, 'D': the stream
-- is dropped unread), then groups, each its length then its items: records (name, value)*,
-- meta (name, value)*, changes (score, step)*, decision (name, value)*, meta fields to clear,
-- dead letters (each a group of (name, value)*), then the dead-letter cap, the id to trim
-- below ('' for none) and an id to delete ('' for none).
-- A job is written only if its head is still the one read (a compare-and-set): 1, else 0.
local head_field = ARGV[1]
local i = 2

local function group()
  local n = tonumber(ARGV[i])
  local first = i + 1
  i = first + n
  return first, n
end

local function call_in_chunks(command, key, first, n)
  local last = first + n - 1
  for from = first, last, 400 do  -- 200 pairs a call: few calls, and within Lua's stack
    redis.call(command, key, unpack(ARGV, from, math.min(from + 399, last)))
  end
end

local out = {}
for job = 1, #KEYS / 6 do
  local k = (job - 1) * 6
  local state, meta, events, changes, decision, dead =
    KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
  local ok = (redis.call('HGET', state, head_field) or '') == ARGV[i]
  local head, flags = ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if ok and string.find(flags, 'F', 1, true) then redis.call('DEL', state) end
  local first, n = group()
  if ok then
    -- The head goes with the first records: a call from Lua costs the server a few
    -- microseconds, on every commit of every job.
    local upto = math.min(first + 397, first + n - 1)
    redis.call('HSET', state, head_field, head, unpack(ARGV, first, upto))
    if upto < first + n - 1 then call_in_chunks('HSET', state, upto + 1, first + n - 1 - upto) end
  end
  first, n = group()
  if ok and n > 0 then call_in_chunks('HSET', meta, first, n) end
  first, n = group()
  if ok and n > 0 then call_in_chunks('ZADD', changes, first, n) end
  first, n = group()
  if ok and string.find(flags, 'R', 1, true) then redis.call('DEL', decision) end
  if ok and n > 0 then call_in_chunks('HSET', decision, first, n) end
  first, n = group()
  if ok and n > 0 then call_in_chunks('HDEL', meta, first, n) end
  local letters = tonumber(ARGV[i])
  i = i + 1
  local starts = {}
  for _ = 1, letters do
    local f, m = group()
    starts[#starts + 1] = {f, m}
  end
  local cap = ARGV[i]
  local trim_below, delete = ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if ok then
    for _, letter in ipairs(starts) do
      redis.call('XADD', dead, 'MAXLEN', cap, '*',
                 unpack(ARGV, letter[1], letter[1] + letter[2] - 1))
    end
    if string.find(flags, 'D', 1, true) then
      redis.call('UNLINK', events)
    else
      if trim_below ~= '' then redis.call('XTRIM', events, 'MINID', trim_below) end
      if delete ~= '' then redis.call('XDEL', events, delete) end
    end
  end
  out[#out + 1] = ok and 1 or 0
end
return out
