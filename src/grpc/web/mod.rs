//! gRPC-Web on the gRPC port, for browsers (which cannot read trailers or
//! stream a request), and the little HTTP a page needs: static assets and
//! CORS preflights. Off unless the server is given a [`WebConfig`].
//!
//! A gRPC-Web call is translated into an ordinary gRPC call on an in-memory
//! HTTP/2 connection to this same server ([`loopback`]), so it passes through
//! exactly what native calls do — routing, the interceptor (tokens), deadlines,
//! flow control, the outbound budget, metrics — and its response is translated
//! back: messages as they are, the trailers as the body's last frame
//! ([`framing`]). Two front ends feed it:
//!
//! ```text
//!  HTTP/1.1 (plaintext, the sniffer saw a request line) ─► http1 ─┐
//!  HTTP/2 stream with a gRPC-Web content type or a GET ─► h2 ─────┤
//!                                                                  ▼
//!      GET asset ─► the page     OPTIONS ─► CORS preflight     POST gRPC-Web ─► loopback
//!                                            (--web-origin)      ─► relay: messages, trailers frame
//! ```
//!
//! Bounds: a request head within [`MAX_HEAD`], a request body within
//! the message limit (browsers send unary and server-streaming requests
//! whole), one call at a time per HTTP/1.1 connection, and a client that
//! reads nothing for [`WRITE_TIMEOUT`] is disconnected.

pub mod framing;
pub(crate) mod h2;
pub(crate) mod http1;
pub(crate) mod loopback;
pub mod request;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::grpc::status::Status;
pub use framing::WebMode;

/// The largest HTTP/1.1 request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// How long a client may leave a response unread before it is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A file served by `GET`.
#[derive(Debug, Clone)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: Bytes,
    /// Extra response headers (e.g. a Content-Security-Policy).
    pub headers: &'static [(&'static str, &'static str)],
}

/// Finds the asset for a path (`None`: 404).
pub type AssetLookup = Arc<dyn Fn(&str) -> Option<Asset> + Send + Sync>;

/// What the web front ends serve.
#[derive(Clone)]
pub struct WebConfig {
    pub assets: AssetLookup,
    /// Origins other than the server's own whose pages may call it
    /// (exact `scheme://host[:port]`; none by default: same origin only).
    pub allowed_origins: Vec<String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// What a request asks of the web front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebRoute {
    /// `GET`/`HEAD` of a path.
    Asset,
    /// `OPTIONS`: a CORS preflight.
    Preflight,
    /// `POST` with a gRPC-Web content type.
    Call(WebMode),
    /// A method we do not serve.
    MethodNotAllowed,
    /// `POST` of something else (native gRPC has its own path on HTTP/2).
    UnsupportedMediaType,
}

/// Routes a request by method and content type. Pure.
pub fn route(method: &http::Method, content_type: Option<&str>) -> WebRoute {
    match *method {
        http::Method::GET | http::Method::HEAD => WebRoute::Asset,
        http::Method::OPTIONS => WebRoute::Preflight,
        http::Method::POST => match content_type.and_then(WebMode::from_content_type) {
            Some(mode) => WebRoute::Call(mode),
            None => WebRoute::UnsupportedMediaType,
        },
        _ => WebRoute::MethodNotAllowed,
    }
}

/// Whether a request's `Origin` may call us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginCheck {
    /// No `Origin` header: not a cross-origin browser request.
    Absent,
    /// The page's origin is ours.
    Same,
    /// Listed in `--web-origin`: the response carries CORS headers for it.
    Allowed(HeaderValue),
    /// Any other origin: refused (403).
    Refused,
}

impl OriginCheck {
    /// Checks `origin` against the server's own (`scheme://host` from the
    /// request's Host or `:authority`) and the allowed list. Pure.
    pub fn of(
        origin: Option<&HeaderValue>,
        host: Option<&str>,
        tls: bool,
        allowed: &[String],
    ) -> Self {
        let Some(origin) = origin else {
            return OriginCheck::Absent;
        };
        let Ok(text) = origin.to_str() else {
            return OriginCheck::Refused;
        };
        let scheme = if tls { "https" } else { "http" };
        if let Some(host) = host
            && let Some(rest) = text
                .strip_prefix(scheme)
                .and_then(|r| r.strip_prefix("://"))
            && rest.eq_ignore_ascii_case(host)
        {
            return OriginCheck::Same;
        }
        if allowed.iter().any(|a| a == text) {
            return OriginCheck::Allowed(origin.clone());
        }
        OriginCheck::Refused
    }

