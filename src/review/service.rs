//! `codereview.v1.CodeReviewService` on the wire layer: the four RPCs, each a
//! thin adapter between a gRPC call and the registry (and the browser's two,
//! in [`super::web_service`], on the same participant loop).
//!
//! A session stream's task:
//!
//! ```text
//!  first message ─► identity + principal checks ─► registry.join ─┐
//!  ┌──────────────────────────────────────────────────────────────┘
//!  └► loop: inbound messages ─► validate ─► registry (those already received
//!           together go as one command; capacity released after)
//!           pulled batch ─► sink (one write per batch, as flow control allows)
//!           ending signal ─► final status (slow, replaced, expired, drained)
//!           max stream duration ─► UNAVAILABLE (reconnect and resume)
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::error::{ErrorKind, ReviewError};
use super::ids::{MemberId, Text};
use super::limits::Limits;
use super::outbox::Taken;
use super::principal::Principal;
use super::registry::{Ending, Membership, RegistryHandle};
use super::session::TokenWindow;
use super::upload::UploadAssembly;
use super::validate::{self, Action, ClientMessage, ClientPresence, JoinOptions, StreamIdentity};
use crate::grpc::server::{Request, RequestHead, Response, ResponseSink, Router, Streaming};
use crate::grpc::{Metadata, Status};
use crate::log;
use crate::pb::codereview::{
    FileChunk, SessionMessage, Snapshot, SnapshotRequest, UploadSummary, WatchRequest,
};

use crate::pb::paths::{COLLABORATIVE_SESSION, GET_SNAPSHOT, UPLOAD_FILES, WATCH_SESSION};

/// How long a half-closed participant's queued messages may take to deliver.
const HALF_CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// Checks a bearer token presented mid-stream (a `token_refresh`).
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str) -> Result<Principal, ReviewError>;
}

/// The most messages, and content bytes, a stream hands the registry in one
/// command (those already received together; see `Service::participant`).
const BATCH_MESSAGES: usize = 32;
const BATCH_CONTENT_BYTES: usize = 64 * 1024;

/// How much a stream takes from its outbox per write, by default: the
/// registry copies it into one buffer the stream holds until written.
pub const DEFAULT_BATCH_BYTES: usize = 64 * 1024;

/// The service's settings.
#[derive(Clone)]
pub struct ServiceConfig {
    pub limits: Arc<Limits>,
    /// Streams are ended with UNAVAILABLE after this long (reconnect and
    /// resume); `None` for no limit (default 24 h).
    pub max_stream_duration: Option<Duration>,
    /// The most a stream takes from its outbox per write (default 64 KiB).
    pub batch_bytes: usize,
    /// Whether calls must carry a principal (authentication on).
    pub auth_required: bool,
    /// Verifies refreshed tokens.
    pub verifier: Option<Arc<dyn TokenVerifier>>,
}

impl ServiceConfig {
    pub fn new(limits: Arc<Limits>) -> Self {
        ServiceConfig {
            limits,
            max_stream_duration: Some(Duration::from_secs(24 * 3600)),
            batch_bytes: DEFAULT_BATCH_BYTES,
            auth_required: false,
            verifier: None,
        }
    }
}

pub(super) struct Service {
    pub(super) registry: RegistryHandle,
    pub(super) config: ServiceConfig,
}

/// Registers the four RPCs on `router`.
pub fn register(router: &mut Router, registry: RegistryHandle, config: ServiceConfig) {
    let service = Arc::new(Service { registry, config });
    let s = service.clone();
    // The handler's future is the session's own (an async block around it
    // would keep the request and sink a second time, for the stream's life).
    router.bidi(COLLABORATIVE_SESSION, move |request, sink| {
        s.clone().session(request, sink)
    });
    let s = service.clone();
    router.unary(GET_SNAPSHOT, move |request| {
        let s = s.clone();
        async move { s.get_snapshot(request).await }
    });
    let s = service.clone();
    router.server_streaming(WATCH_SESSION, move |request, sink| {
        let s = s.clone();
        async move { s.watch(request, sink).await }
    });
    let s = service.clone();
    router.client_streaming(UPLOAD_FILES, move |request| {
        let s = s.clone();
        async move { s.upload(request).await }
    });
    super::web_service::register(router, service);
}

