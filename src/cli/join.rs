//! `codereview join --session S --user U`: an interactive participant.
//!
//! Lines on stdin are commands; events print one per line (human-readable,
//! or JSON with `--json`). It keeps a replica of the files and runs the
//! client half of the OT, so its copy converges with the server's.
//!
//! ```text
//!            connect + Join{resume_after, epoch}      CAUGHT_UP: resend
//!  (start) ──────────────────────────────────► catching up ─────────► live
//!     ▲                                                                │
//!     │ backoff: random(0, min(cap, base·2^n)), give up after N tries   │
//!     └──── broken stream / GOAWAY / UNAVAILABLE / going-away notice ◄──┘
//!           (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT: fatal)
//! ```
//!
//! Commands (0-based lines): `edit FILE LINE TEXT` (replace), `insert FILE
//! LINE TEXT`, `delete FILE LINE`, `comment LINE TEXT`, `cursor FILE LINE
//! COL`, `show [FILE]`, `quit`. End of input is `quit`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use super::connect::{ClientError, ClientOptions, describe};
use super::render::{JsonObject, Style, event_line, json_strings};
use crate::grpc::client::{CallOptions, CallReceiver, CallSender, Channel};
use crate::grpc::{Code, Status};
use crate::pb::codereview::{
    Comment, CursorPosition, Join, PresenceUpdate, SessionMessage, TokenRefresh,
    notice::Kind as NoticeKind, presence_update::Status as Presence, session_message::Payload,
};
use crate::review::ot::{self, FileOp, LineOp};
use crate::review::replica::{OutOfSync, Replica, from_wire};
use crate::review::service::COLLABORATIVE_SESSION;

crate::client_flags! {
    /// join a session as a participant: commands on stdin, events on stdout
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "join")]
    pub struct JoinArgs {
        /// the session id
        #[argh(option)]
        pub session: String,
        /// your user id (with a token: its subject)
        #[argh(option)]
        pub user: String,
        /// print events as JSON lines
        #[argh(switch)]
        pub json: bool,
        /// start from a snapshot instead of the recent history
        #[argh(switch)]
        pub snapshot: bool,
        /// deadline of each stream, e.g. 30m (default: none)
        #[argh(option, from_str_fn(super::parse_duration))]
        pub deadline: Option<Duration>,
        /// first reconnection delay (default 1s); it doubles per attempt
        #[argh(option, default = "Duration::from_secs(1)", from_str_fn(super::parse_duration))]
        pub backoff: Duration,
        /// longest reconnection delay (default 30s)
        #[argh(option, default = "Duration::from_secs(30)", from_str_fn(super::parse_duration))]
        pub backoff_max: Duration,
        /// reconnection attempts before giving up (default 10)
        #[argh(option, default = "10")]
        pub max_attempts: u32,
        /// messages that may wait for the server while disconnected (default 1000)
        #[argh(option, default = "1000")]
        pub buffer: usize,
    }
}

/// A command typed on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Edit {
        op: FileOp,
    },
    Comment {
        line: u32,
        text: String,
    },
    Cursor {
        path: String,
        line: u32,
        column: u32,
    },
    Show {
        path: Option<String>,
    },
    Quit,
}

fn number(word: Option<&str>, what: &str) -> Result<u32, String> {
    let word = word.ok_or_else(|| format!("missing {what}"))?;
    word.parse::<u32>()
        .map_err(|_| format!("{what} must be a number >= 0 (lines are 0-based), got {word:?}"))
}

