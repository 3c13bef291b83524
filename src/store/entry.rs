//! A record's `WalEntry`, encoded from borrowed parts: the session's id and
//! the record stay where they are. The records every message makes (a
//! comment, an edit) are written field by field with each length worked out
//! once (see [`crate::protowire`]): prost's nested encoding works a
//! comment's length out three times, once per level above it, and encoding
//! the records was most of what durability adds to a comment's cost. Other
//! records go to prost. The bytes are prost's for the owned entry (tested
//! against it).

use bytes::BufMut;

use crate::pb::codereview::Comment;
use crate::pb::store::{CommentAdded, Edit, LineOp, Record, record::Body};
use crate::protowire::{message_len, put_message_start, put_str, put_varint, str_len, varint_len};

// WalEntry: string session_id = 1; Record record = 2.
const ENTRY_SESSION_ID: u32 = 1;
const ENTRY_RECORD: u32 = 2;
// Record: uint64 index = 1; int64 timestamp = 2; Edit edit = 5;
// CommentAdded comment = 6.
const RECORD_INDEX: u32 = 1;
const RECORD_TIMESTAMP: u32 = 2;
const RECORD_EDIT: u32 = 5;
const RECORD_COMMENT: u32 = 6;

/// Appends the `WalEntry` of `session_id` and `record` to `buf`.
pub fn encode(buf: &mut Vec<u8>, session_id: &str, record: &Record) {
    // The innermost message's length (the comment, the edit's operation),
    // then the body's.
    let (tag, nested_len, inner_len) = match &record.body {
        Some(Body::Comment(added)) => {
            let nested = added.comment.as_ref().map_or(0, comment_len);
            (RECORD_COMMENT, nested, added_len(added, nested))
        }
        Some(Body::Edit(edit)) => {
            let nested = edit.op.as_ref().map_or(0, op_len);
            (RECORD_EDIT, nested, edit_len(edit, nested))
        }
        _ => {
            put_str(ENTRY_SESSION_ID, session_id, buf);
            prost::encoding::message::encode(ENTRY_RECORD, record, buf);
            return;
        }
    };
    let record_len = varint_len(RECORD_INDEX, record.index)
        + varint_len(RECORD_TIMESTAMP, record.timestamp as u64)
        + message_len(tag, inner_len);
    buf.reserve(str_len(ENTRY_SESSION_ID, session_id) + message_len(ENTRY_RECORD, record_len));
    put_str(ENTRY_SESSION_ID, session_id, buf);
    put_message_start(ENTRY_RECORD, record_len, buf);
    put_varint(RECORD_INDEX, record.index, buf);
    put_varint(RECORD_TIMESTAMP, record.timestamp as u64, buf);
    put_message_start(tag, inner_len, buf);
    match &record.body {
        Some(Body::Comment(added)) => put_added(added, nested_len, buf),
        Some(Body::Edit(edit)) => put_edit(edit, nested_len, buf),
        _ => unreachable!("other records went to prost above"),
    }
}

/// An `int32` as protobuf encodes it: sign-extended to 64 bits.
fn int32(value: i32) -> u64 {
    i64::from(value) as u64
}

// CommentAdded: string user_id = 1; uint64 client_sequence = 2;
// codereview.v1.Comment comment = 3.
fn added_len(added: &CommentAdded, comment_len: usize) -> usize {
    str_len(1, &added.user_id)
        + varint_len(2, added.client_sequence)
        + added
            .comment
            .as_ref()
            .map_or(0, |_| message_len(3, comment_len))
}

fn put_added(added: &CommentAdded, comment_len: usize, buf: &mut impl BufMut) {
    put_str(1, &added.user_id, buf);
    put_varint(2, added.client_sequence, buf);
    if let Some(comment) = &added.comment {
        put_message_start(3, comment_len, buf);
        put_str(1, &comment.comment_id, buf);
        put_varint(2, int32(comment.line_number), buf);
        put_str(3, &comment.text, buf);
        put_str(4, &comment.file_path, buf);
    }
}

