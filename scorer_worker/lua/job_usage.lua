-- The limit check's read (scorer_worker/limits.py), many jobs a call, filtered here: a job
-- comes back only when the check may act on it, so the pump spends no Python time on the
-- thousands of trusted jobs that are neither cut off nor silent.
-- KEYS, 3 per job: meta, events, state. ARGV: the meta fields status, drained_at,
-- stalled_since, cut_off, pod_user (in this order), the running status, then the trusted
-- time before which a job's last drain makes it a stall candidate.
-- A job comes back when it is cut off with a backlog (the drain frees it), has a pod user
-- (its limits and its rate, whose bucket the pump keeps, are checked on every look), or is a
-- running job that is drained, not yet reported, and quiet since before that time.
-- Returns, per such job: {its index in the call (1-based), undrained entries, stream bytes
-- (pod jobs; 0 else, -1 unknown), entries added to its stream ever (-1 without a pod user),
-- the five meta values ('' if absent), state bytes (pod jobs; 0 else)}.
local running, stall_before = ARGV[6], tonumber(ARGV[7])
local out = {}
for job = 1, #KEYS / 3 do
  local meta, events, state = KEYS[3 * job - 2], KEYS[3 * job - 1], KEYS[3 * job]
  local m = redis.call('HMGET', meta, unpack(ARGV, 1, 5))
  local undrained = redis.call('XLEN', events)
  local act
  if m[4] then
    act = undrained > 0
  elseif m[5] then
    act = true
  else
    act = m[1] == running and m[2] ~= false and not m[3] and undrained == 0
      and (tonumber(m[2]) or math.huge) < stall_before
  end
  if act then
    local bytes, added, state_bytes = 0, -1, 0
    if m[5] then
      added = 0  -- a pod job whose stream does not exist yet: none added
      if undrained > 0 then
        bytes = redis.pcall('MEMORY', 'USAGE', events, 'SAMPLES', '0')
        if type(bytes) ~= 'number' then bytes = -1 end
      end
      state_bytes = redis.pcall('MEMORY', 'USAGE', state, 'SAMPLES', '0')
      if type(state_bytes) ~= 'number' then state_bytes = 0 end
      if redis.call('EXISTS', events) == 1 then
        local info = redis.call('XINFO', 'STREAM', events)
        for j = 1, #info, 2 do
          if info[j] == 'entries-added' then added = info[j + 1] end
        end
      end
    end
    out[#out + 1] = {job, undrained, bytes, added, m[1] or '', m[2] or '', m[3] or '',
                     m[4] or '', m[5] or '', state_bytes}
  end
end
return out
