//! The `outbound-guard` binary as an administrator runs it: a config file in a temp dir, the
//! milter on a free loopback port, stopped with SIGTERM.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::postfix::{POLL, free_port, send_signal, tcp_listening};

/// A running `outbound-guard run`.
pub struct GuardProcess {
    pub child: Child,
    pub milter_port: u16,
    pub dir: tempfile::TempDir,
}

impl GuardProcess {
    /// Writes `config_tail` after a `[milter]` section that listens on a free port, starts the
    /// binary and waits (bounded) until it listens.
    pub fn start(milter_extra: &str, config_tail: &str) -> GuardProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let milter_port = free_port();
        let config = format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{milter_port}\"\n{milter_extra}\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n{config_tail}",
            free_port()
        );
        std::fs::write(dir.path().join("plugin.toml"), config).expect("write config");
        let child = Command::new(binary())
            .arg("--config")
            .arg(dir.path().join("plugin.toml"))
            .arg("run")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start outbound-guard");
        let mut p = GuardProcess { child, milter_port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tcp_listening(milter_port) {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("outbound-guard exited with {status} before listening:\n{}", p.stderr_now());
            }
            assert!(Instant::now() < deadline, "outbound-guard did not listen within 20 s");
            std::thread::sleep(POLL);
        }
        p
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("plugin.toml")
    }

    /// `inet:127.0.0.1:PORT` for Postfix's `smtpd_milters`.
    pub fn milter_address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.milter_port)
    }

    /// Sends SIGTERM and waits (bounded); returns the exit status and everything logged.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("outbound-guard did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(POLL);
        };
        let log = self.stderr_now();
        (status, log)
    }

    fn stderr_now(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for GuardProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The binary cargo built for these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_outbound-guard"))
}
