//! The client's connection preface, watched as h2 reads it.
//!
//! RFC 9113 §3.4: the client preface is the 24-byte magic *followed by a
//! SETTINGS frame*. h2's server handshake completes once the magic is read,
//! so a client that sends the magic and nothing more would hold a connection
//! until keepalive gives up. [`PrefaceWatch`] sits between the socket and h2,
//! feeds what h2 reads to [`PrefaceParser`] (pure, for tests and fuzzing)
//! until the first frame is complete, and reports it; the connection closes
//! at the handshake deadline when it has not been seen. A first frame that
//! is not SETTINGS fails the read (a connection error).
//!
//! ```text
//!  magic (24 bytes) ─► frame header (9) ─┬─ SETTINGS, stream 0, no ACK ─► payload ─► Complete
//!                                        └─ anything else ────────────────────────► NotSettings
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::grpc::sniff::H2_PREFACE;

const FRAME_HEADER_LEN: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// How far the client preface has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefaceProgress {
    /// More bytes are needed.
    Reading,
    /// The magic and a whole SETTINGS frame have been read.
    Complete,
    /// The first frame after the magic is not a SETTINGS frame (or is an
    /// ACK, or on a stream, or has a length that is not a multiple of 6).
    NotSettings,
}

/// Follows the client preface through arbitrary chunks of bytes. Pure:
/// no I/O, no allocation, constant size.
#[derive(Debug, Clone)]
pub struct PrefaceParser {
    /// Bytes consumed so far (magic and frame header; saturates there).
    read: usize,
    header: [u8; FRAME_HEADER_LEN],
    /// SETTINGS payload bytes still to come, once the header is known.
    payload_left: usize,
    progress: PrefaceProgress,
}

impl Default for PrefaceParser {
    fn default() -> Self {
        PrefaceParser {
            read: 0,
            header: [0; FRAME_HEADER_LEN],
            payload_left: 0,
            progress: PrefaceProgress::Reading,
        }
    }
}

impl PrefaceParser {
    pub fn new() -> Self {
        PrefaceParser::default()
    }

    pub fn progress(&self) -> PrefaceProgress {
        self.progress
    }

    /// Takes the next bytes the client sent; a verdict once reached is final.
    /// The magic itself is not checked here (the sniffer and h2 do that).
    pub fn feed(&mut self, mut bytes: &[u8]) -> PrefaceProgress {
        if self.progress != PrefaceProgress::Reading {
            return self.progress;
        }
        let magic = H2_PREFACE.len();
        if self.read < magic {
            let skip = (magic - self.read).min(bytes.len());
            self.read += skip;
            bytes = &bytes[skip..];
            if self.read < magic {
                return self.progress;
            }
        }
        let header_end = magic + FRAME_HEADER_LEN;
        if self.read < header_end {
            let have = self.read - magic;
            let take = (FRAME_HEADER_LEN - have).min(bytes.len());
            self.header[have..have + take].copy_from_slice(&bytes[..take]);
            self.read += take;
            bytes = &bytes[take..];
            if self.read < header_end {
                return self.progress;
            }
            let h = self.header;
            let length = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if h[3] != SETTINGS || h[4] & ACK != 0 || stream != 0 || !length.is_multiple_of(6) {
                self.progress = PrefaceProgress::NotSettings;
                return self.progress;
            }
            self.payload_left = length;
        }
        self.payload_left -= self.payload_left.min(bytes.len());
        if self.payload_left == 0 {
            self.progress = PrefaceProgress::Complete;
        }
        self.progress
    }
}

/// An I/O stream that watches the client preface go by; a pass-through once
/// the preface is complete.
#[derive(Debug)]
pub struct PrefaceWatch<T> {
    inner: T,
    parser: PrefaceParser,
    complete: Arc<AtomicBool>,
}

