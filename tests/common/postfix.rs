//! Real-Postfix test harness (std + `tempfile` only, no async runtime).
//!
//! * [`SmtpSink`]: an `smtp-sink` on a free loopback port that dumps every
//!   delivered message into its own temp dir; [`SmtpSink::messages`] parses the
//!   dumps (envelope sender, recipients, message content).
//! * [`Postfix`]: a private Postfix instance (`config_directory`,
//!   `queue_directory`, `data_directory`, `maillog_file` all in one temp dir),
//!   smtpd on a free port of 127.0.0.1, relaying to a sink through
//!   `relayhost`, optional milters and Cyrus SASL (sasldb) users.
//! * [`Swaks`] / [`swaks`]: run the `swaks` SMTP client and keep its transcript.
//!
//! Everything a value starts is stopped when it is dropped (also while a test
//! panics), and nothing uses fixed ports or fixed directories, so tests may run
//! in parallel threads. Postfix itself needs root.
//!
//! Quirks this module deals with (Debian 12, Postfix 3.7):
//! * Debian's Postfix reads the Cyrus config `smtpd.conf` from
//!   `$config_directory/sasl/` and ignores `cyrus_sasl_config_path`; we write it
//!   there and set `cyrus_sasl_config_path` to the same dir for other builds.
//! * A SASL user without `@` gets the realm `PostfixOptions::sasl_realm`
//!   (`smtpd_sasl_local_domain`), so Postfix (and the milter macro
//!   `{auth_authen}`) reports it as `user@realm`; a user given as
//!   `local@domain` is stored with realm `domain` and reported unchanged.
//! * Recipients in `relay_domains` go through `relay_transport`; we set it to
//!   `smtp` so a message with "relay" and "other" recipients reaches the sink
//!   as one delivery instead of two.
//! * `postfix check` prints configuration errors only to a terminal; it runs
//!   under `script(1)` so the text ends up in the start error.
//! * The master runs in the foreground as our child (`master -s`), with
//!   `-e <max_lifetime>` as a safety net should the test process be killed.
//!   PID 1 here does not reap orphans: a stopped daemon may linger as a
//!   zombie, which counts as stopped.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often the `wait_*` helpers poll.
pub const POLL: Duration = Duration::from_millis(20);

/// The loopback address Postfix listens on and treats as `mynetworks` by default.
pub const INSIDE_ADDR: &str = "127.0.0.1";
/// A loopback address outside the default `mynetworks` (an "outside" client).
pub const OUTSIDE_ADDR: &str = "127.0.0.2";

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((INSIDE_ADDR, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

// ---------------------------------------------------------------------------
// small process / system helpers

fn is_root() -> bool {
    // "Uid:\treal\teffective\tsaved\tfs"
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// (uid, gid) of a user from /etc/passwd.
fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == user { Some((f[2].parse().ok()?, f[3].parse().ok()?)) } else { None }
    })
}

fn chown_user(path: &Path, user: &str) -> io::Result<()> {
    let (uid, gid) = passwd_ids(user).ok_or_else(|| io::Error::other(format!("user {user} not in /etc/passwd")))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Process state letter from /proc/PID/stat (`None` when the process is gone).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Running (not gone, not a zombie).
fn pid_alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// Live (non-zombie) direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut f = stat[close + 1..].split_whitespace();
        let state = f.next().unwrap_or("");
        let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == pid && state != "Z" && state != "X" {
            out.push(child);
        }
    }
    out
}

/// `kill -s SIG PID` (for processes a test started itself).
pub fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Wait (bounded) until each pid is gone or a zombie; SIGKILL stragglers.
pub fn reap_or_kill(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| pid_alive(p)) && Instant::now() < deadline {
        sleep(POLL);
    }
    for &p in pids {
        if pid_alive(p) {
            send_signal(p, "KILL");
        }
    }
}

/// Wait for a child with a bound; SIGKILL it when the bound is hit.
pub fn wait_child(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => sleep(POLL),
        }
    }
}

/// Postfix waits (sleeping 300 ms at a time) until a just-written main.cf is a
/// couple of seconds old; backdating the config files skips that delay.
fn backdate(path: &Path) -> io::Result<()> {
    let when = std::time::SystemTime::now() - Duration::from_secs(10);
    fs::File::options().write(true).open(path)?.set_modified(when)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn output_text(o: &Output) -> String {
    format!("{}{}", lossy(&o.stdout), lossy(&o.stderr))
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Single-quote for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Is something listening on 127.0.0.1:port (from /proc/net/tcp; no
/// connection is made, so a milter or smtpd sees nothing)?
pub fn tcp_listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == want && f[3] == "0A"
            })
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// smtp-sink

/// One message captured by [`SmtpSink`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkMessage {
    /// The dump file.
    pub path: PathBuf,
    /// `X-Client-Addr` (the Postfix smtp client's address).
    pub client_addr: String,
    /// `X-Helo-Args` (empty if the client sent no HELO/EHLO).
    pub helo: String,
    /// Envelope sender without `<>` (empty for the null sender).
    pub mail_from: String,
    /// The whole MAIL FROM argument text, e.g. `<a@b> SIZE=123 BODY=8BITMIME`.
    pub mail_args: String,
    /// Envelope recipients without `<>`, in RCPT order.
    pub rcpts: Vec<String>,
    /// The whole RCPT TO argument texts, e.g. `<x@y> ORCPT=rfc822;x@y`.
    pub rcpt_args: Vec<String>,
    /// Message content (headers and body) as received, dot-unstuffed, with
    /// LF line endings (smtp-sink writes lines with `\n`).
    pub data: Vec<u8>,
}

