//! Session tests, in milliseconds and without I/O: targeted cases, and a
//! simulator that runs clients (each with a [`Replica`]) against one session
//! through random interleavings, disconnects, resumes and resends, checking
//! no loss, no duplicate, one order and convergent documents.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::grpc::codec::HEADER_LEN;
use crate::pb::codereview::{
    SessionMessage, joined::Catchup, notice::Kind as NoticeKind,
    presence_update::Status as Presence, session_message::Payload,
};
use crate::review::error::ErrorKind;
use crate::review::ids::Text;
use crate::review::limits::Limits;
use crate::review::ot::{FileOp, LineOp};
use crate::review::replica::{Replica, from_wire};
use crate::review::roles::Role;
use crate::review::validate::{
    Action, ClientMessage, ClientPresence, CommentRequest, CursorRequest, EditRequest, JoinOptions,
};

fn decode(framed: &Bytes) -> SessionMessage {
    SessionMessage::decode(&framed[HEADER_LEN..]).expect("valid message")
}

/// The framed messages taken, one by one (a batch holds them back to back).
fn split(taken: Taken) -> Vec<Bytes> {
    let mut messages = Vec::new();
    for mut part in taken.parts {
        while !part.is_empty() {
            let len = u32::from_be_bytes([part[1], part[2], part[3], part[4]]) as usize;
            messages.push(part.split_to(HEADER_LEN + len));
        }
    }
    assert_eq!(messages.len(), taken.messages);
    messages
}

fn limits() -> Limits {
    Limits {
        rate_per_second: 0.0,
        ..Limits::default()
    }
}

struct Harness {
    session: Session,
    start: Instant,
    elapsed: Duration,
    next_member: MemberId,
    /// Every record the session made, in order (its durable log).
    log: Vec<Record>,
}

impl Harness {
    fn new(limits: Limits) -> Self {
        let start = Instant::now();
        let now = Now {
            at: start,
            unix_ms: 1_000_000,
        };
        Harness {
            session: Session::create(now, Arc::from("s"), 7, Arc::new(limits)),
            start,
            elapsed: Duration::ZERO,
            next_member: 1,
            log: Vec::new(),
        }
    }

    /// The session rebuilt from its log alone (as after a restart), and
    /// from a snapshot of that: both must hold exactly the same state.
    fn assert_log_rebuilds_the_state(&self) {
        let limits = self.session.limits.clone();
        let mut rebuilt = Session::new(Arc::from("s"), 0, limits.clone());
        for record in &self.log {
            rebuilt.replay(record).expect("the log replays");
        }
        let live = self.session.to_snapshot(0);
        assert_eq!(rebuilt.to_snapshot(0), live, "replayed log == live state");
        let encoded = self.session.encode_snapshot(0);
        let decoded = store::Snapshot::decode(encoded.payload.as_slice()).expect("it decodes");
        assert_eq!(decoded, live, "the encoded snapshot is the snapshot");
        assert_eq!(encoded.weight, snapshot_weight(&live));
        assert_eq!(encoded.index, live.index);
        let restored = Session::from_snapshot(&live, limits).expect("the snapshot loads");
        assert_eq!(restored.to_snapshot(0), live, "snapshot round trip");
    }

    fn now(&self) -> Now {
        Now {
            at: self.start + self.elapsed,
            unix_ms: 1_000_000 + self.elapsed.as_millis() as i64,
        }
    }

    fn join_with(&mut self, user: &str, role: Role, options: JoinOptions) -> (MemberId, Effects) {
        let member = self.next_member;
        self.next_member += 1;
        let request = JoinRequest {
            member,
            user_id: Arc::from(user),
            role,
            options,
            token: None,
        };
        let fx = self.step(Input::Join(request));
        fx.result.clone().expect("join");
        (member, fx)
    }

    fn join(&mut self, user: &str) -> MemberId {
        let member = self.join_with(user, Role::Author, JoinOptions::default()).0;
        self.drain(member);
        member
    }

    /// One step, its records taken as durable at once (as in memory).
    fn step(&mut self, input: Input) -> Effects {
        let now = self.now();
        let fx = self.session.step(now, input);
        self.log.extend(fx.records.iter().cloned());
        self.session.mark_durable(self.session.next_index());
        fx
    }

    fn send(&mut self, member: MemberId, client_sequence: u64, action: Action) -> Effects {
        let message = ClientMessage {
            client_sequence,
            action,
        };
        self.step(Input::Message { member, message })
    }

    fn leave(&mut self, member: MemberId) -> Effects {
        self.step(Input::Leave { member })
    }

    fn drain(&mut self, member: MemberId) -> Vec<SessionMessage> {
        split(self.session.take(member, usize::MAX))
            .iter()
            .map(decode)
            .collect()
    }
}

fn edit(path: &str, op: LineOp, base_version: i32) -> Action {
    Action::Edit(EditRequest {
        path: Arc::from(path),
        op,
        base_version,
    })
}

fn text(s: &str) -> Text {
    Arc::from(s)
}

fn payloads(messages: &[SessionMessage]) -> Vec<&Payload> {
    messages.iter().filter_map(|m| m.payload.as_ref()).collect()
}

#[test]
fn edits_broadcast_to_others_and_ack_the_sender() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    let bob = h.join("bob");
    h.drain(ann);
    h.send(
        ann,
        1,
        edit(
            "a.rs",
            LineOp::Replace {
                line: 0,
                text: text("fn main() {}"),
            },
            0,
        ),
    );
    let to_bob = h.drain(bob);
    assert_eq!(to_bob.len(), 1);
    let Some(Payload::Edit(e)) = &to_bob[0].payload else {
        panic!("{to_bob:?}")
    };
    assert_eq!(
        (e.line_number, e.content.as_str(), e.version),
        (0, "fn main() {}", 1)
    );
    assert_eq!(to_bob[0].user_id, "ann");
    let to_ann = h.drain(ann);
    assert_eq!(
        to_ann.len(),
        1,
        "the sender gets an ack, never its own edit"
    );
    let Some(Payload::Ack(ack)) = &to_ann[0].payload else {
        panic!("{to_ann:?}")
    };
    assert_eq!(
        (ack.client_sequence, ack.sequence, ack.version),
        (1, to_bob[0].sequence, 1)
    );
}

