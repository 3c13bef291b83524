//! The Lua scripts that make a session's log one total order: each runs
//! atomically in Redis, so a compare-and-append cannot interleave with
//! another instance's, and a snapshot and the trim behind it happen
//! together.

/// Appends records at the log's end if it is where the caller thinks.
///
/// KEYS: log, snapshot. ARGV: the index of the first record, retention in
/// ms, then one encoded record per entry. Replies `{-1}` when appended;
/// otherwise `{next}` with, when the log is ahead of the caller, the
/// entries from the caller's index on (at most 1000): the caller applies
/// them, transforms and tries again. The log's next index is its last
/// entry's plus one (the trim always keeps the last entry), or the
/// snapshot's index for a log that has none, or 0.
pub const APPEND: &str = r#"
local next = 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  next = tonumber(string.match(top[1][1], '^(%d+)')) + 1
else
  local snap = redis.call('HGET', KEYS[2], 'index')
  if snap then next = tonumber(snap) end
end
local first = tonumber(ARGV[1])
if next ~= first then
  if next > first then
    return {next, redis.call('XRANGE', KEYS[1], string.format('%d-1', first), '+', 'COUNT', 1000)}
  end
  return {next}
end
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], string.format('%d-1', first + i - 3), 'r', ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {-1}
"#;

/// Everything needed to rebuild a session: its snapshot, then the log
/// after it, read together so no trim can come between.
///
/// KEYS: log, snapshot. Replies `{snapshot index or false, snapshot data
/// or false, entries}`.
pub const LOAD: &str = r#"
local snap = redis.call('HMGET', KEYS[2], 'index', 'data')
local from = '0-0'
if snap[1] then from = string.format('%d-1', tonumber(snap[1])) end
return {snap[1], snap[2], redis.call('XRANGE', KEYS[1], from, '+')}
"#;

/// Stores a snapshot if it is newer than the stored one, and trims the log
/// behind it (keeping the last entry, which says where the log ends).
///
/// KEYS: log, snapshot. ARGV: index, data, retention in ms.
pub const SNAPSHOT: &str = r#"
local index = tonumber(ARGV[1])
local stored = tonumber(redis.call('HGET', KEYS[2], 'index') or '-1')
if index <= stored then return 0 end
redis.call('HSET', KEYS[2], 'index', ARGV[1], 'data', ARGV[2])
local keep = index
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  local last = tonumber(string.match(top[1][1], '^(%d+)'))
  if last < keep then keep = last end
end
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-1', keep))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"#;
