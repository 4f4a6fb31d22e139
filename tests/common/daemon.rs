//! An in-process filter on a loopback port, driven by the tests with our MTA-side client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use outbound_guard::config::{Config, ListenAddr};
use outbound_guard::daemon;
use outbound_guard::milter::server::Listener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running filter; dropping it without [`TestDaemon::stop`] aborts it.
pub struct TestDaemon {
    pub addr: SocketAddr,
    pub config: Arc<Config>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl TestDaemon {
    /// Starts a filter with the given configuration text (its `[milter] listen` is replaced by
    /// a free loopback port).
    pub async fn start(config_text: &str) -> TestDaemon {
        let config = Config::parse(Path::new("test.toml"), config_text)
            .expect("test configuration is valid");
        let listener = Listener::bind(&ListenAddr::Inet("127.0.0.1:0".parse().unwrap()), 0o660)
            .await
            .expect("bind a loopback port");
        let Ok(ListenAddr::Inet(addr)) = listener.local_addr() else {
            panic!("not an inet listener")
        };
        let config = Arc::new(config);
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(daemon::run(listener, config.clone(), rx));
        TestDaemon {
            addr,
            config,
            shutdown,
            task: Some(task),
        }
    }

    /// Asks for a graceful shutdown (like SIGTERM) without waiting.
    pub fn request_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Asks for shutdown and waits (bounded) until the daemon has stopped.
    pub async fn stop(mut self) {
        self.request_shutdown();
        let task = self.task.take().expect("running");
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("daemon stops within 10 s")
            .expect("daemon task did not panic");
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
