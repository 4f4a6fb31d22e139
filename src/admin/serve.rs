//! The admin API's accept loop: at most [`MAX_CONNECTIONS`] connections at once, a deadline
//! for every request head ([`HEAD_TIMEOUT`]) and for every stalled write ([`WRITE_TIMEOUT`]),
//! and a drain on shutdown.
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
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::milter::server::Throttle;

/// Admin connections open at once at most. The page refreshes over one or two keep-alive
/// connections and the CLI opens one per command, so this leaves room for a dozen
/// administrators and a scraper, and keeps the descriptors the admin port can hold far below
/// any `LimitNOFILE`.
pub const MAX_CONNECTIONS: usize = 64;
/// From a connection's opening, or from the end of its last answer, to the end of the next
/// request's head: a client that sends nothing, or dribbles its headers, is closed then. It is
/// also the keep-alive idle time. (The body and the handler have the request's own deadline.)
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write may make no progress: a client that asks and then stops reading (its
/// receive window full) is closed then, so it cannot hold one of the [`MAX_CONNECTIONS`]
/// slots for as long as it likes. Progress of any size starts the period again, so a slow
/// reader that keeps reading is served to the end.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning of each kind (connections refused, accept failures) per this period.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` turns true; then stops accepting, lets the
/// requests in flight finish (closing idle keep-alive connections at once) and returns.
pub async fn serve(listener: TcpListener, app: Router, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = Throttle::new(WARN_EVERY);
    let mut tasks = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).keep_alive(true);
    let mut accept_failures = Throttle::new(WARN_EVERY);
    let mut last_accept_error = String::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        while tasks.try_join_next().is_some() {}
        let report_at = match (refusals.due(), accept_failures.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
            () = sleep_until(report_at) => {
                let now = Instant::now();
                if let Some(n) = refusals.flush(now) {
                    warn_refused(n);
                }
                if let Some(n) = accept_failures.flush(now) {
                    warn_accept_failed(n, &last_accept_error);
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
                last_accept_error = e.to_string();
                if let Some(n) = accept_failures.record(Instant::now()) {
                    warn_accept_failed(n, &last_accept_error);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Counted before the close, so whoever sees the close also sees the count; closed
            // here and now, so the descriptor is back before the next accept.
            metrics.admin_connections_refused.inc();
            drop(stream);
            debug!(%peer, "admin API connection over the cap closed");
            if let Some(n) = refusals.record(Instant::now()) {
                warn_refused(n);
            }
            continue;
        };
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_TIMEOUT));
        // Boxed: hyper wants an `Unpin` connection, and the timer inside is not.
        let conn = http.serve_connection(TokioIo::new(Box::pin(stream)), TowerToHyperService::new(app.clone()));
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
    if let Some(n) = refusals.flush_all(Instant::now()) {
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
        "closed {n} admin API connection(s) as soon as accepted since the last such line: \
         {MAX_CONNECTIONS} are open"
    );
}

fn warn_accept_failed(n: u64, last: &str) {
    warn!(
        failures = n,
        "accepting an admin API connection failed {n} time(s) since the last such line (last error: {last})"
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
