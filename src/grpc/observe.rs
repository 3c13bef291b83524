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
    /// `method` is a registered method path, or `"unknown"`.
    fn call_started(&self, _method: &str) {}
    fn call_finished(&self, _method: &str, _code: Code, _elapsed: Duration) {}
    fn bytes_received(&self, _n: usize) {}
    fn bytes_sent(&self, _n: usize) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
