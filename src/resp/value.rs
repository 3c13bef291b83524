//! RESP2 values: commands out, replies in.
//!
//! The decoder is pure and bounded: it takes whole elements off the front of
//! a buffer and keeps the arrays it is in the middle of, so bytes arriving
//! in any pieces are each read once (a reply is never parsed again from its
//! start). Everything Redis says is input: a line, a bulk, an array, the
//! nesting and the reply as a whole have limits, and what breaks them is an
//! error naming the limit, never a panic or an allocation the bytes do not
//! pay for.

use bytes::{Buf, Bytes, BytesMut};

/// The longest status, error or number line (its text).
pub const MAX_LINE: usize = 64 * 1024;
/// The largest bulk string: Redis's own default `proto-max-bulk-len`.
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// The most bytes in one reply, counting with each value's bytes the
/// memory its [`Value`] takes (a 4-byte `:0` holds 40 bytes).
pub const MAX_REPLY_BYTES: usize = 1024 * 1024 * 1024;
/// The most values in one reply, counting every nested one (each costs
/// memory beyond its bytes).
pub const MAX_REPLY_VALUES: usize = 8 * 1024 * 1024;
/// The deepest nesting of arrays (our replies go four deep).
pub const MAX_DEPTH: usize = 16;
/// Room reserved for an array before its values arrive.
const PREALLOCATE: usize = 64;

/// A reply, or a part of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A null bulk or null array.
    Nil,
    Int(i64),
    /// A simple string (`+OK`).
    Status(String),
    /// An error reply (`-ERR ...`): the command was refused.
    Error(String),
    Bulk(Bytes),
    Array(Vec<Value>),
}

/// Why a reply cannot be read; the connection is unusable after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    what: String,
    /// Well formed as far as it went, but past a size bound: the reply,
    /// not Redis, is the problem (asking for less can work).
    too_big: bool,
}

impl DecodeError {
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn is_too_big(&self) -> bool {
        self.too_big
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.too_big {
            true => write!(f, "a Redis reply too big to take: {}", self.what),
            false => write!(f, "a malformed Redis reply: {}", self.what),
        }
    }
}

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError {
        what: what.into(),
        too_big: false,
    }
}

fn too_big(what: impl Into<String>) -> DecodeError {
    DecodeError {
        what: what.into(),
        too_big: true,
    }
}

/// An array being filled.
#[derive(Debug)]
struct Open {
    items: Vec<Value>,
    left: usize,
}

/// One element off the front of the buffer.
enum Element {
    Value(Value),
    /// An array header: this many values follow.
    Array(usize),
}

