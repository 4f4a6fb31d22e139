//! An in-process filter on a loopback port, driven by the tests with our MTA-side client.

use std::net::SocketAddr;
use std::sync::Arc;

use outbound_guard::config::{Config, ListenAddr};
use outbound_guard::daemon::{self, Services};
use outbound_guard::milter::server::Listener;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::events::Event;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// 2026-11-22T10:00:00Z, where the manual clock of a test daemon starts.
pub const START: u64 = 1_795_341_600;

/// A running filter; dropping it without [`TestDaemon::stop`] aborts it.
pub struct TestDaemon {
    pub addr: SocketAddr,
    /// The socket for local submissions (as `milter.local_listen` would be).
    pub local_addr: SocketAddr,
    pub config: Arc<Config>,
    pub services: Arc<Services>,
    /// The engine's clock: manual, starting at 2026-11-22T10:00:00Z.
    pub clock: EngineClock,
    /// Events the engine raised.
    pub events: tokio::sync::mpsc::Receiver<Event>,
    /// The admin API's address and bearer token.
    pub admin_addr: SocketAddr,
    pub token: String,
    /// Holds `state.dir` (relative paths in the test configuration land here).
    pub dir: Option<tempfile::TempDir>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl TestDaemon {
    /// Starts a filter with the given configuration text (its `[milter] listen` is replaced by
    /// a free loopback port).
    pub async fn start(config_text: &str) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, config_text).await
    }

    /// Like [`TestDaemon::start`], with the state in `dir` (to restart on the same state).
    pub async fn start_in(dir: tempfile::TempDir, config_text: &str) -> TestDaemon {
        let text = if config_text.contains("[admin]") {
            config_text.to_owned()
        } else {
            format!("{config_text}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
        };
        let path = dir.path().join("test.toml");
        std::fs::write(&path, &text).expect("write the test configuration");
        let config = Config::parse(&path, &text).expect("test configuration is valid");
        let listener = Listener::bind(&ListenAddr::Inet("127.0.0.1:0".parse().unwrap()), 0o660)
            .await
            .expect("bind a loopback port");
        let Ok(ListenAddr::Inet(addr)) = listener.local_addr() else { panic!("not an inet listener") };
        let local = Listener::bind(&ListenAddr::Inet("127.0.0.1:0".parse().unwrap()), 0o660)
            .await
            .expect("bind a loopback port");
        let Ok(ListenAddr::Inet(local_addr)) = local.local_addr() else { panic!("not an inet listener") };
        let listeners = daemon::MilterListeners { smtp: listener, local: Some(local) };
        let config = Arc::new(config);
        let clock = EngineClock::manual(std::time::UNIX_EPOCH + std::time::Duration::from_secs(START));
        let services = Arc::new(Services::new(config.clone(), clock.clone()).expect("state directory usable"));
        let events = services.take_events().expect("events not taken yet");
        let (admin_listener, token) = daemon::bind_admin(&config).await.expect("admin API");
        let admin_addr = admin_listener.local_addr().unwrap();
        let admin = Some((admin_listener, services.admin_state(token.clone())));
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(daemon::run(listeners, admin, services.clone(), rx));
        TestDaemon {
            addr,
            local_addr,
            config,
            services,
            clock,
            events,
            admin_addr,
            token,
            dir: Some(dir),
            shutdown,
            task: Some(task),
        }
    }

    /// The configuration file (rewrite it, then reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.config.file.clone()
    }

    /// The admin API's base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// The next event, waiting at most 5 s.
    pub async fn next_event(&mut self) -> Option<Event> {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.events.recv()).await.ok().flatten()
    }

    /// Events already raised, without waiting.
    pub fn drain_events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    /// Asks for a graceful shutdown (like SIGTERM) without waiting.
    pub fn request_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Asks for shutdown and waits (bounded) until the daemon has stopped.
    pub async fn stop(self) {
        self.stop_keeping_state().await;
    }

    /// Stops gracefully and hands back the state directory, to start again on it.
    pub async fn stop_keeping_state(mut self) -> tempfile::TempDir {
        self.request_shutdown();
        let task = self.task.take().expect("running");
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("daemon stops within 10 s")
            .expect("daemon task did not panic");
        self.dir.take().expect("state directory")
    }

    /// Waits (bounded) for the daemon task to end after a shutdown request.
    pub async fn finished(&mut self, within: std::time::Duration) -> bool {
        let Some(task) = self.task.as_mut() else {
            return true;
        };
        if tokio::time::timeout(within, task).await.is_ok() {
            self.task = None;
            true
        } else {
            false
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
