//! The gRPC message envelope: a 1-byte compressed flag and a 4-byte big-endian
//! length in front of every message (`Length-Prefixed-Message` in the gRPC
//! HTTP/2 spec).
//!
//! [`MessageDecoder`] is pure and I/O-free: the transport pushes whatever chunks
//! HTTP/2 DATA frames delivered (a message may span frames, a frame may hold
//! several messages) and pulls whole messages out. It reads a message's header
//! and checks its length against the configured maximum *before* gathering the
//! body, so an oversized message is rejected without buffering it. Whole
//! messages that sit inside one chunk are sliced out without copying.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the envelope in front of every message.
pub const HEADER_LEN: usize = 5;

/// Default maximum size of a received message, as mainstream gRPC uses.
pub const DEFAULT_MAX_RECV_MESSAGE: usize = 4 * 1024 * 1024;

/// Why the byte stream cannot be decoded. Each maps to one gRPC status in
/// [`crate::grpc::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The header announces a message larger than the configured maximum.
    TooLarge { len: usize, max: usize },
    /// The compressed flag is set but no message encoding was negotiated.
    CompressedWithoutEncoding,
    /// The flag byte is neither 0 nor 1.
    InvalidFlag(u8),
    /// The stream ended in the middle of a message.
    Truncated { buffered: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max} bytes")
            }
            DecodeError::CompressedWithoutEncoding => {
                f.write_str("compressed message without a negotiated grpc-encoding")
            }
            DecodeError::InvalidFlag(flag) => write!(f, "invalid compressed flag {flag}"),
            DecodeError::Truncated { buffered } => {
                write!(
                    f,
                    "stream ended inside a message ({buffered} bytes buffered)"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// One decoded message: its payload (still protobuf-encoded) and envelope flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub compressed: bool,
    pub payload: Bytes,
}

impl Frame {
    /// Bytes this message occupied on the wire, envelope included.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct Header {
    compressed: bool,
    len: usize,
}

/// Incremental decoder of the gRPC envelope over arbitrary chunk boundaries.
#[derive(Debug)]
pub struct MessageDecoder {
    max_message_len: usize,
    /// Whether the stream declared a message encoding other than identity
    /// (`grpc-encoding`); without one, a set compressed flag is an error.
    /// Inflating is the caller's job ([`crate::grpc::compression`]).
    encoding_negotiated: bool,
    input: VecDeque<Bytes>,
    input_len: usize,
    header: Option<Header>,
}

impl MessageDecoder {
    pub fn new(max_message_len: usize) -> Self {
        MessageDecoder {
            max_message_len,
            encoding_negotiated: false,
            input: VecDeque::new(),
            input_len: 0,
            header: None,
        }
    }

    /// Accepts messages with the compressed flag set: the stream declared a
    /// message encoding.
    pub fn accept_compressed(&mut self) {
        self.encoding_negotiated = true;
    }

    /// The configured maximum message length.
    pub fn max_message_len(&self) -> usize {
        self.max_message_len
    }

    /// Appends a chunk of received bytes (any size, any boundary).
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.input_len += chunk.len();
            self.input.push_back(chunk);
        }
    }

    /// Bytes received but not yet returned as part of a message.
    pub fn buffered(&self) -> usize {
        self.input_len + if self.header.is_some() { HEADER_LEN } else { 0 }
    }

    /// Bytes buffered that belong to a message whose header has been accepted
    /// but whose body is incomplete. The transport may release flow-control
    /// credit for these: the message's size is already known to be within the
    /// limit, and it can never complete if the peer cannot send the rest.
    pub fn partial_message_bytes(&self) -> usize {
        match self.header {
            Some(header) if self.input_len < header.len => HEADER_LEN + self.input_len,
            _ => 0,
        }
    }

    /// Returns the next whole message, `Ok(None)` when more input is needed.
    pub fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        let header = match self.header {
            Some(header) => header,
            None => {
                if self.input_len < HEADER_LEN {
                    return Ok(None);
                }
                let mut raw = [0u8; HEADER_LEN];
                self.take_into(&mut raw);
                let compressed = match raw[0] {
                    0 => false,
                    1 => true,
                    flag => return Err(DecodeError::InvalidFlag(flag)),
                };
                if compressed && !self.encoding_negotiated {
                    return Err(DecodeError::CompressedWithoutEncoding);
                }
                let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
                if len > self.max_message_len {
                    return Err(DecodeError::TooLarge {
                        len,
                        max: self.max_message_len,
                    });
                }
                let header = Header { compressed, len };
                self.header = Some(header);
                header
            }
        };
        if self.input_len < header.len {
            return Ok(None);
        }
        self.header = None;
        let payload = self.take_bytes(header.len);
        Ok(Some(Frame {
            compressed: header.compressed,
            payload,
        }))
    }

    /// Checks, at the end of the stream, that no partial message is left.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(DecodeError::Truncated { buffered }),
        }
    }

    fn take_into(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        while filled < out.len() {
            let front = self.input.front_mut().expect("caller checked input_len");
            let n = front.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&front[..n]);
            front.advance(n);
            filled += n;
            if front.is_empty() {
                self.input.pop_front();
            }
        }
        self.input_len -= out.len();
    }

    fn take_bytes(&mut self, len: usize) -> Bytes {
        self.input_len -= len;
        if len == 0 {
            return Bytes::new();
        }
        let front = self.input.front_mut().expect("caller checked input_len");
        if front.len() >= len {
            let out = front.split_to(len);
            if front.is_empty() {
                self.input.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(len);
        while out.len() < len {
            let front = self.input.front_mut().expect("caller checked input_len");
            let n = front.len().min(len - out.len());
            out.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                self.input.pop_front();
            }
        }
        out.freeze()
    }
}

