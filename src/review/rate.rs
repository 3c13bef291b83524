//! Per-user rate limits: a token bucket for messages and one for bytes.
//! Every message a participant sends and every upload counts against both
//! (an upload is one message per file and its content's bytes), so neither
//! path can flood the others' outboxes or the history.

use std::time::Instant;

use super::error::ReviewError;
use super::limits::Limits;

#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn full(burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant, per_second: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.updated = now;
    }
}

/// One user's allowance in one session.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl RateLimiter {
    pub fn new(limits: &Limits, now: Instant) -> Self {
        RateLimiter {
            messages: TokenBucket::full(limits.rate_burst, now),
            bytes: TokenBucket::full(limits.rate_bytes_burst, now),
        }
    }

    /// Takes `messages` and `bytes` from the buckets, or nothing and says
    /// which limit refused. With `rate_per_second` 0 there is no limit.
    pub fn admit(
        &mut self,
        now: Instant,
        messages: usize,
        bytes: usize,
        limits: &Limits,
    ) -> Result<(), ReviewError> {
        if limits.rate_per_second <= 0.0 {
            return Ok(());
        }
        self.messages
            .refill(now, limits.rate_per_second, limits.rate_burst);
        self.bytes
            .refill(now, limits.rate_bytes_per_second, limits.rate_bytes_burst);
        let (messages, bytes) = (messages as f64, bytes as f64);
        if self.messages.tokens < messages {
            return Err(ReviewError::exhausted(format!(
                "rate limit: at most {} messages per second (burst {})",
                limits.rate_per_second, limits.rate_burst
            )));
        }
        if self.bytes.tokens < bytes {
            return Err(ReviewError::exhausted(format!(
                "rate limit: at most {} bytes per second (burst {})",
                limits.rate_bytes_per_second, limits.rate_bytes_burst
            )));
        }
        self.messages.tokens -= messages;
        self.bytes.tokens -= bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_and_bytes_both_count_and_refill() {
        let limits = Limits {
            rate_per_second: 10.0,
            rate_burst: 3.0,
            rate_bytes_per_second: 100.0,
            rate_bytes_burst: 250.0,
            ..Limits::default()
        };
        let start = Instant::now();
        let mut rate = RateLimiter::new(&limits, start);
        rate.admit(start, 1, 200, &limits).unwrap();
        // Bytes refuse although a message token is left, and take nothing.
        assert!(rate.admit(start, 1, 100, &limits).is_err());
        rate.admit(start, 2, 50, &limits).unwrap();
        assert!(rate.admit(start, 1, 0, &limits).is_err());
        let later = start + Duration::from_secs(1);
        rate.admit(later, 3, 100, &limits).unwrap();
        // Off: anything goes.
        let off = Limits {
            rate_per_second: 0.0,
            ..limits
        };
        rate.admit(later, 1000, 1 << 30, &off).unwrap();
    }
}
