//! What the server process spent during a load run, read from Linux's
//! `/proc/PID` when `load --server-pid PID` is given: CPU seconds, the
//! delta from the start of the measurement to the end, and resident memory
//! (`VmRSS` of `/proc/PID/status`, sampled every [`SAMPLE_EVERY`] during the
//! run for its peak, and at the end).
//!
//! CPU time is read in nanoseconds, per thread: the first field of each
//! `/proc/PID/task/TID/schedstat` (time on a CPU, user and kernel). The
//! process's utime + stime in `/proc/PID/stat` count in clock ticks of
//! 10 ms, too coarse for runs of a few tenths of a second (a server that
//! spent 0.15 s read as 0.1 or 0.2). A thread that ends during the run
//! takes its time with it; the servers measured keep their threads (a
//! runtime's workers, a writer). A running thread's count is brought up to
//! date when it is switched out or at the scheduler's tick: both readings
//! are taken with the server idle (all joined; all delivered). Where
//! schedstat cannot be read, the ticks are used.
//!
//! The load's own CPU over the same span is read the same way (its threads
//! in `/proc/self`): on a shared machine the client's share is what bounds
//! a fast server's figures.
//!
//! The parsers are pure functions of the files' text; only [`Watch`] reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the RSS is sampled for its peak.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Clock ticks per second of utime and stime: `USER_HZ`, which Linux fixes
/// at 100 for user space on every architecture it exports `/proc` to.
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime in clock ticks from the text of `/proc/PID/stat`. The
/// command name (field 2) is in parentheses and may hold spaces, so fields
/// are counted after its closing parenthesis.
pub(super) fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace();
    // After the name: state (3), ppid (4), ..., utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Nanoseconds on a CPU from the text of `/proc/PID/task/TID/schedstat`
/// (its first field).
pub(super) fn schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().next()?.parse().ok()
}

