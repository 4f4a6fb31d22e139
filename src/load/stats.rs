//! Counting what happened: per-stage reply counts, message outcomes, latencies; and the report
//! printed at the end (text for people, JSON for scripts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::milter::client::ReceivedReply;

/// How one message ended, as the MTA saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The end-of-message reply let it through (continue or accept), or the filter accepted
    /// it earlier without wanting to see more.
    Delivered,
    /// Refused (reject, tempfail or an SMTP reply) at CONNECT, HELO or MAIL FROM.
    RefusedAtMail,
    /// Every recipient was refused, so there was no DATA.
    NoRecipient,
    /// Refused at DATA, a header, the body or end of message.
    RefusedAtData,
    /// Accepted and silently dropped.
    Discarded,
    /// The conversation failed (I/O, timeout, protocol).
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::RefusedAtMail => "refused_at_mail",
            Outcome::NoRecipient => "no_recipient",
            Outcome::RefusedAtData => "refused_at_data",
            Outcome::Discarded => "discarded",
            Outcome::Error => "error",
        }
    }
}

/// A reply as counted: `continue`, `accept`, `reject`, `tempfail`, `discard`, `skip`, or for
/// an SMTP reply its code and enhanced status (`550 5.2.2`).
pub fn reply_label(reply: &ReceivedReply) -> String {
    match reply.kind {
        b'c' => "continue".into(),
        b'a' => "accept".into(),
        b'r' => "reject".into(),
        b't' => "tempfail".into(),
        b'd' => "discard".into(),
        b's' => "skip".into(),
        b'y' => {
            let text = reply.text().unwrap_or_default();
            text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
        }
        other => format!("{:?}", other as char),
    }
}

