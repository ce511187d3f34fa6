local out = {}
local finished = {completed = true, failed = true, cancelled = true}
for i = 1, #ARGV do
  local prefix = 'ckpt:{' .. ARGV[i] .. '}:'
  local undrained = redis.call('XLEN', prefix .. 'events')
  local m = redis.call('HMGET', prefix .. 'meta', 'version', 'written_version', 'status',
                       'eval_version', 'last_flush_at', 'refused_version')
  local version = tonumber(m[1]) or 0
  local written = math.max(tonumber(m[2]) or 0, tonumber(m[6]) or 0)
  if undrained > 0 or version > written or (m[3] and finished[m[3]]) then
    out[#out + 1] = {ARGV[i], undrained, m[1] or '', m[2] or '', m[3] or '', m[4] or '',
                     m[5] or '', m[6] or '', redis.call('EXISTS', prefix .. 'queued:scoring'),
                     redis.call('EXISTS', prefix .. 'queued:sink')}
  end
end
return out
