//! Percent-encoding of `grpc-message`, as the gRPC HTTP/2 spec defines it:
//! bytes 0x20..=0x7E except `%` pass through; every other byte of the UTF-8
//! text becomes `%XX`. Decoding never fails: a broken escape is kept as is and
//! invalid UTF-8 is replaced, as the spec asks of receivers.

/// Encodes a status message for the `grpc-message` header.
pub fn encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0f));
        }
    }
    out
}

/// Decodes a `grpc-message` value.
pub fn decode(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%'
            && i + 2 < value.len()
            && let (Some(hi), Some(lo)) = (hex_value(value[i + 1]), hex_value(value[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble)])
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_status_message_round_trips() {
        let msg = "\t\ntest with whitespace\r\nand Unicode BMP \u{263A} and non-BMP \u{1F608}\t\n";
        let encoded = encode(msg);
        assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert_eq!(decode(encoded.as_bytes()), msg);
    }

    #[test]
    fn percent_itself_is_escaped() {
        assert_eq!(encode("100%"), "100%25");
        assert_eq!(decode(b"100%25"), "100%");
    }

    #[test]
    fn broken_escapes_are_kept() {
        assert_eq!(decode(b"%"), "%");
        assert_eq!(decode(b"%4"), "%4");
        assert_eq!(decode(b"%zz ok"), "%zz ok");
        assert_eq!(decode(b"%41%42"), "AB");
        // A lone byte that is not UTF-8 is replaced, not an error.
        assert_eq!(decode(b"%FF"), "\u{FFFD}");
    }
}
