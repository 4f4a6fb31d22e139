//! A private Postfix instance for real-peer tests ([`Postfix`], set up with
//! [`PostfixOptions`]; std + `tempfile` only, no async runtime):
//! `config_directory`, `queue_directory`, `data_directory`, `maillog_file` all
//! in one temp dir, smtpd on a free port of 127.0.0.1, relaying to an
//! [`SmtpSink`] through `relayhost`, optional milters and Cyrus SASL (sasldb)
//! users.
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

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::postfix_alternate_dirs::AlternateConfigDir;
use super::process::{
    INSIDE_ADDR, POLL, children_of, chmod, chown_user, free_port, lossy, output_text, reap_or_kill, send_signal,
    tcp_listening, user_ids, wait_child,
};
use super::smtp_sink::SmtpSink;

/// Postfix waits (sleeping 300 ms at a time) until a just-written main.cf is a
/// couple of seconds old; backdating the config files skips that delay.
fn backdate(path: &Path) -> io::Result<()> {
    let when = std::time::SystemTime::now() - Duration::from_secs(10);
    fs::File::options().write(true).open(path)?.set_modified(when)
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Single-quote for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

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
    /// Let unprivileged users submit with `sendmail -C` ([`Postfix::sendmail_as`]): the
    /// instance's config directory is listed in the standard `main.cf` while it runs.
    pub unprivileged_submission: bool,
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
            unprivileged_submission: false,
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
    /// See [`PostfixOptions::unprivileged_submission`].
    pub fn unprivileged_submission(mut self) -> Self {
        self.unprivileged_submission = true;
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
    /// Dropped after the instance stopped (fields drop after `Drop::drop`).
    alternate_config_dir: Option<AlternateConfigDir>,
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

        let alternate_config_dir = if opts.unprivileged_submission {
            let standard = postconf_default("config_directory").map_err(fatal)?;
            Some(
                AlternateConfigDir::register(Path::new(&standard), &config_dir)
                    .map_err(|e| io("list the config directory in the standard main.cf", e))?,
            )
        } else {
            None
        };

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
                    alternate_config_dir: None,
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
            alternate_config_dir,
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

    /// Submit a message through Postfix's `sendmail` as the Unix user `user` (e.g. `nobody`),
    /// as a web application or a cron job would: Postfix's set-group-ID `postdrop` then applies
    /// everything it applies to unprivileged users (`local_login_sender_maps`, the `uid` in the
    /// log). Needs [`PostfixOptions::unprivileged_submission`].
    pub fn sendmail_as(&self, user: &str, from: &str, rcpts: &[&str], data: &[u8]) -> Output {
        assert!(self.alternate_config_dir.is_some(), "start the instance with unprivileged_submission()");
        let (uid, gid) = user_ids(user).unwrap_or_else(|| panic!("user {user} not in /etc/passwd"));
        let mut c = Command::new("sendmail")
            .arg("-C")
            .arg(&self.config_dir)
            .args(["-i", "-f", from, "--"])
            .args(rcpts)
            .uid(uid)
            .gid(gid)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/")
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
