//! HS256 JSON Web Tokens (RFC 7519), minted and verified with the HMAC-SHA256
//! of *ring* (already linked for TLS). Verification is strict and bounded:
//! exactly three base64url parts, at most [`MAX_TOKEN_BYTES`], the header must
//! say `alg: HS256` (no `none`, no algorithm confusion), the signature is
//! checked in constant time before any claim is trusted, and the claims must
//! name a subject, a role and an expiry in the future.
//!
//! Claims: `sub` (the user), `role` (author, reviewer, observer),
//! `sessions` (array of session ids, or `"*"` for all), `exp` and `iat`
//! (seconds since the Unix epoch), optional `nbf`. Times are RFC 7519
//! NumericDates: JSON numbers, non-integer values allowed (truncated to whole
//! seconds); any other type is refused with the claim's name.

use std::collections::BTreeMap;

use ring::hmac;

use super::json::{self, Value};
use crate::grpc::base64::{self, Alphabet};
use crate::logging::push_json_string;
use crate::review::roles::Role;

/// The longest token accepted (header + claims + signature, base64url).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The shortest secret accepted: 256 bits, the HMAC-SHA256 block strength.
pub const MIN_SECRET_BYTES: usize = 32;
/// The largest NumericDate accepted, in magnitude (about 285 million years:
/// beyond it an f64 no longer holds whole seconds exactly).
const MAX_NUMERIC_DATE: f64 = 9.0e15;

/// Which sessions a token opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sessions {
    All,
    Only(Vec<String>),
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    pub role: Role,
    pub sessions: Sessions,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Why a token is refused; `reason` is a short label (for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub reason: &'static str,
    pub message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> TokenError {
    TokenError {
        reason,
        message: message.into(),
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TokenError {}

/// A signing and verification key.
pub struct Key {
    key: hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn new(secret: &[u8]) -> Result<Key, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret has {} bytes; HS256 needs at least {MIN_SECRET_BYTES} (e.g. head -c 32 /dev/urandom | base64)",
                secret.len()
            ));
        }
        Ok(Key {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// Mints a token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let mut payload = String::from("{\"sub\":");
        push_json_string(&mut payload, &claims.subject);
        payload.push_str(",\"role\":");
        push_json_string(&mut payload, claims.role.name());
        payload.push_str(",\"sessions\":");
        match &claims.sessions {
            Sessions::All => payload.push_str("\"*\""),
            Sessions::Only(ids) => {
                payload.push('[');
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        payload.push(',');
                    }
                    push_json_string(&mut payload, id);
                }
                payload.push(']');
            }
        }
        payload.push_str(&format!(
            ",\"iat\":{},\"exp\":{}}}",
            claims.issued_at, claims.expires_at
        ));
        let header = base64::encode(br#"{"alg":"HS256","typ":"JWT"}"#, Alphabet::UrlSafe);
        let body = base64::encode(payload.as_bytes(), Alphabet::UrlSafe);
        let signing_input = format!("{header}.{body}");
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            base64::encode(tag.as_ref(), Alphabet::UrlSafe)
        )
    }

    /// Verifies a token at time `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refuse("malformed", "token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse("malformed", "a token has three dot-separated parts"));
        };
        let signing_input = &token[..header.len() + 1 + body.len()];
        let decode = |part: &str, what: &str| {
            base64::decode(part.as_bytes(), Alphabet::UrlSafe)
                .map_err(|_| refuse("malformed", format!("the token's {what} is not base64url")))
        };
        let header_json = decode(header, "header")?;
        let header = json::parse(&header_json)
            .map_err(|e| refuse("malformed", format!("token header: {e}")))?;
        let header = header
            .as_object()
            .ok_or_else(|| refuse("malformed", "token header is not an object"))?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(refuse("bad_algorithm", "only HS256 tokens are accepted"));
        }
        let signature = decode(signature, "signature")?;
        hmac::verify(&self.key, signing_input.as_bytes(), &signature)
            .map_err(|_| refuse("bad_signature", "the token's signature does not verify"))?;
        let body = decode(body, "claims")?;
        let claims =
            json::parse(&body).map_err(|e| refuse("malformed", format!("token claims: {e}")))?;
        let claims = claims
            .as_object()
            .ok_or_else(|| refuse("malformed", "token claims are not an object"))?;
        parse_claims(claims, now)
    }
}

