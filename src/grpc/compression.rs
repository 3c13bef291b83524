//! Message compression, as the gRPC compression spec defines it: the
//! encodings we speak (`identity` and `gzip`), compressing one framed
//! message on the way out, and inflating one on the way in — bounded.
//!
//! The bound is the point of this module. A compressed message is untrusted:
//! deflate reaches about 1000:1, so a 4 MiB message (within the default
//! limit) could inflate to 4 GiB. [`gunzip`] never holds more than the
//! receive limit of output: it allocates the size the gzip trailer announces
//! (capped at the limit) and, should the stream turn out longer, counts the
//! rest through a fixed scratch buffer before allocating anything more. A
//! message that inflates past the limit is refused having allocated at most
//! the limit, and the work done is bounded by the limit too (inflating stops
//! one byte past it).
//!
//! Everything here is pure (bytes in, bytes out), for tests and the
//! `inflate` fuzz target.

use std::cell::RefCell;
use std::io::Read;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::bufread::MultiGzDecoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use super::codec::HEADER_LEN;

/// The encodings we accept, sent as `grpc-accept-encoding` on every response
/// and every request of our client.
pub const ACCEPT_ENCODING: &str = "gzip, identity";

/// Messages below this many bytes go uncompressed even by a sender that
/// chose gzip (`--compress`): cursors, acks and single edits are tens of
/// bytes, where gzip's 18 bytes of framing and the CPU buy nothing.
pub const COMPRESS_THRESHOLD: usize = 1024;

/// What the server compresses unasked, for a peer that accepts gzip: only
/// messages of at least this many bytes. Live events (cursors, acks, edits,
/// comments: a comment or a line is at most 4 KiB by default) are where a
/// server spends its time, and compressing a 1 KiB comment costs about 40 us
/// of CPU to save well under 1 KiB (`scripts/bench-peer`, 1 KiB comments to
/// 50 sessions x 4: 40k msgs/s compressed, 308k not). Snapshots, uploads'
/// replies and files replayed to late joiners are tens of kilobytes to
/// megabytes and shrink several times (README "Tools").
pub const RESPONSE_COMPRESS_THRESHOLD: usize = 8 * 1024;

/// The deflate level of what we send. Measured on this crate's own sources
/// (1.1 MB, `cargo test --release --lib -- --ignored --nocapture
/// measure_levels`): level 1 leaves 34% of the bytes in 25 ms, level 3 25%
/// in 47 ms, level 6 (zlib's default) 24% in 127 ms. The server compresses
/// each recipient's copy of a large message (a snapshot per joining
/// participant), so level 3 it is: level 6's bytes at a third of its CPU.
const LEVEL: u32 = 3;

/// Output is counted through this much scratch when the gzip trailer
/// understated the size (see [`gunzip`]).
const SCRATCH_LEN: usize = 16 * 1024;

/// A message encoding (`grpc-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// No compression.
    #[default]
    Identity,
    /// gzip (RFC 1952).
    Gzip,
}

impl Encoding {
    /// The encoding a `grpc-encoding` value names; `None` when we do not
    /// speak it (the caller answers UNIMPLEMENTED with [`ACCEPT_ENCODING`]).
    pub fn from_header(value: &[u8]) -> Option<Encoding> {
        let value = value.trim_ascii();
        if value.eq_ignore_ascii_case(b"identity") {
            Some(Encoding::Identity)
        } else if value.eq_ignore_ascii_case(b"gzip") {
            Some(Encoding::Gzip)
        } else {
            None
        }
    }

    /// The header value.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
        }
    }

    /// The best encoding a peer's `grpc-accept-encoding` lines allow for
    /// what we send: gzip when listed, else identity.
    pub fn preferred_by<'a>(accept_lines: impl IntoIterator<Item = &'a [u8]>) -> Encoding {
        let gzip = accept_lines
            .into_iter()
            .flat_map(|line| line.split(|&b| b == b','))
            .any(|token| Encoding::from_header(token) == Some(Encoding::Gzip));
        if gzip {
            Encoding::Gzip
        } else {
            Encoding::Identity
        }
    }
}