fn addr_of(args: &str) -> String {
    let first = args.split_whitespace().next().unwrap_or("");
    first.trim_start_matches('<').trim_end_matches('>').to_string()
}

impl SinkMessage {
    /// Parse one smtp-sink `-d` dump file.
    pub fn parse(path: &Path, raw: &[u8]) -> SinkMessage {
        let mut m = SinkMessage { path: path.to_path_buf(), ..Default::default() };
        let mut pos = 0usize;
        let mut in_received = false;
        while pos < raw.len() {
            let end = raw[pos..].iter().position(|&b| b == b'\n').map_or(raw.len(), |i| pos + i + 1);
            let line = lossy(&raw[pos..end]);
            let line = line.trim_end_matches(['\r', '\n']);
            if in_received {
                if line.starts_with([' ', '\t']) {
                    pos = end;
                    continue;
                }
                break; // the message content starts here
            }
            if let Some((name, value)) = line.split_once(": ") {
                match name {
                    "X-Client-Addr" => m.client_addr = value.to_string(),
                    "X-Helo-Args" => m.helo = value.to_string(),
                    "X-Mail-Args" => {
                        m.mail_args = value.to_string();
                        m.mail_from = addr_of(value);
                    }
                    "X-Rcpt-Args" => {
                        m.rcpt_args.push(value.to_string());
                        m.rcpts.push(addr_of(value));
                    }
                    "Received" => in_received = true,
                    _ => {}
                }
            }
            pos = end;
        }
        let mut data = raw[pos.min(raw.len())..].to_vec();
        // smtp-sink appends one empty line after the message.
        if data.ends_with(b"\n") {
            data.pop();
        }
        m.data = data;
        m
    }

    /// The content as (lossy) UTF-8.
    pub fn data_str(&self) -> String {
        lossy(&self.data)
    }

    /// The header section (up to, not including, the first empty line).
    pub fn header_block(&self) -> String {
        let s = self.data_str();
        match s.find("\n\n") {
            Some(i) => s[..i + 1].to_string(),
            None => s,
        }
    }

    /// The body (after the first empty line).
    pub fn body(&self) -> String {
        let s = self.data_str();
        match s.find("\n\n") {
            Some(i) => s[i + 2..].to_string(),
            None => String::new(),
        }
    }

    /// All values of header `name` (case-insensitive), unfolded and trimmed.
    pub fn headers(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        for line in self.header_block().lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(c) = current.as_mut() {
                    c.push(' ');
                    c.push_str(line.trim());
                }
                continue;
            }
            if let Some(c) = current.take() {
                out.push(c);
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                current = Some(v.trim().to_string());
            }
        }
        if let Some(c) = current {
            out.push(c);
        }
        out
    }

    /// The first value of header `name`, unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
}

/// `smtp-sink` on a free port of 127.0.0.1, one dump file per message.
pub struct SmtpSink {
    child: Child,
    port: u16,
    dump_dir: PathBuf,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    /// Start a sink; panics (with smtp-sink's output) when it cannot start.
    pub fn start() -> SmtpSink {
        Self::start_with_args(&[])
    }

    /// Start a sink with extra smtp-sink options (e.g. `["-B", "550 5.1.1 no"]`, `["-f", "data"]`).
    pub fn start_with_args(extra: &[&str]) -> SmtpSink {
        let mut last_err = String::new();
        for _ in 0..5 {
            match Self::try_start(extra) {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("smtp-sink did not start: {last_err}");
    }

    fn try_start(extra: &[&str]) -> Result<SmtpSink, String> {
        let dir = tempfile::Builder::new().prefix("og-sink-").tempdir().map_err(|e| e.to_string())?;
        let root = dir.path().canonicalize().map_err(|e| e.to_string())?;
        let dump_dir = root.join("dump");
        fs::create_dir(&dump_dir).map_err(|e| e.to_string())?;
        let root_user = is_root();
        if root_user {
            // smtp-sink writes the dumps as user nobody.
            chmod(&root, 0o711).map_err(|e| e.to_string())?;
            chown_user(&dump_dir, "nobody").map_err(|e| e.to_string())?;
        }
        let port = free_port();
        let log_path = root.join("smtp-sink.log");
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let template = format!("{}/%Y%m%d%H%M%S.", dump_dir.display());
        let mut cmd = Command::new("smtp-sink");
        if root_user {
            cmd.args(["-u", "nobody"]);
        }
        cmd.args(extra)
            .arg("-d")
            .arg(&template)
            .arg(format!("{INSIDE_ADDR}:{port}"))
            .arg("64")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let mut child = cmd.spawn().map_err(|e| format!("spawn smtp-sink: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let out = fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("smtp-sink exited ({st}) on port {port}: {out}"));
            }
            if tcp_listening(port)
                && TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)).is_ok()
            {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("smtp-sink not listening on port {port} after 10 s"));
            }
            sleep(POLL);
        }
        Ok(SmtpSink { child, port, dump_dir, log_path, dir })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `[127.0.0.1]:PORT`, for `relayhost` and friends.
    pub fn relayhost(&self) -> String {
        format!("[{INSIDE_ADDR}]:{}", self.port)
    }

