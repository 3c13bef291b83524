//! The code-review service over real TCP connections, driven by tonic (an
//! independent gRPC implementation) as the client through the kit's
//! participant harness: each participant has its own connection unless
//! stated.

mod flow;
mod ot;
mod rpcs;
mod session;

use std::net::SocketAddr;

use codereview::app::AppConfig;
use codereview::grpc::Status;
use codereview::grpc::client::{CallOptions, ChannelConfig};
use codereview::grpc::server::ServerConfig;
use codereview::pb::codereview::{
    Ack, CursorPosition, FileChunk, Join, PresenceUpdate, Role, SessionMessage, Snapshot,
    UploadSummary, WatchRequest, presence_update::Status as Presence, session_message::Payload,
};
use codereview::review::limits::Limits;
use codereview::review::registry::RegistryStats;
use kit::participant::{self, CatchUp, Inbox, Link, Participant};
use kit::payloads::{join_message_with, message, presence};
use kit::proxy::Proxy;
use kit::server::TestServer;

/// The session limits a test server starts from.
fn limits() -> Limits {
    AppConfig::loopback().limits
}

/// The wire settings a test server starts from.
fn server_config() -> ServerConfig {
    AppConfig::loopback().server
}

async fn start(limits: Limits) -> TestServer {
    TestServer::start(AppConfig {
        limits,
        ..AppConfig::loopback()
    })
    .await
}

/// Limits without the per-participant rate limit (100/s, burst 200): for
/// tests that send bursts larger than the default burst allows.
fn unlimited_rate() -> Limits {
    Limits {
        rate_per_second: 0.0,
        ..limits()
    }
}

/// A new tonic connection.
async fn tonic(addr: SocketAddr) -> Link {
    Link::tonic(addr, None).await
}

/// Joins with `first` on `link` and reads the catch-up.
async fn join_on(link: Link, first: SessionMessage) -> (Participant, CatchUp) {
    let label = format!("{}@{}", first.user_id, first.session_id);
    Participant::try_join(link, None, first)
        .await
        .unwrap_or_else(|status| panic!("{label} could not join: {status}"))
}

/// The article's clients' first message: a plain PresenceUpdate JOINED.
fn joined_message(session: &str, user: &str) -> SessionMessage {
    message(session, user, Some(presence(Presence::Joined)))
}

/// Joins the way the article's clients do, on a new connection.
async fn join(addr: SocketAddr, session: &str, user: &str) -> (Participant, CatchUp) {
    join_on(tonic(addr).await, joined_message(session, user)).await
}

/// Joins with an explicit Join message.
async fn join_explicit(
    addr: SocketAddr,
    session: &str,
    user: &str,
    join: Join,
) -> (Participant, CatchUp) {
    join_on(tonic(addr).await, join_message_with(session, user, join)).await
}

/// As [`join`], through a proxy whose connection can be cut.
async fn join_behind_proxy(addr: SocketAddr, session: &str, user: &str) -> (Participant, CatchUp) {
    let proxy = Proxy::start(addr);
    let (p, catch_up) = join_on(tonic(proxy.addr).await, joined_message(session, user)).await;
    (p.behind(proxy), catch_up)
}

async fn get_snapshot(addr: SocketAddr, session: &str) -> Result<Snapshot, Status> {
    participant::get_snapshot(tonic(addr).await, None, session).await
}

async fn snapshot_lines(addr: SocketAddr, session: &str, file: &str) -> Vec<String> {
    participant::snapshot_lines(tonic(addr).await, session, file).await
}

async fn upload(addr: SocketAddr, chunks: Vec<FileChunk>) -> Result<UploadSummary, Status> {
    participant::upload(tonic(addr).await, CallOptions::default(), &chunks).await
}

async fn watch(addr: SocketAddr, request: WatchRequest) -> Inbox {
    participant::watch(tonic(addr).await, None, request).await
}

/// A session stream on our own client with 64 KiB windows that never reads
/// unless asked: what it does not read stays unacknowledged in flow
/// control, so the server must stop (tonic would buffer what it receives).
async fn never_reading(addr: SocketAddr, first: SessionMessage) -> Participant {
    let small_windows = ChannelConfig {
        initial_stream_window: 65_535,
        initial_connection_window: 65_535,
        ..ChannelConfig::default()
    };
    Participant::open(Link::own_with(addr, small_windows).await, None, first).await
}

/// Sessions, participants, members, watchers and parked pulls all zero.
fn is_empty(stats: &RegistryStats) -> bool {
    stats.sessions == 0
        && stats.participants == 0
        && stats.members == 0
        && stats.watchers == 0
        && stats.parked_pulls == 0
}

/// Starts a session call whose first message is `first` and returns how the
/// call ended (for calls the server refuses, which deliver nothing).
async fn session_call_status(addr: SocketAddr, first: SessionMessage) -> Status {
    let (messages, status) =
        participant::session_status(tonic(addr).await, CallOptions::default(), &first).await;
    assert!(
        messages.is_empty(),
        "a refused call delivers nothing: {messages:?}"
    );
    status
}

fn own_join_ack(sequence: u64) -> Ack {
    Ack {
        client_sequence: 0,
        sequence,
        version: 0,
        duplicate: false,
        noop: false,
        comment_id: String::new(),
    }
}

fn author_presence(status: Presence) -> Option<Payload> {
    Some(Payload::Presence(PresenceUpdate {
        status: status as i32,
        role: Role::Author as i32,
    }))
}

fn participant_entry(
    user: &str,
    cursor: Option<(&str, i32, i32)>,
) -> codereview::pb::codereview::Participant {
    codereview::pb::codereview::Participant {
        user_id: user.into(),
        status: Presence::Active as i32,
        role: Role::Author as i32,
        cursor: cursor.map(|(file, line, column)| CursorPosition {
            file_path: file.into(),
            line,
            column,
        }),
    }
}
