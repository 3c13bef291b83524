//! Frame-level tests: raw HTTP/2 over TCP against the in-process server,
//! checking wire behaviour no high-level client can observe (which frames,
//! in which order, with which flags and error codes; flow-control windows;
//! PING, GOAWAY and connection closure; what happens before HTTP/2).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codereview::grpc::server::ServerConfig;
use codereview::pb::testing::{
    EchoStatus, Empty, Payload, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingInputCallRequest, StreamingInputCallResponse, StreamingOutputCallRequest,
    StreamingOutputCallResponse,
};
use kit::h2raw::{
    CANCEL, Conn, DATA, END_STREAM, Event, Frame, GOAWAY, HEADERS, NO_ERROR, REFUSED_STREAM,
    RST_STREAM, SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_UPDATE, data_frames, decode_grpc, describe,
    encode_headers, grpc_encode, grpc_frame_flag, grpc_message, grpc_request_headers, grpc_status,
    header, messages, response_headers, single_message, trailers,
};
use kit::server::TestServer;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::{grpc_only_server, interop_server, server_config};

const WAIT: Duration = Duration::from_secs(5);

fn method(name: &str) -> String {
    format!("/grpc.testing.TestService/{name}")
}

fn params(sizes: &[i32]) -> Vec<ResponseParameters> {
    sizes
        .iter()
        .map(|&size| ResponseParameters {
            size,
            interval_us: 0,
            compressed: None,
        })
        .collect()
}

fn payload(size: usize, byte: u8) -> Option<Payload> {
    Some(Payload {
        r#type: 0,
        body: Bytes::from(vec![byte; size]),
    })
}

/// `headers` with `name` set to `value` (replaced, or appended).
fn with(mut headers: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    match headers.iter_mut().find(|(k, _)| k == name) {
        Some(entry) => entry.1 = value.to_owned(),
        None => headers.push((name.to_owned(), value.to_owned())),
    }
    headers
}

fn without(mut headers: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    headers.retain(|(k, _)| k != name);
    headers
}

/// A complete EmptyCall on `conn` succeeds.
async fn assert_empty_call_ok(conn: &mut Conn) {
    let events = conn
        .call(&method("EmptyCall"), &grpc_encode(&Empty {}))
        .await;
    assert_eq!(header(response_headers(&events), ":status"), Some("200"));
    assert_eq!(grpc_status(&events), 0, "EmptyCall failed: {events:?}");
    let reply: Empty = single_message(&events);
    assert_eq!(reply, Empty {});
}

/// Frames of `stream_id` in the connection's log.
fn frames_of(conn: &Conn, stream_id: u32) -> Vec<&Frame> {
    conn.log
        .iter()
        .filter(|f| f.stream_id == stream_id)
        .collect()
}

// ---------------------------------------------------------------------------
// HTTP-level checks.

/// Sends `headers` (with END_STREAM), expects a single HEADERS frame ending
/// the stream with `status`, then a good call on the same connection.
async fn http_refusal(headers: Vec<(String, String)>, status: &str) -> Vec<(String, String)> {
    let server = grpc_only_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let id = conn.open(&headers, true).await;
    let events = conn.collect_stream(id).await;
    assert_eq!(
        events.len(),
        1,
        "expected one HEADERS frame with END_STREAM: {events:?}"
    );
    let response = trailers(&events).to_vec();
    assert_eq!(header(&response, ":status"), Some(status), "{response:?}");
    assert_empty_call_ok(&mut conn).await;
    assert!(
        conn.goaway.is_none(),
        "unexpected GOAWAY: {}",
        conn.describe_log()
    );
    response
}

#[tokio::test]
async fn get_is_405_with_allow_post() {
    let headers = with(grpc_request_headers(&method("EmptyCall")), ":method", "GET");
    let response = http_refusal(headers, "405").await;
    assert_eq!(header(&response, "allow"), Some("POST"), "{response:?}");
}

#[tokio::test]
async fn text_plain_is_415() {
    let headers = with(
        grpc_request_headers(&method("EmptyCall")),
        "content-type",
        "text/plain",
    );
    http_refusal(headers, "415").await;
}