    pub fn dump_dir(&self) -> &Path {
        &self.dump_dir
    }

    /// smtp-sink's own stdout/stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Dump files smtp-sink still holds open (transactions in progress).
    fn open_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir(format!("/proc/{}/fd", self.child.id())) {
            for e in rd.flatten() {
                if let Ok(target) = fs::read_link(e.path()) {
                    v.push(target);
                }
            }
        }
        v
    }

    /// All completed messages so far, oldest first.
    pub fn messages(&self) -> Vec<SinkMessage> {
        // List the directory first and ask which files are open second: a dump created
        // between the two steps is then either still open (skipped) or already complete.
        // The other order let a file created after the fd listing be read half-written.
        let listed: Vec<PathBuf> =
            fs::read_dir(&self.dump_dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        let open = self.open_files();
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for p in listed {
            if open.contains(&p) {
                continue; // still being written
            }
            let mtime = fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            files.push((mtime, p));
        }
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| fs::read(&p).ok().map(|raw| (p, raw)))
            // smtp-sink ends every complete dump with an empty line after the message; a file
            // without it is still being written whatever /proc said.
            .filter(|(_, raw)| raw.ends_with(b"\n\n"))
            .map(|(p, raw)| SinkMessage::parse(&p, &raw))
            .collect()
    }

    /// Poll (every [`POLL`]) until at least `n` messages arrived or `timeout`
    /// passed; returns what there is either way.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() >= deadline {
                return m;
            }
            sleep(POLL);
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Postfix

/// Settings of a private Postfix instance. Build with [`PostfixOptions::new`]
/// and the chained setters, or fill the fields.
#[derive(Clone, Debug)]
pub struct PostfixOptions {
    /// Port of the next hop on 127.0.0.1 (`relayhost = [127.0.0.1]:PORT`);
    /// `None` leaves `relayhost` empty (mail to other domains then defers:
    /// DNS is off).
    pub relay_port: Option<u16>,
    /// `mynetworks` (default `127.0.0.1/32`: 127.0.0.2 is "outside").
    pub mynetworks: String,
    /// `relay_domains`: domains that are "ours" and accepted from anyone; they
    /// are relayed to `relayhost` as well (default `["example.com"]`).
    pub relay_domains: Vec<String>,
    /// `smtpd_milters`, e.g. `inet:127.0.0.1:PORT`.
    pub smtpd_milters: Option<String>,
    /// `non_smtpd_milters` (mail from `sendmail`).
    pub non_smtpd_milters: Option<String>,
    /// `milter_default_action` (Postfix's default is `tempfail`).
    pub milter_default_action: Option<String>,
    /// `milter_protocol` (default 6).
    pub milter_protocol: u32,
    /// Cyrus SASL users (user, password) in a private sasldb; non-empty turns
    /// on `smtpd_sasl_auth_enable`. `user@domain` is stored with realm
    /// `domain`, a bare `user` with realm [`Self::sasl_realm`].
    pub sasl_users: Vec<(String, String)>,
    /// `smtpd_sasl_local_domain` (default `outbound-guard.test`).
    pub sasl_realm: String,
    /// `myhostname` (default `mta.outbound-guard.test`).
    pub myhostname: String,
    /// Raw lines appended to main.cf (later lines win over ours).
    pub extra_main_cf: Vec<String>,
    /// Raw lines appended to master.cf.
    pub extra_master_cf: Vec<String>,
    /// The master exits by itself after this long (`master -e`), in case the
    /// test process dies without dropping the [`Postfix`].
    pub max_lifetime: Duration,
}

impl Default for PostfixOptions {
    fn default() -> Self {
        PostfixOptions {
            relay_port: None,
            mynetworks: format!("{INSIDE_ADDR}/32"),
            relay_domains: vec!["example.com".to_string()],
            smtpd_milters: None,
            non_smtpd_milters: None,
            milter_default_action: None,
            milter_protocol: 6,
            sasl_users: Vec::new(),
            sasl_realm: "outbound-guard.test".to_string(),
            myhostname: "mta.outbound-guard.test".to_string(),
            extra_main_cf: Vec::new(),
            extra_master_cf: Vec::new(),
            max_lifetime: Duration::from_secs(1800),
        }
    }
}