#[test]
fn presence_join_leave_and_idle() {
    let mut h = Harness::new(Limits {
        idle_after: Duration::from_secs(5),
        ..limits()
    });
    let ann = h.join("ann");
    let (bob, _) = h.join_with("bob", Role::Reviewer, JoinOptions::default());
    let joined = h.drain(ann);
    let Some(Payload::Presence(p)) = &joined[0].payload else {
        panic!("{joined:?}")
    };
    assert_eq!(
        (joined[0].user_id.as_str(), p.status, p.role),
        ("bob", Presence::Joined as i32, 2)
    );
    h.drain(bob);
    h.elapsed = Duration::from_secs(6);
    h.step(Input::Tick);
    let idle: Vec<_> = h
        .drain(ann)
        .into_iter()
        .filter_map(|m| match m.payload {
            Some(Payload::Presence(p)) if p.status == Presence::Idle as i32 => Some(m.user_id),
            _ => None,
        })
        .collect();
    assert_eq!(idle, vec!["ann".to_string(), "bob".to_string()]);
    // Bob speaks: ACTIVE again.
    h.send(bob, 0, Action::Touch);
    let active = h.drain(ann);
    assert!(
        matches!(&active[0].payload, Some(Payload::Presence(p)) if p.status == Presence::Active as i32)
    );
    h.leave(bob);
    let left = h.drain(ann);
    assert!(
        matches!(&left[0].payload, Some(Payload::Presence(p)) if p.status == Presence::Left as i32)
    );
    assert_eq!(h.session.stats().participants, 1);
    h.assert_log_rebuilds_the_state();
}

#[test]
fn out_of_range_edits_get_a_per_message_error_and_the_stream_stays() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    h.send(ann, 1, edit("a.rs", LineOp::Delete { line: 3 }, 0));
    h.send(
        ann,
        2,
        edit(
            "a.rs",
            LineOp::Insert {
                line: 1,
                text: text("x"),
            },
            0,
        ),
    );
    let replies = h.drain(ann);
    for (reply, cs) in replies.iter().zip([1, 2]) {
        let Some(Payload::Error(e)) = &reply.payload else {
            panic!("{replies:?}")
        };
        assert_eq!(
            (e.code, e.client_sequence),
            (crate::grpc::Code::OutOfRange.as_i32(), cs)
        );
    }
    assert!(h.session.has_member(ann));
    h.send(
        ann,
        3,
        edit(
            "a.rs",
            LineOp::Insert {
                line: 0,
                text: text("ok"),
            },
            0,
        ),
    );
    assert!(matches!(h.drain(ann)[0].payload, Some(Payload::Ack(_))));
}

#[test]
fn roles_are_enforced_per_message() {
    let mut h = Harness::new(limits());
    let (rev, _) = h.join_with("rev", Role::Reviewer, JoinOptions::default());
    let (obs, _) = h.join_with("obs", Role::Observer, JoinOptions::default());
    h.drain(rev);
    h.drain(obs);
    h.send(
        rev,
        1,
        edit(
            "a.rs",
            LineOp::Replace {
                line: 0,
                text: text("x"),
            },
            0,
        ),
    );
    h.send(
        rev,
        2,
        Action::Comment(CommentRequest {
            comment_id: String::new(),
            path: String::new(),
            line: 0,
            text: "nice".into(),
        }),
    );
    let replies = h.drain(rev);
    assert!(matches!(&replies[0].payload, Some(Payload::Error(e)) if e.code == 7));
    assert!(matches!(&replies[1].payload, Some(Payload::Ack(a)) if a.comment_id == "c3"));
    h.drain(obs);
    h.send(
        obs,
        1,
        Action::Cursor(CursorRequest {
            path: "a.rs".into(),
            line: 0,
            column: 0,
        }),
    );
    assert!(matches!(&h.drain(obs)[0].payload, Some(Payload::Error(e)) if e.code == 7));
}

#[test]
fn resends_are_acknowledged_but_never_applied_twice() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    let bob = h.join("bob");
    h.drain(ann);
    let insert = edit(
        "a.rs",
        LineOp::Insert {
            line: 0,
            text: text("once"),
        },
        0,
    );
    h.send(ann, 5, insert.clone());
    h.send(ann, 5, insert);
    let replies = h.drain(ann);
    let acks: Vec<_> = payloads(&replies)
        .into_iter()
        .filter_map(|p| match p {
            Payload::Ack(a) => Some((a.client_sequence, a.sequence, a.duplicate)),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 2);
    assert_eq!((acks[0].0, acks[0].2), (5, false));
    assert_eq!((acks[1].0, acks[1].1, acks[1].2), (5, acks[0].1, true));
    assert_eq!(h.session.document().file("a.rs").unwrap().len(), 1);
    assert_eq!(h.drain(bob).len(), 1, "bob sees the edit once");
    h.assert_log_rebuilds_the_state();
}

#[test]
fn late_joiners_get_history_or_snapshot() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    for i in 0..3 {
        h.send(
            ann,
            i + 1,
            edit(
                "a.rs",
                LineOp::Insert {
                    line: 0,
                    text: text("l"),
                },
                i as i32,
            ),
        );
    }
    let (bob, _) = h.join_with("bob", Role::Author, JoinOptions::default());
    let to_bob = h.drain(bob);
    let Some(Payload::Joined(j)) = &to_bob[0].payload else {
        panic!()
    };
    assert_eq!(j.catchup, Catchup::History as i32);
    let edits = payloads(&to_bob)
        .into_iter()
        .filter(|p| matches!(p, Payload::Edit(_)))
        .count();
    assert_eq!(edits, 3);
    assert!(
        matches!(to_bob.last().unwrap().payload, Some(Payload::Notice(ref n)) if n.kind == NoticeKind::CaughtUp as i32)
    );

    let options = JoinOptions {
        want_snapshot: true,
        ..JoinOptions::default()
    };
    let (carol, _) = h.join_with("carol", Role::Reviewer, options);
    let to_carol = h.drain(carol);
    let Some(Payload::Snapshot(s)) = &to_carol[1].payload else {
        panic!("{to_carol:?}")
    };
    assert_eq!(s.files[0].lines.len(), 3);
    assert_eq!(s.version, 3);
    let users: Vec<_> = s.participants.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(users, vec!["ann", "bob", "carol"]);
}

