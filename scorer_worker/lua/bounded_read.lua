-- KEYS[1]: the stream. ARGV: start id, count, entry cap, head bytes. Each entry within the
-- cap is returned as {id, fields}; a larger one as {id, size, head of its first value}.
local out = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local size = 0
  for _, part in ipairs(entry[2]) do size = size + #part end
  if size <= tonumber(ARGV[3]) then
    out[#out + 1] = {entry[1], entry[2]}
  else
    out[#out + 1] = {entry[1], size, string.sub(entry[2][2] or '', 1, tonumber(ARGV[4]))}
  end
end
return out
