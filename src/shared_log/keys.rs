//! Where a session lives in Redis: its stream (the log), its snapshot
//! hash, its pub/sub channel, and each instance's lease key. A session's
//! keys share one hash tag (`{session}`) so a Redis Cluster keeps them in
//! one slot, as the scripts that touch both need.

/// Every key and channel starts with this.
pub const PREFIX: &str = "codereview:";

/// The session's log: a stream whose entry `<index>-1` holds record `index`.
pub fn log(session: &str) -> String {
    format!("{PREFIX}{{{session}}}:log")
}

/// The session's latest snapshot: a hash of `index` (the records it
/// covers) and `data` (the encoded snapshot).
pub fn snapshot(session: &str) -> String {
    format!("{PREFIX}{{{session}}}:snap")
}

/// The session of a log key (None for any other key).
pub fn session_of_log(key: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(PREFIX)?
        .strip_prefix('{')?
        .strip_suffix("}:log")
}

/// The channel of a session's ephemeral news (cursors, idle/active).
pub fn channel(session: &str) -> String {
    format!("{PREFIX}ephemeral:{session}")
}

/// The pattern every instance subscribes to.
pub fn channel_pattern() -> String {
    format!("{PREFIX}ephemeral:*")
}

/// The session of a channel name.
pub fn session_of_channel(channel: &[u8]) -> Option<&str> {
    std::str::from_utf8(channel)
        .ok()?
        .strip_prefix(PREFIX)?
        .strip_prefix("ephemeral:")
}

/// An instance's lease: present while the instance lives.
pub fn lease(instance: &str) -> String {
    format!("{PREFIX}instance:{instance}")
}

/// The id of record `index`'s entry (`0-0` is not a valid id, hence `-1`).
pub fn entry_id(index: u64) -> String {
    format!("{index}-1")
}

/// The id to read after, to get the entries from `index` on.
pub fn read_after(index: u64) -> String {
    match index {
        0 => "0-0".to_string(),
        n => entry_id(n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_session_and_back() {
        assert_eq!(session_of_log(log("a:b").as_bytes()), Some("a:b"));
        assert_eq!(session_of_log(b"codereview:{x}:snap"), None);
        assert_eq!(session_of_channel(channel("s").as_bytes()), Some("s"));
        assert_eq!(read_after(0), "0-0");
        assert_eq!(read_after(5), "4-1");
    }
}
