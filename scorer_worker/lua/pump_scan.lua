-- The pump's scan (scorer_worker/scan.py). KEYS, 4 per job: events, meta, the drain's queued
-- marker, the flush's queued marker. ARGV: n, the n level fields to read (keys.LEVEL_FIELDS:
-- version, written_version, status, eval_version, last_flush_at, refused_version), then the
-- finished statuses. Returns, for each job with work (undrained events, an unwritten
-- version, or an end): {job index (1-based), stream length, the n levels ('' if absent),
-- drain queued (0/1), flush queued (0/1)}.
local n = tonumber(ARGV[1])
local fields = {unpack(ARGV, 2, n + 1)}
local finished = {}
for i = n + 2, #ARGV do finished[ARGV[i]] = true end
local out = {}
for job = 1, #KEYS / 4 do
  local k = (job - 1) * 4
  local undrained = redis.call('XLEN', KEYS[k + 1])
  local m = redis.call('HMGET', KEYS[k + 2], unpack(fields))
  local version = tonumber(m[1]) or 0
  local written = math.max(tonumber(m[2]) or 0, tonumber(m[6]) or 0)
  if undrained > 0 or version > written or (m[3] and finished[m[3]]) then
    local row = {job, undrained}
    for i = 1, n do row[#row + 1] = m[i] or '' end
    row[#row + 1] = redis.call('EXISTS', KEYS[k + 3])
    row[#row + 1] = redis.call('EXISTS', KEYS[k + 4])
    out[#out + 1] = row
  end
end
return out
