//! Base64 (RFC 4648): the standard alphabet for `-bin` metadata (emitted
//! without padding, accepted with or without, as the gRPC spec says) and the
//! URL-safe alphabet for tokens. Pure and total.

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Which alphabet to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    Standard,
    UrlSafe,
}

impl Alphabet {
    fn table(self) -> &'static [u8; 64] {
        match self {
            Alphabet::Standard => STANDARD,
            Alphabet::UrlSafe => URL_SAFE,
        }
    }

    fn value(self, byte: u8) -> Option<u8> {
        match byte {
            b'A'..=b'Z' => Some(byte - b'A'),
            b'a'..=b'z' => Some(byte - b'a' + 26),
            b'0'..=b'9' => Some(byte - b'0' + 52),
            b'+' if self == Alphabet::Standard => Some(62),
            b'/' if self == Alphabet::Standard => Some(63),
            b'-' if self == Alphabet::UrlSafe => Some(62),
            b'_' if self == Alphabet::UrlSafe => Some(63),
            _ => None,
        }
    }
}

/// The input is not base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidBase64;

impl std::fmt::Display for InvalidBase64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid base64")
    }
}

impl std::error::Error for InvalidBase64 {}

/// Encodes without padding.
pub fn encode(input: &[u8], alphabet: Alphabet) -> String {
    let table = alphabet.table();
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(table[index as usize]));
        }
    }
    out
}

/// Decodes, accepting input with or without `=` padding. Rejects characters
/// outside the alphabet, misplaced padding and non-zero trailing bits.
pub fn decode(input: &[u8], alphabet: Alphabet) -> Result<Vec<u8>, InvalidBase64> {
    let trimmed = match input {
        [rest @ .., b'=', b'='] if input.len().is_multiple_of(4) => rest,
        [rest @ .., b'='] if input.len().is_multiple_of(4) => rest,
        _ => input,
    };
    if trimmed.len() % 4 == 1 {
        return Err(InvalidBase64);
    }
    let mut out = Vec::with_capacity(trimmed.len() / 4 * 3 + 2);
    for chunk in trimmed.chunks(4) {
        let mut n: u32 = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = alphabet.value(c).ok_or(InvalidBase64)?;
            n |= u32::from(v) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let produced = chunk.len() - 1;
        // Bits below the produced bytes must be zero (canonical encoding).
        let unused_bits = n & ((1u32 << (24 - 8 * produced)) - 1);
        if chunk.len() < 4 && unused_bits != 0 {
            return Err(InvalidBase64);
        }
        out.extend_from_slice(&bytes[..produced]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let vectors: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain, Alphabet::Standard), encoded);
            assert_eq!(
                decode(encoded.as_bytes(), Alphabet::Standard).unwrap(),
                plain
            );
        }
        assert_eq!(decode(b"Zg==", Alphabet::Standard).unwrap(), b"f");
        assert_eq!(decode(b"Zm8=", Alphabet::Standard).unwrap(), b"fo");
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(b"Z", Alphabet::Standard).is_err());
        assert!(decode(b"Zh", Alphabet::Standard).is_err()); // non-zero trailing bits
        assert!(decode(b"Zm9v!", Alphabet::Standard).is_err());
        assert!(decode(b"Zg=", Alphabet::Standard).is_err());
        assert!(decode(b"=Zg=", Alphabet::Standard).is_err());
        assert!(decode(b"-_", Alphabet::Standard).is_err());
        assert!(decode(b"+/", Alphabet::UrlSafe).is_err());
    }

    #[test]
    fn url_safe_round_trip() {
        let data: Vec<u8> = (0..=255).collect();
        let text = encode(&data, Alphabet::UrlSafe);
        assert!(!text.contains('+') && !text.contains('/'));
        assert_eq!(decode(text.as_bytes(), Alphabet::UrlSafe).unwrap(), data);
    }
}