#[tokio::test]
async fn missing_te_trailers_is_400() {
    let headers = without(grpc_request_headers(&method("EmptyCall")), "te");
    http_refusal(headers, "400").await;
}

// ---------------------------------------------------------------------------
// gRPC-level refusals.

#[tokio::test]
async fn an_unknown_grpc_encoding_is_trailers_only_unimplemented() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let headers = with(
        grpc_request_headers(&method("UnaryCall")),
        "grpc-encoding",
        "snappy",
    );
    let id = conn.open(&headers, false).await;
    // The server may answer (and reset) before this arrives; either is fine.
    conn.send_data(id, &grpc_encode(&SimpleRequest::default()), true)
        .await;
    let events = conn.collect_stream(id).await;
    assert_eq!(
        events.len(),
        1,
        "expected a trailers-only response (one HEADERS with END_STREAM): {events:?}"
    );
    let response = trailers(&events);
    assert_eq!(header(response, ":status"), Some("200"), "{response:?}");
    assert_eq!(header(response, "grpc-status"), Some("12"), "{response:?}");
    let accept = header(response, "grpc-accept-encoding")
        .unwrap_or_else(|| panic!("no grpc-accept-encoding in {response:?}"));
    for encoding in ["gzip", "identity"] {
        assert!(
            accept.split(',').any(|e| e.trim() == encoding),
            "grpc-accept-encoding {accept:?} does not list {encoding}"
        );
    }
    assert_empty_call_ok(&mut conn).await;
}

#[tokio::test]
async fn compressed_flag_without_grpc_encoding_is_internal() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let request = SimpleRequest {
        response_size: 4,
        ..SimpleRequest::default()
    };
    let body = grpc_frame_flag(1, &request.encode_to_vec());
    let events = conn.call(&method("UnaryCall"), &body).await;
    assert_eq!(grpc_status(&events), 13, "{events:?}");
    assert!(messages(&events).is_empty(), "{events:?}");
    assert_empty_call_ok(&mut conn).await;
}

#[tokio::test]
async fn malformed_grpc_timeout_is_internal() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let headers = with(
        grpc_request_headers(&method("EmptyCall")),
        "grpc-timeout",
        "abc",
    );
    let id = conn.open(&headers, false).await;
    conn.send_data(id, &grpc_encode(&Empty {}), true).await;
    let events = conn.collect_stream(id).await;
    assert_eq!(events.len(), 1, "expected trailers-only: {events:?}");
    assert_eq!(grpc_status(&events), 13, "{events:?}");
    assert!(
        grpc_message(&events).contains("grpc-timeout"),
        "{:?}",
        grpc_message(&events)
    );
    assert_empty_call_ok(&mut conn).await;
}

/// `grpc-timeout: 0n` is a deadline that has passed: DEADLINE_EXCEEDED,
/// and the method does not run.
#[tokio::test]
async fn a_zero_grpc_timeout_is_deadline_exceeded() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    for zero in ["0n", "0S", "00000000H"] {
        let headers = with(
            grpc_request_headers(&method("EmptyCall")),
            "grpc-timeout",
            zero,
        );
        let id = conn.open(&headers, false).await;
        conn.send_data(id, &grpc_encode(&Empty {}), true).await;
        let events = conn.collect_stream(id).await;
        assert_eq!(grpc_status(&events), 4, "{zero}: {events:?}");
        assert!(messages(&events).is_empty(), "{zero}: {events:?}");
    }
    assert_empty_call_ok(&mut conn).await;
}

