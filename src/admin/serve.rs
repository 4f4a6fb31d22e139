//! The admin API's accept loop: at most [`MAX_CONNECTIONS`] connections at once, a deadline
//! for every request head ([`HEAD_TIMEOUT`]), and a drain on shutdown.
//!
//! `axum::serve` has neither knob, and an admin port without them can hold every file
//! descriptor of the process, which the milter then cannot accept with. So a connection over
//! the cap is accepted and closed at once (never left in the kernel's backlog), counted in
//! `admin_connections_refused`, and reported in at most one warning per [`WARN_EVERY`].

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Admin connections open at once at most. The page refreshes over one or two keep-alive
/// connections and the CLI opens one per command, so this leaves room for a dozen
/// administrators and a scraper, and keeps the descriptors the admin port can hold far below
/// any `LimitNOFILE`.
pub const MAX_CONNECTIONS: usize = 64;
/// From a connection's opening, or from the end of its last answer, to the end of the next
/// request's head: a client that sends nothing, or dribbles its headers, is closed then. It is
/// also the keep-alive idle time. (The body and the handler have the request's own deadline.)
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning about refused connections per this period.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` turns true; then stops accepting, lets the
/// requests in flight finish (closing idle keep-alive connections at once) and returns.
pub async fn serve(listener: TcpListener, app: Router, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = RefusalLog::default();
    let mut tasks = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).keep_alive(true);
    let mut backoff = Duration::from_millis(10);
    loop {
        while tasks.try_join_next().is_some() {}
        let report_at = refusals.next_report();
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
            () = sleep_until(report_at) => {
                if let Some(n) = refusals.due(Instant::now()) {
                    warn_refused(n);
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                // Usually out of file descriptors: wait a little rather than spin.
                warn!(error = %e, "accepting an admin API connection failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Closed here and now: the descriptor goes back before the next accept.
            drop(stream);
            metrics.admin_connections_refused.inc();
            if let Some(n) = refusals.refused(Instant::now()) {
                warn_refused(n);
            }
            continue;
        };
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let mut stop = shutdown.clone();
        let metrics = metrics.clone();
        metrics.admin_connections_open.inc();
        tasks.spawn(async move {
            // The socket is closed at the end of this block, before the permit goes back.
            let served = {
                let mut conn = pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => r,
                    () = stopped(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            };
            if let Err(e) = served {
                debug!(%peer, "admin API connection ended: {e}");
            }
            metrics.admin_connections_open.dec();
            drop(permit);
        });
    }
    drop(listener);
    if let Some(n) = refusals.flush() {
        warn_refused(n);
    }
    while tasks.try_join_next().is_some() {}
    if !tasks.is_empty() {
        info!(connections = tasks.len(), "waiting for admin API requests in flight");
    }
    let drained = tokio::time::timeout(DRAIN_LIMIT, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(connections = tasks.len(), "admin API connections still busy after {DRAIN_LIMIT:?}; closing them");
        tasks.shutdown().await;
    }
}

fn warn_refused(n: u64) {
    warn!(
        refused = n,
        cap = MAX_CONNECTIONS,
        "admin API connections refused: {MAX_CONNECTIONS} already open (each closed at once)"
    );
}

/// Waits until shutdown is asked for (the guard `wait_for` hands back is not `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Refusals counted between warnings: the first one of a quiet spell is reported at once, the
/// rest together at most once per [`WARN_EVERY`], so a flood writes a line per period, not per
/// connection.
#[derive(Debug, Default)]
struct RefusalLog {
    /// When the last warning was written.
    last: Option<Instant>,
    /// Refusals since then, not yet reported.
    pending: u64,
}

impl RefusalLog {
    /// Counts one refusal at `now`; the number to report when a warning is due.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        self.due(now)
    }

    /// The number to report when refusals are pending and the last warning is old enough.
    fn due(&mut self, now: Instant) -> Option<u64> {
        let quiet = self.last.is_none_or(|last| now.duration_since(last) >= WARN_EVERY);
        if self.pending == 0 || !quiet {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }

    /// When the pending refusals may be reported (none pending: never).
    fn next_report(&self) -> Option<Instant> {
        if self.pending == 0 {
            return None;
        }
        Some(self.last.map_or_else(Instant::now, |last| last + WARN_EVERY))
    }

    /// What is pending, reported regardless of the period (at shutdown).
    fn flush(&mut self) -> Option<u64> {
        (self.pending > 0).then(|| std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_is_one_warning_per_period_with_the_count() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(log.next_report(), None);
        assert_eq!(log.refused(t0), Some(1), "the first refusal of a quiet spell is reported at once");
        for i in 1..=500u64 {
            assert_eq!(log.refused(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.next_report(), Some(t0 + WARN_EVERY));
        assert_eq!(log.due(t0 + WARN_EVERY - Duration::from_millis(1)), None);
        assert_eq!(log.due(t0 + WARN_EVERY), Some(500));
        assert_eq!(log.next_report(), None, "nothing pending, nothing to wake for");
        assert_eq!(log.due(t0 + WARN_EVERY * 5), None);
        // After a quiet spell the next refusal is reported at once again.
        assert_eq!(log.refused(t0 + WARN_EVERY * 5), Some(1));
        assert_eq!(log.refused(t0 + WARN_EVERY * 5), None);
        assert_eq!(log.flush(), Some(1));
        assert_eq!(log.flush(), None);
    }
}
