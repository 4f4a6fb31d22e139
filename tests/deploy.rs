//! The Debian package as an administrator gets it: built with cargo-deb, installed with
//! `dpkg -i`, the installed binary and configuration checked, the installed unit's `ExecStart`
//! run (systemd is not PID 1 here, so the test plays systemd's part) and reached as an MTA and
//! an operator would reach it, the unit verified by `systemd-analyze`, and everything purged.
//!
//! Needs root, dpkg and `cargo deb` (`scripts/test` installs cargo-deb when it is missing).
//! The package is built around the debug binary this test run already compiled
//! (`cargo deb --no-build`): what is checked is the packaging — file list,
//! conffile, unit, maintainer scripts, man page — not the optimiser, and a release build plus
//! LTO would cost CI minutes on every run. Set `OUTBOUND_GUARD_DEB=path/to.deb` to run the same
//! checks on a package built elsewhere (e.g. the release `cargo deb`).
#![cfg(feature = "real-peers")]

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::binary::binary;
use common::process::{POLL, free_port, send_signal, tcp_listening, wait_child};
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};

const PACKAGE: &str = "outbound-guard";
const UNIT: &str = "/lib/systemd/system/outbound-guard.service";
const CONFIG: &str = "/etc/outbound-guard/plugin.toml";
/// Where man-db (as root) caches a formatted page.
const MAN_CACHE: &str = "/var/cache/man/cat1/outbound-guard.1.gz";
const WAIT: Duration = Duration::from_secs(20);

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn dpkg_status() -> String {
    String::from_utf8_lossy(&run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]).stdout).into_owned()
}

/// Purges the package when dropped, also when the test fails half-way, and checks that
/// nothing of it is left.
struct Installed;

impl Installed {
    fn install(deb: &Path) -> Installed {
        let guard = Installed;
        let out = run("dpkg", &["-i", &deb.display().to_string()]);
        assert!(out.status.success(), "dpkg -i {}:\n{}", deb.display(), text(&out));
        assert!(dpkg_status().contains("install ok installed"), "{}", dpkg_status());
        guard
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let out = run("dpkg", &["--purge", PACKAGE]);
        if std::thread::panicking() {
            return;
        }
        assert!(out.status.success(), "dpkg --purge:\n{}", text(&out));
        assert_eq!(dpkg_status(), "", "package still known to dpkg after purge");
        for left in
            ["/usr/bin/outbound-guard", CONFIG, "/etc/outbound-guard", UNIT, "/var/lib/outbound-guard", MAN_CACHE]
        {
            assert!(!Path::new(left).exists(), "{left} is left after dpkg --purge");
        }
    }
}

