//! The bodies of the cargo-fuzz targets (fuzz/fuzz_targets/*.rs call these),
//! kept in the library so that `cargo test` replays every committed corpus
//! file through exactly the same code (tests/security/fuzz_corpus.rs). Each function
//! takes arbitrary bytes, must never panic except on a violated invariant,
//! and checks the invariant it names.

use std::sync::Arc;

use bytes::Bytes;

use crate::grpc::base64::{self, Alphabet};
use crate::grpc::codec::{self, HEADER_LEN, MessageDecoder};
use crate::grpc::server::preface::{PrefaceParser, PrefaceProgress};
use crate::grpc::{percent, sniff, timeout};
use crate::review::ids::Text;
use crate::review::limits::Limits;
use crate::review::ot::{self, FileOp, LineOp};
use crate::review::validate::{self, StreamIdentity};

/// The gRPC message decoder fed arbitrary chunkings: never panics, never
/// holds a message larger than its limit, and re-encoding what it decodes
/// gives back exactly the bytes it consumed.
pub fn codec(data: &[u8]) {
    let Some((&split_seed, rest)) = data.split_first() else {
        return;
    };
    let max = 64 + usize::from(split_seed) * 4;
    let mut decoder = MessageDecoder::new(max);
    let mut reencoded = Vec::new();
    let mut offset = 0;
    let mut step = usize::from(split_seed % 17) + 1;
    let mut failed = false;
    while offset < rest.len() {
        let end = (offset + step).min(rest.len());
        decoder.push(Bytes::copy_from_slice(&rest[offset..end]));
        offset = end;
        step = (step * 7 + 3) % 23 + 1;
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= max, "message over the limit");
                    assert!(!frame.compressed, "compressed messages are refused");
                    reencoded.extend_from_slice(&codec::frame_payload(&frame.payload));
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
        assert!(
            decoder.partial_message_bytes() <= max + HEADER_LEN,
            "partial message over the limit"
        );
    }
    if !failed {
        assert_eq!(
            &rest[..reencoded.len()],
            &reencoded[..],
            "re-encoding differs"
        );
        assert_eq!(reencoded.len() + decoder.buffered(), rest.len());
    }
}

/// grpc-timeout parsing: total, and formatting a parsed value parses back
/// to at least the same duration.
pub fn grpc_timeout(data: &[u8]) {
    if let Ok(duration) = timeout::parse(data) {
        let text = timeout::format(duration);
        let back = timeout::parse(text.as_bytes()).expect("formatted timeouts parse");
        assert!(back >= duration);
    }
}

/// grpc-message percent-encoding: any text round-trips, any bytes decode.
pub fn grpc_message(data: &[u8]) {
    let _ = percent::decode(data);
    let text = String::from_utf8_lossy(data);
    let encoded = percent::encode(&text);
    assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    assert_eq!(percent::decode(encoded.as_bytes()), text);
}

/// Binary metadata (`-bin`, base64): decoding is total, and what decodes
/// re-encodes to the same canonical text (padding aside).
pub fn binary_metadata(data: &[u8]) {
    for alphabet in [Alphabet::Standard, Alphabet::UrlSafe] {
        if let Ok(decoded) = base64::decode(data, alphabet) {
            let encoded = base64::encode(&decoded, alphabet);
            let unpadded: Vec<u8> = data.iter().copied().filter(|&b| b != b'=').collect();
            assert_eq!(encoded.as_bytes(), &unpadded[..]);
        }
        let encoded = base64::encode(data, alphabet);
        assert_eq!(
            base64::decode(encoded.as_bytes(), alphabet).expect("round trip"),
            data
        );
    }
}

/// A `SessionMessage` from arbitrary bytes, then our validation: never
/// panics; what validates respects the limits.
pub fn session_message(data: &[u8]) {
    use prost::Message;
    let Ok(mut message) = crate::pb::codereview::SessionMessage::decode(data) else {
        return;
    };
    let limits = Limits::default();
    let _ = validate::identity_of(&message, &limits);
    let identity = StreamIdentity {
        session_id: "s".into(),
        user_id: "u".into(),
    };
    if let Ok(validated) = validate::validate(&mut message, &identity, &limits)
        && let validate::Action::Edit(edit) = validated.action
    {
        assert!(!edit.path.is_empty() && edit.path.len() <= limits.max_path_bytes);
        assert!(edit.base_version >= 0);
        if let LineOp::Replace { line, text } | LineOp::Insert { line, text } = &edit.op {
            assert!((*line as usize) < limits.max_lines_per_file);
            assert!(text.len() <= limits.max_line_bytes && !text.contains('\n'));
        }
    }
}

