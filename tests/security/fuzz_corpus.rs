//! Replays every committed fuzz corpus file (fuzz/corpus/<target>/*) through
//! the matching `codereview::fuzz_targets` function on stable `cargo test`,
//! so an input once committed to a corpus (a seed, or a crash found by
//! `cargo fuzz` and fixed) is a regression test forever. See fuzz/README.md.
//!
//! The seed files are written by the ignored test `write_seed_corpus`:
//!
//! ```text
//! cargo test --test security -- --ignored write_seed_corpus
//! ```
//!
//! It (re)writes only the files it names; inputs added by hand or by
//! `cargo fuzz` are left alone.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use codereview::fuzz_targets;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Runs `body` on every file of the target's corpus; fails (naming every
/// failing file) if any input panics, and if the corpus is missing or empty.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = corpus_dir(target);
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus {} is empty: the fuzz target {target} has no seeds",
        dir.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if panic::catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failures.push(file.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus inputs of {target} panicked (reproduce with \
         `cargo +nightly fuzz run {target} <file>`):\n  {}",
        failures.len(),
        files.len(),
        failures.join("\n  ")
    );
}

#[test]
fn corpus_codec() {
    replay("codec", fuzz_targets::codec);
}

#[test]
fn corpus_grpc_timeout() {
    replay("grpc_timeout", fuzz_targets::grpc_timeout);
}

#[test]
fn corpus_grpc_message() {
    replay("grpc_message", fuzz_targets::grpc_message);
}

#[test]
fn corpus_binary_metadata() {
    replay("binary_metadata", fuzz_targets::binary_metadata);
}

#[test]
fn corpus_session_message() {
    replay("session_message", fuzz_targets::session_message);
}

#[test]
fn corpus_ot_tp1() {
    replay("ot_tp1", fuzz_targets::ot_tp1);
}

#[test]
fn corpus_token() {
    replay("token", fuzz_targets::token);
}

#[test]
fn corpus_sniff_opening() {
    replay("sniff_opening", fuzz_targets::sniff_opening);
}

#[test]
fn corpus_http_request() {
    replay("http_request", fuzz_targets::http_request);
}

#[test]
fn corpus_web_request() {
    replay("web_request", fuzz_targets::web_request);
}

#[test]
fn corpus_web_framing() {
    replay("web_framing", fuzz_targets::web_framing);
}

#[test]
fn corpus_inflate() {
    replay("inflate", fuzz_targets::inflate);
}

#[test]
fn corpus_log_frames() {
    replay("log_frames", fuzz_targets::log_frames);
}

#[test]
fn corpus_redis_replies() {
    replay("redis_replies", fuzz_targets::redis_replies);
}

/// The seed generator: meaningful, small inputs for each target.
mod seeds {
    use codereview::auth::jwt::{Claims, Key, Sessions};
    use codereview::grpc::base64::{self, Alphabet};
    use codereview::grpc::codec;
    use codereview::pb::codereview as pb;
    use codereview::review::roles::Role;
    use pb::session_message::Payload;
    use prost::Message;

    pub type Seeds = Vec<(&'static str, Vec<u8>)>;

    /// A gRPC length-prefixed message (uncompressed).
    fn frame(payload: &[u8]) -> Vec<u8> {
        codec::frame_payload(payload).to_vec()
    }

    fn header(flag: u8, len: u32) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&len.to_be_bytes());
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn msg(payload: Option<Payload>) -> pb::SessionMessage {
        pb::SessionMessage {
            session_id: "s".into(),
            user_id: "u".into(),
            timestamp: 1_700_000_000_000,
            payload,
            sequence: 0,
            client_sequence: 1,
        }
    }

    fn edit(op: pb::code_edit::Op, line: i32, content: &str, version: i32) -> Payload {
        Payload::Edit(pb::CodeEdit {
            file_path: "src/main.rs".into(),
            line_number: line,
            content: content.into(),
            version,
            op: op as i32,
        })
    }

