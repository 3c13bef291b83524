//! One compressed copy of a message queued to many streams.
//!
//! A broadcast is framed once and the same bytes are queued to every
//! recipient's stream; with gzip negotiated each stream compressed its own
//! copy (49 times for a comment in a session of 50). Here the last few
//! compressed messages are kept with the bytes they came from, and a stream
//! queuing those very bytes (same buffer: the kept handle keeps it alive, so
//! equal address and length mean equal content) takes the compressed copy.
//! Only messages up to [`MAX_SHARED_LEN`] are kept (broadcasts; snapshots are
//! one per joiner and large). Bytes queued may hold several messages back
//! to back: each is compressed, or not, by its own length.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use crate::grpc::codec::HEADER_LEN;
use crate::grpc::compression::{self, Encoding, RESPONSE_COMPRESS_THRESHOLD};

/// How many compressed messages are kept.
const KEPT: usize = 16;

/// The largest framed message kept.
pub const MAX_SHARED_LEN: usize = 64 * 1024;

/// (encoding, framed bytes as queued, what they compress to), oldest first.
type Recent = VecDeque<(Encoding, Bytes, Bytes)>;

static RECENT: Mutex<Recent> = Mutex::new(VecDeque::new());

/// A message as the server sends it: [`compression::compress_framed`] for
/// one of at least [`RESPONSE_COMPRESS_THRESHOLD`] bytes (smaller ones go
/// as they are), done once for bytes queued to many streams.
pub fn compress_framed(framed: Bytes, encoding: Encoding) -> Bytes {
    if encoding == Encoding::Identity
        || framed.len() < HEADER_LEN + RESPONSE_COMPRESS_THRESHOLD
        || !compression::holds_message_from(&framed, RESPONSE_COMPRESS_THRESHOLD)
    {
        return framed;
    }
    if framed.len() > MAX_SHARED_LEN {
        return compression::compress_framed_from(framed, encoding, RESPONSE_COMPRESS_THRESHOLD);
    }
    let same = |(kept_encoding, kept, _): &&(Encoding, Bytes, Bytes)| {
        *kept_encoding == encoding && kept.as_ptr() == framed.as_ptr() && kept.len() == framed.len()
    };
    if let Some((_, _, compressed)) = recent().iter().find(same) {
        return compressed.clone();
    }
    let compressed =
        compression::compress_framed_from(framed.clone(), encoding, RESPONSE_COMPRESS_THRESHOLD);
    let mut recent = recent();
    if recent.len() == KEPT {
        recent.pop_front();
    }
    recent.push_back((encoding, framed, compressed.clone()));
    compressed
}

fn recent() -> std::sync::MutexGuard<'static, Recent> {
    RECENT.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::codec::frame_payload;

    fn comment(n: usize) -> Bytes {
        let text = format!("review note {n}: ").repeat(600);
        frame_payload(text.as_bytes())
    }

    #[test]
    fn the_same_bytes_are_compressed_once_and_equal_ones_alike() {
        let framed = comment(1);
        let first = compress_framed(framed.clone(), Encoding::Gzip);
        assert!(first.len() < framed.len() && first[0] == 1, "compressed");
        let again = compress_framed(framed.clone(), Encoding::Gzip);
        assert_eq!(again.as_ptr(), first.as_ptr(), "the kept copy");
        // Equal content in another buffer: compressed alike, not shared.
        let copy = Bytes::copy_from_slice(&framed);
        let other = compress_framed(copy, Encoding::Gzip);
        assert_eq!(other, first);
        assert_ne!(other.as_ptr(), first.as_ptr());
        // Another message never gets the kept copy.
        let different = compress_framed(comment(2), Encoding::Gzip);
        assert_ne!(different, first);
        // Identity and small messages pass through untouched.
        assert_eq!(
            compress_framed(framed.clone(), Encoding::Identity).as_ptr(),
            framed.as_ptr()
        );
        // Below the response threshold: a live event, even a long comment.
        let small = frame_payload("a long comment ".repeat(200).as_bytes());
        assert_eq!(
            compress_framed(small.clone(), Encoding::Gzip).as_ptr(),
            small.as_ptr()
        );
    }

    #[test]
    fn messages_back_to_back_are_compressed_by_their_own_length() {
        // Many live events together pass the threshold, none alone does.
        let events: Vec<Bytes> = (0..12)
            .map(|n| frame_payload(format!("note {n} ").repeat(150).as_bytes()))
            .collect();
        assert!(events.iter().all(|e| e.len() < RESPONSE_COMPRESS_THRESHOLD));
        let together = Bytes::from(events.concat());
        assert!(together.len() > RESPONSE_COMPRESS_THRESHOLD);
        assert_eq!(
            compress_framed(together.clone(), Encoding::Gzip).as_ptr(),
            together.as_ptr()
        );
        // One large message among them: only that one is compressed.
        let large = comment(3);
        let mixed = Bytes::from([&events[0][..], &large[..], &events[1][..]].concat());
        let out = compress_framed(mixed.clone(), Encoding::Gzip);
        assert!(out.len() < mixed.len());
        assert_eq!(&out[..events[0].len()], &events[0][..]);
        assert_eq!(out[events[0].len()], 1, "the large one, flagged compressed");
        assert!(out.ends_with(&events[1]));
    }
}