#[test]
fn resume_delivers_exactly_what_was_missed() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    let bob = h.join("bob");
    h.drain(ann);
    h.send(
        ann,
        1,
        edit(
            "a.rs",
            LineOp::Insert {
                line: 0,
                text: text("1"),
            },
            0,
        ),
    );
    let seen = h.drain(bob);
    let last = seen.last().unwrap().sequence;
    h.leave(bob);
    h.send(
        ann,
        2,
        edit(
            "a.rs",
            LineOp::Insert {
                line: 1,
                text: text("2"),
            },
            1,
        ),
    );
    h.send(
        ann,
        3,
        edit(
            "a.rs",
            LineOp::Insert {
                line: 2,
                text: text("3"),
            },
            2,
        ),
    );
    let options = JoinOptions {
        resume_after: Some(last),
        epoch: 7,
        ..JoinOptions::default()
    };
    let (bob2, _) = h.join_with("bob", Role::Author, options);
    let messages = h.drain(bob2);
    let Some(Payload::Joined(j)) = &messages[0].payload else {
        panic!()
    };
    assert_eq!(j.catchup, Catchup::Resume as i32);
    let sequences: Vec<u64> = messages
        .iter()
        .filter(|m| {
            matches!(
                m.payload,
                Some(Payload::Edit(_)) | Some(Payload::Ack(_)) | Some(Payload::Presence(_))
            )
        })
        .map(|m| m.sequence)
        .collect();
    let expected: Vec<u64> = (last + 1..=j.sequence).collect();
    assert_eq!(
        sequences, expected,
        "exactly the missed sequence numbers, once each"
    );
    // A different epoch (session recreated) gets a snapshot instead.
    h.leave(bob2);
    let options = JoinOptions {
        resume_after: Some(last),
        epoch: 99,
        ..JoinOptions::default()
    };
    let (bob3, _) = h.join_with("bob", Role::Author, options);
    assert!(matches!(
        h.drain(bob3)[1].payload,
        Some(Payload::Snapshot(_))
    ));
}

/// A session whose outboxes hold 4 KiB: ann writes, slow never reads, fast
/// reads (both caught up so far).
fn with_a_slow_consumer() -> (Harness, MemberId, MemberId, MemberId) {
    let mut h = Harness::new(Limits {
        outbox_bytes: 4096,
        ..limits()
    });
    let ann = h.join("ann");
    let slow = h.join("slow");
    let fast = h.join("fast");
    h.drain(ann);
    h.drain(fast);
    (h, ann, slow, fast)
}

#[test]
fn a_slow_consumer_is_ended_and_does_not_hold_back_others() {
    let (mut h, ann, slow, fast) = with_a_slow_consumer();
    let mut closed = Vec::new();
    for i in 0..100u64 {
        let fx = h.send(
            ann,
            i + 1,
            edit(
                "a.rs",
                LineOp::Insert {
                    line: 0,
                    text: text("some line of code"),
                },
                i as i32,
            ),
        );
        closed.extend(fx.closed);
        let edits = h
            .drain(fast)
            .into_iter()
            .filter(|m| matches!(m.payload, Some(Payload::Edit(_))))
            .count();
        assert_eq!(edits, 1, "fast keeps getting every edit");
        h.drain(ann);
    }
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].0, slow);
    assert_eq!(closed[0].1.kind, ErrorKind::ResourceExhausted);
    assert!(!h.session.has_member(slow));
    assert!(h.session.stats().outbox_bytes < 1024);
}

#[test]
fn cursors_coalesce_latest_wins() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    let bob = h.join("bob");
    h.drain(ann);
    for line in 0..1000 {
        h.send(
            ann,
            0,
            Action::Cursor(CursorRequest {
                path: "a.rs".into(),
                line,
                column: 1,
            }),
        );
    }
    let to_bob = h.drain(bob);
    assert_eq!(to_bob.len(), 1);
    assert!(matches!(&to_bob[0].payload, Some(Payload::Cursor(c)) if c.line == 999));
    assert!(h.drain(ann).is_empty(), "own cursor is not echoed");
}

#[test]
fn the_same_user_again_replaces_the_older_stream() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    let bob = h.join("bob");
    h.drain(ann);
    let (bob2, fx) = h.join_with("bob", Role::Author, JoinOptions::default());
    assert_eq!(fx.closed.len(), 1);
    assert_eq!(
        (fx.closed[0].0, fx.closed[0].1.kind),
        (bob, ErrorKind::Aborted)
    );
    assert!(h.drain(ann).is_empty(), "no LEFT/JOINED for a takeover");
    assert!(h.session.has_member(bob2));
    assert_eq!(h.session.stats().participants, 2);
}

#[test]
fn a_client_leaving_ends_its_stream_normally() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    let fx = h.send(ann, 0, Action::Presence(ClientPresence::Left));
    assert_eq!(fx.finished, vec![ann]);
    assert!(h.session.is_empty());
}

#[test]
fn rate_limit_refuses_excess_messages() {
    let mut h = Harness::new(Limits {
        rate_per_second: 10.0,
        rate_burst: 5.0,
        ..Limits::default()
    });
    let ann = h.join("ann");
    for i in 0..8 {
        h.send(ann, i + 1, Action::Touch);
    }
    let errors = h
        .drain(ann)
        .into_iter()
        .filter(|m| matches!(&m.payload, Some(Payload::Error(e)) if e.code == 8))
        .count();
    assert_eq!(errors, 3);
    h.elapsed = Duration::from_secs(1);
    h.send(
        ann,
        20,
        edit(
            "a.rs",
            LineOp::Insert {
                line: 0,
                text: text("x"),
            },
            0,
        ),
    );
    assert!(matches!(h.drain(ann)[0].payload, Some(Payload::Ack(_))));
}

#[test]
fn uploads_replace_files_and_concurrent_edits_to_them_lapse() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    h.send(
        ann,
        1,
        edit(
            "a.rs",
            LineOp::Insert {
                line: 0,
                text: text("old"),
            },
            0,
        ),
    );
    h.drain(ann);
    let outcome = h
        .upload("ann", vec![("a.rs", vec![text("new1"), text("new2")])])
        .unwrap();
    assert_eq!((outcome.files, outcome.lines, outcome.version), (1, 2, 2));
    // An edit based on version 1 (before the upload) lapses.
    h.send(
        ann,
        2,
        edit(
            "a.rs",
            LineOp::Replace {
                line: 0,
                text: text("stale"),
            },
            1,
        ),
    );
    let replies = h.drain(ann);
    assert!(
        replies
            .iter()
            .any(|m| matches!(&m.payload, Some(Payload::Ack(a)) if a.noop))
    );
    assert_eq!(
        h.session.document().file("a.rs").unwrap(),
        &[text("new1"), text("new2")]
    );
    h.assert_log_rebuilds_the_state();
}