#[tokio::test]
async fn unknown_service_and_method_are_unimplemented() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;

    let events = conn
        .call(
            "/grpc.testing.NoSuchService/EmptyCall",
            &grpc_encode(&Empty {}),
        )
        .await;
    assert_eq!(events.len(), 1, "expected trailers-only: {events:?}");
    assert_eq!(header(trailers(&events), ":status"), Some("200"));
    assert_eq!(grpc_status(&events), 12, "{events:?}");
    let message = grpc_message(&events);
    assert!(
        message.contains("unknown service") && message.contains("grpc.testing.NoSuchService"),
        "{message:?}"
    );

    let events = conn
        .call(&method("NoSuchMethod"), &grpc_encode(&Empty {}))
        .await;
    assert_eq!(events.len(), 1, "expected trailers-only: {events:?}");
    assert_eq!(grpc_status(&events), 12, "{events:?}");
    let message = grpc_message(&events);
    assert!(
        message.contains("unknown method")
            && message.contains("NoSuchMethod")
            && message.contains("grpc.testing.TestService"),
        "{message:?}"
    );

    assert_empty_call_ok(&mut conn).await;
}

// ---------------------------------------------------------------------------
// Early closure (RFC 9113 §8.1: a server that responds before the request is
// complete sends RST_STREAM(NO_ERROR) after its END_STREAM).

fn failing_request() -> StreamingOutputCallRequest {
    StreamingOutputCallRequest {
        response_status: Some(EchoStatus {
            code: 2,
            message: "boom".into(),
        }),
        ..StreamingOutputCallRequest::default()
    }
}

#[tokio::test]
async fn early_closure_sends_trailers_then_rst_stream_no_error() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let id = conn.open_grpc(&method("FullDuplexCall")).await;
    conn.send_data(id, &grpc_encode(&failing_request()), false)
        .await;
    let events = conn.collect_stream(id).await;
    assert!(
        matches!(events.first(), Some(Event::Headers(_, false))),
        "{events:?}"
    );
    assert_eq!(grpc_status(&events), 2, "{events:?}");
    assert_eq!(grpc_message(&events), "boom");
    let next = conn.read_until(WAIT, |f| f.stream_id == id).await;
    assert_eq!(
        next.kind,
        RST_STREAM,
        "expected RST_STREAM after the trailers: {}",
        conn.describe_log()
    );
    assert_eq!(next.rst_code(), NO_ERROR, "{}", conn.describe_log());
    assert_empty_call_ok(&mut conn).await;
}

#[tokio::test]
async fn no_rst_stream_after_trailers_when_client_half_closed() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let id = conn.open_grpc(&method("FullDuplexCall")).await;
    conn.send_data(id, &grpc_encode(&failing_request()), true)
        .await;
    let events = conn.collect_stream(id).await;
    assert_eq!(grpc_status(&events), 2, "{events:?}");
    // Everything the server queued for the stream precedes these.
    conn.ping_roundtrip().await;
    assert_empty_call_ok(&mut conn).await;
    let resets: Vec<_> = frames_of(&conn, id)
        .into_iter()
        .filter(|f| f.kind == RST_STREAM)
        .collect();
    assert!(
        resets.is_empty(),
        "unexpected RST_STREAM: {}",
        conn.describe_log()
    );
}

#[tokio::test]
async fn early_closure_applies_to_trailers_only_responses() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;

    // Refused at routing, before any request DATA.
    let id = conn.open_grpc(&method("NoSuchMethod")).await;
    let events = conn.collect_stream(id).await;
    assert_eq!(events.len(), 1, "expected trailers-only: {events:?}");
    assert_eq!(grpc_status(&events), 12, "{events:?}");
    let next = conn.read_until(WAIT, |f| f.stream_id == id).await;
    assert!(
        next.kind == RST_STREAM && next.rst_code() == NO_ERROR,
        "expected RST_STREAM(NO_ERROR) after the response: {}",
        conn.describe_log()
    );

    // Refused on a message header announcing more than the limit: the body
    // is never waited for.
    let id = conn.open_grpc(&method("UnaryCall")).await;
    let mut envelope = vec![0u8];
    envelope.extend_from_slice(&(5u32 * 1024 * 1024).to_be_bytes());
    envelope.extend_from_slice(&[0u8; 1000]);
    conn.send_data(id, &envelope, false).await;
    let events = conn.collect_stream(id).await;
    assert_eq!(events.len(), 1, "expected trailers-only: {events:?}");
    assert_eq!(grpc_status(&events), 8, "{events:?}");
    let next = conn.read_until(WAIT, |f| f.stream_id == id).await;
    assert!(
        next.kind == RST_STREAM && next.rst_code() == NO_ERROR,
        "expected RST_STREAM(NO_ERROR) after the response: {}",
        conn.describe_log()
    );

    assert_empty_call_ok(&mut conn).await;
}

