//! Structured logs: one line per event on stderr, as a JSON object (default) or
//! as `key=value` text, with a timestamp, a level, a message and correlation
//! fields (`conn`, `stream`, `session_id`, `user_id`, ...).
//!
//! Callers pass only identifiers and figures as fields: tokens and message
//! content are never logged. The level and format are process-wide and set
//! once at startup by [`init`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Severity, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }
}

/// Line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json = 0,
    Text = 1,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "json" => Some(Format::Json),
            "text" => Some(Format::Text),
            _ => None,
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FORMAT: AtomicU8 = AtomicU8::new(Format::Json as u8);

/// Sets the process-wide level and format.
pub fn init(level: Level, format: Format) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    FORMAT.store(format as u8, Ordering::Relaxed);
}

/// Whether lines at `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// A field value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Str(&'a str),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Str(v)
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Str(v)
    }
}
impl From<u64> for Value<'_> {
    fn from(v: u64) -> Self {
        Value::U64(v)
    }
}
impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::U64(u64::from(v))
    }
}
impl From<usize> for Value<'_> {
    fn from(v: usize) -> Self {
        Value::U64(v as u64)
    }
}
impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}
impl From<i32> for Value<'_> {
    fn from(v: i32) -> Self {
        Value::I64(i64::from(v))
    }
}
impl From<f64> for Value<'_> {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}
impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// Writes one line if `level` is enabled.
pub fn log(level: Level, message: &str, fields: &[(&str, Value<'_>)]) {
    if !enabled(level) {
        return;
    }
    let format = if FORMAT.load(Ordering::Relaxed) == Format::Text as u8 {
        Format::Text
    } else {
        Format::Json
    };
    let line = render(format, SystemTime::now(), level, message, fields);
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(line.as_bytes());
}

/// Renders one line (with its newline). Pure, for tests.
pub fn render(
    format: Format,
    at: SystemTime,
    level: Level,
    message: &str,
    fields: &[(&str, Value<'_>)],
) -> String {
    let mut out = String::with_capacity(128);
    let ts = rfc3339_millis(at);
    match format {
        Format::Json => {
            out.push_str("{\"ts\":\"");
            out.push_str(&ts);
            out.push_str("\",\"level\":\"");
            out.push_str(level.name());
            out.push_str("\",\"msg\":");
            push_json_string(&mut out, message);
            for (key, value) in fields {
                out.push(',');
                push_json_string(&mut out, key);
                out.push(':');
                push_json_value(&mut out, *value);
            }
            out.push('}');
        }
        Format::Text => {
            let _ = write!(out, "{ts} {:<5} {message}", level.name().to_uppercase());
            for (key, value) in fields {
                let _ = write!(out, " {key}=");
                match value {
                    Value::Str(s) if s.contains(' ') || s.is_empty() => {
                        push_json_string(&mut out, s)
                    }
                    _ => push_text_value(&mut out, *value),
                }
            }
        }
    }
    out.push('\n');
    out
}

fn push_text_value(out: &mut String, value: Value<'_>) {
    match value {
        Value::Str(s) => out.push_str(s),
        Value::U64(v) => {
            let _ = write!(out, "{v}");
        }
        Value::I64(v) => {
            let _ = write!(out, "{v}");
        }
        Value::F64(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Bool(v) => {
            let _ = write!(out, "{v}");
        }
    }
}

fn push_json_value(out: &mut String, value: Value<'_>) {
    match value {
        Value::Str(s) => push_json_string(out, s),
        Value::F64(v) if !v.is_finite() => out.push_str("null"),
        other => push_text_value(out, other),
    }
}

/// Appends `text` as a JSON string literal.
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-25T12:00:00.123Z`.
pub fn rfc3339_millis(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Logs at a level with `key = value` fields:
/// `log!(Info, "stream closed", conn = id, status = "OK")`.
#[macro_export]
macro_rules! log {
    ($level:ident, $msg:expr $(, $key:ident = $value:expr)* $(,)?) => {
        if $crate::logging::enabled($crate::logging::Level::$level) {
            $crate::logging::log(
                $crate::logging::Level::$level,
                $msg,
                &[$((stringify!($key), $crate::logging::Value::from($value))),*],
            );
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339_millis(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339_millis(leap)[..10], "2000-02-29");
    }

    #[test]
    fn json_lines_escape_and_carry_fields() {
        let line = render(
            Format::Json,
            UNIX_EPOCH,
            Level::Info,
            "say \"hi\"\n",
            &[("conn", Value::U64(3)), ("user_id", Value::Str("a\\b"))],
        );
        assert_eq!(
            line,
            "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"info\",\"msg\":\"say \\\"hi\\\"\\n\",\"conn\":3,\"user_id\":\"a\\\\b\"}\n"
        );
    }

    #[test]
    fn text_lines() {
        let line = render(
            Format::Text,
            UNIX_EPOCH,
            Level::Warn,
            "slow",
            &[("conn", Value::U64(1)), ("why", Value::Str("two words"))],
        );
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z WARN  slow conn=1 why=\"two words\"\n"
        );
    }
}
