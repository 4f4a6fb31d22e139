//! `smtp-sink` as the next hop of a test: on a free loopback port, every delivered message dumped
//! into its own temp dir; [`SmtpSink::messages`] parses the dumps into [`SinkMessage`]s (envelope
//! sender, recipients, message content). Stopped when dropped, also while a test panics. std and
//! `tempfile` only, no async runtime.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::process::{INSIDE_ADDR, POLL, chmod, chown_user, free_port, is_root, lossy, tcp_listening};

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
