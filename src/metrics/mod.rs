//! Prometheus metrics (text format 0.0.4): counters fed by the wire layer's
//! [`Observer`] hooks, the sessions' counters and the authentication hook,
//! and gauges read at scrape time from the wire [`Telemetry`] and the
//! registry's stats. Served by [`http`] on its own small listener.

pub mod http;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::grpc::Code;
use crate::grpc::observe::{Observer, Telemetry};
use crate::review::counters::{Counters, MessageKind, SessionObserver};
use crate::review::registry::RegistryHandle;

/// Upper bounds (seconds) of the stream duration histogram buckets.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

#[derive(Debug, Default, Clone)]
struct DurationHistogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl DurationHistogram {
    fn record(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Every metric the server exports.
#[derive(Default)]
pub struct Metrics {
    telemetry: OnceLock<Arc<Telemetry>>,
    registry: OnceLock<RegistryHandle>,
    connections_total: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    edits_transformed: AtomicU64,
    resumes_replay: AtomicU64,
    resumes_snapshot: AtomicU64,
    slow_consumers: AtomicU64,
    messages_received: [AtomicU64; 12],
    messages_sent: [AtomicU64; 12],
    /// Labelled families (methods and reasons are a small fixed set).
    labelled: Mutex<Labelled>,
}

#[derive(Default)]
struct Labelled {
    connections_rejected: BTreeMap<&'static str, u64>,
    connections_shed: BTreeMap<&'static str, u64>,
    streams_active: BTreeMap<&'static str, i64>,
    rpcs: BTreeMap<(&'static str, Code), u64>,
    durations: BTreeMap<&'static str, DurationHistogram>,
    auth_failures: BTreeMap<&'static str, u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Connects the live sources read at scrape time.
    pub fn attach(&self, telemetry: Arc<Telemetry>, registry: RegistryHandle) {
        let _ = self.telemetry.set(telemetry);
        let _ = self.registry.set(registry);
    }

    fn labelled(&self) -> std::sync::MutexGuard<'_, Labelled> {
        self.labelled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a refused token, by reason.
    pub fn auth_failed(&self, reason: &'static str) {
        *self.labelled().auth_failures.entry(reason).or_default() += 1;
    }

    /// The exposition text.
    pub async fn render(&self) -> String {
        let stats = match self.registry.get() {
            Some(registry) => registry.stats().await.ok(),
            None => None,
        };
        let relaxed = Ordering::Relaxed;
        let mut text = String::with_capacity(8192);
        text.push_str("# HELP codereview_up 1 while the server runs.\n# TYPE codereview_up gauge\ncodereview_up 1\n");

        let wire = self.telemetry.get().map(|t| &t.stats);
        let gauge = |text: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |text: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        gauge(
            &mut text,
            "codereview_connections_active",
            "HTTP/2 connections open.",
            wire.map_or(0, |w| w.connections.load(relaxed)),
        );
        counter(
            &mut text,
            "codereview_connections_total",
            "HTTP/2 connections accepted.",
            self.connections_total.load(relaxed),
        );
        let labelled = {
            let guard = self.labelled();
            (
                guard.connections_rejected.clone(),
                guard.connections_shed.clone(),
                guard.streams_active.clone(),
                guard.rpcs.clone(),
                guard.durations.clone(),
                guard.auth_failures.clone(),
            )
        };
        let (rejected, shed, streams, rpcs, durations, auth) = labelled;
        let _ = writeln!(
            text,
            "# HELP codereview_connections_rejected_total Connections refused before HTTP/2, by reason.\n# TYPE codereview_connections_rejected_total counter"
        );
        for (reason, n) in &rejected {
            let _ = writeln!(
                text,
                "codereview_connections_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            text,
            "# HELP codereview_connections_shed_total Established connections closed by the server to protect the others, by reason.\n# TYPE codereview_connections_shed_total counter"
        );
        for (reason, n) in &shed {
            let _ = writeln!(
                text,
                "codereview_connections_shed_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            text,
            "# HELP codereview_streams_active Calls in progress, by method.\n# TYPE codereview_streams_active gauge"
        );
        for (method, n) in &streams {
            let _ = writeln!(text, "codereview_streams_active{{method=\"{method}\"}} {n}");
        }
        let _ = writeln!(
            text,
            "# HELP codereview_rpcs_total Calls completed, by method and grpc status code.\n# TYPE codereview_rpcs_total counter"
        );
        for ((method, code), n) in &rpcs {
            let _ = writeln!(
                text,
                "codereview_rpcs_total{{method=\"{method}\",code=\"{}\"}} {n}",
                code.name()
            );
        }
        let _ = writeln!(
            text,
            "# HELP codereview_stream_duration_seconds How long calls lasted, by method.\n# TYPE codereview_stream_duration_seconds histogram"
        );
        for (method, h) in &durations {
            for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    text,
                    "codereview_stream_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                text,
                "codereview_stream_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                text,
                "codereview_stream_duration_seconds_sum{{method=\"{method}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                text,
                "codereview_stream_duration_seconds_count{{method=\"{method}\"}} {}",
                h.count
            );
        }
        counter(
            &mut text,
            "codereview_bytes_received_total",
            "Bytes of gRPC messages received.",
            self.bytes_received.load(relaxed),
        );
        counter(
            &mut text,
            "codereview_bytes_sent_total",
            "Bytes of gRPC messages sent.",
            self.bytes_sent.load(relaxed),
        );
        for (name, help, values) in [
            (
                "codereview_messages_received_total",
                "Session messages received from participants, by kind.",
                &self.messages_received,
            ),
            (
                "codereview_messages_sent_total",
                "Session messages queued for participants and watchers, by kind.",
                &self.messages_sent,
            ),
        ] {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
            for kind in MessageKind::ALL {
                let _ = writeln!(
                    text,
                    "{name}{{kind=\"{}\"}} {}",
                    kind.name(),
                    values[kind as usize].load(relaxed)
                );
            }
        }
        counter(
            &mut text,
            "codereview_edits_transformed_total",
            "Edits transformed against concurrent edits before being applied.",
            self.edits_transformed.load(relaxed),
        );
        let _ = writeln!(
            text,
            "# HELP codereview_resumes_total Reconnections that resumed, by how.\n# TYPE codereview_resumes_total counter\ncodereview_resumes_total{{mode=\"replay\"}} {}\ncodereview_resumes_total{{mode=\"snapshot\"}} {}",
            self.resumes_replay.load(relaxed),
            self.resumes_snapshot.load(relaxed)
        );
        counter(
            &mut text,
            "codereview_slow_consumers_total",
            "Participants ended with RESOURCE_EXHAUSTED for falling behind.",
            self.slow_consumers.load(relaxed),
        );
        let _ = writeln!(
            text,
            "# HELP codereview_auth_failures_total Refused credentials, by reason.\n# TYPE codereview_auth_failures_total counter"
        );
        for (reason, n) in &auth {
            let _ = writeln!(
                text,
                "codereview_auth_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let stats = stats.unwrap_or_default();
        gauge(
            &mut text,
            "codereview_sessions",
            "Sessions held.",
            stats.sessions as i64,
        );
        gauge(
            &mut text,
            "codereview_participants",
            "Live participants.",
            stats.participants as i64,
        );
        gauge(
            &mut text,
            "codereview_watchers",
            "Live watchers.",
            stats.watchers as i64,
        );
        gauge(
            &mut text,
            "codereview_outbox_bytes",
            "Bytes waiting in participants' outboxes.",
            stats.outbox_bytes as i64,
        );
        gauge(
            &mut text,
            "codereview_history_bytes",
            "Bytes of recent events kept for late joiners and resumes.",
            stats.history_bytes as i64,
        );
        gauge(
            &mut text,
            "codereview_inbound_buffered_bytes",
            "Received bytes not yet consumed.",
            wire.map_or(0, |w| w.inbound_buffered.load(relaxed)),
        );
        gauge(
            &mut text,
            "codereview_outbound_buffered_bytes",
            "Response bytes waiting for flow control.",
            wire.map_or(0, |w| w.outbound_buffered.load(relaxed)),
        );
        gauge(
            &mut text,
            "codereview_outbound_unwritten_bytes",
            "Response bytes handed to HTTP/2 and not yet written to a socket.",
            wire.map_or(0, |w| w.outbound_unwritten.load(relaxed)),
        );
        text
    }
}

impl Observer for Metrics {
    fn connection_opened(&self, _id: u64, _peer: Option<SocketAddr>) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    fn connection_rejected(&self, reason: &'static str) {
        *self
            .labelled()
            .connections_rejected
            .entry(reason)
            .or_default() += 1;
    }

    fn connection_shed(&self, reason: &'static str) {
        *self.labelled().connections_shed.entry(reason).or_default() += 1;
    }

    fn call_started(&self, method: &'static str) {
        *self.labelled().streams_active.entry(method).or_default() += 1;
    }

    fn call_finished(&self, method: &'static str, code: Code, elapsed: Duration) {
        let mut labelled = self.labelled();
        *labelled.streams_active.entry(method).or_default() -= 1;
        *labelled.rpcs.entry((method, code)).or_default() += 1;
        labelled
            .durations
            .entry(method)
            .or_default()
            .record(elapsed.as_secs_f64());
    }

    fn bytes_received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn bytes_sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl SessionObserver for Metrics {
    fn record(&self, counters: &Counters) {
        let relaxed = Ordering::Relaxed;
        for (total, n) in self.messages_sent.iter().zip(counters.sent) {
            total.fetch_add(n, relaxed);
        }
        for (total, n) in self.messages_received.iter().zip(counters.received) {
            total.fetch_add(n, relaxed);
        }
        self.edits_transformed
            .fetch_add(counters.edits_transformed, relaxed);
        self.resumes_replay
            .fetch_add(counters.resumes_replay, relaxed);
        self.resumes_snapshot
            .fetch_add(counters.resumes_snapshot, relaxed);
        self.slow_consumers
            .fetch_add(counters.slow_consumers, relaxed);
    }
}
