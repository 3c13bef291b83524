//! gRPC-Web as browsers speak it, from raw clients: over HTTP/1.1 (the
//! kit's `web` client: status lines, chunks, the trailers frame) and over
//! HTTP/2 (the h2 crate as a client). The page's assets, CORS, the request
//! bounds, and a browser participant (Participate + Send) beside bidi ones.

use std::time::Duration;

use bytes::Bytes;
use codereview::app::AppConfig;
use codereview::grpc::Code;
use codereview::pb::codereview::{
    Join, ParticipateRequest, SendReply, SendRequest, SessionMessage, Snapshot, SnapshotRequest,
    WatchRequest, code_edit::Op, notice::Kind as NoticeKind, presence_update::Status as Presence,
    session_message::Payload,
};
use codereview::pb::paths::{GET_SNAPSHOT, PARTICIPATE, SEND, WATCH_SESSION};
use codereview::review::roles::Role;
use kit::participant::Participant;
use kit::payloads::{self, Order, is_presence, record};
use kit::server::{TestServer, loopback};
use kit::web::{Http1, WebCall, WebFrame, WebFrames, frame, status_of};
use kit::{LONG, STEP, eventually, within};

const SESSION: &str = "web";

async fn server() -> TestServer {
    TestServer::start(AppConfig::loopback()).await
}

fn participate_request(user: &str, join: Join) -> ParticipateRequest {
    ParticipateRequest {
        session_id: SESSION.into(),
        user_id: user.into(),
        join: Some(join),
    }
}

/// A browser participant: its Participate call on one connection, its
/// token, and Send calls on another connection.
struct Browser {
    events: Http1,
    sends: Http1,
    token: String,
    user: String,
    bearer: Option<String>,
}

impl Browser {
    async fn join(server: &TestServer, user: &str, join: Join, bearer: Option<String>) -> Browser {
        let mut events = Http1::connect(server.addr).await;
        let header = bearer.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("authorization", h.as_str()))
            .collect();
        let token = {
            let mut call = events
                .call(PARTICIPATE, &participate_request(user, join), &headers)
                .await;
            let greeting: SessionMessage = call.message().await.expect("the greeting");
            let notice = payloads::as_notice(&greeting, NoticeKind::ParticipantToken)
                .unwrap_or_else(|| panic!("the first message is the token: {greeting:?}"));
            assert!(
                notice.text.len() >= 22,
                "128 bits at least: {:?}",
                notice.text
            );
            notice.text.clone()
        };
        Browser {
            events,
            sends: Http1::connect(server.addr).await,
            token,
            user: user.into(),
            bearer,
        }
    }

    /// The Participate call, continued (its head was read by `join`).
    fn stream(&mut self) -> WebCall<'_> {
        WebCall::continued(&mut self.events)
    }

    async fn next(&mut self) -> SessionMessage {
        self.stream().message().await.expect("an event")
    }

    async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&SessionMessage) -> bool,
    ) -> SessionMessage {
        within(LONG, what, async {
            loop {
                let m = self.next().await;
                if want(&m) {
                    return m;
                }
            }
        })
        .await
    }

    async fn send(
        &mut self,
        messages: Vec<SessionMessage>,
    ) -> Result<SendReply, codereview::grpc::Status> {
        let header = self.bearer.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("authorization", h.as_str()))
            .collect();
        let request = SendRequest {
            participant_token: self.token.clone(),
            messages,
        };
        self.sends
            .call(SEND, &request, &headers)
            .await
            .unary()
            .await
    }

    fn message(&self, payload: Payload, client_sequence: u64) -> SessionMessage {
        SessionMessage {
            session_id: SESSION.into(),
            user_id: self.user.clone(),
            payload: Some(payload),
            client_sequence,
            ..SessionMessage::default()
        }
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_policy() {
    let server = server().await;
    let mut http = Http1::connect(server.addr).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/s/review-42", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let head = http.request("GET", path, &[], b"").await;
        assert_eq!(head.status, 200, "{path}");
        assert!(
            head.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        let csp = head.header("content-security-policy").expect("a CSP");
        assert!(csp.contains("connect-src 'self'") && csp.contains("default-src 'none'"));
        let body = http.body(&head).await;
        assert_eq!(body.len(), codereview::web::asset(path).unwrap().body.len());
    }
    let head = http.request("HEAD", "/", &[], b"").await;
    assert_eq!(head.status, 200);
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );
    let head = http.request("GET", "/nothing-here", &[], b"").await;
    assert_eq!(head.status, 404);
    let _ = http.body(&head).await;
    // Everything above went over one keep-alive connection.
    let head = http
        .request("GET", "/", &[("connection", "close")], b"")
        .await;
    assert_eq!(head.header("connection"), Some("close"));
    let _ = http.body(&head).await;
    assert!(http.closed().await);
}

