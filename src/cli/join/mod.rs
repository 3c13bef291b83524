//! `codereview join --session S --user U`: an interactive participant.
//!
//! Lines on stdin are commands; events print one per line (human-readable,
//! or JSON with `--json`). It keeps a replica of the files and runs the
//! client half of the OT, so its copy converges with the server's.
//!
//! ```text
//!            connect + Join{resume_after, epoch}           CAUGHT_UP: resend
//!  (start) ──────────────────────────────────► catching up ─────────────► live
//!     │ the first connection fails:               ▲                        │ │
//!     │ exit 1 at once (setup errors: exit 2)     │ backoff: random(0,     │ │
//!     ▼                                           │ min(cap, base·2^n)),   │ │
//!   (exit)                                        │ give up after N tries  │ │
//!                                                 └────────────────────────┘ │
//!             broken stream / GOAWAY / UNAVAILABLE / going-away notice       │
//!             (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT: exit 1) │
//!                                                                            ▼
//!   quit / end of input: send what waits, wait for the answers (at most
//!   --quit-timeout, reconnecting if need be), LEFT, exit 0; anything left
//!   unanswered, refused or dropped: exit 1
//! ```
//!
//! Backoff is for connections that were up: a first connection that fails
//! (a wrong address, a dead server, TLS spoken wrongly) ends the command at
//! once with the reason.
//!
//! Commands (0-based lines): `edit FILE LINE TEXT` (replace), `insert FILE
//! LINE TEXT`, `delete FILE LINE`, `comment LINE TEXT`, `cursor FILE LINE
//! COL`, `show [FILE]`, `quit`. End of input is `quit`. Commands typed before
//! the first catch-up wait for it (the document is unknown until then); all
//! are sent on `quit` before leaving, so `printf 'edit f 0 x\nquit\n' | join`
//! applies its edit or fails.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use argh::FromArgs;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use super::connect::{ClientError, Connector, FailureKind, describe};
use super::render::Style;
use crate::grpc::client::{CallOptions, CallReceiver, CallSender, Channel};
use crate::grpc::{Code, Status};
use crate::pb::codereview::{
    Join, PresenceUpdate, SessionMessage, presence_update::Status as Presence,
    session_message::Payload,
};
use crate::pb::paths::COLLABORATIVE_SESSION;
use crate::review::replica::Replica;

mod commands;
mod participant;

use commands::random_u64;
pub use commands::{Command, backoff_delay, parse_command};
use participant::Participant;

crate::cli::connect::client_flags! {
    /// join a session as a participant: commands on stdin, events on stdout
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "join")]
    #[argh(help_triggers("-h", "--help", "help"))]
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
        /// on quit or end of input, how long to wait for the server to acknowledge what was typed (default 5s)
        #[argh(option, default = "Duration::from_secs(5)", from_str_fn(super::parse_duration))]
        pub quit_timeout: Duration,
    }
}

/// How long to wait, after LEFT, for the server to end the stream.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Statuses that reconnecting cannot fix.
pub(super) fn is_fatal(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::DeadlineExceeded
    )
}