/// Parses one stdin line. Pure.
pub fn parse_command(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let mut parts = trimmed.splitn(4, ' ');
    let verb = parts.next().unwrap_or("");
    let path = |p: Option<&str>| -> Result<Arc<str>, String> {
        match p {
            Some(p) if !p.is_empty() => Ok(Arc::from(p)),
            _ => Err("missing FILE".into()),
        }
    };
    let command = match verb {
        "edit" | "insert" => {
            let file = path(parts.next())?;
            let line_no = number(parts.next(), "LINE")?;
            let text: Arc<str> = Arc::from(parts.next().unwrap_or(""));
            let op = if verb == "edit" {
                LineOp::Replace {
                    line: line_no,
                    text,
                }
            } else {
                LineOp::Insert {
                    line: line_no,
                    text,
                }
            };
            Command::Edit {
                op: FileOp { path: file, op },
            }
        }
        "delete" => {
            let file = path(parts.next())?;
            let line_no = number(parts.next(), "LINE")?;
            if parts.next().is_some() {
                return Err("usage: delete FILE LINE".into());
            }
            Command::Edit {
                op: FileOp {
                    path: file,
                    op: LineOp::Delete { line: line_no },
                },
            }
        }
        "comment" => {
            let mut parts = trimmed.splitn(3, ' ').skip(1);
            let line_no = number(parts.next(), "LINE")?;
            let text = parts.next().unwrap_or("").to_owned();
            if text.trim().is_empty() {
                return Err("usage: comment LINE TEXT".into());
            }
            Command::Comment {
                line: line_no,
                text,
            }
        }
        "cursor" => {
            let file = path(parts.next())?.to_string();
            let line_no = number(parts.next(), "LINE")?;
            let column = number(parts.next(), "COL")?;
            Command::Cursor {
                path: file,
                line: line_no,
                column,
            }
        }
        "show" => Command::Show {
            path: parts.next().map(str::to_owned),
        },
        "quit" | "exit" => Command::Quit,
        other => {
            return Err(format!(
                "unknown command {other:?}; try: edit FILE LINE TEXT | insert FILE LINE TEXT | delete FILE LINE | \
                 comment LINE TEXT | cursor FILE LINE COL | show [FILE] | quit"
            ));
        }
    };
    Ok(Some(command))
}

/// Full-jitter exponential backoff: a random delay in [0, min(cap, base·2^attempt)].
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, random: u64) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let nanos = ceiling.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % (nanos + 1))
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}

/// Statuses that reconnecting cannot fix.
fn is_fatal(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::DeadlineExceeded
    )
}

/// Why a connection ended.
enum Ended {
    Quit,
    Fatal(ClientError),
    /// Reconnect; `now` skips the backoff (the server asked us to move).
    Reconnect {
        reason: String,
        now: bool,
    },
}

/// The participant's state across connections.
struct Participant {
    args: JoinArgs,
    style: Style,
    replica: Replica,
    last_sequence: Option<u64>,
    epoch: u64,
    next_client_sequence: u64,
    pending_comments: VecDeque<(u64, Comment)>,
    pending_cursor: Option<CursorPosition>,
    caught_up: bool,
    want_snapshot: bool,
    quitting: bool,
    /// The role the server gave us (edits are checked locally too).
    role: Option<crate::pb::codereview::Role>,
    /// Whether the document has been known since the start.
    ever_caught_up: bool,
    /// Commands typed before the first catch-up (the document was unknown).
    early: VecDeque<Command>,
}

impl Participant {
    fn say(&self, text: &str) {
        match self.style {
            Style::Human => eprintln!("codereview join: {text}"),
            Style::Json => println!(
                "{}",
                JsonObject::new()
                    .str("type", "status")
                    .str("text", text)
                    .finish()
            ),
        }
    }

    fn waiting(&self) -> usize {
        self.replica.pending().count() + self.pending_comments.len() + self.early.len()
    }

    fn message(&self, payload: Payload, client_sequence: u64) -> SessionMessage {
        SessionMessage {
            session_id: self.args.session.clone(),
            user_id: self.args.user.clone(),
            timestamp: crate::review::now_unix_ms(),
            payload: Some(payload),
            sequence: 0,
            client_sequence,
        }
    }

    fn take_client_sequence(&mut self) -> u64 {
        let n = self.next_client_sequence;
        self.next_client_sequence += 1;
        n
    }

