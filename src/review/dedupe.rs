//! Client sequence numbers: what a user's numbered messages came to, so a
//! resend is answered with its original outcome and never applied twice.
//!
//! Numbers must increase. For a number at or below the highest processed:
//! - remembered (one of the last [`REMEMBERED_OUTCOMES`]): a resend, answered
//!   with the original outcome;
//! - not remembered but newer than the oldest remembered: it was skipped,
//!   never processed; it is refused (the client broke the order), never
//!   dropped silently;
//! - older than everything remembered: nobody knows whether it was applied.

use std::collections::VecDeque;

use crate::pb::codereview::Ack;

use super::error::ReviewError;

/// How many outcomes of recent client messages each user remembers for
/// answering resends.
pub const REMEMBERED_OUTCOMES: usize = 256;

/// What a numbered message came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ack(Ack),
    Error(ReviewError),
}

/// What to do with a message's client sequence number.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Unnumbered (0), or above the highest processed: process it.
    New,
    /// Processed before: answer with this outcome again.
    Resend(Outcome),
    /// At or below the highest, never processed: the order was broken.
    Skipped { highest: u64 },
    /// Too old to tell.
    Forgotten,
}

#[derive(Debug, Clone, Default)]
pub struct Dedupe {
    highest: u64,
    /// Outcomes of the latest numbered messages, in number order.
    outcomes: VecDeque<(u64, Outcome)>,
    /// The highest number whose outcome was dropped from `outcomes`.
    forgotten_up_to: u64,
}

impl Dedupe {
    /// The highest number processed (what `Joined` tells a resuming client).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Outcomes remembered (for the memory estimate).
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// The outcomes remembered, oldest first (for snapshots).
    pub fn outcomes(&self) -> impl Iterator<Item = &(u64, Outcome)> {
        self.outcomes.iter()
    }

    /// The highest number whose outcome is forgotten (for snapshots).
    pub fn forgotten_up_to(&self) -> u64 {
        self.forgotten_up_to
    }

    /// A dedupe state as a snapshot kept it.
    pub fn restore(highest: u64, forgotten_up_to: u64, outcomes: Vec<(u64, Outcome)>) -> Dedupe {
        Dedupe {
            highest,
            outcomes: outcomes.into(),
            forgotten_up_to,
        }
    }

    pub fn check(&self, client_sequence: u64) -> Verdict {
        if client_sequence == 0 || client_sequence > self.highest {
            return Verdict::New;
        }
        match self
            .outcomes
            .binary_search_by_key(&client_sequence, |(n, _)| *n)
        {
            Ok(index) => Verdict::Resend(self.outcomes[index].1.clone()),
            Err(_) if client_sequence <= self.forgotten_up_to => Verdict::Forgotten,
            Err(_) => Verdict::Skipped {
                highest: self.highest,
            },
        }
    }

    /// Records the outcome of a new number (one [`Dedupe::check`] called
    /// `New`); anything else is ignored.
    pub fn remember(&mut self, client_sequence: u64, outcome: Outcome) {
        if client_sequence == 0 || client_sequence <= self.highest {
            return;
        }
        self.highest = client_sequence;
        self.outcomes.push_back((client_sequence, outcome));
        if self.outcomes.len() > REMEMBERED_OUTCOMES
            && let Some((forgotten, _)) = self.outcomes.pop_front()
        {
            self.forgotten_up_to = forgotten;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(n: u64) -> Outcome {
        Outcome::Ack(Ack {
            client_sequence: n,
            ..Ack::default()
        })
    }

    #[test]
    fn resends_skips_and_forgotten_numbers() {
        let mut d = Dedupe::default();
        assert_eq!(d.check(0), Verdict::New);
        assert_eq!(d.check(5), Verdict::New);
        d.remember(5, ack(5));
        assert_eq!(d.check(5), Verdict::Resend(ack(5)));
        assert_eq!(d.check(3), Verdict::Skipped { highest: 5 });
        assert_eq!(d.check(6), Verdict::New);
        d.remember(3, ack(3));
        assert_eq!(d.check(3), Verdict::Skipped { highest: 5 }, "not taken");
        for n in 10..(10 + REMEMBERED_OUTCOMES as u64) {
            d.remember(n, ack(n));
        }
        assert_eq!(d.check(5), Verdict::Forgotten);
        assert_eq!(
            d.check(9),
            Verdict::Skipped {
                highest: d.highest()
            }
        );
        assert_eq!(d.len(), REMEMBERED_OUTCOMES);
    }
}
