//! The `outbound-guard` binary as an administrator runs it: a config file in a temp dir, the
//! milter on a free loopback port, stopped with SIGTERM.
//!
//! Its stderr goes to a file beside the config, not a pipe: a pipe nobody reads until the end
//! fills at 64 KiB, and the daemon then blocks in the middle of a log line (a load test's
//! per-connection debug lines get there in a few hundred connections).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::process::{POLL, free_port, send_signal, tcp_listening};

/// A running `outbound-guard run`.
pub struct GuardProcess {
    pub child: Child,
    pub milter_port: u16,
    pub dir: tempfile::TempDir,
    /// Extra environment of the process (kept for a restart).
    env: Vec<(String, String)>,
    /// The daemon's stderr (this run's only).
    log: PathBuf,
}

impl GuardProcess {
    /// Runs the command line against this filter (its config, hence its admin API).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(&self.config_path(), args)
    }

    /// Writes `config_tail` after a `[milter]` section that listens on a free port, starts the
    /// binary and waits (bounded) until it listens.
    pub fn start(milter_extra: &str, config_tail: &str) -> GuardProcess {
        Self::start_on(free_port(), milter_extra, config_tail)
    }

    /// Like [`GuardProcess::start`] on a milter port chosen by the caller (e.g. one an MTA was
    /// configured with before the filter started).
    pub fn start_on(milter_port: u16, milter_extra: &str, config_tail: &str) -> GuardProcess {
        Self::start_with_env(milter_port, milter_extra, config_tail, &[])
    }

    /// Like [`GuardProcess::start_on`] with extra environment variables (e.g. `SSL_CERT_FILE`).
    pub fn start_with_env(
        milter_port: u16,
        milter_extra: &str,
        config_tail: &str,
        env: &[(&str, &str)],
    ) -> GuardProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{milter_port}\"\n{milter_extra}\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n{config_tail}",
            free_port()
        );
        std::fs::write(dir.path().join("plugin.toml"), config).expect("write config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(dir, milter_port, env)
    }

    /// Starts the binary again on the same directory and configuration (after a crash or a
    /// stop), waiting until it listens.
    pub fn restart(mut old: GuardProcess) -> GuardProcess {
        if let Ok(None) = old.child.try_wait() {
            let _ = old.child.kill();
        }
        let _ = old.child.wait();
        let dir = tempfile::TempDir::new().expect("temp dir");
        let old_dir = std::mem::replace(&mut old.dir, dir);
        let env = std::mem::take(&mut old.env);
        Self::spawn(old_dir, old.milter_port, env)
    }

    fn spawn(dir: tempfile::TempDir, milter_port: u16, env: Vec<(String, String)>) -> GuardProcess {
        let log = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&log).expect("create the stderr log");
        let child = Command::new(binary())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(dir.path().join("plugin.toml"))
            .arg("run")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start outbound-guard");
        let mut p = GuardProcess { child, milter_port, dir, env, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !tcp_listening(milter_port) {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("outbound-guard exited with {status} before listening:\n{}", p.log());
            }
            assert!(Instant::now() < deadline, "outbound-guard did not listen within 60 s");
            std::thread::sleep(POLL);
        }
        p
    }

    /// `GET /metrics` from the filter's admin listener (open without a token), over HTTP/1.0.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let config = std::fs::read_to_string(self.config_path()).expect("read the config");
        let admin = config
            .split("[admin]")
            .nth(1)
            .and_then(|section| section.lines().find_map(|l| l.trim().strip_prefix("listen = ")))
            .map(|v| v.trim_matches('"').to_owned())
            .expect("the admin listener in the test configuration");
        let mut stream = std::net::TcpStream::connect(&admin).expect("connect to the admin API");
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read the response");
        assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// The value of one series of `/metrics` (`name` or `name{labels}`, without the
    /// `outbound_guard_` prefix), if it is there.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let series = format!("outbound_guard_{series} ");
        self.metrics().lines().find_map(|l| l.strip_prefix(series.as_str())).and_then(|v| v.trim().parse().ok())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("plugin.toml")
    }

    /// `inet:127.0.0.1:PORT` for Postfix's `smtpd_milters`.
    pub fn milter_address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.milter_port)
    }

    /// Like [`GuardProcess::terminate`], handing back the directory (config, state) intact.
    pub fn terminate_keeping_dir(mut self) -> (ExitStatus, String, tempfile::TempDir) {
        let dir = std::mem::replace(&mut self.dir, tempfile::TempDir::new().expect("temp dir"));
        let (status, log) = self.terminate();
        (status, log, dir)
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
        let log = self.log();
        (status, log)
    }

    /// Everything the filter has logged so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
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

/// Runs the command line with `config` (from a thread that does not own the process).
pub fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", "tester")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the CLI")
}

/// The binary cargo built for these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_outbound-guard"))
}
