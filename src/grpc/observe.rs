//! Hooks through which the wire layer reports what it does (connections,
//! calls, bytes) without knowing who listens: the metrics module implements
//! [`Observer`]; tests and tools use [`NoopObserver`].

use std::net::SocketAddr;
use std::time::Duration;

use super::status::Code;

/// Receives wire-level events. Every method has an empty default.
pub trait Observer: Send + Sync + 'static {
    fn connection_opened(&self, _id: u64, _peer: Option<SocketAddr>) {}
    fn connection_closed(&self, _id: u64) {}
    fn connection_rejected(&self, _reason: &'static str) {}
    /// An established connection closed by the server to protect the
    /// others (e.g. `"outbound_budget"`).
    fn connection_shed(&self, _reason: &'static str) {}
    /// `method` is a registered method path, or `"unknown"`.
    fn call_started(&self, _method: &'static str) {}
    fn call_finished(&self, _method: &'static str, _code: Code, _elapsed: Duration) {}
    fn bytes_received(&self, _n: usize) {}
    fn bytes_sent(&self, _n: usize) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// Live wire-level figures, kept with atomics (cheap on the hot path): what
/// the server holds right now, for metrics and for memory-bound tests.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Connections open.
    pub connections: std::sync::atomic::AtomicI64,
    /// Calls in progress.
    pub streams: std::sync::atomic::AtomicI64,
    /// Received bytes not yet released to flow control (all streams).
    pub inbound_buffered: std::sync::atomic::AtomicI64,
    /// Response bytes queued and not yet handed to h2 (all streams).
    pub outbound_buffered: std::sync::atomic::AtomicI64,
    /// Response bytes handed to h2 and not yet written to a socket (all
    /// connections). With `outbound_buffered`, what the outbound budget
    /// bounds.
    pub outbound_unwritten: std::sync::atomic::AtomicI64,
}

/// An observer plus the live figures; shared by every connection of a server.
pub struct Telemetry {
    pub observer: std::sync::Arc<dyn Observer>,
    pub stats: WireStats,
}

impl Telemetry {
    pub fn new(observer: std::sync::Arc<dyn Observer>) -> std::sync::Arc<Telemetry> {
        std::sync::Arc::new(Telemetry {
            observer,
            stats: WireStats::default(),
        })
    }

    /// A telemetry sink that records figures nobody reads (clients).
    pub fn detached() -> std::sync::Arc<Telemetry> {
        Telemetry::new(std::sync::Arc::new(NoopObserver))
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("stats", &self.stats)
            .finish()
    }
}
