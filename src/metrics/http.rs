//! The metrics listener's HTTP/1.1: a minimal request-line and header parser
//! (pure, bounded, fuzzed: it never grows with its input beyond
//! [`MAX_REQUEST_HEAD`]) and the small server that answers GET /metrics,
//! /healthz and /readyz, one request per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;
use crate::log;

/// The largest request head read (request line and headers).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
const MAX_CONNECTIONS: usize = 16;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// Why a request head cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// More bytes are needed (no blank line yet).
    Incomplete,
    /// The head is larger than [`MAX_REQUEST_HEAD`].
    TooLarge,
    /// Not an HTTP/1.x request.
    Malformed,
}

/// Parses a request head from the bytes received so far.
pub fn parse_request(buffer: &[u8]) -> Result<RequestHead<'_>, HttpError> {
    let window = &buffer[..buffer.len().min(MAX_REQUEST_HEAD)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(if buffer.len() >= MAX_REQUEST_HEAD {
            HttpError::TooLarge
        } else {
            HttpError::Incomplete
        });
    };
    let head = std::str::from_utf8(&window[..end]).map_err(|_| HttpError::Malformed)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(HttpError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !(version == "HTTP/1.1" || version == "HTTP/1.0") {
        return Err(HttpError::Malformed);
    }
    for line in lines {
        let Some((name, _)) = line.split_once(':') else {
            return Err(HttpError::Malformed);
        };
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(HttpError::Malformed);
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok(RequestHead { method, path })
}

/// Whether the server is ready (serving, storage working, not draining).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves the metrics endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Readiness) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = answer(stream, &metrics, &ready).await {
                log!(
                    Debug,
                    "metrics request failed",
                    error = error.to_string().as_str()
                );
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    ready: &Readiness,
) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let room = MAX_REQUEST_HEAD + 4 - buffer.len().min(MAX_REQUEST_HEAD + 4);
        buffer.extend_from_slice(&chunk[..n.min(room)]);
        match parse_request(&buffer) {
            Ok(head) => break Ok((head.method.to_owned(), head.path.to_owned())),
            Err(HttpError::Incomplete) => continue,
            Err(error) => break Err(error),
        }
    };
    let is_head = matches!(&head, Ok((method, _)) if method == "HEAD");
    let (status, content_type, body) = match head {
        Err(HttpError::TooLarge) => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n".to_owned(),
        ),
        Err(_) => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
        Ok((method, _)) if method != "GET" && method != "HEAD" => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
        Ok((_, path)) => match path.as_str() {
            "/metrics" => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render().await,
            ),
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
            "/readyz" if ready() => ("200 OK", "text/plain", "ready\n".to_owned()),
            "/readyz" => (
                "503 Service Unavailable",
                "text/plain",
                "not ready\n".to_owned(),
            ),
            _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        },
    };
    // HEAD: the headers GET would have, without the body.
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        if is_head { "" } else { body.as_str() }
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"),
            Ok(RequestHead {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"),
            Err(HttpError::Incomplete)
        );
        assert_eq!(
            parse_request(b"GET metrics HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/2\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse_request(b"get / HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse_request(b"GET  / HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        let huge = vec![b'a'; MAX_REQUEST_HEAD + 10];
        assert_eq!(parse_request(&huge), Err(HttpError::TooLarge));
    }
}
