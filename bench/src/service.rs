//! The tonic service: the four RPCs of `CodeReviewService` over a registry
//! of [`Session`]s (a mutex around the map, another around each session).
//!
//! A session exists while it has members (the article removes an empty
//! one); the first message of a call, whatever it is, joins its session as
//! its user. The protocol's `Join` (an extension) joins without being
//! broadcast; any other first message is also delivered, as the article does.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::code_review_service_server::CodeReviewService;
use crate::pb::{
    FileChunk, ParticipateRequest, SendReply, SendRequest, SessionMessage, Snapshot,
    SnapshotRequest, UploadSummary, WatchRequest, session_message::Payload,
};
use crate::session::Session;

type Shared = Arc<Mutex<Session>>;
type MessageStream = Pin<Box<dyn Stream<Item = Result<SessionMessage, Status>> + Send>>;

#[derive(Default, Clone)]
pub struct Peer {
    sessions: Arc<Mutex<HashMap<String, Shared>>>,
}

impl Peer {
    fn session(&self, id: &str) -> Option<Shared> {
        self.sessions.lock().unwrap().get(id).cloned()
    }

    /// Joins `session_id` (created if new); returns the session and the
    /// member's id.
    fn join(
        &self,
        session_id: &str,
        user: Option<String>,
        outbox: crate::session::Outbox,
    ) -> (Shared, u64) {
        let mut sessions = self.sessions.lock().unwrap();
        let session = sessions.entry(session_id.to_owned()).or_default().clone();
        let id = session.lock().unwrap().join(session_id, user, outbox);
        (session, id)
    }

    fn leave(&self, session_id: &str, session: &Shared, id: u64) {
        let mut sessions = self.sessions.lock().unwrap();
        let mut state = session.lock().unwrap();
        state.leave(session_id, id);
        if state.is_empty() {
            sessions.remove(session_id);
        }
    }
}

#[tonic::async_trait]
impl CodeReviewService for Peer {
    type CollaborativeSessionStream = MessageStream;
    type WatchSessionStream = MessageStream;
    type ParticipateStream = MessageStream;

    /// The browser participant's calls are ours only (not the article's):
    /// the peer does not offer them.
    async fn participate(
        &self,
        _request: Request<ParticipateRequest>,
    ) -> Result<Response<Self::ParticipateStream>, Status> {
        Err(Status::unimplemented(
            "the tonic peer has no browser participant",
        ))
    }

    async fn send(&self, _request: Request<SendRequest>) -> Result<Response<SendReply>, Status> {
        Err(Status::unimplemented(
            "the tonic peer has no browser participant",
        ))
    }

    async fn collaborative_session(
        &self,
        request: Request<Streaming<SessionMessage>>,
    ) -> Result<Response<Self::CollaborativeSessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (outbox, outgoing) = mpsc::unbounded_channel();
        let peer = self.clone();
        tokio::spawn(async move {
            let mut joined: Option<(String, String, Shared, u64)> = None;
            while let Ok(Some(message)) = inbound.message().await {
                if joined.is_none() {
                    let session_id = message.session_id.clone();
                    let user = message.user_id.clone();
                    let (session, id) = peer.join(&session_id, Some(user.clone()), outbox.clone());
                    joined = Some((session_id, user, session, id));
                    if matches!(message.payload, Some(Payload::Join(_))) {
                        continue;
                    }
                }
                if let Some((_, user, session, _)) = &joined {
                    session.lock().unwrap().receive(message, user);
                }
            }
            if let Some((session_id, _, session, id)) = joined {
                peer.leave(&session_id, &session, id);
            }
            // The last sender (this task's) drops here: the call ends.
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            outgoing,
        ))))
    }

    async fn get_snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        let id = request.into_inner().session_id;
        let session = self
            .session(&id)
            .ok_or_else(|| Status::not_found(format!("no session {id:?}")))?;
        let snapshot = session.lock().unwrap().snapshot(&id);
        Ok(Response::new(snapshot))
    }

    async fn watch_session(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        let id = request.into_inner().session_id;
        if self.session(&id).is_none() {
            return Err(Status::not_found(format!("no session {id:?}")));
        }
        let (outbox, outgoing) = mpsc::unbounded_channel();
        // A watcher is a member without a user: it hears everything and
        // leaves when its call is gone (the next send to it fails).
        self.join(&id, None, outbox);
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            outgoing,
        ))))
    }

    async fn upload_files(
        &self,
        request: Request<Streaming<FileChunk>>,
    ) -> Result<Response<UploadSummary>, Status> {
        let mut chunks = request.into_inner();
        let mut session_id = String::new();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            session_id = chunk.session_id;
            match files.last_mut() {
                Some((path, content)) if *path == chunk.file_path => {
                    content.extend_from_slice(&chunk.content)
                }
                _ => files.push((chunk.file_path, chunk.content)),
            }
        }
        let bytes = files.iter().map(|(_, c)| c.len() as u64).sum();
        let files = files
            .into_iter()
            .map(|(path, content)| {
                let text = String::from_utf8(content)
                    .map_err(|_| Status::invalid_argument(format!("{path} is not UTF-8")))?;
                Ok((path, text.lines().map(str::to_owned).collect::<Vec<_>>()))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let summary = UploadSummary {
            files: files.len() as u32,
            lines: files.iter().map(|(_, l)| l.len() as u32).sum(),
            bytes,
            version: 0,
            sequence: 0,
        };
        // An upload creates the session if it is new; like any session, it
        // is removed when its last member leaves.
        let session = {
            let mut sessions = self.sessions.lock().unwrap();
            sessions.entry(session_id.clone()).or_default().clone()
        };
        let version = session.lock().unwrap().upload(&session_id, files);
        Ok(Response::new(UploadSummary { version, ..summary }))
    }
}
