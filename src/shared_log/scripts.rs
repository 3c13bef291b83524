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

/// Stores a snapshot if it is newer than the stored one and the log
/// reaches it, and trims the log behind the snapshot it replaces.
///
/// - A snapshot past the log's end is refused: its records were read
///   before Redis lost the log's last entries (a failover, say), and
///   storing it would claim records the log no longer holds, so that no
///   append could follow it.
/// - The trim keeps the entries since the previous snapshot, not only
///   those since this one: an instance a little behind (a follower whose
///   read is under way, a load) still finds the entries it is about to
///   read. A load reads from the newest snapshot on, so it reads no more
///   for that; the stream holds at most two snapshots' worth of records.
///   The last entry always stays (it says where the log ends).
///
/// KEYS: log, snapshot. ARGV: index, data, retention in ms. Replies 1 when
/// stored, 0 when not.
pub const SNAPSHOT: &str = r#"
local index = tonumber(ARGV[1])
local stored = tonumber(redis.call('HGET', KEYS[2], 'index') or '-1')
if index <= stored then return 0 end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top == 0 then return 0 end
local last = tonumber(string.match(top[1][1], '^(%d+)'))
if index > last + 1 then return 0 end
redis.call('HSET', KEYS[2], 'index', ARGV[1], 'data', ARGV[2])
if stored >= 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-1', math.min(stored, last)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"#;