#[test]
fn comments_follow_their_lines() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    for i in 0..3 {
        h.send(
            ann,
            i + 1,
            edit(
                "a.rs",
                LineOp::Insert {
                    line: i as u32,
                    text: text("l"),
                },
                i as i32,
            ),
        );
    }
    h.send(
        ann,
        10,
        Action::Comment(CommentRequest {
            comment_id: "x".into(),
            path: "a.rs".into(),
            line: 2,
            text: "here".into(),
        }),
    );
    h.send(
        ann,
        11,
        edit(
            "a.rs",
            LineOp::Insert {
                line: 0,
                text: text("top"),
            },
            3,
        ),
    );
    assert_eq!(
        h.session.snapshot().comments[0]
            .comment
            .as_ref()
            .unwrap()
            .line_number,
        3
    );
    h.send(
        ann,
        12,
        Action::Comment(CommentRequest {
            comment_id: "x".into(),
            path: String::new(),
            line: 0,
            text: "dup".into(),
        }),
    );
    assert!(
        h.drain(ann)
            .iter()
            .any(|m| matches!(&m.payload, Some(Payload::Error(e)) if e.code == 6))
    );
    h.assert_log_rebuilds_the_state();
}

// ----- the simulator -----

impl Harness {
    fn upload(
        &mut self,
        user: &str,
        files: Vec<(&str, Vec<Text>)>,
    ) -> Result<UploadOutcome, ReviewError> {
        let proof = Role::Author.may_upload().unwrap();
        let files = files.into_iter().map(|(p, l)| (text(p), l)).collect();
        let input = Input::Upload {
            user: text(user),
            files,
            proof,
        };
        match self.step(input).result? {
            Done::Uploaded(outcome) => Ok(outcome),
            Done::Nothing => panic!("an upload reports its outcome"),
        }
    }

    fn article_join(&mut self, user: &str) -> MemberId {
        let options = JoinOptions {
            article_client: true,
            ..JoinOptions::default()
        };
        let member = self.join_with(user, Role::Author, options).0;
        self.drain(member);
        member
    }
}

fn replace(line: u32, content: &str) -> Action {
    edit(
        "f.txt",
        LineOp::Replace {
            line,
            text: text(content),
        },
        0,
    )
}

fn remote_edits(messages: &[SessionMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match &m.payload {
            Some(Payload::Edit(e)) => Some(e.content.clone()),
            _ => None,
        })
        .collect()
}

/// Article clients always send version 0. Two of them replacing one line as
/// fast as they can: every edit is applied and broadcast (last writer wins),
/// none vanishes as a no-op.
#[test]
fn article_clients_concurrent_replaces_are_all_applied_and_broadcast() {
    let mut h = Harness::new(limits());
    let alice = h.article_join("alice");
    let bob = h.article_join("bob");
    h.drain(alice);
    for i in 0..6 {
        h.send(alice, 0, replace(1, &format!("alice {i}")));
        h.send(bob, 0, replace(1, &format!("bob {i}")));
    }
    let to_alice = h.drain(alice);
    let to_bob = h.drain(bob);
    let expect = |who: &str| (0..6).map(|i| format!("{who} {i}")).collect::<Vec<_>>();
    assert_eq!(remote_edits(&to_alice), expect("bob"));
    assert_eq!(remote_edits(&to_bob), expect("alice"));
    assert!(
        !payloads(&to_alice)
            .iter()
            .any(|p| matches!(p, Payload::Ack(a) if a.noop)),
        "no edit of alice's lapsed"
    );
    assert_eq!(
        &*h.session.document().file("f.txt").unwrap()[1],
        "bob 5",
        "the last writer wins"
    );
    h.assert_log_rebuilds_the_state();
}

/// An article client's edit is based on what it was sent: an insert it has
/// received is taken as seen, one still queued for it is transformed over.
#[test]
fn article_clients_edits_are_based_on_what_was_delivered() {
    let mut h = Harness::new(limits());
    let alice = h.article_join("alice");
    let bob = h.article_join("bob");
    h.send(bob, 0, replace(2, "c"));
    h.send(
        bob,
        0,
        edit(
            "f.txt",
            LineOp::Insert {
                line: 0,
                text: text("top"),
            },
            0,
        ),
    );
    h.drain(alice); // alice has the file as ["top", "", "", "c"]
    h.send(alice, 0, replace(3, "C"));
    assert_eq!(&*h.session.document().file("f.txt").unwrap()[3], "C");
    // Bob inserts again; alice has not been sent it when she edits.
    h.send(
        bob,
        0,
        edit(
            "f.txt",
            LineOp::Insert {
                line: 0,
                text: text("top2"),
            },
            0,
        ),
    );
    h.send(alice, 0, replace(3, "C2"));
    let lines = h.session.document().file("f.txt").unwrap().to_vec();
    assert_eq!(
        &*lines[4], "C2",
        "shifted past the insert alice had not seen: {lines:?}"
    );
    assert_eq!(&*lines[3], "", "{lines:?}");
    h.assert_log_rebuilds_the_state();
}

/// A new stream of a user who was here before (a new process: not a
/// resume) is shown the user's earlier events as events, since it never saw
/// them; only this stream's own JOINED comes as an acknowledgement.
#[test]
fn a_new_stream_of_a_returning_user_sees_its_earlier_events() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    h.send(ann, 1, replace(0, "earlier"));
    h.leave(ann);
    let (again, _) = h.join_with("ann", Role::Author, JoinOptions::default());
    let replay = h.drain(again);
    assert_eq!(remote_edits(&replay), vec!["earlier"]);
    let own_acks: Vec<u64> = replay
        .iter()
        .filter_map(|m| match &m.payload {
            Some(Payload::Ack(a)) => Some(a.sequence),
            _ => None,
        })
        .collect();
    let Some(Payload::Joined(joined)) = &replay[0].payload else {
        panic!("{replay:?}")
    };
    assert_eq!(own_acks, vec![joined.sequence], "only this join's JOINED");
    assert_eq!(joined.last_client_sequence, 1, "numbering goes on after 1");
}

/// A client of our protocol that joined with a snapshot cannot have based
/// an edit on a version before it: version 0 from it is not a base.
#[test]
fn a_version_below_what_the_joiner_knew_is_not_a_base() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    h.send(ann, 1, replace(0, "a"));
    h.send(ann, 2, replace(0, "b"));
    let options = JoinOptions {
        want_snapshot: true,
        ..JoinOptions::default()
    };
    let (bob, _) = h.join_with("bob", Role::Author, options);
    h.drain(bob);
    h.send(bob, 1, replace(0, "from bob"));
    let replies = h.drain(bob);
    assert!(
        matches!(payloads(&replies)[0], Payload::Ack(a) if !a.noop && a.version == 3),
        "{replies:?}"
    );
    assert_eq!(&*h.session.document().file("f.txt").unwrap()[0], "from bob");
}

