//! The domain's one error type, and the one place it becomes a gRPC status
//! (for a stream's end) or a status code (for a per-message `Error`).

use crate::grpc::{Code, Status};

/// What went wrong, in domain terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The message is malformed or inconsistent (empty ids, other session).
    InvalidArgument,
    /// The participant's role does not allow it, or the identity is wrong.
    PermissionDenied,
    /// A line that does not exist.
    OutOfRange,
    /// The edit's base version cannot be transformed (too old, or ahead).
    FailedPrecondition,
    /// A limit: rate, size, count, or a participant too far behind.
    ResourceExhausted,
    NotFound,
    AlreadyExists,
    /// No valid token, or it expired.
    Unauthenticated,
    /// Replaced by a newer stream of the same user.
    Aborted,
    /// Going away: reconnect and resume.
    Unavailable,
    /// The session's stored log is damaged: it cannot be served.
    DataLoss,
}

/// A domain error with a message for the participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ReviewError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ReviewError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ReviewError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn denied(message: impl Into<String>) -> Self {
        ReviewError::new(ErrorKind::PermissionDenied, message)
    }

    pub fn exhausted(message: impl Into<String>) -> Self {
        ReviewError::new(ErrorKind::ResourceExhausted, message)
    }

    /// The gRPC status code for this error (the only mapping).
    pub fn code(&self) -> Code {
        match self.kind {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DataLoss => Code::DataLoss,
        }
    }

    /// The error a stored outcome names (the inverse of [`ReviewError::code`];
    /// codes the domain does not use read as INVALID_ARGUMENT).
    pub fn from_code(code: i32, message: impl Into<String>) -> Self {
        let kind = match Code::from_i32(code) {
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::OutOfRange => ErrorKind::OutOfRange,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::Aborted => ErrorKind::Aborted,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::DataLoss => ErrorKind::DataLoss,
            _ => ErrorKind::InvalidArgument,
        };
        ReviewError::new(kind, message)
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.message.clone())
    }
}

impl From<ReviewError> for Status {
    fn from(error: ReviewError) -> Status {
        error.to_status()
    }
}

impl std::fmt::Display for ReviewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message)
    }
}

impl std::error::Error for ReviewError {}