impl PostfixOptions {
    pub fn new() -> Self {
        Self::default()
    }
    /// Relay everything to this sink.
    pub fn relay_to(mut self, sink: &SmtpSink) -> Self {
        self.relay_port = Some(sink.port());
        self
    }
    pub fn relay_port(mut self, port: u16) -> Self {
        self.relay_port = Some(port);
        self
    }
    pub fn mynetworks(mut self, v: &str) -> Self {
        self.mynetworks = v.to_string();
        self
    }
    /// Replace the relay domains.
    pub fn relay_domains(mut self, v: &[&str]) -> Self {
        self.relay_domains = v.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn smtpd_milters(mut self, v: &str) -> Self {
        self.smtpd_milters = Some(v.to_string());
        self
    }
    pub fn non_smtpd_milters(mut self, v: &str) -> Self {
        self.non_smtpd_milters = Some(v.to_string());
        self
    }
    /// `smtpd_milters` and `non_smtpd_milters` = `inet:127.0.0.1:PORT`.
    pub fn milter_port(self, port: u16) -> Self {
        let m = format!("inet:{INSIDE_ADDR}:{port}");
        self.smtpd_milters(&m).non_smtpd_milters(&m)
    }
    pub fn milter_default_action(mut self, v: &str) -> Self {
        self.milter_default_action = Some(v.to_string());
        self
    }
    pub fn milter_protocol(mut self, v: u32) -> Self {
        self.milter_protocol = v;
        self
    }
    pub fn sasl_user(mut self, user: &str, password: &str) -> Self {
        self.sasl_users.push((user.to_string(), password.to_string()));
        self
    }
    pub fn sasl_realm(mut self, v: &str) -> Self {
        self.sasl_realm = v.to_string();
        self
    }
    pub fn myhostname(mut self, v: &str) -> Self {
        self.myhostname = v.to_string();
        self
    }
    /// Append a raw main.cf line, e.g. `"milter_command_timeout = 5s"`.
    pub fn main_cf(mut self, line: &str) -> Self {
        self.extra_main_cf.push(line.to_string());
        self
    }
    pub fn master_cf(mut self, line: &str) -> Self {
        self.extra_master_cf.push(line.to_string());
        self
    }
    pub fn max_lifetime(mut self, d: Duration) -> Self {
        self.max_lifetime = d;
        self
    }
}

/// A private Postfix instance; stopped on drop.
pub struct Postfix {
    master: Option<Child>,
    master_pid: u32,
    smtp_port: u16,
    root: PathBuf,
    config_dir: PathBuf,
    queue_dir: PathBuf,
    maillog: PathBuf,
    master_out: PathBuf,
    postfix_cmd: String,
    dir: tempfile::TempDir,
}

fn postconf_default(param: &str) -> Result<String, String> {
    let o = Command::new("postconf")
        .args(["-d", "-h", param])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run postconf: {e}"))?;
    let v = lossy(&o.stdout).trim().to_string();
    if !o.status.success() || v.is_empty() {
        return Err(format!("postconf -d -h {param}: {}", output_text(&o)));
    }
    Ok(v)
}

fn master_cf(port: u16, extra: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# service type  private unpriv  chroot  wakeup  maxproc command + args");
    let _ = writeln!(s, "{INSIDE_ADDR}:{port} inet n - n - - smtpd");
    for line in [
        "pickup     unix  n       -       n       60      1       pickup",
        "cleanup    unix  n       -       n       -       0       cleanup",
        "qmgr       unix  n       -       n       300     1       qmgr",
        "rewrite    unix  -       -       n       -       -       trivial-rewrite",
        "bounce     unix  -       -       n       -       0       bounce",
        "defer      unix  -       -       n       -       0       bounce",
        "trace      unix  -       -       n       -       0       bounce",
        "verify     unix  -       -       n       -       1       verify",
        "flush      unix  n       -       n       1000?   0       flush",
        "proxymap   unix  -       -       n       -       -       proxymap",
        "proxywrite unix  -       -       n       -       1       proxymap",
        "smtp       unix  -       -       n       -       -       smtp",
        "relay      unix  -       -       n       -       -       smtp",
        "showq      unix  n       -       n       -       -       showq",
        "error      unix  -       -       n       -       -       error",
        "retry      unix  -       -       n       -       -       error",
        "discard    unix  -       -       n       -       -       discard",
        "local      unix  -       n       n       -       -       local",
        "anvil      unix  -       -       n       -       1       anvil",
        "scache     unix  -       -       n       -       1       scache",
        "postlog    unix-dgram n  -       n       -       1       postlogd",
    ] {
        let _ = writeln!(s, "{line}");
    }
    for line in extra {
        let _ = writeln!(s, "{line}");
    }
    s
}

impl Postfix {
    /// Start an instance; panics with `postfix check` output and the maillog
    /// when it does not come up.
    pub fn start(opts: PostfixOptions) -> Postfix {
        match Self::try_start(opts) {
            Ok(p) => p,
            Err(e) => panic!("Postfix did not start:\n{e}"),
        }
    }

