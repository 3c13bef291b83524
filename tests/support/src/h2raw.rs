//! A tiny raw HTTP/2 client for wire-level tests: it writes exactly the frames
//! a test asks for and shows every frame the server sends, so tests can check
//! what no high-level client exposes (frame boundaries, RST_STREAM codes,
//! GOAWAY, flow-control windows, PINGs).
//!
//! Requests are HPACK-encoded as literals without indexing and without
//! Huffman (always valid HPACK); responses are decoded by a minimal but
//! complete HPACK decoder (static + dynamic table, Huffman strings).
//!
//! Every frame read from the socket goes through [`Conn::ingest`] exactly once:
//! SETTINGS are always ACKed, PINGs are ACKed when `auto_ping_ack` is set,
//! received DATA is given back with WINDOW_UPDATE when `auto_window_update` is
//! set, and the server's windows for our DATA are tracked so
//! [`Conn::send_data`] never violates flow control.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, error::Elapsed, timeout};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long any single "wait for X" may take before the test fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

// Settings identifiers.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

// Error codes.
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame as received. HEADERS frames followed by CONTINUATION frames are
/// merged into one HEADERS frame (flags gain END_HEADERS, `continuations`
/// counts the merged frames); its header block is decoded into `headers`.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub payload: Bytes,
    pub headers: Option<Vec<(String, String)>>,
    pub continuations: usize,
}

impl Frame {
    pub fn end_stream(&self) -> bool {
        matches!(self.kind, DATA | HEADERS) && self.flags & END_STREAM != 0
    }

    pub fn is_ack(&self) -> bool {
        matches!(self.kind, SETTINGS | PING) && self.flags & ACK != 0
    }

    /// The error code of a RST_STREAM frame.
    pub fn rst_code(&self) -> u32 {
        assert_eq!(self.kind, RST_STREAM, "not a RST_STREAM frame: {self:?}");
        be32(&self.payload[..4])
    }

    /// The increment of a WINDOW_UPDATE frame.
    pub fn window_increment(&self) -> u32 {
        assert_eq!(
            self.kind, WINDOW_UPDATE,
            "not a WINDOW_UPDATE frame: {self:?}"
        );
        be32(&self.payload[..4]) & 0x7fff_ffff
    }

    /// The contents of a GOAWAY frame.
    pub fn goaway(&self) -> GoAway {
        assert_eq!(self.kind, GOAWAY, "not a GOAWAY frame: {self:?}");
        GoAway {
            last_stream_id: be32(&self.payload[..4]) & 0x7fff_ffff,
            code: be32(&self.payload[4..8]),
            debug: self.payload.slice(8..),
        }
    }

    /// The parameters of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        assert_eq!(self.kind, SETTINGS, "not a SETTINGS frame: {self:?}");
        self.payload
            .chunks_exact(6)
            .map(|c| (u16::from_be_bytes([c[0], c[1]]), be32(&c[2..6])))
            .collect()
    }
}

/// A decoded GOAWAY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    pub last_stream_id: u32,
    pub code: u32,
    pub debug: Bytes,
}

/// What happened on one stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A header block and whether it ended the stream.
    Headers(Vec<(String, String)>, bool),
    /// A DATA payload (padding removed) and whether it ended the stream.
    Data(Bytes, bool),
    /// RST_STREAM with its error code.
    Reset(u32),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Serialises one frame.
pub fn encode_frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 1 << 24, "frame payload too large");
    let mut out = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS payload.