/// Where a participant's messages come from.
pub(super) enum Inbox {
    /// Its own CollaborativeSession stream, and the session and user id
    /// strings of the last message, kept for the next one (see
    /// [`Inbox::recycle`]).
    Stream(Streaming<SessionMessage>, SpareIds),
    /// The Send calls routed to it (a browser's Participate call).
    Routed(tokio::sync::mpsc::Receiver<SessionMessage>),
}

/// Every message of the article's clients repeats the session and user
/// ids: decoded into these buffers, kept from one message to the next, they
/// cost no allocation per message.
#[derive(Default)]
pub(super) struct SpareIds {
    session_id: String,
    user_id: String,
}

impl Inbox {
    pub(super) fn stream(inbound: Streaming<SessionMessage>) -> Inbox {
        Inbox::Stream(inbound, SpareIds::default())
    }

    /// The next message; `Ok(None)` when no more will come (a half-close).
    /// Cancel-safe.
    async fn next(&mut self) -> Result<Option<SessionMessage>, Status> {
        match self {
            Inbox::Stream(inbound, spare) => {
                inbound
                    .message_into(|| {
                        let mut session_id = std::mem::take(&mut spare.session_id);
                        let mut user_id = std::mem::take(&mut spare.user_id);
                        session_id.clear();
                        user_id.clear();
                        SessionMessage {
                            session_id,
                            user_id,
                            ..SessionMessage::default()
                        }
                    })
                    .await
            }
            Inbox::Routed(routed) => Ok(routed.recv().await),
        }
    }

    /// Takes back a message's id strings once it is validated, for the next
    /// message to be decoded into.
    fn recycle(&mut self, session_id: String, user_id: String) {
        if let Inbox::Stream(_, spare) = self {
            spare.session_id = session_id;
            spare.user_id = user_id;
        }
    }

    /// The next message if it is here already (None: it would wait).
    fn next_ready(&mut self) -> Option<Result<Option<SessionMessage>, Status>> {
        let next = std::pin::pin!(self.next());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match next.poll(&mut cx) {
            std::task::Poll::Ready(result) => Some(result),
            std::task::Poll::Pending => None,
        }
    }

    fn is_routed(&self) -> bool {
        matches!(self, Inbox::Routed(_))
    }
}

/// A participant's first message, checked: who it is, how it joins, and
/// the message itself when it was more than a join (an article client's
/// first edit or comment; boxed, as the stream's future holds it until
/// the join is done).
struct Admitted {
    identity: StreamIdentity,
    options: JoinOptions,
    pending: Option<Box<ClientMessage>>,
}

/// Messages a participant sent, taken in without waiting (see
/// [`Service::take_in`]): a batch for the registry, then what ended it.
struct Intake {
    batch: Vec<ClientMessage>,
    then: Then,
}

/// What ended an [`Intake`]'s batch, to be done once the batch is handed on.
enum Then {
    /// Nothing more is here yet, or the batch is full.
    Nothing,
    /// A token refresh: the new token's window, or why it was refused.
    Refresh(Result<TokenWindow, (u64, ReviewError)>),
    /// A message refused (its client sequence number and why).
    Reject(u64, ReviewError),
    /// The client half-closed, or said LEFT: it sends no more.
    HalfClosed,
    /// The stream failed.
    Failed(Status),
}

/// What a participant stream's closing log line reports.
#[derive(Debug, Default)]
pub(super) struct StreamTrace {
    session_id: String,
    user_id: String,
    messages_in: u64,
    messages_out: u64,
}

impl StreamTrace {
    /// The "participant stream closed" line.
    pub(super) fn log_closed(
        &self,
        head: &RequestHead,
        started: Instant,
        result: &Result<Metadata, Status>,
    ) {
        self.log_closed_ids(head.connection_id, head.stream_id, started, result);
    }

