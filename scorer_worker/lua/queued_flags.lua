-- Which jobs have a task queued (scorer_worker/scan.py), on the queue side. KEYS, 2 per job:
-- the drain's queued marker, the flush's queued marker. Returns one string, a digit per job:
-- bit 1 set when a drain is queued, bit 2 when a flush is (what lua/pump_scan.lua takes).
local out = {}
for job = 1, #KEYS / 2 do
  out[job] = redis.call('EXISTS', KEYS[2 * job - 1]) + 2 * redis.call('EXISTS', KEYS[2 * job])
end
return table.concat(out)