    /// One SessionMessage of every payload kind, plus invalid ones.
    pub fn session_messages() -> Vec<(&'static str, pb::SessionMessage)> {
        use pb::code_edit::Op;
        let status = |s: pb::presence_update::Status| {
            Some(Payload::Presence(pb::PresenceUpdate {
                status: s as i32,
                role: pb::Role::Reviewer as i32,
            }))
        };
        let file = pb::FileContent {
            file_path: "src/lib.rs".into(),
            lines: vec!["fn main() {".into(), "}".into()],
            version: 1,
        };
        let cursor = pb::CursorPosition {
            file_path: "src/lib.rs".into(),
            line: 1,
            column: 4,
        };
        let comment = pb::Comment {
            comment_id: "c1".into(),
            line_number: 0,
            text: "why not a const?".into(),
            file_path: "src/lib.rs".into(),
        };
        let other_session = pb::SessionMessage {
            session_id: "other".into(),
            ..msg(Some(edit(Op::Replace, 0, "x", 0)))
        };
        let other_user = pb::SessionMessage {
            user_id: "mallory".into(),
            ..msg(None)
        };
        let anonymous = pb::SessionMessage {
            session_id: String::new(),
            user_id: String::new(),
            ..msg(Some(edit(Op::Insert, 3, "y", 2)))
        };
        vec![
            ("none", msg(None)),
            ("anonymous-edit", anonymous),
            ("other-session", other_session),
            ("other-user", other_user),
            (
                "edit-replace",
                msg(Some(edit(Op::Replace, 0, "let x = 1;", 0))),
            ),
            ("edit-insert", msg(Some(edit(Op::Insert, 2, "// note", 3)))),
            ("edit-delete", msg(Some(edit(Op::Delete, 1, "", 7)))),
            (
                "edit-newline",
                msg(Some(edit(Op::Replace, 0, "two\nlines", 0))),
            ),
            (
                "edit-negative-version",
                msg(Some(edit(Op::Insert, 0, "x", -1))),
            ),
            (
                "edit-line-too-far",
                msg(Some(edit(Op::Insert, 20_000, "x", 0))),
            ),
            (
                "edit-last-line",
                msg(Some(edit(Op::Insert, 19_999, "x", 0))),
            ),
            (
                "edit-unknown-op",
                msg(Some(Payload::Edit(pb::CodeEdit {
                    file_path: "a".into(),
                    op: 9,
                    ..Default::default()
                }))),
            ),
            (
                "edit-empty-path",
                msg(Some(Payload::Edit(pb::CodeEdit::default()))),
            ),
            ("comment", msg(Some(Payload::Comment(comment.clone())))),
            (
                "comment-empty",
                msg(Some(Payload::Comment(pb::Comment {
                    text: String::new(),
                    ..comment.clone()
                }))),
            ),
            (
                "comment-on-review",
                msg(Some(Payload::Comment(pb::Comment {
                    file_path: String::new(),
                    comment_id: String::new(),
                    ..comment.clone()
                }))),
            ),
            ("cursor", msg(Some(Payload::Cursor(cursor.clone())))),
            (
                "cursor-negative-column",
                msg(Some(Payload::Cursor(pb::CursorPosition {
                    column: -1,
                    ..cursor.clone()
                }))),
            ),
            (
                "presence-joined",
                msg(status(pb::presence_update::Status::Joined)),
            ),
            (
                "presence-active",
                msg(status(pb::presence_update::Status::Active)),
            ),
            (
                "presence-idle",
                msg(status(pb::presence_update::Status::Idle)),
            ),
            (
                "presence-left",
                msg(status(pb::presence_update::Status::Left)),
            ),
            (
                "presence-unknown",
                msg(Some(Payload::Presence(pb::PresenceUpdate {
                    status: 42,
                    role: 0,
                }))),
            ),
            (
                "join-resume",
                msg(Some(Payload::Join(pb::Join {
                    want_snapshot: false,
                    resume_after_sequence: Some(17),
                    session_epoch: 99,
                }))),
            ),
            (
                "join-snapshot",
                msg(Some(Payload::Join(pb::Join {
                    want_snapshot: true,
                    resume_after_sequence: None,
                    session_epoch: 0,
                }))),
            ),
            (
                "joined",
                msg(Some(Payload::Joined(pb::Joined {
                    session_epoch: 1,
                    sequence: 5,
                    version: 3,
                    catchup: pb::joined::Catchup::Resume as i32,
                    role: pb::Role::Author as i32,
                    last_client_sequence: 4,
                    token_expires_at: 1_700_000_060_000,
                }))),
            ),
            (
                "ack",
                msg(Some(Payload::Ack(pb::Ack {
                    client_sequence: 1,
                    sequence: 6,
                    version: 4,
                    duplicate: false,
                    noop: true,
                    comment_id: "c6".into(),
                }))),
            ),
            (
                "error",
                msg(Some(Payload::Error(pb::Error {
                    code: 3,
                    message: "line_number out of range".into(),
                    client_sequence: 2,
                }))),
            ),
            (
                "snapshot",
                msg(Some(Payload::Snapshot(pb::Snapshot {
                    session_id: "s".into(),
                    session_epoch: 1,
                    sequence: 9,
                    version: 2,
                    files: vec![file.clone()],
                    comments: vec![pb::CommentEntry {
                        user_id: "u".into(),
                        comment: Some(comment),
                        sequence: 8,
                        timestamp: 1,
                    }],
                    participants: vec![pb::Participant {
                        user_id: "u".into(),
                        status: pb::presence_update::Status::Active as i32,
                        role: pb::Role::Observer as i32,
                        cursor: Some(cursor),
                    }],
                }))),
            ),
            ("file", msg(Some(Payload::File(file)))),
            (
                "token-refresh",
                msg(Some(Payload::TokenRefresh(pb::TokenRefresh {
                    token: "a.b.c".into(),
                }))),
            ),
            (
                "token-refresh-empty",
                msg(Some(Payload::TokenRefresh(pb::TokenRefresh::default()))),
            ),
            (
                "notice",
                msg(Some(Payload::Notice(pb::Notice {
                    kind: pb::notice::Kind::GoingAway as i32,
                    text: "server shutting down".into(),
                    at: 1_700_000_030_000,
                }))),
            ),
        ]
    }

