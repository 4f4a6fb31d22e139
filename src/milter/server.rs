//! The accept loop: binds `inet:`/`unix:` sockets, caps concurrent connections (closing those
//! over the cap at once), spawns one task per connection, rate-limits its own warnings, and
//! drains on shutdown (stop accepting, let messages in flight finish).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::connection::{self, Timeouts, Transport};
use super::session::Session;
use crate::config::ListenAddr;
use crate::config::ReplyTexts;
use crate::metrics::Metrics;
use crate::policy::Policy;

/// How long shutdown waits for connections with a message in flight.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// A bound milter socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix { listener: UnixListener, path: PathBuf },
}

/// Why the milter socket cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Io { addr: String, source: io::Error },
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    #[error("{0} is in use by a running process")]
    InUse(PathBuf),
}

impl Listener {
    /// Binds `addr`. A leftover unix socket from a previous run is removed, but only if it is a
    /// socket and nothing answers on it.
    ///
    /// # Errors
    /// [`BindError`] naming the address.
    pub async fn bind(addr: &ListenAddr, socket_mode: u32) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io { addr: addr.to_string(), source };
        match addr {
            ListenAddr::Inet(sa) => Ok(Listener::Tcp(TcpListener::bind(sa).await.map_err(io_err)?)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                let listener = UnixListener::bind(path).map_err(io_err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode)).map_err(io_err)?;
                Ok(Listener::Unix { listener, path: path.clone() })
            }
        }
    }

    /// The bound address in the configuration's notation (the real port when 0 was asked).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => Ok(ListenAddr::Inet(l.local_addr()?)),
            Listener::Unix { path, .. } => Ok(ListenAddr::Unix(path.clone())),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn remove_stale_socket(path: &Path) -> Result<(), BindError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(path.to_owned()));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(BindError::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| BindError::Io { addr: format!("unix:{}", path.display()), source })
}

/// Connection settings shared by every session.
#[derive(Clone)]
pub struct ServerSettings {
    pub timeouts: Timeouts,
    pub max_connections: usize,
    pub replies: Arc<ArcSwap<ReplyTexts>>,
    pub metrics: Arc<Metrics>,
    /// Whether the listener is `milter.local_listen` (every transaction a local submission).
    pub local_submissions: bool,
}

/// At most one warning line of each kind (connections refused, accept failures) per this
/// period; what happens in between is counted and reported in the next line.
const WARN_PERIOD: Duration = Duration::from_secs(10);

