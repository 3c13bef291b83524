//! A gRPC-Web client on raw HTTP/1.1, byte for byte what a browser's fetch
//! sends (a request with a Content-Length, then a response read as it
//! comes: chunk by chunk, frame by frame), so tests see exactly what the
//! server writes: status lines, headers, chunking, the trailers frame.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use codereview::grpc::{Code, Status};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{STEP, within};

/// A response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    /// Lowercase names, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding") == Some("chunked")
    }
}

/// One HTTP/1.1 connection.
pub struct Http1 {
    io: BufReader<TcpStream>,
    /// The Host header a browser would send (the server's address).
    host: String,
    /// Body bytes read but not yet taken as whole gRPC-Web frames (kept
    /// with the connection, so a streaming call can be read on later).
    frames: WebFrames,
    /// The head of the last call started on this connection.
    call_head: Option<Head>,
}

impl Http1 {
    pub async fn connect(addr: SocketAddr) -> Http1 {
        let tcp = within(STEP, "connecting", TcpStream::connect(addr))
            .await
            .expect("connect");
        Http1 {
            io: BufReader::new(tcp),
            host: addr.to_string(),
            frames: WebFrames::default(),
            call_head: None,
        }
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.expect("write");
    }

    /// Sends a request (Host, the server's address, and Content-Length
    /// added) and reads the
    /// response head.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Head {
        let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if method == "POST" || !body.is_empty() {
            text.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        self.write_raw(&bytes).await;
        self.head().await
    }

    /// Reads a response head.
    pub async fn head(&mut self) -> Head {
        within(STEP, "a response head", async {
            let mut line = String::new();
            self.io.read_line(&mut line).await.expect("status line");
            let status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a status line: {line:?}"));
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                self.io.read_line(&mut line).await.expect("header line");
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("a header");
                headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
            Head { status, headers }
        })
        .await
    }

    /// The next chunk of a chunked body; `None` after the last.
    pub async fn chunk(&mut self) -> Option<Vec<u8>> {
        within(STEP, "a chunk", async {
            let mut line = String::new();
            self.io.read_line(&mut line).await.expect("chunk size");
            let size = usize::from_str_radix(line.trim(), 16)
                .unwrap_or_else(|_| panic!("not a chunk size: {line:?}"));
            let mut data = vec![0; size + 2];
            self.io.read_exact(&mut data).await.expect("chunk data");
            assert_eq!(&data[size..], b"\r\n", "a chunk ends in CRLF");
            data.truncate(size);
            (size > 0).then_some(data)
        })
        .await
    }

    /// The whole body of a response.
    pub async fn body(&mut self, head: &Head) -> Vec<u8> {
        if head.chunked() {
            let mut body = Vec::new();
            while let Some(chunk) = self.chunk().await {
                body.extend_from_slice(&chunk);
            }
            return body;
        }
        let length: usize = head
            .header("content-length")
            .map_or(0, |l| l.parse().expect("a content-length"));
        let mut body = vec![0; length];
        within(STEP, "a body", self.io.read_exact(&mut body))
            .await
            .expect("body");
        body
    }

    /// Whether the server closes the connection within [`STEP`].
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(STEP, self.io.read_to_end(&mut rest)).await,
            Ok(Ok(_))
        )
    }

    /// Starts a gRPC-Web call (binary mode) of `path` with `message`.
    pub async fn call<M: prost::Message>(
        &mut self,
        path: &str,
        message: &M,
        headers: &[(&str, &str)],
    ) -> WebCall<'_> {
        let mut all = vec![
            ("content-type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
        ];
        all.extend_from_slice(headers);
        let head = self.request("POST", path, &all, &frame(message)).await;
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(
            head.header("content-type"),
            Some("application/grpc-web+proto")
        );
        self.frames = WebFrames::default();
        self.call_head = Some(head.clone());
        WebCall {
            conn: self,
            head,
            done: false,
        }
    }
}

/// A message framed as gRPC sends it (flag 0, big-endian length).
pub fn frame<M: prost::Message>(message: &M) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// What a gRPC-Web body carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebFrame {
    Message(Bytes),
    /// The trailers frame (flag 0x80), as `name: value` pairs.
    Trailers(Vec<(String, String)>),
}

/// Splits a gRPC-Web body into frames as bytes arrive.
#[derive(Debug, Default)]
pub struct WebFrames {
    buffer: BytesMut,
}

impl WebFrames {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.put_slice(bytes);
    }

    pub fn next_frame(&mut self) -> Option<WebFrame> {
        if self.buffer.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
        if self.buffer.len() < 5 + len {
            return None;
        }
        let flag = self.buffer[0];
        self.buffer.advance(5);
        let payload = self.buffer.split_to(len).freeze();
        if flag & 0x80 == 0 {
            return Some(WebFrame::Message(payload));
        }
        let text = String::from_utf8(payload.to_vec()).expect("ASCII trailers");
        let pairs = text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').expect("a trailer line");
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Some(WebFrame::Trailers(pairs))
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }
}

/// The status a trailers frame carries.
pub fn status_of(trailers: &[(String, String)]) -> Status {
    let get = |name: &str| {
        trailers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let code = get("grpc-status")
        .and_then(|c| c.parse().ok())
        .map_or(Code::Unknown, Code::from_i32);
    let message = get("grpc-message").map_or_else(String::new, |m| {
        codereview::grpc::percent::decode(m.as_bytes())
    });
    Status::new(code, message)
}

/// A gRPC-Web call in progress on an [`Http1`] connection.
pub struct WebCall<'a> {
    conn: &'a mut Http1,
    pub head: Head,
    done: bool,
}

impl WebCall<'_> {
    /// The call last started on `conn`, to read on from where it was left
    /// (frames already received are kept by the connection).
    pub fn continued(conn: &mut Http1) -> WebCall<'_> {
        let head = conn.call_head.clone().expect("a call was started");
        WebCall {
            conn,
            head,
            done: false,
        }
    }

    /// The next message, or the call's status (OK included) at its end.
    pub async fn message<M: prost::Message + Default>(&mut self) -> Result<M, Status> {
        loop {
            match self.conn.frames.next_frame() {
                Some(WebFrame::Message(bytes)) => {
                    return Ok(M::decode(bytes).expect("a valid message"));
                }
                Some(WebFrame::Trailers(trailers)) => {
                    assert!(self.conn.frames.is_empty(), "nothing after the trailers");
                    assert!(
                        self.conn.chunk().await.is_none(),
                        "the body ends after the trailers"
                    );
                    self.done = true;
                    return Err(status_of(&trailers));
                }
                None => {}
            }
            assert!(!self.done, "read past the end of the call");
            match self.conn.chunk().await {
                Some(chunk) => self.conn.frames.push(&chunk),
                None => panic!("the body ended without a trailers frame"),
            }
        }
    }

    /// The unary answer: one message, then OK.
    pub async fn unary<M: prost::Message + Default>(mut self) -> Result<M, Status> {
        let message = self.message::<M>().await?;
        match self.message::<M>().await {
            Err(status) if status.is_ok() => Ok(message),
            Err(status) => Err(status),
            Ok(_) => panic!("a unary call answered twice"),
        }
    }
}