/// Nanoseconds that threads spent between two readings (thread id to
/// nanoseconds): a thread new in `end` counts from zero; one gone from
/// `end` counts nothing.
pub(super) fn threads_spent(start: &HashMap<u32, u64>, end: &HashMap<u32, u64>) -> u64 {
    end.iter()
        .map(|(tid, ns)| ns.saturating_sub(start.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// `VmRSS` in bytes from the text of `/proc/PID/status`.
pub(super) fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_ascii_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(kib * 1024)
}

fn read_cpu(pid: u32) -> Option<u64> {
    cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Each thread's nanoseconds on a CPU; None when none could be read.
fn read_threads(pid: u32) -> Option<HashMap<u32, u64>> {
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        if let Some(ns) = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .as_deref()
            .and_then(schedstat_ns)
        {
            threads.insert(tid, ns);
        }
    }
    (!threads.is_empty()).then_some(threads)
}

/// A process's threads' CPU time from a marked start.
struct ThreadClock {
    pid: u32,
    start: Mutex<Option<HashMap<u32, u64>>>,
}

impl ThreadClock {
    fn start(pid: u32) -> ThreadClock {
        ThreadClock {
            pid,
            start: Mutex::new(read_threads(pid)),
        }
    }

    fn mark(&self) {
        *self.start.lock().unwrap_or_else(|e| e.into_inner()) = read_threads(self.pid);
    }

    /// Seconds spent since the mark; None where the threads could not be read.
    fn spent(&self) -> Option<f64> {
        let end = read_threads(self.pid)?;
        let start = self.start.lock().unwrap_or_else(|e| e.into_inner());
        Some(threads_spent(start.as_ref()?, &end) as f64 / 1e9)
    }
}

fn read_rss(pid: u32) -> Option<u64> {
    rss_bytes(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Usage {
    pub(super) cpu_seconds: f64,
    /// What this load process spent over the same span (None where its
    /// threads could not be read).
    pub(super) client_cpu_seconds: Option<f64>,
    pub(super) rss_peak: u64,
    pub(super) rss_end: u64,
}

/// A server process under watch: its CPU time at the start of the
/// measurement (per thread, and in ticks), and a task sampling its RSS.
pub(super) struct Watch {
    pid: u32,
    server: ThreadClock,
    /// This process (the load).
    own: ThreadClock,
    start_ticks: AtomicU64,
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Watch {
    /// Starts watching `pid`; fails when its `/proc` files cannot be read.
    pub(super) fn start(pid: u32) -> Result<Watch, String> {
        let (Some(ticks), Some(rss)) = (read_cpu(pid), read_rss(pid)) else {
            return Err(format!(
                "--server-pid {pid}: cannot read /proc/{pid}/stat and /proc/{pid}/status \
                 (no such process here, or not Linux)"
            ));
        };
        let peak = Arc::new(AtomicU64::new(rss));
        let done = Arc::new(AtomicBool::new(false));
        let (sampled, stop) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = read_rss(pid) {
                    sampled.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        Ok(Watch {
            pid,
            server: ThreadClock::start(pid),
            own: ThreadClock::start(std::process::id()),
            start_ticks: AtomicU64::new(ticks),
            peak,
            done,
        })
    }

    /// The measurement starts now (every participant has joined): the CPU
    /// spent on connecting and joining is left out.
    pub(super) fn mark_start(&self) {
        self.server.mark();
        self.own.mark();
        if let Some(ticks) = read_cpu(self.pid) {
            self.start_ticks.store(ticks, Ordering::Relaxed);
        }
    }

    /// Stops sampling; what the server spent since the start. None when the
    /// process is gone.
    pub(super) fn finish(&self) -> Option<Usage> {
        self.done.store(true, Ordering::Relaxed);
        let ticks = read_cpu(self.pid)?;
        let rss_end = read_rss(self.pid)?;
        let cpu_seconds = self.server.spent().unwrap_or_else(|| {
            let spent = ticks.saturating_sub(self.start_ticks.load(Ordering::Relaxed));
            spent as f64 / TICKS_PER_SECOND
        });
        let client_cpu_seconds = self.own.spent();
        Some(Usage {
            cpu_seconds,
            client_cpu_seconds,
            rss_peak: self.peak.load(Ordering::Relaxed).max(rss_end),
            rss_end,
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_after_the_name() {
        let stat = "4242 (code review) S 1 4242 4242 0 -1 4194560 7000 0 0 0 \
                    153 47 0 0 20 0 3 0 98765 123456789 2048 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(200));
        assert_eq!(
            cpu_ticks("4242 (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 5 6"),
            Some(23)
        );
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\tcodereview\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(rss_bytes(status), Some(5120 * 1024));
        assert_eq!(rss_bytes("Name:\tx\n"), None);
        assert_eq!(rss_bytes("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn schedstat_is_nanoseconds_on_a_cpu_then_waiting_then_slices() {
        assert_eq!(schedstat_ns("395838 168010 1\n"), Some(395_838));
        assert_eq!(schedstat_ns(""), None);
        assert_eq!(schedstat_ns("x 1 2"), None);
    }

    #[test]
    fn threads_count_from_the_start_new_ones_from_zero_and_gone_ones_not() {
        let start = HashMap::from([(1, 1_000), (2, 5_000), (3, 7_000)]);
        // 1 ran 500 ns more, 2 did not run, 3 ended, 4 is new.
        let end = HashMap::from([(1, 1_500), (2, 5_000), (4, 250)]);
        assert_eq!(threads_spent(&start, &end), 750);
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(read_cpu(pid).is_some());
        assert!(read_rss(pid).is_some_and(|rss| rss > 0));
        let threads = read_threads(pid).expect("this process's threads");
        assert!(threads.contains_key(&pid), "the main thread is a task");
        // This test's thread: /proc/thread-self is PID/task/TID.
        let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        let tid: u32 = link
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .expect("a thread id");
        // Work shows in nanoseconds, far below a clock tick (the kernel
        // adds a thread's time up when it is switched out, as a server's
        // threads are between runs: the sleeps).
        std::thread::sleep(Duration::from_millis(2));
        let before = read_threads(pid).expect("threads")[&tid];
        let mut x = 0u64;
        for i in 0..200_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::thread::sleep(Duration::from_millis(2));
        let after = read_threads(pid).expect("threads")[&tid];
        assert!(after > before, "spent {} ns", after - before);
    }
}