    fn log_closed_ids(
        &self,
        conn: u64,
        stream: u32,
        started: Instant,
        result: &Result<Metadata, Status>,
    ) {
        let status = match result {
            Ok(_) => Status::ok(),
            Err(status) => status.clone(),
        };
        log!(
            Info,
            "participant stream closed",
            conn = conn,
            stream = stream,
            session_id = self.session_id.as_str(),
            user_id = self.user_id.as_str(),
            status = status.code().name(),
            reason = status.message(),
            duration_ms = started.elapsed().as_millis() as u64,
            messages_in = self.messages_in,
            messages_out = self.messages_out,
        );
    }
}

/// Sends Leave when a member's stream task ends, however it ends.
struct LeaveGuard {
    registry: RegistryHandle,
    member: MemberId,
}

impl Drop for LeaveGuard {
    fn drop(&mut self) {
        self.registry.leave_soon(self.member);
    }
}

impl Service {
    pub(super) fn principal(&self, head: &RequestHead) -> Result<Principal, ReviewError> {
        match head.extensions.get::<Principal>() {
            Some(principal) => Ok(principal.clone()),
            None if self.config.auth_required => Err(ReviewError::new(
                ErrorKind::Unauthenticated,
                "missing credentials",
            )),
            None => Ok(Principal::open()),
        }
    }

    fn check_session_id(&self, session_id: &str) -> Result<Text, ReviewError> {
        validate::session_id(session_id, &self.config.limits)
    }