    /// Adds the CORS response headers an allowed origin needs.
    pub fn write_cors(&self, headers: &mut HeaderMap) {
        if let OriginCheck::Allowed(origin) = self {
            headers.insert("access-control-allow-origin", origin.clone());
            headers.insert(
                "access-control-expose-headers",
                HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
            );
        }
        // Caches must keep responses to different origins apart.
        headers.append(http::header::VARY, HeaderValue::from_static("origin"));
    }
}

/// The headers of a preflight's answer for an allowed origin: the methods,
/// and the request headers it asked for (names only: a token list).
pub fn preflight_headers(check: &OriginCheck, requested: Option<&HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    check.write_cors(&mut headers);
    if let OriginCheck::Allowed(_) = check {
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("POST, GET, OPTIONS"),
        );
        let asked = requested
            .filter(|v| {
                v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(b))
            })
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_static(
                    "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization",
                )
            });
        headers.insert("access-control-allow-headers", asked);
        headers.insert("access-control-max-age", HeaderValue::from_static("600"));
    }
    headers
}

/// The trailers frame of a call that failed before or instead of the
/// server answering it.
pub fn status_frame(status: &Status) -> Bytes {
    framing::trailers_frame(&status.to_trailers())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn routes() {
        use http::Method;
        assert_eq!(route(&Method::GET, None), WebRoute::Asset);
        assert_eq!(route(&Method::HEAD, None), WebRoute::Asset);
        assert_eq!(route(&Method::OPTIONS, None), WebRoute::Preflight);
        assert_eq!(
            route(&Method::POST, Some("application/grpc-web-text")),
            WebRoute::Call(WebMode::Text)
        );
        assert_eq!(
            route(&Method::POST, Some("application/grpc")),
            WebRoute::UnsupportedMediaType
        );
        assert_eq!(route(&Method::PUT, None), WebRoute::MethodNotAllowed);
    }

    #[test]
    fn origins() {
        let allowed = vec!["http://127.0.0.1:9000".to_owned()];
        let check = |origin: Option<&'static str>, host, tls| {
            OriginCheck::of(origin.map(value).as_ref(), host, tls, &allowed)
        };
        assert_eq!(check(None, Some("h:1"), false), OriginCheck::Absent);
        assert_eq!(
            check(Some("http://h:1"), Some("h:1"), false),
            OriginCheck::Same
        );
        assert_eq!(
            check(Some("http://H:1"), Some("h:1"), false),
            OriginCheck::Same
        );
        assert_eq!(
            check(Some("https://h:1"), Some("h:1"), true),
            OriginCheck::Same
        );
        assert_eq!(
            check(Some("http://h:1"), Some("h:1"), true),
            OriginCheck::Refused,
            "the scheme is part of the origin"
        );
        assert_eq!(
            check(Some("http://h:2"), Some("h:1"), false),
            OriginCheck::Refused
        );
        assert_eq!(
            check(Some("null"), Some("h:1"), false),
            OriginCheck::Refused
        );
        assert_eq!(
            check(Some("http://127.0.0.1:9000"), Some("h:1"), false),
            OriginCheck::Allowed(value("http://127.0.0.1:9000"))
        );
        assert_eq!(
            check(Some("http://127.0.0.1:90001"), None, false),
            OriginCheck::Refused
        );
    }

    #[test]
    fn preflights_answer_only_allowed_origins() {
        let allowed = OriginCheck::Allowed(value("http://a"));
        let headers = preflight_headers(&allowed, Some(&value("content-type, x-grpc-web")));
        assert_eq!(headers["access-control-allow-origin"], "http://a");
        assert_eq!(
            headers["access-control-allow-headers"],
            "content-type, x-grpc-web"
        );
        assert_eq!(
            headers["access-control-allow-methods"],
            "POST, GET, OPTIONS"
        );
        let odd = preflight_headers(&allowed, Some(&value("x\"y")));
        assert!(
            odd["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("content-type")
        );
        let refused = preflight_headers(&OriginCheck::Refused, None);
        assert!(refused.get("access-control-allow-origin").is_none());
    }
}
