//! The receiving half of a call, on either side: DATA chunks from h2 go into
//! the [`MessageDecoder`], whole messages come out (compressed ones inflated
//! within the message limit, see [`crate::grpc::compression`]).
//!
//! Flow control: HTTP/2 receive capacity for a message is released only when
//! the reader comes back for the next one (or calls
//! [`Inbound::release_consumed`]), so a slow consumer pushes back on its peer.
//! While the next messages are already here the releases are gathered (up to
//! [`RELEASE_BATCH`] bytes): one release, not one per message, when a burst
//! is read.
//! Bytes of a message still being assembled are released early: its size was
//! already checked against the limit, and a message larger than the stream
//! window could never complete otherwise. On drop everything still held is
//! released, or the connection window would shrink for good.

use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use http::HeaderMap;

use super::codec::MessageDecoder;
use super::compression::{self, Encoding};
use std::sync::atomic::Ordering;

use super::observe::Telemetry;
use super::status::Status;

/// Consumed bytes given back at once while messages are read from what is
/// buffered already (when the reader would wait, everything is given back).
pub const RELEASE_BATCH: usize = 16 * 1024;

pub struct Inbound {
    body: RecvStream,
    decoder: MessageDecoder,
    /// Received from h2 and not yet released.
    unreleased: usize,
    /// Wire bytes of messages handed out, released on the next read.
    consumed: usize,
    /// Bytes of the message being assembled that were already released.
    released_of_partial: usize,
    finished: bool,
    /// The stream's `grpc-encoding`: how messages flagged compressed are
    /// inflated.
    encoding: Encoding,
    telemetry: Arc<Telemetry>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("unreleased", &self.unreleased)
            .field("finished", &self.finished)
            .finish()
    }
}

impl Inbound {
    pub fn new(body: RecvStream, max_message_len: usize, telemetry: Arc<Telemetry>) -> Self {
        Inbound {
            body,
            decoder: MessageDecoder::new(max_message_len),
            unreleased: 0,
            consumed: 0,
            released_of_partial: 0,
            finished: false,
            encoding: Encoding::Identity,
            telemetry,
        }
    }

    /// Declares the stream's message encoding (from `grpc-encoding`):
    /// messages flagged compressed are then accepted and inflated.
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        if encoding != Encoding::Identity {
            self.decoder.accept_compressed();
        }
        self
    }

    pub fn without_observer(body: RecvStream, max_message_len: usize) -> Self {
        Inbound::new(body, max_message_len, Telemetry::detached())
    }

    /// Releases the capacity of the messages already returned.
    pub fn release_consumed(&mut self) {
        let n = std::mem::take(&mut self.consumed);
        self.release(n);
    }

    /// Bytes received and not yet returned as messages.
    pub fn buffered_bytes(&self) -> usize {
        self.decoder.buffered()
    }

    fn release(&mut self, n: usize) {
        let n = n.min(self.unreleased);
        if n > 0 {
            // An error means the stream is gone; nothing to give back then.
            let _ = self.body.flow_control().release_capacity(n);
            self.unreleased -= n;
            self.telemetry
                .stats
                .inbound_buffered
                .fetch_sub(n as i64, Ordering::Relaxed);
        }
    }

    /// The next message, still protobuf-encoded; `Ok(None)` at the end of the
    /// stream. Cancel-safe: the only await is on h2, and dropping it loses
    /// nothing.
    pub async fn raw_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.consumed >= RELEASE_BATCH {
            self.release_consumed();
        }
        loop {
            if let Some(frame) = self.decoder.decode()? {
                self.consumed += frame.wire_len().saturating_sub(self.released_of_partial);
                self.released_of_partial = 0;
                if !frame.compressed {
                    return Ok(Some(frame.payload));
                }
                // Only a negotiated encoding lets the decoder pass a
                // compressed message, and gzip is the only one we speak.
                debug_assert_eq!(self.encoding, Encoding::Gzip);
                let max = self.decoder.max_message_len();
                return Ok(Some(compression::gunzip(&frame.payload, max)?));
            }
            // More must arrive: what was read is given back first.
            self.release_consumed();
            let partial = self.decoder.partial_message_bytes();
            if partial > self.released_of_partial {
                self.release(partial - self.released_of_partial);
                self.released_of_partial = partial;
            }
            if self.finished {
                self.decoder.finish()?;
                return Ok(None);
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    self.telemetry.observer.bytes_received(chunk.len());
                    self.telemetry
                        .stats
                        .inbound_buffered
                        .fetch_add(chunk.len() as i64, Ordering::Relaxed);
                    self.unreleased += chunk.len();
                    self.decoder.push(chunk);
                }
                Some(Err(error)) => return Err(Status::from_h2(&error)),
                None => self.finished = true,
            }
        }
    }

    /// The trailers, once [`Inbound::raw_message`] returned `Ok(None)`.
    pub async fn trailers(&mut self) -> Result<Option<HeaderMap>, Status> {
        self.body.trailers().await.map_err(|e| Status::from_h2(&e))
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        let all = self.unreleased;
        self.release(all);
    }
}