fn op_from(bytes: &[u8], len: usize, path: &Text) -> FileOp {
    let kind = bytes.first().copied().unwrap_or(0) % 5;
    let line = u32::from(bytes.get(1).copied().unwrap_or(0));
    let text: Text = Arc::from(format!("t{}", bytes.get(2).copied().unwrap_or(0) % 4));
    let op = match kind {
        0 => LineOp::Replace {
            line: line % (len as u32 + 3),
            text,
        },
        1 => LineOp::Insert {
            line: line % (len as u32 + 1),
            text,
        },
        2 if len > 0 => LineOp::Delete {
            line: line % len as u32,
        },
        3 => LineOp::ReplaceFile {
            lines: vec![text.clone(), text].into(),
        },
        _ => LineOp::Noop,
    };
    FileOp {
        path: path.clone(),
        op,
    }
}

/// The OT transform on arbitrary concurrent pairs over arbitrary documents:
/// both orders converge (TP1), and valid operations stay valid.
pub fn ot_tp1(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let len = usize::from(data[0] % 8);
    let doc: Vec<Text> = (0..len).map(|i| Arc::from(format!("l{i}"))).collect();
    let paths: [Text; 2] = [Arc::from("f"), Arc::from("g")];
    let a = op_from(&data[1..4], len, &paths[usize::from(data[4] & 1)]);
    let b = op_from(&data[5..8], len, &paths[usize::from((data[4] >> 1) & 1)]);
    let a_wins = data[4] & 4 != 0;
    let run = |first: &FileOp, second: &FileOp| {
        let mut files = std::collections::BTreeMap::<Text, Vec<Text>>::new();
        files.insert(paths[0].clone(), doc.clone());
        files.insert(paths[1].clone(), doc.clone());
        for op in [first, second] {
            ot::apply(files.get_mut(&op.path).expect("known path"), &op.op)
                .expect("transformed ops stay valid");
        }
        files
    };
    let left = run(&b, &ot::transform(&a, &b, a_wins));
    let right = run(&a, &ot::transform(&b, &a, !a_wins));
    assert_eq!(
        left, right,
        "TP1 violated for {a:?} / {b:?} (a_wins {a_wins})"
    );
}

/// The token parser and verifier (and the JSON parser under it): total on
/// arbitrary input; a token signed with our key verifies.
pub fn token(data: &[u8]) {
    let _ = crate::auth::json::parse(data);
    let key = crate::auth::jwt::Key::new(&[42u8; 32]).expect("valid secret");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = key.verify(text, 1_000);
    }
}

/// The first-bytes classifier of new connections: total, and its verdict is
/// stable once decided (more bytes never change it). Also the client-preface
/// watcher (magic, then SETTINGS): total, and its verdict does not depend on
/// how the bytes are split into reads.
pub fn sniff_opening(data: &[u8]) {
    let mut decided = None;
    for end in 0..=data.len().min(64) {
        let verdict = sniff::classify(&data[..end]);
        if let Some(previous) = decided {
            assert_eq!(verdict, previous, "a decided opening changed");
        } else if verdict != sniff::Opening::Undecided {
            decided = Some(verdict);
        }
    }

    let Some((&split_seed, bytes)) = data.split_first() else {
        return;
    };
    let mut whole = PrefaceParser::new();
    let verdict = whole.feed(bytes);
    let mut chunked = PrefaceParser::new();
    let step = usize::from(split_seed % 16) + 1;
    for chunk in bytes.chunks(step) {
        let progress = chunked.feed(chunk);
        if progress != PrefaceProgress::Reading {
            assert_eq!(progress, verdict, "a preface verdict depends on the reads");
        }
    }
    assert_eq!(chunked.progress(), verdict, "chunked and whole disagree");
}

/// The metrics listener's HTTP/1.1 request parser: total and bounded.
pub fn http_request(data: &[u8]) {
    let _ = crate::metrics::http::parse_request(data);
}