#[tokio::test]
async fn client_cancel_ends_the_call_silently() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let id = conn.open_grpc(&method("FullDuplexCall")).await;
    conn.read_until(WAIT, |f| f.stream_id == id && f.kind == HEADERS)
        .await;
    conn.send_rst_stream(id, CANCEL).await;
    conn.ping_roundtrip().await;
    assert_empty_call_ok(&mut conn).await;
    let after_headers: Vec<String> = frames_of(&conn, id)
        .into_iter()
        .skip(1)
        .map(describe)
        .collect();
    assert!(
        after_headers.is_empty(),
        "server sent frames on a stream the client reset: {after_headers:?}"
    );
}

// ---------------------------------------------------------------------------
// Message framing across DATA frame boundaries.

#[tokio::test]
async fn message_split_across_one_byte_data_frames() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let request = SimpleRequest {
        response_size: 7,
        payload: payload(100, 0xab),
        ..SimpleRequest::default()
    };
    let body = grpc_encode(&request);
    // The header block in pieces too: HEADERS + CONTINUATIONs (h2 allows at
    // most 5 CONTINUATIONs with our header-list and frame size limits).
    let headers = grpc_request_headers(&method("UnaryCall"));
    let fragment = encode_headers(&headers).len().div_ceil(4);
    let id = conn.next_stream_id();
    conn.send_headers_split(id, &headers, false, fragment).await;
    assert!(conn.send_data_chunked(id, &body, 1, true).await);
    let events = conn.collect_stream(id).await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");
    let response: SimpleResponse = single_message(&events);
    assert_eq!(response.payload.map(|p| p.body.len()), Some(7));
}

#[tokio::test]
async fn several_messages_in_one_data_frame() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let mut body = BytesMut::new();
    for size in [1, 2, 3] {
        body.extend_from_slice(&grpc_encode(&StreamingOutputCallRequest {
            response_parameters: params(&[size]),
            ..StreamingOutputCallRequest::default()
        }));
    }
    let id = conn.open_grpc(&method("FullDuplexCall")).await;
    conn.write_frame(DATA, END_STREAM, id, &body).await;
    let events = conn.collect_stream(id).await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");
    let sizes: Vec<usize> = messages(&events)
        .into_iter()
        .map(|m| {
            StreamingOutputCallResponse::decode(m)
                .unwrap()
                .payload
                .map_or(0, |p| p.body.len())
        })
        .collect();
    assert_eq!(sizes, [1, 2, 3]);
}

#[tokio::test]
async fn responses_due_together_are_coalesced() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let request = StreamingOutputCallRequest {
        response_parameters: params(&[10; 50]),
        ..StreamingOutputCallRequest::default()
    };
    let events = conn
        .call(&method("StreamingOutputCall"), &grpc_encode(&request))
        .await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");
    let frames = data_frames(&events);
    assert!(frames < 10, "50 small responses took {frames} DATA frames");
    let messages = messages(&events);
    assert_eq!(messages.len(), 50);
    for m in messages {
        let response = StreamingOutputCallResponse::decode(m).unwrap();
        assert_eq!(response.payload.map(|p| p.body.len()), Some(10));
    }
}

// ---------------------------------------------------------------------------
// Flow control.

