//! The gRPC server: configuration (every HTTP/2 setting explicit), the accept
//! loop with its connection cap, and what happens to a socket before HTTP/2
//! (sniffing, TLS handshake in the connection's own task under a timeout).
//!
//! Module map: `connection` runs one HTTP/2 connection (`preface` watches its
//! opening, `coalesce` gathers its writes), `dispatch` one stream, `router` maps paths to handlers, `call` is
//! what a handler sees, `budget` bounds the outbound bytes of all connections, `shared_compression`
//! compresses a broadcast once for all its recipients.

pub mod budget;
pub mod call;
pub mod coalesce;
pub mod connection;
pub mod dispatch;
pub mod preface;
pub mod router;
pub mod shared_compression;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, timeout_at};

pub use call::{Request, RequestHead, Response, ResponseSink, Streaming};
pub use router::{BoxFuture, Interceptor, Router};

use self::budget::OutboundBudget;
use self::connection::{ConnectionInfo, serve_connection};
use super::observe::{NoopObserver, Observer, Telemetry};
use super::shutdown::{Phase, ShutdownSignal};
use super::sniff::{self, Opening, Prefixed};
use super::tls::{PeerCertificates, TlsSource};
use super::web::WebConfig;
use super::web::loopback::Caller;
use crate::log;

/// Server settings. Each field's doc gives its default and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// HTTP/2 initial stream window for data we receive (default 1 MiB).
    pub initial_stream_window: u32,
    /// HTTP/2 connection window for data we receive (default 4 MiB): bounds
    /// what one connection can have buffered in us at once.
    pub initial_connection_window: u32,
    /// Largest HTTP/2 frame payload we accept (default 16 KiB, the protocol
    /// minimum and default).
    pub max_frame_size: u32,
    /// Concurrent streams a client may open on one connection (default 100).
    pub max_concurrent_streams: u32,
    /// Largest request header block, HPACK-decoded (default 16 KiB). h2's own
    /// default is 16 MiB, which also scales its CONTINUATION-flood cap.
    pub max_header_list_size: u32,
    /// Response bytes h2 may hold per stream (handed to it and not yet
    /// written to the socket), beyond which a call waits for the peer to read
    /// (default 256 KiB). A peer advertising huge windows and never reading costs this
    /// much per stream until the outbound budget or keepalive ends it.
    pub max_send_buffer_size: usize,
    /// Response bytes the whole process may hold for its connections (queued
    /// by calls, or held by h2 and not yet written to a socket) before the
    /// connections holding the most are closed, largest first, until the rest
    /// fit (default 256 MiB: 1024 connections with one full 256 KiB stream
    /// each; 0 disables).
    pub max_outbound_buffer: usize,
    /// Streams the client may reset before we accept them, per connection,
    /// before the connection is closed with ENHANCE_YOUR_CALM (rapid-reset
    /// defence; default 20).
    pub max_pending_accept_reset_streams: usize,
    /// Locally reset streams remembered per connection (default 64).
    pub max_concurrent_reset_streams: usize,
    /// Protocol errors a client may cause before the connection is closed
    /// (default 256).
    pub max_local_error_reset_streams: usize,
    /// Largest gRPC message we accept (default 4 MiB, as mainstream gRPC).
    pub max_recv_message_bytes: usize,
    /// Interval between keepalive PINGs (default 30 s; zero disables).
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed
    /// (default 10 s).
    pub keepalive_timeout: Duration,
    /// A connection with no stream for this long gets GOAWAY (default 5 min).
    pub idle_timeout: Duration,
    /// Time allowed from TCP accept to a working HTTP/2 connection (sniffing,
    /// TLS, and the client preface: the magic and its SETTINGS frame;
    /// default 10 s).
    pub handshake_timeout: Duration,
    /// Connections served at once; more are closed on accept (default 1024).
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 4 * 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            max_send_buffer_size: 256 * 1024,
            max_outbound_buffer: 256 * 1024 * 1024,
            max_pending_accept_reset_streams: 20,
            max_concurrent_reset_streams: 64,
            max_local_error_reset_streams: 256,
            max_recv_message_bytes: super::codec::DEFAULT_MAX_RECV_MESSAGE,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

impl ServerConfig {
    /// An h2 server builder with every setting made explicit.
    pub fn h2_builder(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(self.initial_stream_window)
            .initial_connection_window_size(self.initial_connection_window)
            .max_frame_size(self.max_frame_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buffer_size(self.max_send_buffer_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_concurrent_reset_streams(self.max_concurrent_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .reset_stream_duration(Duration::from_secs(1));
        builder
    }
}

/// What every connection and stream task shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) router: Router,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) outbound_budget: Arc<OutboundBudget>,
    tls: Option<TlsSource>,
    /// The page and gRPC-Web (None: HTTP/2 gRPC only).
    pub(crate) web: Option<WebConfig>,
    /// The server's shutdown, for connections opened inside it (gRPC-Web's
    /// loopback).
    pub(crate) shutdown: ShutdownSignal,
    connection_slots: Arc<Semaphore>,
    pub(crate) next_connection_id: AtomicU64,
}

impl Shared {
    /// Whether connections are TLS (the TLS port takes nothing else).
    pub(crate) fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }
}

/// A configured server, ready to serve a listener.
pub struct Server {
    config: ServerConfig,
    router: Router,
    telemetry: Arc<Telemetry>,
    tls: Option<TlsSource>,
    web: Option<WebConfig>,
}

impl Server {
    pub fn new(config: ServerConfig, router: Router) -> Self {
        Server {
            config,
            router,
            telemetry: Telemetry::new(Arc::new(NoopObserver)),
            tls: None,
            web: None,
        }
    }

