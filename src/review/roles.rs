//! Roles as capabilities. A participant's role comes from its token (or is
//! AUTHOR when the server runs without authentication); only this module can
//! mint the proofs that a role allows an action, and the session functions
//! that edit, comment, move cursors or upload take the proof as an argument.
//!
//! | role     | edit | comment | cursor | upload | watch |
//! |----------|------|---------|--------|--------|-------|
//! | author   | yes  | yes     | yes    | yes    | yes   |
//! | reviewer | no   | yes     | yes    | no     | yes   |
//! | observer | no   | no      | no     | no     | yes   |

use super::error::ReviewError;
use crate::pb::codereview::Role as WireRole;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Author,
    Reviewer,
    Observer,
}

/// Proof that a participant may edit.
#[derive(Debug)]
pub struct MayEdit(());
/// Proof that a participant may comment.
#[derive(Debug)]
pub struct MayComment(());
/// Proof that a participant may move its cursor.
#[derive(Debug)]
pub struct MayMoveCursor(());
/// Proof that a participant may upload files.
#[derive(Debug)]
pub struct MayUpload(());

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "author" => Some(Role::Author),
            "reviewer" => Some(Role::Reviewer),
            "observer" => Some(Role::Observer),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Author => "author",
            Role::Reviewer => "reviewer",
            Role::Observer => "observer",
        }
    }

    pub fn to_wire(self) -> WireRole {
        match self {
            Role::Author => WireRole::Author,
            Role::Reviewer => WireRole::Reviewer,
            Role::Observer => WireRole::Observer,
        }
    }

    fn refuse(self, action: &str) -> ReviewError {
        ReviewError::denied(format!(
            "a participant with role {} may not {action}",
            self.name()
        ))
    }

    /// Whether the role may write to a session (edit or comment), and so
    /// may bring a new session into being by joining it.
    pub fn may_create_session(self) -> bool {
        !matches!(self, Role::Observer)
    }

    pub fn may_edit(self) -> Result<MayEdit, ReviewError> {
        match self {
            Role::Author => Ok(MayEdit(())),
            _ => Err(self.refuse("edit")),
        }
    }

    pub fn may_comment(self) -> Result<MayComment, ReviewError> {
        match self {
            Role::Author | Role::Reviewer => Ok(MayComment(())),
            Role::Observer => Err(self.refuse("comment")),
        }
    }

    pub fn may_move_cursor(self) -> Result<MayMoveCursor, ReviewError> {
        match self {
            Role::Author | Role::Reviewer => Ok(MayMoveCursor(())),
            Role::Observer => Err(self.refuse("move a cursor")),
        }
    }

    pub fn may_upload(self) -> Result<MayUpload, ReviewError> {
        match self {
            Role::Author => Ok(MayUpload(())),
            _ => Err(self.refuse("upload files")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_table() {
        let table = [
            (Role::Author, [true, true, true, true]),
            (Role::Reviewer, [false, true, true, false]),
            (Role::Observer, [false, false, false, false]),
        ];
        for (role, [edit, comment, cursor, upload]) in table {
            assert_eq!(role.may_edit().is_ok(), edit, "{role:?}");
            assert_eq!(role.may_comment().is_ok(), comment, "{role:?}");
            assert_eq!(role.may_move_cursor().is_ok(), cursor, "{role:?}");
            assert_eq!(role.may_upload().is_ok(), upload, "{role:?}");
        }
    }
}
