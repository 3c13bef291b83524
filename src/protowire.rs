//! Protobuf fields written by hand, for the few messages encoded on every
//! event from borrowed parts (a server event's envelope, a log record):
//! each length is worked out once, where prost's nested encoding works out
//! a nested message's length again at every level above it. The bytes are
//! exactly prost's (proto3: zero numbers and empty strings are left out).
//! Callers test their messages against prost's encoding.

use bytes::BufMut;
use prost::encoding::{self, WireType};

/// A varint: a value below 128 (nearly every key, length and small number
/// here) is one byte put inline; a larger one goes to prost.
#[inline]
pub fn put_varint_value(value: u64, buf: &mut impl BufMut) {
    if value < 0x80 {
        buf.put_u8(value as u8);
    } else {
        encoding::encode_varint(value, buf);
    }
}

#[inline]
pub fn put_key(tag: u32, wire_type: WireType, buf: &mut impl BufMut) {
    put_varint_value(u64::from(tag << 3 | wire_type as u32), buf);
}

/// Bytes of a varint field (nothing for zero). An `int32` or `int64` is
/// passed as prost encodes it: sign-extended to 64 bits.
pub fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        encoding::key_len(tag) + encoding::encoded_len_varint(value)
    }
}

pub fn put_varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        put_key(tag, WireType::Varint, buf);
        put_varint_value(value, buf);
    }
}

/// Bytes of a string field (nothing for an empty one).
pub fn str_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        message_len(tag, value.len())
    }
}

#[inline]
pub fn put_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_key(tag, WireType::LengthDelimited, buf);
        put_varint_value(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

/// Bytes of a present message field whose own encoding is `body` bytes.
pub fn message_len(tag: u32, body: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(body as u64) + body
}

/// Starts a message field whose own encoding, `body` bytes, follows.
pub fn put_message_start(tag: u32, body: usize, buf: &mut impl BufMut) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint_value(body as u64, buf);
}