pub fn settings_payload(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(settings.len() * 6);
    for &(id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

/// Request headers of a gRPC call to `path`.
pub fn grpc_request_headers(path: &str) -> Vec<(String, String)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// One raw HTTP/2 client connection.
pub struct Conn {
    io: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    hpack: Decoder,
    /// Frames read from the socket and not yet returned by `read_frame`.
    backlog: VecDeque<Frame>,
    /// A HEADERS frame waiting for its CONTINUATIONs, and its block so far.
    partial: Option<(Frame, BytesMut)>,
    next_stream_id: u32,
    eof: bool,
    /// ACK the server's PINGs as they arrive (default true).
    pub auto_ping_ack: bool,
    /// Give received DATA back with WINDOW_UPDATEs at once (default true).
    pub auto_window_update: bool,
    /// The server's SETTINGS, in arrival order.
    pub server_settings: Vec<(u16, u32)>,
    peer_initial_window: i64,
    peer_max_frame_size: usize,
    conn_send_window: i64,
    stream_send_windows: HashMap<u32, i64>,
    reset_streams: HashSet<u32>,
    /// Every frame received, in order (merged HEADERS as one frame).
    pub log: Vec<Frame>,
    /// The last GOAWAY received.
    pub goaway: Option<GoAway>,
    /// Non-ACK PINGs received from the server.
    pub pings_received: usize,
}

impl Conn {
    /// Connects, sends the preface and an empty SETTINGS, and waits for (and
    /// ACKs) the server's SETTINGS.
    pub async fn connect(addr: SocketAddr) -> Conn {
        Conn::connect_with(addr, &[]).await
    }

    /// As [`Conn::connect`], announcing `settings` in our SETTINGS frame.
    pub async fn connect_with(addr: SocketAddr, settings: &[(u16, u32)]) -> Conn {
        let io = timeout(DEFAULT_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Conn::handshake(io, settings).await
    }

    /// As [`Conn::connect_with`], on a socket whose kernel receive buffer is
    /// set to `receive_buffer` bytes before connecting, so that a client
    /// that stops reading leaves little in the kernel and the rest in the
    /// server.
    pub async fn connect_with_receive_buffer(
        addr: SocketAddr,
        settings: &[(u16, u32)],
        receive_buffer: u32,
    ) -> Conn {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(receive_buffer)
            .expect("set SO_RCVBUF");
        let io = timeout(DEFAULT_TIMEOUT, socket.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Conn::handshake(io, settings).await
    }

    async fn handshake(io: TcpStream, settings: &[(u16, u32)]) -> Conn {
        io.set_nodelay(true).unwrap();
        let mut conn = Conn {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            hpack: Decoder::new(),
            backlog: VecDeque::new(),
            partial: None,
            next_stream_id: 1,
            eof: false,
            auto_ping_ack: true,
            auto_window_update: true,
            server_settings: Vec::new(),
            peer_initial_window: 65_535,
            peer_max_frame_size: 16_384,
            conn_send_window: 65_535,
            stream_send_windows: HashMap::new(),
            reset_streams: HashSet::new(),
            log: Vec::new(),
            goaway: None,
            pings_received: 0,
        };
        conn.wbuf.extend_from_slice(PREFACE);
        conn.wbuf
            .extend_from_slice(&encode_frame(SETTINGS, 0, 0, &settings_payload(settings)));
        conn.flush().await;
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, conn.read_frame_inner())
                .await
                .expect("timed out waiting for the server's SETTINGS")
                .expect("connection closed before the server's SETTINGS");
            if frame.kind == SETTINGS && !frame.is_ack() {
                break;
            }
            conn.backlog.push_back(frame);
        }
        conn.flush().await;
        conn
    }

    /// The underlying socket (e.g. to shut down our write half).
    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.io
    }

    /// Allocates the next client stream id.
    pub fn next_stream_id(&mut self) -> u32 {
        let id = self.next_stream_id;
        self.next_stream_id += 2;
        id
    }

    /// Writes any queued bytes. Cancel-safe; write errors (the server closed)
    /// are ignored: reads report the closure.
    async fn flush(&mut self) {
        while !self.wbuf.is_empty() {
            match self.io.write_buf(&mut self.wbuf).await {
                Ok(0) | Err(_) => {
                    self.wbuf.clear();
                    break;
                }
                Ok(_) => {}
            }
        }
    }

    /// Writes one frame as given, with no flow-control bookkeeping.
    pub async fn write_frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        self.wbuf
            .extend_from_slice(&encode_frame(kind, flags, stream_id, payload));
        self.flush().await;
    }

    /// Writes raw bytes (not necessarily a frame).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
        self.flush().await;
    }

    /// Reads one frame from the socket (no backlog), assembling
    /// CONTINUATIONs. `None` at EOF or on a socket error. Cancel-safe.
    async fn read_frame_inner(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.parse_buffered() {
                self.ingest(&frame);
                self.log.push(frame.clone());
                return Some(frame);
            }
            if self.eof {
                return None;
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => self.eof = true,
                Ok(_) => {}
            }
        }
    }

    /// Takes complete frames out of the read buffer until one is ready to be
    /// returned (HEADERS are held until their block is complete).
    fn parse_buffered(&mut self) -> Option<Frame> {
        loop {
            if self.rbuf.len() < 9 {
                return None;
            }
            let len = u32::from_be_bytes([0, self.rbuf[0], self.rbuf[1], self.rbuf[2]]) as usize;
            if self.rbuf.len() < 9 + len {
                return None;
            }
            let kind = self.rbuf[3];
            let flags = self.rbuf[4];
            let stream_id = be32(&self.rbuf[5..9]) & 0x7fff_ffff;
            self.rbuf.advance(9);
            let payload = self.rbuf.split_to(len).freeze();
            if let Some((mut head, mut block)) = self.partial.take() {
                assert!(
                    kind == CONTINUATION && stream_id == head.stream_id,
                    "expected CONTINUATION for stream {}, got type {kind} on stream {stream_id}",
                    head.stream_id
                );
                block.extend_from_slice(&payload);
                head.continuations += 1;
                if flags & END_HEADERS != 0 {
                    head.flags |= END_HEADERS;
                    return Some(self.finish_headers(head, block.freeze()));
                }
                self.partial = Some((head, block));
                continue;
            }
            let mut frame = Frame {
                kind,
                flags,
                stream_id,
                payload,
                headers: None,
                continuations: 0,
            };
            match kind {
                HEADERS => {
                    let fragment = strip_headers_payload(flags, frame.payload.clone());
                    if flags & END_HEADERS != 0 {
                        return Some(self.finish_headers(frame, fragment));
                    }
                    self.partial = Some((frame, BytesMut::from(&fragment[..])));
                }
                CONTINUATION => panic!("CONTINUATION without HEADERS on stream {stream_id}"),
                DATA => {
                    frame.payload = strip_padding(flags, frame.payload);
                    return Some(frame);
                }
                _ => return Some(frame),
            }
        }
    }

    fn finish_headers(&mut self, mut frame: Frame, block: Bytes) -> Frame {
        frame.headers = Some(self.hpack.decode(&block));
        frame.payload = block;
        frame
    }

    /// Protocol bookkeeping for each frame received; only queues writes.
    fn ingest(&mut self, frame: &Frame) {
        match frame.kind {
            SETTINGS if !frame.is_ack() => {
                for (id, value) in frame.settings() {
                    match id {
                        SETTINGS_INITIAL_WINDOW_SIZE => {
                            let delta = i64::from(value) - self.peer_initial_window;
                            self.peer_initial_window = i64::from(value);
                            for window in self.stream_send_windows.values_mut() {
                                *window += delta;
                            }
                        }
                        SETTINGS_MAX_FRAME_SIZE => self.peer_max_frame_size = value as usize,
                        _ => {}
                    }
                    self.server_settings.push((id, value));
                }
                self.wbuf
                    .extend_from_slice(&encode_frame(SETTINGS, ACK, 0, &[]));
            }
            PING if !frame.is_ack() => {
                self.pings_received += 1;
                if self.auto_ping_ack {
                    self.wbuf
                        .extend_from_slice(&encode_frame(PING, ACK, 0, &frame.payload));
                }
            }
            WINDOW_UPDATE => {
                let increment = i64::from(frame.window_increment());
                if frame.stream_id == 0 {
                    self.conn_send_window += increment;
                } else if let Some(window) = self.stream_send_windows.get_mut(&frame.stream_id) {
                    *window += increment;
                }
            }
            GOAWAY => self.goaway = Some(frame.goaway()),
            RST_STREAM => {
                self.reset_streams.insert(frame.stream_id);
            }
            DATA if self.auto_window_update => {
                // Padding counts too, but the server never pads.
                let len = frame.payload.len() as u32;
                if len > 0 {
                    let inc = len.to_be_bytes();
                    self.wbuf
                        .extend_from_slice(&encode_frame(WINDOW_UPDATE, 0, 0, &inc));
                    if !frame.end_stream() {
                        self.wbuf.extend_from_slice(&encode_frame(
                            WINDOW_UPDATE,
                            0,
                            frame.stream_id,
                            &inc,
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    /// Reads one frame from the socket into the backlog; false at EOF.
    async fn pump(&mut self) -> bool {
        self.flush().await;
        match self.read_frame_inner().await {
            Some(frame) => {
                self.backlog.push_back(frame);
                true
            }
            None => false,
        }
    }

    /// The next frame, waiting at most `wait`; `Ok(None)` when the server
    /// closed the connection. Cancel-safe.
    pub async fn read_frame_within(&mut self, wait: Duration) -> Result<Option<Frame>, Elapsed> {
        timeout(wait, async {
            loop {
                self.flush().await;
                if let Some(frame) = self.backlog.pop_front() {
                    return Some(frame);
                }
                if !self.pump().await {
                    return None;
                }
            }
        })
        .await
    }

    /// Reads frames until one satisfies `pred` (returned), panicking on EOF
    /// or after `wait`.
    pub async fn read_until(
        &mut self,
        wait: Duration,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> Frame {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame_within(left).await {
                Ok(Some(frame)) if pred(&frame) => return frame,
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "connection closed while waiting; received: {}",
                    self.describe_log()
                ),
                Err(_) => panic!("timed out waiting; received: {}", self.describe_log()),
            }
        }
    }

    /// Reads until the server closes the connection; returns the frames read
    /// meanwhile. Panics after `wait`.
    pub async fn read_until_eof(&mut self, wait: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame_within(left).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return frames,
                Err(_) => panic!(
                    "connection still open after {wait:?}; received: {}",
                    self.describe_log()
                ),
            }
        }
    }

    /// Whether the server has closed the connection (as far as read so far).
    pub fn is_eof(&self) -> bool {
        self.eof && self.rbuf.is_empty() && self.backlog.is_empty()
    }

    /// A one-line-per-frame summary of everything received.
    pub fn describe_log(&self) -> String {
        let mut out = String::new();
        for frame in &self.log {
            out.push_str("\n  ");
            out.push_str(&describe(frame));
        }
        out
    }

    /// Sends a header block on `stream_id` as one HEADERS frame.
    pub async fn send_headers(
        &mut self,
        stream_id: u32,
        headers: &[(String, String)],
        end_stream: bool,
    ) {
        self.send_headers_split(stream_id, headers, end_stream, usize::MAX)
            .await;
    }

    /// Sends a header block as HEADERS plus CONTINUATION frames of at most
    /// `fragment` bytes each.
    pub async fn send_headers_split(
        &mut self,
        stream_id: u32,
        headers: &[(String, String)],
        end_stream: bool,
        fragment: usize,
    ) {
        let block = encode_headers(headers);
        let fragment = fragment.clamp(1, self.peer_max_frame_size);
        let mut chunks: Vec<&[u8]> = block.chunks(fragment).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut flags = 0;
            if i == last {
                flags |= END_HEADERS;
            }
            let kind = if i == 0 {
                if end_stream {
                    flags |= END_STREAM;
                }
                HEADERS
            } else {
                CONTINUATION
            };
            self.wbuf
                .extend_from_slice(&encode_frame(kind, flags, stream_id, chunk));
        }
        self.stream_send_windows
            .entry(stream_id)
            .or_insert(self.peer_initial_window);
        self.flush().await;
    }

    /// Opens a new stream with `headers`; returns its id.
    pub async fn open(&mut self, headers: &[(String, String)], end_stream: bool) -> u32 {
        let id = self.next_stream_id();
        self.send_headers(id, headers, end_stream).await;
        id
    }

    /// Opens a gRPC call to `path` (request headers, stream left open).
    pub async fn open_grpc(&mut self, path: &str) -> u32 {
        self.open(&grpc_request_headers(path), false).await
    }

    /// Sends `data` on `stream_id` in DATA frames as large as the peer's
    /// frame size and windows allow, waiting for WINDOW_UPDATEs as needed.
    /// Returns false if the stream was reset (or the connection closed)
    /// before everything was sent.
    pub async fn send_data(&mut self, stream_id: u32, data: &[u8], end_stream: bool) -> bool {
        self.send_data_chunked(stream_id, data, usize::MAX, end_stream)
            .await
    }

    /// As [`Conn::send_data`] with DATA frames of at most `chunk` bytes.
    pub async fn send_data_chunked(
        &mut self,
        stream_id: u32,
        data: &[u8],
        chunk: usize,
        end_stream: bool,
    ) -> bool {
        let chunk = chunk.clamp(1, self.peer_max_frame_size);
        let mut rest = data;
        loop {
            if self.reset_streams.contains(&stream_id) {
                return false;
            }
            if rest.is_empty() {
                if end_stream {
                    self.write_frame(DATA, END_STREAM, stream_id, &[]).await;
                }
                return true;
            }
            let stream_window = *self
                .stream_send_windows
                .entry(stream_id)
                .or_insert(self.peer_initial_window);
            let allowed = stream_window.min(self.conn_send_window);
            if allowed <= 0 {
                match timeout(DEFAULT_TIMEOUT, self.pump()).await {
                    Ok(true) => continue,
                    Ok(false) => return false,
                    Err(_) => panic!(
                        "timed out waiting for send window on stream {stream_id}; received: {}",
                        self.describe_log()
                    ),
                }
            }
            let n = rest.len().min(chunk).min(allowed as usize);
            let (now, later) = rest.split_at(n);
            rest = later;
            let flags = if rest.is_empty() && end_stream {
                END_STREAM
            } else {
                0
            };
            self.conn_send_window -= n as i64;
            *self
                .stream_send_windows
                .get_mut(&stream_id)
                .expect("inserted") -= n as i64;
            self.wbuf
                .extend_from_slice(&encode_frame(DATA, flags, stream_id, now));
            self.flush().await;
            if rest.is_empty() && end_stream {
                return true;
            }
        }
    }

    pub async fn send_rst_stream(&mut self, stream_id: u32, code: u32) {
        self.write_frame(RST_STREAM, 0, stream_id, &code.to_be_bytes())
            .await;
    }

    pub async fn send_window_update(&mut self, stream_id: u32, increment: u32) {
        self.write_frame(WINDOW_UPDATE, 0, stream_id, &increment.to_be_bytes())
            .await;
    }

    /// Sends a PING and reads until its ACK; returns the frames read before
    /// it. Everything the server queued before the ACK has then been seen.
    pub async fn ping_roundtrip(&mut self) -> Vec<Frame> {
        let data = *b"roundtr!";
        self.write_frame(PING, 0, 0, &data).await;
        let mut before = Vec::new();
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame_within(left).await {
                Ok(Some(f)) if f.kind == PING && f.is_ack() && f.payload[..] == data => {
                    return before;
                }
                Ok(Some(f)) => before.push(f),
                Ok(None) => panic!("connection closed before PING ACK: {}", self.describe_log()),
                Err(_) => panic!("no PING ACK: {}", self.describe_log()),
            }
        }
    }

    /// Collects the frames of `stream_id` until it closes (END_STREAM or
    /// RST_STREAM), answering PINGs and SETTINGS meanwhile and skipping frames
    /// of other streams (they stay in [`Conn::log`]). Panics on EOF or after
    /// [`DEFAULT_TIMEOUT`].
    pub async fn collect_stream(&mut self, stream_id: u32) -> Vec<Event> {
        self.collect_stream_within(stream_id, DEFAULT_TIMEOUT).await
    }

    pub async fn collect_stream_within(&mut self, stream_id: u32, wait: Duration) -> Vec<Event> {
        let deadline = Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match self.read_frame_within(left).await {
                Ok(Some(frame)) => frame,
                Ok(None) => panic!(
                    "connection closed while collecting stream {stream_id}; events {events:?}; received: {}",
                    self.describe_log()
                ),
                Err(_) => panic!(
                    "timed out collecting stream {stream_id}; events {events:?}; received: {}",
                    self.describe_log()
                ),
            };
            if frame.stream_id != stream_id {
                continue;
            }
            match frame.kind {
                HEADERS => {
                    let end = frame.end_stream();
                    events.push(Event::Headers(
                        frame.headers.clone().unwrap_or_default(),
                        end,
                    ));
                    if end {
                        return events;
                    }
                }
                DATA => {
                    let end = frame.end_stream();
                    events.push(Event::Data(frame.payload.clone(), end));
                    if end {
                        return events;
                    }
                }
                RST_STREAM => {
                    events.push(Event::Reset(frame.rst_code()));
                    return events;
                }
                _ => {}
            }
        }
    }

    /// A whole call: opens `path`, sends `body` (already gRPC-framed) with
    /// END_STREAM, and collects the response.
    pub async fn call(&mut self, path: &str, body: &[u8]) -> Vec<Event> {
        let id = self.open_grpc(path).await;
        assert!(
            self.send_data(id, body, true).await,
            "stream {id} reset while sending"
        );
        self.collect_stream(id).await
    }
}

