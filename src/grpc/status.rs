//! gRPC status: the 17 codes, the status carried in trailers
//! (`grpc-status`, percent-encoded `grpc-message`, trailing metadata), and the
//! one place where wire-level failures (decode errors, HTTP/2 resets, HTTP
//! statuses) become gRPC statuses.

use http::{HeaderMap, HeaderValue};

use super::codec::DecodeError;
use super::compression::InflateError;
use super::metadata::Metadata;
use super::percent;

/// The gRPC status codes (google.rpc.Code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// All codes, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// Maps a numeric code; unknown values become `Unknown`, as the spec says.
    pub fn from_i32(value: i32) -> Code {
        usize::try_from(value)
            .ok()
            .and_then(|i| Code::ALL.get(i).copied())
            .unwrap_or(Code::Unknown)
    }

    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The canonical upper-case name, e.g. `RESOURCE_EXHAUSTED`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The status a client synthesizes from a non-200 HTTP response
    /// (gRPC's http-grpc-status-mapping).
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A gRPC status with its message and trailing metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
    // Boxed: statuses travel in `Result`s everywhere, keep them small.
    metadata: Box<Metadata>,
}

macro_rules! constructors {
    ($($name:ident => $code:ident),* $(,)?) => {
        $(
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            metadata: Box::default(),
        }
    }

    pub fn ok() -> Status {
        Status::new(Code::Ok, "")
    }

    constructors! {
        cancelled => Cancelled,
        unknown => Unknown,
        invalid_argument => InvalidArgument,
        deadline_exceeded => DeadlineExceeded,
        not_found => NotFound,
        already_exists => AlreadyExists,
        permission_denied => PermissionDenied,
        resource_exhausted => ResourceExhausted,
        failed_precondition => FailedPrecondition,
        aborted => Aborted,
        out_of_range => OutOfRange,
        unimplemented => Unimplemented,
        internal => Internal,
        unavailable => Unavailable,
        data_loss => DataLoss,
        unauthenticated => Unauthenticated,
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Trailing metadata sent with (or received with) this status.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Status {
        *self.metadata = metadata;
        self
    }

    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    /// Writes `grpc-status`, `grpc-message` and the trailing metadata.
    pub fn write_trailers(&self, headers: &mut HeaderMap) {
        headers.insert("grpc-status", HeaderValue::from(self.code.as_i32()));
        if !self.message.is_empty() {
            let encoded = percent::encode(&self.message);
            if let Ok(value) = HeaderValue::from_str(&encoded) {
                headers.insert("grpc-message", value);
            }
        }
        self.metadata.write_into(headers);
    }

    /// The trailers block for this status.
    pub fn to_trailers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(2 + self.metadata.len());
        self.write_trailers(&mut headers);
        headers
    }

    /// Reads a status from trailers (or a trailers-only response); `None` when
    /// `grpc-status` is absent.
    pub fn from_trailers(headers: &HeaderMap) -> Option<Status> {
        let raw = headers.get("grpc-status")?;
        let code = std::str::from_utf8(raw.as_bytes())
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .map(Code::from_i32)
            .unwrap_or(Code::Unknown);
        let message = headers
            .get("grpc-message")
            .map(|v| percent::decode(v.as_bytes()))
            .unwrap_or_default();
        Some(Status {
            code,
            message,
            metadata: Box::new(Metadata::from_headers(headers)),
        })
    }

    /// The status a peer's RST_STREAM means (gRPC HTTP/2 spec, "Errors").
    pub fn from_reset(reason: h2::Reason) -> Status {
        let code = match reason {
            h2::Reason::CANCEL => Code::Cancelled,
            h2::Reason::REFUSED_STREAM => Code::Unavailable,
            h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
            _ => Code::Internal,
        };
        Status::new(code, format!("stream reset by peer: {reason}"))
    }

    /// The status for an HTTP/2-level failure on a call.
    pub fn from_h2(error: &h2::Error) -> Status {
        if let Some(reason) = error.reason()
            && error.is_remote()
        {
            if error.is_go_away() && reason == h2::Reason::NO_ERROR {
                return Status::unavailable("connection closed by peer (GOAWAY)");
            }
            return Status::from_reset(reason);
        }
        if error.is_io() {
            return Status::unavailable(format!("connection error: {error}"));
        }
        Status::internal(format!("HTTP/2 error: {error}"))
    }
}

impl From<DecodeError> for Status {
    fn from(error: DecodeError) -> Status {
        match error {
            DecodeError::TooLarge { .. } => Status::resource_exhausted(error.to_string()),
            DecodeError::CompressedWithoutEncoding
            | DecodeError::InvalidFlag(_)
            | DecodeError::Truncated { .. } => Status::internal(error.to_string()),
        }
    }
}

impl From<InflateError> for Status {
    fn from(error: InflateError) -> Status {
        match error {
            InflateError::TooLarge { .. } => Status::resource_exhausted(error.to_string()),
            InflateError::Corrupt(_) => Status::internal(error.to_string()),
        }
    }
}

impl From<prost::DecodeError> for Status {
    fn from(error: prost::DecodeError) -> Status {
        Status::internal(format!("failed to decode message: {error}"))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_codes_round_trip() {
        for (i, code) in Code::ALL.iter().enumerate() {
            assert_eq!(code.as_i32(), i as i32);
            assert_eq!(Code::from_i32(i as i32), *code);
            let status = Status::new(*code, "m");
            assert_eq!(
                Status::from_trailers(&status.to_trailers()).unwrap(),
                status
            );
        }
        assert_eq!(Code::from_i32(17), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
    }

    #[test]
    fn message_is_percent_encoded_in_trailers() {
        let status = Status::unknown("caf\u{e9} 100%");
        let trailers = status.to_trailers();
        assert_eq!(trailers["grpc-status"], "2");
        assert_eq!(trailers["grpc-message"], "caf%C3%A9 100%25");
        assert_eq!(
            Status::from_trailers(&trailers).unwrap().message(),
            "caf\u{e9} 100%"
        );
    }

    #[test]
    fn garbage_status_is_unknown() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("abc"));
        assert_eq!(
            Status::from_trailers(&headers).unwrap().code(),
            Code::Unknown
        );
        assert!(Status::from_trailers(&HeaderMap::new()).is_none());
    }
}
