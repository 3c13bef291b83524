//! `codereview load`: drives a running server with S sessions of P
//! participants sending M messages each, and checks what it measures.
//!
//! Every message carries its sender's index and send time. Every receiver
//! checks: no loss (edits and comments: each other sender's indices arrive
//! exactly once, in order; cursors coalesce by design, so only order and the
//! final position are checked), no duplicate, per-sender order (of edits and
//! comments, and of cursors, each apart), and that its own messages never
//! come back as remote. A message the server refused for
//! its rate limit is counted as such, apart: it was never broadcast, so it
//! is not lost (see [`tally`]). It reports delivered messages per second
//! (from the start to the last delivery: sends only queue, so a send rate
//! would say nothing), latency percentiles (send → receive) and errors, ends
//! with one JSON line, and exits non-zero on any violation or refusal.
//!
//! By default it sends only the article's fields (the first message is a
//! PresenceUpdate JOINED), so it works against any server of that proto.
//!
//! What it sends, as a client would: a comment's text and an edit's line
//! are `--payload` bytes (the marker, then words). `--kind mix` interleaves
//! edits, comments and cursors (in turn). Edits replace lines of the
//! sender's own file; with `--extended` they are what an OT client sends
//! instead: inserts into one file the whole session edits, at lines of the
//! document as the sender knows it, based on the latest version it knows
//! (from Joined, its acknowledgements and the edits it received), so the
//! server really transforms concurrent edits.
//!
//! `--server-pid` adds what the server process spent ([`server_usage`]).

mod server_usage;
mod tally;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use argh::FromArgs;
use tokio::sync::Barrier;
use tokio::time::Instant;

use super::connect::{ClientError, describe};
use crate::grpc::client::{CallOptions, Channel};
use crate::pb::codereview::{
    CodeEdit, Comment, CursorPosition, Join, PresenceUpdate, SessionMessage,
    code_edit::Op as EditOp, presence_update::Status as Presence, session_message::Payload,
};
use crate::pb::paths::COLLABORATIVE_SESSION;
use tally::{Report, Seen};

crate::cli::connect::client_flags! {
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
        /// messages per second per participant, 0 for as fast as flow control allows (default 0); paced participants start spread over one interval
        #[argh(option, default = "0.0")]
        pub rate: f64,
        /// participant streams sharing one connection (default 8)
        #[argh(option, default = "8")]
        pub streams_per_conn: usize,
        /// bytes of each comment's text and edit's line: a marker, then words (default 64; never fewer than the marker's 20 or so)
        #[argh(option, default = "64")]
        pub payload: usize,
        /// what to send: edit, comment, cursor or mix (the three in turn) (default edit)
        #[argh(option, default = "String::from(\"edit\")")]
        pub kind: String,
        /// use the protocol's extensions too (Join, client sequence numbers)
        #[argh(switch)]
        pub extended: bool,
        /// how long to wait for deliveries after the last send (default 15s)
        #[argh(option, default = "Duration::from_secs(15)", from_str_fn(super::parse_duration))]
        pub drain: Duration,
        /// the server's process id (on this machine): report its CPU time and RSS during the run
        #[argh(option)]
        pub server_pid: Option<u32>,
    }
}

/// What a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Edit,
    Comment,
    Cursor,
    /// Edits, comments and cursors in turn.
    Mix,
}

/// What one message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Edit,
    Comment,
    Cursor,
}

impl Kind {
    /// What message `index` of a sender is.
    fn of(self, index: u64) -> Sent {
        match self {
            Kind::Edit => Sent::Edit,
            Kind::Comment => Sent::Comment,
            Kind::Cursor => Sent::Cursor,
            Kind::Mix => [Sent::Edit, Sent::Comment, Sent::Cursor][(index % 3) as usize],
        }
    }

    /// How many of a sender's `messages` are essential (edits and comments:
    /// each must arrive).
    fn essential(self, messages: u64) -> u64 {
        (0..messages)
            .filter(|&i| self.of(i) != Sent::Cursor)
            .count() as u64
    }

    /// The index of a sender's last cursor, which must arrive (the others
    /// may coalesce).
    fn last_cursor(self, messages: u64) -> Option<u64> {
        (0..messages).rev().find(|&i| self.of(i) == Sent::Cursor)
    }
}

/// The file every participant of a session edits with `--extended`.
const SHARED_FILE: &str = "load/review.rs";

