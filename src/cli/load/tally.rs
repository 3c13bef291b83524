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

use tokio::time::Instant;

use super::server_usage::Usage;
use super::{DocView, Kind, LoadArgs, Plan, Sent, Who, parse_marker};
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
    /// Of those, edits and comments (the rest are cursors).
    pub(super) delivered_essential: u64,
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
    /// The latest document version it knew at the end.
    pub(super) version: i32,
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
    from: Vec<FromSender>,
}

/// What arrived from one sender: its edits and comments, and apart its
/// cursors (which may coalesce, and so may be overtaken).
#[derive(Debug, Default, Clone, Copy)]
struct FromSender {
    essential: Track,
    cursor: Track,
}

#[derive(Debug, Default, Clone, Copy)]
struct Track {
    /// The highest index received.
    last: Option<u64>,
    /// Messages received in order (duplicates and late ones not counted).
    count: u64,
}

impl FromSender {
    fn track(&mut self, sent: Sent) -> &mut Track {
        match sent {
            Sent::Cursor => &mut self.cursor,
            Sent::Edit | Sent::Comment => &mut self.essential,
        }
    }
}

impl Seen {
    /// What arrived from `sender` so far.
    fn from(&self, sender: usize) -> FromSender {
        self.from.get(sender).copied().unwrap_or_default()
    }

    /// Whether every other sender of the session is accounted for: each of
    /// its messages received or refused (cursors: its final position
    /// received, since they coalesce).
    pub(super) fn complete(&self, plan: &Plan, who: &Who) -> bool {
        let messages = plan.messages as u64;
        let essential = plan.kind.essential(messages);
        let last_cursor = plan.kind.last_cursor(messages);
        (0..plan.participants)
            .filter(|&sender| sender != who.index)
            .all(|sender| {
                let from = self.from(sender);
                let refused = plan.refused(who.session, sender);
                from.essential.count + refused >= essential
                    && last_cursor.is_none_or(|last| from.cursor.last == Some(last))
            })
    }
}

/// Whether a per-message error is the server's rate limit.
fn is_rate_limit(code: Code, message: &str) -> bool {
    code == Code::ResourceExhausted && message.starts_with("rate limit")
}

