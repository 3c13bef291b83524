//! gRPC-Web's framing, pure: which content types are gRPC-Web, the trailers
//! sent as the body's last frame (flag 0x80, HTTP/1.1-style header lines),
//! and the `-text` mode's base64 (each request body one base64 text whose
//! 4-character groups may each be padded, as clients concatenate padded
//! chunks; each response chunk encoded on its own, padded).
//!
//! Everything here is total on any input and allocates at most in
//! proportion to it (the caller bounds the input).

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;

use crate::grpc::base64::{self, Alphabet, InvalidBase64};

/// The flag of the frame that carries the trailers.
pub const TRAILER_FLAG: u8 = 0x80;

/// How a gRPC-Web body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebMode {
    /// `application/grpc-web` and `application/grpc-web+proto`: bytes.
    Binary,
    /// `application/grpc-web-text` and `application/grpc-web-text+proto`:
    /// the same bytes, base64.
    Text,
}

impl WebMode {
    /// The mode of a request's content type, if it is gRPC-Web (protobuf).
    pub fn from_content_type(value: &str) -> Option<WebMode> {
        let media = value.split(';').next().unwrap_or("").trim();
        let lower = media.to_ascii_lowercase();
        match lower.as_str() {
            "application/grpc-web" | "application/grpc-web+proto" => Some(WebMode::Binary),
            "application/grpc-web-text" | "application/grpc-web-text+proto" => Some(WebMode::Text),
            _ => None,
        }
    }

    /// The response's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            WebMode::Binary => "application/grpc-web+proto",
            WebMode::Text => "application/grpc-web-text+proto",
        }
    }

    /// A request body as the gRPC messages it carries (the text mode decoded).
    pub fn decode_body(self, body: Bytes) -> Result<Bytes, InvalidBase64> {
        match self {
            WebMode::Binary => Ok(body),
            WebMode::Text => decode_text(&body).map(Bytes::from),
        }
    }

    /// Response bytes as they go on the wire (the text mode encoded).
    pub fn encode_chunk(self, chunk: Bytes) -> Bytes {
        match self {
            WebMode::Binary => chunk,
            WebMode::Text => Bytes::from(encode_text(&chunk)),
        }
    }

    /// The largest request body that can carry a `max_message` message
    /// (its 5-byte header included).
    pub fn max_body(self, max_message: usize) -> usize {
        let framed = max_message.saturating_add(5);
        match self {
            WebMode::Binary => framed,
            WebMode::Text => framed.div_ceil(3).saturating_mul(4),
        }
    }
}

/// Decodes a `-text` body: base64 in 4-character groups, any of which may
/// end in padding (concatenated padded chunks).
pub fn decode_text(input: &[u8]) -> Result<Vec<u8>, InvalidBase64> {
    if !input.len().is_multiple_of(4) {
        return Err(InvalidBase64);
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    for group in input.chunks(4) {
        out.extend_from_slice(&base64::decode(group, Alphabet::Standard)?);
    }
    Ok(out)
}

/// Encodes one chunk of a `-text` response: standard base64, padded.
pub fn encode_text(chunk: &[u8]) -> String {
    let mut text = base64::encode(chunk, Alphabet::Standard);
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

/// The trailers frame: `name: value\r\n` for each header (names are
/// lowercase already in an `HeaderMap`), after a 5-byte header with
/// [`TRAILER_FLAG`]. Values that are not visible ASCII are left out (gRPC
/// metadata is ASCII; binary values are base64 in `-bin` headers).
pub fn trailers_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = BytesMut::new();
    for (name, value) in trailers {
        if value.as_bytes().iter().any(|b| !(0x20..0x7f).contains(b)) {
            continue;
        }
        block.put_slice(name.as_str().as_bytes());
        block.put_slice(b": ");
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(TRAILER_FLAG);
    frame.put_u32(block.len() as u32);
    frame.put_slice(&block);
    frame.freeze()
}

/// What a trailers-only HTTP/2 response head carries besides the
/// response's own headers: the status and its metadata.
pub fn trailers_of_head(head: &HeaderMap) -> HeaderMap {
    let mut trailers = head.clone();
    for name in ["content-type", "grpc-accept-encoding", "grpc-encoding"] {
        trailers.remove(name);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn content_types() {
        assert_eq!(
            WebMode::from_content_type("application/grpc-web"),
            Some(WebMode::Binary)
        );
        assert_eq!(
            WebMode::from_content_type("Application/gRPC-Web+proto; charset=x"),
            Some(WebMode::Binary)
        );
        assert_eq!(
            WebMode::from_content_type("application/grpc-web-text"),
            Some(WebMode::Text)
        );
        assert_eq!(
            WebMode::from_content_type("application/grpc-web-text+proto"),
            Some(WebMode::Text)
        );
        assert_eq!(WebMode::from_content_type("application/grpc"), None);
        assert_eq!(
            WebMode::from_content_type("application/grpc-web+json"),
            None
        );
        assert_eq!(WebMode::from_content_type(""), None);
    }

    #[test]
    fn text_bodies_decode_padded_groups() {
        // "a" and "bc" encoded apart and concatenated, as clients send them.
        assert_eq!(decode_text(b"YQ==YmM=").unwrap(), b"abc");
        assert_eq!(decode_text(b"YWJj").unwrap(), b"abc");
        assert_eq!(decode_text(b"").unwrap(), b"");
        assert!(decode_text(b"YQ=").is_err(), "not whole groups");
        assert!(decode_text(b"Y===").is_err());
        assert!(decode_text(b"====").is_err());
        assert!(decode_text(b"YQ==\r\n").is_err());
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_text(encode_text(&data).as_bytes()).unwrap(), data);
        assert_eq!(encode_text(b"a"), "YQ==");
    }

    #[test]
    fn trailers_are_the_last_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        trailers.insert("grpc-message", HeaderValue::from_static("no%20session"));
        let frame = trailers_frame(&trailers);
        assert_eq!(frame[0], TRAILER_FLAG);
        let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 5);
        assert_eq!(
            &frame[5..],
            b"grpc-status: 5\r\ngrpc-message: no%20session\r\n"
        );
    }

    #[test]
    fn a_trailers_only_head_keeps_its_status_and_metadata() {
        let mut head = HeaderMap::new();
        head.insert("content-type", HeaderValue::from_static("application/grpc"));
        head.insert("grpc-status", HeaderValue::from_static("16"));
        head.insert("x-why", HeaderValue::from_static("because"));
        let trailers = trailers_of_head(&head);
        assert!(trailers.get("content-type").is_none());
        assert_eq!(trailers["grpc-status"], "16");
        assert_eq!(trailers["x-why"], "because");
    }

    #[test]
    fn body_bounds() {
        assert_eq!(WebMode::Binary.max_body(10), 15);
        assert_eq!(WebMode::Text.max_body(10), 20);
    }
}
