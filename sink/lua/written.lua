-- After a row write, in one step: raise written_version (never lower it), clear the sink's
-- error, note the time, forget the changes written.
-- KEYS: meta, changes. ARGV: the version written, then the meta fields: written_version,
-- last_flush_at, sink_error, sink_error_kind; then the time.
if (tonumber(redis.call('HGET', KEYS[1], ARGV[2])) or 0) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('HDEL', KEYS[1], ARGV[4], ARGV[5])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return 1