/// Serves milter connections until `shutdown` turns true, then drains.
///
/// A connection beyond `max_connections` is accepted and closed at once. Leaving it in the
/// kernel's accept queue (what waiting for a free slot before `accept` did) gives the MTA
/// nothing to act on: it waits for its own timeout while the SMTP client waits too. A close
/// is a signal every MTA understands before any packet is exchanged, so Postfix applies its
/// `milter_default_action` (and Sendmail its `F=` flags) immediately. Answering the
/// negotiation with a refusal instead would need a task, a read under `io_timeout` and a
/// reply per refused connection (the very resources the cap protects), and Postfix treats an
/// unexpected reply to OPTNEG as it treats a closed connection anyway.
pub async fn run<P: Policy>(
    listener: Listener,
    policy: Arc<P>,
    settings: ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(settings.max_connections));
    let mut tasks = JoinSet::new();
    let ids = AtomicU64::new(0);
    let mut backoff = Duration::from_millis(10);
    let mut refusals = Throttle::new(WARN_PERIOD);
    let mut accept_failures = Throttle::new(WARN_PERIOD);
    let mut last_accept_error = String::new();
    let ended = Arc::new(std::sync::Mutex::new(EndedWithErrors::default()));
    let warn_refused = |n: u64| {
        warn!(
            refused = n,
            max_connections = settings.max_connections,
            "closed {n} milter connection(s) as soon as accepted since the last such line: \
             max_connections ({}) are open",
            settings.max_connections
        );
    };
    let warn_accept_failed = |n: u64, last: &str, backoff: Duration| {
        warn!(
            failures = n,
            "accepting a milter connection failed {n} time(s) since the last such line \
             (last error: {last}); retrying in {backoff:?}"
        );
    };
    loop {
        while tasks.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        let report_at = earliest(earliest(refusals.due(), accept_failures.due()), lock(&ended).due());
        let accepted = tokio::select! {
            r = accept(&listener) => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
            () = sleep_until_some(report_at) => {
                let now = Instant::now();
                if let Some(n) = refusals.flush(now) {
                    warn_refused(n);
                }
                if let Some(n) = accept_failures.flush(now) {
                    warn_accept_failed(n, &last_accept_error, backoff);
                }
                lock(&ended).flush(now, false);
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
                    warn_accept_failed(n, &last_accept_error, backoff);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Counted before the close, so whoever sees the close also sees the count.
            settings.metrics.milter_connections_refused.inc();
            drop(stream);
            debug!(peer, "milter connection over max_connections closed");
            if let Some(n) = refusals.record(Instant::now()) {
                warn_refused(n);
            }
            continue;
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(policy.clone(), settings.replies.clone())
            .counting_header_budget(settings.metrics.milter_header_budget_exceeded.clone());
        let session = if settings.local_submissions { session.for_local_submissions() } else { session };
        let timeouts = settings.timeouts;
        let shutdown = shutdown.clone();
        let metrics = settings.metrics.clone();
        metrics.milter_connections.inc();
        metrics.milter_connections_open.inc();
        let ended = ended.clone();
        // Boxed: the task then holds a pointer, not the connection's ~2 KiB future, which tokio
        // would otherwise copy at spawn, into the task and again when the JoinSet takes the
        // output (about 1,900 instructions per connection, that is per message with Postfix).
        tasks.spawn(Box::pin(async move {
            let outcome = match stream {
                Accepted::Tcp(s) => serve_logged(s, session, timeouts, shutdown, id, &peer).await,
                Accepted::Unix(s) => serve_logged(s, session, timeouts, shutdown, id, &peer).await,
            };
            if let Err(e) = outcome {
                metrics.milter_connection_errors.inc();
                lock(&ended).record(Instant::now(), id, &peer, e);
            }
            metrics.milter_connections_open.dec();
            drop(permit);
        }));
    }
    // Whatever was counted since the last line is not lost at shutdown.
    let now = Instant::now();
    if let Some(n) = refusals.flush_all(now) {
        warn_refused(n);
    }
    if let Some(n) = accept_failures.flush_all(now) {
        warn_accept_failed(n, &last_accept_error, backoff);
    }
    drop(listener);
    while tasks.try_join_next().is_some() {}
    if !tasks.is_empty() {
        info!(connections = tasks.len(), "waiting for messages in flight to finish");
    }
    let drained = tokio::time::timeout(DRAIN_LIMIT, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(connections = tasks.len(), "connections still busy after {DRAIN_LIMIT:?}; closing them");
        tasks.shutdown().await;
    }
    // Whatever was counted since the last line, including while draining, is not lost.
    lock(&ended).flush(Instant::now(), true);
}

/// Counts a repeated event and says when a log line for it is due: the first at once, then at
/// most one per period, carrying the count since the previous line. Time is passed in, so the
/// tests need no clock. The admin API's accept loop uses it too.
pub(crate) struct Throttle {
    period: Duration,
    last_line: Option<Instant>,
    pending: u64,
}

impl Throttle {
    pub(crate) fn new(period: Duration) -> Throttle {
        Throttle { period, last_line: None, pending: 0 }
    }

    /// Counts one event; the count to log if a line is due now.
    pub(crate) fn record(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        self.flush(now)
    }

    /// When the events counted since the last line must be written, if any are.
    pub(crate) fn due(&self) -> Option<Instant> {
        // The first event is written at once, so a pending count always follows a line.
        self.last_line.filter(|_| self.pending > 0).map(|t| t + self.period)
    }

    /// The count to log if a line is due at `now` (then counting starts again).
    pub(crate) fn flush(&mut self, now: Instant) -> Option<u64> {
        let due = self.last_line.is_none_or(|t| now >= t + self.period);
        if self.pending == 0 || !due {
            return None;
        }
        self.flush_all(now)
    }

    /// The count not yet logged, whether a line is due or not.
    pub(crate) fn flush_all(&mut self, now: Instant) -> Option<u64> {
        if self.pending == 0 {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Accepted, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            Ok((Accepted::Tcp(s), addr.to_string()))
        }
        Listener::Unix { listener, .. } => {
            let (s, _) = listener.accept().await?;
            Ok((Accepted::Unix(s), "unix".to_owned()))
        }
    }
}

/// Serves one connection; its error, if it ended with one (logged by the caller, throttled).
async fn serve_logged<T: Transport, P: Policy>(
    stream: T,
    session: Session<P>,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
    id: u64,
    peer: &str,
) -> Result<(), String> {
    debug!(conn = id, peer, "milter connection opened");
    match connection::serve(stream, session, timeouts, shutdown).await {
        Ok(()) => {
            debug!(conn = id, peer, "milter connection closed");
            Ok(())
        }
        Err(e) => {
            debug!(conn = id, peer, "milter connection ended: {e}");
            Err(e.to_string())
        }
    }
}

/// The warnings for connections that ended with an error (bad input, a vanished peer): the
/// first at once with its detail, then at most one per [`WARN_PERIOD`] with the count since
/// and the last one's detail — a flood of garbage connections writes a line every 10 s, not
/// one per connection. Each connection's own line stays at debug level.
struct EndedWithErrors {
    throttle: Throttle,
    /// The last error not yet written: connection id, peer, error.
    last: Option<(u64, String, String)>,
}

impl Default for EndedWithErrors {
    fn default() -> Self {
        EndedWithErrors { throttle: Throttle::new(WARN_PERIOD), last: None }
    }
}

impl EndedWithErrors {
    fn record(&mut self, now: Instant, id: u64, peer: &str, error: String) {
        self.last = Some((id, peer.to_owned(), error));
        if let Some(n) = self.throttle.record(now) {
            self.write(n);
        }
    }

    fn due(&self) -> Option<Instant> {
        self.throttle.due()
    }

    /// Writes what was counted if a line is due (or whatever is left, at `shutdown`).
    fn flush(&mut self, now: Instant, shutdown: bool) {
        let n = if shutdown { self.throttle.flush_all(now) } else { self.throttle.flush(now) };
        if let Some(n) = n {
            self.write(n);
        }
    }

    fn write(&mut self, n: u64) {
        let Some((id, peer, error)) = self.last.take() else { return };
        if n == 1 {
            warn!(conn = id, peer, "milter connection ended: {error}");
        } else {
            warn!(
                connections = n,
                "{n} milter connections ended with an error since the last such line; the last (conn {id}, {peer}): {error}"
            );
        }
    }
}

/// The lock of the connection-error lines; a panic while holding it only loses a count.
fn lock(m: &std::sync::Mutex<EndedWithErrors>) -> std::sync::MutexGuard<'_, EndedWithErrors> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_event_is_logged_at_once_then_one_line_per_period() {
        let t0 = Instant::now();
        let mut t = Throttle::new(PERIOD);
        assert_eq!(t.due(), None);
        assert_eq!(t.record(t0), Some(1));
        // A burst inside the period: counted, not logged.
        for i in 1..=1000 {
            assert_eq!(t.record(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.due(), Some(t0 + PERIOD));
        assert_eq!(t.flush(t0 + PERIOD - Duration::from_millis(1)), None);
        assert_eq!(t.flush(t0 + PERIOD), Some(1000));
        // Nothing since: nothing to write, nothing due.
        assert_eq!(t.due(), None);
        assert_eq!(t.flush(t0 + PERIOD * 5), None);
        // Quiet for longer than a period: the next event is logged at once again.
        assert_eq!(t.record(t0 + PERIOD * 5), Some(1));
    }

    #[test]
    fn an_event_after_the_period_carries_the_count_since_the_last_line() {
        let t0 = Instant::now();
        let mut t = Throttle::new(PERIOD);
        assert_eq!(t.record(t0), Some(1));
        assert_eq!(t.record(t0 + Duration::from_secs(3)), None);
        assert_eq!(t.record(t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(t.record(t0 + Duration::from_secs(12)), None);
        assert_eq!(t.flush_all(t0 + Duration::from_secs(13)), Some(1));
        assert_eq!(t.flush_all(t0 + Duration::from_secs(14)), None);
    }

    #[test]
    fn earliest_of_two_optional_instants() {
        let t0 = Instant::now();
        let t1 = t0 + PERIOD;
        assert_eq!(earliest(None, None), None);
        assert_eq!(earliest(Some(t1), None), Some(t1));
        assert_eq!(earliest(None, Some(t0)), Some(t0));
        assert_eq!(earliest(Some(t1), Some(t0)), Some(t0));
    }
}
