//! What `load` counts: each received message checked as it arrives
//! ([`check`]), whether a participant has all it waits for
//! ([`Seen::complete`]), and the final accounting and summary
//! ([`summarize`]).
//!
//! A message the server refuses for its rate limit (a per-message
//! RESOURCE_EXHAUSTED "rate limit: ...") is never broadcast: it is counted
//! by its sender as refused, and the others do not wait for it or call it
//! lost. The sum holds per sender and receiver: delivered + refused = sent,
//! or the difference is lost.

use std::collections::HashMap;

use tokio::time::Instant;

use super::{Kind, LoadArgs, Plan, Who, parse_marker};
use crate::cli::connect::ClientOptions;
use crate::cli::histogram::Histogram;
use crate::cli::render::JsonObject;
use crate::grpc::Code;
use crate::pb::codereview::{SessionMessage, notice::Kind as NoticeKind, session_message::Payload};

/// What one participant saw and did.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) who: Who,
    pub(super) sent: u64,
    pub(super) delivered: u64,
    pub(super) errors: u64,
    pub(super) duplicated: u64,
    pub(super) reordered: u64,
    pub(super) echoed: u64,
    /// Of its own messages, how many the server refused for its rate limit.
    pub(super) rate_limited: u64,
    /// The server's words for that refusal.
    pub(super) rate_limit: Option<String>,
    pub(super) first_error: Option<String>,
    pub(super) first_violation: Option<String>,
    pub(super) latency: Histogram,
    pub(super) send_finished: Option<Instant>,
    pub(super) last_receive: Option<Instant>,
    pub(super) seen: Seen,
}

impl Report {
    fn violation(&mut self, what: String) {
        if self.first_violation.is_none() {
            self.first_violation = Some(what);
        }
    }

    pub(super) fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

/// What a participant received from each other sender of its session (by
/// the sender's number: users are `p0`, `p1`, ...).
#[derive(Debug, Default)]
pub(super) struct Seen {
    from: HashMap<usize, FromSender>,
}

#[derive(Debug, Default, Clone, Copy)]
struct FromSender {
    /// The highest index received.
    last: u64,
    /// Messages received in order (duplicates and late ones not counted).
    count: u64,
}

impl Seen {
    /// Whether every other sender of the session is accounted for: each of
    /// its messages received or refused (cursors: its final position
    /// received, since they coalesce).
    pub(super) fn complete(&self, plan: &Plan, who: &Who) -> bool {
        let messages = plan.messages as u64;
        (0..plan.participants)
            .filter(|&sender| sender != who.index)
            .all(|sender| {
                let from = self.from.get(&sender).copied();
                match plan.kind {
                    Kind::Cursor => from.is_some_and(|f| f.last + 1 == messages),
                    Kind::Edit | Kind::Comment => {
                        from.map_or(0, |f| f.count) + plan.refused(who.session, sender) >= messages
                    }
                }
            })
    }
}

/// Whether a per-message error is the server's rate limit.
fn is_rate_limit(code: Code, message: &str) -> bool {
    code == Code::ResourceExhausted && message.starts_with("rate limit")
}

/// Checks one received message.
pub(super) fn check(
    plan: &Plan,
    who: &Who,
    message: &SessionMessage,
    seen: &mut Seen,
    report: &mut Report,
    version: &mut i32,
) {
    let user = &who.user;
    let (index, sent_at) = match &message.payload {
        Some(Payload::Edit(e)) => {
            *version = (*version).max(e.version);
            if plan.kind != Kind::Edit {
                return;
            }
            match parse_marker(&e.content) {
                Some(m) => m,
                None => return,
            }
        }
        Some(Payload::Comment(c)) if plan.kind == Kind::Comment => match parse_marker(&c.text) {
            Some(m) => m,
            None => return,
        },
        Some(Payload::Cursor(c)) if plan.kind == Kind::Cursor => {
            let ms = u64::try_from(c.column).unwrap_or(0);
            (u64::try_from(c.line).unwrap_or(u64::MAX), ms * 1_000_000)
        }
        Some(Payload::Ack(a)) => {
            *version = (*version).max(a.version);
            return;
        }
        Some(Payload::Error(e)) => {
            let code = Code::from_i32(e.code);
            if is_rate_limit(code, &e.message) {
                report.rate_limited += 1;
                report.rate_limit.get_or_insert_with(|| e.message.clone());
                plan.refused[who.session * plan.participants + who.index]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                report.error(format!(
                    "{user}: server error {}: {}",
                    code.name(),
                    e.message
                ));
            }
            return;
        }
        Some(Payload::Notice(n)) if n.kind == NoticeKind::GoingAway as i32 => {
            report.error(format!("{user}: the server is going away"));
            return;
        }
        _ => return,
    };
    if message.user_id == *user {
        report.echoed += 1;
        report.violation(format!("{user} got its own message {index} back"));
        return;
    }
    let Some(sender) = message
        .user_id
        .strip_prefix('p')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n < plan.participants)
    else {
        return; // not one of ours
    };
    report.delivered += 1;
    report.last_receive = Some(Instant::now());
    let now_nanos = plan.origin.elapsed().as_nanos() as u64;
    report
        .latency
        .record(now_nanos.saturating_sub(sent_at) / 1000);
    match seen.from.get_mut(&sender) {
        Some(from) if index <= from.last => {
            if index == from.last {
                report.duplicated += 1;
            } else {
                report.reordered += 1;
            }
            report.violation(format!(
                "{user} got {}'s message {index} after {}",
                message.user_id, from.last
            ));
        }
        Some(from) => {
            from.last = index;
            from.count += 1;
        }
        None => {
            seen.from.insert(
                sender,
                FromSender {
                    last: index,
                    count: 1,
                },
            );
        }
    }
}