/// Builds the package around the binary cargo built for this test run, into `work/deb/`.
fn build_package(work: &Path) -> PathBuf {
    if let Some(deb) = std::env::var_os("OUTBOUND_GUARD_DEB") {
        return PathBuf::from(deb);
    }
    // cargo-deb maps the manifest's target/release/ to <target dir>/<profile>/. A private
    // target dir holding only this run's binary under a profile name of our own: nothing is
    // compiled, and cargo-deb's scratch files (the stripped copy) stay out of the shared target
    // dir. (Not `--profile dev`: cargo-deb 3.8 warns that it will refuse it.)
    let target_dir = work.join("target");
    let staged = target_dir.join("test-package");
    std::fs::create_dir_all(&staged).expect("staging dir");
    std::fs::copy(binary(), staged.join("outbound-guard")).expect("stage the binary");
    let out_dir = work.join("deb");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    let out = Command::new(cargo)
        .args(["deb", "--no-build", "--profile", "test-package", "--no-dbgsym", "--fast", "--output"])
        .arg(&out_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("run cargo deb");
    assert!(
        out.status.success(),
        "cargo deb failed (is cargo-deb installed? `cargo install cargo-deb --locked`):\n{}",
        text(&out)
    );
    eprintln!("cargo deb --no-build took {:?}", started.elapsed());
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .expect("read output dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one .deb in {}: {debs:?}\n{}", out_dir.display(), text(&out));
    debs.remove(0)
}

#[test]
fn debian_package_installs_a_service_that_starts_answers_and_stops() {
    // Other test processes on this machine may run this test too: one at a time.
    let lock = File::create(std::env::temp_dir().join("outbound-guard-deploy-test.lock")).expect("lock file");
    // flock(2) rather than File::lock, which needs Rust 1.89 (rust-version is 1.85); released
    // when `lock` is closed, after the purge.
    // SAFETY: a valid open descriptor, owned by `lock` for the whole test.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
    let status = dpkg_status();
    assert!(
        status.is_empty(),
        "package {PACKAGE} is already on this machine ({status}); this test installs and purges it, \
         so it refuses to touch an installation it did not make — `dpkg --purge {PACKAGE}` first"
    );

    let work = tempfile::tempdir().expect("temp dir");
    let deb = build_package(work.path());
    let contents = text(&run("dpkg-deb", &["--contents", &deb.display().to_string()]));
    let installed = Installed::install(&deb);

    // (a) What dpkg installed.
    for path in ["/usr/bin/outbound-guard", UNIT, CONFIG, "/usr/share/man/man1/outbound-guard.1.gz"] {
        assert!(contents.contains(&format!(".{path}")), "package lacks {path}:\n{contents}");
    }
    let conffiles = text(&run("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(conffiles.contains(CONFIG), "{CONFIG} is not a conffile: {conffiles:?}");
    assert_eq!(
        std::fs::read_to_string(CONFIG).expect("installed config"),
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/plugin.toml")).expect("repo"),
    );
    let version = run("/usr/bin/outbound-guard", &["--version"]);
    assert!(version.status.success(), "{}", text(&version));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("outbound-guard {}", env!("CARGO_PKG_VERSION"))
    );
    let check = run("/usr/bin/outbound-guard", &["--config", CONFIG, "check-config"]);
    assert!(check.status.success(), "check-config on the packaged config:\n{}", text(&check));
    // The man page is found by name and renders without groff warnings (from a copy, so that
    // nothing is left in man-db's cache).
    let found = run("man", &["-w", "outbound-guard"]);
    let found = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert_eq!(found, "/usr/share/man/man1/outbound-guard.1.gz", "man -w outbound-guard");
    let copy = work.path().join("outbound-guard.1.gz");
    std::fs::copy(&found, &copy).expect("copy the man page");
    let man = Command::new("man")
        .arg("--warnings")
        .arg("-l")
        .arg(&copy)
        .env("MANWIDTH", "80")
        .stdin(Stdio::null())
        .output()
        .expect("run man");
    assert!(man.status.success(), "man outbound-guard:\n{}", text(&man));
    assert!(man.stderr.is_empty(), "man page warnings:\n{}", String::from_utf8_lossy(&man.stderr));
    let page = without_overstrike(&String::from_utf8_lossy(&man.stdout));
    assert!(page.contains("restricted release ACCOUNT [--reason REASON]"), "{page}");

    // (c) The installed unit, as systemd would load it.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        // verify also checks that `Documentation=man:outbound-guard(1)` resolves, by running man,
        // which as root keeps a formatted copy: the test's own leftover, removed.
        let verify = run("systemd-analyze", &["verify", UNIT]);
        let _ = std::fs::remove_file(MAN_CACHE);
        assert!(
            verify.status.success() && text(&verify).trim().is_empty(),
            "systemd-analyze verify:\n{}",
            text(&verify)
        );
        // The sandbox does not quietly erode: exposure 1.1 today ("OK"); fail above 1.5.
        let security = run("systemd-analyze", &["security", "--offline=yes", "--threshold=15", UNIT]);
        assert!(security.status.success(), "systemd-analyze security:\n{}", text(&security));
    } else {
        eprintln!("systemd-analyze not installed: unit not verified");
    }

    // (b) The unit's ExecStart, as systemd would run it — with a configuration copied from the
    // installed one that listens on free ports and keeps its state in a temp dir.
    let unit = std::fs::read_to_string(UNIT).expect("installed unit");
    let exec_start =
        unit.lines().find_map(|l| l.trim().strip_prefix("ExecStart=")).expect("ExecStart= in the installed unit");
    let mut argv: Vec<String> = exec_start.split_whitespace().map(String::from).collect();
    let config_at = argv.iter().position(|a| a == "--config").expect("ExecStart passes --config") + 1;
    assert_eq!(argv[config_at], CONFIG, "ExecStart reads the packaged configuration");
    let (milter_port, admin_port) = (free_port(), free_port());
    let state = work.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let config = work.path().join("plugin.toml");
    let installed_config = std::fs::read_to_string(CONFIG).expect("installed config");
    std::fs::write(&config, relocated(&installed_config, milter_port, admin_port, &state)).expect("write config");
    argv[config_at] = config.display().to_string();

    let mut daemon = Daemon(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {exec_start}: {e}")),
    );
    let daemon = &mut daemon.0;
    let deadline = Instant::now() + WAIT;
    while !(tcp_listening(milter_port) && tcp_listening(admin_port)) {
        if let Ok(Some(status)) = daemon.try_wait() {
            let mut log = String::new();
            let _ = daemon.stderr.take().map(|mut e| e.read_to_string(&mut log));
            panic!("{exec_start} exited with {status} before listening:\n{log}");
        }
        if Instant::now() > deadline {
            panic!("{exec_start} did not listen on ports {milter_port} and {admin_port} within {WAIT:?}");
        }
        std::thread::sleep(POLL);
    }

    // An MTA's milter conversation: negotiation, then an internal sender's MAIL FROM.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut mta = MtaClient::connect(SocketAddr::from(([127, 0, 0, 1], milter_port))).await.expect("connect");
        let agreed = mta.negotiate(POSTFIX_OFFER).await.expect("negotiate");
        assert_eq!(agreed.version, 6);
        assert!(
            mta.macro_requests.iter().any(|(_, names)| names.contains("{auth_authen}")),
            "{:?}",
            mta.macro_requests
        );
        mta.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.expect("macros");
        let mail = mta.mail_from("<alice@example.com>", &[]).await.expect("MAIL FROM");
        assert_eq!(mail.kind(), Some(b'c'), "{mail:?}");
    });
    // The administrator's side: the health check, and the API token created in the state dir.
    let (status, body) = http_get(admin_port, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let token = state.join("admin.token");
    let mode = std::fs::metadata(&token).expect("admin.token in the state dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");

    // systemctl stop: SIGTERM, exit status 0 (a failure would make systemd restart it).
    send_signal(daemon.id(), "TERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = daemon.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            panic!("{exec_start} did not exit within {WAIT:?} of SIGTERM");
        }
        std::thread::sleep(POLL);
    };
    let mut log = String::new();
    let _ = daemon.stderr.take().map(|mut e| e.read_to_string(&mut log));
    assert!(status.success(), "exit status {status} after SIGTERM:\n{log}");

    drop(installed);
}