    /// A participant's stream, logged from open to close with its
    /// correlation fields.
    // Not an async fn: the request is taken apart before the stream's
    // future is made, so the future holds each part once, for its whole
    // life, and never the request they came in.
    fn session(
        self: Arc<Self>,
        request: Request<Streaming<SessionMessage>>,
        mut sink: ResponseSink<SessionMessage>,
    ) -> impl Future<Output = Result<Metadata, Status>> + Send {
        let (head, inbound) = request.into_parts();
        let mut inbox = Inbox::stream(inbound);
        async move {
            let started = Instant::now();
            let mut trace = StreamTrace::default();
            let result = 'stream: {
                let principal = match self.principal(&head) {
                    Ok(principal) => principal,
                    Err(status) => break 'stream Err(status.into()),
                };
                // Say at once that the stream is accepted; clients may wait for it.
                if let Err(status) = sink.send_headers() {
                    break 'stream Err(status);
                }
                // The first message is handed over within the match arm:
                // it is not kept beside the participant's future.
                let participating = match inbox.next().await {
                    Ok(Some(first)) => self.participant(
                        &head, principal, first, &mut inbox, &mut sink, None, &mut trace,
                    ),
                    Ok(None) => break 'stream Ok(Metadata::new()),
                    Err(status) => break 'stream Err(status),
                };
                participating.await
            };
            trace.log_closed_ids(head.connection_id, head.stream_id, started, &result);
            result
        }
    }

    /// A participant from its first message to its end: checks, join, then
    /// its messages from `inbox` into the registry and its batches out to
    /// `sink` (after `greeting`, when there is one). Shared by the bidi
    /// stream and the browser's Participate call.
    // Not an async fn: the first message is checked before the future is
    // made (no await is needed for that), so the future never holds it; the
    // inbox and sink are the caller's, held once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn participant<'a>(
        &'a self,
        head: &'a RequestHead,
        principal: Principal,
        first: SessionMessage,
        inbox: &'a mut Inbox,
        sink: &'a mut ResponseSink<SessionMessage>,
        greeting: Option<Box<SessionMessage>>,
        trace: &'a mut StreamTrace,
    ) -> impl Future<Output = Result<Metadata, Status>> + Send + 'a {
        let admitted = self.admit(&principal, first, trace);
        async move {
            let Admitted {
                identity,
                options,
                pending,
            } = admitted?;
            let Membership { member, mut ending } = self
                .registry
                .join(
                    Text::from(identity.session_id.as_str()),
                    Text::from(identity.user_id.as_str()),
                    principal.role,
                    options,
                    principal.token,
                )
                .await?;
            let _leave = LeaveGuard {
                registry: self.registry.clone(),
                member,
            };
            log!(
                Info,
                "participant joined",
                conn = head.connection_id,
                stream = head.stream_id,
                session_id = identity.session_id.as_str(),
                user_id = identity.user_id.as_str(),
                role = principal.role.name(),
                member = member,
            );
            trace.messages_in = 1;
            if let Some(greeting) = greeting {
                sink.queue(&greeting);
            }
            if let Some(message) = pending {
                self.registry.message(member, *message).await?;
            }
            let batch_bytes = self.config.batch_bytes;
            let mut pull = Some(self.registry.pull(member, batch_bytes).await?);
            // Made once: a timer registered anew on every pass of the loop
            // costs a lock on the timer wheel each time (and one to drop it).
            let stream_deadline = self.config.max_stream_duration.map(|d| Instant::now() + d);
            let too_long = sleep_until_opt(stream_deadline);
            tokio::pin!(too_long);
            loop {
                let mut intake = tokio::select! {
                    biased;
                    end = &mut ending => return finish(end),
                    // Before input: a client that never stops sending must not
                    // outlive its time.
                    _ = &mut too_long => {
                        return Err(stream_too_long().into());
                    }
                    batch = async { pull.as_mut().expect("guarded").await }, if pull.is_some() => {
                        pull = None;
                        if let Ok(batch) = batch {
                            trace.messages_out += batch.messages as u64;
                            for part in batch.parts {
                                sink.queue_framed(part);
                            }
                        }
                        None
                    }
                    // Writing, or (a browser's Participate call, which has no
                    // inbound half to end) watching for the client to leave.
                    written = async {
                        if sink.pending_bytes() > 0 {
                            sink.flush().await
                        } else {
                            Err(sink.cancelled().await)
                        }
                    }, if sink.pending_bytes() > 0 || inbox.is_routed() => {
                        written?;
                        None
                    }
                    received = inbox.next() => {
                        Some(self.take_in(received, inbox, &identity, &principal, trace))
                    }
                };
                // What came in goes to the registry here, after the select
                // and taken in without waiting: no received message (192
                // bytes each) is held while these sends wait, so the stream's
                // future keeps no room for one.
                while let Some(Intake { batch, then }) = intake.take() {
                    self.registry.messages(member, batch).await?;
                    let came_apart = match then {
                        Then::Nothing => false,
                        Then::Failed(status) => return Err(status),
                        Then::HalfClosed => {
                            // The client is done sending. Deliver what is
                            // already queued for it (once the log has it),
                            // then end with OK (it leaves when this task ends).
                            self.flush_after_half_close(member, pull.take(), sink).await;
                            return Ok(Metadata::new());
                        }
                        Then::Refresh(Ok(window)) => {
                            self.registry.refresh_token(member, window).await?;
                            true
                        }
                        Then::Refresh(Err((client_sequence, error)))
                        | Then::Reject(client_sequence, error) => {
                            self.registry.reject(member, client_sequence, error).await?;
                            true
                        }
                    };
                    // After one that came apart, those already waiting behind it.
                    if came_apart && let Some(next) = inbox.next_ready() {
                        intake = Some(self.take_in(next, inbox, &identity, &principal, trace));
                    }
                }
                if pull.is_none() && sink.pending_bytes() == 0 {
                    pull = Some(self.registry.pull(member, batch_bytes).await?);
                }
            }
        }
    }

    /// Takes in `received` and the messages already waiting behind it,
    /// without waiting for more: validated, in order, into one batch for
    /// the registry (up to a bound), until one that must go on its own (a
    /// token refresh, a message refused, the end of input), which comes
    /// apart as the batch's `then`.
    fn take_in(
        &self,
        mut received: Result<Option<SessionMessage>, Status>,
        inbox: &mut Inbox,
        identity: &StreamIdentity,
        principal: &Principal,
        trace: &mut StreamTrace,
    ) -> Intake {
        let mut batch: Vec<ClientMessage> = Vec::new();
        let mut batch_bytes = 0;
        let then = loop {
            let mut message = match received {
                Ok(Some(message)) => message,
                Ok(None) => break Then::HalfClosed,
                Err(status) => break Then::Failed(status),
            };
            trace.messages_in += 1;
            let client_sequence = message.client_sequence;
            let validated = validate::validate(&mut message, identity, &self.config.limits);
            inbox.recycle(message.session_id, message.user_id);
            match validated {
                Ok(validated) => match validated.action {
                    Action::TokenRefresh(token) => {
                        let refreshed = self.refresh(principal, &identity.session_id, &token);
                        break Then::Refresh(refreshed.map_err(|error| (client_sequence, error)));
                    }
                    // Saying LEFT is leaving as a half-close leaves: what is
                    // queued for the stream (the acknowledgements of what
                    // came before, released once the log has them) goes
                    // out first, then the call ends with OK and the member
                    // leaves (its LEFT goes to the others).
                    Action::Presence(ClientPresence::Left) => break Then::HalfClosed,
                    _ => {
                        batch_bytes += validated.action.content_bytes();
                        batch.push(validated);
                    }
                },
                Err(error) => break Then::Reject(client_sequence, error),
            }
            if batch.len() >= BATCH_MESSAGES || batch_bytes >= BATCH_CONTENT_BYTES {
                break Then::Nothing;
            }
            match inbox.next_ready() {
                Some(next) => received = next,
                None => break Then::Nothing,
            }
        };
        Intake { batch, then }
    }

    /// The checks of a participant's first message, none of which waits:
    /// its identity (recorded in `trace`), the principal's rights to it, and
    /// what the join is to be.
    fn admit(
        &self,
        principal: &Principal,
        mut first: SessionMessage,
        trace: &mut StreamTrace,
    ) -> Result<Admitted, Status> {
        let limits = &self.config.limits;
        if first.user_id.is_empty()
            && let Some(subject) = &principal.subject
        {
            first.user_id = subject.clone();
        }
        let identity = validate::identity_of(&first, limits)?;
        trace.session_id = identity.session_id.clone();
        trace.user_id = identity.user_id.clone();
        principal.check_user(&identity.user_id)?;
        principal.check_session(&identity.session_id)?;
        let first = validate::validate(&mut first, &identity, limits)?;
        let (options, pending) = match first.action {
            Action::Join(options) => (options, None),
            Action::TokenRefresh(_) => {
                return Err(
                    ReviewError::invalid("a stream cannot start with token_refresh").into(),
                );
            }
            _ => (
                JoinOptions {
                    article_client: true,
                    ..JoinOptions::default()
                },
                Some(Box::new(first)),
            ),
        };
        Ok(Admitted {
            identity,
            options,
            pending,
        })
    }

    /// After the client half-closed: what is queued for `member` (and a
    /// batch its pending pull was answered with) goes out, for at most
    /// [`HALF_CLOSE_FLUSH`].
    async fn flush_after_half_close(
        &self,
        member: MemberId,
        pull: Option<tokio::sync::oneshot::Receiver<Taken>>,
        sink: &mut ResponseSink<SessionMessage>,
    ) {
        let flushed = tokio::time::timeout(HALF_CLOSE_FLUSH, async {
            let rest = self.registry.take_all(member).await;
            // A batch the pending pull was answered with came first.
            if let Some(mut earlier) = pull
                && let Ok(batch) = earlier.try_recv()
            {
                for part in batch.parts {
                    sink.queue_framed(part);
                }
            }
            for part in rest.parts {
                sink.queue_framed(part);
            }
            sink.flush().await
        });
        let _ = flushed.await;
    }

    fn refresh(
        &self,
        current: &Principal,
        session_id: &str,
        token: &str,
    ) -> Result<TokenWindow, ReviewError> {
        let Some(verifier) = &self.config.verifier else {
            return Err(ReviewError::invalid("this server does not use tokens"));
        };
        let fresh = verifier.verify(token)?;
        if fresh.subject != current.subject {
            return Err(ReviewError::denied(
                "a refreshed token must be for the same user",
            ));
        }
        if fresh.role != current.role {
            // A stream keeps the rights it was admitted with; a new role
            // takes a new stream.
            return Err(ReviewError::denied(format!(
                "a refreshed token must keep the role {} (open a new stream for another role)",
                current.role.name()
            )));
        }
        fresh.check_session(session_id)?;
        fresh
            .token
            .ok_or_else(|| ReviewError::invalid("the refreshed token has no expiry"))
    }

    async fn get_snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        let principal = self.principal(request.head())?;
        let session_id = self.check_session_id(&request.message().session_id)?;
        principal.check_session(&session_id)?;
        match self.registry.snapshot(session_id.clone()).await? {
            Some(snapshot) => Ok(Response::new(snapshot)),
            None => Err(ReviewError::new(
                ErrorKind::NotFound,
                format!("no session {session_id:?}"),
            )
            .into()),
        }
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
        mut sink: ResponseSink<SessionMessage>,
    ) -> Result<Metadata, Status> {
        let principal = self.principal(request.head())?;
        let request = request.into_message();
        let session_id = self.check_session_id(&request.session_id)?;
        principal.check_session(&session_id)?;
        let options = JoinOptions {
            want_snapshot: request.want_snapshot,
            resume_after: request.resume_after_sequence,
            epoch: request.session_epoch,
            article_client: false,
        };
        let Membership { member, mut ending } = self
            .registry
            .watch(session_id, options, principal.token)
            .await?;
        let _leave = LeaveGuard {
            registry: self.registry.clone(),
            member,
        };
        sink.send_headers()?;
        let stream_deadline = self.config.max_stream_duration.map(|d| Instant::now() + d);
        let too_long = sleep_until_opt(stream_deadline);
        tokio::pin!(too_long);
        let batch_bytes = self.config.batch_bytes;
        loop {
            if sink.pending_bytes() > 0 {
                tokio::select! {
                    end = &mut ending => return finish(end),
                    flushed = sink.flush() => flushed?,
                }
                continue;
            }
            let pull = self.registry.pull(member, batch_bytes).await?;
            tokio::select! {
                end = &mut ending => return finish(end),
                batch = pull => {
                    if let Ok(batch) = batch {
                        for part in batch.parts {
                            sink.queue_framed(part);
                        }
                    }
                }
                status = sink.cancelled() => return Err(status),
                _ = &mut too_long => {
                    return Err(stream_too_long().into());
                }
            }
        }
    }

    async fn upload(
        &self,
        request: Request<Streaming<FileChunk>>,
    ) -> Result<Response<UploadSummary>, Status> {
        let principal = self.principal(request.head())?;
        principal.role.may_upload()?;
        let limits = self.config.limits.clone();
        let (_, mut inbound) = request.into_parts();
        let mut assembly = UploadAssembly::new(&limits);
        while let Some(chunk) = inbound.message().await? {
            if let Some(session_id) = assembly.add(chunk)? {
                principal.check_session(&session_id)?;
            }
        }
        let upload = assembly.finish()?;
        let user = Text::from(principal.subject.as_deref().unwrap_or("author"));
        let outcome = self
            .registry
            .upload(upload.session_id, user, principal.role, upload.files)
            .await?;
        Ok(Response::new(UploadSummary {
            files: outcome.files,
            lines: outcome.lines,
            // The bytes received, as uploaded (not as stored).
            bytes: upload.bytes as u64,
            version: outcome.version,
            sequence: outcome.sequence,
        }))
    }
}

fn finish(end: Result<Ending, tokio::sync::oneshot::error::RecvError>) -> Result<Metadata, Status> {
    match end {
        Ok(Ending::Finished) => Ok(Metadata::new()),
        Ok(Ending::Closed(error)) => Err(error.into()),
        Err(_) => {
            Err(ReviewError::new(ErrorKind::Unavailable, "the server is shutting down").into())
        }
    }
}

fn stream_too_long() -> ReviewError {
    ReviewError::new(
        ErrorKind::Unavailable,
        "maximum stream duration reached: reconnect and resume",
    )
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
