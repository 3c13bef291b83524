//! Outbound messages waiting for HTTP/2 send capacity, shared by the server's
//! response sink and the client's request stream.
//!
//! h2's `send_data` accepts any amount and buffers what the peer's window does
//! not allow, without limit. We never hand it more than the capacity it has
//! granted: capacity is reserved, awaited, and then exactly that much is sent,
//! with every message queued meanwhile coalesced into the same DATA payload.
//! What h2 then holds is bounded per stream by its `max_send_buffer_size`;
//! the server also accounts it per connection (see
//! [`crate::grpc::server::budget`]), through the buffer type it hands over.

use std::collections::VecDeque;
use std::future::poll_fn;

use bytes::{Buf, Bytes, BytesMut};
use h2::SendStream;

/// The most we ask h2 to reserve for one write.
const MAX_RESERVATION: usize = 1024 * 1024;

/// Framed messages not yet handed to h2.
#[derive(Debug, Default)]
pub struct OutboundQueue {
    pending: VecDeque<Bytes>,
    len: usize,
}

/// Why a write could not complete.
#[derive(Debug)]
pub enum WriteError {
    /// The stream failed (reset, connection error).
    H2(h2::Error),
    /// The stream was closed for sending.
    Closed,
}

impl OutboundQueue {
    pub fn new() -> Self {
        OutboundQueue::default()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, framed: Bytes) {
        if !framed.is_empty() {
            self.len += framed.len();
            self.pending.push_back(framed);
        }
    }

    /// Takes up to `max` bytes as one buffer: zero-copy when the first
    /// buffer queued alone fills it or is all there is, otherwise the
    /// buffers are gathered into one payload.
    pub fn take(&mut self, max: usize) -> Bytes {
        let front_len = self.pending.front().map_or(0, Bytes::len);
        if front_len == self.len && front_len <= max {
            self.len = 0;
            return self.pending.pop_front().unwrap_or_default();
        }
        if front_len >= max {
            let front = self.pending.front_mut().expect("non-empty");
            let out = front.split_to(max);
            if front.is_empty() {
                self.pending.pop_front();
            }
            self.len -= out.len();
            return out;
        }
        let mut out = BytesMut::with_capacity(max.min(self.len));
        while out.len() < max {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            let n = front.len().min(max - out.len());
            out.extend_from_slice(&front[..n]);
            // A whole message is dropped; a part moves its start (a split
            // would make the message's buffer shared: an allocation).
            if n == front.len() {
                self.pending.pop_front();
            } else {
                front.advance(n);
            }
        }
        self.len -= out.len();
        out.freeze()
    }

    /// Writes everything as capacity is granted; `hand_over` turns each
    /// write into the stream's buffer type (and may account for it).
    /// Cancel-safe: what is not yet written stays queued.
    pub async fn flush<B: Buf>(
        &mut self,
        stream: &mut SendStream<B>,
        mut hand_over: impl FnMut(Bytes) -> B,
    ) -> Result<(), WriteError> {
        while self.len > 0 {
            stream.reserve_capacity(self.len.min(MAX_RESERVATION));
            let mut granted = stream.capacity();
            while granted == 0 {
                match poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(_)) => granted = stream.capacity(),
                    Some(Err(error)) => return Err(WriteError::H2(error)),
                    None => return Err(WriteError::Closed),
                }
            }
            let chunk = hand_over(self.take(granted));
            stream.send_data(chunk, false).map_err(WriteError::H2)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_coalesces_and_splits() {
        let mut q = OutboundQueue::new();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"defg"));
        q.push(Bytes::from_static(b"h"));
        assert_eq!(q.len(), 8);
        assert_eq!(&q.take(5)[..], b"abcde");
        assert_eq!(&q.take(2)[..], b"fg");
        assert_eq!(&q.take(10)[..], b"h");
        assert!(q.is_empty());
        assert!(q.take(10).is_empty());
    }

    #[test]
    fn a_lone_buffer_goes_as_it_is() {
        let mut q = OutboundQueue::new();
        let batch = Bytes::from(b"several messages back to back".to_vec());
        q.push(batch.clone());
        let taken = q.take(100);
        assert_eq!(taken.as_ptr(), batch.as_ptr(), "not copied");
        assert_eq!(taken, batch);
        assert!(q.is_empty());
    }
}