fn parse_claims(claims: &BTreeMap<String, Value>, now: i64) -> Result<Claims, TokenError> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control))
        .ok_or_else(|| refuse("bad_claims", "the token has no valid subject (sub)"))?
        .to_owned();
    let role = claims
        .get("role")
        .and_then(Value::as_str)
        .and_then(Role::parse)
        .ok_or_else(|| {
            refuse(
                "bad_claims",
                "the token has no valid role (author, reviewer, observer)",
            )
        })?;
    let sessions = match claims.get("sessions") {
        Some(Value::String(s)) if s == "*" => Sessions::All,
        Some(Value::Array(items)) => Sessions::Only(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| refuse("bad_claims", "sessions must be strings"))?,
        ),
        _ => {
            return Err(refuse(
                "bad_claims",
                "the token has no sessions claim (an array, or \"*\")",
            ));
        }
    };
    let expires_at = numeric_date(claims, "exp")?
        .ok_or_else(|| refuse("bad_claims", "the token has no expiry (exp)"))?;
    let issued_at = numeric_date(claims, "iat")?.unwrap_or(now);
    let not_before = numeric_date(claims, "nbf")?;
    if now >= expires_at {
        return Err(refuse("expired", "the token has expired"));
    }
    if let Some(not_before) = not_before
        && now < not_before
    {
        return Err(refuse("not_yet_valid", "the token is not valid yet (nbf)"));
    }
    Ok(Claims {
        subject,
        role,
        sessions,
        issued_at,
        expires_at,
    })
}

