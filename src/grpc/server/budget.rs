//! The process-wide budget of outbound bytes, accounted per connection.
//!
//! A peer that advertises huge HTTP/2 windows and never reads its socket makes
//! h2 buffer up to `max_send_buffer_size` per stream, on top of what its calls
//! have queued. Each bound is per stream; this one is for the process: every
//! connection keeps a [`ConnectionAccount`] of the response bytes it holds —
//! queued by its calls, or handed to h2 and not yet written to its socket —
//! and when the total passes [`ServerConfig::max_outbound_buffer`] the
//! [`shedder`] closes the connections holding the most until the rest fit.
//!
//! How do we know that bytes handed to h2 are still un-drained? h2 does not
//! report socket writes per stream, but it owns what it is given until it has
//! written it: the server's send buffer type is [`AccountedChunk`], which
//! gives its bytes back to the account as h2 advances through it (writing it
//! to the socket, or into h2's own small write buffer) and when h2 drops it
//! (written, or discarded with a reset stream). A connection whose socket
//! does not drain keeps its chunks, so its account stays high.
//!
//! ```text
//!  queued ─► held by h2 ─► written        (the account rises, then falls)
//!    │            └──────► discarded      (reset stream, closed connection)
//!    └─► dropped unsent                   (the call ended first)
//!  total > budget ─► shedder: close the largest accounts first, until the
//!                    accounts still open fit in the budget
//! ```
//!
//! [`ServerConfig::max_outbound_buffer`]: super::ServerConfig::max_outbound_buffer

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::{Buf, Bytes};
use tokio::sync::Notify;

use crate::grpc::observe::Telemetry;
use crate::log;

/// The reason recorded (metric label, log) when a connection is closed to
/// bring the process back under its outbound budget.
pub const SHED_REASON: &str = "outbound_budget";

/// The budget and every connection's account.
pub(crate) struct OutboundBudget {
    /// Bytes the process may hold; 0 disables the budget.
    limit: usize,
    telemetry: Arc<Telemetry>,
    accounts: Mutex<HashMap<u64, Weak<ConnectionAccount>>>,
    /// Woken when the total passes the limit.
    over: Notify,
}

impl OutboundBudget {
    pub(crate) fn new(limit: usize, telemetry: Arc<Telemetry>) -> Arc<OutboundBudget> {
        Arc::new(OutboundBudget {
            limit,
            telemetry,
            accounts: Mutex::new(HashMap::new()),
            over: Notify::new(),
        })
    }

    /// Opens the account of connection `id`.
    pub(crate) fn open(self: &Arc<Self>, id: u64) -> Arc<ConnectionAccount> {
        let account = Arc::new(ConnectionAccount {
            id,
            held: AtomicI64::new(0),
            closing: AtomicBool::new(false),
            shed: Notify::new(),
            budget: self.clone(),
        });
        self.accounts().insert(id, Arc::downgrade(&account));
        account
    }

    fn accounts(&self) -> MutexGuard<'_, HashMap<u64, Weak<ConnectionAccount>>> {
        self.accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Response bytes the process holds: queued by calls, or held by h2.
    pub(crate) fn total(&self) -> i64 {
        let stats = &self.telemetry.stats;
        stats.outbound_buffered.load(Ordering::Relaxed)
            + stats.outbound_unwritten.load(Ordering::Relaxed)
    }

    fn check(&self) {
        if self.limit > 0 && self.total() > self.limit as i64 {
            self.over.notify_one();
        }
    }

    /// Closes connections, largest account first, until the accounts of the
    /// connections still open fit in the budget. Connections already closing
    /// are left out: what they hold is being released.
    fn shed(&self) {
        // One reading of each account: they keep moving while we sort.
        let mut open: Vec<(i64, Arc<ConnectionAccount>)> = self
            .accounts()
            .values()
            .filter_map(Weak::upgrade)
            .filter(|account| !account.closing.load(Ordering::Relaxed))
            .map(|account| (account.held(), account))
            .collect();
        let mut held: i64 = open.iter().map(|(bytes, _)| bytes).sum();
        if held <= self.limit as i64 {
            return;
        }
        open.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (bytes, victim) in open {
            if held <= self.limit as i64 {
                break;
            }
            held -= bytes;
            log!(
                Warn,
                "closing connection: the process is over its outbound budget and this connection holds the most undelivered response bytes",
                conn = victim.id,
                held_bytes = bytes,
                total_bytes = self.total(),
                budget_bytes = self.limit,
            );
            self.telemetry.observer.connection_shed(SHED_REASON);
            victim.closing.store(true, Ordering::Relaxed);
            victim.shed.notify_one();
        }
    }
}

impl std::fmt::Debug for OutboundBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundBudget")
            .field("limit", &self.limit)
            .field("total", &self.total())
            .finish()
    }
}

/// Keeps the budget: wakes when the total passes the limit and closes the
/// largest holders. Runs for as long as the server serves.
pub(crate) async fn shedder(budget: Arc<OutboundBudget>) {
    if budget.limit == 0 {
        return;
    }
    loop {
        budget.over.notified().await;
        budget.shed();
    }
}

