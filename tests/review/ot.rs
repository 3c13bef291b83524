//! Operational transformation over the wire: replicas that edit
//! concurrently converge with the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codereview::pb::codereview::joined::Catchup;
use codereview::pb::codereview::session_message::Payload;
use codereview::pb::codereview::{Join, SessionMessage};
use codereview::review::ot::{FileOp, LineOp};
use codereview::review::replica::{self, Replica};
use kit::participant::{Link, Next, Participant};
use kit::payloads::{Dense, catchup_of, chunk, join_message_with};
use kit::{LONG, QUIET};
use tokio::time::Instant;

use crate::{get_snapshot, limits, start, tonic, upload};

/// A participant that keeps a [`Replica`] (as `codereview join` does):
/// local edits apply at once and are sent with the replica's version;
/// remote edits, uploads and acks are applied as they arrive.
pub struct OtClient {
    pub p: Participant,
    pub replica: Replica,
    pub dense: Dense,
    pub noop_acks: usize,
}

impl OtClient {
    /// Joins with a snapshot and starts the replica from it.
    pub async fn join(link: impl Into<Link>, session: &str, user: &str) -> OtClient {
        let join = Join {
            want_snapshot: true,
            ..Join::default()
        };
        let first = join_message_with(session, user, join);
        let (p, catch_up) = Participant::try_join(link, None, first)
            .await
            .expect("joined");
        assert_eq!(catchup_of(&catch_up.joined), Catchup::Snapshot);
        let Some(Payload::Snapshot(snapshot)) = &catch_up.messages[0].payload else {
            panic!("a Snapshot follows Joined(SNAPSHOT): {catch_up:?}");
        };
        let mut replica = Replica::new();
        replica.reset(snapshot);
        OtClient {
            dense: Dense::after(catch_up.joined.sequence, user),
            p,
            replica,
            noop_acks: 0,
        }
    }

    /// Applies `op` to `file` locally and sends it (without waiting for
    /// an answer).
    pub async fn local(&mut self, file: &str, op: LineOp) {
        let client_sequence = self.p.take_client_sequence();
        let op = FileOp {
            path: file.into(),
            op,
        };
        let wire = self
            .replica
            .local_edit(op, client_sequence)
            .unwrap_or_else(|e| panic!("{}: local edit invalid: {e:?}", self.p.user));
        let message = self.p.message(Some(Payload::Edit(wire)), client_sequence);
        self.p.send_raw(message).await.expect("sent");
    }

    /// Applies one message from the server to the replica.
    pub fn process(&mut self, m: &SessionMessage) {
        self.dense.observe(m);
        let user = &self.p.user;
        match &m.payload {
            Some(Payload::Edit(e)) => {
                let op = replica::from_wire(e).expect("a valid edit");
                let applied = self.replica.remote(op, e.version);
                applied.unwrap_or_else(|gap| panic!("{user}: version gap {gap:?}"));
            }
            Some(Payload::File(f)) => {
                let applied = self.replica.remote_file(&f.file_path, &f.lines, f.version);
                applied.unwrap_or_else(|gap| panic!("{user}: version gap {gap:?}"));
            }
            Some(Payload::Ack(a)) => {
                self.noop_acks += a.noop as usize;
                self.replica.ack(a.client_sequence, a.version);
            }
            Some(Payload::Error(e)) => panic!("{user}: unexpected error {e:?}"),
            _ => {}
        }
    }

    /// Processes at most one message arriving within `wait`; whether one did.
    pub async fn pump_one(&mut self, wait: Duration) -> bool {
        match self.p.next_within(wait).await {
            Next::Message(m) => {
                self.process(&m);
                true
            }
            Next::Quiet => false,
            Next::End(end) => panic!("{}: stream ended: {end:?}", self.p.user),
        }
    }

    /// Processes messages until every local edit is acknowledged and nothing
    /// more arrives for [`QUIET`].
    pub async fn settle(&mut self) {
        let deadline = Instant::now() + LONG;
        loop {
            let pending: Vec<_> = self.replica.pending().collect();
            assert!(
                Instant::now() < deadline,
                "{}: did not settle; pending {pending:?}",
                self.p.user
            );
            if !self.pump_one(QUIET).await && self.replica.pending().next().is_none() {
                return;
            }
        }
    }

    pub fn lines(&self, file: &str) -> Vec<String> {
        let lines = self.replica.file(file).unwrap_or_default();
        lines.iter().map(|l| l.to_string()).collect()
    }
}

// ----- 4. OT convergence -----