/// What a receiver never got, once every task is done (the refusals are
/// final then): messages neither received nor refused.
fn lost(plan: &Plan, report: &mut Report) -> u64 {
    let messages = plan.messages as u64;
    let mut lost = 0;
    let me = report.who.index;
    for sender in (0..plan.participants).filter(|&s| s != me) {
        let from = report.seen.from.get(&sender).copied();
        let refused = plan.refused(report.who.session, sender);
        let missing = match plan.kind {
            // Coalesced: only the final position must arrive (and with
            // refusals, which one was final cannot be told).
            Kind::Cursor => u64::from(refused == 0 && from.is_none_or(|f| f.last + 1 < messages)),
            Kind::Edit | Kind::Comment => {
                messages.saturating_sub(from.map_or(0, |f| f.count) + refused)
            }
        };
        if missing > 0 {
            let got = from.map_or(0, |f| f.count);
            let refused = if refused > 0 {
                format!(" ({refused} refused by the rate limit)")
            } else {
                String::new()
            };
            report.violation(format!(
                "{} in {} got {got} of p{sender}'s {messages} messages{refused}",
                report.who.user, report.who.session_id
            ));
        }
        lost += missing;
    }
    lost
}

/// Prints the summary (lines on stderr, one JSON line on stdout); returns
/// whether the run was clean. `notes` are printed as they are.
pub(super) fn summarize(
    args: &LoadArgs,
    options: &ClientOptions,
    reports: &mut [Report],
    plan: &Plan,
    measured_from: u64,
    notes: Vec<String>,
) -> bool {
    let mut latency = Histogram::new();
    let mut sent = 0;
    let mut delivered = 0;
    let mut errors = 0;
    let mut lost_total = 0;
    let mut duplicated = 0;
    let mut reordered = 0;
    let mut echoed = 0;
    let mut rate_limited = 0;
    let mut rate_limit = None;
    let mut first_error = None;
    let mut first_violation = None;
    let mut last_send = 0u64;
    let mut last_receive = 0u64;
    for r in reports.iter_mut() {
        lost_total += lost(plan, r);
        latency.merge(&r.latency);
        sent += r.sent;
        delivered += r.delivered;
        errors += r.errors;
        duplicated += r.duplicated;
        reordered += r.reordered;
        echoed += r.echoed;
        rate_limited += r.rate_limited;
        rate_limit = rate_limit.or_else(|| r.rate_limit.clone());
        first_error = first_error.or_else(|| r.first_error.clone());
        first_violation = first_violation.or_else(|| r.first_violation.clone());
        if let Some(t) = r.send_finished {
            last_send = last_send.max(t.duration_since(plan.origin).as_nanos() as u64);
        }
        if let Some(t) = r.last_receive {
            last_receive = last_receive.max(t.duration_since(plan.origin).as_nanos() as u64);
        }
    }
    let others = (args.participants - 1) as u64;
    let expected = if plan.kind == Kind::Cursor {
        0
    } else {
        (args.sessions * args.participants) as u64 * others * args.messages as u64
            - rate_limited * others
    };
    let send_seconds = last_send.saturating_sub(measured_from) as f64 / 1e9;
    let receive_seconds = (last_receive.saturating_sub(measured_from) as f64 / 1e9).max(1e-9);
    let delivered_per_second = delivered as f64 / receive_seconds;
    let ok = errors == 0
        && lost_total == 0
        && duplicated == 0
        && reordered == 0
        && echoed == 0
        && rate_limited == 0;
    eprintln!(
        "load: {} sessions x {} participants x {} {} messages against {}",
        args.sessions,
        args.participants,
        args.messages,
        args.kind,
        options.addrs.join(",")
    );
    // Unpaced, sending only queues messages for the connection: how fast
    // that went says nothing. Paced, how long the sends took is the pacing.
    let sent_line = if args.rate > 0.0 {
        format!(
            "sent {sent} in {send_seconds:.3}s (paced at {}/s per participant)",
            args.rate
        )
    } else {
        format!("sent {sent}")
    };
    eprintln!(
        "  {sent_line}; delivered {delivered} of {expected} expected in {receive_seconds:.3}s ({delivered_per_second:.0}/s)"
    );
    eprintln!(
        "  latency p50 {}us p99 {}us p999 {}us max {}us",
        latency.quantile(0.5),
        latency.quantile(0.99),
        latency.quantile(0.999),
        latency.max()
    );
    eprintln!(
        "  violations: lost {lost_total} duplicated {duplicated} reordered {reordered} echoed {echoed}; errors {errors}{}",
        first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if let Some(violation) = &first_violation {
        eprintln!("  first violation: {violation}");
    }
    if rate_limited > 0 {
        eprintln!(
            "  {}",
            rate_limit_advice(rate_limited, rate_limit.as_deref().unwrap_or("rate limit"))
        );
    }
    for note in &notes {
        eprintln!("  {note}");
    }
    let line = JsonObject::new()
        .str("type", "load")
        .boolean("ok", ok)
        .str("kind", &args.kind)
        .uint("sessions", args.sessions as u64)
        .uint("participants", args.participants as u64)
        .uint("messages", args.messages as u64)
        .uint("payload", args.payload as u64)
        .uint("streams_per_conn", args.streams_per_conn as u64)
        .uint("sent", sent)
        .uint("delivered", delivered)
        .uint("expected", expected)
        .num("send_seconds", round3(send_seconds))
        .num("delivered_per_second", round3(delivered_per_second))
        .raw(
            "latency_us",
            &JsonObject::new()
                .uint("p50", latency.quantile(0.5))
                .uint("p99", latency.quantile(0.99))
                .uint("p999", latency.quantile(0.999))
                .uint("max", latency.max())
                .num("mean", round3(latency.mean()))
                .finish(),
        )
        .uint("errors", errors)
        .uint("lost", lost_total)
        .uint("duplicated", duplicated)
        .uint("reordered", reordered)
        .uint("echoed", echoed)
        .uint("rate_limited", rate_limited)
        .finish();
    println!("{line}");
    ok
}

/// What to say about refusals by the server's rate limit, and how to run
/// without them. `words` is the server's message ("rate limit: at most 100
/// messages per second (burst 200)").
fn rate_limit_advice(refused: u64, words: &str) -> String {
    let below = words
        .split("at most ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or_else(|| "below it".to_owned(), |limit| format!("below {limit}"));
    format!(
        "{refused} messages refused by the server's rate limit ({words}): not lost, never sent on; \
         run serve with --rate-limit 0 for a benchmark, or load with --rate {below}"
    )
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_advice_names_the_limit() {
        assert_eq!(
            rate_limit_advice(
                316,
                "rate limit: at most 100 messages per second (burst 200)"
            ),
            "316 messages refused by the server's rate limit (rate limit: at most 100 messages per \
             second (burst 200)): not lost, never sent on; run serve with --rate-limit 0 for a \
             benchmark, or load with --rate below 100"
        );
        assert!(rate_limit_advice(1, "rate limit").ends_with("--rate below it"));
        assert!(is_rate_limit(
            Code::ResourceExhausted,
            "rate limit: at most 1"
        ));
        assert!(!is_rate_limit(Code::ResourceExhausted, "fell behind"));
        assert!(!is_rate_limit(Code::InvalidArgument, "rate limit"));
    }
}