#[tokio::test]
async fn unary_and_server_streaming_calls_in_binary_and_text_modes() {
    let server = server().await;
    let mut http = Http1::connect(server.addr).await;
    let request = SnapshotRequest {
        session_id: SESSION.into(),
    };
    // A call that fails: the status is the body's only frame.
    let status = http
        .call(GET_SNAPSHOT, &request, &[])
        .await
        .unary::<Snapshot>()
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status}");

    let (mut author, _) =
        kit::participant::Participant::join(&server.channel().await, None, SESSION, "ann").await;
    author.edit(Op::Replace, "main.rs", 0, "fn main() {}").await;
    let snapshot: Snapshot = http
        .call(GET_SNAPSHOT, &request, &[])
        .await
        .unary()
        .await
        .unwrap();
    assert_eq!(snapshot.files[0].lines, ["fn main() {}"]);

    // The text mode: base64 both ways, each response chunk padded alone.
    let body = codereview::grpc::web::framing::encode_text(&frame(&request));
    let head = http
        .request(
            "POST",
            GET_SNAPSHOT,
            &[
                ("content-type", "application/grpc-web-text"),
                ("accept", "application/grpc-web-text"),
            ],
            body.as_bytes(),
        )
        .await;
    assert_eq!(
        head.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    let text = http.body(&head).await;
    let decoded =
        codereview::grpc::web::framing::decode_text(&text).expect("base64 in padded groups");
    let mut frames = WebFrames::default();
    frames.push(&decoded);
    let Some(WebFrame::Message(message)) = frames.next_frame() else {
        panic!("a message first")
    };
    let via_text = <Snapshot as prost::Message>::decode(message).unwrap();
    assert_eq!(via_text, snapshot);
    let Some(WebFrame::Trailers(trailers)) = frames.next_frame() else {
        panic!("then the trailers")
    };
    assert!(status_of(&trailers).is_ok());

    // Server streaming: a snapshot, then live events as they happen.
    let watch = WatchRequest {
        session_id: SESSION.into(),
        want_snapshot: true,
        ..WatchRequest::default()
    };
    let mut watcher = Http1::connect(server.addr).await;
    let mut call = watcher.call(WATCH_SESSION, &watch, &[]).await;
    let first: SessionMessage = call.message().await.unwrap();
    assert!(
        matches!(first.payload, Some(Payload::Joined(_))),
        "{first:?}"
    );
    let second: SessionMessage = call.message().await.unwrap();
    assert!(
        matches!(second.payload, Some(Payload::Snapshot(_))),
        "{second:?}"
    );
    author.edit(Op::Insert, "main.rs", 1, "// watched").await;
    let edit = within(STEP, "the live edit", async {
        loop {
            let m: SessionMessage = call.message().await.unwrap();
            if let Some(edit) = payloads::as_edit(&m) {
                return edit.clone();
            }
        }
    })
    .await;
    assert_eq!(edit.content, "// watched");
}

/// One participant's view of the total order from `from` to `to`: who did
/// what at each number, with the version an edit made. Its own actions come
/// as acks ("own"), which the others see as the action itself: an ack of an
/// edit carries the version the edit made, an ack of anything else carries
/// the document's version, which no one else sees, so only edits' versions
/// are compared.
fn view(order: &Order, from: u64, to: u64) -> Vec<(u64, String, Option<i32>)> {
    order
        .range(from..=to)
        .map(|(seq, (user, what, version))| {
            (*seq, user.clone(), (*what == "edit").then_some(*version))
        })
        .collect()
}

/// Whether two views of one number agree (see [`view`]).
fn agree(mine: &(u64, String, Option<i32>), theirs: &(u64, String, Option<i32>)) -> bool {
    mine.0 == theirs.0
        && mine.1 == theirs.1
        && (mine.2.is_none() || theirs.2.is_none() || mine.2 == theirs.2)
}

