//! JSON read through the crate's own parser (`codereview::auth::json`),
//! shaped for assertions on the binary's output: `j["type"] == "ack"`,
//! `j["seq"].u64()`; a missing member reads as null, a value of another
//! kind than asked for fails the test.

use std::collections::BTreeMap;

use codereview::auth::json::{self, Value};

/// The most the tests read in one document (snapshots of large files).
const MAX_DOCUMENT: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

static NULL: Json = Json::Null;

impl From<Value> for Json {
    fn from(value: Value) -> Json {
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(b),
            Value::Number(n) => Json::Number(n),
            Value::String(s) => Json::String(s),
            Value::Array(items) => Json::Array(items.into_iter().map(Json::from).collect()),
            Value::Object(map) => {
                Json::Object(map.into_iter().map(|(k, v)| (k, v.into())).collect())
            }
        }
    }
}

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        json::parse_within(text.as_bytes(), MAX_DOCUMENT)
            .map(Json::from)
            .map_err(|e| e.to_string())
    }

    /// A JSON object, or None for anything else (log lines, other output).
    pub fn object_of(line: &str) -> Option<Json> {
        Json::parse(line)
            .ok()
            .filter(|j| matches!(j, Json::Object(_)))
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(map) => map.get(key),
            _ => None,
        }
    }

    /// The member `key` as a string, if it is one.
    pub fn str_of(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Json::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The string value; panics on anything else.
    pub fn str(&self) -> &str {
        match self {
            Json::String(s) => s,
            other => panic!("expected a JSON string, got {other}"),
        }
    }

    pub fn f64(&self) -> f64 {
        match self {
            Json::Number(n) => *n,
            other => panic!("expected a JSON number, got {other}"),
        }
    }

    pub fn i64(&self) -> i64 {
        let n = self.f64();
        assert!(
            n.fract() == 0.0 && n.abs() < 9.0e15,
            "expected an integer, got {n}"
        );
        n as i64
    }

    pub fn u64(&self) -> u64 {
        let n = self.i64();
        u64::try_from(n).unwrap_or_else(|_| panic!("expected an unsigned integer, got {n}"))
    }

    pub fn array(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            other => panic!("expected a JSON array, got {other}"),
        }
    }

    pub fn object(&self) -> &BTreeMap<String, Json> {
        match self {
            Json::Object(map) => map,
            other => panic!("expected a JSON object, got {other}"),
        }
    }

    /// An array of strings as a Vec.
    pub fn strings(&self) -> Vec<String> {
        self.array().iter().map(|s| s.str().to_owned()).collect()
    }
}

impl std::ops::Index<&str> for Json {
    type Output = Json;

    /// The member `key`, or null when missing.
    fn index(&self, key: &str) -> &Json {
        self.get(key).unwrap_or(&NULL)
    }
}

impl PartialEq<&str> for Json {
    fn eq(&self, other: &&str) -> bool {
        matches!(self, Json::String(s) if s == other)
    }
}

impl PartialEq<bool> for Json {
    fn eq(&self, other: &bool) -> bool {
        matches!(self, Json::Bool(b) if b == other)
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |f: &mut std::fmt::Formatter<'_>, items: Vec<String>, open, close| {
            write!(f, "{open}{}{close}", items.join(","))
        };
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Number(n) => write!(f, "{n}"),
            Json::String(s) => write!(f, "{s:?}"),
            Json::Array(items) => list(f, items.iter().map(Json::to_string).collect(), "[", "]"),
            Json::Object(map) => list(
                f,
                map.iter().map(|(k, v)| format!("{k:?}:{v}")).collect(),
                "{",
                "}",
            ),
        }
    }
}
