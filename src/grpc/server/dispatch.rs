//! One HTTP/2 stream from request headers to final status: the HTTP-level
//! checks the gRPC spec asks for, message encodings (the request's
//! `grpc-encoding`; gzip responses when `grpc-accept-encoding` lists it),
//! `grpc-timeout`, routing, the interceptor, running the handler under its
//! deadline, and the trailers.
//!
//! ```text
//!  headers ─► checks ─┬─ bad method ───────────► 405
//!                     ├─ not application/grpc ─► 415
//!                     ├─ no `te: trailers` ────► 400
//!                     ├─ unknown encoding ─────► trailers-only UNIMPLEMENTED
//!                     ├─ bad grpc-timeout ─────► trailers-only INTERNAL
//!                     ├─ unknown path ─────────► trailers-only UNIMPLEMENTED
//!                     ├─ interceptor refuses ──► trailers-only (its status)
//!                     └─ handler ─┬─ returns ───► trailers (status + metadata)
//!                                 └─ deadline ──► trailers DEADLINE_EXCEEDED
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;

use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Shared;
use super::budget::AccountedChunk;
use super::call::{RequestHead, SinkCore};
use super::connection::ConnectionInfo;
use super::router::{BoxFuture, Call, Route};
use crate::grpc::compression::{ACCEPT_ENCODING, Encoding};
use crate::grpc::metadata::Metadata;
use crate::grpc::status::{Code, Status};
use crate::grpc::timeout;
use crate::log;

/// How long the messages queued before a call's end may take to flush.
const FINAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a request is refused at the HTTP level, before gRPC begins.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HttpRefusal {
    MethodNotAllowed,
    UnsupportedMediaType,
    MissingTeTrailers,
}

/// The spec's HTTP-level checks. Pure, for tests.
pub(crate) fn check_http(method: &Method, headers: &HeaderMap) -> Result<(), HttpRefusal> {
    if method != Method::POST {
        return Err(HttpRefusal::MethodNotAllowed);
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_grpc_content_type(content_type) {
        return Err(HttpRefusal::UnsupportedMediaType);
    }
    let te_ok = headers
        .get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("trailers"));
    if !te_ok {
        return Err(HttpRefusal::MissingTeTrailers);
    }
    Ok(())
}

/// `application/grpc` or `application/grpc+proto`, optionally with parameters.
pub(crate) fn is_grpc_content_type(value: &str) -> bool {
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/grpc")
        || media.eq_ignore_ascii_case("application/grpc+proto")
}

/// A stream as h2 handed it over. Boxed on its way into the stream's task:
/// the task then carries a pointer, not the request's parts, for its whole
/// life (a task is as large as everything it ever holds across an await).
pub(crate) struct NewStream {
    pub request: http::Request<RecvStream>,
    pub respond: SendResponse<AccountedChunk>,
}

