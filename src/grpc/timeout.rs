//! `grpc-timeout`: a positive integer of at most 8 ASCII digits followed by a
//! unit (H, M, S, m, u, n). Parsing is pure and total; formatting picks the
//! finest unit whose value fits in 8 digits.

use std::time::Duration;

/// Why a `grpc-timeout` value is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeoutError {
    Empty,
    TooManyDigits,
    NotADigit,
    UnknownUnit(u8),
}

impl std::fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutError::Empty => f.write_str("empty grpc-timeout"),
            TimeoutError::TooManyDigits => f.write_str("grpc-timeout has more than 8 digits"),
            TimeoutError::NotADigit => f.write_str("grpc-timeout value is not a number"),
            TimeoutError::UnknownUnit(u) => {
                write!(f, "grpc-timeout has an unknown unit {:?}", char::from(*u))
            }
        }
    }
}

impl std::error::Error for TimeoutError {}

const MAX_DIGITS: usize = 8;

/// Parses a `grpc-timeout` header value.
pub fn parse(value: &[u8]) -> Result<Duration, TimeoutError> {
    let (&unit, digits) = value.split_last().ok_or(TimeoutError::Empty)?;
    if digits.is_empty() {
        return Err(TimeoutError::Empty);
    }
    if digits.len() > MAX_DIGITS {
        return Err(TimeoutError::TooManyDigits);
    }
    let mut amount: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(TimeoutError::NotADigit);
        }
        amount = amount * 10 + u64::from(d - b'0');
    }
    Ok(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        other => return Err(TimeoutError::UnknownUnit(other)),
    })
}

/// Formats a duration for the `grpc-timeout` header, rounding up so the peer
/// never sees a shorter deadline than ours.
pub fn format(timeout: Duration) -> String {
    const LIMIT: u128 = 100_000_000; // 8 digits
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per_unit, symbol) in units {
        let amount = nanos.div_ceil(per_unit);
        if amount < LIMIT {
            return format!("{amount}{symbol}");
        }
    }
    format!("{}H", LIMIT - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse(b"1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse(b"2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse(b"3S"), Ok(Duration::from_secs(3)));
        assert_eq!(parse(b"4m"), Ok(Duration::from_millis(4)));
        assert_eq!(parse(b"5u"), Ok(Duration::from_micros(5)));
        assert_eq!(parse(b"6n"), Ok(Duration::from_nanos(6)));
        assert_eq!(
            parse(b"99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse(b"0m"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(b""), Err(TimeoutError::Empty));
        assert_eq!(parse(b"S"), Err(TimeoutError::Empty));
        assert_eq!(parse(b"123456789S"), Err(TimeoutError::TooManyDigits));
        assert_eq!(parse(b"1.5S"), Err(TimeoutError::NotADigit));
        assert_eq!(parse(b"-1S"), Err(TimeoutError::NotADigit));
        assert_eq!(parse(b"10s"), Err(TimeoutError::UnknownUnit(b's')));
    }

    #[test]
    fn format_round_trips_without_shortening() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_secs(300),
            Duration::from_secs(86_400 * 365),
            Duration::new(1, 1),
        ] {
            let text = format(d);
            let back = parse(text.as_bytes()).unwrap();
            assert!(back >= d, "{d:?} -> {text} -> {back:?}");
        }
    }
}