/// What every participant task shares.
struct Plan {
    /// Session ids are this and the session's number (`load-RUN-0`, ...).
    session_prefix: String,
    kind: Kind,
    messages: usize,
    participants: usize,
    rate: f64,
    /// Bytes of a message's text.
    payload: usize,
    /// Words to fill a text up to `payload` bytes.
    padding: String,
    extended: bool,
    drain: Duration,
    origin: Instant,
    start: Arc<Barrier>,
    /// Per participant (session × participants + index): how many of its
    /// messages the server refused for its rate limit.
    refused: Vec<AtomicU64>,
    /// The server process under watch (`--server-pid`).
    server: Option<server_usage::Watch>,
}

impl Plan {
    /// The refusals of participant `index` of session `session`.
    fn refused(&self, session: usize, index: usize) -> u64 {
        self.refused[session * self.participants + index].load(Ordering::Relaxed)
    }
}

/// How often a participant done sending looks again at what it still waits
/// for.
const RECHECK: Duration = Duration::from_millis(50);

/// A message's text: the marker (index and send time), then words up to
/// `payload` bytes in all.
fn marker(plan: &Plan, index: usize) -> String {
    let nanos = plan.origin.elapsed().as_nanos() as u64;
    let mut text = format!("{index} {nanos}");
    if plan.payload > text.len() + 1 {
        let room = plan.payload - text.len() - 1;
        text.push(' ');
        text.push_str(&plan.padding[..room]);
    }
    text
}

/// `bytes` of review-like words (ASCII, so any prefix is a whole string).
fn padding(bytes: usize) -> String {
    const WORDS: [&str; 16] = [
        "this", "could", "return", "early", "when", "the", "buffer", "is", "empty;", "rename",
        "it", "and", "add", "a", "test", "here.",
    ];
    let mut text = String::with_capacity(bytes + 8);
    let mut state = 0x2545_f491u32;
    while text.len() < bytes {
        // A small LCG picks the words: varied like text, the same every run.
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        text.push_str(WORDS[(state >> 16) as usize % WORDS.len()]);
        text.push(' ');
    }
    text.truncate(bytes);
    text
}

/// Where an extended participant inserts its message `index`: a line of the
/// document as it knows it (`lines`: 0 to `lines` are valid; at `lines`
/// appends), spread over the file so that concurrent edits meet.
fn insert_line(index: usize, participant: usize, lines: u64) -> u64 {
    (index as u64 * 7919 + participant as u64 * 104_729) % (lines + 1)
}

