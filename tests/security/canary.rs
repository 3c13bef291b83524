//! Witnesses for tests that abuse a server: a [`Canary`], a well-behaved
//! pair whose edits must keep flowing whatever else happens, and a
//! [`Sampler`] of what the server holds (registry and wire figures), so
//! memory is judged by counting, never by timing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use codereview::pb::codereview::code_edit::Op;
use codereview::review::registry::RegistryStats;
use codereview::review::roles::Role;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use kit::participant::Participant;
use kit::payloads::{as_edit, essential_sequence};
use kit::server::TestServer;
use kit::{STEP, within};

pub const CANARY_SESSION: &str = "canary-session";
pub const CANARY_FILE: &str = "canary.txt";

/// A well-behaved pair in its own session, each on its own connection: the
/// writer (author) edits, the reader (reviewer) must receive every edit, in
/// order, with nothing missing. [`Canary::check`] does one round;
/// [`Canary::pump`] keeps doing rounds in the background.
pub struct Canary {
    pub writer: Participant,
    pub reader: Participant,
    rounds: u64,
}

impl Canary {
    pub async fn start(server: &TestServer) -> Canary {
        Canary::start_in(server, CANARY_SESSION).await
    }

    async fn start_in(server: &TestServer, session: &str) -> Canary {
        let writer = Participant::join_server(server, session, "canary-writer", Role::Author).await;
        // The writer's JOINED is part of the reader's catch-up.
        let reader =
            Participant::join_server(server, session, "canary-reader", Role::Reviewer).await;
        let mut canary = Canary {
            writer,
            reader,
            rounds: 0,
        };
        // Skip whatever history the reader was given about the writer.
        canary.check().await;
        canary
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// One round: the writer's edit is acknowledged, and the reader's next
    /// essential event is exactly that edit.
    pub async fn check(&mut self) {
        self.rounds += 1;
        let content = format!("canary round {}", self.rounds);
        let sequence = self
            .writer
            .edit(Op::Replace, CANARY_FILE, 0, &content)
            .await;
        let ack = self.writer.outcome(sequence).await.ack();
        let message = self
            .reader
            .recv_matching(|m| essential_sequence(m).is_some())
            .await;
        let edit = as_edit(&message).unwrap_or_else(|| {
            panic!("canary reader: expected the writer's edit, got {message:?}")
        });
        assert_eq!(edit.content, content, "canary reader got another edit");
        assert_eq!(
            message.sequence, ack.sequence,
            "canary reader: the edit's sequence differs from the writer's Ack"
        );
    }

    /// Keeps doing rounds (every 20 ms) until [`Pump::stop`].
    pub fn pump(self) -> Pump {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut canary = self;
            loop {
                canary.check().await;
                tokio::select! {
                    _ = &mut stopped => return canary,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        Pump {
            stop: Some(stop),
            task,
        }
    }
}

/// A canary doing rounds in the background.
pub struct Pump {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Canary>,
}

impl Pump {
    /// Stops the rounds; returns the canary (a round that failed fails the
    /// test here, with its own message).
    pub async fn stop(mut self) -> Canary {
        stop_task(self.stop.take(), &mut self.task, "the canary pump").await
    }
}

/// Stops a background task and returns its result, re-raising its panic.
async fn stop_task<T>(
    stop: Option<oneshot::Sender<()>>,
    task: &mut JoinHandle<T>,
    what: &str,
) -> T {
    if let Some(stop) = stop {
        let _ = stop.send(());
    }
    match within(STEP * 3, &format!("{what} to stop"), task).await {
        Ok(value) => value,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("{what}: {error}"),
    }
}

/// One look at what the server holds.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub registry: RegistryStats,
    pub connections: i64,
    pub streams: i64,
    pub inbound_buffered: i64,
    pub outbound_buffered: i64,
    /// Response bytes handed to h2 and not yet written to a socket.
    pub outbound_unwritten: i64,
}

impl Sample {
    /// What the outbound budget bounds: queued plus unwritten.
    pub fn outbound_held(&self) -> i64 {
        self.outbound_buffered + self.outbound_unwritten
    }

    /// Session content, history and outboxes: what the registry holds.
    pub fn registry_bytes(&self) -> usize {
        self.registry.outbox_bytes + self.registry.history_bytes + self.registry.content_bytes
    }
}

/// Samples the registry and the wire figures every 50 ms in the background.
pub struct Sampler {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(server: &TestServer) -> Sampler {
        let registry = server.registry.clone();
        let telemetry = server.telemetry.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let stats = match tokio::time::timeout(STEP, registry.stats()).await {
                    Ok(Ok(stats)) => stats,
                    Ok(Err(error)) => panic!("registry gone: {error}"),
                    Err(_) => panic!("the registry did not answer a stats request within {STEP:?}"),
                };
                let s = &telemetry.stats;
                samples.push(Sample {
                    registry: stats,
                    connections: s.connections.load(Ordering::Relaxed),
                    streams: s.streams.load(Ordering::Relaxed),
                    inbound_buffered: s.inbound_buffered.load(Ordering::Relaxed),
                    outbound_buffered: s.outbound_buffered.load(Ordering::Relaxed),
                    outbound_unwritten: s.outbound_unwritten.load(Ordering::Relaxed),
                });
                tokio::select! {
                    _ = &mut stopped => return samples,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        });
        Sampler {
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) -> Vec<Sample> {
        stop_task(self.stop.take(), &mut self.task, "the sampler").await
    }
}