/// A NumericDate claim (RFC 7519 section 2: seconds since the epoch, which
/// may be non-integer), truncated to whole seconds; `None` when absent.
fn numeric_date(claims: &BTreeMap<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(seconds)) if seconds.abs() < MAX_NUMERIC_DATE => {
            Ok(Some(seconds.trunc() as i64))
        }
        Some(Value::Number(_)) => Err(refuse(
            "bad_claims",
            format!("the token's {name} is out of range"),
        )),
        Some(_) => Err(refuse(
            "bad_claims",
            format!("the token's {name} must be a number (seconds since the Unix epoch)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(&[7u8; 32]).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            subject: "ann".into(),
            role: Role::Reviewer,
            sessions: Sessions::Only(vec!["s1".into(), "s\"2".into()]),
            issued_at: 1000,
            expires_at: 2000,
        }
    }

    #[test]
    fn round_trip() {
        let token = key().sign(&claims());
        assert_eq!(key().verify(&token, 1500).unwrap(), claims());
        let all = Claims {
            sessions: Sessions::All,
            ..claims()
        };
        assert_eq!(
            key().verify(&key().sign(&all), 1500).unwrap().sessions,
            Sessions::All
        );
    }

    #[test]
    fn refusals() {
        let token = key().sign(&claims());
        assert_eq!(key().verify(&token, 2000).unwrap_err().reason, "expired");
        let other = Key::new(&[8u8; 32]).unwrap();
        assert_eq!(
            other.verify(&token, 1500).unwrap_err().reason,
            "bad_signature"
        );
        // Tampered claims.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = base64::encode(
            br#"{"sub":"root","role":"author","sessions":"*","exp":9999}"#,
            Alphabet::UrlSafe,
        );
        parts[1] = &forged;
        assert_eq!(
            key().verify(&parts.join("."), 1500).unwrap_err().reason,
            "bad_signature"
        );
        // alg none.
        let none = format!(
            "{}.{}.",
            base64::encode(br#"{"alg":"none"}"#, Alphabet::UrlSafe),
            token.split('.').nth(1).unwrap()
        );
        assert_eq!(
            key().verify(&none, 1500).unwrap_err().reason,
            "bad_algorithm"
        );
        assert_eq!(key().verify("a.b", 1500).unwrap_err().reason, "malformed");
        assert_eq!(
            key().verify("a.b.c.d", 1500).unwrap_err().reason,
            "malformed"
        );
        assert_eq!(
            key().verify(&"x".repeat(5000), 1500).unwrap_err().reason,
            "malformed"
        );
        assert!(Key::new(b"short").is_err());
    }

    #[test]
    fn claims_are_checked() {
        let k = key();
        let sign_raw = |payload: &str| {
            let header = base64::encode(br#"{"alg":"HS256"}"#, Alphabet::UrlSafe);
            let body = base64::encode(payload.as_bytes(), Alphabet::UrlSafe);
            let input = format!("{header}.{body}");
            let tag = hmac::sign(&k.key, input.as_bytes());
            format!(
                "{input}.{}",
                base64::encode(tag.as_ref(), Alphabet::UrlSafe)
            )
        };
        let cases = [
            (
                r#"{"role":"author","sessions":"*","exp":3000}"#,
                "bad_claims",
            ),
            (
                r#"{"sub":"a","role":"admin","sessions":"*","exp":3000}"#,
                "bad_claims",
            ),
            (r#"{"sub":"a","role":"author","exp":3000}"#, "bad_claims"),
            (
                r#"{"sub":"a","role":"author","sessions":[1],"exp":3000}"#,
                "bad_claims",
            ),
            (
                r#"{"sub":"a","role":"author","sessions":"*"}"#,
                "bad_claims",
            ),
            (
                r#"{"sub":"a","role":"author","sessions":"*","exp":3000,"nbf":2000}"#,
                "not_yet_valid",
            ),
        ];
        for (payload, reason) in cases {
            assert_eq!(
                k.verify(&sign_raw(payload), 1500).unwrap_err().reason,
                reason,
                "{payload}"
            );
        }
    }

    #[test]
    fn times_are_numeric_dates() {
        let k = key();
        let sign_raw = |payload: &str| {
            let header = base64::encode(br#"{"alg":"HS256"}"#, Alphabet::UrlSafe);
            let body = base64::encode(payload.as_bytes(), Alphabet::UrlSafe);
            let input = format!("{header}.{body}");
            let tag = hmac::sign(&k.key, input.as_bytes());
            format!(
                "{input}.{}",
                base64::encode(tag.as_ref(), Alphabet::UrlSafe)
            )
        };
        let claims = |times: &str| {
            sign_raw(&format!(
                r#"{{"sub":"a","role":"author","sessions":"*",{times}}}"#
            ))
        };
        // Non-integer NumericDates are valid (RFC 7519): truncated.
        for (times, expires_at, issued_at) in [
            (r#""exp":2000.5"#, 2000, 1500),
            (r#""exp":2.0e3,"iat":1000.9"#, 2000, 1000),
            (r#""exp":1999.999"#, 1999, 1500),
        ] {
            let verified = k.verify(&claims(times), 1500).expect(times);
            assert_eq!(verified.expires_at, expires_at, "{times}");
            assert_eq!(verified.issued_at, issued_at, "{times}");
        }
        assert_eq!(
            k.verify(&claims(r#""exp":1500.9"#), 1500)
                .unwrap_err()
                .reason,
            "expired"
        );
        assert_eq!(
            k.verify(&claims(r#""exp":3000,"nbf":1600.5"#), 1500)
                .unwrap_err()
                .reason,
            "not_yet_valid"
        );
        // Anything but a number is named precisely, not "no expiry".
        for (times, message) in [
            (
                r#""exp":"3000""#,
                "the token's exp must be a number (seconds since the Unix epoch)",
            ),
            (
                r#""exp":null"#,
                "the token's exp must be a number (seconds since the Unix epoch)",
            ),
            (
                r#""exp":3000,"iat":"1000""#,
                "the token's iat must be a number (seconds since the Unix epoch)",
            ),
            (
                r#""exp":3000,"nbf":[1]"#,
                "the token's nbf must be a number (seconds since the Unix epoch)",
            ),
            (r#""exp":1e300"#, "the token's exp is out of range"),
            (r#""iat":1000"#, "the token has no expiry (exp)"),
        ] {
            let error = k.verify(&claims(times), 1500).unwrap_err();
            assert_eq!(error.reason, "bad_claims", "{times}");
            assert_eq!(error.message, message, "{times}");
        }
    }
}
