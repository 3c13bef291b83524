//! One HTTP/2 connection: the h2 handshake (the client preface through its
//! SETTINGS frame, under the handshake deadline), the loop that accepts
//! streams and hands each to its own task, keepalive PINGs, the idle timeout,
//! closing when the outbound budget sheds it, and the connection's part of
//! shutdown (GOAWAY, then drain).
//!
//! ```text
//!  handshake ──► serving ──┬─ no SETTINGS by the handshake deadline ─► closed
//!                          ├─ no streams for idle_timeout ─► GOAWAY ─► draining
//!                          ├─ PING unanswered ─────────────► closed
//!                          ├─ shed (outbound budget) ──────► GOAWAY ENHANCE_YOUR_CALM, closed
//!                          ├─ shutdown: Draining ──────────► GOAWAY ─► draining
//!                          └─ peer closes / error ─────────► closed
//!  draining ──► last stream ends ──► closed      (shutdown: Closing ─► closed)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use h2::{Ping, Reason};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::Shared;
use super::budget::{AccountedChunk, ConnectionAccount};
use super::coalesce::CoalescedWrites;
use super::dispatch::{NewStream, serve_stream};
use super::preface::PrefaceWatch;
use crate::grpc::shutdown::{Phase, ShutdownSignal};
use crate::log;

/// What the connection's streams know about it.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: Option<SocketAddr>,
    pub active_streams: AtomicUsize,
    started: Instant,
    /// Milliseconds after `started` when a stream last ended.
    last_activity_ms: AtomicU64,
    /// Facts established before HTTP/2 (e.g. the TLS client certificate).
    pub extensions: http::Extensions,
    /// The response bytes this connection holds, against the process's
    /// outbound budget.
    pub(crate) outbound: Arc<ConnectionAccount>,
}

impl ConnectionInfo {
    pub(crate) fn new(
        id: u64,
        peer: Option<SocketAddr>,
        extensions: http::Extensions,
        outbound: Arc<ConnectionAccount>,
    ) -> Self {
        ConnectionInfo {
            id,
            peer,
            active_streams: AtomicUsize::new(0),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            extensions,
            outbound,
        }
    }

    /// Records activity now (a stream ended).
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }
}

