-- The pump's scan (scorer_worker/scan.py). KEYS, 4 per job: events, meta, the drain's queued
-- marker, the flush's queued marker. ARGV: n, the n level fields to read (keys.LEVEL_FIELDS:
-- version, written_version, status, eval_version, last_flush_at, refused_version), then the
-- finished statuses. Returns {jobs behind the scorer, jobs behind the sink, rows...}, a row
-- for each job the pump may act on, {job index (1-based), stream length, the n levels (''
-- if absent), drain queued (0/1), flush queued (0/1)}. A job is left out when nothing can be
-- done for it now: caught up and written, or behind only where a task is already queued
-- (most jobs of a busy fleet), so those cost the pump no Python time.
local n = tonumber(ARGV[1])
local fields = {unpack(ARGV, 2, n + 1)}
local finished = {}
for i = n + 2, #ARGV do finished[ARGV[i]] = true end
local behind_scoring, behind_sink = 0, 0
local rows = {}
for job = 1, #KEYS / 4 do
  local k = (job - 1) * 4
  local undrained = redis.call('XLEN', KEYS[k + 1])
  local m = redis.call('HMGET', KEYS[k + 2], unpack(fields))
  local version = tonumber(m[1]) or 0
  local sink_behind = version > math.max(tonumber(m[2]) or 0, tonumber(m[6]) or 0)
  local act = false
  local drain_queued, flush_queued = 0, 0
  if undrained > 0 then
    behind_scoring = behind_scoring + 1
    drain_queued = redis.call('EXISTS', KEYS[k + 3])
    act = drain_queued == 0
  end
  if sink_behind then
    behind_sink = behind_sink + 1
    flush_queued = redis.call('EXISTS', KEYS[k + 4])
    act = act or flush_queued == 0
  elseif undrained == 0 and m[3] and finished[m[3]] then
    act = true  -- finished, drained and written: to retire
  end
  if act then
    local row = {job, undrained}
    for i = 1, n do row[#row + 1] = m[i] or '' end
    row[#row + 1] = drain_queued
    row[#row + 1] = flush_queued
    rows[#rows + 1] = row
  end
end
return {behind_scoring, behind_sink, rows}
