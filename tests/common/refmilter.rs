//! `tests/peers/ref-milter.c`, the libmilter reference filter, as a test peer: compiled once per
//! test process, started on a free loopback port, ready when it says so, stopped by PID.
//!
//! Also runs OpenDKIM's `miltertest` with a bound, since both peers answer the same question:
//! does our side of the protocol agree with an implementation we did not write?

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::process::{POLL, free_port, send_signal, wait_child};

/// How long ref-milter may take to say it listens.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// The compiled ref-milter, built on first use. It goes into cargo's scratch dir for
/// integration tests under a per-process name and is renamed into place, so test processes
/// building at the same time never run a half-written file.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ref-milter.c");
        let partial = dir.join(format!("ref-milter.{}", std::process::id()));
        let out = Command::new("cc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&partial)
            .arg(&source)
            .args(["-lmilter", "-lpthread"])
            .stdin(Stdio::null())
            .output()
            .expect("run cc (is a C compiler installed?)");
        assert!(
            out.status.success(),
            "cc failed to build ref-milter (is libmilter-dev installed?):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = dir.join("ref-milter");
        std::fs::rename(&partial, &bin).expect("move ref-milter into place");
        bin
    })
}

/// A running ref-milter on 127.0.0.1.
pub struct RefMilter {
    child: Child,
    pub port: u16,
    /// Holds the log file (`-l`), if any.
    dir: tempfile::TempDir,
    log: Option<PathBuf>,
}

impl RefMilter {
    /// Starts ref-milter with `args` (e.g. `-m`, `-P 0x3`) and, when `log` is set, `-l` into a
    /// temp file; returns once it printed its readiness line.
    pub fn start(log: bool, args: &[&str]) -> RefMilter {
        // A free port can be taken between the probe and the bind: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(log, args) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("ref-milter did not start: {last}");
    }

    fn try_start(log: bool, args: &[&str]) -> Result<RefMilter, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let spec = format!("inet:{port}@127.0.0.1");
        let log_path = log.then(|| dir.path().join("ref.log"));
        let mut cmd = Command::new(binary());
        cmd.arg("-p").arg(&spec);
        if let Some(p) = &log_path {
            cmd.arg("-l").arg(p);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn ref-milter: {e}"))?;

        // Read the readiness line on a thread so the wait for it has a bound.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let want = format!("ref-milter: listening on {spec}");
        match rx.recv_timeout(READY_WITHIN) {
            Ok(line) if line.trim_end() == want => Ok(RefMilter { child, port, dir, log: log_path }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                Err(format!("expected {want:?}, got {other:?}; stderr: {err}"))
            }
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The socket as miltertest and libmilter spell it.
    pub fn spec(&self) -> String {
        format!("inet:{}@127.0.0.1", self.port)
    }

    /// The callback log so far (empty when started without a log).
    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Polls (bounded) until the log has `line` as a whole line; returns the log.
    ///
    /// libmilter runs some callbacks (close) after the MTA has stopped waiting, so a test
    /// confirms them here instead of assuming they already ran.
    pub fn wait_log_line(&self, line: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.lines().any(|l| l == line) {
                return log;
            }
            assert!(Instant::now() < deadline, "ref-milter did not log {line:?} within {within:?}; log:\n{log}");
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, then a bounded wait; returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait for ref-milter") {
                return s;
            }
            assert!(Instant::now() < deadline, "ref-milter did not exit within 10 s of SIGTERM");
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RefMilter {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.child.id(), "TERM");
            wait_child(&mut self.child, Duration::from_secs(5));
        }
    }
}

/// What a miltertest run printed.
#[derive(Debug)]
pub struct MiltertestRun {
    /// `None` when it was killed for taking too long.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl MiltertestRun {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Everything it said, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "miltertest exit status: {}\n--- stdout\n{}--- stderr\n{}",
            self.status.map_or_else(|| "killed after the time limit".into(), |s| s.to_string()),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `miltertest -s tests/peers/miltertest/<script> -D sock=<sock> -D <define>...`, killing
/// it (by PID) if it runs longer than `within`.
pub fn miltertest(script: &str, sock: &str, defines: &[&str], within: Duration) -> MiltertestRun {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/miltertest").join(script);
    let mut cmd = Command::new("miltertest");
    cmd.arg("-s").arg(&path).arg("-D").arg(format!("sock={sock}"));
    for d in defines {
        cmd.arg("-D").arg(d);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run miltertest (Debian package miltertest)");
    // Drain both pipes on threads so a chatty run cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait().expect("wait for miltertest") {
            Some(s) => break Some(s),
            None if Instant::now() >= deadline => {
                send_signal(child.id(), "KILL");
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(POLL),
        }
    };
    MiltertestRun { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}
