//! Wiring of the running daemon: the services (engine, durable restrictions, reply texts,
//! events), logging, signals, reload, the admin API, and [`run`], which tests drive directly
//! with listeners bound to port 0, their own clock and their own shutdown channel.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admin::api::{self, AdminState};
use crate::cluster::{Cluster, ClusterPolicy, ClusterRestrictions};
use crate::config::ReplyTexts;
use crate::config::error::{KeyPath, Seg};
use crate::config::{Backend, Config, ConfigError, LogFormat, RedisTarget};
use crate::metrics::Metrics;
use crate::milter::connection::Timeouts;
use crate::milter::server::{self, Listener, ServerSettings};
use crate::notify::NotifierHandle;
use crate::policy::clock::{EngineClock, steady};
use crate::policy::engine::Engine;
use crate::policy::events::{Event, EventSink};
use crate::policy::restriction::{RestrictionStore, StoreError};
use crate::state::durable::DurableRestrictions;
use crate::state::snapshot;

/// Events waiting for the notifier at most; beyond, new ones are dropped (and counted).
const EVENT_QUEUE: usize = 10_000;
/// How often idle account records are dropped.
const EVICT_EVERY: Duration = Duration::from_secs(600);
/// How often the engine's time is checked against the system clock.
const CLOCK_FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// How long a starting node in cluster mode waits for its first connection to Redis.
const CLUSTER_START_WAIT: Duration = Duration::from_secs(3);
/// The counters snapshot inside `state.dir`.
const SNAPSHOT_FILE: &str = "counters.snapshot";

/// Why the daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] crate::admin::token::TokenError),
    #[error("cannot listen on {addr} for the admin API: {source}")]
    AdminBind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
}

/// The configuration at `path` as the daemon takes it at start and on reload, and as
/// `check-config` judges it: the file's own checks, then the notification template overrides,
/// which only the notifier can compile; an error in one is reported at `notify.templates_dir`
/// like any other error in the file. One function for the three, so that a file reload accepts
/// is one start would accept.
///
/// # Errors
/// [`ConfigError`], naming the file, line, key and value.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
    let config = Config::parse(path, &source)?;
    crate::notify::templates::check(&config).map_err(|e| {
        let key = KeyPath(vec![Seg::Key("notify".into()), Seg::Key("templates_dir".into())]);
        ConfigError::at(path, &source, &key, e.to_string())
    })?;
    Ok(config)
}

/// Everything a running filter shares between connections.
pub struct Services {
    pub engine: Arc<Engine>,
    pub replies: Arc<ArcSwap<ReplyTexts>>,
    config_path: PathBuf,
    events: std::sync::Mutex<Option<mpsc::Receiver<Event>>>,
    notifier: std::sync::Mutex<Option<NotifierHandle>>,
    /// The notices recorded with the last week's changes, for the notifier to spool what a
    /// crash kept from it.
    recorded_notices: std::sync::Mutex<Vec<Event>>,
    /// Cluster mode: this node's share and where Redis is.
    cluster: Option<(Arc<Cluster>, RedisTarget)>,
}

impl Services {
    /// Opens the state directory (restrictions journal, audit log, counters snapshot) and builds
    /// the engine.
    ///
    /// # Errors
    /// When the state directory cannot be used.
    pub fn new(config: Arc<Config>, clock: EngineClock) -> Result<Services, StartError> {
        let (sink, events) = EventSink::channel(EVENT_QUEUE);
        let replies = Arc::new(ArcSwap::from_pointee(config.replies.clone()));
        let durable = Arc::new(DurableRestrictions::open(&config.state.dir, clock.now().secs())?);
        let recorded_notices = std::sync::Mutex::new(durable.recent_notices());
        let metrics = Arc::new(match config.state.backend {
            Backend::Memory => Metrics::new(),
            Backend::Redis(_) => Metrics::for_cluster(),
        });
        let (store, cluster): (Arc<dyn RestrictionStore>, _) = match &config.state.backend {
            Backend::Memory => (durable, None),
            Backend::Redis(url) => {
                let target = url.target().clone();
                // Unique per process, also for two nodes on one host.
                let node = format!("{}/{}", config.notify.node_name, std::process::id());
                let cluster =
                    Cluster::new(node, durable.clone(), clock.clone(), metrics.clone(), config.milter.io_timeout);
                (Arc::new(ClusterRestrictions::new(durable, cluster.clone())), Some((cluster, target)))
            }
        };
        let snapshot_path = config.state.dir.join(SNAPSHOT_FILE);
        let config_path = config.file.clone();
        let engine = Arc::new(Engine::new(config, store, sink, clock, metrics));
        match snapshot::read(&snapshot_path) {
            Ok(Some(records)) => {
                let restored = engine.restore_records(records);
                info!(accounts = restored, "counters restored from the last graceful shutdown");
            }
            Ok(None) => {}
            Err(e) => warn!("{e}; counters start empty"),
        }
        // A snapshot is only valid once: after a crash it would hand back stale counters.
        let _ = std::fs::remove_file(&snapshot_path);
        Ok(Services {
            engine,
            replies,
            config_path,
            events: std::sync::Mutex::new(Some(events)),
            notifier: std::sync::Mutex::new(None),
            recorded_notices,
            cluster,
        })
    }