    /// Also serves the page and gRPC-Web (see [`super::web`]) on the same
    /// port: HTTP/1.1 on plaintext, HTTP/2 streams on either.
    pub fn web(mut self, config: WebConfig) -> Self {
        self.web = Some(config);
        self
    }

    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.telemetry = Telemetry::new(observer);
        self
    }

    /// The live figures of this server (read them while it serves).
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    /// Serves TLS (ALPN h2) instead of plaintext HTTP/2.
    pub fn tls(mut self, source: TlsSource) -> Self {
        self.tls = Some(source);
        self
    }

    /// Accepts connections until the shutdown signal reaches `Draining`, then
    /// waits for the open connections to finish (they are dropped when it
    /// reaches `Closing`). Returns once every connection task has ended.
    pub async fn serve(self, listener: TcpListener, shutdown: ShutdownSignal) -> io::Result<()> {
        let outbound_budget =
            OutboundBudget::new(self.config.max_outbound_buffer, self.telemetry.clone());
        let shedder = tokio::spawn(budget::shedder(outbound_budget.clone()));
        let shared = Arc::new(Shared {
            connection_slots: Arc::new(Semaphore::new(self.config.max_connections)),
            config: self.config,
            router: self.router,
            telemetry: self.telemetry,
            outbound_budget,
            tls: self.tls,
            web: self.web,
            shutdown: shutdown.clone(),
            next_connection_id: AtomicU64::new(1),
        });
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut stop = shutdown.clone();
        let mut accept_errors = 0u32;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        accept_errors = 0;
                        let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
                            shared.telemetry.observer.connection_rejected("max_connections");
                            log!(Warn, "connection refused: max connections reached", peer = peer.to_string().as_str());
                            drop(tcp);
                            continue;
                        };
                        let _ = tcp.set_nodelay(true);
                        let task = handle_socket(tcp, peer, shared.clone(), permit, shutdown.clone(), done_tx.clone());
                        tokio::spawn(task);
                    }
                    Err(error) => {
                        // Usually EMFILE/ENFILE: back off instead of spinning.
                        accept_errors = (accept_errors + 1).min(6);
                        log!(Warn, "accept failed", error = error.to_string().as_str());
                        tokio::time::sleep(Duration::from_millis(10 << accept_errors)).await;
                    }
                },
                _ = stop.reached(Phase::Draining) => break,
            }
        }
        drop(listener);
        drop(done_tx);
        let _ = done_rx.recv().await;
        shedder.abort();
        Ok(())
    }
}