/// With `H2RAW_DUMP` set, every connection prints the frames it received
/// when dropped (run with `--nocapture`).
impl Drop for Conn {
    fn drop(&mut self) {
        if std::env::var_os("H2RAW_DUMP").is_some() {
            eprintln!("h2raw: frames received:{}", self.describe_log());
        }
    }
}

/// A short human-readable description of a frame.
pub fn describe(frame: &Frame) -> String {
    let name = match frame.kind {
        DATA => "DATA",
        HEADERS => "HEADERS",
        PRIORITY => "PRIORITY",
        RST_STREAM => "RST_STREAM",
        SETTINGS => "SETTINGS",
        PUSH_PROMISE => "PUSH_PROMISE",
        PING => "PING",
        GOAWAY => "GOAWAY",
        WINDOW_UPDATE => "WINDOW_UPDATE",
        CONTINUATION => "CONTINUATION",
        _ => "UNKNOWN",
    };
    let detail = match frame.kind {
        DATA => format!("{} bytes", frame.payload.len()),
        HEADERS => format!("{:?}", frame.headers.as_deref().unwrap_or_default()),
        RST_STREAM if frame.payload.len() >= 4 => format!("code {}", frame.rst_code()),
        WINDOW_UPDATE if frame.payload.len() >= 4 => format!("+{}", frame.window_increment()),
        GOAWAY if frame.payload.len() >= 8 => format!("{:?}", frame.goaway()),
        SETTINGS if !frame.is_ack() => format!("{:?}", frame.settings()),
        _ => String::new(),
    };
    format!(
        "{name} stream={} flags={:#04x} {detail}",
        frame.stream_id, frame.flags
    )
}

