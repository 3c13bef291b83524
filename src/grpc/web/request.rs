//! The HTTP/1.1 request head, parsed (pure, bounded, fuzzed): the request
//! line, the headers into an `http::HeaderMap` (whose name and value checks
//! we reuse), the body's framing and whether the connection stays open.
//!
//! Only what gRPC-Web and the page need, and strict where leniency has been
//! a smuggling vector: CRLF line ends only, no obsolete line folding, no
//! whitespace before a header's colon, one Host, one Content-Length value
//! (repeats must agree), and Transfer-Encoding is reported for the caller to
//! refuse (browsers send gRPC-Web requests with a Content-Length).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Headers per request at most.
pub const MAX_HEADERS: usize = 64;

/// The request methods we serve; others are [`RequestMethod::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestMethod {
    Get,
    Head,
    Post,
    Options,
    Other,
}

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length: n` (0 when absent).
    Exactly(u64),
    /// A `Transfer-Encoding` is present (not served: the caller refuses it).
    Encoded,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: RequestMethod,
    /// The origin-form target, e.g. `/s/demo?user=alice`.
    pub target: String,
    pub headers: HeaderMap,
    pub body: BodyLength,
    /// Whether the connection may serve another request after this one
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
    /// Bytes the head took, its blank line included.
    pub head_len: usize,
}

impl RequestHead {
    /// The target's path (without the query).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A header's value as text, if present once and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a head cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// No blank line yet: read more.
    Incomplete,
    /// No blank line within the limit.
    TooLarge,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// Not HTTP/1.0 or HTTP/1.1.
    Version,
    /// Anything else wrong, with the reason.
    Malformed(&'static str),
}

/// Parses the request head at the start of `buffer`, looking at no more than
/// `max_head` bytes.
pub fn parse_head(buffer: &[u8], max_head: usize) -> Result<RequestHead, ParseError> {
    let window = &buffer[..buffer.len().min(max_head)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(if buffer.len() >= max_head {
            ParseError::TooLarge
        } else {
            ParseError::Incomplete
        });
    };
    let head_len = end + 4;
    // Bare CRs and LFs left inside lines fail the checks of each part.
    let mut lines = crlf_lines(&window[..end]);
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed("request line"));
    };
    let method = match method {
        b"GET" => RequestMethod::Get,
        b"HEAD" => RequestMethod::Head,
        b"POST" => RequestMethod::Post,
        b"OPTIONS" => RequestMethod::Options,
        m if !m.is_empty() && m.iter().all(u8::is_ascii_uppercase) => RequestMethod::Other,
        _ => return Err(ParseError::Malformed("method")),
    };
    let target_ok =
        target.first() == Some(&b'/') && target.iter().all(|b| (0x21..0x7f).contains(b));
    if !target_ok {
        return Err(ParseError::Malformed("request target"));
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(ParseError::Version),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        if headers.len() >= MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ParseError::Malformed("header without a colon"));
        };
        // Also refuses obsolete folding (a line starting with whitespace)
        // and whitespace before the colon.
        let name = HeaderName::from_bytes(&line[..colon])
            .map_err(|_| ParseError::Malformed("header name"))?;
        let value = trim_ows(&line[colon + 1..]);
        let value =
            HeaderValue::from_bytes(value).map_err(|_| ParseError::Malformed("header value"))?;
        headers.append(name, value);
    }
    if headers.get_all(http::header::HOST).iter().count() != 1 && !http10 {
        return Err(ParseError::Malformed(
            "an HTTP/1.1 request needs one Host header",
        ));
    }
    let body = body_length(&headers)?;
    let connection = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .fold((false, false), |(close, keep), token| {
            (
                close || token.eq_ignore_ascii_case(b"close"),
                keep || token.eq_ignore_ascii_case(b"keep-alive"),
            )
        });
    let keep_alive = match (http10, connection) {
        (_, (true, _)) => false,
        (false, _) => true,
        (true, (_, keep)) => keep,
    };
    Ok(RequestHead {
        method,
        target: String::from_utf8_lossy(target).into_owned(),
        headers,
        body,
        keep_alive,
        head_len,
    })
}

/// The lines of `bytes`, split at each CRLF.
fn crlf_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let remaining = rest?;
        match remaining.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                rest = Some(&remaining[i + 2..]);
                Some(&remaining[..i])
            }
            None => {
                rest = None;
                Some(remaining)
            }
        }
    })
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn body_length(headers: &HeaderMap) -> Result<BodyLength, ParseError> {
    let has_transfer_encoding = headers.contains_key(http::header::TRANSFER_ENCODING);
    let mut length: Option<u64> = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = trim_ows(item);
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(ParseError::Malformed("content-length"));
            }
            let n: u64 = std::str::from_utf8(item)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(ParseError::Malformed("content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ParseError::Malformed("conflicting content-length values"));
            }
            length = Some(n);
        }
    }
    match (has_transfer_encoding, length) {
        (true, Some(_)) => Err(ParseError::Malformed(
            "both transfer-encoding and content-length",
        )),
        (true, None) => Ok(BodyLength::Encoded),
        (false, n) => Ok(BodyLength::Exactly(n.unwrap_or(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    fn parse(text: &str) -> Result<RequestHead, ParseError> {
        parse_head(text.as_bytes(), MAX)
    }

    #[test]
    fn a_grpc_web_post() {
        let text = "POST /codereview.v1.CodeReviewService/Send HTTP/1.1\r\nHost: 127.0.0.1:50051\r\n\
                    Content-Type: application/grpc-web+proto\r\nContent-Length: 12\r\nX-Grpc-Web: 1\r\n\r\nBODY";
        let head = parse(text).unwrap();
        assert_eq!(head.method, RequestMethod::Post);
        assert_eq!(head.path(), "/codereview.v1.CodeReviewService/Send");
        assert_eq!(head.body, BodyLength::Exactly(12));
        assert!(head.keep_alive);
        assert_eq!(
            head.header("content-type"),
            Some("application/grpc-web+proto")
        );
        assert_eq!(head.header("x-grpc-web"), Some("1"));
        assert_eq!(head.head_len, text.len() - 4);
    }

    #[test]
    fn connection_persistence() {
        let close = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!close.keep_alive);
        let old = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!old.keep_alive);
        let old_keep = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(old_keep.keep_alive);
        let query = parse("GET /s/demo?user=bob HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(query.path(), "/s/demo");
        assert_eq!(query.target, "/s/demo?user=bob");
    }

    #[test]
    fn incomplete_and_too_large() {
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n"),
            Err(ParseError::Incomplete)
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX));
        assert_eq!(parse(&long), Err(ParseError::TooLarge));
    }

    #[test]
    fn refuses_what_smuggling_needs() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "get / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
        assert_eq!(parse("GET / HTTP/2\r\n\r\n"), Err(ParseError::Version));
        let agreeing =
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
                .unwrap();
        assert_eq!(agreeing.body, BodyLength::Exactly(3));
        let chunked =
            parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(chunked.body, BodyLength::Encoded);
    }

    #[test]
    fn too_many_headers() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            text.push_str(&format!("x-{i}: v\r\n"));
        }
        text.push_str("\r\n");
        assert_eq!(parse(&text), Err(ParseError::TooManyHeaders));
    }
}