    /// Starts the notifier on the engine's events (email, webhook, spool).
    ///
    /// # Errors
    /// When the spool or the templates cannot be used.
    pub fn start_notifier(&self, shutdown: watch::Receiver<bool>) -> Result<(), StartError> {
        let Some(events) = self.take_events() else { return Ok(()) };
        let replay =
            std::mem::take(&mut *self.recorded_notices.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let handle = crate::notify::spawn(self.engine.config(), events, replay, shutdown)?;
        *self.notifier.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
        Ok(())
    }

    fn notifier(&self) -> std::sync::MutexGuard<'_, Option<NotifierHandle>> {
        self.notifier.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            ("milter.local_listen", old.milter.local_listen != config.milter.local_listen),
            ("milter.max_connections", old.milter.max_connections != config.milter.max_connections),
            ("milter.io_timeout", old.milter.io_timeout != config.milter.io_timeout),
            ("milter.idle_timeout", old.milter.idle_timeout != config.milter.idle_timeout),
            ("state", old.state != config.state),
            ("admin", old.admin != config.admin),
            ("log", old.log != config.log),
            ("delivery.postfix_log", old.delivery != config.delivery),
        ] {
            if changed {
                warn!("{key} changed: it takes effect at the next restart");
            }
        }
        self.replies.store(Arc::new(config.replies.clone()));
        if let Some(notifier) = self.notifier().as_ref()
            && let Err(e) = notifier.reload(config.clone())
        {
            warn!("notification templates kept from before the reload: {e}");
        }
        self.engine.reload(config);
        info!("configuration reloaded");
    }

    /// Re-reads the configuration file; an invalid one is refused and the running policy stays.
    ///
    /// # Errors
    /// The same error the file would give at start ([`load_config`]).
    pub fn reload_from(&self, path: &Path) -> Result<(), ConfigError> {
        let config = load_config(path)?;
        self.reload(Arc::new(config));
        Ok(())
    }

    /// Writes the counters snapshot (graceful shutdown).
    pub fn save_counters(&self) {
        let path = self.engine.config().state.dir.join(SNAPSHOT_FILE);
        match snapshot::write(&path, self.engine.records()) {
            Ok(n) => info!(accounts = n, file = %path.display(), "counters saved"),
            Err(e) => warn!(file = %path.display(), "cannot save counters: {e}"),
        }
    }

    /// The state the admin API works on.
    pub fn admin_state(self: &Arc<Self>, token: String) -> AdminState {
        let services = self.clone();
        AdminState {
            engine: self.engine.clone(),
            token: token.into(),
            reload: Arc::new(move || {
                let path = services.config_path.clone();
                services.reload_from(&path).map_err(|e| e.to_string())
            }),
            on_scrape: Some(Arc::new({
                let services = self.clone();
                move || services.copy_notification_stats()
            })),
        }
    }

    fn copy_notification_stats(&self) {
        let Some(stats) = self.notifier().as_ref().map(NotifierHandle::stats) else { return };
        let metrics = self.engine.metrics();
        for (channel, c) in [("email", &stats.email), ("webhook", &stats.webhook)] {
            metrics.set_notifications(channel, "delivered", c.delivered);
            metrics.set_notifications(channel, "failed", c.failed_attempts);
            metrics.notifications_pending(channel, c.pending);
        }
    }
}

/// Runs `f` when there is one.
async fn optional(f: Option<impl std::future::Future<Output = ()>>) {
    if let Some(f) = f {
        f.await;
    }
}

/// Binds the admin API listener and loads (or creates) its token.
///
/// # Errors
/// When the address cannot be bound or the token file is unusable.
pub async fn bind_admin(config: &Config) -> Result<(tokio::net::TcpListener, String), StartError> {
    let token = crate::admin::token::load_or_create(&config.admin.token_file)?;
    let listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| StartError::AdminBind { addr: config.admin.listen.to_string(), source })?;
    Ok((listener, token))
}

/// The milter's sockets: the one for SMTP sessions (`milter.listen`) and, when configured,
/// the one for local submissions (`milter.local_listen`).
pub struct MilterListeners {
    pub smtp: Listener,
    pub local: Option<Listener>,
}

impl From<Listener> for MilterListeners {
    fn from(smtp: Listener) -> Self {
        MilterListeners { smtp, local: None }
    }
}

