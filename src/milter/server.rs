//! The accept loop: binds `inet:`/`unix:` sockets, caps concurrent connections, spawns one task
//! per connection, and drains on shutdown (stop accepting, let messages in flight finish).

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

/// Serves milter connections until `shutdown` turns true, then drains.
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
    loop {
        while tasks.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            r = accept(&listener) => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                // Usually out of file descriptors: wait a little rather than spin.
                warn!(error = %e, "accepting a milter connection failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let session = Session::new(policy.clone(), settings.replies.clone());
        let session = if settings.local_submissions { session.for_local_submissions() } else { session };
        let timeouts = settings.timeouts;
        let shutdown = shutdown.clone();
        let metrics = settings.metrics.clone();
        metrics.milter_connections.inc();
        metrics.milter_connections_open.inc();
        tasks.spawn(async move {
            let ok = match stream {
                Accepted::Tcp(s) => serve_logged(s, session, timeouts, shutdown, id, &peer).await,
                Accepted::Unix(s) => serve_logged(s, session, timeouts, shutdown, id, &peer).await,
            };
            if !ok {
                metrics.milter_connection_errors.inc();
            }
            metrics.milter_connections_open.dec();
            drop(permit);
        });
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

async fn serve_logged<T: Transport, P: Policy>(
    stream: T,
    session: Session<P>,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
    id: u64,
    peer: &str,
) -> bool {
    debug!(conn = id, peer, "milter connection opened");
    match connection::serve(stream, session, timeouts, shutdown).await {
        Ok(()) => {
            debug!(conn = id, peer, "milter connection closed");
            true
        }
        Err(e) => {
            warn!(conn = id, peer, "milter connection ended: {e}");
            false
        }
    }
}
