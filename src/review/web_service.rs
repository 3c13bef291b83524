//! The browser participant: what `join` does, for a client that cannot
//! stream both ways (gRPC-Web). Two RPCs tied by a participant token:
//!
//! ```text
//!  Participate(ParticipateRequest) ──► PARTICIPANT_TOKEN notice, then the
//!     │                                participant's events (Joined, catch-up,
//!     │                                live events, acks, errors), as the bidi
//!     │                                stream sends them; JOINED while open,
//!     │                                LEFT when it ends
//!     │  token ─► routes: token → the participant's inbox
//!     ▼
//!  Send(SendRequest{token, messages}) ─► the inbox ─► the same loop the
//!                                        bidi stream runs (validation, OT,
//!                                        dedupe, rate limits, the registry)
//! ```
//!
//! The token is 128 random bits, valid while its Participate call is open;
//! the routes table is the only state here (a lock held for a lookup, never
//! across an await). With authentication on, a Send must carry a bearer
//! token for the participant's own subject. Resume is the bidi stream's:
//! a new Participate with `resume_after_sequence` and `session_epoch`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::{ErrorKind, ReviewError};
use super::service::{Inbox, Service, StreamTrace};
use crate::grpc::base64::{self, Alphabet};
use crate::grpc::server::{Request, Response, ResponseSink, Router};
use crate::grpc::{Metadata, Status};
use crate::pb::codereview::{
    Notice, ParticipateRequest, SendReply, SendRequest, SessionMessage, notice::Kind as NoticeKind,
    session_message::Payload,
};
use crate::pb::paths::{PARTICIPATE, SEND};

/// Messages a participant's inbox holds before Send calls wait (their
/// messages are handled in order, one registry turn each).
const INBOX_MESSAGES: usize = 64;

/// Where a token's messages go.
struct Route {
    inbox: mpsc::Sender<SessionMessage>,
    /// The bearer token's subject the participant joined with.
    subject: Option<String>,
}

type Routes = Mutex<HashMap<String, Route>>;

struct WebParticipants {
    service: Arc<Service>,
    routes: Routes,
}

/// Removes a token's route when its Participate call ends.
struct RouteGuard<'a> {
    routes: &'a Routes,
    token: String,
}

impl Drop for RouteGuard<'_> {
    fn drop(&mut self) {
        lock(self.routes).remove(&self.token);
    }
}

fn lock(routes: &Routes) -> MutexGuard<'_, HashMap<String, Route>> {
    routes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh participant token: 128 bits from the OS, URL-safe base64.
fn mint_token() -> Result<String, Status> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Status::unavailable("no randomness for a participant token"))?;
    Ok(base64::encode(&bytes, Alphabet::UrlSafe))
}

/// Registers Participate and Send on `router`.
pub(super) fn register(router: &mut Router, service: Arc<Service>) {
    let web = Arc::new(WebParticipants {
        service,
        routes: Mutex::new(HashMap::new()),
    });
    let w = web.clone();
    router.server_streaming(PARTICIPATE, move |request, sink| {
        let w = w.clone();
        async move { w.participate(request, sink).await }
    });
    let w = web;
    router.unary(SEND, move |request| {
        let w = w.clone();
        async move { w.send(request).await }
    });
}

impl WebParticipants {
    async fn participate(
        &self,
        request: Request<ParticipateRequest>,
        mut sink: ResponseSink<SessionMessage>,
    ) -> Result<Metadata, Status> {
        let started = Instant::now();
        let (head, request) = request.into_parts();
        let mut trace = StreamTrace::default();
        let result = async {
            let principal = self.service.principal(&head)?;
            sink.send_headers()?;
            let token = mint_token()?;
            let (inbox, routed) = mpsc::channel(INBOX_MESSAGES);
            let route = Route {
                inbox,
                subject: principal.subject.clone(),
            };
            lock(&self.routes).insert(token.clone(), route);
            let _route = RouteGuard {
                routes: &self.routes,
                token: token.clone(),
            };
            let first = SessionMessage {
                session_id: request.session_id.clone(),
                user_id: request.user_id,
                payload: Some(Payload::Join(request.join.unwrap_or_default())),
                ..SessionMessage::default()
            };
            let greeting = SessionMessage {
                session_id: request.session_id,
                timestamp: super::now_unix_ms(),
                payload: Some(Payload::Notice(Notice {
                    kind: NoticeKind::ParticipantToken as i32,
                    text: token,
                    at: 0,
                })),
                ..SessionMessage::default()
            };
            let mut inbox = Inbox::Routed(routed);
            self.service
                .participant(
                    &head,
                    principal,
                    first,
                    &mut inbox,
                    &mut sink,
                    Some(Box::new(greeting)),
                    &mut trace,
                )
                .await
        }
        .await;
        trace.log_closed(&head, started, &result);
        result
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendReply>, Status> {
        let principal = self.service.principal(request.head())?;
        let request = request.into_message();
        let route = lock(&self.routes)
            .get(&request.participant_token)
            .map(|route| (route.inbox.clone(), route.subject.clone()));
        let Some((inbox, subject)) = route else {
            return Err(gone().into());
        };
        if self.service.config.auth_required && principal.subject != subject {
            return Err(ReviewError::denied(
                "this participant token belongs to another user's Participate call",
            )
            .into());
        }
        let mut accepted = 0;
        for message in request.messages {
            inbox
                .send(message)
                .await
                .map_err(|_| Status::from(gone()))?;
            accepted += 1;
        }
        Ok(Response::new(SendReply { accepted }))
    }
}

fn gone() -> ReviewError {
    ReviewError::new(
        ErrorKind::NotFound,
        "no participant with this token (its Participate call ended): call Participate again to resume",
    )
}
