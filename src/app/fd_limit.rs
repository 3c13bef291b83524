//! Whether the OS lets `serve` open the files `--max-connections` needs.
//!
//! Every connection is a file descriptor, and RLIMIT_NOFILE's soft limit is
//! often 1024: a server allowed 1024 connections would fail at accept well
//! before. The limits are read from `/proc/self/limits` (no `unsafe`, no
//! dependency; elsewhere than Linux nothing is checked). Raising the soft
//! limit needs setrlimit, which needs `unsafe` or a crate: the server says
//! what to do instead, once, at start.

/// File descriptors the server needs besides its connections: standard
/// streams, the listeners, the runtime's epoll and wakers, signal pipes,
/// certificate files read on reload, metrics scrapes.
pub const FD_HEADROOM: u64 = 64;

/// RLIMIT_NOFILE; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Reads the process's limit (`None` where `/proc/self/limits` is missing
/// or unreadable).
pub fn read() -> Option<FileLimit> {
    parse(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// Parses the "Max open files" line of `/proc/self/limits`. Pure.
pub fn parse(limits: &str) -> Option<FileLimit> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    let mut values = line.split_whitespace().map(|v| match v {
        "unlimited" => Some(None),
        v => v.parse::<u64>().ok().map(Some),
    });
    Some(FileLimit {
        soft: values.next()??,
        hard: values.next()??,
    })
}

/// What is wrong with serving `max_connections` under `limit`, and what to
/// do about it; `None` when it fits.
pub fn shortfall(max_connections: usize, limit: FileLimit) -> Option<Shortfall> {
    let needed = (max_connections as u64).saturating_add(FD_HEADROOM);
    let soft = limit.soft?;
    if needed <= soft {
        return None;
    }
    let fix = match limit.hard {
        Some(hard) if hard < needed => format!(
            "the hard limit is {hard}: serve with --max-connections {} or less, or raise the hard limit",
            hard.saturating_sub(FD_HEADROOM)
        ),
        hard => format!(
            "raise the soft limit to {needed} or more before starting (ulimit -n {needed}; \
             LimitNOFILE= in a systemd unit; the hard limit is {}), or serve with --max-connections {} or less",
            hard.map_or("unlimited".to_owned(), |h| h.to_string()),
            soft.saturating_sub(FD_HEADROOM)
        ),
    };
    Some(Shortfall {
        needed,
        soft,
        hard: limit.hard,
        fix,
    })
}

/// Too few file descriptors for `--max-connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// `--max-connections` plus [`FD_HEADROOM`].
    pub needed: u64,
    pub soft: u64,
    pub hard: Option<u64>,
    /// What to do, as one sentence.
    pub fix: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            1024                 524288               files     
Max locked memory         8388608              8388608              bytes     
";

    #[test]
    fn parses_the_open_files_line() {
        assert_eq!(
            parse(LIMITS),
            Some(FileLimit {
                soft: Some(1024),
                hard: Some(524_288)
            })
        );
        assert_eq!(
            parse("Max open files            unlimited            unlimited            files"),
            Some(FileLimit {
                soft: None,
                hard: None
            })
        );
        assert_eq!(parse("Max cpu time  unlimited unlimited seconds"), None);
        assert_eq!(parse("Max open files  lots  1024  files"), None);
        assert_eq!(parse("Max open files  1024"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn warns_when_connections_and_headroom_exceed_the_soft_limit() {
        let limit = |soft, hard| FileLimit { soft, hard };
        assert_eq!(shortfall(1024, limit(Some(20_000), Some(20_000))), None);
        assert_eq!(shortfall(1024, limit(None, None)), None);
        assert_eq!(shortfall(960, limit(Some(1024), Some(4096))), None);
        let short = shortfall(1024, limit(Some(1024), Some(524_288))).unwrap();
        assert_eq!((short.needed, short.soft), (1088, 1024));
        assert_eq!(
            short.fix,
            "raise the soft limit to 1088 or more before starting (ulimit -n 1088; LimitNOFILE= \
             in a systemd unit; the hard limit is 524288), or serve with --max-connections 960 or less"
        );
        let short = shortfall(1024, limit(Some(256), Some(512))).unwrap();
        assert_eq!(
            short.fix,
            "the hard limit is 512: serve with --max-connections 448 or less, or raise the hard limit"
        );
        let short = shortfall(100_000, limit(Some(1024), None)).unwrap();
        assert!(
            short.fix.contains("the hard limit is unlimited"),
            "{}",
            short.fix
        );
    }
}