#[tokio::test]
async fn outbound_respects_the_client_stream_window() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect_with(server.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 100)]).await;
    conn.auto_window_update = false;
    let request = StreamingOutputCallRequest {
        response_parameters: params(&[1000; 5]),
        ..StreamingOutputCallRequest::default()
    };
    let id = conn.open_grpc(&method("StreamingOutputCall")).await;
    assert!(conn.send_data(id, &grpc_encode(&request), true).await);

    let mut window: usize = 100;
    let mut received: usize = 0;
    let mut body = BytesMut::new();
    let mut stalls = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let trailers = loop {
        assert!(
            Instant::now() < deadline,
            "call did not complete; received {received} of window {window}: {}",
            conn.describe_log()
        );
        match conn.read_frame_within(Duration::from_millis(300)).await {
            Ok(Some(frame)) if frame.stream_id == id => match frame.kind {
                DATA => {
                    received += frame.payload.len();
                    body.extend_from_slice(&frame.payload);
                    assert!(
                        received <= window,
                        "server sent {received} DATA bytes with a window of {window}: {}",
                        conn.describe_log()
                    );
                    assert!(
                        !frame.end_stream(),
                        "DATA ended the stream without trailers"
                    );
                }
                HEADERS if frame.end_stream() => break frame.headers.unwrap(),
                HEADERS => {}
                other => panic!("unexpected frame type {other}: {}", conn.describe_log()),
            },
            Ok(Some(_)) => {}
            Ok(None) => panic!("connection closed: {}", conn.describe_log()),
            Err(_) if received == window => {
                // The server is waiting for us: grant some more.
                stalls.push(received);
                conn.send_window_update(id, 1500).await;
                window += 1500;
            }
            Err(_) => {} // quiet but window left: keep waiting
        }
    };
    assert_eq!(header(&trailers, "grpc-status"), Some("0"), "{trailers:?}");
    assert_eq!(
        stalls.first(),
        Some(&100),
        "first stall must be at the initial window"
    );
    assert!(stalls.len() >= 3, "stalls at {stalls:?}");
    let sizes: Vec<usize> = decode_grpc(&body)
        .into_iter()
        .map(|(_, m)| {
            StreamingOutputCallResponse::decode(m)
                .unwrap()
                .payload
                .map_or(0, |p| p.body.len())
        })
        .collect();
    assert_eq!(sizes, [1000; 5]);
}

/// A client-streaming call on a server whose stream and connection windows
/// are HTTP/2's default 65,535 bytes (the server is kept alive with it).
async fn streaming_input_call_with_default_windows() -> (TestServer, Conn, u32) {
    let config = ServerConfig {
        initial_stream_window: 65_535,
        initial_connection_window: 65_535,
        ..server_config()
    };
    let server = interop_server(config).await;
    let mut conn = Conn::connect(server.addr).await;
    let id = conn.open_grpc(&method("StreamingInputCall")).await;
    (server, conn, id)
}

#[tokio::test]
async fn inbound_capacity_is_released_as_messages_are_consumed() {
    let (_server, mut conn, id) = streaming_input_call_with_default_windows().await;
    let sizes = [30_000usize; 8];
    for size in sizes {
        let message = grpc_encode(&StreamingInputCallRequest {
            payload: payload(size, 1),
            expect_compressed: None,
        });
        assert!(
            conn.send_data(id, &message, false).await,
            "{}",
            conn.describe_log()
        );
    }
    assert!(conn.send_data(id, &[], true).await);
    let events = conn.collect_stream(id).await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");
    let response: StreamingInputCallResponse = single_message(&events);
    assert_eq!(
        response.aggregated_payload_size as usize,
        sizes.iter().sum::<usize>()
    );
    let updates = |stream: u32| {
        conn.log
            .iter()
            .filter(|f| f.kind == WINDOW_UPDATE && f.stream_id == stream)
            .count()
    };
    assert!(
        updates(id) > 0,
        "no stream WINDOW_UPDATE: {}",
        conn.describe_log()
    );
    assert!(
        updates(0) > 0,
        "no connection WINDOW_UPDATE: {}",
        conn.describe_log()
    );
}

/// Small messages read from what is buffered give their capacity back in
/// batches: the stream must never stall with every message consumed.
#[tokio::test]
async fn many_small_messages_past_the_window_complete() {
    let (_server, mut conn, id) = streaming_input_call_with_default_windows().await;
    let message = grpc_encode(&StreamingInputCallRequest {
        payload: payload(50, 1),
        expect_compressed: None,
    });
    // About four windows, in one write of many messages.
    let count = 4 * 65_535 / message.len();
    let all = message.repeat(count);
    assert!(
        conn.send_data(id, &all, true).await,
        "{}",
        conn.describe_log()
    );
    let events = conn.collect_stream(id).await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");
    let response: StreamingInputCallResponse = single_message(&events);
    assert_eq!(response.aggregated_payload_size as usize, 50 * count);
}

