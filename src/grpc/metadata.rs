//! Custom metadata: the application's headers and trailers, minus the ones the
//! protocol reserves. Keys ending in `-bin` carry binary values, base64-encoded
//! on the wire (emitted unpadded; padded or not accepted; several values joined
//! with `,` are split before decoding).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::base64::{self, Alphabet};

/// Why a metadata entry cannot be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    InvalidKey(String),
    ReservedKey(String),
    InvalidValue(String),
    BinaryKeyRequired(String),
}

impl std::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetadataError::InvalidKey(k) => write!(f, "invalid metadata key {k:?}"),
            MetadataError::ReservedKey(k) => write!(f, "metadata key {k:?} is reserved"),
            MetadataError::InvalidValue(k) => write!(f, "invalid value for metadata key {k:?}"),
            MetadataError::BinaryKeyRequired(k) => {
                write!(f, "binary metadata needs a key ending in -bin, got {k:?}")
            }
        }
    }
}

impl std::error::Error for MetadataError {}

/// Headers the gRPC protocol or HTTP/2 own; never exposed as custom metadata.
fn is_reserved(name: &str) -> bool {
    name.starts_with(':')
        || name.starts_with("grpc-")
        || matches!(
            name,
            "content-type" | "te" | "content-length" | "connection" | "user-agent" | "host"
        )
}

/// Custom metadata of a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    headers: HeaderMap,
}

impl Metadata {
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// The custom metadata found in a header block.
    pub fn from_headers(headers: &HeaderMap) -> Metadata {
        let mut out = HeaderMap::new();
        for (name, value) in headers {
            if !is_reserved(name.as_str()) {
                out.append(name.clone(), value.clone());
            }
        }
        Metadata { headers: out }
    }

    pub fn len(&self) -> usize {
        self.headers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Whether the key has a value (ASCII or not).
    pub fn contains_key(&self, key: &str) -> bool {
        self.headers.contains_key(key)
    }

    /// An ASCII value (the first, when the key repeats).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers.get(key).and_then(|v| v.to_str().ok())
    }

    /// All binary values of a `-bin` key, decoded. Invalid base64 is an error
    /// for that value only.
    pub fn get_bin_all(&self, key: &str) -> Vec<Result<Vec<u8>, base64::InvalidBase64>> {
        let mut out = Vec::new();
        for value in self.headers.get_all(key) {
            for part in value.as_bytes().split(|&b| b == b',') {
                out.push(base64::decode(part.trim_ascii(), Alphabet::Standard));
            }
        }
        out
    }

    /// The first binary value of a `-bin` key.
    pub fn get_bin(&self, key: &str) -> Option<Result<Vec<u8>, base64::InvalidBase64>> {
        self.get_bin_all(key).into_iter().next()
    }

    fn key(key: &str) -> Result<HeaderName, MetadataError> {
        let valid = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"_-.".contains(&b));
        if !valid {
            return Err(MetadataError::InvalidKey(key.to_owned()));
        }
        if is_reserved(key) {
            return Err(MetadataError::ReservedKey(key.to_owned()));
        }
        HeaderName::from_bytes(key.as_bytes()).map_err(|_| MetadataError::InvalidKey(key.into()))
    }

    /// Adds an ASCII value (printable ASCII and space, per the spec).
    pub fn append(&mut self, key: &str, value: &str) -> Result<(), MetadataError> {
        if key.ends_with("-bin") {
            return self.append_bin(key, value.as_bytes());
        }
        let name = Self::key(key)?;
        if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(MetadataError::InvalidValue(key.to_owned()));
        }
        let value =
            HeaderValue::from_str(value).map_err(|_| MetadataError::InvalidValue(key.into()))?;
        self.headers.append(name, value);
        Ok(())
    }

    /// Adds a binary value under a `-bin` key.
    pub fn append_bin(&mut self, key: &str, value: &[u8]) -> Result<(), MetadataError> {
        if !key.ends_with("-bin") {
            return Err(MetadataError::BinaryKeyRequired(key.to_owned()));
        }
        let name = Self::key(key)?;
        let encoded = base64::encode(value, Alphabet::Standard);
        let value =
            HeaderValue::from_str(&encoded).map_err(|_| MetadataError::InvalidValue(key.into()))?;
        self.headers.append(name, value);
        Ok(())
    }

    /// Copies a raw entry (as received) from another metadata map, so a value
    /// can be echoed byte for byte.
    pub fn copy_from(&mut self, other: &Metadata, key: &str) {
        if let Ok(name) = HeaderName::from_bytes(key.as_bytes()) {
            for value in other.headers.get_all(&name) {
                self.headers.append(name.clone(), value.clone());
            }
        }
    }

    /// Writes every entry into a header block.
    pub fn write_into(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
    }

    /// Iterates over (key, raw value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_are_filtered() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("grpc-timeout", HeaderValue::from_static("1S"));
        headers.insert("x-custom", HeaderValue::from_static("v"));
        let md = Metadata::from_headers(&headers);
        assert_eq!(md.len(), 1);
        assert_eq!(md.get("x-custom"), Some("v"));
    }

    #[test]
    fn binary_values_round_trip_and_split_on_comma() {
        let mut md = Metadata::new();
        md.append_bin("x-trace-bin", &[0xab, 0xab, 0xab]).unwrap();
        md.append_bin("x-trace-bin", &[0, 1]).unwrap();
        let mut headers = HeaderMap::new();
        md.write_into(&mut headers);
        assert_eq!(headers["x-trace-bin"], "q6ur");
        let back = Metadata::from_headers(&headers);
        let values: Vec<_> = back.get_bin_all("x-trace-bin").into_iter().collect();
        assert_eq!(values, vec![Ok(vec![0xab, 0xab, 0xab]), Ok(vec![0, 1])]);

        let mut joined = HeaderMap::new();
        joined.insert("k-bin", HeaderValue::from_static("q6ur, AAE="));
        let md = Metadata::from_headers(&joined);
        assert_eq!(
            md.get_bin_all("k-bin"),
            vec![Ok(vec![0xab, 0xab, 0xab]), Ok(vec![0, 1])]
        );
    }

    #[test]
    fn invalid_keys_and_values_are_refused() {
        let mut md = Metadata::new();
        assert!(matches!(
            md.append("Upper", "v"),
            Err(MetadataError::InvalidKey(_))
        ));
        assert!(matches!(
            md.append("grpc-x", "v"),
            Err(MetadataError::ReservedKey(_))
        ));
        assert!(matches!(
            md.append("k", "a\nb"),
            Err(MetadataError::InvalidValue(_))
        ));
        assert!(matches!(
            md.append_bin("k", b"x"),
            Err(MetadataError::BinaryKeyRequired(_))
        ));
        assert!(md.is_empty());
    }
}