/// With the history truncated, a joiner of our protocol gets a snapshot
/// (a partial replay cannot rebuild the files); an article client keeps the
/// replay.
#[test]
fn a_joiner_gets_a_snapshot_when_the_history_is_truncated() {
    let mut h = Harness::new(Limits {
        history_events: 3,
        ..limits()
    });
    h.upload("ann", vec![("f.txt", vec![text("one"), text("two")])])
        .unwrap();
    for user in ["a", "b"] {
        let m = h.join(user);
        h.leave(m);
    }
    let (carol, _) = h.join_with("carol", Role::Author, JoinOptions::default());
    let to_carol = h.drain(carol);
    let Some(Payload::Joined(j)) = &to_carol[0].payload else {
        panic!("{to_carol:?}")
    };
    assert_eq!(j.catchup, Catchup::Snapshot as i32);
    let Some(Payload::Snapshot(snapshot)) = &to_carol[1].payload else {
        panic!("{to_carol:?}")
    };
    assert_eq!(snapshot.files[0].lines, vec!["one", "two"]);
    let (eve, _) = h.join_with(
        "eve",
        Role::Author,
        JoinOptions {
            article_client: true,
            ..JoinOptions::default()
        },
    );
    let to_eve = h.drain(eve);
    let Some(Payload::Joined(j)) = &to_eve[0].payload else {
        panic!()
    };
    assert_eq!(j.catchup, Catchup::History as i32);
    // With the whole history kept, the replay it is.
    let mut h = Harness::new(limits());
    h.upload("ann", vec![("f.txt", vec![text("one")])]).unwrap();
    let (fred, _) = h.join_with("fred", Role::Author, JoinOptions::default());
    let Some(Payload::Joined(j)) = &h.drain(fred)[0].payload else {
        panic!()
    };
    assert_eq!(j.catchup, Catchup::History as i32);
}

fn comment_on(path: &str, line: u32, id: &str) -> Action {
    Action::Comment(CommentRequest {
        comment_id: id.into(),
        path: path.into(),
        line,
        text: "why?".into(),
    })
}

/// A comment must point at a line that exists: live replicas and snapshots
/// then agree on where it is.
#[test]
fn comments_past_the_end_or_on_missing_files_are_refused() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    let bob = h.join("bob");
    h.upload("ann", vec![("f.txt", vec![text("0"), text("1")])])
        .unwrap();
    h.drain(ann);
    h.drain(bob);
    h.send(ann, 1, comment_on("f.txt", 2, ""));
    h.send(ann, 2, comment_on("nope.txt", 0, ""));
    h.send(ann, 3, comment_on("f.txt", 1, ""));
    h.send(ann, 4, comment_on("", 99, ""));
    let replies = h.drain(ann);
    let codes: Vec<i32> = payloads(&replies)
        .iter()
        .map(|p| match p {
            Payload::Error(e) => e.code,
            Payload::Ack(_) => 0,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![11, 5, 0, 0],
        "OUT_OF_RANGE, NOT_FOUND, ok, ok (review-level)"
    );
    let lines: Vec<i32> = h
        .drain(bob)
        .iter()
        .filter_map(|m| match &m.payload {
            Some(Payload::Comment(c)) => Some(c.line_number),
            _ => None,
        })
        .collect();
    assert_eq!(lines, vec![1, 99]);
    let snapshot: Vec<i32> = h
        .session
        .snapshot()
        .comments
        .iter()
        .map(|c| c.comment.as_ref().unwrap().line_number)
        .collect();
    assert_eq!(snapshot, lines, "live and snapshot agree");
    h.assert_log_rebuilds_the_state();
}

/// Client-chosen ids live apart from the server's `c<sequence>` ids: a
/// client cannot take an id the server will hand out.
#[test]
fn client_comment_ids_cannot_squat_the_servers() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    h.send(ann, 1, comment_on("", 0, "mine"));
    h.send(ann, 2, comment_on("", 0, "mine"));
    h.send(ann, 3, comment_on("", 0, ""));
    let replies = h.drain(ann);
    let got: Vec<String> = payloads(&replies)
        .iter()
        .map(|p| match p {
            Payload::Error(e) => format!("error {}", e.code),
            Payload::Ack(a) => a.comment_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec!["mine", "error 6", "c3"]);
    h.assert_log_rebuilds_the_state();
}

/// client_sequence numbers: a lower number never processed is refused
/// (never silently dropped as a "duplicate"); a resend of a processed one is
/// answered again.
#[test]
fn skipped_client_sequences_are_refused_not_dropped() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    h.send(ann, 5, replace(0, "five"));
    h.send(ann, 3, replace(0, "three"));
    h.send(ann, 5, replace(0, "five again"));
    let replies = h.drain(ann);
    let got: Vec<String> = payloads(&replies)
        .iter()
        .map(|p| match p {
            Payload::Error(e) => format!("error {} {}", e.code, e.client_sequence),
            Payload::Ack(a) => format!("ack {} dup={}", a.client_sequence, a.duplicate),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, vec!["ack 5 dup=false", "error 3 3", "ack 5 dup=true"]);
    assert_eq!(&*h.session.document().file("f.txt").unwrap()[0], "five");
    // A number whose outcome is no longer remembered is answered as such.
    for n in 0..300u64 {
        h.send(ann, 10 + n, comment_on("", 0, ""));
    }
    // Cursor moves are idempotent: numbered ones are acknowledged but not
    // remembered, and a resend moves the cursor again.
    let cursor = || {
        Action::Cursor(CursorRequest {
            path: "f.txt".into(),
            line: 0,
            column: 0,
        })
    };
    h.send(ann, 400, cursor());
    h.send(ann, 400, cursor());
    let acks = h
        .drain(ann)
        .into_iter()
        .filter(|m| matches!(&m.payload, Some(Payload::Ack(a)) if a.client_sequence == 400 && !a.duplicate))
        .count();
    assert_eq!(acks, 2);
    h.drain(ann);
    h.send(ann, 5, replace(0, "five, much later"));
    let replies = h.drain(ann);
    assert!(
        matches!(payloads(&replies)[0], Payload::Error(e) if e.code == 9 && e.message.contains("unknown")),
        "{replies:?}"
    );
    h.assert_log_rebuilds_the_state();
}

/// A resume without an epoch (0) says nothing about which incarnation of
/// the session it resumes: it gets a snapshot.
#[test]
fn a_resume_without_an_epoch_gets_a_snapshot() {
    let mut h = Harness::new(limits());
    let ann = h.join("ann");
    h.send(ann, 1, replace(0, "x"));
    let options = JoinOptions {
        resume_after: Some(1),
        epoch: 0,
        ..JoinOptions::default()
    };
    let (bob, _) = h.join_with("bob", Role::Author, options);
    let Some(Payload::Joined(j)) = &h.drain(bob)[0].payload else {
        panic!()
    };
    assert_eq!(j.catchup, Catchup::Snapshot as i32);
}