/// Reads replies from a buffer that fills in pieces (see the module doc).
#[derive(Debug, Default)]
pub struct Decoder {
    open: Vec<Open>,
    reply_bytes: usize,
    reply_values: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// The next whole reply, taking its bytes off `buf`; None: more bytes
    /// are needed (what was read so far is kept, here and in `buf`).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, DecodeError> {
        loop {
            let mut value = match self.element(buf)? {
                None => return Ok(None),
                Some(Element::Value(value)) => value,
                Some(Element::Array(0)) => Value::Array(Vec::new()),
                Some(Element::Array(len)) => {
                    if self.open.len() == MAX_DEPTH {
                        return Err(malformed(format!(
                            "arrays nested more than {MAX_DEPTH} deep"
                        )));
                    }
                    self.open.push(Open {
                        items: Vec::with_capacity(len.min(PREALLOCATE)),
                        left: len,
                    });
                    continue;
                }
            };
            // Close every array this value completes.
            loop {
                let Some(open) = self.open.last_mut() else {
                    self.reply_bytes = 0;
                    self.reply_values = 0;
                    return Ok(Some(value));
                };
                open.items.push(value);
                open.left -= 1;
                if open.left > 0 {
                    break;
                }
                let done = self.open.pop().expect("the last array");
                value = Value::Array(done.items);
            }
        }
    }

    /// Takes one element (a scalar, or an array's header) off `buf` when
    /// it is all there.
    fn element(&mut self, buf: &mut BytesMut) -> Result<Option<Element>, DecodeError> {
        let search = &buf[..buf.len().min(MAX_LINE + 3)];
        let Some(end) = search.windows(2).position(|w| w == b"\r\n") else {
            if buf.len() > MAX_LINE + 2 {
                return Err(malformed(format!("a line longer than {MAX_LINE} bytes")));
            }
            return Ok(None);
        };
        if end == 0 {
            return Err(malformed("an empty line"));
        }
        let kind = buf[0];
        let line = &buf[1..end];
        let header = end + 2;
        let element = match kind {
            b'+' | b'-' => {
                let text = String::from_utf8_lossy(line).into_owned();
                Element::Value(if kind == b'+' {
                    Value::Status(text)
                } else {
                    Value::Error(text)
                })
            }
            b':' => Element::Value(Value::Int(number(line)?)),
            b'$' => match number(line)? {
                -1 => Element::Value(Value::Nil),
                len if len < 0 => return Err(malformed(format!("a bulk of length {len}"))),
                len => {
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    if len > MAX_BULK {
                        return Err(too_big(format!(
                            "a bulk of {len} bytes (at most {MAX_BULK})"
                        )));
                    }
                    let total = header + len + 2;
                    self.within_bounds(total)?;
                    if buf.len() < total {
                        return Ok(None);
                    }
                    if &buf[header + len..total] != b"\r\n" {
                        return Err(malformed("a bulk not ended by CRLF"));
                    }
                    self.count(total)?;
                    buf.advance(header);
                    let bytes = buf.split_to(len).freeze();
                    buf.advance(2);
                    return Ok(Some(Element::Value(Value::Bulk(bytes))));
                }
            },
            b'*' => match number(line)? {
                -1 => Element::Value(Value::Nil),
                len if len < 0 => return Err(malformed(format!("an array of length {len}"))),
                len => {
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    if len > MAX_REPLY_VALUES {
                        return Err(too_big(format!(
                            "an array of {len} values (at most {MAX_REPLY_VALUES} in a reply)"
                        )));
                    }
                    Element::Array(len)
                }
            },
            other => {
                return Err(malformed(format!(
                    "a reply of type {:?} (RESP2 has + - : $ *)",
                    char::from(other)
                )));
            }
        };
        self.count(header)?;
        buf.advance(header);
        Ok(Some(element))
    }

    /// Whether `bytes` more still fit the reply's bounds.
    fn within_bounds(&self, bytes: usize) -> Result<(), DecodeError> {
        if self.reply_bytes + bytes > MAX_REPLY_BYTES {
            return Err(too_big(format!(
                "a reply of more than {MAX_REPLY_BYTES} bytes"
            )));
        }
        if self.reply_values >= MAX_REPLY_VALUES {
            return Err(too_big(format!(
                "a reply of more than {MAX_REPLY_VALUES} values"
            )));
        }
        Ok(())
    }

    /// Counts one element of `bytes` into the reply, with the memory of
    /// the value it makes.
    fn count(&mut self, bytes: usize) -> Result<(), DecodeError> {
        let bytes = bytes + std::mem::size_of::<Value>();
        self.within_bounds(bytes)?;
        self.reply_bytes += bytes;
        self.reply_values += 1;
        Ok(())
    }
}

/// A RESP integer: an optional minus and 1 to 19 digits, fitting an i64.
fn number(line: &[u8]) -> Result<i64, DecodeError> {
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed(format!(
            "{:?} is not a number",
            String::from_utf8_lossy(&line[..line.len().min(32)])
        )));
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("a number out of range"))
}

/// Something that can be a command's argument.
pub trait Arg {
    fn write_arg(&self, out: &mut Vec<u8>);
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

impl Arg for [u8] {
    fn write_arg(&self, out: &mut Vec<u8>) {
        bulk(out, self);
    }
}

impl Arg for Vec<u8> {
    fn write_arg(&self, out: &mut Vec<u8>) {
        bulk(out, self);
    }
}

impl Arg for str {
    fn write_arg(&self, out: &mut Vec<u8>) {
        bulk(out, self.as_bytes());
    }
}

impl Arg for String {
    fn write_arg(&self, out: &mut Vec<u8>) {
        bulk(out, self.as_bytes());
    }
}

impl Arg for u64 {
    fn write_arg(&self, out: &mut Vec<u8>) {
        bulk(out, self.to_string().as_bytes());
    }
}

impl Arg for usize {
    fn write_arg(&self, out: &mut Vec<u8>) {
        bulk(out, self.to_string().as_bytes());
    }
}

impl<T: Arg + ?Sized> Arg for &T {
    fn write_arg(&self, out: &mut Vec<u8>) {
        (**self).write_arg(out);
    }
}

/// A command: its name and arguments, encoded as they are added.
#[derive(Debug, Clone)]
pub struct Command {
    args: usize,
    body: Vec<u8>,
}

impl Command {
    pub fn new(name: &str) -> Command {
        let mut command = Command {
            args: 0,
            body: Vec::new(),
        };
        command.arg(name);
        command
    }