fn strip_padding(flags: u8, mut payload: Bytes) -> Bytes {
    if flags & PADDED != 0 {
        let pad = usize::from(payload[0]);
        payload.advance(1);
        payload.truncate(payload.len() - pad);
    }
    payload
}

fn strip_headers_payload(flags: u8, payload: Bytes) -> Bytes {
    let mut payload = strip_padding(flags, payload);
    if flags & PRIORITY_FLAG != 0 {
        payload.advance(5);
    }
    payload
}

// ---------------------------------------------------------------------------
// Looking at events.

/// The first value of header `name` in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The response headers: the first header block.
pub fn response_headers(events: &[Event]) -> &[(String, String)] {
    match events.first() {
        Some(Event::Headers(h, _)) => h,
        _ => panic!("stream did not start with HEADERS: {events:?}"),
    }
}

/// The header block that ended the stream (trailers, or a trailers-only
/// response).
pub fn trailers(events: &[Event]) -> &[(String, String)] {
    match events.last() {
        Some(Event::Headers(h, true)) => h,
        _ => panic!("stream did not end with trailers: {events:?}"),
    }
}

/// `grpc-status` from the trailers, as a number.
pub fn grpc_status(events: &[Event]) -> u32 {
    header(trailers(events), "grpc-status")
        .unwrap_or_else(|| panic!("no grpc-status in {events:?}"))
        .parse()
        .expect("numeric grpc-status")
}

