//! The command line as an administrator meets it: `check-config` on the shipped file and on
//! broken ones, `run` refusing a bad configuration, unix sockets, exit codes, JSON logs.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::binary::binary;
use common::process::send_signal;

fn guard(args: &[&str], config: &Path) -> Output {
    Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run outbound-guard")
}

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("plugin.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_shipped_configuration_is_valid() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugin.toml");
    let out = guard(&["check-config"], &shipped);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = guard(&["check-config", "--json"], &shipped);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON output");
    assert_eq!(v["valid"], true);
    assert_eq!(v["file"], shipped.display().to_string());
}

#[test]
fn errors_name_file_line_key_and_value_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[milter]\nio_timeout = \"soon\"\n", ":2: milter.io_timeout = \"soon\": is not a duration"),
        (
            "[milter]\nlisten = \"inet:127.0.0.1:7357\"\ncolour = \"blue\"\n",
            ":3: milter.colour = \"blue\": unknown field `colour`",
        ),
        (
            "[notify]\nsmtp = \"smtp://127.0.0.1:25?tls=bogus\"\n",
            ":2: notify.smtp = \"smtp://127.0.0.1:25?tls=bogus\": tls=\"bogus\" is not one of",
        ),
        ("[verdict]\nspamd = \"garbage\"\n", ":2: verdict.spamd = \"garbage\": must be HOST:PORT"),
        ("[verdict]\nrspamd = \"ftp://scanner\"\n", ":2: verdict.rspamd = \"ftp://scanner\": rspamd URL"),
        (
            "[[verdict.rule]]\nheader = \"X-Verdict\"\npattern = \"(unclosed\"\n",
            ":3: verdict.rule[0].pattern = \"(unclosed\": is not a valid regular expression",
        ),
        (
            "[[verdict.rule]]\nheader = \"X-Verdict\"\npattern = \"spam\"\nmin_score = 5.0\n",
            ":1: verdict.rule[0] = [[verdict.rule]]: needs exactly one of",
        ),
        (
            "[state]\nbackend = \"redis\"\nredis_url = \"http://r:6379\"\n",
            ":3: state.redis_url = \"http://r:6379\": must be a redis://",
        ),
        (
            "[state]\nbackend = \"redis\"\nredis_url = \"redis+cluster://r1:7000,r2/\"\n",
            ":3: state.redis_url = \"redis+cluster://r1:7000,r2/\": is not a usable Redis Cluster URL: \"r2\" is not host:port",
        ),
        (
            "[state]\nbackend = \"redis\"\nredis_url = \"redis+cluster://r1:7000/2\"\n",
            ":3: state.redis_url = \"redis+cluster://r1:7000/2\": is not a usable Redis Cluster URL: a cluster has only \
             database 0, not /2",
        ),
        (
            "[milter]\nlisten = \"inet:127.0.0.1:7357\"\nlocal_listen = \"inet:127.0.0.1:7357\"\n",
            ":3: milter.local_listen = \"inet:127.0.0.1:7357\": is milter.listen too",
        ),
        (
            "[organization]\nlocal_submission_account = \"a b\"\n",
            ":2: organization.local_submission_account = \"a b\": must be an account name",
        ),
        ("[log]\nlevel = \"verbose\"\n", ":2: log.level = \"verbose\": is not a log level"),
        (
            "[notify]\nfrom = \"og@example.com\"\ntemplates_dir = \"broken\"\n",
            ":3: notify.templates_dir = \"broken\": notification template",
        ),
        (
            "[policy.default]\nrecipient_limit_per_day = \"many\"\n",
            ":2: policy.default.recipient_limit_per_day = \"many\": invalid type",
        ),
        (
            "[policy.default]\naction_when_threshold_reached = \"panic\"\n",
            ":2: policy.default.action_when_threshold_reached = \"panic\": must be one of",
        ),
        (
            "[organization]\ninternal_networks = [\"10.0.0.0/33\"]\n",
            ":2: organization.internal_networks[0] = \"10.0.0.0/33\": is not a network",
        ),
        (
            "[[policy.rule]]\nname = \"a\"\npriority = 1\nfrom = [\"x@example.com\"]\n[[policy.rule]]\nname = \"b\"\npriority = 1\nfrom = [\"y@example.com\"]\n",
            ":7: policy.rule[1].priority = 1: is also the priority of rule \"a\"",
        ),
        (
            "[replies]\naccount_restricted = \"250 2.0.0 fine\"\n",
            ":2: replies.account_restricted = \"250 2.0.0 fine\": must start with a 4xx or 5xx",
        ),
        ("[milter]\nio_timeout = \"1s\"\nio_timeout = \"2s\"\n", ":3: milter.io_timeout = \"2s\": duplicate key"),
        (
            "[organization]\nlocal_domains = [\"example.com\", \"exa mple.com\"]\n",
            ":2: organization.local_domains[1] = \"exa mple.com\": is not a valid domain name",
        ),
        (
            "[[policy.rule]]\nname = \"a\"\npriority = 1\nsender_domain_is = [\"bad domain!\"]\n",
            ":4: policy.rule[0].sender_domain_is[0] = \"bad domain!\": is not a valid domain name",
        ),
        ("[notify]\nadmin_url = \"not a url\"\n", ":2: notify.admin_url = \"not a url\": must be an http"),
        ("[notify]\ntemplates_dir = \"missing\"\n", ":2: notify.templates_dir = \"missing\": "),
        (
            "[milter]\nlisten = \"inet:127.0.0.1:7400\"\n[admin]\nlisten = \"127.0.0.1:7400\"\n",
            ":4: admin.listen = \"127.0.0.1:7400\": is the milter's address too",
        ),
    ];
    // A template override that does not compile (for the templates_dir case).
    std::fs::create_dir(dir.path().join("broken")).unwrap();
    std::fs::write(dir.path().join("broken/sender_restricted.body.txt"), "{% if %}").unwrap();
    for (text, expected) in cases {
        let path = write(dir.path(), text);
        let out = guard(&["check-config"], &path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        let expected = format!("{}{expected}", path.display());
        assert!(stderr.contains(&expected), "{text}\nexpected {expected}\ngot {stderr}");
    }
}