    /// Start an instance, retrying with a new port if the chosen one was taken.
    pub fn try_start(opts: PostfixOptions) -> Result<Postfix, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once(&opts) {
                Ok(p) => return Ok(p),
                Err((e, retry)) => {
                    last = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn start_once(opts: &PostfixOptions) -> Result<Postfix, (String, bool)> {
        let fatal = |e: String| (e, false);
        let io = |what: &str, e: io::Error| (format!("{what}: {e}"), false);
        let meta_dir = postconf_default("meta_directory").map_err(fatal)?;
        let daemon_dir = postconf_default("daemon_directory").map_err(fatal)?;
        let command_dir = postconf_default("command_directory").map_err(fatal)?;
        let postfix_cmd = format!("{command_dir}/postfix");

        let dir = tempfile::Builder::new().prefix("og-postfix-").tempdir().map_err(|e| io("tempdir", e))?;
        let root = dir.path().canonicalize().map_err(|e| io("canonicalize", e))?;
        // Postfix daemons run as user postfix and must traverse these.
        chmod(&root, 0o755).map_err(|e| io("chmod root", e))?;
        let config_dir = root.join("etc");
        let queue_dir = root.join("queue");
        let data_dir = root.join("data");
        let sasl_conf_dir = config_dir.join("sasl");
        let sasl_db_dir = root.join("sasl");
        for d in [&config_dir, &queue_dir, &data_dir, &sasl_conf_dir, &sasl_db_dir] {
            fs::create_dir_all(d).map_err(|e| io("mkdir", e))?;
            chmod(d, 0o755).map_err(|e| io("chmod", e))?;
        }
        chown_user(&data_dir, "postfix").map_err(|e| io("chown data_directory", e))?;
        chmod(&data_dir, 0o700).map_err(|e| io("chmod data_directory", e))?;
        let maillog = root.join("maillog");
        let port = free_port();

        // --- main.cf
        let mut m = String::new();
        let mut kv = |k: &str, v: &str| {
            let _ = writeln!(m, "{k} = {v}");
        };
        kv("compatibility_level", "3.6");
        kv("config_directory", &config_dir.display().to_string());
        kv("queue_directory", &queue_dir.display().to_string());
        kv("data_directory", &data_dir.display().to_string());
        kv("meta_directory", &meta_dir);
        kv("maillog_file", &maillog.display().to_string());
        kv("maillog_file_prefixes", &root.display().to_string());
        kv("myhostname", &opts.myhostname);
        kv("mydomain", "outbound-guard.test");
        kv("myorigin", "$myhostname");
        kv("mydestination", "");
        kv("local_recipient_maps", "");
        kv("alias_maps", "");
        kv("alias_database", "");
        kv("biff", "no");
        kv("append_dot_mydomain", "no");
        kv("inet_interfaces", INSIDE_ADDR);
        kv("inet_protocols", "ipv4");
        kv("mynetworks", &opts.mynetworks);
        kv("relay_domains", &opts.relay_domains.join(", "));
        kv("relay_transport", "smtp");
        kv("relayhost", &opts.relay_port.map(|p| format!("[{INSIDE_ADDR}]:{p}")).unwrap_or_default());
        kv("smtpd_relay_restrictions", "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination");
        kv("smtpd_peername_lookup", "no");
        kv("smtp_dns_support_level", "disabled");
        kv("smtpd_banner", "$myhostname ESMTP Postfix");
        kv("smtp_tls_security_level", "none");
        kv("smtpd_tls_security_level", "none");
        kv("smtp_connect_timeout", "5s");
        kv("queue_run_delay", "1s");
        kv("minimal_backoff_time", "1s");
        kv("maximal_backoff_time", "4s");
        kv("milter_protocol", &opts.milter_protocol.to_string());
        if let Some(v) = &opts.smtpd_milters {
            kv("smtpd_milters", v);
        }
        if let Some(v) = &opts.non_smtpd_milters {
            kv("non_smtpd_milters", v);
        }
        if let Some(v) = &opts.milter_default_action {
            kv("milter_default_action", v);
        }
        if !opts.sasl_users.is_empty() {
            kv("smtpd_sasl_auth_enable", "yes");
            kv("smtpd_sasl_type", "cyrus");
            kv("smtpd_sasl_path", "smtpd");
            kv("cyrus_sasl_config_path", &sasl_conf_dir.display().to_string());
            kv("smtpd_sasl_local_domain", &opts.sasl_realm);
            kv("smtpd_sasl_security_options", "noanonymous");
            kv("smtpd_tls_auth_only", "no");
        }
        for line in &opts.extra_main_cf {
            let _ = writeln!(m, "{line}");
        }
        fs::write(config_dir.join("main.cf"), m).map_err(|e| io("write main.cf", e))?;
        fs::write(config_dir.join("master.cf"), master_cf(port, &opts.extra_master_cf))
            .map_err(|e| io("write master.cf", e))?;
        for f in ["main.cf", "master.cf"] {
            backdate(&config_dir.join(f)).map_err(|e| io("backdate config", e))?;
        }

        // --- Cyrus SASL
        if !opts.sasl_users.is_empty() {
            let db = sasl_db_dir.join("sasldb2");
            let conf = format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {}\nmech_list: PLAIN LOGIN\n",
                db.display()
            );
            fs::write(sasl_conf_dir.join("smtpd.conf"), conf).map_err(|e| io("write smtpd.conf", e))?;
            for (user, password) in &opts.sasl_users {
                let (name, realm) = match user.rsplit_once('@') {
                    Some((n, r)) => (n, r),
                    None => (user.as_str(), opts.sasl_realm.as_str()),
                };
                let mut c = Command::new("saslpasswd2")
                    .arg("-p")
                    .arg("-f")
                    .arg(&db)
                    .args(["-u", realm, "-c", name])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| io("spawn saslpasswd2", e))?;
                c.stdin.take().unwrap().write_all(password.as_bytes()).map_err(|e| io("saslpasswd2 stdin", e))?;
                let o = c.wait_with_output().map_err(|e| io("saslpasswd2", e))?;
                if !o.status.success() {
                    return Err(fatal(format!("saslpasswd2 {user}: {}", output_text(&o))));
                }
            }
            chown_user(&db, "postfix").map_err(|e| io("chown sasldb", e))?;
            chmod(&db, 0o640).map_err(|e| io("chmod sasldb", e))?;
        }

        // --- postfix check (creates the queue directories); errors only show on a tty
        let check_cmd = format!("{} -c {} check", sh_quote(&postfix_cmd), sh_quote(&config_dir.display().to_string()));
        let check = Command::new("script")
            .args(["-qec", &check_cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io("run script(1) postfix check", e))?;
        let check_text = output_text(&check).replace('\r', "");
        if !check.status.success() {
            return Err(fatal(format!(
                "`postfix -c DIR check` failed ({}):\n{}\n--- maillog:\n{}",
                check.status,
                check_text.trim(),
                tail(&fs::read_to_string(&maillog).unwrap_or_default(), 30)
            )));
        }

        // --- master in the foreground, as our child
        let master_out = root.join("master.out");
        let out = fs::File::create(&master_out).map_err(|e| io("create master.out", e))?;
        let err = out.try_clone().map_err(|e| io("dup", e))?;
        let mut child = Command::new(format!("{daemon_dir}/master"))
            .arg("-c")
            .arg(&config_dir)
            .arg("-s")
            .arg("-e")
            .arg(opts.max_lifetime.as_secs().max(1).to_string())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("MAIL_CONFIG", &config_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io("spawn master", e))?;
        let master_pid = child.id();
        let started = format!("/master[{master_pid}]: daemon started");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let log = fs::read_to_string(&maillog).unwrap_or_default();
                let retry = log.contains("in use");
                return Err((
                    format!(
                        "master exited ({st}) on smtpd port {port}\n--- master output:\n{}\n--- postfix check:\n{}\n--- maillog:\n{}",
                        fs::read_to_string(&master_out).unwrap_or_default().trim(),
                        check_text.trim(),
                        tail(&log, 30)
                    ),
                    retry,
                ));
            }
            let log = fs::read_to_string(&maillog).unwrap_or_default();
            if log.contains(&started) && tcp_listening(port) {
                break;
            }
            if Instant::now() >= deadline {
                let mut me = Postfix {
                    master: Some(child),
                    master_pid,
                    smtp_port: port,
                    root: root.clone(),
                    config_dir: config_dir.clone(),
                    queue_dir: queue_dir.clone(),
                    maillog: maillog.clone(),
                    master_out: master_out.clone(),
                    postfix_cmd: postfix_cmd.clone(),
                    dir,
                };
                me.stop();
                return Err(fatal(format!(
                    "smtpd not listening on 127.0.0.1:{port} 20 s after starting master\n--- postfix check:\n{}\n--- maillog:\n{}",
                    check_text.trim(),
                    tail(&log, 30)
                )));
            }
            sleep(POLL);
        }
        Ok(Postfix {
            master: Some(child),
            master_pid,
            smtp_port: port,
            root,
            config_dir,
            queue_dir,
            maillog,
            master_out,
            postfix_cmd,
            dir,
        })
    }