/// The bounded gzip inflater on arbitrary bytes (the first two pick the
/// limit, up to 64 KiB): never panics, never returns more than the limit;
/// what inflates goes out again through the response compressor and comes
/// back through the decoder and the inflater unchanged.
pub fn inflate(data: &[u8]) {
    use crate::grpc::compression::{self, Encoding, InflateError};
    let Some((limit, compressed)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_le_bytes(*limit));
    let inflated = match compression::gunzip(compressed, max) {
        Ok(inflated) => inflated,
        Err(InflateError::TooLarge { max: reported }) => {
            assert_eq!(reported, max, "the refusal names the limit");
            return;
        }
        Err(InflateError::Corrupt(_)) => return,
    };
    assert!(inflated.len() <= max, "inflated past the limit");
    let framed = compression::compress_framed(codec::frame_payload(&inflated), Encoding::Gzip);
    let mut decoder = MessageDecoder::new(max.max(framed.len()));
    decoder.accept_compressed();
    decoder.push(framed);
    let frame = decoder
        .decode()
        .expect("our own framing decodes")
        .expect("one whole message");
    let back = if frame.compressed {
        compression::gunzip(&frame.payload, inflated.len()).expect("our own gzip inflates")
    } else {
        frame.payload
    };
    assert_eq!(back, inflated, "round trip changed the message");
}

/// The durable log's reader on arbitrary bytes (a segment a crash or a bad
/// disk left): frames are found without panics, each within the bytes; what
/// they hold folds into sessions without panics (damage gives errors, never
/// unbounded allocation); a snapshot decoded from the bytes loads or is
/// refused.
pub fn log_frames(data: &[u8]) {
    use crate::review::ids::Text;
    use crate::review::limits::Limits;
    use crate::review::session::{Now, Session};
    use crate::store::{self, WalContents, frame};
    use prost::Message;
    use std::sync::Arc;

    let scan = frame::scan(data, 1 << 20);
    assert!(scan.valid_len <= data.len());
    for found in &scan.frames {
        assert!(found.offset + frame::HEADER_LEN + found.payload.len() <= data.len());
    }
    let limits = Arc::new(Limits {
        max_lines_per_file: 1000,
        ..Limits::default()
    });
    let now = Now {
        at: std::time::Instant::now(),
        unix_ms: 0,
    };
    let mut wal = WalContents::default();
    wal.add_segment(data, &mut []);
    for (id, records) in &wal.records {
        let mut session = Session::new(Text::from(id.as_str()), 0, limits.clone());
        for record in records {
            if session.replay(record).is_err() {
                break;
            }
        }
        let _ = session.finish_recovery(now);
        let snapshot = session.to_snapshot(0);
        let encoded = session.encode_snapshot(0);
        assert_eq!(
            crate::pb::store::Snapshot::decode(encoded.payload.as_slice())
                .ok()
                .as_ref(),
            Some(&snapshot),
            "the encoded snapshot is the snapshot"
        );
        let again =
            Session::from_snapshot(&snapshot, limits.clone()).expect("our own snapshot loads");
        assert_eq!(again.to_snapshot(0), snapshot);
    }
    if let Ok(snapshot) = store::decode_snapshot(data) {
        let _ = Session::from_snapshot(&snapshot, limits);
    }
}

/// The web front end's HTTP/1.1 request-head parser
/// (`grpc::web::request::parse_head`); the first byte picks the head limit
/// (16 to 4096 bytes), the rest is the buffer. Total, and bounded: it never
/// looks past the limit (the verdict on the buffer is the verdict on its
/// first `limit` bytes); a parsed head ends in the blank line within the
/// limit, its target is visible ASCII starting with `/`, bytes after it do
/// not change it, and any shorter prefix is only incomplete.
pub fn web_request(data: &[u8]) {
    use crate::grpc::web::request::{ParseError, parse_head};
    let Some((&limit, buffer)) = data.split_first() else {
        return;
    };
    let limit = 16 + usize::from(limit) * 16;
    let verdict = parse_head(buffer, limit);
    if buffer.len() > limit {
        assert_eq!(
            verdict,
            parse_head(&buffer[..limit], limit),
            "looked past the limit"
        );
    }
    match &verdict {
        Ok(head) => {
            assert!(head.head_len <= limit && head.head_len <= buffer.len());
            assert!(buffer[..head.head_len].ends_with(b"\r\n\r\n"));
            assert!(head.target.starts_with('/'));
            assert!(head.target.bytes().all(|b| (0x21..0x7f).contains(&b)));
            assert!(head.headers.len() <= crate::grpc::web::request::MAX_HEADERS);
            let alone = parse_head(&buffer[..head.head_len], limit);
            assert_eq!(alone.as_ref(), Ok(head), "bytes after the head changed it");
            assert_eq!(
                parse_head(&buffer[..head.head_len - 1], limit),
                Err(ParseError::Incomplete),
                "a head without its last byte is incomplete"
            );
        }
        Err(ParseError::Incomplete) => assert!(buffer.len() < limit),
        Err(_) => {}
    }
}