    pub fn arg(&mut self, arg: impl Arg) -> &mut Command {
        self.args += 1;
        arg.write_arg(&mut self.body);
        self
    }

    /// Appends the command, as a RESP array of bulk strings, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(b'*');
        out.extend_from_slice(self.args.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(value) = decoder.decode(&mut buf)? {
            out.push(value);
        }
        assert!(buf.is_empty() || decoder.decode(&mut buf)?.is_none());
        Ok(out)
    }

    fn bulk(text: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn every_kind_of_reply_reads() {
        let got =
            decode_all(b"+OK\r\n-ERR no\r\n:-42\r\n$3\r\nabc\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n")
                .unwrap();
        assert_eq!(
            got,
            vec![
                Value::Status("OK".into()),
                Value::Error("ERR no".into()),
                Value::Int(-42),
                bulk("abc"),
                bulk(""),
                Value::Nil,
                Value::Nil,
                Value::Array(vec![]),
            ]
        );
        let nested = decode_all(b"*2\r\n*2\r\n$1\r\na\r\n:1\r\n*1\r\n*0\r\n").unwrap();
        assert_eq!(
            nested,
            vec![Value::Array(vec![
                Value::Array(vec![bulk("a"), Value::Int(1)]),
                Value::Array(vec![Value::Array(vec![])]),
            ])]
        );
    }

    #[test]
    fn a_reply_in_pieces_reads_as_a_whole() {
        let whole: &[u8] = b"*3\r\n$5\r\nhello\r\n*2\r\n:7\r\n$-1\r\n+OK\r\n:9\r\n";
        let expected = decode_all(whole).unwrap();
        for split in 0..whole.len() {
            for second in split..whole.len() {
                let mut decoder = Decoder::new();
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for piece in [&whole[..split], &whole[split..second], &whole[second..]] {
                    buf.extend_from_slice(piece);
                    while let Some(value) = decoder.decode(&mut buf).unwrap() {
                        got.push(value);
                    }
                }
                assert_eq!(got, expected, "split at {split} and {second}");
            }
        }
    }

    #[test]
    fn bad_replies_are_errors_naming_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"?what\r\n", "type"),
            (b"$3\r\nabcd\r\n", "CRLF"),
            (b"$-2\r\n", "length -2"),
            (b"*-5\r\n", "length -5"),
            (b":12a\r\n", "not a number"),
            (b":99999999999999999999\r\n", "not a number"),
            (b"$600000000\r\n", "at most"),
            (b"*99999999\r\n", "at most"),
            (b"\r\n", "empty line"),
        ];
        for (bytes, expected) in cases {
            let error = decode_all(bytes).unwrap_err();
            assert!(error.what().contains(expected), "{bytes:?}: {error}");
            let too_big = *expected == "at most";
            assert_eq!(error.is_too_big(), too_big, "{bytes:?}: {error}");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(
            decode_all(deep.as_bytes())
                .unwrap_err()
                .what()
                .contains("nested")
        );
        let long_line = format!("+{}", "x".repeat(MAX_LINE + 10));
        assert!(
            decode_all(long_line.as_bytes())
                .unwrap_err()
                .what()
                .contains("longer")
        );
    }

    #[test]
    fn a_promised_array_allocates_only_for_what_arrives() {
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::from(&b"*8000000\r\n:1\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert!(decoder.open[0].items.capacity() <= PREALLOCATE);
    }

    #[test]
    fn commands_encode_as_arrays_of_bulks() {
        let mut out = Vec::new();
        let mut set = Command::new("SET");
        set.arg("k").arg(b"v\r\n".as_slice()).arg(42u64);
        set.encode(&mut out);
        assert_eq!(
            out,
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n42\r\n".to_vec()
        );
        let decoded = decode_all(&out).unwrap();
        assert_eq!(
            decoded,
            vec![Value::Array(vec![
                bulk("SET"),
                bulk("k"),
                bulk("v\r\n"),
                bulk("42")
            ])]
        );
    }
}