/// One connection's outbound bytes, and the signal that closes it.
#[derive(Debug)]
pub(crate) struct ConnectionAccount {
    id: u64,
    /// Bytes queued by this connection's calls plus bytes handed to h2 and
    /// not yet written.
    held: AtomicI64,
    /// Set once the connection is being closed (shed or ended).
    closing: AtomicBool,
    shed: Notify,
    budget: Arc<OutboundBudget>,
}

impl ConnectionAccount {
    pub(crate) fn held(&self) -> i64 {
        self.held.load(Ordering::Relaxed)
    }

    /// A call queued `n` bytes.
    pub(crate) fn queued(&self, n: usize) {
        self.held.fetch_add(n as i64, Ordering::Relaxed);
        self.budget
            .telemetry
            .stats
            .outbound_buffered
            .fetch_add(n as i64, Ordering::Relaxed);
        self.budget.check();
    }

    /// A call ended with `n` queued bytes it never handed to h2.
    pub(crate) fn unqueued(&self, n: usize) {
        self.held.fetch_sub(n as i64, Ordering::Relaxed);
        self.budget
            .telemetry
            .stats
            .outbound_buffered
            .fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// Queued bytes handed to h2: they stay on this account until h2 has
    /// written or dropped them.
    pub(crate) fn hand_over(self: &Arc<Self>, bytes: Bytes) -> AccountedChunk {
        let n = bytes.len() as i64;
        let stats = &self.budget.telemetry.stats;
        stats.outbound_buffered.fetch_sub(n, Ordering::Relaxed);
        stats.outbound_unwritten.fetch_add(n, Ordering::Relaxed);
        AccountedChunk {
            bytes,
            account: self.clone(),
        }
    }

    fn written(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.held.fetch_sub(n as i64, Ordering::Relaxed);
        self.budget
            .telemetry
            .stats
            .outbound_unwritten
            .fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// Resolves when the shedder chose this connection.
    pub(crate) async fn shed_requested(&self) {
        self.shed.notified().await;
    }

    /// The connection is closing for another reason: never shed it.
    pub(crate) fn mark_closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

impl Drop for ConnectionAccount {
    fn drop(&mut self) {
        let mut accounts = self.budget.accounts();
        // Only remove our own entry (ids are never reused, but be exact).
        if accounts
            .get(&self.id)
            .is_some_and(|weak| weak.strong_count() == 0)
        {
            accounts.remove(&self.id);
        }
    }
}

/// Response bytes handed to h2 (the server's send buffer type). They count
/// on their connection's account until h2 advances past them or drops them.
#[derive(Debug)]
pub struct AccountedChunk {
    bytes: Bytes,
    account: Arc<ConnectionAccount>,
}

impl Buf for AccountedChunk {
    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn chunk(&self) -> &[u8] {
        &self.bytes
    }

    fn advance(&mut self, n: usize) {
        self.bytes.advance(n);
        self.account.written(n);
    }
}

impl Drop for AccountedChunk {
    fn drop(&mut self) {
        // Discarded unwritten (a reset stream, a closed connection), or empty.
        self.account.written(self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::observe::NoopObserver;

    fn budget(limit: usize) -> Arc<OutboundBudget> {
        OutboundBudget::new(limit, Telemetry::new(Arc::new(NoopObserver)))
    }

    #[test]
    fn chunks_give_their_bytes_back_as_written_or_dropped() {
        let budget = budget(0);
        let account = budget.open(1);
        account.queued(10);
        assert_eq!((account.held(), budget.total()), (10, 10));
        let mut chunk = account.hand_over(Bytes::from_static(b"0123456789"));
        assert_eq!((account.held(), budget.total()), (10, 10));
        chunk.advance(4);
        assert_eq!(chunk.chunk(), b"456789");
        assert_eq!((account.held(), budget.total()), (6, 6));
        drop(chunk); // discarded with 6 bytes unwritten
        assert_eq!((account.held(), budget.total()), (0, 0));
        account.queued(5);
        account.unqueued(5);
        assert_eq!((account.held(), budget.total()), (0, 0));
    }

    #[test]
    fn the_largest_holders_are_shed_until_the_rest_fit() {
        let budget = budget(100);
        let small = budget.open(1);
        let large = budget.open(2);
        let medium = budget.open(3);
        small.queued(20);
        large.queued(90);
        medium.queued(60);
        budget.shed();
        // 170 held: closing the largest (90) leaves 80, which fits.
        assert!(large.closing.load(Ordering::Relaxed));
        assert!(!medium.closing.load(Ordering::Relaxed));
        assert!(!small.closing.load(Ordering::Relaxed));
        // Still over in total until `large` releases, but what stays open
        // fits: nothing more is shed.
        budget.shed();
        assert!(!medium.closing.load(Ordering::Relaxed));
        large.unqueued(90);
        medium.queued(30);
        budget.shed();
        assert!(medium.closing.load(Ordering::Relaxed));
        assert!(!small.closing.load(Ordering::Relaxed));
    }

    #[test]
    fn closed_accounts_leave_the_table() {
        let budget = budget(100);
        let account = budget.open(7);
        assert_eq!(budget.accounts().len(), 1);
        drop(account);
        assert!(budget.accounts().is_empty());
    }
}