impl<T> PrefaceWatch<T> {
    /// Wraps `inner`; `complete` turns true once the client's SETTINGS frame
    /// has been read.
    pub fn new(inner: T, complete: Arc<AtomicBool>) -> Self {
        PrefaceWatch {
            inner,
            parser: PrefaceParser::new(),
            complete,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefaceWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.parser.progress() == PrefaceProgress::Complete {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        match this.parser.feed(&buf.filled()[before..]) {
            PrefaceProgress::Reading => {}
            PrefaceProgress::Complete => this.complete.store(true, Ordering::Relaxed),
            PrefaceProgress::NotSettings => {
                // A failed read hands over no bytes.
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the HTTP/2 client preface must continue with a SETTINGS frame (RFC 9113 section 3.4)",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefaceWatch<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn preface_then(frame: &[u8]) -> Vec<u8> {
        let mut out = H2_PREFACE.to_vec();
        out.extend_from_slice(frame);
        out
    }

    #[test]
    fn the_magic_alone_is_not_a_preface() {
        let mut parser = PrefaceParser::new();
        assert_eq!(parser.feed(H2_PREFACE), PrefaceProgress::Reading);
        assert_eq!(parser.feed(&[]), PrefaceProgress::Reading);
    }

    #[test]
    fn a_settings_frame_completes_it_in_any_chunking() {
        let settings = frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 100]);
        let mut bytes = preface_then(&settings);
        bytes.extend_from_slice(&frame(0x8, 0, 0, &[0, 0, 1, 0])); // then WINDOW_UPDATE
        let settings_end = H2_PREFACE.len() + settings.len();
        for split in 0..bytes.len() {
            let mut parser = PrefaceParser::new();
            let first = parser.feed(&bytes[..split]);
            let expected_first = if split >= settings_end {
                PrefaceProgress::Complete
            } else {
                PrefaceProgress::Reading
            };
            assert_eq!(first, expected_first, "split at {split}");
            assert_eq!(parser.feed(&bytes[split..]), PrefaceProgress::Complete);
        }
        // One byte at a time: complete exactly at the SETTINGS frame's end.
        let mut parser = PrefaceParser::new();
        for (i, byte) in bytes.iter().enumerate() {
            let progress = parser.feed(std::slice::from_ref(byte));
            assert_eq!(progress == PrefaceProgress::Complete, i + 1 >= settings_end);
        }
    }

    #[test]
    fn an_empty_settings_frame_is_enough() {
        let mut parser = PrefaceParser::new();
        assert_eq!(
            parser.feed(&preface_then(&frame(SETTINGS, 0, 0, &[]))),
            PrefaceProgress::Complete
        );
    }

    #[test]
    fn a_header_without_its_payload_is_not_enough() {
        let full = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let mut parser = PrefaceParser::new();
        assert_eq!(
            parser.feed(&preface_then(&full[..FRAME_HEADER_LEN + 5])),
            PrefaceProgress::Reading
        );
    }

    #[test]
    fn other_first_frames_are_refused() {
        for bad in [
            frame(0x6, 0, 0, &[0; 8]),               // PING
            frame(0x1, 0x4, 1, &[0x82]),             // HEADERS
            frame(SETTINGS, ACK, 0, &[]),            // a SETTINGS ACK
            frame(SETTINGS, 0, 1, &[]),              // on a stream
            frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0]), // not a multiple of 6
        ] {
            let mut parser = PrefaceParser::new();
            assert_eq!(
                parser.feed(&preface_then(&bad)),
                PrefaceProgress::NotSettings,
                "{bad:?}"
            );
            assert_eq!(parser.feed(b"more"), PrefaceProgress::NotSettings);
        }
    }

    #[tokio::test]
    async fn the_watch_reports_completion_and_passes_bytes_through() {
        use tokio::io::AsyncReadExt;
        let mut bytes = preface_then(&frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend_from_slice(b"rest");
        let complete = Arc::new(AtomicBool::new(false));
        let mut watch = PrefaceWatch::new(&bytes[..], complete.clone());
        let mut out = Vec::new();
        watch.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, bytes);
        assert!(complete.load(Ordering::Relaxed));

        let bad = preface_then(&frame(0x6, 0, 0, &[0; 8]));
        let complete = Arc::new(AtomicBool::new(false));
        let mut watch = PrefaceWatch::new(&bad[..], complete.clone());
        let error = watch.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(!complete.load(Ordering::Relaxed));
    }
}
