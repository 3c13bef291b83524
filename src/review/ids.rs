//! The domain's names: the shared string type for ids, paths and lines, and
//! the id of one stream in the registry.

use std::sync::Arc;

/// An id, a path or a line of text: shared, so copying one (into an event,
/// an operation, a bridge) never copies its bytes.
pub type Text = Arc<str>;

/// Identifies one stream (participant or watcher) across the registry.
pub type MemberId = u64;
