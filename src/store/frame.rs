//! The stored frame: how a record (or a snapshot) is written to disk, and
//! the reader that finds the frames in a file's bytes. Pure and bounded:
//! recovery, the tests and the `log_frames` fuzz target call [`scan`]
//! directly, and it never panics or allocates beyond the frame list.
//!
//! ```text
//!  0      4        8              16        20        24
//!  | CRv1 | length | session key  | crc(pl) | crc(hdr)| payload (length bytes)
//! ```
//!
//! Both checksums are CRC-32C. The session key (a hash of the session id)
//! sits in the checksummed header, so a frame whose payload is damaged still
//! names the session it belonged to: that session alone is failed. A damaged
//! or partial frame with no good frame after it is a torn tail (a write the
//! crash interrupted): it is cut off. Damage followed by good frames is
//! damage in the middle: the reader resynchronizes on the next good header.

use super::crc::crc32c;

pub const MAGIC: [u8; 4] = *b"CRv1";
pub const HEADER_LEN: usize = 24;

/// The key of a session id in frame headers (FNV-1a, 64 bits).
pub fn session_key(session_id: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for b in session_id.bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Appends one frame holding `payload` to `out`.
pub fn encode(out: &mut Vec<u8>, session_key: u64, payload: &[u8]) {
    encode_with(out, session_key, |out| out.extend_from_slice(payload));
}

/// Appends one frame whose payload `write_payload` appends to `out` in
/// place (no copy of the payload): the header is reserved first and filled
/// in once the payload's length and checksum are known.
pub fn encode_with(out: &mut Vec<u8>, session_key: u64, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    write_payload(out);
    let payload_len = out.len() - start - HEADER_LEN;
    let payload_crc = crc32c(&out[start + HEADER_LEN..]);
    let header = &mut out[start..start + HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&session_key.to_le_bytes());
    header[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c(&header[..20]);
    header[20..24].copy_from_slice(&header_crc.to_le_bytes());
}

/// A good frame found in the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub offset: usize,
    pub session_key: u64,
    pub payload: &'a [u8],
}

/// A damaged frame in the middle of the bytes (good frames follow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: usize,
    /// The session it belonged to, when its header survived.
    pub session_key: Option<u64>,
}

/// What the reader found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan<'a> {
    pub frames: Vec<Frame<'a>>,
    pub damage: Vec<Damage>,
    /// Where the good bytes end: a torn tail starts here (== the length
    /// when there is none).
    pub valid_len: usize,
}

/// A header at `at`, if it is whole and checks out: (payload length,
/// session key, payload crc).
fn header(bytes: &[u8], at: usize, max_payload: usize) -> Option<(usize, u64, u32)> {
    let h = bytes.get(at..at.checked_add(HEADER_LEN)?)?;
    if h[..4] != MAGIC {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if crc32c(&h[..20]) != word(20) {
        return None;
    }
    let len = word(4) as usize;
    if len > max_payload {
        return None;
    }
    let key = u64::from_le_bytes(h[8..16].try_into().ok()?);
    Some((len, key, word(16)))
}

/// The next offset after `from` where a whole, good frame starts.
fn next_good(bytes: &[u8], from: usize, max_payload: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER_LEN <= bytes.len() {
        // Only offsets starting with the magic are worth checking.
        match bytes[at..].windows(4).position(|w| w == MAGIC) {
            Some(skip) => at += skip,
            None => return None,
        }
        if let Some((len, _, crc)) = header(bytes, at, max_payload)
            && let Some(payload) = bytes.get(at + HEADER_LEN..at + HEADER_LEN + len)
            && crc32c(payload) == crc
        {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Finds every frame in `bytes` (payloads of at most `max_payload`).
pub fn scan(bytes: &[u8], max_payload: usize) -> Scan<'_> {
    let mut scan = Scan::default();
    let mut at = 0;
    while at < bytes.len() {
        let good = header(bytes, at, max_payload).and_then(|(len, key, crc)| {
            let payload = bytes.get(at + HEADER_LEN..at + HEADER_LEN + len)?;
            Some((len, key, crc, payload))
        });
        match good {
            Some((len, key, crc, payload)) if crc32c(payload) == crc => {
                scan.frames.push(Frame {
                    offset: at,
                    session_key: key,
                    payload,
                });
                at += HEADER_LEN + len;
                scan.valid_len = at;
            }
            damaged => {
                // Damage in the middle if a good frame follows, else a torn
                // tail: stop, the good bytes end here.
                let Some(next) = next_good(bytes, at + 1, max_payload) else {
                    return scan;
                };
                scan.damage.push(Damage {
                    offset: at,
                    session_key: damaged.map(|(_, key, _, _)| key),
                });
                at = next;
            }
        }
    }
    scan.valid_len = bytes.len();
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(payloads: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (session, payload) in payloads {
            encode(&mut out, session_key(session), payload);
        }
        out
    }

    #[test]
    fn frames_round_trip() {
        let bytes = log(&[("a", b"one"), ("b", b""), ("a", b"three")]);
        let scan = scan(&bytes, 1024);
        assert_eq!(scan.valid_len, bytes.len());
        assert!(scan.damage.is_empty());
        let payloads: Vec<&[u8]> = scan.frames.iter().map(|f| f.payload).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(scan.frames[1].session_key, session_key("b"));
    }

    /// A log cut at any byte of its last frame keeps exactly the frames
    /// before it, and says where the good bytes end.
    #[test]
    fn a_torn_tail_at_every_offset_is_cut_off() {
        let bytes = log(&[
            ("a", b"first record"),
            ("b", b"second"),
            ("a", b"the last one"),
        ]);
        let last = scan(&bytes, 1024).frames[2].offset;
        for cut in last..bytes.len() {
            let scan = scan(&bytes[..cut], 1024);
            assert_eq!(scan.frames.len(), 2, "cut at {cut}");
            assert_eq!(scan.valid_len, last, "cut at {cut}");
            assert!(scan.damage.is_empty(), "cut at {cut}");
        }
        // Zeros after the last frame (a file extended but not written).
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0u8; 100]);
        let scan = scan(&padded, 1024);
        assert_eq!(scan.frames.len(), 3);
        assert_eq!(scan.valid_len, bytes.len());
    }

    /// A flipped bit in a middle frame damages that frame only: the ones
    /// after it are found again, and a payload's damage names its session.
    #[test]
    fn a_flipped_bit_in_the_middle_is_found_and_passed() {
        let bytes = log(&[("a", b"first"), ("b", b"middle record"), ("a", b"last")]);
        let frames = scan(&bytes, 1024)
            .frames
            .clone()
            .into_iter()
            .map(|f| f.offset)
            .collect::<Vec<_>>();
        let (start, end) = (frames[1], frames[2]);
        for at in start..end {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                let scan = scan(&damaged, 1024);
                assert_eq!(scan.valid_len, damaged.len(), "byte {at} bit {bit}");
                assert_eq!(scan.frames.len(), 2, "byte {at} bit {bit}");
                assert_eq!(scan.frames[1].payload, b"last");
                assert_eq!(scan.damage.len(), 1);
                if at >= start + HEADER_LEN {
                    assert_eq!(scan.damage[0].session_key, Some(session_key("b")));
                }
            }
        }
    }

    #[test]
    fn oversized_lengths_are_not_trusted() {
        let bytes = log(&[("a", &[7u8; 100])]);
        let scan = scan(&bytes, 10);
        assert!(scan.frames.is_empty());
        assert_eq!(scan.valid_len, 0);
    }
}