/// Why a connection ended.
pub(super) enum Ended {
    Quit,
    Fatal(ClientError),
    /// Reconnect; `now` skips the backoff (the server asked us to move).
    Reconnect {
        reason: String,
        now: bool,
    },
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

pub async fn run(args: JoinArgs) -> Result<(), ClientError> {
    if args.session.is_empty() || args.user.is_empty() {
        return Err(ClientError::setup("--session and --user must not be empty"));
    }
    // Every setup mistake (address, TLS files, token file) is reported now:
    // retrying cannot fix it.
    let connector = args.client_options().prepare()?;
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
        quitting: None,
        role: None,
        ever_caught_up: false,
        early: VecDeque::new(),
        not_applied: 0,
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut attempt = 0u32;
    let mut last_error;
    loop {
        match connect(&connector, &mut me).await {
            Ok(connection) => {
                let ended = live(&mut me, connection, &mut stdin, &mut stdin_open).await;
                // Only a connection that got as far as live events counts as
                // a success: an endpoint that accepts and hangs up must not
                // reset the count forever.
                if me.caught_up {
                    attempt = 0;
                }
                match ended {
                    Ended::Quit => return me.finish(),
                    Ended::Fatal(error) => return Err(error),
                    Ended::Reconnect { reason, now } => {
                        if !me.ever_caught_up && !now {
                            // Never joined: a setup or address mistake
                            // more likely than a network blip.
                            return Err(ClientError::runtime(reason));
                        }
                        me.say(&format!("disconnected: {reason}"));
                        last_error = reason;
                        if now {
                            continue;
                        }
                    }
                }
            }
            Err(Ended::Fatal(error)) => return Err(error),
            Err(Ended::Reconnect { reason, .. }) => {
                if !me.ever_caught_up {
                    // The first connection failed: say so at once. Backoff
                    // is for connections that were up.
                    return Err(ClientError::runtime(reason));
                }
                last_error = reason;
            }
            Err(Ended::Quit) => return me.finish(),
        }
        if me.quit_expired() || (me.quitting.is_some() && me.waiting() == 0) {
            return me.finish();
        }
        attempt += 1;
        if attempt > me.args.max_attempts {
            return Err(ClientError::runtime(format!(
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
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                _ = sleep_until_opt(me.quitting) => return me.finish(),
                line = next_line(&mut stdin, &mut stdin_open), if stdin_open && me.quitting.is_none() => {
                    let command = match line {
                        Some(line) => parse_command(&line),
                        None => Ok(Some(Command::Quit)),
                    };
                    match command {
                        Ok(Some(command)) => me.command(command, None),
                        Ok(None) => {}
                        Err(why) => me.say(&why),
                    }
                    if me.quitting.is_some() && me.waiting() == 0 {
                        return me.finish();
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
async fn connect(connector: &Connector, me: &mut Participant) -> Result<Connection, Ended> {
    let channel = match connector.connect().await {
        Ok(channel) => channel,
        Err(error) if error.kind == FailureKind::Setup => return Err(Ended::Fatal(error)),
        Err(error) => {
            return Err(Ended::Reconnect {
                reason: error.message,
                now: false,
            });
        }
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
        Ended::Fatal(ClientError::runtime(describe(status)))
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
        if me.quit_expired() {
            // Out of time: dropping the call ends the stream (the server
            // takes that as leaving); `finish` reports what is unanswered.
            return Ended::Quit;
        }
        if me.quitting.is_some() && me.caught_up && me.waiting() == 0 && sender.pending_bytes() == 0
        {
            return leave(me, sender, receiver).await;
        }
        tokio::select! {
            message = receiver.message::<SessionMessage>() => match message {
                Ok(Some(message)) => {
                    if let Some(ended) = me.receive(message, &mut sender) {
                        return ended;
                    }
                }
                Ok(None) => {
                    return Ended::Reconnect { reason: "the server ended the stream".into(), now: false };
                }
                Err(status) => return status_ended(&status),
            },
            flushed = sender.flush(), if sender.pending_bytes() > 0 => {
                if let Err(status) = flushed {
                    return call_status(me, &mut sender, &mut receiver, status).await;
                }
            }
            _ = sleep_until_opt(me.quitting) => {}
            line = next_line(stdin, stdin_open), if *stdin_open && me.quitting.is_none() => {
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

/// Everything typed has been answered: says goodbye (LEFT) and reads until
/// the server, having processed everything before it, ends the stream.
async fn leave(me: &mut Participant, mut sender: CallSender, mut receiver: CallReceiver) -> Ended {
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
    tokio::time::timeout(LEAVE_TIMEOUT, drain)
        .await
        .unwrap_or(Ended::Quit)
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