/// Serves one connection until it closes.
pub(crate) async fn serve_connection<T>(
    io: T,
    shared: Arc<Shared>,
    info: Arc<ConnectionInfo>,
    shutdown: ShutdownSignal,
    handshake_deadline: Instant,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &shared.config;
    // h2's handshake ends with the client's magic; the watch tells when its
    // SETTINGS frame has followed, which the handshake deadline also covers.
    let settings_seen = Arc::new(AtomicBool::new(false));
    let io = CoalescedWrites::new(PrefaceWatch::new(io, settings_seen.clone()));
    let handshake = config.h2_builder().handshake::<_, AccountedChunk>(io);
    // Boxed: the handshake's state is freed once it is done, not kept beside
    // the connection's for its whole life.
    let handshake = Box::pin(tokio::time::timeout_at(handshake_deadline, handshake));
    let mut conn = match handshake.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            log!(
                Debug,
                "http2 handshake failed",
                conn = info.id,
                error = error.to_string().as_str()
            );
            return;
        }
        Err(_) => {
            log!(Debug, "http2 handshake timed out", conn = info.id);
            shared
                .telemetry
                .observer
                .connection_rejected("preface_timeout");
            return;
        }
    };
    let mut awaiting_settings = true;

    let mut keepalive_armed = !config.keepalive_interval.is_zero();
    // Polled by this loop rather than run as a task of its own: an idle
    // connection then holds no second task, timer entry and channel.
    let keepalive = keepalive(
        conn.ping_pong(),
        config.keepalive_interval,
        config.keepalive_timeout,
    );

    let idle_timeout = config.idle_timeout;
    let mut draining = false;
    let mut drain_signal = shutdown.clone();
    let mut close_signal = shutdown;
    // The loop wakes for every frame h2 reads or writes: what it waits for
    // besides h2 is made once, not per wake (a timer or a notification
    // registered and dropped on each pass costs a lock each time).
    let handshake_expired = sleep_until(handshake_deadline);
    let idle = sleep_until(info.last_activity() + idle_timeout);
    let shed = info.outbound.shed_requested();
    let drain = drain_signal.reached(Phase::Draining);
    let close = close_signal.reached(Phase::Closing);
    tokio::pin!(handshake_expired, idle, shed, drain, close, keepalive);
    // Closing waits (for the GOAWAY to be written) after the loop, not in
    // its arms: a wait inside an arm would keep the select's output (an
    // accepted request's parts) alive with it, and the connection's future
    // would carry room for both all its life.
    let mut close_after_loop = false;
    loop {
        let idle_at = info.last_activity() + idle_timeout;
        if idle.deadline() != idle_at {
            idle.as_mut().reset(idle_at);
        }
        tokio::select! {
            _ = &mut handshake_expired, if awaiting_settings => {
                if settings_seen.load(Ordering::Relaxed) {
                    awaiting_settings = false;
                    continue;
                }
                log!(Info, "closing connection: no HTTP/2 SETTINGS frame from the client within the handshake timeout", conn = info.id);
                shared.telemetry.observer.connection_rejected("preface_timeout");
                close_at_once(&mut conn, Reason::SETTINGS_TIMEOUT);
                break;
            }
            _ = &mut shed => {
                // The shedder logged and counted it. Waiting for the GOAWAY
                // to be written would keep what the connection holds: its
                // peer is the one not reading.
                close_at_once(&mut conn, Reason::ENHANCE_YOUR_CALM);
                break;
            }
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    let stream = Box::new(NewStream { request, respond });
                    tokio::spawn(serve_stream(stream, shared.clone(), info.clone()));
                }
                Some(Err(error)) => {
                    log!(Debug, "connection error", conn = info.id, error = error.to_string().as_str());
                    break;
                }
                None => break,
            },
            _ = &mut drain, if !draining => {
                conn.graceful_shutdown();
                draining = true;
            }
            _ = &mut close => {
                close_after_loop = true;
                break;
            }
            dead = &mut keepalive, if keepalive_armed => {
                keepalive_armed = false;
                // Ended without a dead peer: keepalive is off, or the
                // connection is ending anyway.
                if !dead {
                    continue;
                }
                log!(Info, "closing connection: keepalive ping unanswered", conn = info.id);
                close_after_loop = true;
                break;
            }
            _ = &mut idle, if !draining => {
                if info.active_streams.load(Ordering::Relaxed) == 0 && !conn.has_streams() {
                    if info.last_activity() + idle_timeout <= Instant::now() {
                        log!(Debug, "closing idle connection", conn = info.id);
                        conn.graceful_shutdown();
                        draining = true;
                    }
                } else {
                    info.touch();
                }
            }
        }
    }
    if close_after_loop {
        close_now(&mut conn).await;
    }
    info.outbound.mark_closing();
}

/// Queues GOAWAY with `reason` and writes what the socket takes right now,
/// without waiting; the caller then drops the connection.
fn close_at_once<T>(
    conn: &mut h2::server::Connection<CoalescedWrites<T>, AccountedChunk>,
    reason: Reason,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    conn.abrupt_shutdown(reason);
    let waker = std::task::Waker::noop();
    // Twice: a flush yields once before it writes (see `coalesce`).
    for _ in 0..2 {
        let _ = conn.poll_closed(&mut std::task::Context::from_waker(waker));
    }
}

/// Sends GOAWAY and gives h2 a moment to write it (the peer may not be
/// reading: never wait long).
async fn close_now<T>(conn: &mut h2::server::Connection<CoalescedWrites<T>, AccountedChunk>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    conn.abrupt_shutdown(Reason::NO_ERROR);
    let _ = timeout(Duration::from_millis(500), async {
        while let Some(Ok(_)) = conn.accept().await {}
    })
    .await;
}

/// Pings the peer every `interval`; ends with true (a dead peer) when a PING
/// is not answered within `ping_timeout`, false when there is nothing to
/// ping (keepalive off, or the connection gone).
async fn keepalive(
    ping_pong: Option<h2::PingPong>,
    interval: Duration,
    ping_timeout: Duration,
) -> bool {
    let Some(mut ping_pong) = ping_pong else {
        return false;
    };
    if interval.is_zero() {
        return false;
    }
    loop {
        sleep(interval).await;
        match timeout(ping_timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => continue,
            Ok(Err(_)) => return false, // the connection is gone anyway
            Err(_) => return true,
        }
    }
}