/// The started ExecStart; killed if the test fails while it runs.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        wait_child(&mut self.0, Duration::ZERO);
    }
}

/// The installed configuration with the milter and admin listeners on the given loopback ports
/// and the state (and the admin token) in `state`; every other line as installed.
fn relocated(config: &str, milter_port: u16, admin_port: u16, state: &Path) -> String {
    let mut section = "";
    let mut changed = 0;
    let mut out = String::new();
    for line in config.lines() {
        if line.starts_with('[') {
            section = line;
        }
        let key = line.split_once('=').map(|(k, _)| k.trim());
        let replacement = match (section, key) {
            ("[milter]", Some("listen")) => Some(format!("listen = \"inet:127.0.0.1:{milter_port}\"")),
            ("[admin]", Some("listen")) => Some(format!("listen = \"127.0.0.1:{admin_port}\"")),
            ("[state]", Some("dir")) => Some(format!("dir = {:?}", state.display().to_string())),
            ("[admin]", Some("token_file")) => {
                Some(format!("token_file = {:?}", state.join("admin.token").display().to_string()))
            }
            _ => None,
        };
        match replacement {
            Some(r) => {
                changed += 1;
                out.push_str(&r);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    assert_eq!(changed, 4, "expected to relocate milter.listen, admin.listen, state.dir, admin.token_file");
    out
}

/// `man` output to a pipe marks bold as `X\bX`, underline as `_\bX`: keep the last of each.
fn without_overstrike(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

/// A plain HTTP/1.1 GET on 127.0.0.1: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin port");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