/// Serves one stream to completion.
pub(crate) async fn serve_stream(
    stream: Box<NewStream>,
    shared: Arc<Shared>,
    connection: Arc<ConnectionInfo>,
) {
    let started = Instant::now();
    let (running, method_name, stream_id) = match open(*stream, &shared, &connection) {
        Opened::Web(web) => return web.await,
        Opened::Refused => return,
        Opened::Call {
            running,
            method_name,
            stream_id,
        } => (running, method_name, stream_id),
    };
    let status = match running {
        Ok(running) => running.run().await,
        Err(status) => status,
    };
    connection.active_streams.fetch_sub(1, Ordering::Relaxed);
    connection.touch();
    let elapsed = started.elapsed();
    shared
        .telemetry
        .observer
        .call_finished(method_name, status.code(), elapsed);
    shared
        .telemetry
        .stats
        .streams
        .fetch_sub(1, Ordering::Relaxed);
    log!(
        Debug,
        "call finished",
        conn = connection.id,
        stream = stream_id,
        method = method_name,
        status = status.code().name(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
    );
}

/// What a new stream turned out to be.
enum Opened {
    /// A gRPC-Web request (served by the web front end).
    Web(BoxFuture<()>),
    /// Refused at the HTTP level, and answered.
    Refused,
    /// A gRPC call: running, or already answered with a status.
    Call {
        running: Result<Running, Status>,
        method_name: &'static str,
        stream_id: u32,
    },
}

/// Everything a stream needs before its handler runs, done at once (no
/// await): the request's headers are read and dropped here.
fn open(stream: NewStream, shared: &Arc<Shared>, connection: &Arc<ConnectionInfo>) -> Opened {
    let NewStream {
        request,
        mut respond,
    } = stream;
    let stream_id = respond.stream_id().as_u32();
    let (parts, body) = request.into_parts();

    if let Some(web) = &shared.web
        && crate::grpc::web::h2::wants(&parts.method, &parts.headers)
    {
        let (web, tls) = (web.clone(), shared.tls_enabled());
        // Boxed: a gRPC stream's task holds none of the web path's state.
        return Opened::Web(Box::pin(crate::grpc::web::h2::serve(
            parts,
            body,
            respond,
            shared.clone(),
            web,
            connection.clone(),
            tls,
        )));
    }

    if let Err(refusal) = check_http(&parts.method, &parts.headers) {
        log!(
            Debug,
            "http request refused",
            conn = connection.id,
            stream = stream_id,
            why = format!("{refusal:?}").as_str()
        );
        refuse_http(&mut respond, refusal);
        return Opened::Refused;
    }

    let http::request::Parts { uri, headers, .. } = parts;
    let route = shared.router.route(uri.path());
    let method_name = match &route {
        Route::Method(name, _) => *name,
        _ => "unknown",
    };
    shared.telemetry.observer.call_started(method_name);
    shared
        .telemetry
        .stats
        .streams
        .fetch_add(1, Ordering::Relaxed);
    connection.active_streams.fetch_add(1, Ordering::Relaxed);
    let running = start_call(
        &uri,
        headers,
        body,
        respond,
        route,
        method_name,
        shared,
        connection,
        stream_id,
    );
    Opened::Call {
        running,
        method_name,
        stream_id,
    }
}

/// A call's handler, started, and what its end waits for.
struct Running {
    handler: BoxFuture<Result<Metadata, Status>>,
    /// The sink, given back when the handler drops it.
    returned: oneshot::Receiver<SinkCore>,
    deadline: Option<Instant>,
}

/// Checks the call's gRPC headers and starts its handler, or answers with
/// the status that refuses it.
#[allow(clippy::too_many_arguments)]
fn start_call(
    uri: &http::Uri,
    headers: http::HeaderMap,
    body: RecvStream,
    respond: SendResponse<AccountedChunk>,
    route: Route<'_>,
    method_name: &'static str,
    shared: &Arc<Shared>,
    connection: &Arc<ConnectionInfo>,
    stream_id: u32,
) -> Result<Running, Status> {
    let mut sink = SinkCore::new(
        respond,
        shared.telemetry.clone(),
        connection.outbound.clone(),
    );
    sink.set_response_encoding(Encoding::preferred_by(
        headers
            .get_all("grpc-accept-encoding")
            .iter()
            .map(HeaderValue::as_bytes),
    ));
    let refuse = |sink: SinkCore, status: Status| {
        sink.finish(&status);
        Err(status)
    };

    let request_encoding = match headers.get("grpc-encoding") {
        None => Encoding::Identity,
        Some(value) => match Encoding::from_header(value.as_bytes()) {
            Some(encoding) => encoding,
            None => {
                // The response head carries grpc-accept-encoding: the
                // client learns what to use instead.
                let status = Status::unimplemented(format!(
                    "message encoding {:?} is not supported; supported: {ACCEPT_ENCODING}",
                    String::from_utf8_lossy(value.as_bytes())
                ));
                return refuse(sink, status);
            }
        },
    };

    let deadline = match headers.get("grpc-timeout") {
        None => None,
        Some(value) => match timeout::parse(value.as_bytes()) {
            // A deadline that has passed already: nothing runs.
            Ok(duration) if duration.is_zero() => {
                let status = Status::deadline_exceeded("grpc-timeout 0: the deadline has passed");
                return refuse(sink, status);
            }
            Ok(duration) => Some(Instant::now() + duration),
            Err(error) => {
                let status = Status::internal(format!("malformed grpc-timeout: {error}"));
                return refuse(sink, status);
            }
        },
    };

    let handler = match route {
        Route::Method(_, handler) => handler.clone(),
        Route::UnknownMethod { service, method } => {
            let status =
                Status::unimplemented(format!("unknown method {method} for service {service}"));
            return refuse(sink, status);
        }
        Route::UnknownService(service) => {
            let status = Status::unimplemented(format!("unknown service {service}"));
            return refuse(sink, status);
        }
        Route::Malformed => {
            let status = Status::unimplemented(format!("malformed method path {:?}", uri.path()));
            return refuse(sink, status);
        }
    };

    let mut head = RequestHead {
        method: method_name,
        metadata: Metadata::from_headers(&headers),
        deadline,
        encoding: request_encoding,
        peer: connection.peer,
        connection_id: connection.id,
        stream_id,
        extensions: connection.extensions.clone(),
    };
    drop(headers);
    if let Some(interceptor) = shared.router.interceptor()
        && let Err(status) = interceptor(&mut head)
    {
        return refuse(sink, status);
    }

    let (give_back, returned) = oneshot::channel();
    let call = Call {
        head,
        body,
        sink,
        give_back,
        max_message_len: shared.config.max_recv_message_bytes,
        request_encoding,
        telemetry: shared.telemetry.clone(),
    };
    Ok(Running {
        handler: handler(call),
        returned,
        deadline,
    })
}

impl Running {
    /// Runs the handler under the call's deadline, flushes what it queued,
    /// and sends the trailers.
    async fn run(self) -> Status {
        let Running {
            handler,
            returned,
            deadline,
        } = self;
        let outcome = match deadline {
            Some(deadline) => tokio::select! {
                outcome = handler => outcome,
                _ = tokio::time::sleep_until(deadline) => Err(Status::deadline_exceeded("deadline exceeded")),
            },
            None => handler.await,
        };
        // The handler (or its cancellation) dropped the sink, which came back here.
        let Ok(mut sink) = returned.await else {
            return Status::internal("response sink lost");
        };
        let status = match outcome {
            Ok(trailers) => Status::ok().with_metadata(trailers),
            Err(status) => status,
        };
        let deliverable = !matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled);
        if deliverable && sink.pending_len() > 0 {
            // A peer that stopped reading must not hold the call open: the
            // final flush is bounded even without a deadline.
            let flush_until = Instant::now() + FINAL_FLUSH_TIMEOUT;
            let limit = deadline.map_or(flush_until, |d| d.min(flush_until));
            let flushed = tokio::time::timeout_at(limit, sink.flush()).await;
            match flushed {
                Ok(Ok(())) => {}
                Err(_) if deadline.is_some_and(|d| d <= flush_until) => {
                    let status =
                        Status::deadline_exceeded("deadline exceeded while flushing the response");
                    sink.finish(&status);
                    return status;
                }
                // Not flushed in time, or the stream broke: the status still goes,
                // but never an OK that would hide undelivered messages.
                _ if status.is_ok() => {
                    let status = Status::unavailable(
                        "the response could not be delivered: the client is not reading",
                    );
                    sink.finish(&status);
                    return status;
                }
                _ => {}
            }
        }
        sink.finish(&status);
        status
    }
}