/// gRPC-Web's framing (`grpc::web::framing`): the `-text` decoder is total
/// on any bytes and what it decodes encodes and decodes back the same; any
/// bytes encode to padded base64 that decodes back to them; a trailers
/// frame built from `name: value` lines of the input (those that make a
/// header) carries flag 0x80, its true length, and exactly the visible-ASCII
/// entries, in order.
pub fn web_framing(data: &[u8]) {
    use crate::grpc::web::framing::{TRAILER_FLAG, decode_text, encode_text, trailers_frame};
    if let Ok(decoded) = decode_text(data) {
        assert!(decoded.len() <= data.len() / 4 * 3);
        let again = encode_text(&decoded);
        assert_eq!(decode_text(again.as_bytes()).as_ref(), Ok(&decoded));
    }
    let text = encode_text(data);
    assert!(text.len().is_multiple_of(4));
    assert_eq!(decode_text(text.as_bytes()).as_deref(), Ok(data));

    let mut trailers = http::HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(32) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        trailers.append(name, value);
    }
    let frame = trailers_frame(&trailers);
    assert_eq!(frame[0], TRAILER_FLAG);
    let length = u32::from_be_bytes(frame[1..5].try_into().expect("4 bytes")) as usize;
    assert_eq!(length, frame.len() - 5);
    let expected: String = trailers
        .iter()
        .filter(|(_, v)| v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)))
        .map(|(n, v)| format!("{}: {}\r\n", n, v.to_str().expect("visible ASCII")))
        .collect();
    assert_eq!(&frame[5..], expected.as_bytes());
}

/// What Redis holds is input too (another process, another version, a
/// damaged or foreign key): RESP bytes, decoded by our decoder whole and
/// again in pieces (the first byte sets their size), which must read the
/// same; then each reply read as each reply the shared log reads. Never
/// panics; every record read sits at its entry's id, and every session
/// read names its stream's key.
pub fn redis_replies(data: &[u8]) {
    use crate::resp::{Decoder, Value};
    use bytes::BytesMut;
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let decode = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut values = Vec::new();
        for bytes in pieces {
            buf.extend_from_slice(bytes);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(value)) => values.push(value),
                    Ok(None) => break,
                    Err(error) => return (values, Some(error)),
                }
            }
        }
        (values, None)
    };
    let whole = decode(&mut std::iter::once(data));
    let pieces = decode(&mut data.chunks(usize::from(piece).max(1)));
    assert_eq!(whole, pieces, "read whole and in pieces of {piece}");
    for value in whole.0 {
        redis_reply(&value);
        if let Value::Array(items) = &value
            && let Ok(Some((channel, payload))) =
                crate::shared_log::reply::pattern_message(value.clone())
        {
            assert_eq!(items.len(), 4);
            assert_eq!(items[2], Value::Bulk(channel));
            assert_eq!(items[3], Value::Bulk(payload));
        }
    }
}

fn redis_reply(value: &crate::resp::Value) {
    use crate::resp::Value;
    use crate::shared_log::{keys, reply};
    if let (Ok(records), Value::Array(items)) = (reply::entries(value), value) {
        assert_eq!(records.len(), items.len());
        for (record, item) in records.iter().zip(items) {
            let Value::Array(parts) = item else {
                panic!("an entry read from {item:?}");
            };
            let id = match &parts[0] {
                Value::Bulk(id) => id.to_vec(),
                Value::Status(id) => id.clone().into_bytes(),
                other => panic!("an id read from {other:?}"),
            };
            assert_eq!(id, keys::entry_id(record.index).into_bytes());
        }
    }
    let _ = reply::appended(value);
    let _ = reply::stored(value);
    if let Ok(streams) = reply::read(value) {
        for (session, _) in streams {
            assert_eq!(
                keys::session_of_log(keys::log(&session).as_bytes()),
                Some(session.as_str())
            );
        }
    }
}