    /// Handles a typed command; what to send (if live) is queued on `sender`.
    fn command(&mut self, command: Command, sender: Option<&mut CallSender>) {
        let refusal = match command {
            Command::Edit { .. } => Some("not applied"),
            Command::Comment { .. } => Some("not sent"),
            _ => None,
        };
        if let Some(refusal) = refusal
            && self.waiting() >= self.args.buffer
        {
            self.say(&format!(
                "{refusal}: {} messages are already waiting for the server (limit {})",
                self.waiting(),
                self.args.buffer
            ));
            return;
        }
        if !self.ever_caught_up
            && matches!(
                command,
                Command::Edit { .. } | Command::Comment { .. } | Command::Cursor { .. }
            )
        {
            // The document is not known yet: keep the command until it is.
            self.early.push_back(command);
            return;
        }
        let live = self.caught_up && sender.is_some();
        match command {
            Command::Edit { op } => {
                if let Some(role) = self.role
                    && role != crate::pb::codereview::Role::Author
                {
                    let role = role.as_str_name().to_lowercase();
                    let article = if role.starts_with(['a', 'e', 'i', 'o', 'u']) {
                        "an"
                    } else {
                        "a"
                    };
                    self.say(&format!("not applied: {article} {role} may not edit"));
                    return;
                }
                let len = self.replica.file(&op.path).map_or(0, <[_]>::len);
                if let Err(ot::ApplyError::OutOfRange(why)) = ot::check(len, &op.op) {
                    self.say(&format!("not applied: {why}"));
                    return;
                }
                let client_sequence = self.take_client_sequence();
                match self.replica.local_edit(op, client_sequence) {
                    Ok(edit) => {
                        if live && let Some(sender) = sender {
                            sender.queue(&self.message(Payload::Edit(edit), client_sequence));
                        }
                    }
                    Err(ot::ApplyError::OutOfRange(why)) => {
                        self.say(&format!("not applied: {why}"))
                    }
                }
            }
            Command::Comment { line, text } => {
                let client_sequence = self.take_client_sequence();
                let comment = Comment {
                    comment_id: String::new(),
                    line_number: line as i32,
                    text,
                    file_path: String::new(),
                };
                if live && let Some(sender) = sender {
                    sender.queue(&self.message(Payload::Comment(comment.clone()), client_sequence));
                }
                self.pending_comments.push_back((client_sequence, comment));
            }
            Command::Cursor { path, line, column } => {
                let cursor = CursorPosition {
                    file_path: path,
                    line: line as i32,
                    column: column as i32,
                };
                if live && let Some(sender) = sender {
                    sender.queue(&self.message(Payload::Cursor(cursor), 0));
                } else {
                    self.pending_cursor = Some(cursor);
                }
            }
            Command::Show { path } => self.show(path.as_deref()),
            Command::Quit => self.quitting = true,
        }
    }

    fn show(&self, only: Option<&str>) {
        match self.style {
            Style::Json => {
                let mut files = String::from("{");
                for (path, lines) in self.replica.files() {
                    if only.is_some_and(|o| o != &**path) {
                        continue;
                    }
                    if files.len() > 1 {
                        files.push(',');
                    }
                    crate::logging::push_json_string(&mut files, path);
                    files.push(':');
                    files.push_str(&json_strings(lines.iter().map(|l| &**l)));
                }
                files.push('}');
                println!(
                    "{}",
                    JsonObject::new()
                        .str("type", "document")
                        .int("version", self.replica.version().into())
                        .uint("pending", self.waiting() as u64)
                        .raw("files", &files)
                        .finish()
                );
            }
            Style::Human => {
                println!(
                    "document at version {} ({} waiting)",
                    self.replica.version(),
                    self.waiting()
                );
                for (path, lines) in self.replica.files() {
                    if only.is_some_and(|o| o != &**path) {
                        continue;
                    }
                    println!("== {path}");
                    for (i, line) in lines.iter().enumerate() {
                        println!("{i:>5} | {line}");
                    }
                }
            }
        }
    }

    /// Sends everything waiting (after catch-up) in client-sequence order:
    /// the server answers a number at or below one it has processed as a
    /// duplicate, so edits and comments must not overtake each other.
    fn resend(&mut self, sender: &mut CallSender) {
        let mut waiting: Vec<(u64, Payload)> = self
            .replica
            .resend()
            .into_iter()
            .map(|(cs, edit)| (cs, Payload::Edit(edit)))
            .chain(
                self.pending_comments
                    .iter()
                    .map(|(cs, c)| (*cs, Payload::Comment(c.clone()))),
            )
            .collect();
        waiting.sort_by_key(|(cs, _)| *cs);
        for (client_sequence, payload) in waiting {
            sender.queue(&self.message(payload, client_sequence));
        }
        if let Some(cursor) = self.pending_cursor.take() {
            sender.queue(&self.message(Payload::Cursor(cursor), 0));
        }
    }