/// Whatever content a session accepted fits in one snapshot message: the
/// budget counts bytes as the snapshot encodes them (empty lines are the
/// worst case: 2 bytes each).
#[test]
fn a_full_session_still_fits_in_one_snapshot() {
    use prost::Message;
    let budget = 64 * 1024;
    let mut h = Harness::new(Limits {
        max_document_bytes: budget,
        max_lines_per_file: 100_000,
        ..limits()
    });
    let mut files = 0;
    loop {
        let lines: Vec<Text> = (0..10_000).map(|_| text("")).collect();
        let path = format!("f{files}.txt");
        if h.upload("ann", vec![(&path, lines)]).is_err() {
            break;
        }
        files += 1;
    }
    // Fill what is left line by line.
    let ann = h.join("ann");
    let mut n = 1;
    loop {
        h.send(
            ann,
            n,
            edit(
                "last.txt",
                LineOp::Insert {
                    line: 0,
                    text: text(""),
                },
                0,
            ),
        );
        n += 1;
        if h.drain(ann)
            .iter()
            .any(|m| matches!(m.payload, Some(Payload::Error(_))))
        {
            break;
        }
    }
    let snapshot = h.session.snapshot();
    let encoded = snapshot.encoded_len();
    let limits = Limits::default();
    assert!(
        encoded <= budget + limits.snapshot_overhead_bytes(),
        "a snapshot of {encoded} bytes for a budget of {budget}"
    );
    assert!(encoded > budget * 9 / 10, "the budget was used: {encoded}");
}

/// The memory budget: a session refuses to grow past the room it is given,
/// and empty lines are counted at what they really cost.
#[test]
fn growth_is_refused_beyond_the_memory_room() {
    let mut h = Harness::new(limits());
    let before = h.session.memory_bytes();
    let lines: Vec<Text> = (0..10_000).map(|_| text("")).collect();
    h.upload("ann", vec![("a.txt", lines.clone())]).unwrap();
    let grown = h.session.memory_bytes() - before;
    assert!(grown >= 10_000 * 48, "empty lines are not free: {grown}");
    h.session.set_memory_room(grown / 2);
    let err = h.upload("ann", vec![("b.txt", lines)]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ResourceExhausted);
    let ann = h.join("ann");
    h.drain(ann);
    h.session.set_memory_room(0);
    // Replacing a line by a shorter one is not growth: it still works.
    h.send(
        ann,
        1,
        edit(
            "a.txt",
            LineOp::Replace {
                line: 0,
                text: text(""),
            },
            0,
        ),
    );
    h.send(ann, 2, comment_on("", 0, ""));
    let replies = h.drain(ann);
    assert!(
        matches!(payloads(&replies)[0], Payload::Ack(_)),
        "{replies:?}"
    );
    assert!(
        matches!(payloads(&replies)[1], Payload::Error(e) if e.code == 8),
        "{replies:?}"
    );
}

/// Uploads count against their author's rate limits, messages and bytes.
#[test]
fn uploads_count_against_the_rate_limits() {
    let mut h = Harness::new(Limits {
        rate_per_second: 10.0,
        rate_burst: 5.0,
        rate_bytes_per_second: 1000.0,
        rate_bytes_burst: 15_000.0,
        ..Limits::default()
    });
    let small = || vec![text("x")];
    let mut accepted = 0;
    for i in 0..20 {
        if h.upload("ann", vec![(&format!("f{i}"), small())]).is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5, "the message burst");
    h.elapsed += Duration::from_secs(10);
    let big: Vec<Text> = (0..100).map(|_| text(&"y".repeat(99))).collect();
    h.upload("ann", vec![("big1", big.clone())]).unwrap();
    let err = h.upload("ann", vec![("big2", big)]).unwrap_err();
    assert!(err.message.contains("bytes per second"), "{err:?}");
}

#[derive(Debug, Clone)]
enum Step {
    Edit {
        client: usize,
        kind: u8,
        line: u32,
        text: u8,
    },
    Deliver {
        client: usize,
        count: usize,
    },
    Disconnect {
        client: usize,
    },
    Reconnect {
        client: usize,
        eager_resend: bool,
    },
}

fn arb_step(clients: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..clients, 0..3u8, any::<u32>(), 0..4u8).prop_map(|(client, kind, line, text)| Step::Edit { client, kind, line, text }),
        5 => (0..clients, 1..6usize).prop_map(|(client, count)| Step::Deliver { client, count }),
        1 => (0..clients).prop_map(|client| Step::Disconnect { client }),
        1 => (0..clients, any::<bool>()).prop_map(|(client, eager_resend)| Step::Reconnect { client, eager_resend }),
    ]
}

struct SimClient {
    user: Text,
    member: Option<MemberId>,
    replica: Replica,
    inbox: VecDeque<Bytes>,
    last_sequence: u64,
    epoch: u64,
    next_client_sequence: u64,
    caught_up: bool,
    /// Client sequences sent on the current connection.
    sent: std::collections::HashSet<u64>,
}

struct Sim {
    h: Harness,
    clients: Vec<SimClient>,
}

impl Sim {
    fn new(n: usize) -> Self {
        let mut sim = Sim {
            h: Harness::new(limits()),
            clients: Vec::new(),
        };
        for i in 0..n {
            sim.clients.push(SimClient {
                user: Arc::from(format!("u{i}")),
                member: None,
                replica: Replica::new(),
                inbox: VecDeque::new(),
                last_sequence: 0,
                epoch: 0,
                next_client_sequence: 1,
                caught_up: false,
                sent: Default::default(),
            });
            sim.connect(i, true, false);
        }
        sim
    }

    fn connect(&mut self, i: usize, fresh: bool, eager_resend: bool) {
        let c = &self.clients[i];
        // A client that never learned the epoch joins afresh (a resume
        // without an epoch would get a snapshot); it has sent nothing yet
        // (edits are sent once caught up), and sends nothing before its
        // catch-up now either: a new stream's replay shows the user's
        // earlier events as events, not as acknowledgements.
        let knows_epoch = c.epoch != 0;
        let options = if fresh || !knows_epoch {
            JoinOptions::default()
        } else {
            JoinOptions {
                resume_after: Some(c.last_sequence),
                epoch: c.epoch,
                ..JoinOptions::default()
            }
        };
        let user = c.user.clone();
        let (member, _) = self.h.join_with(&user, Role::Author, options);
        let c = &mut self.clients[i];
        c.member = Some(member);
        c.caught_up = false;
        c.sent.clear();
        c.inbox.clear();
        if eager_resend && knows_epoch {
            // Resend before reading the catch-up: duplicates must be caught.
            self.resend(i);
        }
    }