/// Why a compressed message cannot be inflated. Each maps to one gRPC status
/// in [`crate::grpc::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit.
    TooLarge { max: usize },
    /// It is not a valid gzip stream (bad header, deflate data, CRC or
    /// length, or trailing bytes).
    Corrupt(String),
}

impl std::fmt::Display for InflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InflateError::TooLarge { max } => write!(
                f,
                "compressed message inflates to more than the limit of {max} bytes"
            ),
            InflateError::Corrupt(why) => write!(f, "cannot inflate the gzip message: {why}"),
        }
    }
}

impl std::error::Error for InflateError {}

fn corrupt(error: std::io::Error) -> InflateError {
    InflateError::Corrupt(error.to_string())
}

/// The uncompressed size a gzip stream's trailer claims (ISIZE, the size
/// modulo 2^32 of its last member). Untrusted: only a first guess.
fn claimed_size(compressed: &[u8]) -> usize {
    match compressed.len().checked_sub(4) {
        Some(at) => u32::from_le_bytes(compressed[at..].try_into().expect("4 bytes")) as usize,
        None => 0,
    }
}

/// Reads until `out` is full or the stream ends; returns the bytes read.
fn fill(decoder: &mut impl Read, out: &mut [u8]) -> Result<usize, InflateError> {
    let mut filled = 0;
    while filled < out.len() {
        match decoder.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(corrupt(error)),
        }
    }
    Ok(filled)
}

/// Counts what is left of the stream through a scratch buffer, stopping as
/// soon as the total passes `max`.
fn count_rest(
    decoder: &mut impl Read,
    mut total: usize,
    max: usize,
) -> Result<usize, InflateError> {
    let mut scratch = [0u8; SCRATCH_LEN];
    loop {
        let n = fill(decoder, &mut scratch)?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
        if total > max {
            return Err(InflateError::TooLarge { max });
        }
    }
}

/// Inflates one gzip-compressed message (one or more gzip members), holding
/// at most `max_len` bytes of output; a message that inflates to more is
/// refused with [`InflateError::TooLarge`]. Pure and total: any input gives
/// `Ok` or `Err`, never a panic.
pub fn gunzip(compressed: &[u8], max_len: usize) -> Result<Bytes, InflateError> {
    if compressed.is_empty() {
        return Err(InflateError::Corrupt("empty message".into()));
    }
    // First guess: the trailer's size, capped at the limit. Exact for every
    // honest single-member stream, so the common case inflates once into a
    // buffer of exactly the right size.
    let guess = claimed_size(compressed).min(max_len);
    let mut out = vec![0u8; guess];
    let mut decoder = MultiGzDecoder::new(compressed);
    let filled = fill(&mut decoder, &mut out)?;
    let mut probe = [0u8; 1];
    if fill(&mut decoder, &mut probe)? == 0 {
        out.truncate(filled);
        return Ok(Bytes::from(out));
    }
    if guess == max_len {
        return Err(InflateError::TooLarge { max: max_len });
    }
    // The trailer understated the size (several members, or a lie). Free the
    // guess, count the true size without keeping it, then inflate again into
    // exactly that much.
    drop(out);
    let total = count_rest(&mut decoder, filled + 1, max_len)?;
    let mut out = vec![0u8; total];
    let mut decoder = MultiGzDecoder::new(compressed);
    let filled = fill(&mut decoder, &mut out)?;
    if filled != total {
        return Err(InflateError::Corrupt("inconsistent length".into()));
    }
    Ok(Bytes::from(out))
}

/// A gzip member's header (RFC 1952): magic, deflate, no flags, no time, no
/// extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