/// Checks one received message, read at `now`.
pub(super) fn check(
    plan: &Plan,
    who: &Who,
    message: &SessionMessage,
    seen: &mut Seen,
    report: &mut Report,
    view: &mut DocView,
    now: Instant,
) {
    let user = &who.user;
    let sends = |sent: Sent| plan.kind == Kind::Mix || plan.kind.of(0) == sent;
    let (index, sent_at, sent) = match &message.payload {
        Some(Payload::Edit(e)) => {
            view.version = view.version.max(e.version);
            if message.user_id != *user {
                view.others_edits += 1;
            }
            if !sends(Sent::Edit) {
                return;
            }
            match parse_marker(&e.content) {
                Some((index, at)) => (index, at, Sent::Edit),
                None => return,
            }
        }
        Some(Payload::Comment(c)) if sends(Sent::Comment) => match parse_marker(&c.text) {
            Some((index, at)) => (index, at, Sent::Comment),
            None => return,
        },
        Some(Payload::Cursor(c)) if sends(Sent::Cursor) => {
            let ms = u64::try_from(c.column).unwrap_or(0);
            let index = u64::try_from(c.line).unwrap_or(u64::MAX);
            (index, ms * 1_000_000, Sent::Cursor)
        }
        Some(Payload::Ack(a)) => {
            view.version = view.version.max(a.version);
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
    report.last_receive = Some(now);
    // A cursor's send time is in milliseconds: its latency counts only in
    // a run of cursors alone.
    if sent != Sent::Cursor || plan.kind == Kind::Cursor {
        let now_nanos = now.duration_since(plan.origin).as_nanos() as u64;
        report
            .latency
            .record(now_nanos.saturating_sub(sent_at) / 1000);
    }
    if sent != Sent::Cursor {
        report.delivered_essential += 1;
    }
    if seen.from.len() <= sender {
        seen.from.resize(sender + 1, FromSender::default());
    }
    let track = seen.from[sender].track(sent);
    match track.last {
        Some(last) if index <= last => {
            if index == last {
                report.duplicated += 1;
            } else {
                report.reordered += 1;
            }
            report.violation(format!(
                "{user} got {}'s message {index} after {last}",
                message.user_id
            ));
        }
        _ => {
            track.last = Some(index);
            track.count += 1;
        }
    }
}

/// What a receiver never got, once every task is done (the refusals are
/// final then): messages neither received nor refused.
fn lost(plan: &Plan, report: &mut Report) -> u64 {
    let messages = plan.messages as u64;
    let essential = plan.kind.essential(messages);
    let last_cursor = plan.kind.last_cursor(messages);
    let mut lost = 0;
    let me = report.who.index;
    for sender in (0..plan.participants).filter(|&s| s != me) {
        let from = report.seen.from(sender);
        let refused = plan.refused(report.who.session, sender);
        // Cursors coalesce: only the final position must arrive (and with
        // refusals, which one was final cannot be told).
        let final_cursor_missing = last_cursor
            .is_some_and(|last| refused == 0 && from.cursor.last.is_none_or(|l| l < last));
        let missing = essential.saturating_sub(from.essential.count + refused)
            + u64::from(final_cursor_missing);
        if missing > 0 {
            let got = from.essential.count + from.cursor.count;
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
    usage: Option<Usage>,
    notes: Vec<String>,
) -> bool {
    let mut latency = Histogram::new();
    let mut sent = 0;
    let mut delivered = 0;
    let mut delivered_essential = 0;
    let mut final_version = i32::MAX;
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
        delivered_essential += r.delivered_essential;
        final_version = final_version.min(r.version);
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
    let essential = plan.kind.essential(args.messages as u64);
    let expected = if essential == 0 {
        0
    } else {
        ((args.sessions * args.participants) as u64 * others * essential)
            .saturating_sub(rate_limited * others)
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
    let of_expected = if plan.kind == Kind::Mix {
        format!(
            " ({delivered_essential} edits and comments of {expected} expected, the rest cursors)"
        )
    } else {
        format!(" of {expected} expected")
    };
    eprintln!(
        "  {sent_line}; delivered {delivered}{of_expected} in {receive_seconds:.3}s ({delivered_per_second:.0}/s)"
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
    let cpu_per_million = usage.map(|u| u.cpu_seconds / (delivered.max(1) as f64) * 1e6);
    if let (Some(usage), Some(per_million)) = (usage, cpu_per_million) {
        eprintln!(
            "  server: {:.3} CPU-seconds ({per_million:.2} per 1M deliveries), RSS peak {} KiB, at the end {} KiB",
            usage.cpu_seconds,
            usage.rss_peak / 1024,
            usage.rss_end / 1024
        );
        if let Some(client) = usage.client_cpu_seconds {
            eprintln!(
                "  client (this load): {client:.3} CPU-seconds ({:.2} per 1M deliveries)",
                client / (delivered.max(1) as f64) * 1e6
            );
        }
    } else if args.server_pid.is_some() {
        eprintln!("  server: its process was gone at the end; no CPU or RSS figures");
    }
    let mut line = JsonObject::new()
        .str("type", "load")
        .boolean("ok", ok)
        .str("kind", &args.kind)
        .str("session_prefix", &plan.session_prefix)
        .uint("sessions", args.sessions as u64)
        .uint("participants", args.participants as u64)
        .uint("messages", args.messages as u64)
        .uint("payload", args.payload as u64)
        .uint("streams_per_conn", args.streams_per_conn as u64)
        .uint("sent", sent)
        .uint("delivered", delivered)
        .uint("delivered_essential", delivered_essential)
        .uint("expected", expected)
        .num("send_seconds", round3(send_seconds))
        .num("receive_seconds", round3(receive_seconds))
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
        .uint("rate_limited", rate_limited);
    if args.extended && matches!(plan.kind, Kind::Edit | Kind::Mix) {
        // The latest document version every participant knew at the end.
        line = line.int("final_version", i64::from(final_version));
    }
    if let (Some(usage), Some(per_million)) = (usage, cpu_per_million) {
        line = line
            .num("server_cpu_s", round3(usage.cpu_seconds))
            .uint("server_rss_peak", usage.rss_peak)
            .uint("server_rss_end", usage.rss_end)
            .num("cpu_per_million_deliveries", round3(per_million));
        if let Some(client) = usage.client_cpu_seconds {
            line = line.num("client_cpu_s", round3(client));
        }
    }
    let line = line.finish();
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
