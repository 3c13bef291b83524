//! Observability and operations of the real binary (`codereview serve` as a
//! child process): Prometheus metrics that move with traffic and parse with a
//! real Prometheus text parser, the metrics listener's HTTP behaviour,
//! structured logs (correlation fields, formats, levels, no secrets), and the
//! signals (SIGTERM/SIGINT drain, SIGHUP).
//!
//! Clients are the binary's own commands (`load`, `join --json`, `health`,
//! `snapshot`, `token`) run as processes, plus our own gRPC client
//! (`codereview::grpc::client`) for participants that must misbehave: one
//! that never reads, one that ignores the GOING_AWAY notice.
//!
//! Python's prometheus_client (the venv named by CODEREVIEW_PYTHON) follows
//! the peers' rule: skipped with a note when not set up, a failure when
//! CODEREVIEW_REQUIRE_PEERS=1.

mod durability;
mod exposition;
mod lifecycle;
mod logs;
mod metrics;

use std::process::ExitStatus;
use std::time::Duration;

use codereview::grpc::client::{CallOptions, Channel, ChannelConfig, ClientCall, Endpoint};
use codereview::grpc::health::WATCH;
use codereview::pb::codereview::{
    CodeEdit, Join, SessionMessage, code_edit::Op, session_message::Payload,
};
use codereview::pb::health::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};
use kit::json::Json;
use kit::participant::{CatchUp, Participant};
use kit::payloads::join_message_with;
use kit::process::{Binary, Proc};
use kit::server::{LogFormat, ServerProcess, log_message};
use kit::{WAIT, binary};

const BIN: Binary = binary!();

const SECRET: &str = "operations-test-secret-0123456789-abcdefghijklmnop";

fn str_field<'a>(o: &'a Json, key: &str) -> Option<&'a str> {
    o.str_of(key)
}

fn int_field(o: &Json, key: &str) -> Option<i64> {
    match o.get(key) {
        Some(Json::Number(n)) if n.fract() == 0.0 => Some(*n as i64),
        _ => None,
    }
}

/// The `"type"` of a `join --json` line.
fn is_type(o: &Json, kind: &str) -> bool {
    o["type"] == kind
}

/// Whether a `join --json` line is a notice of `kind`.
fn is_notice(o: &Json, kind: &str) -> bool {
    is_type(o, "notice") && o["kind"] == kind
}

fn edit(op: Op, file: &str, line: i32, content: &str) -> Payload {
    Payload::Edit(CodeEdit {
        file_path: file.into(),
        line_number: line,
        content: content.into(),
        version: 0,
        op: op as i32,
    })
}

fn is_ack(m: &SessionMessage, client_sequence: u64) -> bool {
    matches!(&m.payload, Some(Payload::Ack(a)) if a.client_sequence == client_sequence)
}

/// A `codereview` client process named by its arguments.
fn spawn(args: &[&str]) -> Proc {
    BIN.spawn(&args.join(" "), args)
}

/// Runs a `codereview` command to completion (stdin closed), up to `limit`:
/// its exit status, stdout and stderr.
fn run(args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    let out = BIN.run(args, limit);
    (out.status, out.stdout, out.stderr)
}

/// A tokio runtime for tests that are otherwise synchronous (processes).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Our own client to `addr` ("127.0.0.1:PORT") with `config`.
async fn connect(addr: &str, config: ChannelConfig) -> Channel {
    let endpoint = Endpoint::parse(&format!("http://{addr}")).expect("an endpoint");
    let connected = tokio::time::timeout(WAIT, Channel::connect(&endpoint, &config)).await;
    connected
        .expect("connecting in time")
        .unwrap_or_else(|status| panic!("cannot connect to {addr}: {status:?}"))
}

/// A participant of ours that joined with `join` and caught up.
async fn member(
    channel: &Channel,
    session: &str,
    user: &str,
    join: Join,
) -> (Participant, CatchUp) {
    let first = join_message_with(session, user, join);
    let joined = Participant::try_join(channel, None, first).await;
    joined.unwrap_or_else(|status| panic!("{user} could not join {session}: {status}"))
}

/// Mints a token with `codereview token`.
fn mint_token(secret: &std::path::Path, user: &str, role: &str) -> String {
    let secret = secret.to_str().expect("utf-8 path");
    let args = [
        "token",
        "--secret-file",
        secret,
        "--user",
        user,
        "--role",
        role,
    ];
    let (status, out, err) = run(&args, WAIT);
    assert!(status.success(), "codereview token failed: {err}");
    let token = out.trim().to_owned();
    assert!(token.len() > 20, "token: {token:?}");
    token
}

/// A `join --json` process that has caught up.
fn join_process(server: &ServerProcess, session: &str, user: &str, token: Option<&str>) -> Proc {
    let url = server.url();
    let mut args = vec![
        "join",
        "--addr",
        &url,
        "--session",
        session,
        "--user",
        user,
        "--json",
    ];
    if let Some(token) = token {
        args.extend(["--token", token]);
    }
    let join = spawn(&args);
    join.find_json("the caught_up notice", |o| is_notice(o, "caught_up"));
    join
}

/// Waits for a `join --json` process to print the ack of its message
/// number `client_sequence`.
fn wait_ack(join: &Proc, client_sequence: i64) {
    join.find_json(&format!("the ack of message {client_sequence}"), |o| {
        is_type(o, "ack") && int_field(o, "client_sequence") == Some(client_sequence)
    });
}

/// Quits a `join` process and checks it exits 0.
fn quit(mut join: Proc) {
    join.send("quit");
    let status = join.wait_exit(WAIT);
    assert!(
        status.success(),
        "`{}`: {status}; {}",
        join.name,
        join.transcript()
    );
}

/// Opens grpc.health.v1.Health/Watch for the whole server.
async fn health_watch(channel: &Channel) -> ClientCall {
    let mut call = channel
        .start(WATCH, CallOptions::default())
        .await
        .expect("starting Health/Watch");
    call.send(&HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("sending the health request");
    call.close_send();
    call
}

async fn next_health(call: &mut ClientCall) -> ServingStatus {
    let response = tokio::time::timeout(WAIT, call.message::<HealthCheckResponse>())
        .await
        .expect("a health update in time")
        .expect("the health watch is open")
        .expect("a health update");
    ServingStatus::try_from(response.status).expect("a known status")
}

/// `codereview health` against the server: (exit status, stdout).
fn health_command(server: &ServerProcess) -> (ExitStatus, String) {
    let url = server.url();
    let (status, out, _) = run(&["health", "--addr", &url, "--timeout", "3s"], WAIT);
    (status, out)
}

/// The message of a text log line.
fn text_message(line: &str) -> Option<String> {
    log_message(LogFormat::Text, line)
}
