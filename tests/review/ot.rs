//! Operational transformation over the wire: replicas that edit
//! concurrently converge with the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use codereview::review::ot::LineOp;
use kit::participant::OtClient;
use kit::payloads::chunk;

use crate::{get_snapshot, limits, start, tonic, upload};

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