#[tokio::test]
async fn a_browser_participant_sees_the_same_events_in_the_same_order_as_a_bidi_one() {
    let server = server().await;
    let channel = server.channel().await;
    let (mut ann, _) = Participant::join(&channel, None, SESSION, "ann").await;
    ann.edit(Op::Replace, "a.rs", 0, "zero").await;
    let mut web = Browser::join(&server, "web", Join::default(), None).await;
    let (mut cid, _) = Participant::join(&channel, None, SESSION, "cid").await;

    // The browser's catch-up: Joined, the history, CAUGHT_UP.
    let joined = web
        .until("Joined", |m| matches!(m.payload, Some(Payload::Joined(_))))
        .await;
    let Some(Payload::Joined(joined)) = joined.payload else {
        unreachable!()
    };
    let mut web_order = Order::new();
    let caught_up = within(LONG, "the browser's catch-up", async {
        let mut seen = Vec::new();
        loop {
            let m = web.next().await;
            record(&mut web_order, "web", &m);
            if payloads::is_caught_up(&m) {
                return seen;
            }
            seen.push(m);
        }
    })
    .await;
    assert!(
        caught_up
            .iter()
            .any(|m| payloads::as_edit(m).is_some_and(|e| e.content == "zero"))
    );
    assert_eq!(joined.role, codereview::pb::codereview::Role::Author as i32);

    // Each sends; the browser's messages go through Send, numbered.
    let mut cs = 1;
    for i in 0..5 {
        ann.edit(Op::Insert, "a.rs", 0, &format!("ann {i}")).await;
        // Based on the version it joined at: the server transforms it.
        let version = joined.version;
        let edit = payloads::edit(Op::Insert, "a.rs", 0, &format!("web {i}"), version);
        let message = web.message(edit, cs);
        let comment = web.message(
            payloads::comment("a.rs", 0, &format!("web says {i}")),
            cs + 1,
        );
        let reply = web.send(vec![message, comment]).await.expect("Send");
        assert_eq!(reply.accepted, 2);
        cs += 2;
        cid.send(payloads::comment("", 0, &format!("cid {i}")))
            .await;
    }
    // A resend of a processed number is acknowledged, never applied twice.
    let again = web.message(
        payloads::edit(Op::Insert, "a.rs", 0, "web 0", joined.version),
        1,
    );
    web.send(vec![again]).await.expect("a resend");

    let last_of = |order: &Order| order.keys().last().copied().unwrap_or(0);
    let mut ann_order = Order::new();
    let mut cid_order = Order::new();
    let target = within(LONG, "cid's last comment to reach ann", async {
        loop {
            let m = ann.recv().await;
            record(&mut ann_order, "ann", &m);
            if m.user_id == "cid"
                && matches!(&m.payload, Some(Payload::Comment(c)) if c.text == "cid 4")
            {
                return m.sequence;
            }
        }
    })
    .await;
    let mut duplicate_acked = false;
    within(LONG, "the browser to see everything", async {
        while last_of(&web_order) < target || !duplicate_acked {
            let m = web.next().await;
            if let Some(ack) = payloads::as_ack(&m) {
                duplicate_acked |= ack.duplicate && ack.client_sequence == 1;
            }
            record(&mut web_order, "web", &m);
        }
    })
    .await;
    within(LONG, "cid to see everything", async {
        while last_of(&cid_order) < target {
            let m = cid.recv().await;
            record(&mut cid_order, "cid", &m);
        }
    })
    .await;
    // One total order: every number each saw after the browser joined, the
    // same events (own ones as acks) at the same numbers.
    let from = *web_order.keys().next().unwrap();
    let (a, w, c) = (
        view(&ann_order, from, target),
        view(&web_order, from, target),
        view(&cid_order, from, target),
    );
    let dense: Vec<u64> = (from..=target).collect();
    assert_eq!(
        w.iter().map(|e| e.0).collect::<Vec<_>>(),
        dense,
        "the browser saw every number"
    );
    // The browser's own edits, as acks, made the versions the others saw.
    let own_edit_versions = |order: &Order| -> Vec<i32> {
        order
            .range(from..=target)
            .filter(|(_, (u, what, _))| u == "web" && *what == "edit")
            .map(|(_, e)| e.2)
            .collect()
    };
    for (label, other) in [("ann", &a), ("cid", &c)] {
        let shared: Vec<_> = w
            .iter()
            .filter_map(|e| other.iter().find(|o| o.0 == e.0).map(|o| (e, o)))
            .collect();
        for (mine, theirs) in &shared {
            assert!(
                agree(mine, theirs),
                "the browser and {label} disagree at {}: {mine:?} / {theirs:?}",
                mine.0
            );
        }
        assert!(shared.len() >= 20, "{label}: {shared:?}");
    }
    let web_edit_numbers: Vec<u64> = a
        .iter()
        .filter(|e| e.1 == "web" && e.2.is_some())
        .map(|e| e.0)
        .collect();
    let acked: Vec<i32> = web_edit_numbers.iter().map(|n| web_order[n].2).collect();
    assert_eq!(
        acked,
        own_edit_versions(&ann_order),
        "the acks name the versions the edits made"
    );
    assert_eq!(acked.len(), 5);
    assert!(
        duplicate_acked,
        "the resend was acknowledged as a duplicate"
    );
    let snapshot = kit::participant::get_snapshot(&channel, None, SESSION)
        .await
        .unwrap();
    let webs = snapshot.files[0]
        .lines
        .iter()
        .filter(|l| l.starts_with("web "))
        .count();
    assert_eq!(
        webs, 5,
        "each of the browser's edits applied once: {:?}",
        snapshot.files[0].lines
    );
}