    fn codec_seeds() -> Seeds {
        let edit = msg(Some(edit(pb::code_edit::Op::Insert, 1, "x", 0))).encode_to_vec();
        let join = msg(Some(Payload::Join(pb::Join::default()))).encode_to_vec();
        let cursor = msg(Some(Payload::Cursor(pb::CursorPosition {
            file_path: "a".into(),
            line: 2,
            column: 3,
        })))
        .encode_to_vec();
        let at_limit = vec![b'a'; 64];
        vec![
            ("one-message", cat(&[&[0], &frame(b"hello")])),
            ("empty-message", cat(&[&[3], &frame(b"")])),
            (
                "three-messages",
                cat(&[&[5], &frame(b"first"), &frame(b""), &frame(b"third")]),
            ),
            ("session-edit", cat(&[&[1], &frame(&edit)])),
            (
                "session-stream",
                cat(&[&[9], &frame(&join), &frame(&edit), &frame(&cursor)]),
            ),
            (
                "session-stream-split-16",
                cat(&[&[16], &frame(&join), &frame(&edit), &frame(&cursor)]),
            ),
            (
                "session-stream-split-255",
                cat(&[&[255], &frame(&join), &frame(&edit), &frame(&cursor)]),
            ),
            ("at-limit", cat(&[&[0], &frame(&at_limit)])),
            ("over-limit", cat(&[&[0], &header(0, 65), &[b'a'; 65]])),
            ("large-limit", cat(&[&[255], &frame(&[7u8; 1000])])),
            ("huge-length", cat(&[&[2], &header(0, u32::MAX)])),
            ("compressed", cat(&[&[4], &header(1, 3), b"abc"])),
            ("bad-flag", cat(&[&[4], &header(2, 1), b"z"])),
            (
                "partial-trailing",
                cat(&[&[7], &frame(b"done"), &header(0, 10), b"part"]),
            ),
            ("truncated-header", vec![11, 0, 0, 0]),
            ("split-seed-only", vec![13]),
        ]
    }

    fn grpc_timeout_seeds() -> Seeds {
        [
            ("1S", "1S"),
            ("100m", "100m"),
            ("1H", "1H"),
            ("30M", "30M"),
            ("250u", "250u"),
            ("1n", "1n"),
            ("0n", "0n"),
            ("max-hours", "99999999H"),
            ("max-nanos", "99999999n"),
            ("max-millis", "99999999m"),
            ("leading-zeros", "00000001S"),
            ("too-many-digits", "123456789S"),
            ("empty", ""),
            ("unit-only", "S"),
            ("unknown-unit", "10x"),
            ("negative", "-1S"),
            ("space", " 1S"),
            ("lowercase-s", "5s"),
        ]
        .into_iter()
        .map(|(name, text)| (name, text.as_bytes().to_vec()))
        .collect()
    }

    fn grpc_message_seeds() -> Seeds {
        let special =
            "\t\ntest with whitespace\r\nand Unicode BMP \u{263A} and non-BMP \u{1F608}\t\n";
        vec![
            ("interop-special-status", special.as_bytes().to_vec()),
            (
                "interop-special-status-encoded",
                codereview::grpc::percent::encode(special).into_bytes(),
            ),
            ("plain", b"deadline exceeded".to_vec()),
            ("empty", Vec::new()),
            ("percent-alone", b"%".to_vec()),
            ("percent-one-digit", b"abc%2".to_vec()),
            ("percent-bad-hex", b"%zz%g0".to_vec()),
            ("percent-percent", b"100%25 done".to_vec()),
            ("percent-newline", b"a%0Ab%0d%0A".to_vec()),
            ("percent-utf8", b"%E2%98%BA %F0%9F%98%88".to_vec()),
            ("percent-bad-utf8", b"%FF%C3%28%E2%82".to_vec()),
            ("raw-bad-utf8", vec![0xff, 0xfe, b'a', 0xc3, 0x28, 0x80]),
            ("controls", vec![0, 1, 0x1f, 0x7f, b'%', b'7', b'F']),
        ]
    }

    fn binary_metadata_seeds() -> Seeds {
        [
            ("empty", ""),
            ("one-byte-padded", "AA=="),
            ("one-byte", "AA"),
            ("two-bytes-padded", "AAA="),
            ("two-bytes", "AAA"),
            ("three-bytes", "AAAA"),
            ("hello-padded", "aGVsbG8gd29ybGQ="),
            ("hello", "aGVsbG8gd29ybGQ"),
            ("standard-symbols", "+/8="),
            ("urlsafe-symbols", "-_8"),
            ("mixed-alphabets", "+_-/"),
            ("trailing-bits", "AB"),
            ("trailing-bits-padded", "AB=="),
            ("single-char", "A"),
            ("padding-first", "=AAA"),
            ("padding-middle", "AA=A"),
            ("too-much-padding", "AA==="),
            ("whitespace", "AA AA"),
            ("grpc-status-details", "CAMSEmludmFsaWQgYXJndW1lbnQ"),
        ]
        .into_iter()
        .map(|(name, text)| (name, text.as_bytes().to_vec()))
        .collect()
    }