/// Writes the envelope for an uncompressed message of `len` bytes.
pub fn put_header(buf: &mut impl BufMut, len: usize) {
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("message length fits in u32"));
}

/// Frames an already-encoded payload.
pub fn frame_payload(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
    put_header(&mut buf, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

/// Frames messages one after another into shared chunks: a message costs no
/// allocation of its own, and clones of it share its chunk's reference
/// count (a `Bytes` from [`encode_message`] gets a second allocation, for
/// that count, at its first clone). A chunk is freed once every message in
/// it is dropped, so the owner must not keep one message of a chunk for
/// long while dropping the rest; a session's events, kept in order by its
/// history and outboxes and dropped in order, are that case.
///
/// Chunks start small and double (to [`FrameArena::MAX_CHUNK`]) each time
/// one fills, so a quiet owner holds a few hundred bytes, not a full chunk.
#[derive(Debug, Default)]
pub struct FrameArena {
    chunk: BytesMut,
    /// The capacity the next chunk is allocated with.
    next_chunk: usize,
}

impl FrameArena {
    /// The first chunk's size.
    pub const MIN_CHUNK: usize = 512;
    /// The largest chunk; a larger message gets a chunk of its own size.
    pub const MAX_CHUNK: usize = 16 * 1024;

    pub fn new() -> Self {
        FrameArena::default()
    }

    /// Encodes and frames `message` (as [`encode_message`] does) into the
    /// current chunk, or a fresh one when it does not fit.
    pub fn encode<M: prost::Message>(&mut self, message: &M) -> Bytes {
        let len = message.encoded_len();
        let framed_len = HEADER_LEN + len;
        if self.chunk.capacity() - self.chunk.len() < framed_len {
            let size = self.next_chunk.max(Self::MIN_CHUNK);
            self.next_chunk = (size * 2).min(Self::MAX_CHUNK);
            self.chunk = BytesMut::with_capacity(size.max(framed_len));
        }
        put_header(&mut self.chunk, len);
        message.encode_raw(&mut self.chunk);
        debug_assert_eq!(self.chunk.len(), framed_len, "encoded_len was exact");
        self.chunk.split().freeze()
    }
}

/// Encodes a protobuf message and frames it, in one allocation.
pub fn encode_message<M: prost::Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
    put_header(&mut buf, len);
    // The buffer was sized by `encoded_len` above: `encode_raw` writes
    // without `encode`'s second pass over the message to check the space.
    message.encode_raw(&mut buf);
    debug_assert_eq!(buf.len(), HEADER_LEN + len, "encoded_len was exact");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.extend_from_slice(&frame_payload(p));
        }
        out
    }

    fn decode_all(dec: &mut MessageDecoder) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = dec.decode().unwrap() {
            out.push(frame.payload);
        }
        out
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let payloads: [&[u8]; 4] = [b"hello", b"", b"a longer message body", &[0u8; 300]];
        let wire = framed(&payloads);
        for split in 0..=wire.len() {
            let mut dec = MessageDecoder::new(1024);
            dec.push(Bytes::copy_from_slice(&wire[..split]));
            let mut got = decode_all(&mut dec);
            dec.push(Bytes::copy_from_slice(&wire[split..]));
            got.extend(decode_all(&mut dec));
            assert_eq!(got.len(), payloads.len(), "split at {split}");
            for (g, p) in got.iter().zip(payloads.iter()) {
                assert_eq!(&g[..], *p, "split at {split}");
            }
            dec.finish().unwrap();
        }
    }

    #[test]
    fn one_byte_chunks() {
        let wire = framed(&[b"abc", b"defgh"]);
        let mut dec = MessageDecoder::new(1024);
        let mut got = Vec::new();
        for b in wire {
            dec.push(Bytes::copy_from_slice(&[b]));
            got.extend(decode_all(&mut dec));
        }
        assert_eq!(
            got,
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")]
        );
    }

    #[test]
    fn many_messages_in_one_chunk_are_sliced_without_copy() {
        let wire = Bytes::from(framed(&[b"one", b"two", b"three"]));
        let base = wire.as_ptr() as usize;
        let mut dec = MessageDecoder::new(1024);
        dec.push(wire.clone());
        let got = decode_all(&mut dec);
        assert_eq!(got.len(), 3);
        // The payloads point into the pushed buffer.
        assert_eq!(got[0].as_ptr() as usize, base + HEADER_LEN);
    }

    #[test]
    fn oversized_message_rejected_from_header_alone() {
        let mut dec = MessageDecoder::new(10);
        let mut header = BytesMut::new();
        put_header(&mut header, 11);
        dec.push(header.freeze());
        assert_eq!(
            dec.decode(),
            Err(DecodeError::TooLarge { len: 11, max: 10 })
        );
        // Exactly at the limit is fine.
        let mut dec = MessageDecoder::new(10);
        dec.push(frame_payload(&[7u8; 10]));
        assert_eq!(dec.decode().unwrap().unwrap().payload.len(), 10);
    }

    #[test]
    fn compressed_flag_without_encoding_is_rejected() {
        let mut dec = MessageDecoder::new(10);
        dec.push(Bytes::from_static(&[1, 0, 0, 0, 1, 42]));
        assert_eq!(dec.decode(), Err(DecodeError::CompressedWithoutEncoding));
        let mut dec = MessageDecoder::new(10);
        dec.push(Bytes::from_static(&[2, 0, 0, 0, 0]));
        assert_eq!(dec.decode(), Err(DecodeError::InvalidFlag(2)));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut dec = MessageDecoder::new(100);
        dec.push(Bytes::from_static(&[0, 0, 0, 0, 4, 1, 2]));
        assert_eq!(dec.decode(), Ok(None));
        assert_eq!(dec.partial_message_bytes(), 7);
        assert_eq!(dec.finish(), Err(DecodeError::Truncated { buffered: 7 }));
        let mut dec = MessageDecoder::new(100);
        dec.push(Bytes::from_static(&[0, 0]));
        assert_eq!(dec.finish(), Err(DecodeError::Truncated { buffered: 2 }));
    }

    #[test]
    fn the_arena_frames_as_encode_message_does_and_shares_its_chunks() {
        let mut arena = FrameArena::new();
        let mut framed = Vec::new();
        for size in [0usize, 3, 200, 600, 40, FrameArena::MAX_CHUNK * 2, 7] {
            let msg = crate::pb::testing::Payload {
                r#type: size as i32,
                body: Bytes::from(vec![b'x'; size]),
            };
            let bytes = arena.encode(&msg);
            assert_eq!(bytes, encode_message(&msg), "a body of {size} bytes");
            framed.push((bytes, msg));
        }
        // Dropping some leaves the others whole.
        framed.retain(|(bytes, _)| bytes.len() % 2 == 0);
        for (bytes, msg) in &framed {
            assert_eq!(*bytes, encode_message(msg));
        }
        // Messages follow one another in the same chunk.
        let mut arena = FrameArena::new();
        let small = crate::pb::testing::Payload::default();
        let first = arena.encode(&small);
        let second = arena.encode(&small);
        assert_eq!(
            second.as_ptr() as usize - first.as_ptr() as usize,
            first.len(),
            "the second follows the first in the same chunk"
        );
    }

    #[test]
    fn encode_message_matches_frame_payload() {
        let msg = crate::pb::testing::Payload {
            r#type: 0,
            body: Bytes::from_static(b"xyz"),
        };
        let encoded = encode_message(&msg);
        assert_eq!(encoded, frame_payload(&prost::Message::encode_to_vec(&msg)));
    }
}
