//! The gRPC interop cases against our server, driven by tonic (an independent
//! implementation), plus our own client against a tonic server.

use std::time::Duration;

use codereview::grpc::server::ServerConfig;
use codereview::pb::testing::{
    EchoStatus, Empty, Payload, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingInputCallRequest, StreamingInputCallResponse, StreamingOutputCallRequest,
    StreamingOutputCallResponse,
};
use kit::server::TestServer;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_prost::ProstCodec;

use crate::server_config;

async fn client(url: &str) -> tonic::client::Grpc<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn path(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_static(method)
}

fn payload(size: usize) -> Option<Payload> {
    Some(Payload {
        r#type: 0,
        body: vec![0u8; size].into(),
    })
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

async fn unary(
    grpc: &mut tonic::client::Grpc<Channel>,
    request: Request<SimpleRequest>,
) -> Result<tonic::Response<SimpleResponse>, tonic::Status> {
    grpc.ready().await.unwrap();
    grpc.unary(
        request,
        path("/grpc.testing.TestService/UnaryCall"),
        ProstCodec::default(),
    )
    .await
}

#[tokio::test]
async fn empty_unary() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    grpc.ready().await.unwrap();
    let response: tonic::Response<Empty> = grpc
        .unary(
            Request::new(Empty {}),
            path("/grpc.testing.TestService/EmptyCall"),
            ProstCodec::default(),
        )
        .await
        .unwrap();
    assert_eq!(response.into_inner(), Empty {});
}

#[tokio::test]
async fn large_unary() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    let request = SimpleRequest {
        response_size: 314_159,
        payload: payload(271_828),
        ..Default::default()
    };
    let response = unary(&mut grpc, Request::new(request))
        .await
        .unwrap()
        .into_inner();
    let body = response.payload.unwrap().body;
    assert_eq!(body.len(), 314_159);
    assert!(body.iter().all(|&b| b == 0));
}

#[tokio::test]
async fn client_streaming() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    let requests: Vec<_> = [27_182, 8, 1828, 45_904]
        .into_iter()
        .map(|n| StreamingInputCallRequest {
            payload: payload(n),
            expect_compressed: None,
        })
        .collect();
    grpc.ready().await.unwrap();
    let response: tonic::Response<StreamingInputCallResponse> = grpc
        .client_streaming(
            Request::new(tokio_stream::iter(requests)),
            path("/grpc.testing.TestService/StreamingInputCall"),
            ProstCodec::default(),
        )
        .await
        .unwrap();
    assert_eq!(response.into_inner().aggregated_payload_size, 74_922);
}

#[tokio::test]
async fn server_streaming() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    let sizes = [31_415, 9, 2653, 58_979];
    let request = StreamingOutputCallRequest {
        response_parameters: params(&sizes),
        ..Default::default()
    };
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming::<_, StreamingOutputCallResponse, _>(
            Request::new(request),
            path("/grpc.testing.TestService/StreamingOutputCall"),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        got.push(message.payload.unwrap().body.len() as i32);
    }
    assert_eq!(got, sizes);
}

