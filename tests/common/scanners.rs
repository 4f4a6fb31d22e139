//! Real spam scanners for `real-peers` tests: SpamAssassin's `spamd` and `rspamd`, each on a
//! free port of 127.0.0.1 with a private configuration, home and state in a temp dir (std and
//! `tempfile` only, no async runtime).
//!
//! A value stops its server when dropped — also while a test panics: SIGTERM to the PID we
//! started, a bounded wait for it to exit (on an event, not a sleep), then SIGKILL. Readiness
//! is a line the server logs, awaited with a bound; the whole log is kept for assertions and
//! for the error when a start fails.
//!
//! Quirks (Debian 12: SpamAssassin 4.0.1, rspamd 3.4):
//! * spamd run as root drops to `nobody` (`-u nobody`), so the private dirs must be readable
//!   by it. `--siteconfigpath` points at our dir; the Debian rule set in the default
//!   `--configpath` stays in use (it holds `GTUBE`, score 1000). Without the Debian `.pre` files
//!   no plugin is loaded, not even `Check`, which runs the rules: our `init.pre` loads it.
//!   `-L` (no network tests) and `-x` (no per-user config files) keep it off the network and
//!   out of home directories; `User:` is still logged and passed to the rules.
//! * spamd reads the message line by line up to `Content-length`: a message cut mid-line (by
//!   the byte cap) hangs until the client closes its write side (the client does), and
//!   announcing more than is sent hangs until the timeout.
//! * spamd needs about 10 s for 512 KiB of plain text on a loaded 2-core machine (no
//!   `sa-compile`); the tests use a smaller cap.
//! * spamd logs `... size=<bytes>,...` per message, which shows what it really received.
//! * rspamd refuses to run workers as root without `-u`/`-g` (Debian's user is `_rspamd`);
//!   the main process stays root. `--var` sets `DBDIR`, `RUNDIR`, `LOCAL_CONFDIR` and
//!   `LOGDIR` so nothing under /etc or /var is written; our top-level config includes the
//!   packaged `common.conf` (the real rules) and starts only one normal worker.
//! * rspamd compiles the public-suffix list (about 9600 entries) with Hyperscan at start:
//!   about a minute on a loaded machine. The compiled cache (`hs_cache_dir`) is therefore
//!   shared between runs under cargo's `CARGO_TARGET_TMPDIR`; a warm start takes seconds.
//! * rspamd looks up DNS (RBLs, maps.rspamd.com, SPF, ...). Its resolver is pointed at a
//!   loopback UDP socket we hold and never answer, with a short timeout, and the modules that
//!   resolve at configuration time (fuzzy_check) or mostly do DNS (rbl, asn) are disabled:
//!   nothing leaves the machine. Redis-backed modules disable themselves without servers.
//! * rspamd 3.4 finds GTUBE also for authenticated senders (`User:`) and answers
//!   `action: reject` with `score` equal to `required_score` (15) and only the symbol `GTUBE`.
//! * rspamd 3.4's normal worker answers `Connection: close` to every request, keep-alive
//!   asked or not.
//! * rspamd logs each scan with `len: <bytes>`, which shows what it really received.
#![allow(dead_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long spamd may take to load its rules.
pub const SPAMD_START: Duration = Duration::from_secs(90);
/// How long rspamd may take to start, including a cold Hyperscan compile.
pub const RSPAMD_START: Duration = Duration::from_secs(300);
/// How long a stopped server may take to exit before SIGKILL.
const STOP: Duration = Duration::from_secs(20);

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) of a user from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// `chown -R user dir` (only what we created).
fn chown_tree(dir: &Path, user: &str) -> io::Result<()> {
    let (uid, gid) = user_ids(user).ok_or_else(|| io::Error::other(format!("user {user:?} not in /etc/passwd")))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            chown_tree(&path, user)?;
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// A program from the Debian package: on PATH, or in the sbin directory a non-root PATH lacks.
fn program(name: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| io::Error::other(format!("{name} is not installed (see scripts/test)")))
}

/// A started server process, its log, and a channel of its log lines.
struct Process {
    name: &'static str,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    lines: Receiver<String>,
}

impl Process {
    fn spawn(name: &'static str, mut cmd: Command) -> io::Result<Process> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped"));
        for stream in [out, err] {
            let (log, tx) = (log.clone(), tx.clone());
            thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    {
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                    // The receiver may be gone (server stopped): the log still fills.
                    let _ = tx.send(line);
                }
            });
        }
        Ok(Process { name, child: Some(child), log, lines })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits (at most `limit`) for a log line containing `needle`.
    fn wait_for_line(&self, needle: &str, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failure(&format!("no {needle:?} within {limit:?}")));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failure(&format!("exited before {needle:?}")));
                }
            }
        }
    }

    fn failure(&self, what: &str) -> io::Error {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        io::Error::other(format!("{}: {what}; log:\n{}", self.name, tail.join("\n")))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until a log line containing `needle` has been written, and
    /// returns the log then.
    fn wait_for_log(&self, needle: &str, limit: Duration) -> io::Result<String> {
        if self.log().contains(needle) {
            return Ok(self.log());
        }
        self.wait_for_line(needle, limit)?;
        Ok(self.log())
    }

    /// SIGTERM, a bounded wait on a thread that reaps the child, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the PID of our own unreaped child: it cannot be a recycled PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let _ = child.wait();
            let _ = tx.send(());
        });
        if rx.recv_timeout(STOP).is_err() {
            // SAFETY: as above; the waiter has not reaped it yet (no message arrived).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(STOP);
        }
        drop(waiter);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SpamAssassin's spamd on a private configuration.
