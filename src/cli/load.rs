//! `codereview load`: drives a running server with S sessions of P
//! participants sending M messages each, and checks what it measures.
//!
//! Every message carries its sender's index and send time. Every receiver
//! checks: no loss (edits and comments: each other sender's indices arrive
//! exactly once, in order; cursors coalesce by design, so only order and the
//! final position are checked), no duplicate, per-sender order, and that its
//! own messages never come back as remote. It reports delivered messages per
//! second, the send rate, latency percentiles (send → receive) and errors,
//! ends with one JSON line, and exits non-zero on any violation.
//!
//! By default it sends only the article's fields (the first message is a
//! PresenceUpdate JOINED), so it works against any server of that proto.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use argh::FromArgs;
use tokio::sync::Barrier;
use tokio::time::Instant;

use super::connect::{ClientError, ClientOptions, describe};
use super::histogram::Histogram;
use super::render::JsonObject;
use crate::grpc::client::{CallOptions, Channel};
use crate::pb::codereview::{
    CodeEdit, Comment, CursorPosition, Join, PresenceUpdate, SessionMessage,
    notice::Kind as NoticeKind, presence_update::Status as Presence, session_message::Payload,
};
use crate::review::service::COLLABORATIVE_SESSION;

crate::client_flags! {
    /// drive a server with sessions of participants and check delivery
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "load")]
    #[argh(help_triggers("-h", "--help", "help"))]
    pub struct LoadArgs {
        /// sessions (default 1)
        #[argh(option, default = "1")]
        pub sessions: usize,
        /// participants per session (default 4)
        #[argh(option, default = "4")]
        pub participants: usize,
        /// messages each participant sends (default 100)
        #[argh(option, default = "100")]
        pub messages: usize,
        /// messages per second per participant, 0 for as fast as flow control allows (default 0)
        #[argh(option, default = "0.0")]
        pub rate: f64,
        /// participant streams sharing one connection (default 8)
        #[argh(option, default = "8")]
        pub streams_per_conn: usize,
        /// bytes of padding in each message (default 64)
        #[argh(option, default = "64")]
        pub payload: usize,
        /// what to send: edit, comment or cursor (default edit)
        #[argh(option, default = "String::from(\"edit\")")]
        pub kind: String,
        /// use the protocol's extensions too (Join, client sequence numbers)
        #[argh(switch)]
        pub extended: bool,
        /// how long to wait for deliveries after the last send (default 15s)
        #[argh(option, default = "Duration::from_secs(15)", from_str_fn(super::parse_duration))]
        pub drain: Duration,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Edit,
    Comment,
    Cursor,
}

/// What one participant saw and did.
#[derive(Debug, Default)]
struct Report {
    sent: u64,
    delivered: u64,
    errors: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    echoed: u64,
    first_error: Option<String>,
    first_violation: Option<String>,
    latency: Histogram,
    send_finished: Option<Instant>,
    last_receive: Option<Instant>,
}

