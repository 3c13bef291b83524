//! `grpc.testing.TestService`, as the gRPC interop test descriptions define it,
//! registered by `codereview serve --interop` so independent clients can prove
//! the wire layer. It echoes `x-grpc-test-echo-initial` as initial metadata
//! and `x-grpc-test-echo-trailing-bin` as trailing metadata, honours
//! `response_status`, response sizes and `response_parameters` intervals.

use std::time::Duration;

use bytes::Bytes;

use crate::grpc::compression::Encoding;
use crate::grpc::server::{Request, RequestHead, Response, ResponseSink, Router, Streaming};
use crate::grpc::{Code, Metadata, Status};
use crate::pb::testing::{
    EchoStatus, Empty, Payload, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingInputCallRequest, StreamingInputCallResponse, StreamingOutputCallRequest,
    StreamingOutputCallResponse,
};

const SERVICE: &str = "/grpc.testing.TestService/";
const ECHO_INITIAL: &str = "x-grpc-test-echo-initial";
const ECHO_TRAILING: &str = "x-grpc-test-echo-trailing-bin";
/// Bounds what one request can make the server produce.
const MAX_RESPONSE_SIZE: i32 = 4 * 1024 * 1024 - 64;
const MAX_RESPONSES_PER_REQUEST: usize = 1000;

/// Registers the TestService methods.
pub fn register(router: &mut Router) {
    router.unary(method("EmptyCall"), |request: Request<Empty>| async move {
        let mut response = Response::new(Empty {});
        echo(
            request.head(),
            &mut response.metadata,
            &mut response.trailers,
        );
        Ok(response)
    });
    router.unary(method("UnaryCall"), unary_call);
    router.unary(method("CacheableUnaryCall"), unary_call);
    router.unary(
        method("UnimplementedCall"),
        |_: Request<Empty>| async move {
            Err::<Response<Empty>, _>(Status::unimplemented(
                "UnimplementedCall is not implemented",
            ))
        },
    );
    router.server_streaming(
        method("StreamingOutputCall"),
        |request: Request<StreamingOutputCallRequest>,
         mut sink: ResponseSink<StreamingOutputCallResponse>| async move {
            let mut trailers = Metadata::new();
            let (head, message) = request.into_parts();
            echo(&head, sink.initial_metadata_mut(), &mut trailers);
            respond_with_parameters(&message.response_parameters, &mut sink).await?;
            requested_status(message.response_status.as_ref(), &trailers)?;
            Ok(trailers)
        },
    );
    router.client_streaming(
        method("StreamingInputCall"),
        |request: Request<Streaming<StreamingInputCallRequest>>| async move {
            let (head, mut inbound) = request.into_parts();
            let mut total: usize = 0;
            while let Some(message) = inbound.message().await? {
                total += message.payload.map_or(0, |p| p.body.len());
            }
            let mut response = Response::new(StreamingInputCallResponse {
                aggregated_payload_size: i32::try_from(total).unwrap_or(i32::MAX),
            });
            echo(&head, &mut response.metadata, &mut response.trailers);
            Ok(response)
        },
    );
    router.bidi(
        method("FullDuplexCall"),
        |request: Request<Streaming<StreamingOutputCallRequest>>,
         mut sink: ResponseSink<StreamingOutputCallResponse>| async move {
            let (head, mut inbound) = request.into_parts();
            let mut trailers = Metadata::new();
            echo(&head, sink.initial_metadata_mut(), &mut trailers);
            // Clients such as tonic wait for the response headers before
            // they start sending: answer them at once.
            sink.send_headers()?;
            while let Some(message) = inbound.message().await? {
                requested_status(message.response_status.as_ref(), &trailers)?;
                respond_with_parameters(&message.response_parameters, &mut sink).await?;
            }
            Ok(trailers)
        },
    );
    router.bidi(
        method("HalfDuplexCall"),
        |request: Request<Streaming<StreamingOutputCallRequest>>,
         mut sink: ResponseSink<StreamingOutputCallResponse>| async move {
            let (head, mut inbound) = request.into_parts();
            let mut trailers = Metadata::new();
            echo(&head, sink.initial_metadata_mut(), &mut trailers);
            sink.send_headers()?;
            let mut buffered = Vec::new();
            while let Some(message) = inbound.message().await? {
                if buffered.len() >= MAX_RESPONSES_PER_REQUEST {
                    return Err(Status::resource_exhausted("too many buffered requests"));
                }
                buffered.push(message);
            }
            for message in buffered {
                requested_status(message.response_status.as_ref(), &trailers)?;
                respond_with_parameters(&message.response_parameters, &mut sink).await?;
            }
            Ok(trailers)
        },
    );
}

fn method(name: &str) -> &'static str {
    // Registered once at startup; leaking a few short strings is the price of
    // `&'static str` method names everywhere else.
    Box::leak(format!("{SERVICE}{name}").into_boxed_str())
}

async fn unary_call(request: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
    let (head, message) = request.into_parts();
    let mut initial = Metadata::new();
    let mut trailers = Metadata::new();
    echo(&head, &mut initial, &mut trailers);
    if let Some(compressed) = &message.expect_compressed
        && compressed.value
        && head.encoding == Encoding::Identity
    {
        // The interop client_compressed_unary probe: a request sent without
        // an encoding cannot have been compressed.
        return Err(Status::invalid_argument(
            "expected a compressed request, got an uncompressed one",
        ));
    }
    requested_status(message.response_status.as_ref(), &trailers)?;
    let mut response = Response::new(SimpleResponse {
        payload: Some(zeros(message.response_size)?),
        ..SimpleResponse::default()
    });
    response.metadata = initial;
    response.trailers = trailers;
    Ok(response)
}

async fn respond_with_parameters(
    parameters: &[ResponseParameters],
    sink: &mut ResponseSink<StreamingOutputCallResponse>,
) -> Result<(), Status> {
    if parameters.len() > MAX_RESPONSES_PER_REQUEST {
        return Err(Status::resource_exhausted("too many responses requested"));
    }
    for parameter in parameters {
        if parameter.interval_us > 0 {
            let interval = Duration::from_micros(parameter.interval_us as u64);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                status = sink.cancelled() => return Err(status),
            }
        }
        sink.queue(&StreamingOutputCallResponse {
            payload: Some(zeros(parameter.size)?),
        });
        // Responses due together go out together; a pause flushes first.
        if parameter.interval_us > 0 || sink.pending_bytes() > 64 * 1024 {
            sink.flush().await?;
        }
    }
    sink.flush().await
}

fn zeros(size: i32) -> Result<Payload, Status> {
    if !(0..=MAX_RESPONSE_SIZE).contains(&size) {
        return Err(Status::invalid_argument(format!(
            "response size {size} out of range"
        )));
    }
    Ok(Payload {
        r#type: 0,
        body: Bytes::from(vec![0u8; size as usize]),
    })
}

/// The status the client asked for, if any (with the echoed trailers).
fn requested_status(status: Option<&EchoStatus>, trailers: &Metadata) -> Result<(), Status> {
    match status {
        Some(echo) if echo.code != 0 => {
            Err(Status::new(Code::from_i32(echo.code), echo.message.clone())
                .with_metadata(trailers.clone()))
        }
        _ => Ok(()),
    }
}

fn echo(head: &RequestHead, initial: &mut Metadata, trailing: &mut Metadata) {
    initial.copy_from(&head.metadata, ECHO_INITIAL);
    trailing.copy_from(&head.metadata, ECHO_TRAILING);
}