    /// The smtpd port on 127.0.0.1.
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    /// The instance's config_directory (for `postfix -c`, `postconf -c`, ...).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    pub fn queue_dir(&self) -> &Path {
        &self.queue_dir
    }

    /// The temp dir holding everything of this instance.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    pub fn master_pid(&self) -> u32 {
        self.master_pid
    }

    /// The maillog contents so far.
    pub fn log(&self) -> String {
        fs::read(&self.maillog).map(|b| lossy(&b)).unwrap_or_default()
    }

    /// Poll the maillog until it contains `needle` (true) or `timeout` passes (false).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Poll until the maillog has `n` lines containing `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(POLL);
        }
    }

    /// Run a Postfix command-line tool against this instance, e.g.
    /// `run_tool("postqueue", &["-p"])` (adds `-c CONFIG_DIR`).
    pub fn run_tool(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .arg("-c")
            .arg(&self.config_dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"))
    }

    /// `postqueue -p` output.
    pub fn queue_listing(&self) -> String {
        output_text(&self.run_tool("postqueue", &["-p"]))
    }

    /// Number of queue files (incoming, active, deferred, hold, maildrop).
    pub fn queue_file_count(&self) -> usize {
        fn count(p: &Path) -> usize {
            let Ok(rd) = fs::read_dir(p) else { return 0 };
            rd.flatten()
                .map(|e| {
                    let ft = e.file_type();
                    if ft.as_ref().map(|t| t.is_dir()).unwrap_or(false) { count(&e.path()) } else { 1 }
                })
                .sum()
        }
        ["incoming", "active", "deferred", "hold", "maildrop"].iter().map(|d| count(&self.queue_dir.join(d))).sum()
    }

    /// Poll until the queue is empty.
    pub fn wait_queue_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.queue_file_count() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(POLL);
        }
    }

    /// `postqueue -f`: retry deferred mail now.
    pub fn flush_queue(&self) -> Output {
        self.run_tool("postqueue", &["-f"])
    }

    /// Change main.cf settings (`postconf -e`) and `postfix reload`.
    pub fn reconfigure(&self, settings: &[&str]) -> Result<(), String> {
        let mut args = vec!["-e"];
        args.extend_from_slice(settings);
        let o = self.run_tool("postconf", &args);
        if !o.status.success() {
            return Err(format!("postconf -e: {}", output_text(&o)));
        }
        backdate(&self.config_dir.join("main.cf")).map_err(|e| format!("backdate main.cf: {e}"))?;
        let o = Command::new(&self.postfix_cmd)
            .arg("-c")
            .arg(&self.config_dir)
            .arg("reload")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("postfix reload: {e}"))?;
        if !o.status.success() {
            return Err(format!("postfix reload: {}\n{}", output_text(&o), tail(&self.log(), 20)));
        }
        Ok(())
    }

    /// Submit a message through Postfix's `sendmail` (goes through
    /// `non_smtpd_milters`). `data` is the message (headers, blank line, body).
    pub fn sendmail(&self, from: &str, rcpts: &[&str], data: &[u8]) -> Output {
        let mut c = Command::new("sendmail")
            .arg("-C")
            .arg(&self.config_dir)
            .args(["-i", "-f", from, "--"])
            .args(rcpts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sendmail");
        let _ = c.stdin.take().unwrap().write_all(data);
        c.wait_with_output().expect("sendmail")
    }

    /// Is the master still running?
    pub fn is_running(&mut self) -> bool {
        match self.master.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `postfix stop`, then make sure the master and its children are gone
    /// (zombies count as gone). Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.master.take() else {
            return;
        };
        let kids = children_of(self.master_pid);
        let _ = Command::new(&self.postfix_cmd)
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if matches!(child.try_wait(), Ok(None)) {
            // `postfix stop` may have failed (e.g. broken config): TERM directly.
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(POLL);
            }
            if matches!(child.try_wait(), Ok(None)) {
                send_signal(self.master_pid, "TERM");
            }
        }
        wait_child(&mut child, Duration::from_secs(10));
        reap_or_kill(&kids, Duration::from_secs(5));
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// swaks

