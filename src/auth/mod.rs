//! Authentication: bearer tokens (HS256 JWTs, see [`jwt`]) checked at stream
//! establishment by an interceptor on every RPC except grpc.health.v1.Health
//! and server reflection (which describes the API and nothing else), and again mid-stream when a participant presents a fresh token. A valid
//! token becomes a [`Principal`]: the subject is the participant's identity,
//! the role its capabilities, the sessions claim where it may go.

pub mod json;
pub mod jwt;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::grpc::Status;
use crate::grpc::reflection;
use crate::grpc::server::{Interceptor, RequestHead};
use crate::review::error::{ErrorKind, ReviewError};
use crate::review::principal::{Principal, SessionScope};
use crate::review::service::TokenVerifier;
use crate::review::session::TokenWindow;

/// The longest a participant is warned ahead of its token's expiry.
const MAX_WARNING: Duration = Duration::from_secs(60);

/// Records why authentication failed (metrics).
pub type FailureHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Verifies tokens with the server's secret.
pub struct Authenticator {
    key: jwt::Key,
    on_failure: Option<FailureHook>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// When to warn about a token expiring: a third of its lifetime before, at
/// most a minute.
pub fn token_window(issued_at: i64, expires_at: i64) -> TokenWindow {
    let lifetime_ms = (expires_at - issued_at).max(0) * 1000;
    let lead = (lifetime_ms / 3).min(MAX_WARNING.as_millis() as i64);
    TokenWindow {
        warn_at_ms: expires_at * 1000 - lead,
        expires_at_ms: expires_at * 1000,
    }
}

impl Authenticator {
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        Ok(Authenticator {
            key: jwt::Key::new(secret)?,
            on_failure: None,
        })
    }

    /// Calls `hook` with the reason of every refused token.
    pub fn on_failure(mut self, hook: FailureHook) -> Self {
        self.on_failure = Some(hook);
        self
    }

    fn failed(&self, reason: &'static str) {
        if let Some(hook) = &self.on_failure {
            hook(reason);
        }
    }

    /// A token's principal, or why not.
    pub fn principal(&self, token: &str) -> Result<Principal, jwt::TokenError> {
        let claims = self.key.verify(token, now_seconds())?;
        Ok(Principal {
            subject: Some(claims.subject),
            role: claims.role,
            sessions: match claims.sessions {
                jwt::Sessions::All => SessionScope::All,
                jwt::Sessions::Only(ids) => SessionScope::Only(ids),
            },
            token: Some(token_window(claims.issued_at, claims.expires_at)),
        })
    }

    /// The interceptor that admits calls: health checks and reflection pass
    /// freely; every other call needs `authorization: Bearer <token>`.
    pub fn interceptor(self: Arc<Self>) -> Interceptor {
        Arc::new(move |head: &mut RequestHead| {
            if head.method.starts_with("/grpc.health.v1.Health/")
                || reflection::is_reflection_method(head.method)
            {
                return Ok(());
            }
            let Some(value) = head.metadata.get("authorization") else {
                if head.metadata.contains_key("authorization") {
                    self.failed("malformed");
                    return Err(Status::unauthenticated(
                        "authorization is not ASCII: Bearer <token>",
                    ));
                }
                self.failed("missing");
                return Err(Status::unauthenticated(
                    "missing authorization: Bearer <token>",
                ));
            };
            let Some(token) = bearer_token(value) else {
                self.failed("malformed");
                return Err(Status::unauthenticated(
                    "authorization must be: Bearer <token>",
                ));
            };
            match self.principal(token) {
                Ok(principal) => {
                    head.extensions.insert(principal);
                    Ok(())
                }
                Err(error) => {
                    self.failed(error.reason);
                    Err(Status::unauthenticated(error.message))
                }
            }
        })
    }
}

/// The token of an `authorization: Bearer <token>` value; the scheme's
/// name is case-insensitive (RFC 7235), so `bearer` is one too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl TokenVerifier for Authenticator {
    fn verify(&self, token: &str) -> Result<Principal, ReviewError> {
        self.principal(token).map_err(|error| {
            self.failed(error.reason);
            ReviewError::new(ErrorKind::Unauthenticated, error.message)
        })
    }
}

/// Reads a secret file (a trailing newline is not part of the secret).
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn warning_lead_is_a_third_of_the_lifetime_capped_at_a_minute() {
        assert_eq!(
            token_window(0, 30),
            TokenWindow {
                warn_at_ms: 20_000,
                expires_at_ms: 30_000
            }
        );
        assert_eq!(
            token_window(0, 3600),
            TokenWindow {
                warn_at_ms: 3_540_000,
                expires_at_ms: 3_600_000
            }
        );
    }
}