/// Counts a connection as open until dropped.
struct ConnectionCount(Arc<Shared>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0
            .telemetry
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// From accepted socket to served connection, in the connection's own task.
async fn handle_socket(
    mut tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    shutdown: ShutdownSignal,
    _done: mpsc::Sender<()>,
) {
    let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    shared.telemetry.observer.connection_opened(id, Some(peer));
    shared
        .telemetry
        .stats
        .connections
        .fetch_add(1, Ordering::Relaxed);
    let _open = ConnectionCount(shared.clone());
    // One deadline from accept for everything before HTTP/2 runs (sniffing,
    // TLS, the preface), so a trickling client cannot stretch it phase by phase.
    let handshake_deadline = Instant::now() + shared.config.handshake_timeout;
    let opening = match timeout_at(handshake_deadline, sniff::sniff(&mut tcp)).await {
        Ok(Ok(opening)) => opening,
        Ok(Err(_)) | Err(_) => {
            log!(
                Debug,
                "connection closed before a protocol was recognised",
                conn = id
            );
            shared.telemetry.observer.connection_closed(id);
            return;
        }
    };
    match (&shared.tls, opening) {
        (None, (Opening::Http2, prefix)) => {
            let info = Arc::new(ConnectionInfo::new(
                id,
                Some(peer),
                http::Extensions::new(),
                shared.outbound_budget.open(id),
            ));
            // Boxed: the task stays as small as the path it takes.
            Box::pin(serve_connection(
                Prefixed::new(prefix, tcp),
                shared.clone(),
                info,
                shutdown,
                handshake_deadline,
            ))
            .await;
        }
        (Some(tls), (Opening::Tls, prefix)) => {
            // Boxed: a plaintext connection's task holds no TLS state.
            Box::pin(serve_tls(
                tls.current(),
                Prefixed::new(prefix, tcp),
                peer,
                id,
                shared.clone(),
                shutdown,
                handshake_deadline,
            ))
            .await;
        }
        (None, (Opening::Http1, prefix)) if shared.web.is_some() => {
            let caller = Caller {
                connection_id: id,
                peer: Some(peer),
                extensions: http::Extensions::new(),
            };
            let web = shared.web.clone().expect("checked");
            Box::pin(super::web::http1::serve(
                Prefixed::new(prefix, tcp),
                shared.clone(),
                web,
                caller,
                false,
                handshake_deadline,
            ))
            .await;
        }
        (_, (Opening::Http1, _)) => {
            shared.telemetry.observer.connection_rejected("http1");
            let response = if shared.tls.is_some() {
                sniff::HTTP1_ON_TLS_RESPONSE
            } else {
                sniff::HTTP1_ON_H2_RESPONSE
            };
            let _ = timeout_at(handshake_deadline, async {
                let _ = tcp.write_all(response).await;
                let _ = tcp.shutdown().await;
            })
            .await;
        }
        (Some(_), (Opening::Http2, prefix)) => {
            // Plaintext HTTP/2 on the TLS port: say so at the HTTP/2 level
            // (GOAWAY INADEQUATE_SECURITY, which gRPC clients report).
            shared
                .telemetry
                .observer
                .connection_rejected("plaintext_on_tls");
            log!(
                Info,
                "plaintext HTTP/2 on the TLS port",
                conn = id,
                peer = peer.to_string().as_str()
            );
            let handshake = shared
                .config
                .h2_builder()
                .handshake::<_, bytes::Bytes>(Prefixed::new(prefix, tcp));
            // Boxed: every connection's task would otherwise be as large
            // as this rare path's HTTP/2 handshake, for its whole life.
            let _ = Box::pin(timeout_at(handshake_deadline, async {
                if let Ok(mut conn) = handshake.await {
                    conn.abrupt_shutdown(h2::Reason::INADEQUATE_SECURITY);
                    let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                }
            }))
            .await;
        }
        (None, (Opening::Tls, _)) => {
            shared
                .telemetry
                .observer
                .connection_rejected("tls_on_plaintext");
            log!(
                Info,
                "TLS on the plaintext port",
                conn = id,
                peer = peer.to_string().as_str()
            );
        }
        (_, (Opening::Garbage | Opening::Undecided, _)) => {
            shared.telemetry.observer.connection_rejected("garbage");
            log!(
                Debug,
                "unrecognised protocol",
                conn = id,
                peer = peer.to_string().as_str()
            );
        }
    }
    shared.telemetry.observer.connection_closed(id);
}

/// A TLS connection after its first bytes: the handshake, then HTTP/2 (or
/// the browser's HTTP/1.1) inside it, within the handshake deadline.
async fn serve_tls(
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    tcp: Prefixed<TcpStream>,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
    shutdown: ShutdownSignal,
    handshake_deadline: Instant,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accepted = timeout_at(handshake_deadline, acceptor.accept(tcp)).await;
    let mut stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            log!(
                Info,
                "TLS handshake failed",
                conn = id,
                peer = peer.to_string().as_str(),
                error = error.to_string().as_str()
            );
            shared
                .telemetry
                .observer
                .connection_rejected("tls_handshake");
            return; // handle_socket notes the close
        }
        Err(_) => {
            log!(
                Info,
                "TLS handshake timed out",
                conn = id,
                peer = peer.to_string().as_str()
            );
            shared
                .telemetry
                .observer
                .connection_rejected("tls_handshake_timeout");
            return; // handle_socket notes the close
        }
    };
    let mut extensions = http::Extensions::new();
    if let Some(certs) = stream.get_ref().1.peer_certificates() {
        extensions.insert(PeerCertificates(Arc::new(certs.to_vec())));
    }
    // Inside TLS, only HTTP/2 is spoken.
    match timeout_at(handshake_deadline, sniff::sniff(&mut stream)).await {
        Ok(Ok((Opening::Http2, prefix))) => {
            let info = Arc::new(ConnectionInfo::new(
                id,
                Some(peer),
                extensions,
                shared.outbound_budget.open(id),
            ));
            // Boxed: the task stays as small as the path it takes.
            Box::pin(serve_connection(
                Prefixed::new(prefix, stream),
                shared.clone(),
                info,
                shutdown,
                handshake_deadline,
            ))
            .await;
        }
        Ok(Ok((Opening::Http1, prefix))) => match shared.web.clone() {
            Some(web) => {
                let caller = Caller {
                    connection_id: id,
                    peer: Some(peer),
                    extensions,
                };
                Box::pin(super::web::http1::serve(
                    Prefixed::new(prefix, stream),
                    shared.clone(),
                    web,
                    caller,
                    true,
                    handshake_deadline,
                ))
                .await;
            }
            None => {
                let _ = stream.write_all(sniff::HTTP1_ON_H2_RESPONSE).await;
                let _ = stream.shutdown().await;
            }
        },
        _ => {}
    }
}