#[tokio::test]
async fn ping_pong() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    grpc.ready().await.unwrap();
    let call = grpc.streaming::<_, _, StreamingOutputCallResponse, _>(
        Request::new(ReceiverStream::new(rx)),
        path("/grpc.testing.TestService/FullDuplexCall"),
        ProstCodec::default(),
    );
    let request_sizes = [27_182, 8, 1828, 45_904];
    let response_sizes = [31_415, 9, 2653, 58_979];
    tx.send(StreamingOutputCallRequest {
        response_parameters: params(&response_sizes[..1]),
        payload: payload(request_sizes[0]),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = call.await.unwrap().into_inner();
    for i in 0..4 {
        if i > 0 {
            tx.send(StreamingOutputCallRequest {
                response_parameters: params(&response_sizes[i..=i]),
                payload: payload(request_sizes[i]),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let message = stream.message().await.unwrap().unwrap();
        assert_eq!(
            message.payload.unwrap().body.len() as i32,
            response_sizes[i]
        );
    }
    drop(tx);
    assert!(stream.message().await.unwrap().is_none());
}

#[tokio::test]
async fn empty_stream() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .streaming::<_, _, StreamingOutputCallResponse, _>(
            Request::new(tokio_stream::iter(Vec::<StreamingOutputCallRequest>::new())),
            path("/grpc.testing.TestService/FullDuplexCall"),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_none());
}

#[tokio::test]
async fn status_code_and_message() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    let echo = EchoStatus {
        code: 2,
        message: "test status message".into(),
    };
    let request = SimpleRequest {
        response_status: Some(echo.clone()),
        ..Default::default()
    };
    let status = unary(&mut grpc, Request::new(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(status.message(), "test status message");

    grpc.ready().await.unwrap();
    let request = StreamingOutputCallRequest {
        response_status: Some(echo),
        ..Default::default()
    };
    let result = grpc
        .streaming::<_, _, StreamingOutputCallResponse, _>(
            Request::new(tokio_stream::iter(vec![request])),
            path("/grpc.testing.TestService/FullDuplexCall"),
            ProstCodec::default(),
        )
        .await;
    // A trailers-only answer fails the call at its start; otherwise at the
    // first read.
    let status = match result {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(status.message(), "test status message");
}

#[tokio::test]
async fn special_status_message() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    let text = "\t\ntest with whitespace\r\nand Unicode BMP \u{263A} and non-BMP \u{1F608}\t\n";
    let request = SimpleRequest {
        response_status: Some(EchoStatus {
            code: 2,
            message: text.into(),
        }),
        ..Default::default()
    };
    let status = unary(&mut grpc, Request::new(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(status.message(), text);
}

#[tokio::test]
async fn custom_metadata() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    let trailing = [0xab_u8, 0xab, 0xab];
    fn with_metadata<T>(request: T, trailing: &[u8]) -> Request<T> {
        let mut request = Request::new(request);
        request.metadata_mut().insert(
            "x-grpc-test-echo-initial",
            MetadataValue::from_static("test_initial_metadata_value"),
        );
        request.metadata_mut().insert_bin(
            "x-grpc-test-echo-trailing-bin",
            BinaryMetadataValue::from_bytes(trailing),
        );
        request
    }
    let request = SimpleRequest {
        response_size: 314_159,
        payload: payload(271_828),
        ..Default::default()
    };
    let response = unary(&mut grpc, with_metadata(request, &trailing))
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get("x-grpc-test-echo-initial").unwrap(),
        "test_initial_metadata_value"
    );
    assert_eq!(
        response
            .metadata()
            .get_bin("x-grpc-test-echo-trailing-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        trailing
    );

    grpc.ready().await.unwrap();
    let request = StreamingOutputCallRequest {
        response_parameters: params(&[314_159]),
        payload: payload(271_828),
        ..Default::default()
    };
    let response = grpc
        .streaming::<_, _, StreamingOutputCallResponse, _>(
            with_metadata(tokio_stream::iter(vec![request]), &trailing),
            path("/grpc.testing.TestService/FullDuplexCall"),
            ProstCodec::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get("x-grpc-test-echo-initial").unwrap(),
        "test_initial_metadata_value"
    );
    let mut stream = response.into_inner();
    assert_eq!(
        stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .payload
            .unwrap()
            .body
            .len(),
        314_159
    );
    assert!(stream.message().await.unwrap().is_none());
    let trailers = stream.trailers().await.unwrap().unwrap();
    assert_eq!(
        trailers
            .get_bin("x-grpc-test-echo-trailing-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        trailing
    );
}

#[tokio::test]
async fn unimplemented_method_and_service() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    for method in [
        "/grpc.testing.TestService/UnimplementedCall",
        "/grpc.testing.UnimplementedService/UnimplementedCall",
        "/grpc.testing.TestService/NoSuchMethod",
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<_, Empty, _>(Request::new(Empty {}), path(method), ProstCodec::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{method}: {status:?}");
    }
}

#[tokio::test]
async fn timeout_on_sleeping_server() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(StreamingOutputCallRequest {
        payload: payload(27_182),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut request = Request::new(ReceiverStream::new(rx));
    request.set_timeout(Duration::from_millis(1));
    let result = grpc
        .streaming::<_, _, StreamingOutputCallResponse, _>(
            request,
            path("/grpc.testing.TestService/FullDuplexCall"),
            ProstCodec::default(),
        )
        .await;
    let status = match result {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    // tonic reports its own client-side timer as CANCELLED "Timeout expired"
    // (a tonic quirk); grpcio's run of this case checks DEADLINE_EXCEEDED.
    let tonic_timeout = status.code() == Code::Cancelled && status.message().contains("Timeout");
    assert!(
        status.code() == Code::DeadlineExceeded || tonic_timeout,
        "{status:?}"
    );
    drop(tx);
}

#[tokio::test]
async fn deadline_enforced_by_server_on_every_kind() {
    // A client that sends grpc-timeout but does not enforce it itself: our
    // own channel with the deadline in the header only, checking the server
    // answers DEADLINE_EXCEEDED for each RPC kind that would otherwise hang.
    use codereview::grpc::client::{CallOptions, Channel as OurChannel, ChannelConfig, Endpoint};
    use codereview::grpc::metadata::Metadata;
    let server = crate::interop_server(server_config()).await;
    let channel = OurChannel::connect(
        &Endpoint::parse(&server.url()).unwrap(),
        &ChannelConfig::default(),
    )
    .await
    .unwrap();
    // Server streaming with a long interval: the server must cut it off.
    let mut metadata = Metadata::new();
    metadata.append("x-test", "1").unwrap();
    for method in [
        "/grpc.testing.TestService/StreamingOutputCall",
        "/grpc.testing.TestService/FullDuplexCall",
    ] {
        let mut call = channel
            .start(
                method,
                CallOptions {
                    metadata: metadata.clone(),
                    timeout: Some(Duration::from_millis(200)),
                },
            )
            .await
            .unwrap();
        let request = StreamingOutputCallRequest {
            response_parameters: vec![ResponseParameters {
                size: 1,
                interval_us: 5_000_000,
                compressed: None,
            }],
            ..Default::default()
        };
        call.send(&request).await.unwrap();
        if method.ends_with("StreamingOutputCall") {
            call.close_send();
        }
        let status = call
            .message::<StreamingOutputCallResponse>()
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            codereview::grpc::Code::DeadlineExceeded,
            "{method}"
        );
    }
    // Client streaming that never half-closes.
    let mut call = channel
        .start(
            "/grpc.testing.TestService/StreamingInputCall",
            CallOptions::timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    call.send(&StreamingInputCallRequest {
        payload: payload(10),
        expect_compressed: None,
    })
    .await
    .unwrap();
    let status = call
        .message::<StreamingInputCallResponse>()
        .await
        .unwrap_err();
    assert_eq!(status.code(), codereview::grpc::Code::DeadlineExceeded);
}

#[tokio::test]
async fn cancel_after_begin() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamingInputCallRequest>(1);
    let call = tokio::spawn(async move {
        grpc.client_streaming::<_, _, StreamingInputCallResponse, _>(
            Request::new(ReceiverStream::new(rx)),
            path("/grpc.testing.TestService/StreamingInputCall"),
            ProstCodec::default(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    drop(tx);
    // The server is still serving.
    let mut grpc = client(&server.url()).await;
    grpc.ready().await.unwrap();
    grpc.unary::<_, Empty, _>(
        Request::new(Empty {}),
        path("/grpc.testing.TestService/EmptyCall"),
        ProstCodec::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn cancel_after_first_response() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(StreamingOutputCallRequest {
        response_parameters: params(&[31_415]),
        payload: payload(27_182),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = grpc
        .streaming::<_, _, StreamingOutputCallResponse, _>(
            Request::new(ReceiverStream::new(rx)),
            path("/grpc.testing.TestService/FullDuplexCall"),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .payload
            .unwrap()
            .body
            .len(),
        31_415
    );
    drop(stream); // cancels the call
    drop(tx);
}

#[tokio::test]
async fn oversize_message_is_resource_exhausted_and_server_keeps_serving() {
    let mut config = crate::interop_config(ServerConfig {
        max_recv_message_bytes: 64 * 1024,
        ..server_config()
    });
    // Every session must still fit in one snapshot message.
    config.limits.max_document_bytes = 16 * 1024;
    let server = TestServer::start(config).await;
    let mut grpc = client(&server.url()).await;
    let request = SimpleRequest {
        response_size: 1,
        payload: payload(100_000),
        ..Default::default()
    };
    let status = unary(&mut grpc, Request::new(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Same connection, next call works.
    let request = SimpleRequest {
        response_size: 10,
        payload: payload(1000),
        ..Default::default()
    };
    let response = unary(&mut grpc, Request::new(request)).await.unwrap();
    assert_eq!(response.into_inner().payload.unwrap().body.len(), 10);
}

#[tokio::test]
async fn hundred_concurrent_streams_on_one_connection() {
    const N: i32 = 100;
    let server = crate::interop_server(server_config()).await;
    let grpc = client(&server.url()).await;
    let mut tasks = Vec::new();
    for i in 0..N {
        let mut grpc = grpc.clone();
        tasks.push(tokio::spawn(async move {
            grpc.ready().await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut stream = grpc
                .streaming::<_, _, StreamingOutputCallResponse, _>(
                    Request::new(ReceiverStream::new(rx)),
                    path("/grpc.testing.TestService/FullDuplexCall"),
                    ProstCodec::default(),
                )
                .await
                .unwrap()
                .into_inner();
            for round in 0..5 {
                let size = 100 + i * 10 + round;
                tx.send(StreamingOutputCallRequest {
                    response_parameters: params(&[size]),
                    ..Default::default()
                })
                .await
                .unwrap();
                let message = stream.message().await.unwrap().unwrap();
                assert_eq!(message.payload.unwrap().body.len() as i32, size);
            }
            drop(tx);
            assert!(stream.message().await.unwrap().is_none());
        }));
    }
    // All 100 are open at once: none can finish before its 5 rounds, and the
    // server's stream limit is 100.
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn half_duplex_call_buffers_then_answers() {
    let server = crate::interop_server(server_config()).await;
    let mut grpc = client(&server.url()).await;
    grpc.ready().await.unwrap();
    let requests: Vec<_> = [5, 6, 7]
        .into_iter()
        .map(|size| StreamingOutputCallRequest {
            response_parameters: params(&[size]),
            ..Default::default()
        })
        .collect();
    let stream = grpc
        .streaming::<_, _, StreamingOutputCallResponse, _>(
            Request::new(tokio_stream::iter(requests)),
            path("/grpc.testing.TestService/HalfDuplexCall"),
            ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let sizes: Vec<usize> = stream
        .map(|m| m.unwrap().payload.unwrap().body.len())
        .collect()
        .await;
    assert_eq!(sizes, vec![5, 6, 7]);
}

/// Our client against an independent server: tonic's health service.
#[tokio::test]
async fn our_client_against_tonic_server() {
    use codereview::grpc::client::{CallOptions, Channel as OurChannel, ChannelConfig, Endpoint};
    use codereview::pb::health::{HealthCheckRequest, HealthCheckResponse};
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("svc", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = OurChannel::connect(
        &Endpoint::parse(&format!("http://{addr}")).unwrap(),
        &ChannelConfig::default(),
    )
    .await
    .unwrap();
    // Unary.
    let response: HealthCheckResponse = channel
        .unary(
            "/grpc.health.v1.Health/Check",
            &HealthCheckRequest {
                service: "svc".into(),
            },
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 1);
    let status = channel
        .unary::<_, HealthCheckResponse>(
            "/grpc.health.v1.Health/Check",
            &HealthCheckRequest {
                service: "nope".into(),
            },
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), codereview::grpc::Code::NotFound);
    // Server streaming: Watch sees the change.
    let mut call = channel
        .start("/grpc.health.v1.Health/Watch", CallOptions::default())
        .await
        .unwrap();
    call.send(&HealthCheckRequest {
        service: "svc".into(),
    })
    .await
    .unwrap();
    call.close_send();
    assert_eq!(
        call.message::<HealthCheckResponse>()
            .await
            .unwrap()
            .unwrap()
            .status,
        1
    );
    reporter
        .set_service_status("svc", tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        call.message::<HealthCheckResponse>()
            .await
            .unwrap()
            .unwrap()
            .status,
        2
    );
    // Unknown method on the tonic server.
    let status = channel
        .unary::<_, HealthCheckResponse>(
            "/grpc.health.v1.Health/Nope",
            &HealthCheckRequest::default(),
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), codereview::grpc::Code::Unimplemented);
}
