//! The registry's face: the handle streams use to talk to the registry
//! task, the commands it carries, and what comes back.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::super::error::{ErrorKind, ReviewError};
use super::super::ids::{MemberId, Text};
use super::super::outbox::Taken;
use super::super::roles::Role;
use super::super::session::{TokenWindow, UploadOutcome};
use super::super::validate::{ClientMessage, JoinOptions};
use crate::pb::codereview::Snapshot;

/// How a member's stream must end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The session ended it (slow, replaced, token expired, drained).
    Closed(ReviewError),
    /// The participant said LEFT: end with OK.
    Finished,
}

/// A joined member: its id and the signal that ends its stream.
#[derive(Debug)]
pub struct Membership {
    pub member: MemberId,
    pub ending: oneshot::Receiver<Ending>,
}

/// Registry-wide figures (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub sessions: usize,
    pub participants: usize,
    pub watchers: usize,
    pub members: usize,
    pub users_remembered: usize,
    pub outbox_bytes: usize,
    pub history_bytes: usize,
    pub content_bytes: usize,
    /// The memory budget's count (every session's estimate).
    pub memory_bytes: usize,
    /// Sessions not served because their stored log is damaged.
    pub failed_sessions: usize,
    /// Disk used by the store (segments and snapshots; 0 in memory).
    pub disk_bytes: u64,
    pub parked_pulls: usize,
}

pub(super) enum Command {
    Join {
        session_id: Text,
        user_id: Text,
        role: Role,
        options: JoinOptions,
        token: Option<TokenWindow>,
        reply: oneshot::Sender<Result<Membership, ReviewError>>,
    },
    Watch {
        session_id: Text,
        options: JoinOptions,
        token: Option<TokenWindow>,
        reply: oneshot::Sender<Result<Membership, ReviewError>>,
    },
    Message {
        member: MemberId,
        message: ClientMessage,
    },
    /// Several messages of one member that were waiting together, in order
    /// (one command instead of one each).
    Messages {
        member: MemberId,
        messages: Vec<ClientMessage>,
    },
    Reject {
        member: MemberId,
        client_sequence: u64,
        error: ReviewError,
    },
    Pull {
        member: MemberId,
        max_bytes: usize,
        /// Park until something is pending (else answer at once, maybe empty).
        mode: PullMode,
        reply: oneshot::Sender<Taken>,
    },
    Leave {
        member: MemberId,
    },
    RefreshToken {
        member: MemberId,
        token: TokenWindow,
    },
    Snapshot {
        session_id: Text,
        reply: oneshot::Sender<Result<Option<Snapshot>, ReviewError>>,
    },
    Upload {
        session_id: Text,
        user_id: Text,
        role: Role,
        files: Vec<(Text, Vec<Text>)>,
        reply: oneshot::Sender<Result<UploadOutcome, ReviewError>>,
    },
    Drain {
        deadline_ms: i64,
    },
    CloseAll {
        error: ReviewError,
    },
    Stats {
        reply: oneshot::Sender<RegistryStats>,
    },
}

/// What a pull waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PullMode {
    /// The next batch that may go (up to `max_bytes`).
    Next,
    /// Everything queued, once all of it may go.
    All,
}

/// The registry's address; cheap to clone.
#[derive(Clone, Debug)]
pub struct RegistryHandle {
    pub(super) tx: mpsc::Sender<Command>,
    /// Pulls travel apart and are served first, so a participant that keeps
    /// up is never queued behind another's burst of messages.
    pub(super) pulls: mpsc::Sender<Command>,
}

fn gone() -> ReviewError {
    ReviewError::new(ErrorKind::Unavailable, "the server is shutting down")
}

/// A command on its way into one of the registry's inboxes: handed over at
/// once when the inbox has room, so the future holds nothing; only a full
/// inbox makes it wait, boxed. Every stream's task awaits these, and a task
/// is as large as the largest thing it awaits: an inline `Sender::send`
/// (the command and its place in the queue, 360 bytes) would be carried by
/// every idle stream for its whole life.
enum Sending<'a> {
    Done(Option<Result<(), ReviewError>>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), ReviewError>> + Send + 'a>>),
}

impl<'a> Sending<'a> {
    fn new(inbox: &'a mpsc::Sender<Command>, command: Command) -> Sending<'a> {
        // A try_send never overtakes a waiting send: freed room goes to the
        // queue of waiters first, so the order of commands is kept.
        match inbox.try_send(command) {
            Ok(()) => Sending::Done(Some(Ok(()))),
            Err(TrySendError::Closed(_)) => Sending::Done(Some(Err(gone()))),
            Err(TrySendError::Full(command)) => Sending::Waiting(Box::pin(async move {
                inbox.send(command).await.map_err(|_| gone())
            })),
        }
    }
}

impl Future for Sending<'_> {
    type Output = Result<(), ReviewError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Sending::Done(result) => Poll::Ready(result.take().unwrap_or_else(|| Err(gone()))),
            Sending::Waiting(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

impl RegistryHandle {
    fn send(&self, command: Command) -> Sending<'_> {
        Sending::new(&self.tx, command)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ReviewError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| gone())
    }