/// `grpc-message` from the trailers, percent-decoded ("" when absent).
pub fn grpc_message(events: &[Event]) -> String {
    percent_decode(header(trailers(events), "grpc-message").unwrap_or(""))
}

/// All DATA bytes of a stream, concatenated.
pub fn data(events: &[Event]) -> Bytes {
    let mut out = BytesMut::new();
    for event in events {
        if let Event::Data(bytes, _) = event {
            out.extend_from_slice(bytes);
        }
    }
    out.freeze()
}

/// Number of non-empty DATA frames.
pub fn data_frames(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Data(b, _) if !b.is_empty()))
        .count()
}

/// The gRPC messages in a stream's DATA (uncompressed only).
pub fn messages(events: &[Event]) -> Vec<Bytes> {
    decode_grpc(&data(events))
        .into_iter()
        .map(|(flag, message)| {
            assert_eq!(flag, 0, "compressed response message");
            message
        })
        .collect()
}

/// Decodes the single message of a stream as `M`.
pub fn single_message<M: prost::Message + Default>(events: &[Event]) -> M {
    let messages = messages(events);
    assert_eq!(messages.len(), 1, "expected one message: {events:?}");
    M::decode(messages[0].clone()).expect("valid protobuf")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (
                char::from(bytes[i + 1]).to_digit(16),
                char::from(bytes[i + 2]).to_digit(16),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// gRPC message envelope.

/// Frames `payload` as one gRPC message with the given compressed flag.
pub fn grpc_frame_flag(flag: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flag);
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(payload);
    out.freeze()
}

/// Frames `payload` as one uncompressed gRPC message.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    grpc_frame_flag(0, payload)
}

