//! A private Sendmail 8.17 for real-peer tests ([`Sendmail`], set up with [`SendmailOptions`]):
//! the MTA daemon on a free port of 127.0.0.1 relaying everything to an [`SmtpSink`], and the
//! submission program (MSP) with its own `submit.cf`, both built with m4 from the `sendmail-cf`
//! macros, with their own queues, pid and status files in one temp dir. Every file the
//! configurations name is in that dir; the one system path Sendmail still looks at is its
//! compiled-in service switch file, for the host-name lookup it makes before it reads a
//! configuration (absent on a machine without Sendmail installed). Nothing is written outside
//! the temp dir. std + `tempfile` only.
//!
//! Sendmail is not installed (the `sendmail-bin` package would remove Postfix): `scripts/test`
//! unpacks Debian's `sendmail-bin`, `sendmail-base` and `sendmail-cf` into a tree named by
//! `OUTBOUND_GUARD_SENDMAIL_ROOT` (by default `target/sendmail/root`). A missing tree fails the
//! test that needs it, with the way to get it, as a missing Postfix does.
//!
//! Quirks this module deals with (Sendmail 8.17.1, Debian 12):
//! * Before it reads any configuration, Sendmail qualifies the system's host name; a name it
//!   cannot qualify (a container's often) makes it sleep 60 s and retry, at every start of the
//!   daemon and of the MSP. `confDOMAIN_NAME` only sets `$j` afterwards. The
//!   harness runs both in a UTS namespace of their own (`unshare --uts`) whose host name is
//!   [`HOST_NAME`], which has a dot: no lookup, no sleep, and the system's name is untouched.
//! * The MTA runs in the foreground (`-bD`) as our child, so it is stopped by its PID; every SMTP
//!   session and delivery is a child of it, collected before the stop and reaped after.
//! * There is no syslog here: `-X` writes the daemon's SMTP sessions (both directions) to a
//!   trace file, which start errors and assertions print.
//! * The MSP is run as an unprivileged user (`setpriv`). Given `-C`, a user other than root gets
//!   no set-group-ID from the binary, so its client queue belongs to that user.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::process::{
    INSIDE_ADDR, POLL, children_of, chmod, chown_user, free_port, lossy, reap_or_kill, send_signal, tcp_listening,
    wait_child,
};
use super::smtp_sink::SmtpSink;

/// The host name Sendmail runs under (its namespace's, and `confDOMAIN_NAME`).
pub const HOST_NAME: &str = "mta.outbound-guard.test";

/// The environment variable naming the unpacked Sendmail tree.
pub const ROOT_VAR: &str = "OUTBOUND_GUARD_SENDMAIL_ROOT";