    /// Handles one message from the server.
    fn receive(&mut self, message: SessionMessage, sender: &mut CallSender) -> Option<Ended> {
        if let Some(line) = event_line(&message, self.style) {
            println!("{line}");
        }
        let essential = match &message.payload {
            Some(Payload::Edit(_) | Payload::Comment(_) | Payload::File(_)) => true,
            Some(Payload::Presence(p)) => {
                p.status == Presence::Joined as i32 || p.status == Presence::Left as i32
            }
            Some(Payload::Ack(a)) => a.sequence != 0 && !a.duplicate,
            _ => false,
        };
        if essential && message.sequence != 0 {
            self.last_sequence = Some(message.sequence);
        }
        match message.payload? {
            Payload::Joined(joined) => {
                self.epoch = joined.session_epoch;
                self.role = crate::pb::codereview::Role::try_from(joined.role).ok();
                if joined.catchup != crate::pb::codereview::joined::Catchup::Snapshot as i32
                    && self.last_sequence.is_none()
                {
                    // History starts from the beginning of what is kept.
                    self.last_sequence = Some(0);
                }
            }
            Payload::Snapshot(snapshot) => {
                let dropped = self.replica.reset(&snapshot);
                if !dropped.is_empty() {
                    self.say(&format!(
                        "{} local edits could not be rebased on the snapshot and were dropped",
                        dropped.len()
                    ));
                }
                self.last_sequence = Some(snapshot.sequence);
            }
            Payload::Notice(notice) => match NoticeKind::try_from(notice.kind) {
                Ok(NoticeKind::CaughtUp) => {
                    self.caught_up = true;
                    self.ever_caught_up = true;
                    self.resend(sender);
                    while let Some(command) = self.early.pop_front() {
                        self.command(command, Some(sender));
                    }
                }
                Ok(NoticeKind::GoingAway) => {
                    return Some(Ended::Reconnect {
                        reason: "the server is going away".into(),
                        now: true,
                    });
                }
                Ok(NoticeKind::TokenExpiring) => self.refresh_token(sender),
                _ => {}
            },
            Payload::Edit(edit) => {
                if let Some(op) = from_wire(&edit)
                    && let Err(gap) = self.replica.remote(op, edit.version)
                {
                    return Some(self.resync(gap));
                }
            }
            Payload::File(file) => {
                if let Err(gap) =
                    self.replica
                        .remote_file(&file.file_path, &file.lines, file.version)
                {
                    return Some(self.resync(gap));
                }
            }
            Payload::Ack(ack) => {
                self.replica.ack(ack.client_sequence, ack.version);
                self.pending_comments
                    .retain(|(cs, _)| *cs > ack.client_sequence || ack.client_sequence == 0);
            }
            Payload::Error(error) => {
                self.pending_comments
                    .retain(|(cs, _)| *cs != error.client_sequence);
                if error.client_sequence != 0 && self.replica.refused(error.client_sequence) {
                    self.want_snapshot = true;
                    return Some(Ended::Reconnect {
                        reason: "an edit was refused: resyncing".into(),
                        now: true,
                    });
                }
            }
            _ => {}
        }
        None
    }

    /// The replica missed a version: reconnect for a snapshot.
    fn resync(&mut self, gap: OutOfSync) -> Ended {
        self.want_snapshot = true;
        Ended::Reconnect {
            reason: format!(
                "out of sync (expected version {}, got {}): resyncing",
                gap.expected, gap.got
            ),
            now: true,
        }
    }

    fn refresh_token(&mut self, sender: &mut CallSender) {
        let Some(path) = &self.args.token_file else {
            self.say("the token expires soon and there is no --token-file to refresh it from");
            return;
        };
        match super::connect::read_token_file(path) {
            Ok(token) => {
                sender.queue(&self.message(Payload::TokenRefresh(TokenRefresh { token }), 0));
                self.say("token refreshed from the token file");
            }
            Err(error) => self.say(&error.0),
        }
    }
}

async fn next_line(lines: &mut Lines<BufReader<Stdin>>, open: &mut bool) -> Option<String> {
    match lines.next_line().await {
        Ok(Some(line)) => Some(line),
        _ => {
            *open = false;
            None
        }
    }
}

