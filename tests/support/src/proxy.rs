//! One TCP proxy for every test that needs the network to fail: in front of
//! a target, it counts the bytes it forwards each way, and can cut every
//! connection (as a network failure would), refuse new ones, hang up on
//! them after a marker (a front end without a healthy backend), or cut at
//! random moments (a flaky network, seeded). It runs on its own runtime
//! thread, so tests with or without one can use it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

struct State {
    target: SocketAddr,
    refusing: AtomicBool,
    /// When set, new connections are read until the client has sent this
    /// marker, then hung up on.
    hang_up_after: Mutex<Option<&'static [u8]>>,
    flaky: AtomicBool,
    /// Bumped to cut every open connection.
    cut: watch::Sender<u64>,
    cuts: AtomicU64,
    accepted: AtomicU64,
    hung_up: AtomicU64,
    /// Bytes forwarded client to server, and server to client.
    up: AtomicU64,
    down: AtomicU64,
}

/// A proxy on 127.0.0.1 in front of a target; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// A proxy in front of `target` ("127.0.0.1:PORT", or an address).
    pub fn start(target: impl std::net::ToSocketAddrs) -> Proxy {
        let mut targets = target.to_socket_addrs().expect("the proxy's target");
        let target = targets.next().expect("an address to proxy to");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the proxy's runtime");
        let state = Arc::new(State {
            target,
            refusing: AtomicBool::new(false),
            hang_up_after: Mutex::new(None),
            flaky: AtomicBool::new(false),
            cut: watch::channel(0).0,
            cuts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            hung_up: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the proxy's address");
        runtime.spawn(accept(listener, state.clone()));
        Proxy {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// A proxy to nowhere that hangs up on every connection once it sent
    /// `marker` (it connected, opened its stream, sent its first message).
    pub fn hang_up(marker: &'static [u8]) -> Proxy {
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], 9)));
        proxy.set_hang_up_after(Some(marker));
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While refusing, new connections are accepted and closed at once.
    pub fn set_refusing(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Cuts every open connection (both directions).
    pub fn cut(&self) {
        cut_all(&self.state);
    }

    /// While set, new connections are read until the client sent `marker`,
    /// then hung up on.
    pub fn set_hang_up_after(&self, marker: Option<&'static [u8]>) {
        *self.state.hang_up_after.lock().unwrap() = marker;
    }

    /// Connections hung up on, having sent the marker, so far.
    pub fn hung_up(&self) -> u64 {
        self.state.hung_up.load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far: (client to server, server to client).
    pub fn totals(&self) -> (usize, usize) {
        let s = &self.state;
        let load = |n: &AtomicU64| n.load(Ordering::SeqCst) as usize;
        (load(&s.up), load(&s.down))
    }

    /// Cuts every connection every `min_ms..=max_ms` (seeded) until
    /// [`Proxy::stop_flaky`].
    pub fn start_flaky(&self, min_ms: u64, max_ms: u64, seed: u64) {
        self.state.flaky.store(true, Ordering::SeqCst);
        let state = self.state.clone();
        self.runtime.as_ref().unwrap().spawn(async move {
            let mut rng = Rng::new(seed);
            loop {
                tokio::time::sleep(Duration::from_millis(rng.between(min_ms, max_ms))).await;
                if !state.flaky.load(Ordering::SeqCst) {
                    break;
                }
                cut_all(&state);
            }
        });
    }

    pub fn stop_flaky(&self) {
        self.state.flaky.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_flaky();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn cut_all(state: &State) {
    state.cuts.fetch_add(1, Ordering::SeqCst);
    state.cut.send_modify(|n| *n += 1);
}

async fn accept(listener: std::net::TcpListener, state: Arc<State>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Subscribe before looking at `refusing`: a connection either sees
        // a later cut or is refused.
        let cut = state.cut.subscribe();
        if state.refusing.load(Ordering::SeqCst) {
            continue;
        }
        let hang_up_after = *state.hang_up_after.lock().unwrap();
        let state = state.clone();
        tokio::spawn(async move {
            match hang_up_after {
                Some(marker) => {
                    if read_until(client, marker).await {
                        state.hung_up.fetch_add(1, Ordering::SeqCst);
                    }
                }
                None => {
                    state.accepted.fetch_add(1, Ordering::SeqCst);
                    forward(client, cut, &state).await;
                }
            }
        });
    }
}

/// Forwards both ways until either side closes or the proxy cuts;
/// dropping both sockets then cuts the connection both ways.
async fn forward(client: TcpStream, mut cut: watch::Receiver<u64>, state: &State) {
    let Ok(server) = TcpStream::connect(state.target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = async {
            tokio::join!(
                pump(client_read, server_write, &state.up),
                pump(server_read, client_write, &state.down),
            )
        } => {}
        _ = cut.changed() => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: &AtomicU64,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Reads until `marker` has been received, then drops the socket (hangs
/// up); whether the marker came.
async fn read_until(mut socket: TcpStream, marker: &'static [u8]) -> bool {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
    true
}

/// A seeded random number generator (splitmix64): reproducible scripts.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}