/// What a participant knows of the session's document.
#[derive(Debug, Default, Clone, Copy)]
struct DocView {
    /// The latest version it saw (Joined, acknowledgements, edits).
    version: i32,
    /// Edits of the others it received: with its own, the lines of the
    /// shared file it knows (every extended edit inserts one).
    others_edits: u64,
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
        "mix" => Kind::Mix,
        other => {
            return Err(ClientError::setup(format!(
                "--kind must be edit, comment, cursor or mix, got {other:?}"
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
    let server = match args.server_pid {
        Some(pid) => Some(server_usage::Watch::start(pid).map_err(ClientError::setup)?),
        None => None,
    };
    let options = args.client_options();
    let total = args.sessions * args.participants;
    let run_id = format!("{:08x}", rand32());
    let plan = Arc::new(Plan {
        session_prefix: format!("load-{run_id}-"),
        kind,
        messages: args.messages,
        participants: args.participants,
        rate: args.rate,
        payload: args.payload,
        padding: padding(args.payload),
        extended: args.extended,
        drain: args.drain,
        origin: Instant::now(),
        start: Arc::new(Barrier::new(total)),
        refused: (0..total).map(|_| AtomicU64::new(0)).collect(),
        server,
    });

    // Connections first, so connection setup is not measured.
    let connections = total.div_ceil(args.streams_per_conn);
    let mut channels = Vec::with_capacity(connections);
    // Several --addr: connections (and so participants) round-robin.
    for n in 0..connections {
        channels.push(options.at(n).connect().await?);
    }
    let started = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total);
    for session in 0..args.sessions {
        for participant in 0..args.participants {
            let n = session * args.participants + participant;
            let channel = channels[n / args.streams_per_conn].clone();
            let plan = plan.clone();
            let who = Who {
                session,
                index: participant,
                session_id: format!("{}{session}", plan.session_prefix),
                user: format!("p{participant}"),
            };
            let started = started.clone();
            tasks.push(tokio::spawn(async move {
                participant_task(channel, plan, who, started).await
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
    let usage = plan.server.as_ref().and_then(server_usage::Watch::finish);
    // A plaintext run against a TLS port fails in every participant: say why
    // once, as every command does.
    let mut notes = Vec::new();
    if let Some(first) = reports.iter().find_map(|r| r.first_error.clone()) {
        let explained =
            super::tls_probe::explain(&options, ClientError::runtime(first.clone())).await;
        if explained.message != first {
            notes.push(explained.message);
        }
    }
    Ok(tally::summarize(
        &args,
        &options,
        &mut reports,
        &plan,
        measured_from,
        usage,
        notes,
    ))
}

/// Which participant a task is.
#[derive(Debug, Default, Clone)]
struct Who {
    /// The session's number and the participant's within it.
    session: usize,
    index: usize,
    session_id: String,
    user: String,
}

fn rand32() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes)
}

async fn participant_task(
    channel: Channel,
    plan: Arc<Plan>,
    who: Who,
    started: Arc<AtomicU64>,
) -> Report {
    let (session_id, user) = (who.session_id.clone(), who.user.clone());
    let mut report = Report {
        who: who.clone(),
        ..Report::default()
    };
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
    let mut view = DocView::default();
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
                    view.version = j.version;
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                let why = match next {
                    Ok(Err(status)) => format!(": stream failed: {}", describe(&status)),
                    Ok(Ok(None)) => ": the server ended the stream".to_owned(),
                    _ => String::new(),
                };
                report.error(format!(
                    "{user}: only {} of {} participants joined session {session_id}{why}",
                    joined.len() + 1,
                    plan.participants
                ));
                plan.start.wait().await;
                return report;
            }
        }
    }
    if plan.start.wait().await.is_leader()
        && let Some(server) = &plan.server
    {
        server.mark_start();
    }
    let begin = plan.origin.elapsed().as_nanos() as u64;
    started.fetch_max(begin, Ordering::Relaxed);

    let (mut sender, mut receiver) = call.split();
    let mut next_index = 0usize;
    let mut client_sequence = 1u64;
    // Edits sent (extended: lines this participant inserted).
    let mut own_edits = 0u64;
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
    // Paced participants start spread over one interval (each at its own
    // offset), as independent clients would be, not all on the same tick:
    // otherwise every tick is a burst of everybody's messages and the
    // latency measured is mostly the burst's queueing.
    let mut next_send = Instant::now()
        + interval.map_or(Duration::ZERO, |interval| {
            // One refusal counter per participant of the run.
            let everyone = plan.refused.len().max(1) as u32;
            let me = (who.session * plan.participants + who.index) as u32;
            interval * me / everyone
        });
    let mut seen = Seen::default();
    let mut drain_deadline: Option<Instant> = None;
    // Armed for `armed_for` (when Some).
    let timer = tokio::time::sleep_until(Instant::now() + Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed_for: Option<Instant> = None;
    loop {
        let sending = next_index < plan.messages;
        if !sending && sender.pending_bytes() == 0 && report.send_finished.is_none() {
            report.send_finished = Some(Instant::now());
            drain_deadline = Some(Instant::now() + plan.drain);
        }
        if !sending && sender.pending_bytes() == 0 && seen.complete(&plan, &who) {
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
                let payload = match plan.kind.of(next_index as u64) {
                    Sent::Edit if plan.extended => {
                        let lines = view.others_edits + own_edits;
                        own_edits += 1;
                        Payload::Edit(CodeEdit {
                            file_path: SHARED_FILE.to_owned(),
                            line_number: insert_line(next_index, who.index, lines) as i32,
                            content: text,
                            version: view.version,
                            op: EditOp::Insert as i32,
                        })
                    }
                    Sent::Edit => Payload::Edit(CodeEdit {
                        file_path: format!("load/{user}"),
                        line_number: next_index as i32,
                        content: text,
                        version: view.version,
                        op: EditOp::Replace as i32,
                    }),
                    Sent::Comment => Payload::Comment(Comment {
                        comment_id: String::new(),
                        line_number: next_index as i32,
                        text,
                        file_path: String::new(),
                    }),
                    Sent::Cursor => Payload::Cursor(CursorPosition {
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
        // Done sending: look again now and then, as the refusals of the
        // others (counted by them) may complete what we have seen. The timer
        // moves only when what it waits for does (re-arming it for every
        // message received would cost as much as reading the message).
        let paced = sending && interval.is_some();
        let wake = if paced {
            Some(next_send)
        } else {
            drain_deadline
        };
        if wake != armed_for {
            armed_for = wake;
            if let Some(wake) = wake {
                let at = if paced {
                    wake
                } else {
                    wake.min(Instant::now() + RECHECK)
                };
                timer.as_mut().reset(at);
            }
        }
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
            received = receiver.message::<SessionMessage>() => {
                // The messages already here are read at once, at one time
                // (they arrived together), without another round of select.
                let now = Instant::now();
                let mut received = received;
                let mut batch = 0;
                let ended = loop {
                    match received {
                        Ok(Some(m)) => {
                            tally::check(&plan, &who, &m, &mut seen, &mut report, &mut view, now);
                        }
                        Ok(None) => {
                            report.error(format!("{user}: the server ended the stream early"));
                            break true;
                        }
                        Err(status) => {
                            report.error(format!("{user}: stream failed: {}", describe(&status)));
                            break true;
                        }
                    }
                    batch += 1;
                    if batch == MAX_READ_AT_ONCE {
                        break false;
                    }
                    match ready_now(receiver.message::<SessionMessage>()) {
                        Some(next) => received = next,
                        None => break false,
                    }
                };
                if ended {
                    break;
                }
            }
            () = &mut timer, if armed_for.is_some() && !due => {
                if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                // Armed again on the next pass.
                armed_for = None;
            }
        }
    }
    // Half-close and wait for the server to end the call: only then is
    // everything we sent known to have been processed (dropping the call
    // earlier would reset the stream and could discard our last messages).
    sender.close_send();
    let finish = async {
        while let Ok(Some(m)) = receiver.message::<SessionMessage>().await {
            tally::check(
                &plan,
                &who,
                &m,
                &mut seen,
                &mut report,
                &mut view,
                Instant::now(),
            );
        }
    };
    let _ = tokio::time::timeout(plan.drain, finish).await;
    report.seen = seen;
    report.version = view.version;
    report
}

/// The most messages read in one go before the loop looks at its other
/// work (sending, the timer) again.
const MAX_READ_AT_ONCE: usize = 256;

/// The future's output if it is ready without waiting (it is dropped
/// otherwise: for cancel-safe futures only). The task's waker is left to the
/// next real poll of the same source, which the loop always makes.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: Kind, payload: usize) -> Plan {
        Plan {
            session_prefix: "load-test-".to_owned(),
            kind,
            messages: 10,
            participants: 2,
            rate: 0.0,
            payload,
            padding: padding(payload),
            extended: false,
            drain: Duration::ZERO,
            origin: Instant::now(),
            start: Arc::new(Barrier::new(1)),
            refused: Vec::new(),
            server: None,
        }
    }

    #[test]
    fn markers_round_trip() {
        assert_eq!(parse_marker("12 3456 xxxx"), Some((12, 3456)));
        assert_eq!(parse_marker("12 3456"), Some((12, 3456)));
        assert_eq!(parse_marker("nope"), None);
        let text = marker(&plan(Kind::Comment, 100), 7);
        assert_eq!(parse_marker(&text).map(|m| m.0), Some(7));
    }

    /// A text is as long as asked (it was the padding alone, plus the
    /// marker), never shorter than its marker, and reads like words.
    #[tokio::test]
    async fn texts_have_the_requested_size() {
        for payload in [0, 5, 16, 64, 1024, 1500] {
            let text = marker(&plan(Kind::Comment, payload), 123);
            let marker_only = text.split(' ').take(2).collect::<Vec<_>>().join(" ");
            assert_eq!(text.len(), payload.max(marker_only.len()), "{text:?}");
            assert!(!text.is_empty());
        }
        let text = marker(&plan(Kind::Comment, 200), 1);
        assert!(text.contains("the ") && !text.contains("xx"), "{text}");
    }

    #[test]
    fn a_mix_interleaves_and_ends_on_a_known_cursor() {
        let kinds: Vec<Sent> = (0..4).map(|i| Kind::Mix.of(i)).collect();
        assert_eq!(kinds, [Sent::Edit, Sent::Comment, Sent::Cursor, Sent::Edit]);
        assert_eq!(Kind::Mix.essential(200), 134);
        assert_eq!(Kind::Mix.last_cursor(200), Some(197));
        assert_eq!(Kind::Mix.last_cursor(2), None);
        assert_eq!(Kind::Comment.essential(200), 200);
        assert_eq!(Kind::Cursor.essential(200), 0);
        assert_eq!(Kind::Cursor.last_cursor(200), Some(199));
    }

    #[test]
    fn inserts_stay_within_the_known_document() {
        for lines in 0..50 {
            for index in 0..50 {
                assert!(insert_line(index, index % 7, lines) <= lines);
            }
        }
        // Spread over the file, not all at one line.
        let spread: HashSet<u64> = (0..20).map(|i| insert_line(i, 1, 100)).collect();
        assert!(spread.len() > 10);
    }
}