/// The relay's password is not repeated in an error about its URL.
#[test]
fn a_relay_url_error_masks_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[notify]\nsmtp = \"smtp://og:hunter2@relay.example.com?tls=sometimes\"\n");
    let out = guard(&["check-config"], &path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(":2: notify.smtp = \"smtp://og:***@relay.example.com"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// Log filters: levels and `target=level` directives pass, a bare word (which tracing would take
/// for a target and so silence everything else) does not.
#[test]
fn log_levels_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    for (level, valid) in
        [("debug", true), ("WARN", true), ("warn,outbound_guard=debug", true), ("verbose", false), ("info,x=", false)]
    {
        let path = write(dir.path(), &format!("[log]\nlevel = \"{level}\"\n"));
        let out = guard(&["check-config"], &path);
        assert_eq!(out.status.success(), valid, "{level}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn run_refuses_to_start_with_a_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[milter]\nmax_connections = 0\n");
    let out = guard(&["run"], &path);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("milter.max_connections = 0: must be between 1 and 1000000"));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(binary()).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A child process that is killed if the test fails before it ends it.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_unix_socket_replaces_a_stale_socket_but_never_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("milter.sock");
    // A stale socket left by a crashed run.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let path = write(
        dir.path(),
        "[milter]\nlisten = \"unix:milter.sock\"\nsocket_mode = \"0600\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut running = Killed(
        Command::new(binary()).arg("--config").arg(&path).stdin(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    );
    let child = &mut running.0;
    // The relative path resolves next to the configuration file; wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "no socket");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    send_signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists(), "the socket is removed at exit");

    // A regular file in its place is left alone and the start fails.
    std::fs::write(&sock, "precious").unwrap();
    let out = guard(&["run"], &path);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists and is not a socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
}

#[test]
fn json_logs_are_one_object_per_line_with_their_fields() {
    let guard = common::binary::GuardProcess::start("", "[log]\nformat = \"json\"\n");
    let milter_listen = format!("127.0.0.1:{}", guard.milter_port);
    let (status, log) = guard.terminate();
    assert!(status.success(), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string()), "{log}");
    let listening = lines
        .iter()
        .find(|l| l["message"] == "outbound-guard milter listening")
        .unwrap_or_else(|| panic!("no listening line:\n{log}"));
    assert_eq!(listening["level"], "INFO");
    // Fields sit beside the message, not inside a nested object.
    assert!(listening["listen"].as_str().is_some_and(|l| l.contains(&milter_listen)), "{listening}");
    let saved = lines.iter().find(|l| l["message"] == "counters saved").unwrap_or_else(|| panic!("{log}"));
    assert_eq!(saved["accounts"], 0);
}