/// Serves the milter on `listeners` (and the admin API on `admin`, when given) until
/// `shutdown` turns true; then drains, saves the counters and returns.
pub async fn run(
    listeners: impl Into<MilterListeners>,
    admin: Option<(tokio::net::TcpListener, AdminState)>,
    services: Arc<Services>,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = services.engine.config();
    let settings = ServerSettings {
        timeouts: Timeouts { io: config.milter.io_timeout, idle: config.milter.idle_timeout },
        max_connections: config.milter.max_connections,
        replies: services.replies.clone(),
        metrics: services.engine.metrics().clone(),
        local_submissions: false,
    };
    // Without a notifier (tests that read the events themselves take them first), events
    // still reach the log.
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
                tracing::debug!(dropped, tracked = engine.tracked_accounts(), "idle account records dropped");
            }
        }
    });
    let sampler = tokio::spawn({
        let engine = services.engine.clone();
        async move {
            let mut tick = tokio::time::interval(crate::policy::hourly::SAMPLE_EVERY);
            // A late pass is a gap: the series says so (`policy::hourly`) rather than catching up.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // The walk reads every shard of the account table: off the runtime's workers.
                let engine = engine.clone();
                match tokio::task::spawn_blocking(move || engine.sample_hourly()).await {
                    Ok(pass) => tracing::debug!(?pass, "per-hour series sampled"),
                    Err(e) => warn!("per-hour sampler: {e}"),
                }
            }
        }
    });
    let clock_follower = follow_clock_steps(&services.engine);
    let delivery = config.delivery.postfix_log.clone().and_then(|log| {
        info!(file = %log.display(), "following the Postfix log for delivery outcomes");
        crate::delivery::spawn(services.engine.clone(), log, shutdown.clone())
    });
    let admin_task = admin.map(|(l, state)| {
        if let Ok(addr) = l.local_addr() {
            info!(listen = %addr, "admin API listening");
        }
        let metrics = state.engine.metrics().clone();
        tokio::spawn(crate::admin::serve::serve(l, api::router(state), metrics, shutdown.clone()))
    });
    let cluster_tasks = match &services.cluster {
        Some((cluster, target)) => {
            let tasks = cluster.spawn(target.clone(), &services.engine, shutdown.clone());
            // Start with the shared view when Redis answers at once; otherwise locally.
            cluster.first_attempt(CLUSTER_START_WAIT).await;
            tasks
        }
        None => Vec::new(),
    };
    let MilterListeners { smtp, local } = listeners.into();
    if let Some(addr) = local.as_ref().and_then(|l| l.local_addr().ok()) {
        info!(listen = %addr, "local submissions listening");
    }
    if let Ok(addr) = smtp.local_addr() {
        info!(listen = %addr, "outbound-guard milter listening");
    }
    let local_settings = ServerSettings { local_submissions: true, ..settings.clone() };
    match &services.cluster {
        Some((cluster, _)) => {
            let policy = Arc::new(ClusterPolicy::new(services.engine.clone(), cluster.clone()));
            let local = local.map(|l| server::run(l, policy.clone(), local_settings, shutdown.clone()));
            tokio::join!(server::run(smtp, policy, settings, shutdown.clone()), optional(local));
        }
        None => {
            let engine = services.engine.clone();
            let local = local.map(|l| server::run(l, engine.clone(), local_settings, shutdown.clone()));
            tokio::join!(server::run(smtp, engine, settings, shutdown.clone()), optional(local));
        }
    }
    let _ = shutdown.wait_for(|s| *s).await;
    evictor.abort();
    sampler.abort();
    if let Some(task) = clock_follower {
        task.abort();
    }
    if let Some(task) = delivery {
        task.abort();
    }
    if let Some((cluster, _)) = &services.cluster {
        cluster.flush(Duration::from_secs(2)).await;
    }
    for task in cluster_tasks {
        task.abort();
    }
    if let Some(task) = admin_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    services.save_counters();
    let notifier = services.notifier().take();
    if let Some(notifier) = notifier {
        let stats = notifier.join().await;
        if stats.email.pending + stats.webhook.pending > 0 {
            warn!(
                email = stats.email.pending,
                webhook = stats.webhook.pending,
                "notifications still pending; they are retried at the next start"
            );
        }
    }
    info!("stopped");
}

/// Until the notifier exists: every event goes to the log.
/// Keeps the engine's time on a stepped system clock, gradually (`policy::clock::steady`),
/// and says so in the log and the `clock_behind_seconds` gauge. Only for the system clock, and
/// only once per process.
fn follow_clock_steps(engine: &Arc<Engine>) -> Option<tokio::task::JoinHandle<()>> {
    if !matches!(engine.clock(), EngineClock::System) {
        return None;
    }
    let mut follower = steady::Follower::start()?;
    let metrics = engine.metrics().clone();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(CLOCK_FOLLOW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let t = follower.tick();
            metrics.clock_behind_seconds.set(t.behind_nanos / 1_000_000_000);
            if let Some(step) = t.stepped_nanos {
                warn!(
                    step_seconds = step / 1_000_000_000,
                    behind_seconds = t.behind_nanos / 1_000_000_000,
                    "the system clock was stepped; the filter's time follows it at a tenth of real speed, so that no restriction ends early and none is held long"
                );
            }
            if t.caught_up {
                info!("the filter's time has caught up with the system clock");
            }
        }
    }))
}

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
    // Colours only for a person at a terminal: journald, syslog and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Turns SIGTERM and SIGINT into the shutdown signal, and SIGHUP into a reload of `config_path`.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn handle_signals(services: Arc<Services>, config_path: PathBuf) -> std::io::Result<watch::Receiver<bool>> {
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