    fn session_message_seeds() -> Seeds {
        let mut seeds: Seeds = session_messages()
            .into_iter()
            .map(|(name, m)| (name, m.encode_to_vec()))
            .collect();
        // Wire-level oddities: truncated, unknown field, bad wire type.
        let comment = &seeds
            .iter()
            .find(|(name, _)| *name == "comment")
            .expect("comment seed")
            .1;
        let truncated = comment[..comment.len() - 3].to_vec();
        seeds.push(("wire-truncated", truncated));
        seeds.push((
            "wire-unknown-field",
            vec![0xf8, 0x07, 0x01, 0x0a, 0x01, b's'],
        ));
        seeds.push(("wire-bad-wire-type", vec![0x0f, 0x01]));
        seeds.push(("wire-empty", Vec::new()));
        seeds
    }

    fn ot_tp1_seeds() -> Seeds {
        // [doc len, a(kind, line, text), paths/a_wins, b(kind, line, text)]
        vec![
            ("replace-replace-same-line", vec![3, 0, 1, 0, 4, 0, 1, 1]),
            ("insert-insert-same-line", vec![3, 1, 1, 0, 0, 1, 1, 1]),
            ("insert-delete", vec![4, 1, 2, 2, 4, 2, 2, 0]),
            ("delete-delete-same-line", vec![5, 2, 3, 0, 0, 2, 3, 0]),
            ("replace-file-vs-insert", vec![2, 3, 0, 1, 4, 1, 0, 2]),
            ("noop-vs-replace", vec![1, 4, 0, 0, 0, 0, 0, 3]),
            ("different-files", vec![6, 0, 2, 1, 2, 2, 2, 0]),
            ("empty-document", vec![0, 1, 0, 0, 5, 1, 0, 1]),
            ("replace-past-end", vec![2, 0, 4, 2, 0, 1, 2, 1]),
        ]
    }

    fn sign_raw(key: &[u8; 32], header: &str, body: &str) -> String {
        let header = base64::encode(header.as_bytes(), Alphabet::UrlSafe);
        let body = base64::encode(body.as_bytes(), Alphabet::UrlSafe);
        let input = format!("{header}.{body}");
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let tag = ring::hmac::sign(&hmac, input.as_bytes());
        format!(
            "{input}.{}",
            base64::encode(tag.as_ref(), Alphabet::UrlSafe)
        )
    }