/// Encodes and frames a protobuf message.
pub fn grpc_encode<M: prost::Message>(message: &M) -> Bytes {
    grpc_frame(&message.encode_to_vec())
}

/// Splits a byte stream into (flag, payload) messages; panics on a
/// truncated message.
pub fn decode_grpc(mut buf: &[u8]) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        assert!(buf.len() >= 5, "truncated gRPC envelope: {buf:?}");
        let flag = buf[0];
        let len = be32(&buf[1..5]) as usize;
        assert!(
            buf.len() >= 5 + len,
            "truncated gRPC message ({len} announced, {} present)",
            buf.len() - 5
        );
        out.push((flag, Bytes::copy_from_slice(&buf[5..5 + len])));
        buf = &buf[5 + len..];
    }
    out
}

// ---------------------------------------------------------------------------
// HPACK (RFC 7541).

/// Encodes headers as literals without indexing, new names, no Huffman.
pub fn encode_headers(headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        encode_string(&mut out, name.as_bytes());
        encode_string(&mut out, value.as_bytes());
    }
    out
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_int(out, 7, 0x00, s.len());
    out.extend_from_slice(s);
}

/// An HPACK integer with an `prefix_bits`-bit prefix; `flags` fills the
/// first byte's high bits.
pub fn encode_int(out: &mut Vec<u8>, prefix_bits: u8, flags: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A minimal HPACK decoder: static and dynamic tables, all representations,
/// Huffman strings. Panics (with a message) on malformed input.
pub struct Decoder {
    dynamic: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            dynamic: VecDeque::new(),
            size: 0,
            // SETTINGS_HEADER_TABLE_SIZE default: we never change it.
            max_size: 4096,
        }
    }

    pub fn decode(&mut self, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                // Indexed header field.
                let index = decode_int(block, &mut pos, 7);
                let (name, value) = self.entry(index);
                out.push((name, value));
            } else if b & 0xc0 == 0x40 {
                // Literal with incremental indexing.
                let index = decode_int(block, &mut pos, 6);
                let name = self.literal_name(block, &mut pos, index);
                let value = decode_string(block, &mut pos);
                self.insert(name.clone(), value.clone());
                out.push((lossy(&name), lossy(&value)));
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update.
                let size = decode_int(block, &mut pos, 5);
                assert!(size <= 4096, "table size update {size} above our limit");
                self.max_size = size;
                self.evict(0);
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let index = decode_int(block, &mut pos, 4);
                let name = self.literal_name(block, &mut pos, index);
                let value = decode_string(block, &mut pos);
                out.push((lossy(&name), lossy(&value)));
            }
        }
        out
    }

    fn literal_name(&self, block: &[u8], pos: &mut usize, index: usize) -> Vec<u8> {
        if index == 0 {
            decode_string(block, pos)
        } else {
            self.entry(index).0.into_bytes()
        }
    }

    fn entry(&self, index: usize) -> (String, String) {
        assert!(index > 0, "HPACK index 0");
        if index <= STATIC_TABLE.len() {
            let (n, v) = STATIC_TABLE[index - 1];
            return (n.to_owned(), v.to_owned());
        }
        let (n, v) = self
            .dynamic
            .get(index - STATIC_TABLE.len() - 1)
            .unwrap_or_else(|| panic!("HPACK index {index} beyond the dynamic table"));
        (lossy(n), lossy(v))
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.dynamic.push_front((name, value));
        }
    }

    /// Evicts until `extra` more bytes fit.
    fn evict(&mut self, extra: usize) {
        while self.size + extra > self.max_size {
            let Some((n, v)) = self.dynamic.pop_back() else {
                self.size = 0;
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn decode_int(block: &[u8], pos: &mut usize, prefix_bits: u8) -> usize {
    let max = (1usize << prefix_bits) - 1;
    let mut value = usize::from(block[*pos]) & max;
    *pos += 1;
    if value < max {
        return value;
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).expect("truncated HPACK integer");
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return value;
        }
        assert!(shift <= 28, "HPACK integer too large");
    }
}

fn decode_string(block: &[u8], pos: &mut usize) -> Vec<u8> {
    let huffman = *block.get(*pos).expect("truncated HPACK string") & 0x80 != 0;
    let len = decode_int(block, pos, 7);
    let raw = block
        .get(*pos..*pos + len)
        .expect("HPACK string longer than the block");
    *pos += len;
    if huffman {
        huffman_decode(raw)
    } else {
        raw.to_vec()
    }
}

/// Decodes a Huffman-coded string (RFC 7541 Appendix B).
pub fn huffman_decode(src: &[u8]) -> Vec<u8> {
    static CODES: OnceLock<HashMap<(u8, u32), u8>> = OnceLock::new();
    let codes = CODES.get_or_init(|| {
        (0..256)
            .map(|sym| ((HUFFMAN_LENGTHS[sym], huffman_codes()[sym]), sym as u8))
            .collect()
    });
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let mut code: u32 = 0;
    let mut len: u8 = 0;
    for byte in src {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if let Some(&sym) = codes.get(&(len, code)) {
                out.push(sym);
                code = 0;
                len = 0;
            } else {
                assert!(len < 30, "invalid Huffman code (or EOS) in {src:?}");
            }
        }
    }
    assert!(
        len < 8 && code == (1u32 << len) - 1,
        "invalid Huffman padding in {src:?}"
    );
    out
}