thread_local! {
    /// Each thread's deflate state, reset between messages: a new one
    /// allocates and zeroes some 300 KB of tables, which cost more than
    /// compressing a message of a few KB did (most of the server's CPU when
    /// every participant received 1 KiB comments gzipped).
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Compresses one message payload into a gzip stream.
pub fn gzip(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(GZIP_HEADER.len() + payload.len() / 2 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    DEFLATE.with(|slot| {
        let mut slot = slot.borrow_mut();
        let deflate = slot.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        deflate.reset();
        loop {
            let taken = deflate.total_in() as usize;
            let status = deflate
                .compress_vec(&payload[taken..], &mut out, FlushCompress::Finish)
                .expect("deflate into memory cannot fail");
            if status == Status::StreamEnd {
                break;
            }
            // Out of room: more.
            out.reserve(out.capacity().max(64));
        }
    });
    let mut crc = Crc::new();
    crc.update(payload);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the length modulo 2^32.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out
}

/// Framed messages as they should go to a peer that accepts `encoding`.
/// With gzip, each uncompressed message of at least [`COMPRESS_THRESHOLD`]
/// bytes that compression makes smaller is replaced by its compressed form
/// (flag 1); anything else — identity, small messages, incompressible ones,
/// bytes that are not a whole sequence of uncompressed messages — is returned
/// unchanged, without a copy.
pub fn compress_framed(framed: Bytes, encoding: Encoding) -> Bytes {
    compress_framed_from(framed, encoding, COMPRESS_THRESHOLD)
}

/// [`compress_framed`], compressing only messages of at least `min_len`
/// bytes.
pub fn compress_framed_from(framed: Bytes, encoding: Encoding, min_len: usize) -> Bytes {
    if encoding == Encoding::Identity || framed.len() < HEADER_LEN + min_len {
        return framed;
    }
    let mut rest = &framed[..];
    let mut out: Option<BytesMut> = None;
    let mut copied_up_to = 0;
    while !rest.is_empty() {
        if rest.len() < HEADER_LEN || rest[0] != 0 {
            return framed;
        }
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
            return framed;
        };
        let start = framed.len() - rest.len();
        if len >= min_len {
            let compressed = gzip(payload);
            if compressed.len() < len {
                let out = out.get_or_insert_with(|| BytesMut::with_capacity(framed.len() / 2));
                out.put_slice(&framed[copied_up_to..start]);
                out.put_u8(1);
                out.put_u32(u32::try_from(compressed.len()).expect("smaller than a u32 message"));
                out.put_slice(&compressed);
                copied_up_to = start + HEADER_LEN + len;
            }
        }
        rest.advance(HEADER_LEN + len);
    }
    match out {
        Some(mut out) => {
            out.put_slice(&framed[copied_up_to..]);
            out.freeze()
        }
        None => framed,
    }
}

/// Whether `framed`, a whole sequence of uncompressed framed messages,
/// holds one of at least `min_len` bytes (false for anything else): read
/// from the messages' headers alone.
pub fn holds_message_from(framed: &[u8], min_len: usize) -> bool {
    let mut rest = framed;
    while rest.len() >= HEADER_LEN && rest[0] == 0 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len >= min_len {
            return rest.len() - HEADER_LEN >= len;
        }
        let Some(next) = rest.get(HEADER_LEN + len..) else {
            return false;
        };
        rest = next;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::codec::{DecodeError, MessageDecoder, frame_payload};
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn the_reused_deflate_state_makes_standard_gzip_each_time() {
        // Compressible, incompressible (it grows), empty and large, one
        // after another on the same thread's state.
        let mut noise = Vec::new();
        let mut x: u32 = 1;
        for _ in 0..5000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            noise.push((x >> 16) as u8);
        }
        for payload in [source_text(5000), noise, Vec::new(), source_text(300_000)] {
            let compressed = gzip(&payload);
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(&compressed[..])
                .read_to_end(&mut inflated)
                .unwrap();
            assert!(inflated == payload, "{} bytes", payload.len());
        }
    }

    fn source_text(bytes: usize) -> Vec<u8> {
        let mut text = Vec::new();
        let mut i = 0;
        while text.len() < bytes {
            text.extend_from_slice(
                format!(
                    "    let value_{i} = compute(value_{}, {});\n",
                    i / 2,
                    i % 97
                )
                .as_bytes(),
            );
            i += 1;
        }
        text.truncate(bytes);
        text
    }

    /// A gzip stream of `megabytes` MiB of zeros, built without compressing
    /// them all: one deflate block of 1 MiB of zeros (after a sync flush,
    /// the stream repeats it byte for byte), repeated, then the trailer.
    pub(crate) fn zeros_bomb(megabytes: usize) -> Vec<u8> {
        use flate2::Crc;
        let chunk = vec![0u8; 1 << 20];
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), Compression::new(9));
        encoder.write_all(&chunk).unwrap();
        encoder.flush().unwrap();
        let first_len = encoder.get_ref().len();
        encoder.write_all(&chunk).unwrap();
        encoder.flush().unwrap();
        let first = encoder.get_ref()[..first_len].to_vec();
        let repeated = encoder.get_ref()[first_len..].to_vec();
        let mut end = flate2::write::DeflateEncoder::new(Vec::new(), Compression::new(9));
        end.write_all(&[]).unwrap();
        let final_block = end.finish().unwrap();
        let mut crc = Crc::new();
        let mut chunk_crc = Crc::new();
        chunk_crc.update(&chunk);
        for _ in 0..megabytes {
            crc.combine(&chunk_crc);
        }
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.extend_from_slice(&first);
        for _ in 1..megabytes {
            out.extend_from_slice(&repeated);
        }
        out.extend_from_slice(&final_block);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&((megabytes << 20) as u32).to_le_bytes());
        out
    }

    /// The figures behind [`LEVEL`]: size and time per level on the crate's
    /// own sources. A measurement, not a test: run it by hand, in release.
    #[test]
    #[ignore = "a measurement: cargo test --release --lib -- --ignored --nocapture measure_levels"]
    fn measure_levels() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut text = Vec::new();
        let mut dirs = vec![root.join("src"), root.join("tests")];
        while let Some(dir) = dirs.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for path in entries {
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    text.extend(std::fs::read(path).unwrap());
                }
            }
        }
        for level in [1, 2, 3, 4, 6, 9] {
            let started = std::time::Instant::now();
            let mut encoder = GzEncoder::new(Vec::new(), Compression::new(level));
            encoder.write_all(&text).unwrap();
            let compressed = encoder.finish().unwrap();
            let elapsed = started.elapsed();
            println!(
                "level {level}: {} of {} bytes ({:.1}%) in {:.1} ms",
                compressed.len(),
                text.len(),
                compressed.len() as f64 * 100.0 / text.len() as f64,
                elapsed.as_secs_f64() * 1000.0
            );
        }
    }

    #[test]
    fn encodings_parse_and_negotiate() {
        assert_eq!(Encoding::from_header(b"gzip"), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(b" GZIP "), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(b"identity"), Some(Encoding::Identity));
        assert_eq!(Encoding::from_header(b"br"), None);
        assert_eq!(Encoding::from_header(b"deflate"), None);
        let lines: [&[u8]; 2] = [b"identity, deflate", b"gzip"];
        assert_eq!(Encoding::preferred_by(lines), Encoding::Gzip);
        assert_eq!(
            Encoding::preferred_by([&b"identity,deflate,gzip"[..]]),
            Encoding::Gzip
        );
        assert_eq!(
            Encoding::preferred_by([&b"identity, deflate"[..]]),
            Encoding::Identity
        );
        assert_eq!(Encoding::preferred_by([]), Encoding::Identity);
    }

    #[test]
    fn gzip_round_trips() {
        for len in [0, 1, 100, COMPRESS_THRESHOLD, 300_000] {
            let text = source_text(len);
            let compressed = gzip(&text);
            assert!(gunzip(&compressed, len).unwrap() == text, "{len}");
        }
    }

    #[test]
    fn inflating_past_the_limit_is_refused() {
        let text = source_text(10_000);
        let compressed = gzip(&text);
        assert_eq!(gunzip(&compressed, 10_000).unwrap().len(), 10_000);
        assert_eq!(
            gunzip(&compressed, 9_999),
            Err(InflateError::TooLarge { max: 9_999 })
        );
    }

    #[test]
    fn a_kilobyte_bomb_is_refused_within_the_limit() {
        // About 1 KiB on the wire, 1 MiB inflated.
        let bomb = zeros_bomb(1);
        assert!(bomb.len() < 1100, "{}", bomb.len());
        assert_eq!(gunzip(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(
            gunzip(&bomb, 64 << 10),
            Err(InflateError::TooLarge { max: 64 << 10 })
        );
        // The repeated blocks are valid deflate: 8 MiB of zeros, CRC and all.
        let bigger = zeros_bomb(8);
        let inflated = gunzip(&bigger, 8 << 20).unwrap();
        assert_eq!(inflated.len(), 8 << 20);
        assert!(inflated.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_lying_trailer_costs_a_second_pass_not_the_bound() {
        let text = source_text(50_000);
        let mut compressed = gzip(&text);
        let at = compressed.len() - 4;
        // Claim 10 bytes: the CRC/length check fails at the end.
        compressed[at..].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            gunzip(&compressed, 1 << 20),
            Err(InflateError::Corrupt(_))
        ));
        // Two honest members: the trailer names only the last one.
        let mut two = gzip(&text);
        two.extend_from_slice(&gzip(b"tail"));
        let mut expected = text.clone();
        expected.extend_from_slice(b"tail");
        assert!(gunzip(&two, 1 << 20).unwrap() == expected);
        assert_eq!(
            gunzip(&two, 50_003),
            Err(InflateError::TooLarge { max: 50_003 })
        );
    }

    #[test]
    fn garbage_is_corrupt() {
        assert!(matches!(gunzip(b"", 10), Err(InflateError::Corrupt(_))));
        assert!(matches!(
            gunzip(b"not gzip at all", 100),
            Err(InflateError::Corrupt(_))
        ));
        let mut compressed = gzip(&source_text(5000));
        compressed[20] ^= 0x55;
        assert!(gunzip(&compressed, 10_000).is_err());
        let mut trailing = gzip(b"hello");
        trailing.extend_from_slice(b"junk");
        assert!(matches!(
            gunzip(&trailing, 100),
            Err(InflateError::Corrupt(_))
        ));
        let truncated = gzip(&source_text(5000));
        assert!(gunzip(&truncated[..truncated.len() / 2], 10_000).is_err());
    }

    #[test]
    fn only_large_compressible_messages_are_compressed() {
        let small = frame_payload(&source_text(COMPRESS_THRESHOLD - 1));
        assert!(compress_framed(small.clone(), Encoding::Gzip) == small);
        let large = frame_payload(&source_text(100_000));
        assert!(compress_framed(large.clone(), Encoding::Identity) == large);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..5000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let incompressible = frame_payload(&random);
        assert!(compress_framed(incompressible.clone(), Encoding::Gzip) == incompressible);
        let compressed = compress_framed(large.clone(), Encoding::Gzip);
        assert!(compressed.len() < large.len() / 3, "{}", compressed.len());
        assert_eq!(compressed[0], 1);
        let mut decoder = MessageDecoder::new(1 << 20);
        decoder.push(compressed.clone());
        assert_eq!(
            decoder.decode(),
            Err(DecodeError::CompressedWithoutEncoding)
        );
        let mut decoder = MessageDecoder::new(1 << 20);
        decoder.accept_compressed();
        decoder.push(compressed);
        let frame = decoder.decode().unwrap().unwrap();
        assert!(frame.compressed);
        assert!(gunzip(&frame.payload, 1 << 20).unwrap() == large.slice(HEADER_LEN..));
    }

    #[test]
    fn a_sequence_of_messages_is_compressed_message_by_message() {
        let small = frame_payload(b"cursor");
        let large = frame_payload(&source_text(20_000));
        let both: Bytes = [&small[..], &large[..], &small[..]].concat().into();
        let out = compress_framed(both, Encoding::Gzip);
        let mut decoder = MessageDecoder::new(1 << 20);
        decoder.accept_compressed();
        decoder.push(out);
        let flags: Vec<bool> = std::iter::from_fn(|| decoder.decode().unwrap())
            .map(|frame| frame.compressed)
            .collect();
        assert_eq!(flags, [false, true, false]);
        let broken = Bytes::from(vec![0u8, 0, 0, 0x10, 0]);
        let mut padded = broken.to_vec();
        padded.resize(HEADER_LEN + COMPRESS_THRESHOLD, b'a');
        let padded = Bytes::from(padded);
        assert!(compress_framed(padded.clone(), Encoding::Gzip) == padded);
    }
}
