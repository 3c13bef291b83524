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
use std::time::Duration;

use argh::FromArgs;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use super::connect::{ClientError, ClientOptions, describe};
use super::render::Style;
use crate::grpc::client::{CallOptions, CallReceiver, CallSender, Channel};
use crate::grpc::{Code, Status};
use crate::pb::codereview::{
    Join, PresenceUpdate, SessionMessage, presence_update::Status as Presence,
    session_message::Payload,
};
use crate::review::replica::Replica;
use crate::review::service::COLLABORATIVE_SESSION;

mod commands;
mod participant;

use commands::random_u64;
pub use commands::{Command, backoff_delay, parse_command};
use participant::Participant;

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