// Comment: string comment_id = 1; int32 line_number = 2; string text = 3;
// string file_path = 4.
fn comment_len(comment: &Comment) -> usize {
    str_len(1, &comment.comment_id)
        + varint_len(2, int32(comment.line_number))
        + str_len(3, &comment.text)
        + str_len(4, &comment.file_path)
}

// Edit: string user_id = 1; uint64 client_sequence = 2; string file_path = 3;
// int32 base = 4; bool incoming_wins = 5; LineOp op = 6.
fn edit_len(edit: &Edit, op_len: usize) -> usize {
    str_len(1, &edit.user_id)
        + varint_len(2, edit.client_sequence)
        + str_len(3, &edit.file_path)
        + varint_len(4, int32(edit.base))
        + varint_len(5, u64::from(edit.incoming_wins))
        + edit.op.as_ref().map_or(0, |_| message_len(6, op_len))
}

fn put_edit(edit: &Edit, op_len: usize, buf: &mut impl BufMut) {
    put_str(1, &edit.user_id, buf);
    put_varint(2, edit.client_sequence, buf);
    put_str(3, &edit.file_path, buf);
    put_varint(4, int32(edit.base), buf);
    put_varint(5, u64::from(edit.incoming_wins), buf);
    if let Some(op) = &edit.op {
        put_message_start(6, op_len, buf);
        put_varint(1, int32(op.op), buf);
        put_varint(2, u64::from(op.line), buf);
        put_str(3, &op.text, buf);
    }
}

// LineOp: codereview.v1.CodeEdit.Op op = 1; uint32 line = 2; string text = 3.
fn op_len(op: &LineOp) -> usize {
    varint_len(1, int32(op.op)) + varint_len(2, u64::from(op.line)) + str_len(3, &op.text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::store::{Created, WalEntry};
    use proptest::prelude::*;
    use prost::Message;

    fn assert_as_prost(session_id: &str, record: &Record) {
        let mut borrowed = Vec::new();
        encode(&mut borrowed, session_id, record);
        let owned = WalEntry {
            session_id: session_id.to_owned(),
            record: Some(record.clone()),
        };
        assert_eq!(borrowed, owned.encode_to_vec());
        assert_eq!(WalEntry::decode(&borrowed[..]).unwrap(), owned);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-zü ]{1,8}", "x{120,200}"]
    }

    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), 1u64..200, Just(u64::MAX)]
    }

    fn int() -> impl Strategy<Value = i32> {
        prop_oneof![Just(0), -3i32..300, Just(i32::MIN), Just(i32::MAX)]
    }

    fn comment() -> impl Strategy<Value = Option<Comment>> {
        proptest::option::of((text(), int(), text(), text()).prop_map(
            |(comment_id, line_number, text, file_path)| Comment {
                comment_id,
                line_number,
                text,
                file_path,
            },
        ))
    }

    fn op() -> impl Strategy<Value = Option<LineOp>> {
        proptest::option::of(
            (int(), any::<u32>(), text()).prop_map(|(op, line, text)| LineOp { op, line, text }),
        )
    }

    fn body() -> impl Strategy<Value = Option<Body>> {
        prop_oneof![
            (text(), number(), comment()).prop_map(|(user_id, client_sequence, comment)| {
                Some(Body::Comment(CommentAdded {
                    user_id,
                    client_sequence,
                    comment,
                }))
            }),
            (text(), number(), text(), int(), any::<bool>(), op()).prop_map(
                |(user_id, client_sequence, file_path, base, incoming_wins, op)| {
                    Some(Body::Edit(Edit {
                        user_id,
                        client_sequence,
                        file_path,
                        base,
                        incoming_wins,
                        op,
                    }))
                }
            ),
            (text(), number()).prop_map(|(session_id, epoch)| {
                Some(Body::Created(Created { session_id, epoch }))
            }),
            Just(None),
        ]
    }

    proptest! {
        #[test]
        fn every_record_is_encoded_as_prost_encodes_the_owned_entry(
            session_id in text(),
            index in number(),
            timestamp in prop_oneof![Just(0i64), -5i64..5, Just(1_700_000_000_000i64), Just(i64::MIN)],
            body in body(),
        ) {
            assert_as_prost(&session_id, &Record { index, timestamp, body });
        }
    }
}