    pub async fn join(
        &self,
        session_id: Text,
        user_id: Text,
        role: Role,
        options: JoinOptions,
        token: Option<TokenWindow>,
    ) -> Result<Membership, ReviewError> {
        self.ask(|reply| Command::Join {
            session_id,
            user_id,
            role,
            options,
            token,
            reply,
        })
        .await?
    }

    pub async fn watch(
        &self,
        session_id: Text,
        options: JoinOptions,
        token: Option<TokenWindow>,
    ) -> Result<Membership, ReviewError> {
        self.ask(|reply| Command::Watch {
            session_id,
            token,
            options,
            reply,
        })
        .await?
    }

    /// Submits a validated message; returns once the registry accepted it
    /// (its inbox is bounded, so a busy registry pushes back here).
    pub async fn message(
        &self,
        member: MemberId,
        message: ClientMessage,
    ) -> Result<(), ReviewError> {
        self.send(Command::Message { member, message }).await
    }

    /// Hands the registry a member's messages, in order (a batch of one is
    /// sent as [`RegistryHandle::message`]).
    pub async fn messages(
        &self,
        member: MemberId,
        mut messages: Vec<ClientMessage>,
    ) -> Result<(), ReviewError> {
        match messages.len() {
            0 => Ok(()),
            1 => {
                let message = messages.pop().expect("one message");
                self.message(member, message).await
            }
            _ => self.send(Command::Messages { member, messages }).await,
        }
    }

    pub async fn reject(
        &self,
        member: MemberId,
        client_sequence: u64,
        error: ReviewError,
    ) -> Result<(), ReviewError> {
        self.send(Command::Reject {
            member,
            client_sequence,
            error,
        })
        .await
    }

    /// Asks for the member's next batch (answered when there is one).
    pub async fn pull(
        &self,
        member: MemberId,
        max_bytes: usize,
    ) -> Result<oneshot::Receiver<Taken>, ReviewError> {
        let (reply, rx) = oneshot::channel();
        let pull = Command::Pull {
            member,
            max_bytes,
            mode: PullMode::Next,
            reply,
        };
        Sending::new(&self.pulls, pull).await?;
        Ok(rx)
    }

    /// Takes everything queued for the member, once all of it may go (what
    /// waits for the durable log is waited for).
    pub async fn take_all(&self, member: MemberId) -> Taken {
        self.ask(|reply| Command::Pull {
            member,
            max_bytes: usize::MAX,
            mode: PullMode::All,
            reply,
        })
        .await
        .unwrap_or_default()
    }

    pub async fn leave(&self, member: MemberId) {
        let _ = self.send(Command::Leave { member }).await;
    }

    /// Leaves without waiting (from a destructor).
    pub fn leave_soon(&self, member: MemberId) {
        if let Err(mpsc::error::TrySendError::Full(command)) =
            self.tx.try_send(Command::Leave { member })
        {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(command).await;
            });
        }
    }

    pub async fn refresh_token(
        &self,
        member: MemberId,
        token: TokenWindow,
    ) -> Result<(), ReviewError> {
        self.send(Command::RefreshToken { member, token }).await
    }

    pub async fn snapshot(&self, session_id: Text) -> Result<Option<Snapshot>, ReviewError> {
        self.ask(|reply| Command::Snapshot { session_id, reply })
            .await?
    }

    pub async fn upload(
        &self,
        session_id: Text,
        user_id: Text,
        role: Role,
        files: Vec<(Text, Vec<Text>)>,
    ) -> Result<UploadOutcome, ReviewError> {
        self.ask(|reply| Command::Upload {
            session_id,
            user_id,
            role,
            files,
            reply,
        })
        .await?
    }

    /// Tells every member the server is going away by `deadline_ms`.
    pub async fn drain(&self, deadline_ms: i64) {
        let _ = self.send(Command::Drain { deadline_ms }).await;
    }

    /// Ends every member with `error`.
    pub async fn close_all(&self, error: ReviewError) {
        let _ = self.send(Command::CloseAll { error }).await;
    }

    pub async fn stats(&self) -> Result<RegistryStats, ReviewError> {
        self.ask(|reply| Command::Stats { reply }).await
    }
}