/// Run `swaks` with these arguments (no defaults added).
pub fn swaks(args: &[&str]) -> Output {
    Command::new("swaks").args(args).stdin(Stdio::null()).output().expect("run swaks")
}

/// The result of a swaks run.
#[derive(Debug)]
pub struct SwaksOutput {
    pub output: Output,
    /// stdout + stderr.
    pub transcript: String,
}

impl SwaksOutput {
    /// swaks exited 0 (the whole transaction was accepted).
    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// Server reply lines (`<-  250 ...` and error replies `<** 535 ...`),
    /// without the swaks prefix.
    pub fn replies(&self) -> Vec<String> {
        self.transcript
            .lines()
            .filter_map(|l| {
                let rest = l
                    .strip_prefix("<-")
                    .or_else(|| l.strip_prefix("<**"))
                    .or_else(|| l.strip_prefix("<~*"))
                    .or_else(|| l.strip_prefix("<~"))?;
                Some(rest.trim_start().to_string())
            })
            .collect()
    }

    /// The reply codes, one per reply (continuation lines `250-...` skipped).
    pub fn codes(&self) -> Vec<u16> {
        self.replies()
            .iter()
            .filter(|r| r.as_bytes().get(3) != Some(&b'-'))
            .filter_map(|r| r.get(..3).and_then(|c| c.parse().ok()))
            .collect()
    }

    /// Some reply starts with `prefix` (e.g. `"535"`, `"4"`, `"250 2.0.0 Ok: queued"`).
    pub fn has_reply(&self, prefix: &str) -> bool {
        self.replies().iter().any(|r| r.starts_with(prefix))
    }

    /// The queue id from `250 2.0.0 Ok: queued as ID`.
    pub fn queue_id(&self) -> Option<String> {
        self.replies().iter().find_map(|r| r.split("queued as ").nth(1).map(|s| s.trim().to_string()))
    }
}

/// A swaks command builder. Defaults: `--server 127.0.0.1:PORT`,
/// `--helo client.outbound-guard.test`, `--timeout 30`.
#[derive(Clone, Debug)]
pub struct Swaks {
    server: String,
    from: Option<String>,
    to: Vec<String>,
    args: Vec<String>,
}

impl Swaks {
    pub fn new(port: u16) -> Swaks {
        Swaks {
            server: format!("{INSIDE_ADDR}:{port}"),
            from: None,
            to: Vec::new(),
            args: vec!["--helo".into(), "client.outbound-guard.test".into(), "--timeout".into(), "30".into()],
        }
    }
    pub fn from(mut self, addr: &str) -> Self {
        self.from = Some(addr.to_string());
        self
    }
    /// Add one recipient (may be called several times).
    pub fn to(mut self, addr: &str) -> Self {
        self.to.push(addr.to_string());
        self
    }
    pub fn tos(mut self, addrs: &[&str]) -> Self {
        self.to.extend(addrs.iter().map(|s| s.to_string()));
        self
    }
    pub fn helo(self, name: &str) -> Self {
        self.arg("--helo").arg(name)
    }
    /// AUTH PLAIN with these credentials.
    pub fn auth_plain(self, user: &str, password: &str) -> Self {
        self.arg("--auth").arg("PLAIN").arg("--auth-user").arg(user).arg("--auth-password").arg(password)
    }
    /// AUTH LOGIN with these credentials.
    pub fn auth_login(self, user: &str, password: &str) -> Self {
        self.arg("--auth").arg("LOGIN").arg("--auth-user").arg(user).arg("--auth-password").arg(password)
    }
    /// Connect from 127.0.0.2 (outside the default `mynetworks`).
    pub fn outside(self) -> Self {
        self.local_interface(OUTSIDE_ADDR)
    }
    pub fn local_interface(self, addr: &str) -> Self {
        self.arg("--local-interface").arg(addr)
    }
    /// Add (or replace) a header, e.g. `"Subject: hi"`.
    pub fn header(self, h: &str) -> Self {
        self.arg("--header").arg(h)
    }
    pub fn body(self, b: &str) -> Self {
        self.arg("--body").arg(b)
    }
    /// The whole DATA content (swaks's `--data`; `\n` in it is a line break).
    pub fn data(self, d: &str) -> Self {
        self.arg("--data").arg(d)
    }
    /// `--quit-after` CONNECT|FIRST-HELO|...|MAIL|RCPT (swaks names).
    pub fn quit_after(self, stage: &str) -> Self {
        self.arg("--quit-after").arg(stage)
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    /// The full argument list.
    pub fn command_args(&self) -> Vec<String> {
        let mut v = vec!["--server".to_string(), self.server.clone()];
        if let Some(f) = &self.from {
            v.push("--from".into());
            v.push(f.clone());
        }
        if !self.to.is_empty() {
            v.push("--to".into());
            v.push(self.to.join(","));
        }
        v.extend(self.args.iter().cloned());
        v
    }
    pub fn run(&self) -> SwaksOutput {
        let args = self.command_args();
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let output = swaks(&refs);
        let transcript = output_text(&output);
        SwaksOutput { output, transcript }
    }
}

/// Read everything a TCP server sends until it closes or `timeout`; handy
/// for checking a banner without swaks.
pub fn read_banner(port: u16, timeout: Duration) -> io::Result<String> {
    let mut s = TcpStream::connect((INSIDE_ADDR, port))?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    let _ = s.write_all(b"QUIT\r\n");
    Ok(lossy(&buf[..n]))
}

// ---------------------------------------------------------------------------
// a minimal lock-step SMTP client (for sessions swaks cannot script)

/// One SMTP reply (all lines of a multi-line reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    /// The lines without the code and separator, e.g. `["2.0.0 Ok: queued as X"]`.
    pub lines: Vec<String>,
}