/// The unpacked Sendmail tree (`usr/libexec/sendmail/sendmail`, `usr/share/sendmail/cf`).
pub fn sendmail_root() -> PathBuf {
    std::env::var_os(ROOT_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sendmail/root"))
}

/// The `sendmail` binary and the m4 `cf` directory of [`sendmail_root`]; panics saying how to
/// get them when they are not there.
fn installation() -> (PathBuf, PathBuf) {
    let root = sendmail_root();
    let binary = root.join("usr/libexec/sendmail/sendmail");
    let cf = root.join("usr/share/sendmail/cf");
    assert!(
        binary.is_file() && cf.join("m4/cf.m4").is_file(),
        "Sendmail 8.17 is not unpacked in {} (scripts/test downloads Debian's sendmail-bin, \
         sendmail-base and sendmail-cf and unpacks them there; {ROOT_VAR} names another tree)",
        root.display()
    );
    (binary, cf)
}

/// Settings of a private Sendmail. Build with [`SendmailOptions::new`] and the chained setters.
#[derive(Clone, Debug, Default)]
pub struct SendmailOptions {
    /// Port of the next hop on 127.0.0.1: every message is relayed there (`SMART_HOST`).
    pub relay_port: Option<u16>,
    /// Lines added to the MTA's sendmail.mc after the harness's own (before the mailers).
    pub mc: Vec<String>,
    /// Lines added to the MSP's submit.mc after the harness's own.
    pub submit_mc: Vec<String>,
    /// Further ports the daemon listens on (from `DAEMON_OPTIONS` in [`Self::mc`]); the start
    /// waits for them too.
    pub extra_ports: Vec<u16>,
}

impl SendmailOptions {
    pub fn new() -> Self {
        Self::default()
    }
    /// Relay everything to this sink.
    pub fn relay_to(mut self, sink: &SmtpSink) -> Self {
        self.relay_port = Some(sink.port());
        self
    }
    /// Append a sendmail.mc line.
    pub fn mc(mut self, line: &str) -> Self {
        self.mc.push(line.to_string());
        self
    }
    /// Append a submit.mc line.
    pub fn submit_mc(mut self, line: &str) -> Self {
        self.submit_mc.push(line.to_string());
        self
    }
    /// The daemon also listens on this port (a `DAEMON_OPTIONS` line of [`Self::mc`]).
    pub fn listens_on(mut self, port: u16) -> Self {
        self.extra_ports.push(port);
        self
    }
}

/// A private Sendmail MTA daemon (and its MSP configuration); stopped on drop.
pub struct Sendmail {
    daemon: Option<Child>,
    daemon_pid: u32,
    smtp_port: u16,
    binary: PathBuf,
    etc: PathBuf,
    queue_dir: PathBuf,
    client_queue_dir: PathBuf,
    trace: PathBuf,
    daemon_out: PathBuf,
    _dir: tempfile::TempDir,
}

/// The lines every configuration here starts with: paths inside `etc`, no lookups, the host name.
fn common_mc(etc: &Path) -> String {
    let e = etc.display();
    let mut s = String::new();
    let _ = writeln!(s, "divert(-1)\ndivert(0)dnl");
    let _ = writeln!(s, "OSTYPE(`linux')dnl");
    let _ = writeln!(s, "define(`confDOMAIN_NAME', `{HOST_NAME}')dnl");
    let _ = writeln!(s, "define(`confCW_FILE', `-o {e}/local-host-names')dnl");
    let _ = writeln!(s, "define(`confCR_FILE', `-o {e}/relay-domains')dnl");
    let _ = writeln!(s, "define(`confCT_FILE', `-o {e}/trusted-users')dnl");
    let _ = writeln!(s, "define(`HELP_FILE', `{e}/helpfile')dnl");
    let _ = writeln!(s, "define(`confSERVICE_SWITCH_FILE', `{e}/service.switch')dnl");
    let _ = writeln!(s, "define(`confHOSTS_FILE', `{e}/hosts')dnl");
    let _ = writeln!(s, "define(`confDONT_PROBE_INTERFACES', `True')dnl");
    // No RFC 1413 ident query back to each client.
    let _ = writeln!(s, "define(`confTO_IDENT', `0')dnl");
    s
}

/// `m4 cf.m4 NAME.mc > NAME.cf` in `etc`.
fn build_cf(cf_dir: &Path, etc: &Path, name: &str, mc: &str) -> Result<PathBuf, String> {
    let mc_path = etc.join(format!("{name}.mc"));
    fs::write(&mc_path, mc).map_err(|e| format!("write {name}.mc: {e}"))?;
    let o = Command::new("m4")
        .arg(format!("-D_CF_DIR_={}/", cf_dir.display()))
        .arg(cf_dir.join("m4/cf.m4"))
        .arg(&mc_path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run m4 (see scripts/test): {e}"))?;
    let err = lossy(&o.stderr);
    if !o.status.success() || !err.trim().is_empty() {
        return Err(format!("m4 {name}.mc failed ({}):\n{err}\n--- {name}.mc:\n{mc}", o.status));
    }
    let cf_path = etc.join(format!("{name}.cf"));
    fs::write(&cf_path, &o.stdout).map_err(|e| format!("write {name}.cf: {e}"))?;
    chmod(&cf_path, 0o644).map_err(|e| format!("chmod {name}.cf: {e}"))?;
    Ok(cf_path)
}

/// A command that runs `program args…` in a UTS namespace of its own named [`HOST_NAME`] (see
/// the module's quirks), as `user` when given. The process keeps the PID of the command's child.
fn in_own_uts(program: &Path, user: Option<&str>) -> Command {
    let script = match user {
        Some(_) => {
            "echo \"$0\" > /proc/sys/kernel/hostname && exec setpriv --reuid=\"$1\" --regid=\"$2\" --clear-groups -- \
             \"$3\" \"${@:4}\""
        }
        None => "echo \"$0\" > /proc/sys/kernel/hostname && exec \"$@\"",
    };
    let mut c = Command::new("unshare");
    c.args(["--uts", "bash", "-c", script, HOST_NAME]);
    if let Some(user) = user {
        let (uid, gid) = super::process::user_ids(user).unwrap_or_else(|| panic!("user {user} not in /etc/passwd"));
        c.arg(uid.to_string()).arg(gid.to_string());
    }
    c.arg(program).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

impl Sendmail {
    /// Builds the configurations and starts the daemon; panics with m4's complaint or the
    /// daemon's output when it does not come up.
    pub fn start(opts: SendmailOptions) -> Sendmail {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once(&opts) {
                Ok(s) => return s,
                Err((e, retry)) => {
                    last = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("Sendmail did not start:\n{last}");
    }

    fn start_once(opts: &SendmailOptions) -> Result<Sendmail, (String, bool)> {
        let (binary, cf_dir) = installation();
        let fatal = |e: String| (e, false);
        let io = |what: &str, e: io::Error| (format!("{what}: {e}"), false);

        let dir = tempfile::Builder::new().prefix("og-sendmail-").tempdir().map_err(|e| io("tempdir", e))?;
        let root = dir.path().canonicalize().map_err(|e| io("canonicalize", e))?;
        // The MSP's user must reach its configuration and client queue.
        chmod(&root, 0o755).map_err(|e| io("chmod root", e))?;
        let etc = root.join("etc");
        let queue_dir = root.join("mqueue");
        let client_queue_dir = root.join("clientmqueue");
        for d in [&etc, &queue_dir, &client_queue_dir] {
            fs::create_dir(d).map_err(|e| io("mkdir", e))?;
        }
        chmod(&etc, 0o755).map_err(|e| io("chmod etc", e))?;
        chmod(&queue_dir, 0o700).map_err(|e| io("chmod mqueue", e))?;
        chown_user(&client_queue_dir, "nobody").map_err(|e| io("chown clientmqueue", e))?;
        chmod(&client_queue_dir, 0o770).map_err(|e| io("chmod clientmqueue", e))?;
        for (name, text) in [
            ("service.switch", "hosts files\naliases files\n".to_string()),
            ("hosts", format!("{INSIDE_ADDR} localhost {HOST_NAME}\n")),
            ("helpfile", String::new()),
        ] {
            fs::write(etc.join(name), text).map_err(|e| io("write support file", e))?;
            chmod(&etc.join(name), 0o644).map_err(|e| io("chmod support file", e))?;
        }

        // --- the MTA
        let port = free_port();
        let e = etc.display();
        let mut mc = common_mc(&etc);
        let _ = writeln!(mc, "define(`QUEUE_DIR', `{}')dnl", queue_dir.display());
        let _ = writeln!(mc, "define(`STATUS_FILE', `{e}/sendmail.st')dnl");
        let _ = writeln!(mc, "define(`confPID_FILE', `{e}/sendmail.pid')dnl");
        let _ = writeln!(mc, "undefine(`ALIAS_FILE')dnl");
        if let Some(relay) = opts.relay_port {
            let _ = writeln!(mc, "define(`SMART_HOST', `relay:[{INSIDE_ADDR}]')dnl");
            let _ = writeln!(mc, "define(`RELAY_MAILER_ARGS', `TCP $h {relay}')dnl");
        }
        // Addresses are not looked up in DNS: the test domains have none.
        let _ = writeln!(mc, "FEATURE(`nocanonify')dnl");
        let _ = writeln!(mc, "FEATURE(`accept_unresolvable_domains')dnl");
        let _ = writeln!(mc, "FEATURE(`no_default_msa')dnl");
        let _ = writeln!(mc, "DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={port}, Addr={INSIDE_ADDR}')dnl");
        for line in &opts.mc {
            let _ = writeln!(mc, "{line}");
        }
        let _ = writeln!(mc, "MAILER(`smtp')dnl");
        let cf = build_cf(&cf_dir, &etc, "sendmail", &mc).map_err(fatal)?;

        // --- the MSP
        let mut submit = common_mc(&etc);
        let _ = writeln!(submit, "define(`MSP_QUEUE_DIR', `{}')dnl", client_queue_dir.display());
        // The default, smmsp, is not a user here; the MSP is run as nobody.
        let _ = writeln!(submit, "define(`confRUN_AS_USER', `nobody')dnl");
        for line in &opts.submit_mc {
            let _ = writeln!(submit, "{line}");
        }
        build_cf(&cf_dir, &etc, "submit", &submit).map_err(fatal)?;

        // --- the daemon in the foreground, as our child
        let trace = root.join("trace.log");
        let daemon_out = root.join("daemon.out");
        let out = fs::File::create(&daemon_out).map_err(|e| io("create daemon.out", e))?;
        let err = out.try_clone().map_err(|e| io("dup", e))?;
        let mut child = in_own_uts(&binary, None)
            .arg("-C")
            .arg(&cf)
            .arg("-bD")
            .arg("-X")
            .arg(&trace)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io("spawn unshare (util-linux)", e))?;
        let daemon_pid = child.id();
        let mut ports = vec![port];
        ports.extend(&opts.extra_ports);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ports.iter().all(|p| tcp_listening(*p)) {
            if let Ok(Some(status)) = child.try_wait() {
                let out = fs::read_to_string(&daemon_out).unwrap_or_default();
                let retry = out.contains("in use");
                return Err((format!("sendmail -bD exited ({status}) on ports {ports:?}:\n{out}"), retry));
            }
            if Instant::now() >= deadline {
                send_signal(daemon_pid, "TERM");
                wait_child(&mut child, Duration::from_secs(5));
                let out = fs::read_to_string(&daemon_out).unwrap_or_default();
                return Err(fatal(format!("sendmail not listening on {ports:?} 30 s after its start:\n{out}")));
            }
            sleep(POLL);
        }
        Ok(Sendmail {
            daemon: Some(child),
            daemon_pid,
            smtp_port: port,
            binary,
            etc,
            queue_dir,
            client_queue_dir,
            trace,
            daemon_out,
            _dir: dir,
        })
    }

    /// The MTA's SMTP port on 127.0.0.1.
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    /// The daemon's SMTP sessions so far (`-X`), and its own output.
    pub fn log(&self) -> String {
        format!(
            "{}{}",
            fs::read(&self.trace).map(|b| lossy(&b)).unwrap_or_default(),
            fs::read(&self.daemon_out).map(|b| lossy(&b)).unwrap_or_default()
        )
    }

    /// Poll the log until it contains `needle` (true) or `timeout` passes (false).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(POLL);
        }
    }

    /// Queue files (`qf…`) of the MTA.
    pub fn queued(&self) -> Vec<String> {
        queue_files(&self.queue_dir)
    }

    /// Queue files (`qf…`) the MSP left in its client queue (mail it will retry).
    pub fn client_queued(&self) -> Vec<String> {
        queue_files(&self.client_queue_dir)
    }

    /// Poll until neither the MTA's queue nor the MSP's holds a message (true), or `timeout`
    /// passes (false). A message being delivered sits in the MTA's queue for a moment.
    pub fn wait_queues_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.queued().is_empty() && self.client_queued().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(POLL);
        }
    }

    /// Submits a message as a local program does: the MSP (`sendmail -C submit.cf -i -f FROM
    /// RCPT…`) run as `user`, the message on its standard input. Bounded: killed after 60 s.
    pub fn submit(&self, user: &str, from: &str, rcpts: &[&str], data: &[u8]) -> Output {
        let mut c = in_own_uts(&self.binary, Some(user))
            .arg("-C")
            .arg(self.etc.join("submit.cf"))
            .args(["-i", "-f", from, "--"])
            .args(rcpts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the Sendmail MSP");
        let _ = c.stdin.take().expect("stdin").write_all(data);
        let pid = c.id();
        let (done, waited) = std::sync::mpsc::channel();
        let watchdog = std::thread::spawn(move || {
            if waited.recv_timeout(Duration::from_secs(60)).is_err() {
                send_signal(pid, "KILL");
            }
        });
        let out = c.wait_with_output().expect("wait for the Sendmail MSP");
        let _ = done.send(());
        let _ = watchdog.join();
        out
    }

    /// Stop the daemon (SIGTERM to its PID, bounded) and its sessions. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let kids = children_of(self.daemon_pid);
        send_signal(self.daemon_pid, "TERM");
        wait_child(&mut child, Duration::from_secs(10));
        reap_or_kill(&kids, Duration::from_secs(5));
    }
}

fn queue_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect())
        .unwrap_or_default();
    v.retain(|n| n.starts_with("qf"));
    v.sort();
    v
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        self.stop();
    }
}