    fn resend(&mut self, i: usize) {
        let Some(member) = self.clients[i].member else {
            return;
        };
        for (client_sequence, wire) in self.clients[i].replica.resend() {
            if !self.clients[i].sent.insert(client_sequence) {
                continue;
            }
            let request = from_wire(&wire).unwrap();
            let action = edit(&request.path, request.op, wire.version);
            let fx = self.h.send(member, client_sequence, action);
            assert!(fx.closed.is_empty());
        }
    }

    fn fetch(&mut self, i: usize) {
        if let Some(member) = self.clients[i].member {
            let batch = split(self.h.session.take(member, usize::MAX));
            self.clients[i].inbox.extend(batch);
        }
    }

    fn deliver(&mut self, i: usize, count: usize) {
        self.fetch(i);
        for _ in 0..count {
            let Some(framed) = self.clients[i].inbox.pop_front() else {
                return;
            };
            self.process(i, decode(&framed));
        }
    }

    fn process(&mut self, i: usize, message: SessionMessage) {
        let c = &mut self.clients[i];
        let essential = match &message.payload {
            Some(Payload::Edit(_) | Payload::Comment(_) | Payload::File(_)) => true,
            Some(Payload::Presence(p)) => {
                p.status == Presence::Joined as i32 || p.status == Presence::Left as i32
            }
            // A duplicate ack repeats the original's number for a resend.
            Some(Payload::Ack(a)) => a.sequence != 0 && !a.duplicate,
            _ => false,
        };
        if essential {
            assert_eq!(
                message.sequence,
                c.last_sequence + 1,
                "{}: dense, no loss, no duplicate: {message:?}",
                c.user
            );
            c.last_sequence = message.sequence;
        }
        match message.payload {
            Some(Payload::Joined(j)) => {
                c.epoch = j.session_epoch;
                assert_ne!(
                    j.catchup,
                    Catchup::Snapshot as i32,
                    "history is large enough to resume"
                );
            }
            Some(Payload::Edit(e)) => c
                .replica
                .remote(from_wire(&e).unwrap(), e.version)
                .expect("in order"),
            Some(Payload::Ack(a)) => c.replica.ack(a.client_sequence, a.version),
            Some(Payload::Error(e)) => panic!("{}: unexpected error {e:?}", c.user),
            Some(Payload::Notice(n)) if n.kind == NoticeKind::CaughtUp as i32 => {
                c.caught_up = true;
                self.resend(i);
            }
            _ => {}
        }
    }

    fn local_edit(&mut self, i: usize, kind: u8, line_seed: u32, text_seed: u8) {
        let c = &mut self.clients[i];
        let len = c.replica.file("f").map_or(0, <[Text]>::len) as u32;
        let text: Text = Arc::from(format!("{}{}", c.user, text_seed));
        let op = match kind {
            0 => LineOp::Replace {
                line: line_seed % (len + 2),
                text,
            },
            1 => LineOp::Insert {
                line: line_seed % (len + 1),
                text,
            },
            _ if len > 0 => LineOp::Delete {
                line: line_seed % len,
            },
            _ => LineOp::Insert { line: 0, text },
        };
        let client_sequence = c.next_client_sequence;
        c.next_client_sequence += 1;
        let wire = c
            .replica
            .local_edit(
                FileOp {
                    path: Arc::from("f"),
                    op: op.clone(),
                },
                client_sequence,
            )
            .unwrap();
        if let (Some(member), true) = (c.member, c.caught_up) {
            c.sent.insert(client_sequence);
            self.h
                .send(member, client_sequence, edit("f", op, wire.version));
        }
    }

    fn run(&mut self, steps: &[Step]) {
        for step in steps {
            match *step {
                Step::Edit {
                    client,
                    kind,
                    line,
                    text,
                } => self.local_edit(client, kind, line, text),
                Step::Deliver { client, count } => self.deliver(client, count),
                Step::Disconnect { client } => {
                    if let Some(member) = self.clients[client].member.take() {
                        self.h.leave(member);
                        self.clients[client].inbox.clear();
                    }
                }
                Step::Reconnect {
                    client,
                    eager_resend,
                } => {
                    if self.clients[client].member.is_none() {
                        self.connect(client, false, eager_resend);
                    }
                }
            }
        }
        // Quiesce: everyone back, everything delivered.
        for i in 0..self.clients.len() {
            if self.clients[i].member.is_none() {
                self.connect(i, false, false);
            }
        }
        for _ in 0..10 {
            for i in 0..self.clients.len() {
                self.deliver(i, usize::MAX);
            }
        }
        self.h.assert_log_rebuilds_the_state();
    }
}

proptest! {

    /// All replicas converge to the server's document, with every edit
    /// acknowledged, none applied twice and one order for everyone.
    #[test]
    fn replicas_converge(steps in proptest::collection::vec(arb_step(3), 1..120)) {
        let mut sim = Sim::new(3);
        sim.run(&steps);
        let server: Vec<Text> = sim.h.session.document().file("f").map(<[Text]>::to_vec).unwrap_or_default();
        for c in &sim.clients {
            prop_assert_eq!(c.replica.pending().count(), 0, "{} has unacknowledged edits", c.user);
            let replica: Vec<Text> = c.replica.file("f").map(<[Text]>::to_vec).unwrap_or_default();
            prop_assert_eq!(&replica, &server, "{} diverged", c.user);
            prop_assert_eq!(c.replica.version(), sim.h.session.version());
        }
    }
}