impl SmtpReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    /// The lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A lock-step (no pipelining) SMTP client on 127.0.0.1, std only.
pub struct SmtpClient {
    reader: io::BufReader<TcpStream>,
    writer: TcpStream,
    transcript: String,
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl SmtpClient {
    /// Connect to 127.0.0.1:port and read the 220 greeting (it is in
    /// [`Self::transcript`]).
    pub fn connect(port: u16) -> io::Result<SmtpClient> {
        let s = TcpStream::connect((INSIDE_ADDR, port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = SmtpClient { reader: io::BufReader::new(s.try_clone()?), writer: s, transcript: String::new() };
        let greeting = c.read_reply()?;
        if greeting.code != 220 {
            return Err(io::Error::other(format!("greeting: {greeting:?}")));
        }
        Ok(c)
    }

    /// Everything sent (`C: `) and received (`S: `) so far, one line each
    /// (LF line ends).
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Read one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> io::Result<SmtpReply> {
        use std::io::BufRead;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            self.transcript.push_str(&format!("S: {line}\n"));
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad reply line {line:?}")))?;
            lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(SmtpReply { code, lines });
            }
        }
    }

    /// Send raw bytes (no CRLF added).
    pub fn send_raw(&mut self, data: &[u8]) -> io::Result<()> {
        for line in lossy(data).split_inclusive('\n') {
            self.transcript.push_str(&format!("C: {}\n", line.trim_end_matches(['\r', '\n'])));
        }
        self.writer.write_all(data)
    }

    /// Send one command line (CRLF added) and read the reply.
    pub fn command(&mut self, line: &str) -> io::Result<SmtpReply> {
        self.send_raw(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    pub fn ehlo(&mut self, name: &str) -> io::Result<SmtpReply> {
        self.command(&format!("EHLO {name}"))
    }

    /// `AUTH PLAIN` with an initial response.
    pub fn auth_plain(&mut self, user: &str, password: &str) -> io::Result<SmtpReply> {
        let token = base64(format!("\0{user}\0{password}").as_bytes());
        self.command(&format!("AUTH PLAIN {token}"))
    }

    /// MAIL, RCPT for each recipient, DATA, the message, `.`. Stops at the
    /// first failing step and returns that reply (a RCPT failure only stops
    /// when no recipient was accepted). `data` may use LF or CRLF line ends;
    /// it is sent with CRLF and dot-stuffed.
    pub fn send_message(&mut self, from: &str, rcpts: &[&str], data: &str) -> io::Result<SmtpReply> {
        let r = self.command(&format!("MAIL FROM:<{from}>"))?;
        if !r.is_positive() {
            return Ok(r);
        }
        let mut last_bad = None;
        let mut accepted = 0;
        for rcpt in rcpts {
            let r = self.command(&format!("RCPT TO:<{rcpt}>"))?;
            if r.is_positive() {
                accepted += 1;
            } else {
                last_bad = Some(r);
            }
        }
        if accepted == 0 {
            return Ok(last_bad.unwrap_or(SmtpReply { code: 554, lines: vec!["no recipients".into()] }));
        }
        let r = self.command("DATA")?;
        if r.code != 354 {
            return Ok(r);
        }
        let mut wire = String::new();
        for line in data.replace("\r\n", "\n").trim_end_matches('\n').split('\n') {
            if line.starts_with('.') {
                wire.push('.');
            }
            wire.push_str(line);
            wire.push_str("\r\n");
        }
        wire.push_str(".\r\n");
        self.send_raw(wire.as_bytes())?;
        self.read_reply()
    }

    /// `QUIT`, then wait for the server to close.
    pub fn quit(mut self) -> io::Result<SmtpReply> {
        let r = self.command("QUIT")?;
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        Ok(r)
    }
}