/// The code of each symbol. HPACK's Huffman code is canonical (codes in
/// order of length, then symbol), so the lengths determine it.
fn huffman_codes() -> &'static [u32; 256] {
    static CODES: OnceLock<[u32; 256]> = OnceLock::new();
    CODES.get_or_init(|| {
        let mut symbols: Vec<usize> = (0..256).collect();
        symbols.sort_by_key(|&s| (HUFFMAN_LENGTHS[s], s));
        let mut codes = [0u32; 256];
        let (mut code, mut len) = (0u32, HUFFMAN_LENGTHS[symbols[0]]);
        for &s in &symbols[1..] {
            code = (code + 1) << (HUFFMAN_LENGTHS[s] - len);
            len = HUFFMAN_LENGTHS[s];
            codes[s] = code;
        }
        codes
    })
}

/// Encodes with the Huffman code (for tests of the decoder).
pub fn huffman_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &b in src {
        acc = (acc << HUFFMAN_LENGTHS[usize::from(b)]) | u64::from(huffman_codes()[usize::from(b)]);
        bits += HUFFMAN_LENGTHS[usize::from(b)];
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) as u8) | ((1u8 << pad) - 1));
    }
    out
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// RFC 7541 Appendix B: the length in bits of each symbol's code (EOS
/// omitted).
const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

