//! The load generator behind `milter-load`: many MTA-side milter connections at once, built
//! from the same codec as the filter ([`crate::milter::client`]), writing the way Postfix
//! writes ([`mta`]), sending a deterministic mix of accounts and recipients ([`workload`]),
//! and reporting throughput, latency, the filter's CPU and memory, and every reply it gave
//! ([`stats`], [`procstat`]).
//!
//! A run has an optional pre-warm phase (one pipelined message from each of N other accounts,
//! so the filter holds N accounts when the measured phase starts) and the measured phase.

pub mod mta;
pub mod procstat;
pub mod stats;
pub mod workload;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::config::ListenAddr;
pub use mta::Writes;
use mta::{Conversation, connect};
pub use stats::Report;
use stats::{Prewarm, ServerCost, Tally};
pub use workload::Workload;

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: ListenAddr,
    pub concurrency: usize,
    pub messages: u64,
    pub workload: Workload,
    pub writes: Writes,
    /// Turn Nagle off (Postfix does not).
    pub nodelay: bool,
    /// Keep one milter connection per worker for all its messages, instead of one per
    /// message (Postfix: one per SMTP session).
    pub reuse: bool,
    /// Accounts to make resident before measuring (named `warm<n>@<local domain>`).
    pub prewarm: u64,
    /// The filter's processes, for CPU and memory.
    pub server_pids: Vec<u32>,
    /// Stop sending after this long, whatever is left.
    pub max_time: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: ListenAddr::Inet(std::net::SocketAddr::from(([127, 0, 0, 1], 7357))),
            concurrency: 8,
            messages: 2000,
            workload: Workload::default(),
            writes: Writes::Postfix,
            nodelay: false,
            reuse: false,
            prewarm: 0,
            server_pids: Vec::new(),
            max_time: Duration::from_secs(300),
        }
    }
}

/// Runs the load and reports.
///
/// # Errors
/// When the filter cannot be reached at all (the first connection fails). Failures during the
/// run are counted as errors in the report instead.
pub async fn run(opts: Options) -> io::Result<Report> {
    // Fail early and clearly when nothing listens.
    drop(
        connect(&opts.target, opts.nodelay)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {}: {e}", opts.target)))?,
    );
    let opts = Arc::new(opts);
    let prewarm = if opts.prewarm > 0 { Some(prewarm(&opts).await) } else { None };

    let cpu_before = procstat::sample(&opts.server_pids);
    let client_before = procstat::sample(&[std::process::id()]);
    let started = Instant::now();
    let deadline = started + opts.max_time;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..opts.concurrency.max(1) {
        let (opts, next) = (opts.clone(), next.clone());
        workers.spawn(async move { worker(&opts, &next, deadline).await });
    }
    let mut tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        tally.merge(done.map_err(io::Error::other)?);
    }
    let elapsed = started.elapsed();
    let cpu_after = procstat::sample(&opts.server_pids);
    let client_after = procstat::sample(&[std::process::id()]);

    let tick = procstat::seconds_per_tick();
    let mut report = Report::from_tally(tally, elapsed);
    report.target = opts.target.to_string();
    report.writes = format!("{}{}", opts.writes.name(), if opts.nodelay { ", nodelay" } else { "" });
    report.concurrency = opts.concurrency;
    report.connection_per_message = !opts.reuse;
    report.client_cpu_s = client_after.cpu_ticks.saturating_sub(client_before.cpu_ticks) as f64 * tick;
    report.timed_out = report.messages < opts.messages;
    report.prewarm = prewarm;
    if !opts.server_pids.is_empty() {
        let cpu_s = cpu_after.cpu_ticks.saturating_sub(cpu_before.cpu_ticks) as f64 * tick;
        report.server = Some(ServerCost {
            pids: opts.server_pids.clone(),
            processes: cpu_after.processes,
            cpu_s,
            cpu_us_per_msg: if report.messages > 0 { cpu_s * 1e6 / report.messages as f64 } else { 0.0 },
            peak_rss_kib: cpu_after.peak_rss_kib,
        });
    }
    Ok(report)
}

/// One worker: takes message numbers until all are taken or time is up.
async fn worker(opts: &Options, next: &AtomicU64, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let body = opts.workload.body();
    let mut open: Option<Conversation> = None;
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= opts.messages || Instant::now() >= deadline {
            break;
        }
        let m = opts.workload.message(k);
        let t0 = Instant::now();
        let result = async {
            let mut conv = match open.take() {
                Some(c) => c,
                None => {
                    let (c, stopped) =
                        Conversation::open(&opts.target, opts.writes, opts.nodelay, &opts.workload, &m, &mut tally)
                            .await?;
                    if let Some(outcome) = stopped {
                        // The filter wants nothing of this session.
                        let _ = c.quit().await;
                        return Ok((outcome, None));
                    }
                    c
                }
            };
            let outcome = conv.message(&opts.workload, &m, &body, &mut tally).await?;
            Ok::<_, io::Error>((outcome, Some(conv)))
        }
        .await;
        match result {
            Ok((outcome, conv)) => {
                tally.outcome(outcome, t0.elapsed());
                match conv {
                    Some(c) if opts.reuse => open = Some(c),
                    // The message is decided; a QUIT the filter no longer reads changes nothing.
                    Some(c) => drop(c.quit().await),
                    None => {}
                }
            }
            Err(e) => tally.error(&e, t0.elapsed()),
        }
    }
    if let Some(c) = open {
        let _ = c.quit().await;
    }
    tally
}

/// Sends one message from each of `opts.prewarm` accounts `warm<n>@…`, pipelined in batches
/// on reused connections, so the filter holds that many accounts.
async fn prewarm(opts: &Arc<Options>) -> Prewarm {
    const BATCH: u64 = 256;
    let workload = Workload {
        accounts: opts.prewarm,
        recipients: 1,
        internal: 0,
        account_prefix: "warm".into(),
        ..opts.workload.clone()
    };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..opts.concurrency.max(1) {
        let (opts, next, workload) = (opts.clone(), next.clone(), workload.clone());
        workers.spawn(async move {
            let mut errors = 0u64;
            let mut tally = Tally::default();
            let mut conv: Option<Conversation> = None;
            loop {
                let from = next.fetch_add(BATCH, Ordering::Relaxed);
                if from >= opts.prewarm {
                    break;
                }
                let batch: Vec<_> = (from..(from + BATCH).min(opts.prewarm)).map(|k| workload.message(k)).collect();
                let c = match conv.take() {
                    Some(c) => c,
                    None => match Conversation::open(
                        &opts.target,
                        Writes::Coalesced,
                        true,
                        &workload,
                        &batch[0],
                        &mut tally,
                    )
                    .await
                    {
                        Ok((c, None)) => c,
                        _ => {
                            errors += batch.len() as u64;
                            continue;
                        }
                    },
                };
                let mut c = c;
                match c.pipelined(&workload, &batch).await {
                    Ok(bad) => {
                        errors += bad;
                        conv = Some(c);
                    }
                    Err(_) => errors += batch.len() as u64,
                }
            }
            if let Some(c) = conv {
                let _ = c.quit().await;
            }
            errors
        });
    }
    let mut errors = 0;
    while let Some(e) = workers.join_next().await {
        errors += e.unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Prewarm {
        accounts: opts.prewarm,
        elapsed_s: elapsed,
        msgs_per_s: if elapsed > 0.0 { opts.prewarm as f64 / elapsed } else { 0.0 },
        errors,
    }
}
