//! Wiring of the running daemon: the services (engine, reply texts, event consumer), logging,
//! signals, reload, and [`run`], which tests drive directly with a listener bound to port 0,
//! their own clock and their own shutdown channel.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::{Config, ConfigError, LogFormat};
use crate::milter::connection::Timeouts;
use crate::milter::replies::ReplyTexts;
use crate::milter::server::{self, Listener, ServerSettings};
use crate::policy::clock::EngineClock;
use crate::policy::engine::Engine;
use crate::policy::events::{Event, EventSink};
use crate::state::restrictions::MemoryRestrictions;

/// Events waiting for the notifier at most; beyond, new ones are dropped (and counted).
const EVENT_QUEUE: usize = 10_000;
/// How often idle account records are dropped.
const EVICT_EVERY: Duration = Duration::from_secs(600);

/// Everything a running filter shares between connections.
pub struct Services {
    pub engine: Arc<Engine>,
    pub replies: Arc<ArcSwap<ReplyTexts>>,
    events: std::sync::Mutex<Option<mpsc::Receiver<Event>>>,
}

impl Services {
    pub fn new(config: Arc<Config>, clock: EngineClock) -> Services {
        let (sink, events) = EventSink::channel(EVENT_QUEUE);
        let replies = Arc::new(ArcSwap::from_pointee(config.replies.clone()));
        let engine = Arc::new(Engine::new(
            config,
            Arc::new(MemoryRestrictions::default()),
            sink,
            clock,
        ));
        Services {
            engine,
            replies,
            events: std::sync::Mutex::new(Some(events)),
        }
    }

    /// Takes the event receiver (once), for a notifier or a test.
    pub fn take_events(&self) -> Option<mpsc::Receiver<Event>> {
        self.events.lock().ok()?.take()
    }

    /// Puts a new configuration in force for the next transaction, keeping counters and
    /// restrictions. Keys that only take effect at start are reported.
    pub fn reload(&self, config: Arc<Config>) {
        let old = self.engine.config();
        for (key, changed) in [
            ("milter.listen", old.milter.listen != config.milter.listen),
            (
                "milter.max_connections",
                old.milter.max_connections != config.milter.max_connections,
            ),
            (
                "milter.io_timeout",
                old.milter.io_timeout != config.milter.io_timeout,
            ),
            (
                "milter.idle_timeout",
                old.milter.idle_timeout != config.milter.idle_timeout,
            ),
            ("state", old.state != config.state),
            ("admin", old.admin != config.admin),
            ("log", old.log != config.log),
        ] {
            if changed {
                warn!("{key} changed: it takes effect at the next restart");
            }
        }
        self.replies.store(Arc::new(config.replies.clone()));
        self.engine.reload(config);
        info!("configuration reloaded");
    }

    /// Re-reads the configuration file; an invalid one is refused and the running policy stays.
    ///
    /// # Errors
    /// The same error the file would give at start.
    pub fn reload_from(&self, path: &Path) -> Result<(), ConfigError> {
        let config = Config::load(path)?;
        self.reload(Arc::new(config));
        Ok(())
    }
}

/// Serves the milter on `listener` until `shutdown` turns true.
pub async fn run(listener: Listener, services: Arc<Services>, shutdown: watch::Receiver<bool>) {
    let config = services.engine.config();
    let settings = ServerSettings {
        timeouts: Timeouts {
            io: config.milter.io_timeout,
            idle: config.milter.idle_timeout,
        },
        max_connections: config.milter.max_connections,
        replies: services.replies.clone(),
    };
    if let Some(events) = services.take_events() {
        tokio::spawn(log_events(events));
    }
    let evictor = tokio::spawn({
        let engine = services.engine.clone();
        async move {
            let mut tick = tokio::time::interval(EVICT_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let dropped = engine.evict_idle();
                tracing::debug!(
                    dropped,
                    tracked = engine.tracked_accounts(),
                    "idle account records dropped"
                );
            }
        }
    });
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "outbound-guard milter listening");
    }
    server::run(listener, services.engine.clone(), settings, shutdown).await;
    evictor.abort();
    info!("milter stopped");
}

/// Until the notifier exists: every event goes to the log.
async fn log_events(mut events: mpsc::Receiver<Event>) {
    while let Some(e) = events.recv().await {
        info!(event = e.kind.name(), account = %e.account, policy = %e.policy, "{}", e.reason);
    }
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

/// Turns SIGTERM and SIGINT into the shutdown signal, and SIGHUP into a reload of `config_path`.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn handle_signals(
    services: Arc<Services>,
    config_path: std::path::PathBuf,
) -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    match services.reload_from(&config_path) {
                        Ok(()) => info!("SIGHUP: configuration reloaded from {}", config_path.display()),
                        Err(e) => tracing::error!("SIGHUP: configuration refused, the running policy stays: {e}"),
                    }
                    continue;
                }
            };
            info!("{name} received: no new connections; finishing messages in flight");
            let _ = tx.send(true);
            return;
        }
    });
    Ok(rx)
}