#[tokio::test]
async fn a_browser_participant_leaves_when_its_call_ends_and_resumes_exactly() {
    let server = server().await;
    let (mut ann, _) = Participant::join(&server.channel().await, None, SESSION, "ann").await;
    let mut web = Browser::join(&server, "web", Join::default(), None).await;
    ann.recv_until(|m| is_presence(m, "web", Presence::Joined))
        .await;
    let joined = web
        .until("Joined", |m| matches!(m.payload, Some(Payload::Joined(_))))
        .await;
    let Some(Payload::Joined(joined)) = joined.payload else {
        unreachable!()
    };
    let mut last = joined.sequence;
    web.until("caught up", payloads::is_caught_up).await;
    let reply = web
        .send(vec![
            web.message(payloads::edit(Op::Replace, "w.rs", 0, "one", 0), 1),
        ])
        .await
        .unwrap();
    assert_eq!(reply.accepted, 1);
    let ack = web
        .until("the ack", |m| payloads::as_ack(m).is_some())
        .await;
    last = last.max(payloads::as_ack(&ack).unwrap().sequence);
    let token = web.token.clone();

    // The connection drops: LEFT for the others, the token is dead.
    drop(web.events);
    ann.recv_until(|m| is_presence(m, "web", Presence::Left))
        .await;
    let mut probe = Http1::connect(server.addr).await;
    let dead = SendRequest {
        participant_token: token,
        messages: vec![],
    };
    let status = probe
        .call(SEND, &dead, &[])
        .await
        .unary::<SendReply>()
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status}");

    // What happened meanwhile comes on resume, exactly.
    ann.edit(Op::Replace, "w.rs", 0, "two").await;
    let resume = Join {
        resume_after_sequence: Some(last),
        session_epoch: joined.session_epoch,
        ..Join::default()
    };
    let mut again = Browser::join(&server, "web", resume, None).await;
    let m = again
        .until("Joined", |m| matches!(m.payload, Some(Payload::Joined(_))))
        .await;
    let Some(Payload::Joined(rejoined)) = m.payload else {
        unreachable!()
    };
    assert_eq!(
        payloads::catchup_of(&rejoined),
        codereview::pb::codereview::joined::Catchup::Resume
    );
    assert_eq!(rejoined.last_client_sequence, 1);
    let mut dense = payloads::Dense::after(last, "the resumed browser");
    within(LONG, "the missed edit", async {
        loop {
            let m = again.next().await;
            dense.observe(&m);
            if payloads::as_edit(&m).is_some_and(|e| e.content == "two") {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn sends_are_tied_to_the_participant_and_its_token() {
    let server = TestServer::launch(loopback(|_| {})).auth().start().await;
    let alice = server.token_for("alice", Role::Author).unwrap();
    let bob = server.token_for("bob", Role::Author).unwrap();
    // Without a token, nothing.
    let mut http = Http1::connect(server.addr).await;
    let status = http
        .call(
            PARTICIPATE,
            &participate_request("alice", Join::default()),
            &[],
        )
        .await
        .message::<SessionMessage>()
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");

    let mut web = Browser::join(&server, "", Join::default(), Some(alice.clone())).await;
    web.until("caught up", payloads::is_caught_up).await;
    let edit = payloads::edit(Op::Replace, "a.rs", 0, "by alice", 0);
    // Another user's bearer token cannot drive alice's participant.
    web.bearer = Some(bob);
    let status = web
        .send(vec![web.message(edit.clone(), 1)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    web.bearer = None;
    let status = web
        .send(vec![web.message(edit.clone(), 1)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
    // A made-up participant token is nobody's.
    web.bearer = Some(alice);
    let real = std::mem::replace(&mut web.token, "AAAAAAAAAAAAAAAAAAAAAA".into());
    let status = web
        .send(vec![web.message(edit.clone(), 1)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status}");
    web.token = real;
    // Alice's own token, empty user_id (the subject's): applied.
    let mut mine = web.message(edit, 1);
    mine.user_id.clear();
    web.send(vec![mine]).await.expect("alice's Send");
    let ack = web
        .until("the ack", |m| payloads::as_ack(m).is_some())
        .await;
    assert_eq!(payloads::as_ack(&ack).unwrap().client_sequence, 1);
}

#[tokio::test]
async fn cors_admits_the_listed_origins_only() {
    let server = TestServer::start(loopback(|c| {
        c.web_origins = vec!["http://review.test:8080".into()]
    }))
    .await;
    let own = format!("http://{}", server.addr);
    let mut http = Http1::connect(server.addr).await;
    let preflight = [
        ("origin", "http://review.test:8080"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type,x-grpc-web"),
    ];
    let head = http.request("OPTIONS", GET_SNAPSHOT, &preflight, b"").await;
    assert_eq!(head.status, 204);
    assert_eq!(
        head.header("access-control-allow-origin"),
        Some("http://review.test:8080")
    );
    assert_eq!(
        head.header("access-control-allow-headers"),
        Some("content-type,x-grpc-web")
    );
    assert!(
        head.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    let head = http
        .request(
            "OPTIONS",
            GET_SNAPSHOT,
            &[("origin", "http://evil.test")],
            b"",
        )
        .await;
    assert_eq!(head.status, 403);
    assert_eq!(head.header("access-control-allow-origin"), None);
    let _ = http.body(&head).await;

    let request = SnapshotRequest {
        session_id: SESSION.into(),
    };
    // Allowed and same-origin pages are answered (here: NOT_FOUND, no session).
    for origin in ["http://review.test:8080", own.as_str()] {
        let mut http = Http1::connect(server.addr).await;
        let call = http
            .call(GET_SNAPSHOT, &request, &[("origin", origin)])
            .await;
        let cors = call
            .head
            .header("access-control-allow-origin")
            .map(str::to_owned);
        assert_eq!(
            call.unary::<Snapshot>().await.unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(cors.as_deref(), (origin != own).then_some(origin));
    }
    let mut http = Http1::connect(server.addr).await;
    let head = http
        .request(
            "POST",
            GET_SNAPSHOT,
            &[
                ("content-type", "application/grpc-web+proto"),
                ("origin", "http://evil.test"),
            ],
            &frame(&request),
        )
        .await;
    assert_eq!(head.status, 403, "another origin's page is refused");
    assert!(http.closed().await);
}

#[tokio::test]
async fn requests_are_bounded() {
    let server = server().await;
    // A body over the message limit (4 MiB) is refused before it is read.
    let mut http = Http1::connect(server.addr).await;
    http.write_raw(
        format!(
            "POST {GET_SNAPSHOT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: {}\r\n\r\n",
            10 << 20
        )
        .as_bytes(),
    )
    .await;
    let head = http.head().await;
    assert_eq!(head.status, 200);
    let body = http.body(&head).await;
    let mut frames = WebFrames::default();
    frames.push(&body);
    let Some(WebFrame::Trailers(trailers)) = frames.next_frame() else {
        panic!("only a status: {body:?}")
    };
    assert_eq!(status_of(&trailers).code(), Code::ResourceExhausted);
    assert!(http.closed().await);

    // A request head over 16 KiB, a malformed one, a chunked body.
    for (request, status) in [
        (
            format!(
                "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(17 << 10)
            ),
            431,
        ),
        (
            "GET / HTTP/1.1\r\nhost: x\r\n folded\r\n\r\n".to_owned(),
            400,
        ),
        (
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n".to_owned(),
            400,
        ),
    ] {
        let mut http = Http1::connect(server.addr).await;
        http.write_raw(request.as_bytes()).await;
        assert_eq!(http.head().await.status, status);
        assert!(http.closed().await);
    }
    let mut http = Http1::connect(server.addr).await;
    http.write_raw(
        format!("POST {GET_SNAPSHOT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web\r\ntransfer-encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let head = http.head().await;
    let body = http.body(&head).await;
    let mut frames = WebFrames::default();
    frames.push(&body);
    let Some(WebFrame::Trailers(trailers)) = frames.next_frame() else {
        panic!("a status")
    };
    assert!(status_of(&trailers).message().contains("Content-Length"));
    assert!(http.closed().await);
    // Native gRPC over HTTP/1.1 is still told to use HTTP/2.
    let mut http = Http1::connect(server.addr).await;
    let head = http
        .request(
            "POST",
            GET_SNAPSHOT,
            &[("content-type", "application/grpc")],
            b"",
        )
        .await;
    assert_eq!(head.status, 505);
}

#[tokio::test]
async fn no_web_serves_neither_the_page_nor_grpc_web() {
    let server = TestServer::start(loopback(|c| c.web = false)).await;
    let mut http = Http1::connect(server.addr).await;
    let head = http.request("GET", "/", &[], b"").await;
    assert_eq!(head.status, 505);
    assert!(http.closed().await);
}

#[tokio::test]
async fn grpc_web_and_the_page_over_http2() {
    let server = server().await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    page_and_a_call_over_http2(tcp, &format!("http://{}", server.addr)).await;
}

/// As browsers reach it: HTTP/2 over TLS (ALPN h2).
#[tokio::test]
async fn grpc_web_and_the_page_over_http2_with_tls() {
    let certs = kit::tls::Certs::generate("web-h2-tls");
    let server = TestServer::launch(AppConfig::loopback())
        .tls(certs.server_files(false), certs.client())
        .start()
        .await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(server.addr.ip().to_string())
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(certs.client());
    let tls = within(STEP, "the TLS handshake", connector.connect(name, tcp))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    page_and_a_call_over_http2(tls, &format!("https://{}", server.addr)).await;
}

/// GET / and a gRPC-Web call (its status in the trailers frame, no HTTP
/// trailers) on one HTTP/2 connection over `io`.
async fn page_and_a_call_over_http2<T>(io: T, base: &str)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(connection);
    let get = http::Request::get(format!("{base}/")).body(()).unwrap();
    let (response, _) = client.send_request(get, true).unwrap();
    let response = within(STEP, "GET / over HTTP/2", response).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("'self'")
    );
    let page = read_all(response.into_body()).await;
    assert_eq!(page.len(), codereview::web::asset("/").unwrap().body.len());

    let request = SnapshotRequest {
        session_id: SESSION.into(),
    };
    let post = http::Request::post(format!("{base}{GET_SNAPSHOT}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(post, false).unwrap();
    body.send_data(Bytes::from(frame(&request)), true).unwrap();
    let response = within(STEP, "a gRPC-Web call over HTTP/2", response)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );
    let mut body = response.into_body();
    let bytes = read_all_from(&mut body).await;
    assert!(
        within(STEP, "no HTTP trailers", body.trailers())
            .await
            .unwrap()
            .is_none()
    );
    let mut frames = WebFrames::default();
    frames.push(&bytes);
    let Some(WebFrame::Trailers(trailers)) = frames.next_frame() else {
        panic!("the trailers frame: {bytes:?}")
    };
    assert_eq!(status_of(&trailers).code(), Code::NotFound);
}

async fn read_all(mut body: h2::RecvStream) -> Vec<u8> {
    read_all_from(&mut body).await
}

async fn read_all_from(body: &mut h2::RecvStream) -> Vec<u8> {
    within(STEP, "a body", async {
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        out
    })
    .await
}

#[tokio::test]
async fn the_participant_count_falls_back_when_browsers_go() {
    let server = server().await;
    let mut web = Browser::join(&server, "web", Join::default(), None).await;
    web.until("caught up", payloads::is_caught_up).await;
    server
        .wait_for_stats("one participant", |s| s.participants == 1)
        .await;
    drop(web);
    eventually(LONG, "no participant", || async {
        let stats = server.stats().await;
        if stats.participants == 0 {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
    let _ = Duration::ZERO;
}