/// What one worker saw; merged at the end.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// (stage, reply label) → count.
    pub replies: BTreeMap<(String, String), u64>,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub recipients_accepted: u64,
    pub recipients_refused: u64,
    /// Per message, microseconds.
    pub latencies_us: Vec<u32>,
    pub connections: u64,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn reply(&mut self, stage: &str, reply: &ReceivedReply) {
        *self.replies.entry((stage.to_string(), reply_label(reply))).or_default() += 1;
    }

    pub fn outcome(&mut self, outcome: Outcome, latency: Duration) {
        *self.outcomes.entry(outcome).or_default() += 1;
        self.latencies_us.push(latency.as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn error(&mut self, e: &std::io::Error, latency: Duration) {
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
        self.outcome(Outcome::Error, latency);
    }

    pub fn merge(&mut self, other: Tally) {
        for (k, v) in other.replies {
            *self.replies.entry(k).or_default() += v;
        }
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.recipients_accepted += other.recipients_accepted;
        self.recipients_refused += other.recipients_refused;
        self.latencies_us.extend(other.latencies_us);
        self.connections += other.connections;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn messages(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(mut us: Vec<u32>) -> Latency {
        if us.is_empty() {
            return Latency::default();
        }
        us.sort_unstable();
        let at = |q: f64| us[(((us.len() - 1) as f64) * q).round() as usize];
        Latency {
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: us[us.len() - 1],
            mean_us: us.iter().map(|&u| u as f64).sum::<f64>() / us.len() as f64,
        }
    }
}

/// What the filter process cost during the measured phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerCost {
    pub pids: Vec<u32>,
    pub processes: usize,
    pub cpu_s: f64,
    pub cpu_us_per_msg: f64,
    /// Peak resident memory (VmHWM), summed over the processes, at the end of the run.
    pub peak_rss_kib: u64,
}

/// The pre-warm phase, when there was one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Prewarm {
    pub accounts: u64,
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
    pub errors: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub target: String,
    pub writes: String,
    pub concurrency: usize,
    pub connection_per_message: bool,
    pub messages: u64,
    pub elapsed_s: f64,
    pub msgs_per_s: f64,
    pub latency: Latency,
    pub outcomes: BTreeMap<String, u64>,
    /// `"stage reply"` → count, e.g. `"rcpt 550 5.2.2": 12`.
    pub replies: BTreeMap<String, u64>,
    pub recipients_accepted: u64,
    pub recipients_refused: u64,
    pub connections: u64,
    /// The load generator's own CPU time during the measured phase.
    pub client_cpu_s: f64,
    pub server: Option<ServerCost>,
    pub prewarm: Option<Prewarm>,
    /// The run stopped at `--max-time` before sending every message.
    pub timed_out: bool,
    pub first_error: Option<String>,
}

impl Report {
    pub fn from_tally(tally: Tally, elapsed: Duration) -> Report {
        let messages = tally.messages();
        let secs = elapsed.as_secs_f64();
        Report {
            messages,
            elapsed_s: secs,
            msgs_per_s: if secs > 0.0 { messages as f64 / secs } else { 0.0 },
            latency: Latency::of(tally.latencies_us),
            outcomes: tally.outcomes.iter().map(|(k, v)| (k.label().to_string(), *v)).collect(),
            replies: tally.replies.into_iter().map(|((stage, label), v)| (format!("{stage} {label}"), v)).collect(),
            recipients_accepted: tally.recipients_accepted,
            recipients_refused: tally.recipients_refused,
            connections: tally.connections,
            first_error: tally.first_error,
            ..Report::default()
        }
    }

    /// A few lines for a terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} ({} writes, concurrency {}, {}): {} messages in {:.2} s = {:.0} msgs/s",
            self.target,
            self.writes,
            self.concurrency,
            if self.connection_per_message { "one connection per message" } else { "connections reused" },
            self.messages,
            self.elapsed_s,
            self.msgs_per_s
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {:.3} ms",
            l.p50_us as f64 / 1000.0,
            l.p99_us as f64 / 1000.0,
            l.max_us as f64 / 1000.0,
            l.mean_us / 1000.0
        );
        if let Some(c) = &self.server {
            let _ = writeln!(
                s,
                "server: {:.2} s CPU = {:.1} µs/msg, peak RSS {:.1} MiB ({} process{})",
                c.cpu_s,
                c.cpu_us_per_msg,
                c.peak_rss_kib as f64 / 1024.0,
                c.processes,
                if c.processes == 1 { "" } else { "es" }
            );
        }
        let _ = writeln!(s, "client: {:.2} s CPU", self.client_cpu_s);
        let outcomes: Vec<String> = self.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            s,
            "messages: {}; recipients: {} accepted, {} refused",
            outcomes.join(", "),
            self.recipients_accepted,
            self.recipients_refused
        );
        let replies: Vec<String> = self.replies.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(s, "replies: {}", replies.join(", "));
        if let Some(p) = &self.prewarm {
            let _ = writeln!(
                s,
                "pre-warm: {} accounts in {:.1} s ({:.0} msgs/s, {} errors)",
                p.accounts, p.elapsed_s, p.msgs_per_s, p.errors
            );
        }
        if self.timed_out {
            let _ = writeln!(s, "stopped at the time limit before every message was sent");
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "first error: {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).collect());
        assert_eq!((l.p50_us, l.p99_us, l.max_us), (51, 99, 100));
        assert_eq!(Latency::of(vec![]), Latency::default());
    }

    #[test]
    fn labels_of_smtp_replies_keep_code_and_status() {
        let mut payload = b"550 5.2.2 limit reached".to_vec();
        payload.push(0);
        assert_eq!(reply_label(&ReceivedReply { kind: b'y', payload }), "550 5.2.2");
        assert_eq!(reply_label(&ReceivedReply { kind: b'c', payload: vec![] }), "continue");
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally::default();
        a.outcome(Outcome::Delivered, Duration::from_micros(5));
        let mut b = Tally::default();
        b.outcome(Outcome::NoRecipient, Duration::from_micros(7));
        b.reply("rcpt", &ReceivedReply { kind: b'c', payload: vec![] });
        a.merge(b);
        assert_eq!(a.messages(), 2);
        let r = Report::from_tally(a, Duration::from_secs(1));
        assert_eq!(r.replies.get("rcpt continue"), Some(&1));
        assert_eq!(r.outcomes.get("no_recipient"), Some(&1));
    }
}