#[tokio::test]
async fn message_larger_than_the_stream_window_completes() {
    let config = ServerConfig {
        initial_stream_window: 65_535,
        max_recv_message_bytes: 4 * 1024 * 1024,
        ..server_config()
    };
    let server = interop_server(config).await;
    let mut conn = Conn::connect(server.addr).await;
    let request = SimpleRequest {
        response_size: 10,
        payload: payload(1024 * 1024, 7),
        ..SimpleRequest::default()
    };
    let events = conn
        .call(&method("UnaryCall"), &grpc_encode(&request))
        .await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");
    let response: SimpleResponse = single_message(&events);
    assert_eq!(response.payload.map(|p| p.body.len()), Some(10));
}

// ---------------------------------------------------------------------------
// Keepalive, idle timeout, graceful shutdown.

fn keepalive_config() -> ServerConfig {
    ServerConfig {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(200),
        ..server_config()
    }
}

#[tokio::test]
async fn keepalive_answered_stays_connected() {
    let server = interop_server(keepalive_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.read_frame_within(left).await {
            Err(_) => break,
            Ok(None) => panic!("connection closed: {}", conn.describe_log()),
            Ok(Some(frame)) => assert_ne!(frame.kind, GOAWAY, "{}", conn.describe_log()),
        }
    }
    assert!(
        conn.pings_received >= 2,
        "only {} keepalive PINGs in 2 s",
        conn.pings_received
    );
    assert_empty_call_ok(&mut conn).await;
}

#[tokio::test]
async fn keepalive_unanswered_closes_the_connection() {
    let server = interop_server(keepalive_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    conn.auto_ping_ack = false;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(2500);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.read_frame_within(left).await {
            Err(_) => panic!(
                "connection neither closed nor sent GOAWAY within 2.5 s: {}",
                conn.describe_log()
            ),
            Ok(None) => break,
            Ok(Some(frame)) if frame.kind == GOAWAY => break,
            Ok(Some(_)) => {}
        }
    }
    assert!(conn.pings_received >= 1, "{}", conn.describe_log());
    // After a GOAWAY the connection must still close.
    conn.read_until_eof(WAIT).await;
}

/// RFC 9113 §6.8: "Endpoints SHOULD always send a GOAWAY frame before closing
/// a connection" — including when a keepalive PING went unanswered.
#[tokio::test]
async fn keepalive_unanswered_sends_goaway_before_closing() {
    let server = interop_server(keepalive_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    conn.auto_ping_ack = false;
    conn.read_until_eof(WAIT).await;
    assert!(conn.pings_received >= 1, "{}", conn.describe_log());
    assert!(
        conn.goaway.is_some(),
        "connection closed without GOAWAY: {}",
        conn.describe_log()
    );
}

#[tokio::test]
async fn idle_connection_gets_goaway_and_is_closed() {
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..server_config()
    };
    let server = interop_server(config).await;
    let mut conn = Conn::connect(server.addr).await;
    let goaway = conn.read_until(WAIT, |f| f.kind == GOAWAY).await.goaway();
    assert_eq!(goaway.code, NO_ERROR, "{goaway:?}");
    conn.read_until_eof(WAIT).await;
    let last = conn.goaway.clone().unwrap();
    assert_eq!(last.code, NO_ERROR);
    assert_eq!(last.last_stream_id, 0, "{}", conn.describe_log());
}