pub struct Spamd {
    process: Process,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Spamd {
    /// Starts spamd and waits until it listens.
    pub fn start() -> io::Result<Spamd> {
        let dir = tempfile::Builder::new().prefix("og-spamd-").tempdir()?;
        let site = dir.path().join("site");
        let home = dir.path().join("home");
        fs::create_dir(&site)?;
        fs::create_dir(&home)?;
        // Only the plugin that runs rules; no Bayes, no auto-learning, no network.
        fs::write(site.join("init.pre"), "loadplugin Mail::SpamAssassin::Plugin::Check\n")?;
        fs::write(site.join("local.cf"), "required_score 5.0\nuse_bayes 0\nbayes_auto_learn 0\ndns_available no\n")?;
        // spamd drops to `nobody` when started as root; it must read our files.
        for d in [dir.path(), &site, &home] {
            chmod(d, 0o755)?;
        }
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(program("spamd")?);
        cmd.arg("--local")
            .arg("--nouser-config")
            .arg(format!("--siteconfigpath={}", site.display()))
            .arg(format!("--listen={addr}"))
            .arg("--allowed-ips=127.0.0.1")
            .args(["--max-children=2", "--min-children=1"])
            .arg(format!("--helper-home-dir={}", home.display()))
            .args(["--syslog=stderr"])
            .env("HOME", &home);
        if is_root() {
            cmd.args(["--username=nobody"]);
        }
        let process = Process::spawn("spamd", cmd)?;
        process.wait_for_line("server started on", SPAMD_START)?;
        Ok(Spamd { process, addr, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The log once it contains `needle` (spamd logs a result after it answered).
    pub fn wait_for_log(&self, needle: &str) -> io::Result<String> {
        self.process.wait_for_log(needle, Duration::from_secs(30))
    }
}

/// rspamd on a private configuration, one normal worker.
pub struct Rspamd {
    process: Process,
    pub addr: SocketAddr,
    /// Where the worker's DNS queries go: bound, never read.
    _dns_sink: UdpSocket,
    _dir: tempfile::TempDir,
}

impl Rspamd {
    /// Starts rspamd and waits until its normal worker is up.
    pub fn start() -> io::Result<Rspamd> {
        let dir = tempfile::Builder::new().prefix("og-rspamd-").tempdir()?;
        let local_d = dir.path().join("local/local.d");
        fs::create_dir_all(&local_d)?;
        for sub in ["db", "run", "log"] {
            fs::create_dir(dir.path().join(sub))?;
        }
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rspamd-hs-cache");
        fs::create_dir_all(&cache)?;

        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dns_sink = UdpSocket::bind(("127.0.0.1", 0))?;
        let dns = dns_sink.local_addr()?;

        fs::write(
            dir.path().join("rspamd.conf"),
            format!(
                r#"# The packaged rules and modules, one normal worker, nothing else.
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "console";
    level = "info";
}}
worker "normal" {{
    bind_socket = "{addr}";
    count = 1;
    .include "$CONFDIR/worker-normal.inc"
}}
"#
            ),
        )?;
        fs::write(
            local_d.join("options.inc"),
            format!(
                "dns {{\n    nameserver = [\"{dns}\"];\n    timeout = 200ms;\n    retransmits = 1;\n}}\nhs_cache_dir = \"{}/\";\n",
                cache.display()
            ),
        )?;
        for module in ["fuzzy_check", "rbl", "asn"] {
            fs::write(local_d.join(format!("{module}.conf")), "enabled = false;\n")?;
        }

        let mut cmd = Command::new(program("rspamd")?);
        cmd.arg("--no-fork").arg(format!("--config={}", dir.path().join("rspamd.conf").display()));
        for (var, sub) in [("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log"), ("LOCAL_CONFDIR", "local")] {
            cmd.arg(format!("--var={var}={}", dir.path().join(sub).display()));
        }
        if is_root() {
            cmd.args(["-u", "_rspamd", "-g", "_rspamd"]);
            chmod(dir.path(), 0o755)?;
            chown_tree(&dir.path().join("db"), "_rspamd")?;
            chown_tree(&dir.path().join("run"), "_rspamd")?;
            chown_tree(&cache, "_rspamd")?;
        }
        let process = Process::spawn("rspamd", cmd)?;
        process.wait_for_line("starting normal process", RSPAMD_START)?;
        Ok(Rspamd { process, addr, _dns_sink: dns_sink, _dir: dir })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The log once it contains `needle` (rspamd logs a task after it answered).
    pub fn wait_for_log(&self, needle: &str) -> io::Result<String> {
        self.process.wait_for_log(needle, Duration::from_secs(30))
    }
}