#[tokio::test]
async fn concurrent_conflicting_edits_converge_over_the_wire() {
    let server = start(limits()).await;
    let addr = server.addr;
    let mut a = OtClient::join(tonic(addr).await, "ot", "alice").await;
    let mut b = OtClient::join(tonic(addr).await, "ot", "bob").await;
    let original: Vec<String> = (0..6).map(|i| format!("line {i}")).collect();
    let summary = upload(
        addr,
        vec![chunk("ot", "f.rs", format!("{}\n", original.join("\n")))],
    )
    .await
    .unwrap();
    assert_eq!(summary.version, 1);
    a.settle().await;
    b.settle().await;
    assert_eq!(a.lines("f.rs"), original);
    assert_eq!(b.lines("f.rs"), original);

    let text = |s: &str| -> Arc<str> { Arc::from(s) };
    // Round 1: both edit the same region at once, neither having seen the
    // other's edits.
    a.local(
        "f.rs",
        LineOp::Replace {
            line: 2,
            text: text("A replaced 2"),
        },
    )
    .await;
    a.local("f.rs", LineOp::Delete { line: 1 }).await;
    a.local(
        "f.rs",
        LineOp::Insert {
            line: 3,
            text: text("A inserted"),
        },
    )
    .await;
    b.local("f.rs", LineOp::Delete { line: 2 }).await;
    b.local(
        "f.rs",
        LineOp::Replace {
            line: 1,
            text: text("B replaced 1"),
        },
    )
    .await;
    b.local(
        "f.rs",
        LineOp::Insert {
            line: 0,
            text: text("B inserted"),
        },
    )
    .await;
    b.local(
        "f.rs",
        LineOp::Replace {
            line: 4,
            text: text("B replaced 4"),
        },
    )
    .await;
    tokio::join!(a.settle(), b.settle());
    check_converged(addr, &a, &b).await;

    // Round 2: interleaved; bob applies part of what arrives before editing.
    a.local(
        "f.rs",
        LineOp::Insert {
            line: 0,
            text: text("A top"),
        },
    )
    .await;
    a.local(
        "f.rs",
        LineOp::Replace {
            line: 4,
            text: text("A four"),
        },
    )
    .await;
    b.pump_one(Duration::from_millis(100)).await;
    b.local("f.rs", LineOp::Delete { line: 0 }).await;
    b.local(
        "f.rs",
        LineOp::Insert {
            line: 2,
            text: text("B two"),
        },
    )
    .await;
    a.pump_one(Duration::from_millis(100)).await;
    a.local("f.rs", LineOp::Delete { line: 3 }).await;
    a.local(
        "f.rs",
        LineOp::Replace {
            line: 0,
            text: text("A zero"),
        },
    )
    .await;
    tokio::join!(a.settle(), b.settle());
    check_converged(addr, &a, &b).await;

    // Round 3: the same operations on the same lines: one delete of line 1
    // becomes a no-op, the server's first replace of line 2 wins, both
    // inserts at 4 survive; alice also extends the file past its end.
    let len = a.lines("f.rs").len() as u32;
    a.noop_acks = 0;
    b.noop_acks = 0;
    a.local("f.rs", LineOp::Delete { line: 1 }).await;
    a.local(
        "f.rs",
        LineOp::Replace {
            line: 2,
            text: text("A again 2"),
        },
    )
    .await;
    a.local(
        "f.rs",
        LineOp::Insert {
            line: 4,
            text: text("A at 4"),
        },
    )
    .await;
    a.local(
        "f.rs",
        LineOp::Replace {
            line: len + 1,
            text: text("A tail"),
        },
    )
    .await;
    b.local("f.rs", LineOp::Delete { line: 1 }).await;
    b.local(
        "f.rs",
        LineOp::Replace {
            line: 2,
            text: text("B again 2"),
        },
    )
    .await;
    b.local(
        "f.rs",
        LineOp::Insert {
            line: 4,
            text: text("B at 4"),
        },
    )
    .await;
    tokio::join!(a.settle(), b.settle());
    check_converged(addr, &a, &b).await;
    assert_eq!(
        a.noop_acks + b.noop_acks,
        2,
        "the later of the two deletes of line 1 and of the two replaces of line 2 are no-ops"
    );
    let lines = a.lines("f.rs");
    let replaced = lines.contains(&"A again 2".to_owned()) as u8
        + lines.contains(&"B again 2".to_owned()) as u8;
    assert_eq!(replaced, 1, "one replace of line 2 wins: {lines:?}");
    let lines = a.lines("f.rs");
    assert!(lines.contains(&"A at 4".to_owned()) && lines.contains(&"B at 4".to_owned()));
    assert_eq!(lines.last().map(String::as_str), Some("A tail"));
}

async fn check_converged(addr: SocketAddr, a: &OtClient, b: &OtClient) {
    let snapshot = get_snapshot(addr, "ot").await.unwrap();
    let server = snapshot
        .files
        .iter()
        .find(|f| f.file_path == "f.rs")
        .map(|f| f.lines.clone())
        .unwrap_or_default();
    assert_eq!(a.lines("f.rs"), b.lines("f.rs"), "the replicas diverged");
    assert_eq!(
        a.lines("f.rs"),
        server,
        "the replicas differ from the server"
    );
    assert_eq!(a.replica.version(), snapshot.version);
    assert_eq!(b.replica.version(), snapshot.version);
}
