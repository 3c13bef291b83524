//! What a new connection starts with, decided before any protocol runs on it.
//!
//! A gRPC port receives other things too: HTTP/1.1 requests (curl without
//! `--http2-prior-knowledge`, load-balancer probes), TLS spoken to a plaintext
//! port, plaintext spoken to a TLS port, and garbage. [`classify`] looks at the
//! first bytes (pure, no I/O), [`Prefixed`] puts the bytes read back in front of
//! the stream so the real protocol sees them, and [`sniff`] reads just enough
//! of the connection to decide.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Not enough bytes to tell yet.
    Undecided,
    /// The HTTP/2 preface (prior knowledge, as gRPC over h2c uses).
    Http2,
    /// A TLS record (ClientHello): content type 22, version major 3.
    Tls,
    /// An HTTP/1.x request line.
    Http1,
    /// Anything else.
    Garbage,
}

const HTTP1_METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Classifies a connection from its first bytes. Pure and total.
pub fn classify(prefix: &[u8]) -> Opening {
    if prefix.is_empty() {
        return Opening::Undecided;
    }
    if prefix[0] == 0x16 {
        return match prefix.get(1) {
            None => Opening::Undecided,
            Some(3) => Opening::Tls,
            Some(_) => Opening::Garbage,
        };
    }
    let preface_len = prefix.len().min(H2_PREFACE.len());
    if prefix[..preface_len] == H2_PREFACE[..preface_len] {
        return if preface_len == H2_PREFACE.len() {
            Opening::Http2
        } else {
            Opening::Undecided
        };
    }
    let mut could_be_http1 = false;
    for method in HTTP1_METHODS {
        let n = prefix.len().min(method.len());
        if prefix[..n] == method[..n] {
            if n == method.len() {
                return Opening::Http1;
            }
            could_be_http1 = true;
        }
    }
    if could_be_http1 {
        Opening::Undecided
    } else {
        Opening::Garbage
    }
}

/// Reads from `io` until the opening can be classified (at most the length of
/// the HTTP/2 preface). Returns the classification and the bytes read.
pub async fn sniff<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<(Opening, Bytes)> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        let opening = classify(&buf);
        if opening != Opening::Undecided {
            return Ok((opening, buf.freeze()));
        }
        let mut byte_budget = H2_PREFACE.len() - buf.len();
        if byte_budget == 0 {
            return Ok((Opening::Garbage, buf.freeze()));
        }
        // Read only what the preface could still need, never more.
        let mut chunk = [0u8; 24];
        byte_budget = byte_budget.min(chunk.len());
        let n = io.read(&mut chunk[..byte_budget]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A stream with some already-read bytes put back in front of it.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The plain-text answer for an HTTP/1.x client on the HTTP/2-only port.
pub const HTTP1_ON_H2_RESPONSE: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\n\
content-type: text/plain\r\nconnection: close\r\ncontent-length: 43\r\n\r\n\
this endpoint speaks gRPC over HTTP/2 only\n";

/// The plain-text answer for an HTTP/1.x client on a TLS port.
pub const HTTP1_ON_TLS_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain\r\nconnection: close\r\ncontent-length: 33\r\n\r\n\
this endpoint requires TLS (h2)\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_openings() {
        assert_eq!(classify(b""), Opening::Undecided);
        assert_eq!(classify(b"PRI * HTTP/2"), Opening::Undecided);
        assert_eq!(classify(H2_PREFACE), Opening::Http2);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Opening::Tls);
        assert_eq!(classify(b"\x16"), Opening::Undecided);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Opening::Http1);
        assert_eq!(classify(b"PO"), Opening::Undecided);
        assert_eq!(classify(b"POST /x HTTP/1.1"), Opening::Http1);
        assert_eq!(classify(b"PRX"), Opening::Garbage);
        assert_eq!(classify(b"\x00\x01"), Opening::Garbage);
    }

    #[test]
    fn response_lengths_match_bodies() {
        for response in [HTTP1_ON_H2_RESPONSE, HTTP1_ON_TLS_RESPONSE] {
            let text = std::str::from_utf8(response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len());
        }
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_inner() {
        let inner: &[u8] = b" world";
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), inner);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