pub async fn run(args: JoinArgs) -> Result<(), ClientError> {
    if args.session.is_empty() || args.user.is_empty() {
        return Err(ClientError("--session and --user must not be empty".into()));
    }
    let options = args.client_options();
    options.endpoint()?;
    let style = if args.json { Style::Json } else { Style::Human };
    let want_snapshot = args.snapshot;
    let mut me = Participant {
        args,
        style,
        replica: Replica::new(),
        last_sequence: None,
        epoch: 0,
        next_client_sequence: 1,
        pending_comments: VecDeque::new(),
        pending_cursor: None,
        caught_up: false,
        want_snapshot,
        quitting: false,
        role: None,
        ever_caught_up: false,
        early: VecDeque::new(),
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut attempt = 0u32;
    let mut last_error;
    loop {
        match connect(&options, &mut me).await {
            Ok(connection) => {
                let ended = live(&mut me, connection, &mut stdin, &mut stdin_open).await;
                // Only a connection that got as far as live events counts as
                // a success: an endpoint that accepts and hangs up must not
                // reset the count forever.
                if me.caught_up {
                    attempt = 0;
                }
                match ended {
                    Ended::Quit => {
                        me.show(None);
                        return Ok(());
                    }
                    Ended::Fatal(error) => return Err(error),
                    Ended::Reconnect { reason, now } => {
                        me.say(&format!("disconnected: {reason}"));
                        last_error = reason;
                        if now {
                            continue;
                        }
                    }
                }
            }
            Err(Ended::Fatal(error)) => return Err(error),
            Err(Ended::Reconnect { reason, .. }) => last_error = reason,
            Err(Ended::Quit) => return Ok(()),
        }
        attempt += 1;
        if attempt > me.args.max_attempts {
            return Err(ClientError(format!(
                "giving up after {} reconnection attempts; last error: {last_error}",
                me.args.max_attempts
            )));
        }
        let delay = backoff_delay(
            attempt - 1,
            me.args.backoff,
            me.args.backoff_max,
            random_u64(),
        );
        me.say(&format!(
            "reconnecting in {:.1}s (attempt {attempt} of {})",
            delay.as_secs_f64(),
            me.args.max_attempts
        ));
        // Keep taking commands while we wait: they apply locally and wait.
        let wake = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                line = next_line(&mut stdin, &mut stdin_open), if stdin_open => {
                    let command = match line {
                        Some(line) => parse_command(&line),
                        None => Ok(Some(Command::Quit)),
                    };
                    match command {
                        Ok(Some(command)) => me.command(command, None),
                        Ok(None) => {}
                        Err(why) => me.say(&why),
                    }
                    if me.quitting {
                        me.say(&format!("quitting while disconnected: {} messages were not sent", me.waiting()));
                        me.show(None);
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// One connection's call (the channel drives the connection while held).
struct Connection {
    _channel: Channel,
    sender: CallSender,
    receiver: CallReceiver,
}

/// Connects and sends the Join.
async fn connect(options: &ClientOptions, me: &mut Participant) -> Result<Connection, Ended> {
    let classify = |error: ClientError| Ended::Reconnect {
        reason: error.0,
        now: false,
    };
    let channel = match options.connect().await {
        Ok(channel) => channel,
        Err(error) => return Err(classify(error)),
    };
    let call_options = CallOptions {
        timeout: me.args.deadline,
        ..CallOptions::default()
    };
    let call = channel
        .start(COLLABORATIVE_SESSION, call_options)
        .await
        .map_err(|status| status_ended(&status))?;
    let (mut sender, receiver) = call.split();
    let join = Join {
        want_snapshot: me.want_snapshot,
        resume_after_sequence: if me.want_snapshot {
            None
        } else {
            me.last_sequence
        },
        session_epoch: me.epoch,
    };
    me.want_snapshot = false;
    me.caught_up = false;
    sender.queue(&me.message(Payload::Join(join), 0));
    Ok(Connection {
        _channel: channel,
        sender,
        receiver,
    })
}

fn status_ended(status: &Status) -> Ended {
    if is_fatal(status.code()) {
        Ended::Fatal(ClientError(describe(status)))
    } else {
        Ended::Reconnect {
            reason: describe(status),
            now: false,
        }
    }
}

/// Runs one connection until it ends.
async fn live(
    me: &mut Participant,
    connection: Connection,
    stdin: &mut Lines<BufReader<Stdin>>,
    stdin_open: &mut bool,
) -> Ended {
    let Connection {
        _channel,
        mut sender,
        mut receiver,
    } = connection;
    loop {
        if me.quitting && sender.pending_bytes() == 0 {
            // Say goodbye; the server ends the stream once it has processed
            // everything before it.
            let left = me.message(
                Payload::Presence(PresenceUpdate {
                    status: Presence::Left as i32,
                    role: 0,
                }),
                0,
            );
            if let Err(status) = sender.send(&left).await {
                return match call_status(me, &mut sender, &mut receiver, status).await {
                    Ended::Fatal(error) => Ended::Fatal(error),
                    _ => Ended::Quit,
                };
            }
            let drain = async {
                loop {
                    match receiver.message::<SessionMessage>().await {
                        Ok(Some(message)) => {
                            me.receive(message, &mut sender);
                        }
                        Ok(None) => return Ended::Quit,
                        Err(status) if is_fatal(status.code()) => return status_ended(&status),
                        Err(_) => return Ended::Quit,
                    }
                }
            };
            return tokio::time::timeout(Duration::from_secs(5), drain)
                .await
                .unwrap_or(Ended::Quit);
        }
        tokio::select! {
            message = receiver.message::<SessionMessage>() => match message {
                Ok(Some(message)) => {
                    if let Some(ended) = me.receive(message, &mut sender) {
                        return ended;
                    }
                }
                Ok(None) => {
                    return if me.quitting {
                        Ended::Quit
                    } else {
                        Ended::Reconnect { reason: "the server ended the stream".into(), now: false }
                    };
                }
                Err(status) => return status_ended(&status),
            },
            flushed = sender.flush(), if sender.pending_bytes() > 0 => {
                if let Err(status) = flushed {
                    return call_status(me, &mut sender, &mut receiver, status).await;
                }
            }
            line = next_line(stdin, stdin_open), if *stdin_open && !me.quitting => {
                let command = match line {
                    Some(line) => parse_command(&line),
                    None => Ok(Some(Command::Quit)),
                };
                match command {
                    Ok(Some(command)) => me.command(command, Some(&mut sender)),
                    Ok(None) => {}
                    Err(why) => me.say(&why),
                }
            }
        }
    }
}

/// Writing failed: the server may have ended the call, and its status (say
/// UNAUTHENTICATED) explains more than the broken write. Reads what is left
/// for a moment before falling back to the write error.
async fn call_status(
    me: &mut Participant,
    sender: &mut CallSender,
    receiver: &mut CallReceiver,
    write_error: Status,
) -> Ended {
    let read = async {
        loop {
            match receiver.message::<SessionMessage>().await {
                Ok(Some(message)) => {
                    me.receive(message, sender);
                }
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(1), read).await {
        Ok(Some(status)) => status_ended(&status),
        _ => status_ended(&write_error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_command("edit src/a.rs 3 let x = 1;").unwrap(),
            Some(Command::Edit {
                op: FileOp {
                    path: Arc::from("src/a.rs"),
                    op: LineOp::Replace {
                        line: 3,
                        text: Arc::from("let x = 1;")
                    }
                }
            })
        );
        assert_eq!(
            parse_command("delete a 0").unwrap(),
            Some(Command::Edit {
                op: FileOp {
                    path: Arc::from("a"),
                    op: LineOp::Delete { line: 0 }
                }
            })
        );
        assert_eq!(
            parse_command("comment 4 needs a test").unwrap(),
            Some(Command::Comment {
                line: 4,
                text: "needs a test".into()
            })
        );
        assert_eq!(
            parse_command("cursor a.rs 1 2").unwrap(),
            Some(Command::Cursor {
                path: "a.rs".into(),
                line: 1,
                column: 2
            })
        );
        assert_eq!(parse_command("  ").unwrap(), None);
        assert_eq!(parse_command("quit").unwrap(), Some(Command::Quit));
        assert!(parse_command("edit a -1 x").is_err());
        assert!(parse_command("dance").is_err());
        assert!(parse_command("comment 3").is_err());
        assert_eq!(
            parse_command("insert f 0").unwrap(),
            Some(Command::Edit {
                op: FileOp {
                    path: Arc::from("f"),
                    op: LineOp::Insert {
                        line: 0,
                        text: Arc::from("")
                    }
                }
            })
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_a_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        assert_eq!(backoff_delay(0, base, cap, 0), Duration::ZERO);
        assert!(backoff_delay(0, base, cap, u64::MAX) <= base);
        assert!(backoff_delay(3, base, cap, u64::MAX) <= Duration::from_secs(8));
        assert!(backoff_delay(10, base, cap, u64::MAX) <= cap);
        // Spread: different random inputs give different delays.
        let a = backoff_delay(4, base, cap, 12_345);
        let b = backoff_delay(4, base, cap, 987_654_321);
        assert_ne!(a, b);
    }
}