#[cfg(test)]
mod tests {
    use super::{Decoder, decode_int, encode_headers, encode_int, huffman_decode, huffman_encode};

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn huffman_rfc_examples() {
        assert_eq!(
            huffman_decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")),
            b"www.example.com"
        );
        assert_eq!(huffman_decode(&hex("a8eb 1064 9cbf")), b"no-cache");
        assert_eq!(huffman_decode(&hex("25a8 49e9 5ba9 7d7f")), b"custom-key");
        assert_eq!(
            huffman_decode(&hex("25a8 49e9 5bb8 e8b4 bf")),
            b"custom-value"
        );
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)), all);
        assert_eq!(
            huffman_encode(b"www.example.com"),
            hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")
        );
    }

    #[test]
    fn hpack_rfc_c4_requests_with_huffman() {
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(
            d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!(
            d.decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"
            )),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
    }

    #[test]
    fn hpack_roundtrips_our_literals_and_size_updates() {
        let headers = pairs(&[(":path", "/a/b"), ("x-long", &"v".repeat(300))]);
        let mut block = vec![0x20]; // size update to 0
        block.extend(encode_headers(&headers));
        assert_eq!(Decoder::new().decode(&block), headers);
        let mut big = Vec::new();
        encode_int(&mut big, 5, 0, 1337);
        assert_eq!(big, [31, 154, 10]);
        let mut pos = 0;
        assert_eq!(decode_int(&big, &mut pos, 5), 1337);
    }
}
