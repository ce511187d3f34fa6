-- The pump's scan (scorer_worker/scan.py), on the data side. KEYS, 2 per job: events, meta.
-- ARGV: n, the n level fields to read (keys.LEVEL_FIELDS: version, written_version, status,
-- eval_version, last_flush_at, refused_version), m, the m finished statuses, then one
-- string per call: a digit per job, what the queue side says is queued for it (bit 1: a
-- drain, bit 2: a flush). Returns {jobs behind the scorer, jobs behind the sink, rows...}, a
-- row for each job the pump may act on, {job index in the call (1-based), stream length,
-- the n levels ('' if absent), drain queued (0/1), flush queued (0/1)}. A job is left out
-- when nothing can be done for it now: caught up and written, or behind only where a task
-- is already queued (most jobs of a busy fleet), so those cost the pump no Python time.
local n = tonumber(ARGV[1])
local fields = {unpack(ARGV, 2, n + 1)}
local m = tonumber(ARGV[n + 2])
local finished = {}
for i = n + 3, n + 2 + m do finished[ARGV[i]] = true end
local queued = ARGV[n + 3 + m]
local behind_scoring, behind_sink = 0, 0
local rows = {}
for job = 1, #KEYS / 2 do
  local undrained = redis.call('XLEN', KEYS[2 * job - 1])
  local levels = redis.call('HMGET', KEYS[2 * job], unpack(fields))
  local version = tonumber(levels[1]) or 0
  local sink_behind = version > math.max(tonumber(levels[2]) or 0, tonumber(levels[6]) or 0)
  local flags = string.byte(queued, job) - 48
  local drain_queued, flush_queued = flags % 2, math.floor(flags / 2) % 2
  local act = false
  if undrained > 0 then
    behind_scoring = behind_scoring + 1
    act = drain_queued == 0
  end
  if sink_behind then
    behind_sink = behind_sink + 1
    act = act or flush_queued == 0
  elseif undrained == 0 and levels[3] and finished[levels[3]] then
    act = true  -- finished, drained and written: to retire
  end
  if act then
    local row = {job, undrained}
    for i = 1, n do row[#row + 1] = levels[i] or '' end
    row[#row + 1] = drain_queued
    row[#row + 1] = flush_queued
    rows[#rows + 1] = row
  end
end
return {behind_scoring, behind_sink, rows}