impl Report {
    fn violation(&mut self, what: String) {
        if self.first_violation.is_none() {
            self.first_violation = Some(what);
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

struct Plan {
    kind: Kind,
    messages: usize,
    participants: usize,
    rate: f64,
    padding: String,
    extended: bool,
    drain: Duration,
    origin: Instant,
    start: Arc<Barrier>,
}

fn marker(plan: &Plan, index: usize) -> String {
    let nanos = plan.origin.elapsed().as_nanos() as u64;
    format!("{index} {nanos} {}", plan.padding)
}

/// (sender's index, send time in ns since the origin) from a marker.
fn parse_marker(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.splitn(3, ' ');
    let index = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    Some((index, nanos))
}

pub async fn run(args: LoadArgs) -> Result<bool, ClientError> {
    let kind = match args.kind.as_str() {
        "edit" => Kind::Edit,
        "comment" => Kind::Comment,
        "cursor" => Kind::Cursor,
        other => {
            return Err(ClientError::setup(format!(
                "--kind must be edit, comment or cursor, got {other:?}"
            )));
        }
    };
    if args.sessions == 0
        || args.participants < 2
        || args.messages == 0
        || args.streams_per_conn == 0
    {
        return Err(ClientError::setup(
            "need --sessions >= 1, --participants >= 2, --messages >= 1, --streams-per-conn >= 1",
        ));
    }
    let options = args.client_options();
    let total = args.sessions * args.participants;
    let run_id = format!("{:08x}", rand32());
    let plan = Arc::new(Plan {
        kind,
        messages: args.messages,
        participants: args.participants,
        rate: args.rate,
        padding: "x".repeat(args.payload),
        extended: args.extended,
        drain: args.drain,
        origin: Instant::now(),
        start: Arc::new(Barrier::new(total)),
    });

    // Connections first, so connection setup is not measured.
    let connections = total.div_ceil(args.streams_per_conn);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(options.connect().await?);
    }
    let started = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total);
    for session in 0..args.sessions {
        for participant in 0..args.participants {
            let n = session * args.participants + participant;
            let channel = channels[n / args.streams_per_conn].clone();
            let plan = plan.clone();
            let session_id = format!("load-{run_id}-{session}");
            let user = format!("p{participant}");
            let started = started.clone();
            tasks.push(tokio::spawn(async move {
                participant_task(channel, plan, session_id, user, started).await
            }));
        }
    }
    let mut reports = Vec::with_capacity(total);
    for task in tasks {
        match task.await {
            Ok(report) => reports.push(report),
            Err(error) => {
                let mut report = Report::default();
                report.error(format!("participant task failed: {error}"));
                reports.push(report);
            }
        }
    }
    let measured_from = started.load(Ordering::Relaxed);
    summarize(&args, &options, &reports, &plan, measured_from)
}

fn rand32() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes)
}

