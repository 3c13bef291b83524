//! `idle-streams`: opens N connections to a server of proto/codereview/v1,
//! each with one CollaborativeSession stream joined (the article's first
//! message, a PresenceUpdate JOINED) in sessions of two, waits until every
//! stream has heard from the server (a joiner its partner's JOINED, either
//! way round), prints `ready N` on stdout, and holds them idle until killed
//! (or `--hold` seconds). `scripts/bench-peer` samples the server's RSS
//! meanwhile: the memory of an idle joined connection.
//!
//! ```text
//! idle-streams --addr http://127.0.0.1:PORT [--connections 2000] [--hold 600]
//! ```
#![forbid(unsafe_code)]

use std::time::Duration;

use codereview_bench::pb::code_review_service_client::CodeReviewServiceClient;
use codereview_bench::pb::{
    PresenceUpdate, SessionMessage, presence_update::Status as Presence, session_message::Payload,
};
use codereview_bench::session::now_unix_ms;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// How long every stream has to hear from the server.
const READY_WITHIN: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = None;
    let mut connections = 2000usize;
    let mut hold = 600u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => addr = Some(value),
            "--connections" => connections = value.parse()?,
            "--hold" => hold = value.parse()?,
            other => return Err(format!("unknown flag {other:?}").into()),
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    let run = std::process::id();
    let mut streams = Vec::with_capacity(connections);
    for n in 0..connections {
        // One Endpoint::connect is one connection.
        let channel = Endpoint::from_shared(addr.clone())?.connect().await?;
        let mut client = CodeReviewServiceClient::new(channel);
        let (sender, outbound) = mpsc::channel(1);
        sender
            .send(SessionMessage {
                session_id: format!("idle-{run}-{}", n / 2),
                timestamp: now_unix_ms(),
                user_id: format!("u{}", n % 2),
                payload: Some(Payload::Presence(PresenceUpdate {
                    status: Presence::Joined as i32,
                    role: 0,
                })),
                ..SessionMessage::default()
            })
            .await?;
        let response = client
            .collaborative_session(ReceiverStream::new(outbound))
            .await?;
        streams.push((client, sender, response.into_inner()));
    }
    let mut heard = Vec::with_capacity(connections);
    for (client, sender, mut inbound) in streams {
        heard.push(tokio::spawn(async move {
            let first = tokio::time::timeout(READY_WITHIN, inbound.message()).await;
            let ok = matches!(first, Ok(Ok(Some(_))));
            // Keep everything open: the stream, its sending half, the client.
            (ok, client, sender, inbound)
        }));
    }
    let mut held = Vec::with_capacity(connections);
    for task in heard {
        let (ok, client, sender, inbound) = task.await?;
        if !ok {
            return Err("a stream heard nothing from the server".into());
        }
        held.push((client, sender, inbound));
    }
    println!("ready {}", held.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(held);
    Ok(())
}
