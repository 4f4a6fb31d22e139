//! `outbound-guard simulate`: what a `plugin.toml` would have done to the mail in a Postfix
//! log, without a running filter and without changing any state.
//!
//! - [`input`]: files (plain or gzip) and standard input, in the order of their first
//!   timestamp; the year of syslog timestamps inferred.
//! - [`messages`]: each accepted message rebuilt from its lines (`crate::maillog`), handed
//!   over in acceptance order.
//! - [`replay`]: each message through the daemon's own engine on the log's clock.
//! - [`report`]: what the replay found, as data; [`text`] renders it, `--json` serialises it,
//!   [`html`] makes a page of it with the charts of [`plot`].
//!
//! Memory is bounded by the accounts seen and the messages in flight (accepted within
//! [`messages::HORIZON_SECS`], or still queued), not by the number of lines.

pub mod html;
pub mod input;
pub mod messages;
pub mod plot;
pub mod replay;
pub mod report;
pub mod text;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::maillog::{self, Skipped};
use input::{InputError, Reader, Source};
use messages::{QueueKey, Reassembly};
use replay::Replay;
use report::{AccountPolicy, InputSummary, LimitSet, Report, rfc3339};

/// How the simulation reads its input and what it reports.
#[derive(Debug, Clone)]
pub struct Options {
    /// The busiest accounts shown.
    pub top: usize,
    /// The year of the first line, for syslog timestamps without one (inferred when `None`).
    pub year: Option<i32>,
}

impl Default for Options {
    fn default() -> Options {
        Options { top: 10, year: None }
    }
}

/// Why a simulation gives no report.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("no Postfix log line could be read ({lines} lines, none of them Postfix's)")]
    NothingRead { lines: u64 },
}

/// Lines between two looks at the messages due for replay.
const READY_EVERY: u32 = 64;

/// Replays `sources` under `config`.
///
/// # Errors
/// A source that cannot be read, or no Postfix line in any of them.
pub fn simulate(config: Arc<Config>, sources: &[Source], options: &Options) -> Result<Report, SimulateError> {
    // Each file's own modification time orders them; a pinned year then runs on from the
    // first line across all of them.
    let ordered = input::in_time_order(sources, None)?;
    let mut carried: Option<input::YearInference> = None;
    let mut replay = Replay::new(config);
    let mut messages = Reassembly::default();
    let mut lines = 0u64;
    let mut postfix_lines = 0u64;
    let mut unread = [0u64; Skipped::ALL.len()];
    let mut first: Option<i64> = None;
    let mut last: i64 = i64::MIN;
    let mut since_ready = 0u32;
    for source in &ordered {
        let mut reader = Reader::open(source, options.year)?;
        if let Some(years) = carried.take() {
            reader.years = years;
        }
        reader.for_each_line(|line, years| {
            lines += 1;
            let parsed = match maillog::parse(line) {
                Ok(p) => p,
                Err(kind) => {
                    unread[kind as usize] += 1;
                    return true;
                }
            };
            postfix_lines += 1;
            let now = years.seconds(parsed.time);
            first.get_or_insert(now);
            // Lines a few seconds out of order keep the clock where it was.
            last = last.max(now);
            if let Some(id) = parsed.queue_id {
                let key = QueueKey::of(id);
                if replay.follows(key) {
                    replay.later_line(&parsed, key, last);
                } else {
                    messages.line(&parsed, key, last);
                }
            }
            since_ready += 1;
            if since_ready >= READY_EVERY {
                since_ready = 0;
                messages.ready(Some(last), |m| replay.message(m));
            }
            true
        })?;
        if options.year.is_some() {
            carried = Some(reader.years.clone());
        }
    }
    if postfix_lines == 0 {
        return Err(SimulateError::NothingRead { lines });
    }
    messages.ready(None, |m| replay.message(m));
    let tally = messages.tally;
    let engine_policy = |account: &str| {
        let engine = replay.engine();
        let c = engine.counters(account);
        AccountPolicy {
            name: engine.policy_name(account),
            limits: LimitSet {
                recipient_limit_external_per_hour: c.external_limit_per_hour,
                recipient_limit_internal_per_hour: c.internal_limit_per_hour,
                recipient_limit_per_day: c.limit_per_day,
            },
        }
    };
    let policies: Vec<(String, AccountPolicy)> =
        replay.tracker.accounts.keys().map(|a| (a.to_string(), engine_policy(a))).collect();
    let mut policies: std::collections::HashMap<String, AccountPolicy> = policies.into_iter().collect();
    let input = InputSummary {
        files: ordered.iter().map(Source::name).collect(),
        lines,
        postfix_lines,
        unread: Skipped::ALL.iter().map(|k| (k.name().to_owned(), unread[*k as usize])).collect::<BTreeMap<_, _>>(),
        first: first.map(rfc3339),
        last: (last != i64::MIN).then(|| rfc3339(last)),
    };
    let mut tracker = std::mem::take(&mut replay.tracker);
    tracker.messages.not_queued = tally.not_queued;
    tracker.messages.origin_unknown = tally.origin_unknown;
    tracker.messages.incomplete = tally.incomplete;
    Ok(tracker.finish(input, options.top, |account| {
        policies.remove(account).unwrap_or_else(|| AccountPolicy { name: String::new(), limits: LimitSet::default() })
    }))
}