async fn participant_task(
    channel: Channel,
    plan: Arc<Plan>,
    session_id: String,
    user: String,
    started: Arc<AtomicU64>,
) -> Report {
    let mut report = Report::default();
    let mut call = match channel
        .start(COLLABORATIVE_SESSION, CallOptions::default())
        .await
    {
        Ok(call) => call,
        Err(status) => {
            report.error(format!(
                "{user}: cannot open the stream: {}",
                describe(&status)
            ));
            plan.start.wait().await;
            return report;
        }
    };
    let message = |payload: Payload, client_sequence: u64| SessionMessage {
        session_id: session_id.clone(),
        timestamp: crate::review::now_unix_ms(),
        user_id: user.clone(),
        payload: Some(payload),
        sequence: 0,
        client_sequence,
    };
    let first = if plan.extended {
        Payload::Join(Join::default())
    } else {
        Payload::Presence(PresenceUpdate {
            status: Presence::Joined as i32,
            role: 0,
        })
    };
    if let Err(status) = call.send(&message(first, 0)).await {
        report.error(format!("{user}: cannot join: {}", describe(&status)));
        plan.start.wait().await;
        return report;
    }
    // Wait until every other participant of the session has joined.
    let mut joined: HashSet<String> = HashSet::new();
    let mut version = 0i32;
    let join_deadline = Instant::now() + Duration::from_secs(30);
    while joined.len() + 1 < plan.participants {
        let next = tokio::time::timeout_at(join_deadline, call.message::<SessionMessage>()).await;
        match next {
            Ok(Ok(Some(m))) => {
                if let Some(Payload::Presence(p)) = &m.payload
                    && p.status == Presence::Joined as i32
                    && m.user_id != user
                {
                    joined.insert(m.user_id.clone());
                }
                if let Some(Payload::Joined(j)) = &m.payload {
                    version = j.version;
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                report.error(format!(
                    "{user}: only {} of {} participants joined session {session_id}",
                    joined.len() + 1,
                    plan.participants
                ));
                plan.start.wait().await;
                return report;
            }
        }
    }
    plan.start.wait().await;
    let begin = plan.origin.elapsed().as_nanos() as u64;
    started.fetch_max(begin, Ordering::Relaxed);

    let (mut sender, mut receiver) = call.split();
    let mut next_index = 0usize;
    let mut client_sequence = 1u64;
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
    let mut next_send = Instant::now();
    let expected_per_sender = plan.messages as u64;
    let others = (plan.participants - 1) as u64;
    // Per sender: the last index seen.
    let mut last_seen: HashMap<String, u64> = HashMap::new();
    let mut complete_senders = 0u64;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let sending = next_index < plan.messages;
        if !sending && sender.pending_bytes() == 0 && report.send_finished.is_none() {
            report.send_finished = Some(Instant::now());
            drain_deadline = Some(Instant::now() + plan.drain);
        }
        if complete_senders == others && !sending && sender.pending_bytes() == 0 {
            break;
        }
        // Unpaced: keep at most one burst waiting for flow control.
        let due = sending
            && sender.pending_bytes() < 64 * 1024
            && interval.is_none_or(|_| Instant::now() >= next_send);
        if due {
            // Queue what is due (a burst when unpaced), then flush once.
            let burst = if interval.is_some() { 1 } else { 64 };
            for _ in 0..burst {
                if next_index >= plan.messages {
                    break;
                }
                let text = marker(&plan, next_index);
                let payload = match plan.kind {
                    Kind::Edit => Payload::Edit(CodeEdit {
                        file_path: format!("load/{user}"),
                        line_number: next_index as i32,
                        content: text,
                        version,
                        op: 0,
                    }),
                    Kind::Comment => Payload::Comment(Comment {
                        comment_id: String::new(),
                        line_number: next_index as i32,
                        text,
                        file_path: String::new(),
                    }),
                    Kind::Cursor => Payload::Cursor(CursorPosition {
                        file_path: format!("load/{user}"),
                        line: next_index as i32,
                        column: (plan.origin.elapsed().as_millis() as i64).min(i32::MAX as i64)
                            as i32,
                    }),
                };
                let cs = if plan.extended { client_sequence } else { 0 };
                client_sequence += 1;
                sender.queue(&message(payload, cs));
                next_index += 1;
                report.sent += 1;
            }
            if let Some(interval) = interval {
                next_send += interval;
            }
        }
        let wake = if sending && interval.is_some() {
            Some(next_send)
        } else {
            drain_deadline
        };
        tokio::select! {
            flushed = sender.flush(), if sender.pending_bytes() > 0 => {
                if let Err(write_error) = flushed {
                    // The server may have ended the call; its status says why.
                    let status = tokio::time::timeout(Duration::from_secs(1), async {
                        loop {
                            match receiver.message::<SessionMessage>().await {
                                Ok(Some(_)) => continue,
                                Ok(None) => return None,
                                Err(status) => return Some(status),
                            }
                        }
                    })
                    .await
                    .ok()
                    .flatten();
                    match status {
                        Some(status) => report.error(format!("{user}: stream failed: {}", describe(&status))),
                        None => report.error(format!("{user}: send failed: {}", describe(&write_error))),
                    }
                    break;
                }
            }
            received = receiver.message::<SessionMessage>() => match received {
                Ok(Some(m)) => {
                    let now = Instant::now();
                    if check(&plan, &user, &m, &mut last_seen, &mut report, &mut version, now) {
                        complete_senders += 1;
                    }
                }
                Ok(None) => {
                    report.error(format!("{user}: the server ended the stream early"));
                    break;
                }
                Err(status) => {
                    report.error(format!("{user}: stream failed: {}", describe(&status)));
                    break;
                }
            },
            _ = sleep_until_opt(wake), if wake.is_some() && !due => {
                if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    // Half-close and wait for the server to end the call: only then is
    // everything we sent known to have been processed (dropping the call
    // earlier would reset the stream and could discard our last messages).
    sender.close_send();
    let finish = async {
        while let Ok(Some(m)) = receiver.message::<SessionMessage>().await {
            check(
                &plan,
                &user,
                &m,
                &mut last_seen,
                &mut report,
                &mut version,
                Instant::now(),
            );
        }
    };
    let _ = tokio::time::timeout(plan.drain, finish).await;
    // Whatever is missing now is lost.
    for (sender_user, last) in last_seen.iter() {
        let got = last + 1;
        if plan.kind != Kind::Cursor && got < expected_per_sender {
            report.lost += expected_per_sender - got;
            report.violation(format!(
                "{user} in {session_id} got {sender_user}'s messages only up to {last} of {expected_per_sender}"
            ));
        }
    }
    let silent = others.saturating_sub(last_seen.len() as u64);
    if plan.kind == Kind::Cursor {
        // Coalesced: only the final position must arrive.
        let incomplete = last_seen
            .values()
            .filter(|&&l| l + 1 < expected_per_sender)
            .count() as u64;
        report.lost += incomplete + silent;
    } else {
        report.lost += silent * expected_per_sender;
    }
    report
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Checks one received message; returns true when it completes a sender.
fn check(
    plan: &Plan,
    user: &str,
    message: &SessionMessage,
    last_seen: &mut HashMap<String, u64>,
    report: &mut Report,
    version: &mut i32,
    now: Instant,
) -> bool {
    let (index, sent_at) = match &message.payload {
        Some(Payload::Edit(e)) => {
            *version = (*version).max(e.version);
            if plan.kind != Kind::Edit {
                return false;
            }
            match parse_marker(&e.content) {
                Some(m) => m,
                None => return false,
            }
        }
        Some(Payload::Comment(c)) if plan.kind == Kind::Comment => match parse_marker(&c.text) {
            Some(m) => m,
            None => return false,
        },
        Some(Payload::Cursor(c)) if plan.kind == Kind::Cursor => {
            let ms = u64::try_from(c.column).unwrap_or(0);
            (u64::try_from(c.line).unwrap_or(u64::MAX), ms * 1_000_000)
        }
        Some(Payload::Ack(a)) => {
            *version = (*version).max(a.version);
            return false;
        }
        Some(Payload::Error(e)) => {
            report.error(format!(
                "{user}: server error {}: {}",
                crate::grpc::Code::from_i32(e.code).name(),
                e.message
            ));
            return false;
        }
        Some(Payload::Notice(n)) if n.kind == NoticeKind::GoingAway as i32 => {
            report.error(format!("{user}: the server is going away"));
            return false;
        }
        _ => return false,
    };
    if message.user_id == user {
        report.echoed += 1;
        report.violation(format!("{user} got its own message {index} back"));
        return false;
    }
    report.delivered += 1;
    report.last_receive = Some(now);
    let now_nanos = plan.origin.elapsed().as_nanos() as u64;
    report
        .latency
        .record(now_nanos.saturating_sub(sent_at) / 1000);
    let expected_last = plan.messages as u64 - 1;
    match last_seen.get(&message.user_id).copied() {
        Some(last) if index <= last => {
            if index == last {
                report.duplicated += 1;
            } else {
                report.reordered += 1;
            }
            report.violation(format!(
                "{user} got {}'s message {index} after {last}",
                message.user_id
            ));
            false
        }
        previous => {
            let next_expected = previous.map_or(0, |l| l + 1);
            if index > next_expected && plan.kind != Kind::Cursor {
                report.lost += index - next_expected;
                report.violation(format!(
                    "{user} missed {}'s messages {next_expected}..{index} (sequence {})",
                    message.user_id, message.sequence
                ));
            }
            last_seen.insert(message.user_id.clone(), index);
            index == expected_last
        }
    }
}

fn summarize(
    args: &LoadArgs,
    options: &ClientOptions,
    reports: &[Report],
    plan: &Plan,
    measured_from: u64,
) -> Result<bool, ClientError> {
    let mut latency = Histogram::new();
    let mut totals = Report::default();
    let mut last_send = 0u64;
    let mut last_receive = 0u64;
    for r in reports {
        latency.merge(&r.latency);
        totals.sent += r.sent;
        totals.delivered += r.delivered;
        totals.errors += r.errors;
        totals.lost += r.lost;
        totals.duplicated += r.duplicated;
        totals.reordered += r.reordered;
        totals.echoed += r.echoed;
        if totals.first_error.is_none() {
            totals.first_error = r.first_error.clone();
        }
        if totals.first_violation.is_none() {
            totals.first_violation = r.first_violation.clone();
        }
        if let Some(t) = r.send_finished {
            last_send = last_send.max(t.duration_since(plan.origin).as_nanos() as u64);
        }
        if let Some(t) = r.last_receive {
            last_receive = last_receive.max(t.duration_since(plan.origin).as_nanos() as u64);
        }
    }
    let expected = if plan.kind == Kind::Cursor {
        0
    } else {
        (args.sessions * args.participants * (args.participants - 1) * args.messages) as u64
    };
    let send_seconds = (last_send.saturating_sub(measured_from) as f64 / 1e9).max(1e-9);
    let receive_seconds = (last_receive.saturating_sub(measured_from) as f64 / 1e9).max(1e-9);
    let ok = totals.errors == 0
        && totals.lost == 0
        && totals.duplicated == 0
        && totals.reordered == 0
        && totals.echoed == 0;
    eprintln!(
        "load: {} sessions x {} participants x {} {} messages against {}",
        args.sessions, args.participants, args.messages, args.kind, options.addr
    );
    eprintln!(
        "  sent {} in {:.3}s ({:.0}/s); delivered {} of {} expected ({:.0}/s)",
        totals.sent,
        send_seconds,
        totals.sent as f64 / send_seconds,
        totals.delivered,
        expected,
        totals.delivered as f64 / receive_seconds
    );
    eprintln!(
        "  latency p50 {}us p99 {}us p999 {}us max {}us",
        latency.quantile(0.5),
        latency.quantile(0.99),
        latency.quantile(0.999),
        latency.max()
    );
    eprintln!(
        "  violations: lost {} duplicated {} reordered {} echoed {}; errors {}{}",
        totals.lost,
        totals.duplicated,
        totals.reordered,
        totals.echoed,
        totals.errors,
        totals
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if let Some(violation) = &totals.first_violation {
        eprintln!("  first violation: {violation}");
    }
    let line = JsonObject::new()
        .str("type", "load")
        .boolean("ok", ok)
        .str("kind", &args.kind)
        .uint("sessions", args.sessions as u64)
        .uint("participants", args.participants as u64)
        .uint("messages", args.messages as u64)
        .uint("payload", args.payload as u64)
        .uint("streams_per_conn", args.streams_per_conn as u64)
        .uint("sent", totals.sent)
        .uint("delivered", totals.delivered)
        .uint("expected", expected)
        .num("send_seconds", round3(send_seconds))
        .num("send_per_second", round3(totals.sent as f64 / send_seconds))
        .num(
            "delivered_per_second",
            round3(totals.delivered as f64 / receive_seconds),
        )
        .raw(
            "latency_us",
            &JsonObject::new()
                .uint("p50", latency.quantile(0.5))
                .uint("p99", latency.quantile(0.99))
                .uint("p999", latency.quantile(0.999))
                .uint("max", latency.max())
                .num("mean", round3(latency.mean()))
                .finish(),
        )
        .uint("errors", totals.errors)
        .uint("lost", totals.lost)
        .uint("duplicated", totals.duplicated)
        .uint("reordered", totals.reordered)
        .uint("echoed", totals.echoed)
        .finish();
    println!("{line}");
    Ok(ok)
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        assert_eq!(parse_marker("12 3456 xxxx"), Some((12, 3456)));
        assert_eq!(parse_marker("12 3456"), Some((12, 3456)));
        assert_eq!(parse_marker("nope"), None);
    }
}
