//! A server event's `SessionMessage`, encoded from borrowed parts: the
//! session's and user's ids and the payload stay where they are (in the
//! session, the log record, the comment), instead of being copied into an
//! owned message that is dropped right after its one encoding. The bytes are
//! exactly prost's encoding of the same `SessionMessage` (tested below).
//! An acknowledgement's payload is borrowed too ([`AckRef`]): its comment id
//! stays in the session's shared string.

use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

use crate::protowire::{message_len, put_message_start, put_str, put_varint, str_len, varint_len};

use crate::pb::codereview::{Ack, session_message::Payload};

/// The fields of a `SessionMessage`, borrowed. Encode-only: decoding one
/// skips every field (decode into [`crate::pb::codereview::SessionMessage`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Envelope<'a> {
    pub session_id: &'a str,
    pub timestamp: i64,
    pub user_id: &'a str,
    pub payload: Carried<'a>,
    pub sequence: u64,
    pub client_sequence: u64,
}

/// The envelope's `payload` oneof: nothing, a payload as it is, or an
/// acknowledgement from borrowed parts.
#[derive(Debug, Clone, Copy, Default)]
pub enum Carried<'a> {
    #[default]
    Nothing,
    Payload(&'a Payload),
    Ack(AckRef<'a>),
}

/// The fields of an `Ack`, borrowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckRef<'a> {
    pub client_sequence: u64,
    pub sequence: u64,
    pub version: i32,
    pub duplicate: bool,
    pub noop: bool,
    pub comment_id: &'a str,
}

// The field number of the `ack` payload, and those of `Ack`.
const ACK: u32 = 12;
const ACK_CLIENT_SEQUENCE: u32 = 1;
const ACK_SEQUENCE: u32 = 2;
const ACK_VERSION: u32 = 3;
const ACK_DUPLICATE: u32 = 4;
const ACK_NOOP: u32 = 5;
const ACK_COMMENT_ID: u32 = 6;

impl AckRef<'_> {
    /// The same acknowledgement, owned (to keep, or to put in a message).
    pub fn to_ack(&self) -> Ack {
        Ack {
            client_sequence: self.client_sequence,
            sequence: self.sequence,
            version: self.version,
            duplicate: self.duplicate,
            noop: self.noop,
            comment_id: self.comment_id.to_owned(),
        }
    }

    fn body_len(&self) -> usize {
        varint_len(ACK_CLIENT_SEQUENCE, self.client_sequence)
            + varint_len(ACK_SEQUENCE, self.sequence)
            // int32 is encoded sign-extended to 64 bits (as prost does).
            + varint_len(ACK_VERSION, i64::from(self.version) as u64)
            + varint_len(ACK_DUPLICATE, u64::from(self.duplicate))
            + varint_len(ACK_NOOP, u64::from(self.noop))
            + str_len(ACK_COMMENT_ID, self.comment_id)
    }

    /// Its length as the `ack` field of a `SessionMessage`.
    fn field_len(&self) -> usize {
        message_len(ACK, self.body_len())
    }

    fn put_field(&self, buf: &mut impl BufMut) {
        put_message_start(ACK, self.body_len(), buf);
        put_varint(ACK_CLIENT_SEQUENCE, self.client_sequence, buf);
        put_varint(ACK_SEQUENCE, self.sequence, buf);
        put_varint(ACK_VERSION, i64::from(self.version) as u64, buf);
        put_varint(ACK_DUPLICATE, u64::from(self.duplicate), buf);
        put_varint(ACK_NOOP, u64::from(self.noop), buf);
        put_str(ACK_COMMENT_ID, self.comment_id, buf);
    }
}

// The field numbers of `SessionMessage` (proto/codereview/v1).
const SESSION_ID: u32 = 1;
const TIMESTAMP: u32 = 2;
const USER_ID: u32 = 3;
const SEQUENCE: u32 = 8;
const CLIENT_SEQUENCE: u32 = 9;