fn refuse_http(respond: &mut SendResponse<AccountedChunk>, refusal: HttpRefusal) {
    let (http_status, grpc_status) = match refusal {
        HttpRefusal::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            Status::unimplemented("gRPC requires the POST method"),
        ),
        HttpRefusal::UnsupportedMediaType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Status::unknown("content-type must be application/grpc or application/grpc+proto"),
        ),
        HttpRefusal::MissingTeTrailers => (
            StatusCode::BAD_REQUEST,
            Status::internal("gRPC requires the header te: trailers"),
        ),
    };
    let mut response = http::Response::new(());
    *response.status_mut() = http_status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    if refusal == HttpRefusal::MethodNotAllowed {
        headers.insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    grpc_status.write_trailers(headers);
    let _ = respond.send_response(response, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn http_checks() {
        let good = headers(&[("content-type", "application/grpc"), ("te", "trailers")]);
        assert_eq!(check_http(&Method::POST, &good), Ok(()));
        assert_eq!(
            check_http(&Method::GET, &good),
            Err(HttpRefusal::MethodNotAllowed)
        );
        let proto = headers(&[
            ("content-type", "application/grpc+proto"),
            ("te", "trailers"),
        ]);
        assert_eq!(check_http(&Method::POST, &proto), Ok(()));
        let json = headers(&[
            ("content-type", "application/grpc+json"),
            ("te", "trailers"),
        ]);
        assert_eq!(
            check_http(&Method::POST, &json),
            Err(HttpRefusal::UnsupportedMediaType)
        );
        let html = headers(&[("content-type", "text/html"), ("te", "trailers")]);
        assert_eq!(
            check_http(&Method::POST, &html),
            Err(HttpRefusal::UnsupportedMediaType)
        );
        let no_te = headers(&[("content-type", "application/grpc")]);
        assert_eq!(
            check_http(&Method::POST, &no_te),
            Err(HttpRefusal::MissingTeTrailers)
        );
        let te_list = headers(&[
            ("content-type", "application/grpc"),
            ("te", "gzip, trailers"),
        ]);
        assert_eq!(check_http(&Method::POST, &te_list), Ok(()));
    }
}