#[tokio::test]
async fn idle_timeout_spares_a_connection_with_an_open_stream() {
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..server_config()
    };
    let server = interop_server(config).await;
    let mut conn = Conn::connect(server.addr).await;
    let id = conn.open_grpc(&method("FullDuplexCall")).await;
    conn.read_until(WAIT, |f| f.stream_id == id && f.kind == HEADERS)
        .await;
    // Four idle periods with the stream open: no GOAWAY, no closure.
    let until = Instant::now() + Duration::from_millis(1200);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match conn.read_frame_within(left).await {
            Err(_) => break,
            Ok(None) => panic!(
                "connection closed with a stream open: {}",
                conn.describe_log()
            ),
            Ok(Some(frame)) => assert_ne!(
                frame.kind,
                GOAWAY,
                "GOAWAY with a stream open: {}",
                conn.describe_log()
            ),
        }
    }
    let request = StreamingOutputCallRequest {
        response_parameters: params(&[3]),
        ..StreamingOutputCallRequest::default()
    };
    assert!(conn.send_data(id, &grpc_encode(&request), true).await);
    let events = conn.collect_stream(id).await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");
    assert_eq!(messages(&events).len(), 1);
    // Idle again once the stream is over.
    conn.read_until(WAIT, |f| f.kind == GOAWAY).await;
    conn.read_until_eof(WAIT).await;
}

#[tokio::test]
async fn graceful_shutdown_drains_open_streams_and_refuses_new_ones() {
    let server = interop_server(server_config()).await;
    let mut conn = Conn::connect(server.addr).await;
    let id = conn.open_grpc(&method("FullDuplexCall")).await;
    conn.read_until(WAIT, |f| f.stream_id == id && f.kind == HEADERS)
        .await;

    let stopped = tokio::spawn(server.shutdown());
    let first = conn.read_until(WAIT, |f| f.kind == GOAWAY).await.goaway();
    assert_eq!(first.code, NO_ERROR, "{first:?}");
    // The final GOAWAY names the last stream the server will process.
    let last = if first.last_stream_id == 0x7fff_ffff {
        conn.read_until(WAIT, |f| f.kind == GOAWAY).await.goaway()
    } else {
        first
    };
    assert_eq!(last.code, NO_ERROR, "{last:?}");
    assert!(
        last.last_stream_id >= id,
        "GOAWAY does not cover the open stream: {last:?}"
    );

    // A stream opened after GOAWAY: refused or ignored.
    let late = conn.next_stream_id();
    assert!(late > last.last_stream_id);
    conn.send_headers(late, &grpc_request_headers(&method("EmptyCall")), false)
        .await;
    conn.send_data(late, &grpc_encode(&Empty {}), true).await;

    // The open stream still works.
    let request = StreamingOutputCallRequest {
        response_parameters: params(&[4]),
        ..StreamingOutputCallRequest::default()
    };
    assert!(conn.send_data(id, &grpc_encode(&request), false).await);
    conn.read_until(WAIT, |f| f.stream_id == id && f.kind == DATA)
        .await;
    assert!(conn.send_data(id, &[], true).await);
    let events = conn.collect_stream(id).await;
    assert_eq!(grpc_status(&events), 0, "{events:?}");

    conn.read_until_eof(WAIT).await;
    for frame in frames_of(&conn, late) {
        assert!(
            frame.kind == RST_STREAM && frame.rst_code() == REFUSED_STREAM,
            "stream opened after GOAWAY was served: {}",
            conn.describe_log()
        );
    }
    let ended = timeout(WAIT, stopped).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "serve task did not end cleanly: {ended:?}"
    );
}

// ---------------------------------------------------------------------------
// Before HTTP/2.

/// Reads until the server closes (EOF or reset); panics after `wait`.
async fn read_to_close(tcp: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let result = timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "connection still open after {wait:?}; received {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

#[tokio::test]
async fn http1_request_gets_505_and_close() {
    let server = grpc_only_server(server_config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_to_close(&mut tcp, WAIT).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 505 "), "{text:?}");
}

#[tokio::test]
async fn garbage_is_closed_without_a_response() {
    let server = interop_server(server_config()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let garbage = b"\x00\x01garbage-garbage-garbag";
    assert_eq!(garbage.len(), 24);
    tcp.write_all(garbage).await.unwrap();
    let response = read_to_close(&mut tcp, WAIT).await;
    assert!(response.is_empty(), "{response:?}");
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_handshake_timeout() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..server_config()
    };
    let server = interop_server(config).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let response = read_to_close(&mut tcp, Duration::from_secs(2)).await;
    assert!(response.is_empty(), "{response:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the handshake timeout"
    );
}
