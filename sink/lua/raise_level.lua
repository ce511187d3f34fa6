-- Raise a version field of the meta hash, never lower it (flushes may race).
-- KEYS[1]: meta. ARGV: the version, the field (written_version or refused_version).
if (tonumber(redis.call('HGET', KEYS[1], ARGV[2])) or 0) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
end
return 1
