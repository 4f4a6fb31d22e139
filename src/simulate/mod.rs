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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::Config;
use crate::maillog::{self, Skipped};
use input::{InputError, Reader, Source, YearInference};
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

/// A replay in progress: lines in, a [`Report`] out.
pub struct Simulation {
    replay: Replay,
    messages: Reassembly,
    lines: u64,
    postfix_lines: u64,
    unread: [u64; Skipped::ALL.len()],
    first: Option<i64>,
    /// The newest timestamp so far: lines a few seconds out of order keep the clock here.
    last: i64,
    since_ready: u32,
}

impl Simulation {
    pub fn new(config: Arc<Config>) -> Simulation {
        Simulation {
            replay: Replay::new(config),
            messages: Reassembly::default(),
            lines: 0,
            postfix_lines: 0,
            unread: [0; Skipped::ALL.len()],
            first: None,
            last: i64::MIN,
            since_ready: 0,
        }
    }

    /// Takes in one line (without its `\n`), its timestamp read through `years`.
    pub fn line(&mut self, line: &[u8], years: &mut YearInference) {
        self.lines += 1;
        let parsed = match maillog::parse(line) {
            Ok(p) => p,
            Err(kind) => {
                self.unread[kind as usize] += 1;
                return;
            }
        };
        self.postfix_lines += 1;
        let now = years.seconds(parsed.time);
        self.first.get_or_insert(now);
        self.last = self.last.max(now);
        if let Some(id) = parsed.queue_id {
            let key = QueueKey::of(id);
            if self.replay.follows(key) {
                self.replay.later_line(&parsed, key, self.last);
            } else {
                self.messages.line(&parsed, key, self.last);
            }
        }
        self.since_ready += 1;
        if self.since_ready >= READY_EVERY {
            self.since_ready = 0;
            let replay = &mut self.replay;
            self.messages.ready(Some(self.last), |m| replay.message(m));
        }
    }

    /// Replays what is still in flight and reports, naming `files` as read and showing the
    /// `top` busiest accounts.
    ///
    /// # Errors
    /// When no Postfix line came in.
    pub fn finish(mut self, files: Vec<String>, top: usize) -> Result<Report, SimulateError> {
        if self.postfix_lines == 0 {
            return Err(SimulateError::NothingRead { lines: self.lines });
        }
        let replay = &mut self.replay;
        self.messages.ready(None, |m| replay.message(m));
        let tally = self.messages.tally;
        let engine = self.replay.engine();
        let mut policies: HashMap<String, AccountPolicy> = self
            .replay
            .tracker
            .accounts
            .keys()
            .map(|account| {
                let c = engine.counters(account);
                let limits = LimitSet {
                    recipient_limit_external_per_hour: c.external_limit_per_hour,
                    recipient_limit_internal_per_hour: c.internal_limit_per_hour,
                    recipient_limit_per_day: c.limit_per_day,
                };
                (account.to_string(), AccountPolicy { name: engine.policy_name(account), limits })
            })
            .collect();
        let unread = &self.unread;
        let input = InputSummary {
            files,
            lines: self.lines,
            postfix_lines: self.postfix_lines,
            unread: Skipped::ALL.iter().map(|k| (k.name().to_owned(), unread[*k as usize])).collect::<BTreeMap<_, _>>(),
            first: self.first.map(rfc3339),
            last: (self.last != i64::MIN).then(|| rfc3339(self.last)),
        };
        let mut tracker = std::mem::take(&mut self.replay.tracker);
        tracker.messages.not_queued = tally.not_queued;
        tracker.messages.origin_unknown = tally.origin_unknown;
        tracker.messages.incomplete = tally.incomplete;
        Ok(tracker.finish(input, top, |account| {
            policies
                .remove(account)
                .unwrap_or_else(|| AccountPolicy { name: String::new(), limits: LimitSet::default() })
        }))
    }
}

/// Replays `sources` under `config`.
///
/// # Errors
/// A source that cannot be read, or no Postfix line in any of them.
pub fn simulate(config: Arc<Config>, sources: &[Source], options: &Options) -> Result<Report, SimulateError> {
    // Each file's own modification time orders them; a pinned year then runs on from the
    // first line across all of them.
    let ordered = input::in_time_order(sources, None)?;
    let mut carried: Option<YearInference> = None;
    let mut simulation = Simulation::new(config);
    for source in &ordered {
        let mut reader = Reader::open(source, options.year)?;
        if let Some(years) = carried.take() {
            reader.years = years;
        }
        reader.for_each_line(|line, years| {
            simulation.line(line, years);
            true
        })?;
        if options.year.is_some() {
            carried = Some(reader.years.clone());
        }
    }
    simulation.finish(ordered.iter().map(Source::name).collect(), options.top)
}
