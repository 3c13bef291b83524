//! Who is calling: the identity and rights a request carries. The
//! authentication interceptor (see `crate::auth`) attaches a [`Principal`] to
//! every call it admits; without authentication every caller is an author
//! who may act as any user in any session.

use super::error::ReviewError;
use super::roles::Role;
use super::session::TokenWindow;

/// Which sessions a principal may enter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionScope {
    All,
    Only(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user this caller is; `None` when unauthenticated (any user_id).
    pub subject: Option<String>,
    pub role: Role,
    pub sessions: SessionScope,
    /// When the credentials expire (and when to warn), if they do.
    pub token: Option<TokenWindow>,
}

impl Principal {
    /// The caller of a server running without authentication.
    pub fn open() -> Principal {
        Principal {
            subject: None,
            role: Role::Author,
            sessions: SessionScope::All,
            token: None,
        }
    }

    /// May this principal enter `session_id`?
    pub fn check_session(&self, session_id: &str) -> Result<(), ReviewError> {
        match &self.sessions {
            SessionScope::All => Ok(()),
            SessionScope::Only(allowed) if allowed.iter().any(|s| s == session_id) => Ok(()),
            SessionScope::Only(_) => Err(ReviewError::denied(format!(
                "your token does not allow session {session_id:?}"
            ))),
        }
    }

    /// Is `user_id` this principal? (Unauthenticated callers may be anyone.)
    pub fn check_user(&self, user_id: &str) -> Result<(), ReviewError> {
        match &self.subject {
            Some(subject) if subject != user_id => Err(ReviewError::denied(format!(
                "your token is for user {subject:?}; it cannot act as {user_id:?}"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_and_subject() {
        let p = Principal {
            subject: Some("ann".into()),
            role: Role::Reviewer,
            sessions: SessionScope::Only(vec!["s1".into()]),
            token: None,
        };
        assert!(p.check_session("s1").is_ok());
        assert!(p.check_session("s2").is_err());
        assert!(p.check_user("ann").is_ok());
        assert!(p.check_user("bob").is_err());
        assert!(Principal::open().check_user("anyone").is_ok());
    }
}