/// Messages that arrived together are one step (`Input::Messages`): every
/// member hears exactly what it would have heard had they been stepped one
/// by one, refusals in their place, and the log is the same.
#[test]
fn a_batch_of_messages_is_answered_as_its_messages_one_by_one() {
    let insert = |line: u32, base: i32| {
        edit(
            "a.rs",
            LineOp::Insert {
                line,
                text: text("let x = 1;"),
            },
            base,
        )
    };
    let batch = || {
        vec![
            (1, insert(0, 0)),
            (2, comment_on("a.rs", 0, "")),
            // Past the end of the file: refused, in its place.
            (3, insert(9, 1)),
            (
                0,
                Action::Cursor(CursorRequest {
                    path: "a.rs".into(),
                    line: 0,
                    column: 3,
                }),
            ),
            (4, insert(1, 1)),
            // A resend of the first: acknowledged again, not applied.
            (1, insert(0, 0)),
        ]
    };
    let run = |together: bool| {
        let mut h = Harness::new(limits());
        let ann = h.join("ann");
        let bob = h.join("bob");
        h.drain(ann);
        h.drain(bob);
        let before = h.log.len();
        if together {
            let messages = batch()
                .into_iter()
                .map(|(client_sequence, action)| ClientMessage {
                    client_sequence,
                    action,
                })
                .collect();
            h.step(Input::Messages {
                member: ann,
                messages,
            });
        } else {
            for (client_sequence, action) in batch() {
                h.send(ann, client_sequence, action);
            }
        }
        let log: Vec<Record> = h.log[before..].to_vec();
        h.assert_log_rebuilds_the_state();
        (h.drain(ann), h.drain(bob), log)
    };
    let (ann_one_by_one, bob_one_by_one, log_one_by_one) = run(false);
    let (ann_together, bob_together, log_together) = run(true);
    assert_eq!(ann_together, ann_one_by_one);
    assert_eq!(bob_together, bob_one_by_one);
    assert_eq!(log_together, log_one_by_one);
    // What the batch was: two edits, a comment and a cursor for bob; for
    // ann, acks, a refusal and a duplicate's ack.
    assert_eq!(
        payloads(&bob_together)
            .iter()
            .filter(|p| matches!(
                p,
                Payload::Edit(_) | Payload::Comment(_) | Payload::Cursor(_)
            ))
            .count(),
        4
    );
    assert!(
        payloads(&ann_together)
            .iter()
            .any(|p| matches!(p, Payload::Error(e) if e.client_sequence == 3))
    );
    assert!(
        payloads(&ann_together)
            .iter()
            .any(|p| matches!(p, Payload::Ack(a) if a.client_sequence == 1 && a.duplicate))
    );
}

/// A member that falls behind during a batch is ended once, after it; the
/// others, who keep up between batches, are not.
#[test]
fn a_slow_consumer_is_ended_after_the_batch_that_overflowed_it() {
    let (mut h, ann, slow, fast) = with_a_slow_consumer();
    let mut closed_after = Vec::new();
    let mut fast_edits = 0;
    for batch in 0..5u64 {
        let messages = (0..20u64)
            .map(|i| {
                let n = batch * 20 + i;
                ClientMessage {
                    client_sequence: n + 1,
                    action: edit(
                        "a.rs",
                        LineOp::Insert {
                            line: 0,
                            text: text("some line of code"),
                        },
                        n as i32,
                    ),
                }
            })
            .collect();
        let fx = h.step(Input::Messages {
            member: ann,
            messages,
        });
        for (member, error) in fx.closed {
            assert_eq!(member, slow);
            assert_eq!(error.kind, ErrorKind::ResourceExhausted);
            closed_after.push(batch);
        }
        fast_edits += h
            .drain(fast)
            .into_iter()
            .filter(|m| matches!(m.payload, Some(Payload::Edit(_))))
            .count();
        h.drain(ann);
    }
    assert_eq!(closed_after.len(), 1, "ended once");
    assert!(closed_after[0] > 0, "not before its outbox filled");
    assert!(!h.session.has_member(slow));
    assert_eq!(fast_edits, 100, "fast gets every edit");
}

#[test]
fn the_feed_keeps_an_event_only_until_every_member_has_taken_it() {
    let mut h = Harness::new(limits());
    let members: Vec<MemberId> = ["ann", "bob", "cy"].iter().map(|u| h.join(u)).collect();
    for &member in &members {
        h.drain(member);
    }
    let comment = |n: u64| {
        Action::Comment(CommentRequest {
            comment_id: String::new(),
            path: String::new(),
            line: 0,
            text: format!("comment {n}"),
        })
    };
    // Members that keep up keep the feed short: trimmed every so many
    // events, not at every take.
    let mut client_sequence = 0;
    for _ in 0..300 {
        client_sequence += 1;
        for &member in &members {
            h.send(member, client_sequence, comment(client_sequence));
        }
        for &member in &members {
            assert_eq!(h.drain(member).len(), 3, "its ack and the others' two");
        }
        assert!(h.session.feed.len() <= FEED_TRIM_EVENTS);
    }
    h.session.forget_fed();
    assert_eq!(h.session.feed.kept_bytes(), 0);
    // Cy stops reading: the feed waits for cy, and only for cy.
    for _ in 0..40 {
        client_sequence += 1;
        for &member in &members {
            h.send(member, client_sequence, comment(client_sequence));
        }
        for &member in &members[..2] {
            h.drain(member);
        }
    }
    h.session.forget_fed();
    assert_eq!(h.session.feed.len(), 120, "all that cy has not read");
    assert_eq!(h.drain(members[2]).len(), 120);
    h.session.forget_fed();
    assert_eq!(h.session.feed.kept_bytes(), 0);
    // A member that leaves with events unread does not hold the feed.
    h.send(members[0], client_sequence + 1, comment(0));
    h.drain(members[0]);
    h.drain(members[1]);
    assert!(h.session.feed.kept_bytes() > 0);
    h.leave(members[2]);
    h.drain(members[0]);
    h.drain(members[1]);
    h.session.forget_fed();
    assert_eq!(h.session.feed.kept_bytes(), 0);
}

/// In memory nothing keeps the records: none is made, and a comment moves
/// into the state instead of being copied; the state is the same.
#[test]
fn without_a_log_no_record_is_made_and_the_state_is_the_same() {
    let mut kept = Harness::new(limits());
    let mut not_kept = Harness::new(limits());
    not_kept.session.set_keeps_records(false);
    for h in [&mut kept, &mut not_kept] {
        let ann = h.join("ann");
        let bob = h.join("bob");
        let fx = h.send(ann, 1, comment_on("", 0, ""));
        assert_eq!(fx.records.is_empty(), !h.session.keeps_records);
        h.send(bob, 1, comment_on("", 0, "mine"));
        h.send(ann, 2, comment_on("", 0, "mine"));
        let to_bob = h.drain(bob);
        assert!(matches!(&to_bob[0].payload, Some(Payload::Comment(c)) if c.comment_id == "c3"));
        let to_ann = h.drain(ann);
        assert!(matches!(
            &to_ann.last().unwrap().payload,
            Some(Payload::Error(_))
        ));
    }
    assert_eq!(kept.session.to_snapshot(0), not_kept.session.to_snapshot(0));
    assert!(kept.log.len() > 1);
    // Only the creation's record, made before the flag was set.
    assert_eq!(not_kept.log.len(), 1);
}