impl prost::Message for Envelope<'_> {
    // In prost's order: fields by their lowest tag, the oneof at 4.
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(SESSION_ID, self.session_id, buf);
        // int64 is encoded as the two's-complement u64 (as prost does).
        put_varint(TIMESTAMP, self.timestamp as u64, buf);
        put_str(USER_ID, self.user_id, buf);
        match &self.payload {
            Carried::Nothing => {}
            Carried::Payload(payload) => payload.encode(buf),
            Carried::Ack(ack) => ack.put_field(buf),
        }
        put_varint(SEQUENCE, self.sequence, buf);
        put_varint(CLIENT_SEQUENCE, self.client_sequence, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        str_len(SESSION_ID, self.session_id)
            + varint_len(TIMESTAMP, self.timestamp as u64)
            + str_len(USER_ID, self.user_id)
            + match &self.payload {
                Carried::Nothing => 0,
                Carried::Payload(payload) => payload.encoded_len(),
                Carried::Ack(ack) => ack.field_len(),
            }
            + varint_len(SEQUENCE, self.sequence)
            + varint_len(CLIENT_SEQUENCE, self.client_sequence)
    }

    fn clear(&mut self) {
        *self = Envelope::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::codereview::{
        Ack, CodeEdit, Comment, CursorPosition, SessionMessage, code_edit,
    };
    use prost::Message;

    fn owned(envelope: &Envelope<'_>) -> SessionMessage {
        let payload = match envelope.payload {
            Carried::Nothing => None,
            Carried::Payload(payload) => Some(payload.clone()),
            Carried::Ack(ack) => Some(Payload::Ack(ack.to_ack())),
        };
        SessionMessage {
            session_id: envelope.session_id.to_owned(),
            timestamp: envelope.timestamp,
            user_id: envelope.user_id.to_owned(),
            payload,
            sequence: envelope.sequence,
            client_sequence: envelope.client_sequence,
        }
    }

    fn payloads() -> Vec<Option<Payload>> {
        vec![
            None,
            Some(Payload::Comment(Comment {
                comment_id: "c42".into(),
                line_number: 7,
                text: "looks off by one".into(),
                file_path: "src/lib.rs".into(),
            })),
            Some(Payload::Comment(Comment::default())),
            Some(Payload::Ack(Ack {
                client_sequence: 3,
                sequence: 300,
                version: 12,
                duplicate: true,
                noop: false,
                comment_id: "mine".into(),
            })),
            Some(Payload::Cursor(CursorPosition {
                file_path: "a.rs".into(),
                line: -1,
                column: 80,
            })),
            Some(Payload::Edit(CodeEdit {
                file_path: "a.rs".into(),
                line_number: 2,
                content: "x".repeat(300),
                version: 5,
                op: code_edit::Op::Insert as i32,
            })),
        ]
    }

    fn acks() -> Vec<AckRef<'static>> {
        vec![
            AckRef::default(),
            AckRef {
                client_sequence: 3,
                sequence: 300,
                version: 12,
                duplicate: true,
                noop: false,
                comment_id: "c300",
            },
            AckRef {
                client_sequence: u64::MAX,
                sequence: 1,
                version: -1,
                duplicate: false,
                noop: true,
                comment_id: "",
            },
            AckRef {
                version: i32::MAX,
                comment_id: "ü".repeat(100).leak(),
                ..AckRef::default()
            },
        ]
    }

    #[test]
    fn an_envelope_encodes_exactly_as_its_owned_message() {
        let long = "u".repeat(200);
        let ids = [("", ""), ("s", "alice"), ("review-1", long.as_str())];
        let numbers = [
            (0, 0, 0),
            (1_700_000_000_000, 1, 0),
            (-5, u64::MAX, 9),
            (i64::MIN, 128, u64::MAX),
        ];
        let payloads = payloads();
        let carried = payloads
            .iter()
            .map(|payload| payload.as_ref().map_or(Carried::Nothing, Carried::Payload))
            .chain(acks().into_iter().map(Carried::Ack))
            .collect::<Vec<_>>();
        for payload in carried {
            for (session_id, user_id) in ids {
                for (timestamp, sequence, client_sequence) in numbers {
                    let envelope = Envelope {
                        session_id,
                        timestamp,
                        user_id,
                        payload,
                        sequence,
                        client_sequence,
                    };
                    let message = owned(&envelope);
                    assert_eq!(envelope.encoded_len(), message.encoded_len());
                    assert_eq!(envelope.encode_to_vec(), message.encode_to_vec());
                    let decoded =
                        SessionMessage::decode(&envelope.encode_to_vec()[..]).expect("decodes");
                    assert_eq!(decoded, message);
                }
            }
        }
    }
}