    fn token_seeds() -> Seeds {
        const KEY: [u8; 32] = [42; 32];
        const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
        let key = Key::new(&KEY).expect("valid secret");
        let claims = Claims {
            subject: "ann".into(),
            role: Role::Author,
            sessions: Sessions::All,
            issued_at: 0,
            expires_at: 4_000_000_000,
        };
        let valid = key.sign(&claims);
        let reviewer = key.sign(&Claims {
            role: Role::Reviewer,
            sessions: Sessions::Only(vec!["s1".into(), "s\"2".into()]),
            ..claims.clone()
        });
        let expired = key.sign(&Claims {
            expires_at: 500,
            ..claims.clone()
        });
        let other_key = Key::new(&[7; 32]).expect("valid secret").sign(&claims);
        let mut tampered = valid.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let parts: Vec<&str> = valid.split('.').collect();
        let body_ok = r#"{"sub":"ann","role":"observer","sessions":["s"],"exp":4000000000}"#;
        let signed = |header: &str, body: &str| sign_raw(&KEY, header, body).into_bytes();
        let s = |text: &str| text.as_bytes().to_vec();
        vec![
            ("valid", valid.clone().into_bytes()),
            ("valid-reviewer-sessions", reviewer.into_bytes()),
            ("expired", expired.into_bytes()),
            ("other-key", other_key.into_bytes()),
            ("tampered-signature", tampered),
            (
                "two-parts",
                format!("{}.{}", parts[0], parts[1]).into_bytes(),
            ),
            ("four-parts", format!("{valid}.x").into_bytes()),
            (
                "padded",
                format!("{}=.{}.{}", parts[0], parts[1], parts[2]).into_bytes(),
            ),
            (
                "not-base64",
                format!("{}.!!.{}", parts[0], parts[2]).into_bytes(),
            ),
            ("alg-none", signed(r#"{"alg":"none"}"#, body_ok)),
            ("alg-hs512", signed(r#"{"alg":"HS512"}"#, body_ok)),
            ("header-array", signed("[]", body_ok)),
            ("signed-observer", signed(HS256, body_ok)),
            (
                "signed-nbf-future",
                signed(HS256, &body_ok.replace('}', r#","nbf":5000}"#)),
            ),
            (
                "signed-nbf-past",
                signed(HS256, &body_ok.replace('}', r#","nbf":10,"iat":10}"#)),
            ),
            (
                "signed-bad-role",
                signed(HS256, &body_ok.replace("observer", "admin")),
            ),
            (
                "signed-no-sub",
                signed(
                    HS256,
                    r#"{"role":"author","sessions":"*","exp":4000000000}"#,
                ),
            ),
            (
                "signed-control-sub",
                signed(HS256, &body_ok.replace("ann", "a\\u0007n")),
            ),
            (
                "signed-sessions-numbers",
                signed(HS256, &body_ok.replace(r#"["s"]"#, "[1,2]")),
            ),
            (
                "signed-sessions-other-string",
                signed(HS256, &body_ok.replace(r#"["s"]"#, r#""s""#)),
            ),
            (
                "signed-exp-fraction",
                signed(HS256, &body_ok.replace("4000000000", "4000000000.5")),
            ),
            (
                "signed-exp-huge",
                signed(HS256, &body_ok.replace("4000000000", "1e300")),
            ),
            (
                "signed-duplicate-key",
                signed(HS256, &body_ok.replace('}', r#","sub":"bob"}"#)),
            ),
            ("signed-claims-array", signed(HS256, "[1]")),
            (
                "json-claims",
                s(r#"{"sub":"u","role":"author","sessions":"*","iat":0,"exp":4000000000}"#),
            ),
            (
                "json-values",
                s(
                    r#" [1, -2.5e10, 0.1E-400, -0, true, false, null, "\u00e9\ud83d\ude00\n\"\\\/"] "#,
                ),
            ),
            ("json-depth-8", s("[[[[[[[[1]]]]]]]]")),
            ("json-depth-10", s("[[[[[[[[[[1]]]]]]]]]]")),
            ("json-lone-surrogate", s(r#""\ud800x""#)),
            ("json-trailing-comma", s(r#"{"a":1,}"#)),
            ("json-leading-zero", s("[01, 1., .5, 1e, -]")),
            ("json-control-in-string", s("\"a\tb\"")),
        ]
    }

    fn sniff_opening_seeds() -> Seeds {
        let preface = codereview::grpc::sniff::H2_PREFACE;
        // The start of a TLS 1.2/1.3 ClientHello record.
        let client_hello = vec![
            0x16, 0x03, 0x01, 0x00, 0xf8, 0x01, 0x00, 0x00, 0xf4, 0x03, 0x03, 0x5e, 0x11, 0x2a,
            0x7c, 0x00,
        ];
        vec![
            ("h2-preface", preface.to_vec()),
            (
                "h2-preface-and-settings",
                cat(&[preface, &[0, 0, 0, 4, 0, 0, 0, 0, 0]]),
            ),
            ("h2-preface-partial", preface[..10].to_vec()),
            ("tls-client-hello", client_hello),
            ("tls-wrong-major", vec![0x16, 0x04, 0x01]),
            ("http1-get", b"GET / HTTP/1.1\r\n".to_vec()),
            (
                "http1-post",
                b"POST /codereview.v1.CodeReviewService/GetSnapshot HTTP/1.1\r\n".to_vec(),
            ),
            ("http1-options", b"OPTIONS * HTTP/1.1\r\n".to_vec()),
            ("http1-prefix", b"GE".to_vec()),
            ("pri-http1", b"PRI * HTTP/1.1\r\n\r\n".to_vec()),
            ("lowercase-get", b"get / HTTP/1.1\r\n".to_vec()),
            ("garbage", vec![0x00, 0xff, 0x10, 0x20]),
        ]
    }

    fn http_request_seeds() -> Seeds {
        let s = |text: &str| text.as_bytes().to_vec();
        vec![
            (
                "get-metrics",
                s(
                    "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nUser-Agent: Prometheus/2.51\r\nAccept: text/plain\r\n\r\n",
                ),
            ),
            ("get-healthz-http10", s("GET /healthz HTTP/1.0\r\n\r\n")),
            (
                "get-readyz-query",
                s("GET /readyz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            ),
            (
                "post",
                s("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            ),
            ("incomplete", s("GET /metrics HTTP/1.1\r\nHost: x\r\n")),
            ("http2", s("GET / HTTP/2.0\r\n\r\n")),
            (
                "absolute-target",
                s("GET http://x/metrics HTTP/1.1\r\n\r\n"),
            ),
            ("lowercase-method", s("get / HTTP/1.1\r\n\r\n")),
            ("double-space", s("GET  / HTTP/1.1\r\n\r\n")),
            ("header-no-colon", s("GET / HTTP/1.1\r\nHost\r\n\r\n")),
            (
                "header-space-name",
                s("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
            ),
            ("header-empty-name", s("GET / HTTP/1.1\r\n: x\r\n\r\n")),
            ("bare-lf", s("GET / HTTP/1.1\n\n")),
            ("not-utf8", b"GET /\xff HTTP/1.1\r\n\r\n".to_vec()),
            ("empty", Vec::new()),
        ]
    }

    /// The web_request target's input: the head limit's byte (16 + 16·b
    /// bytes), then the request.
    fn web_request_seeds() -> Seeds {
        let at = |limit_byte: u8, text: &str| cat(&[&[limit_byte], text.as_bytes()]);
        let post = "POST /codereview.v1.CodeReviewService/Participate HTTP/1.1\r\nHost: 127.0.0.1:50051\r\n\
            Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nAccept: application/grpc-web+proto\r\n\
            Origin: http://127.0.0.1:50051\r\nContent-Length: 42\r\n\r\n";
        vec![
            (
                "get-page",
                at(
                    255,
                    "GET /s/review-42?user=alice HTTP/1.1\r\nHost: 127.0.0.1:50051\r\nAccept: text/html\r\n\r\n",
                ),
            ),
            ("post-grpc-web", at(255, post)),
            (
                "post-and-body",
                cat(&[&[255], post.as_bytes(), &[0, 0, 0, 0, 37], b"body"]),
            ),
            ("post-over-limit", at(8, post)),
            (
                "preflight",
                at(
                    64,
                    "OPTIONS /codereview.v1.CodeReviewService/Send HTTP/1.1\r\nHost: x\r\n\
                Origin: http://review.test:8080\r\nAccess-Control-Request-Method: POST\r\n\
                Access-Control-Request-Headers: content-type,x-grpc-web\r\n\r\n",
                ),
            ),
            (
                "http10-keep-alive",
                at(16, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
            ),
            (
                "connection-close",
                at(
                    16,
                    "GET /app.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                ),
            ),
            (
                "chunked",
                at(
                    16,
                    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                ),
            ),
            (
                "two-lengths-agree",
                at(
                    16,
                    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                ),
            ),
            (
                "two-lengths-differ",
                at(
                    16,
                    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                ),
            ),
            (
                "length-list",
                at(
                    16,
                    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
                ),
            ),
            (
                "length-sign",
                at(
                    16,
                    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
                ),
            ),
            (
                "length-huge",
                at(
                    16,
                    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                ),
            ),
            (
                "two-hosts",
                at(16, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            ),
            (
                "folded",
                at(16, "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"),
            ),
            (
                "space-before-colon",
                at(16, "GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
            ),
            ("bare-lf", at(16, "GET / HTTP/1.1\nHost: x\r\n\r\n")),
            (
                "bare-cr-in-value",
                at(16, "GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n"),
            ),
            (
                "absolute-form",
                at(16, "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            ),
            ("http2-version", at(16, "GET / HTTP/2.0\r\n\r\n")),
            ("lowercase-method", at(16, "get / HTTP/1.1\r\n\r\n")),
            (
                "other-method",
                at(16, "DELETE / HTTP/1.1\r\nHost: x\r\n\r\n"),
            ),
            ("incomplete", at(255, "GET / HTTP/1.1\r\nHost: x\r\n")),
            (
                "not-utf8-value",
                cat(&[&[16], b"GET / HTTP/1.1\r\nHost: x\r\nX: \xff\xfe\r\n\r\n"]),
            ),
            (
                "many-headers",
                at(
                    255,
                    &format!("GET / HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(70)),
                ),
            ),
            ("empty", Vec::new()),
        ]
    }

    /// The web_framing target's input: a `-text` body, and lines that make
    /// the trailers.
    fn web_framing_seeds() -> Seeds {
        let s = |text: &str| text.as_bytes().to_vec();
        vec![
            ("text-body", s("AAAAAAcKBXJldmlldw==")),
            ("text-concatenated-chunks", s("AAAAAAc=CgVyZXZpZXc=")),
            ("text-bad-length", s("AAAAAAcKBXJldmlldw=")),
            ("text-url-alphabet", s("AAAA-_-_")),
            ("text-trailing-bits", s("AAB=")),
            (
                "trailers",
                s("grpc-status: 0\ngrpc-message: ok\nx-custom: a b\n"),
            ),
            (
                "trailers-not-ascii",
                b"grpc-status: 13\ngrpc-message: caf\xc3\xa9\nx-tab:\ta\n".to_vec(),
            ),
            (
                "trailers-bad-name",
                s("Bad Name: x\n: empty\ngrpc-status: 5\n"),
            ),
            ("binary", vec![0x80, 0, 0, 0, 0x10, 0xff, 0x00]),
            ("empty", Vec::new()),
        ]
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        use std::io::Write;
        let mut encoder =
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// The inflate target's input: a 2-byte little-endian limit, then the
    /// compressed message.
    fn limited(limit: u16, compressed: &[u8]) -> Vec<u8> {
        cat(&[&limit.to_le_bytes(), compressed])
    }

    fn inflate_seeds() -> Seeds {
        let text: Vec<u8> = (0..200)
            .flat_map(|i| format!("    let v{i} = review(&v{}, {});\n", i / 2, i % 7).into_bytes())
            .collect();
        let compressed = gzip(&text, 3);
        let mut lying = compressed.clone();
        let at = lying.len() - 4;
        lying[at..].copy_from_slice(&10u32.to_le_bytes());
        let mut corrupt = compressed.clone();
        corrupt[30] ^= 0x5a;
        let limit = text.len() as u16;
        vec![
            ("text", limited(u16::MAX, &compressed)),
            ("text-at-the-limit", limited(limit, &compressed)),
            ("text-over-the-limit", limited(limit - 1, &compressed)),
            (
                "two-members",
                limited(u16::MAX, &cat(&[&gzip(b"first ", 6), &gzip(b"second", 1)])),
            ),
            ("empty-message", limited(16, &gzip(b"", 6))),
            // 1 MiB of zeros in ~1 KiB: refused at any limit.
            ("bomb", limited(u16::MAX, &gzip(&vec![0u8; 1 << 20], 9))),
            ("lying-trailer", limited(u16::MAX, &lying)),
            ("corrupt", limited(u16::MAX, &corrupt)),
            (
                "truncated",
                limited(u16::MAX, &compressed[..compressed.len() / 2]),
            ),
            (
                "trailing-bytes",
                limited(u16::MAX, &cat(&[&gzip(b"x", 6), b"junk"])),
            ),
            ("not-gzip", limited(u16::MAX, b"plain text, no gzip header")),
        ]
    }

    /// A small session's log: created, a join, an upload, an edit, a
    /// comment, a refused message, a leave.
    fn session_log() -> Vec<u8> {
        use codereview::pb::store::{self, Record, record::Body};
        let record = |index: u64, body: Body| Record {
            index,
            timestamp: 1_700_000_000_000 + index as i64,
            body: Some(body),
        };
        let records = vec![
            record(
                0,
                Body::Created(store::Created {
                    session_id: "s".into(),
                    epoch: 7,
                }),
            ),
            record(
                1,
                Body::Presence(store::Presence {
                    user_id: "ann".into(),
                    role: 1,
                    joined: true,
                    stream: "i/1".into(),
                }),
            ),
            record(
                2,
                Body::Upload(store::Uploaded {
                    user_id: "ann".into(),
                    files: vec![store::UploadedFile {
                        file_path: "f.rs".into(),
                        lines: vec!["fn main() {".into(), "}".into()],
                    }],
                }),
            ),
            record(
                3,
                Body::Edit(store::Edit {
                    user_id: "ann".into(),
                    client_sequence: 1,
                    file_path: "f.rs".into(),
                    base: 1,
                    incoming_wins: false,
                    op: Some(store::LineOp {
                        op: 1,
                        line: 1,
                        text: "    hello();".into(),
                    }),
                }),
            ),
            record(
                4,
                Body::Comment(store::CommentAdded {
                    user_id: "ann".into(),
                    client_sequence: 2,
                    comment: Some(pb::Comment {
                        comment_id: "c5".into(),
                        line_number: 1,
                        text: "why?".into(),
                        file_path: "f.rs".into(),
                    }),
                }),
            ),
            record(
                5,
                Body::Refused(store::Refused {
                    user_id: "ann".into(),
                    client_sequence: 3,
                    code: 11,
                    message: "out of range".into(),
                }),
            ),
            record(
                6,
                Body::Presence(store::Presence {
                    user_id: "ann".into(),
                    role: 1,
                    joined: false,
                    stream: "i/1".into(),
                }),
            ),
        ];
        let mut out = Vec::new();
        codereview::store::encode_entries(&mut out, "s", &records);
        out
    }

    fn log_frames_seeds() -> Seeds {
        let log = session_log();
        let mut flipped = log.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x10;
        let snapshot = codereview::store::encode_snapshot(&codereview::pb::store::Snapshot {
            index: 3,
            session_id: "s".into(),
            epoch: 7,
            sequence: 2,
            version: 1,
            files: vec![pb::FileContent {
                file_path: "f.rs".into(),
                lines: vec!["x".into()],
                version: 0,
            }],
            ..Default::default()
        });
        vec![
            ("log", log.clone()),
            ("torn", log[..log.len() - 7].to_vec()),
            ("flipped", flipped),
            ("snapshot", snapshot),
            ("zeros", vec![0u8; 64]),
            ("empty", Vec::new()),
        ]
    }

    /// RESP: a bulk string, an integer, an array of encoded items.
    fn bulk(bytes: &[u8]) -> Vec<u8> {
        let mut out = format!("${}\r\n", bytes.len()).into_bytes();
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn array(items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", items.len()).into_bytes();
        for item in items {
            out.extend_from_slice(item);
        }
        out
    }

    fn int(n: i64) -> Vec<u8> {
        format!(":{n}\r\n").into_bytes()
    }

    fn redis_replies_seeds() -> Seeds {
        use codereview::pb::store::{self, Record, record::Body};
        use prost::Message;
        let record = |index: u64| Record {
            index,
            timestamp: 1,
            body: Some(Body::Created(store::Created {
                session_id: "s".into(),
                epoch: 7,
            })),
        };
        let entry = |id: &str, index: u64| {
            array(&[
                bulk(id.as_bytes()),
                array(&[bulk(b"r"), bulk(&record(index).encode_to_vec())]),
            ])
        };
        let entries = array(&[entry("0-1", 0), entry("1-1", 1)]);
        let snapshot = store::Snapshot {
            index: 4,
            session_id: "s".into(),
            epoch: 7,
            ..Default::default()
        };
        vec![
            ("entries", entries.clone()),
            ("misplaced", array(&[entry("3-1", 4)])),
            ("foreign-id", array(&[entry("1700000000000-0", 0)])),
            ("landed", array(&[int(-1)])),
            ("behind", array(&[int(2), entries.clone()])),
            ("lost", array(&[int(0)])),
            (
                "load",
                array(&[bulk(b"5"), bulk(&snapshot.encode_to_vec()), entries.clone()]),
            ),
            (
                "load-empty",
                array(&[b"$-1\r\n".to_vec(), b"$-1\r\n".to_vec(), array(&[])]),
            ),
            (
                "read",
                array(&[array(&[bulk(b"codereview:{s}:log"), entries])]),
            ),
            ("nil", b"*-1\r\n".to_vec()),
            ("error", b"-ERR no\r\n".to_vec()),
        ]
    }

    pub fn all() -> Vec<(&'static str, Seeds)> {
        vec![
            ("codec", codec_seeds()),
            ("grpc_timeout", grpc_timeout_seeds()),
            ("grpc_message", grpc_message_seeds()),
            ("binary_metadata", binary_metadata_seeds()),
            ("session_message", session_message_seeds()),
            ("ot_tp1", ot_tp1_seeds()),
            ("token", token_seeds()),
            ("sniff_opening", sniff_opening_seeds()),
            ("http_request", http_request_seeds()),
            ("web_request", web_request_seeds()),
            ("web_framing", web_framing_seeds()),
            ("inflate", inflate_seeds()),
            ("log_frames", log_frames_seeds()),
            ("redis_replies", redis_replies_seeds()),
        ]
    }
}

/// Writes the seed corpora under fuzz/corpus/<target>/seed-<name>.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing the seeds"]
fn write_seed_corpus() {
    for (target, seeds) in seeds::all() {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("create corpus directory");
        for (name, data) in seeds {
            assert!(data.len() < 4096, "{target}/{name} is too large");
            fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
        }
    }
}

/// The seeds mean what their names say: the valid token verifies and every
/// SessionMessage seed decodes (so the generator stays honest).
#[test]
fn seeds_are_meaningful() {
    use codereview::auth::jwt::Key;
    use prost::Message;
    let key = Key::new(&[42u8; 32]).expect("valid secret");
    let token = fs::read(corpus_dir("token").join("seed-valid")).expect("the valid token seed");
    let token = String::from_utf8(token).expect("a token is text");
    key.verify(&token, 1_000)
        .expect("the committed token verifies");
    // The web_request seeds reach the verdicts they are named for.
    use codereview::grpc::web::request::{ParseError, parse_head};
    let web = |name: &str| {
        let data = fs::read(corpus_dir("web_request").join(format!("seed-{name}")))
            .unwrap_or_else(|e| panic!("seed-{name}: {e}"));
        parse_head(&data[1..], 16 + usize::from(data[0]) * 16)
    };
    for name in [
        "get-page",
        "post-grpc-web",
        "post-and-body",
        "preflight",
        "http10-keep-alive",
        "connection-close",
        "chunked",
        "two-lengths-agree",
        "length-list",
        "other-method",
        "not-utf8-value",
    ] {
        assert!(web(name).is_ok(), "seed-{name}: {:?}", web(name));
    }
    assert_eq!(web("post-over-limit"), Err(ParseError::TooLarge));
    assert_eq!(web("incomplete"), Err(ParseError::Incomplete));
    assert_eq!(web("http2-version"), Err(ParseError::Version));
    assert_eq!(web("many-headers"), Err(ParseError::TooManyHeaders));
    for name in [
        "two-lengths-differ",
        "length-sign",
        "length-huge",
        "two-hosts",
        "folded",
        "space-before-colon",
        "bare-lf",
        "bare-cr-in-value",
        "absolute-form",
        "lowercase-method",
    ] {
        assert!(
            matches!(web(name), Err(ParseError::Malformed(_))),
            "seed-{name}: {:?}",
            web(name)
        );
    }
    for (name, message) in seeds::session_messages() {
        let data = fs::read(corpus_dir("session_message").join(format!("seed-{name}")))
            .unwrap_or_else(|e| panic!("seed-{name}: {e}"));
        let decoded = codereview::pb::codereview::SessionMessage::decode(&data[..])
            .unwrap_or_else(|e| panic!("seed-{name}: {e}"));
        assert_eq!(
            decoded, message,
            "seed-{name} is stale: rerun write_seed_corpus"
        );
    }
}
