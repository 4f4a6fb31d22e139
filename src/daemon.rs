//! Wiring of the running daemon: logging setup, signal handling, and [`run`], which tests drive
//! directly with a listener bound to port 0 and their own shutdown channel.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

use crate::config::{Config, LogFormat};
use crate::milter::connection::Timeouts;
use crate::milter::server::{self, Listener, ServerSettings};
use crate::policy::PassThrough;

/// Serves the milter on `listener` with `config` until `shutdown` turns true.
pub async fn run(listener: Listener, config: Arc<Config>, shutdown: watch::Receiver<bool>) {
    let settings = ServerSettings {
        timeouts: Timeouts {
            io: config.milter.io_timeout,
            idle: config.milter.idle_timeout,
        },
        max_connections: config.milter.max_connections,
        replies: Arc::new(config.replies.clone()),
    };
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "outbound-guard milter listening");
    }
    server::run(listener, Arc::new(PassThrough), settings, shutdown).await;
    info!("milter stopped");
}

/// Installs the global log subscriber: text or JSON lines on stderr. `RUST_LOG` overrides the
/// configured level.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Turns SIGTERM and SIGINT into the shutdown signal.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn shutdown_on_signals() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!("{name} received: no new connections; finishing messages in flight");
        let _ = tx.send(true);
    });
    Ok(rx)
}
