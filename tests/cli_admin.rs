//! The administration CLI against the real running binary: restricted list / show / add /
//! release, senders top, `--json`, the exit codes of the README's "Command line" section; SIGHUP
//! reload; and `kill -9` in the middle of load losing no acknowledged restriction or release.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::binary::{GuardProcess, binary, cli};
use common::mta::{runtime, send, try_send};
use common::process::send_signal;

const POLICY: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nrecipient_limit_external_per_hour = 2\naction_when_threshold_reached = \"block\"\n";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn restricted_and_senders_commands_with_their_exit_codes() {
    let g = GuardProcess::start("", POLICY);
    let rt = runtime();
    assert_eq!(rt.block_on(send(g.milter_port, "alice@example.com", 3)), b"cccy");

    let list = g.cli(&["restricted", "list"]);
    assert!(list.status.success());
    assert!(stdout(&list).starts_with("ACCOUNT"), "{}", stdout(&list));
    assert!(stdout(&list).contains("alice@example.com"));
    let json: serde_json::Value = serde_json::from_slice(&g.cli(&["restricted", "list", "--json"]).stdout).unwrap();
    assert_eq!(json["restricted"][0]["account"], "alice@example.com");

    let show = g.cli(&["restricted", "show", "alice@example.com"]);
    assert!(show.status.success());
    assert!(stdout(&show).contains("external/hour 2/2"), "{}", stdout(&show));
    assert!(stdout(&show).contains("until an administrator releases it"));
    assert_eq!(g.cli(&["restricted", "show", "nobody@example.com"]).status.code(), Some(1));

    let top = g.cli(&["senders", "top", "--limit", "5"]);
    assert!(top.status.success());
    assert!(stdout(&top).contains("alice@example.com"), "{}", stdout(&top));

    let release = g.cli(&["restricted", "release", "alice@example.com", "--reason", "password reset"]);
    assert!(release.status.success(), "{}", String::from_utf8_lossy(&release.stderr));
    assert_eq!(rt.block_on(send(g.milter_port, "alice@example.com", 1)), b"cc", "released for the next transaction");
    assert_eq!(g.cli(&["restricted", "release", "alice@example.com"]).status.code(), Some(1));

    let add = g.cli(&["restricted", "add", "bob@example.com", "--reason", "laptop stolen", "--json"]);
    assert!(add.status.success());
    let added: serde_json::Value = serde_json::from_slice(&add.stdout).unwrap();
    assert_eq!(added["source"], "admin");
    assert_eq!(rt.block_on(send(g.milter_port, "bob@example.com", 1)), b"y");
    let bad_until = g.cli(&["restricted", "add", "carol@example.com", "--until", "next week"]);
    assert_eq!(bad_until.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_until.stderr).contains("RFC 3339"));
    let empty_until = g.cli(&["restricted", "add", "carol@example.com", "--until", ""]);
    assert_eq!(empty_until.status.code(), Some(2), "an empty --until is not \"until released\"");
    assert_eq!(g.cli(&["restricted", "show", "carol@example.com"]).status.code(), Some(1));
    assert_eq!(g.cli(&["senders", "top", "--limit", "0"]).status.code(), Some(2));

    // The audit trail names who acted.
    let history: serde_json::Value =
        serde_json::from_slice(&g.cli(&["restricted", "show", "bob@example.com", "--json"]).stdout).unwrap();
    assert_eq!(history["history"][0]["by"], "tester (cli)");

    let (status, _) = g.terminate();
    assert!(status.success());
}

#[test]
fn a_cli_without_a_running_daemon_exits_2() {
    let g = GuardProcess::start("", POLICY);
    let config = g.config_path();
    let (status, _, _dir) = g.terminate_keeping_dir();
    assert!(status.success());
    let out = Command::new(binary()).arg("--config").arg(config).args(["restricted", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The external limit `account` is measured against, as `senders top --json` shows it.
fn limit_of(g: &GuardProcess, account: &str) -> Option<u64> {
    let top: serde_json::Value = serde_json::from_slice(&g.cli(&["senders", "top", "--json"]).stdout).ok()?;
    top["senders"].as_array()?.iter().find(|s| s["account"] == account)?["counters"]["external_limit_per_hour"].as_u64()
}

#[test]
fn sighup_reloads_and_a_broken_file_keeps_the_running_policy() {
    let g = GuardProcess::start("", POLICY);
    let rt = runtime();
    assert_eq!(rt.block_on(send(g.milter_port, "dave@example.com", 1)), b"cc");
    assert_eq!(limit_of(&g, "dave@example.com"), Some(2));
    let path = g.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        original.replace("recipient_limit_external_per_hour = 2", "recipient_limit_external_per_hour = 4"),
    )
    .unwrap();
    send_signal(g.child.id(), "HUP");
    // The reload happens in the daemon's own time: wait (bounded) until it shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while limit_of(&g, "dave@example.com") != Some(4) {
        assert!(std::time::Instant::now() < deadline, "reload not applied within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One recipient in use before the reload, so three more pass and the fourth is refused.
    assert_eq!(rt.block_on(send(g.milter_port, "dave@example.com", 4)), b"ccccy");

    std::fs::write(&path, original.replace("recipient_limit_external_per_hour = 2", "bogus = 1")).unwrap();
    send_signal(g.child.id(), "HUP");
    // The milter shows the limit still at 4.
    assert_eq!(rt.block_on(send(g.milter_port, "erin@example.com", 5)), b"cccccy", "the running policy stays");
    // The commands still work while the file is being fixed (they need only [admin]), and say
    // what is wrong with it.
    let list = g.cli(&["restricted", "list", "--json"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let warning = String::from_utf8_lossy(&list.stderr);
    assert!(warning.contains("warning") && warning.contains("bogus"), "{warning}");
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(listed["restricted"].as_array().unwrap().iter().any(|r| r["account"] == "erin@example.com"), "{listed}");
    assert!(g.cli(&["restricted", "release", "erin@example.com"]).status.success());
    assert_eq!(rt.block_on(send(g.milter_port, "erin@example.com", 1)), b"cc", "released");
    let (status, log) = g.terminate();
    assert!(status.success());
    assert!(log.contains("SIGHUP: configuration reloaded"), "{log}");
    assert!(log.contains("SIGHUP: configuration refused, the running policy stays"), "{log}");
    assert!(log.contains("bogus"), "{log}");
}

#[test]
fn kill_9_in_the_middle_of_load_loses_no_acknowledged_restriction_or_release() {
    let g = GuardProcess::start("", POLICY);
    let rt = runtime();
    // Restrict 20 accounts; each 'y' on the third recipient was acknowledged to the MTA.
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let account = format!("user{i}@example.com");
        if rt.block_on(send(g.milter_port, &account, 3)) == b"cccy" {
            acknowledged.push(account);
        }
    }
    assert_eq!(acknowledged.len(), 20);
    // Release five of them.
    for account in &acknowledged[..5] {
        assert!(g.cli(&["restricted", "release", account]).status.success());
    }
    // Load that restricts accounts (each third recipient), and releases, while kill -9 lands.
    let port = g.milter_port;
    let (restricted_tx, restricted_rx) = std::sync::mpsc::channel::<String>();
    let load = std::thread::spawn(move || {
        let rt = runtime();
        for i in 100..5000 {
            let account = format!("load{i}@example.com");
            match rt.block_on(try_send(port, &account, 3)) {
                Ok(codes) if codes == b"cccy" => {
                    if restricted_tx.send(account).is_err() {
                        break;
                    }
                }
                Ok(codes) => panic!("{account}: {codes:?}"),
                Err(_) => break, // the filter is gone
            }
        }
    });
    let config = g.config_path();
    let to_release = acknowledged[5..15].to_vec();
    let releases = std::thread::spawn(move || {
        let mut released = Vec::new();
        for account in to_release {
            if !cli(&config, &["restricted", "release", &account]).status.success() {
                break; // the filter is gone
            }
            released.push(account);
        }
        released
    });
    // Kill once the load has had ten restrictions acknowledged: mid-stream, with more coming.
    let mut restricted_in_flight: Vec<String> = Vec::new();
    while restricted_in_flight.len() < 10 {
        restricted_in_flight.push(restricted_rx.recv_timeout(Duration::from_secs(60)).expect("the load restricts"));
    }
    send_signal(g.child.id(), "KILL");
    load.join().expect("load thread");
    restricted_in_flight.extend(restricted_rx.try_iter());
    let released_in_flight = releases.join().expect("release thread");
    let mut g = g;
    let _ = g.child.wait();

    // Start again on the same state directory and configuration.
    let restarted = GuardProcess::restart(g);
    let list: serde_json::Value =
        serde_json::from_slice(&restarted.cli(&["restricted", "list", "--json"]).stdout).unwrap();
    let restricted: Vec<&str> =
        list["restricted"].as_array().unwrap().iter().map(|r| r["account"].as_str().unwrap()).collect();
    for account in acknowledged[15..].iter().chain(&restricted_in_flight) {
        assert!(restricted.contains(&account.as_str()), "{account} lost: {restricted:?}");
    }
    for account in acknowledged[..5].iter().chain(&released_in_flight) {
        assert!(!restricted.contains(&account.as_str()), "release of {account} lost");
    }
    assert_eq!(rt.block_on(send(restarted.milter_port, &acknowledged[17], 1)), b"y");
    assert_eq!(rt.block_on(send(restarted.milter_port, &acknowledged[1], 1)), b"cc");
}

#[test]
fn a_second_filter_on_the_same_state_dir_is_refused_before_it_touches_the_journal() {
    let g = GuardProcess::start("", POLICY);
    assert!(g.cli(&["restricted", "add", "before@example.com"]).status.success());

    // `outbound-guard` run again by hand on the same configuration (hence state.dir).
    let second = Command::new(binary()).arg("--config").arg(g.config_path()).arg("run").output().expect("run");
    assert_eq!(second.status.code(), Some(2));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("in use by another outbound-guard"), "{said}");
    assert!(said.contains(&format!("pid {}", g.child.id())), "{said}");

    // The first filter's journal is still the one on disk: what it records now survives a crash.
    assert!(g.cli(&["restricted", "add", "after@example.com"]).status.success());
    let mut g = g;
    send_signal(g.child.id(), "KILL");
    let _ = g.child.wait();
    let restarted = GuardProcess::restart(g);
    let list: serde_json::Value =
        serde_json::from_slice(&restarted.cli(&["restricted", "list", "--json"]).stdout).unwrap();
    let mut restricted: Vec<&str> =
        list["restricted"].as_array().unwrap().iter().map(|r| r["account"].as_str().unwrap()).collect();
    restricted.sort_unstable();
    assert_eq!(restricted, ["after@example.com", "before@example.com"]);
}

/// Stops the filter with SIGTERM and waits for it (bounded), keeping it for a restart.
fn stop_gracefully(g: &mut GuardProcess) {
    send_signal(g.child.id(), "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while g.child.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "no exit within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn show_json(g: &GuardProcess, account: &str) -> (Option<i32>, serde_json::Value) {
    let out = g.cli(&["senders", "show", account, "--json"]);
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

fn actions(v: &serde_json::Value) -> Vec<String> {
    v["history"].as_array().unwrap().iter().map(|h| h["action"].as_str().unwrap().to_owned()).collect()
}

/// `senders show` answers for a restricted account, a released one (with who restricted,
/// replaced and released it, and why) and one only counted; exit 1 only for an account the
/// filter knows nothing of. `restricted add` on a restricted account replaces its reason and
/// until and says so. The history survives a graceful restart and `kill -9`.
#[test]
fn senders_show_keeps_the_history_of_released_accounts_across_restarts() {
    let g = GuardProcess::start("", POLICY);
    let rt = runtime();
    assert_eq!(rt.block_on(send(g.milter_port, "bob@example.com", 3)), b"cccy");
    assert_eq!(rt.block_on(send(g.milter_port, "carol@example.com", 1)), b"cc");

    let (code, bob) = show_json(&g, "bob@example.com");
    assert_eq!(code, Some(0));
    let mut keys: Vec<_> = bob.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["account", "as_of", "counters", "history", "hourly", "limits", "policy", "restriction"]);
    let as_of =
        time::OffsetDateTime::parse(bob["as_of"].as_str().unwrap(), &time::format_description::well_known::Rfc3339);
    let read = as_of.expect("as_of is RFC 3339").unix_timestamp();
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((wall - read).abs() < 60, "as_of {} is the daemon's clock", bob["as_of"]);
    assert!(bob["as_of"].as_str().unwrap().ends_with('Z'), "UTC: {}", bob["as_of"]);
    assert_eq!(bob["restriction"]["source"], "policy");
    assert_eq!(bob["limits"]["recipient_limit_external_per_hour"], 2);
    let mut entry: Vec<_> = bob["history"][0].as_object().unwrap().keys().cloned().collect();
    entry.sort();
    assert_eq!(entry, ["action", "at", "by", "reason", "until"]);
    assert_eq!(actions(&bob), ["restricted"]);

    // Restricted again by hand: the reason and until are replaced, and the answer says so.
    let add = g.cli(&[
        "restricted",
        "add",
        "bob@example.com",
        "--reason",
        "laptop stolen",
        "--until",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(add.status.code(), Some(0), "{}", String::from_utf8_lossy(&add.stderr));
    assert!(stdout(&add).starts_with("Replaced"), "{}", stdout(&add));
    assert!(stdout(&add).contains("Reason:    laptop stolen"), "{}", stdout(&add));
    let again = g.cli(&["restricted", "add", "bob@example.com", "--reason", "still stolen", "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!((again["replaced"].as_bool(), again["reason"].as_str()), (Some(true), Some("still stolen")));
    assert_eq!(again["until"], serde_json::Value::Null, "no --until: until released");
    assert_eq!(rt.block_on(send(g.milter_port, "bob@example.com", 1)), b"y", "still restricted");

    let release = g.cli(&["restricted", "release", "bob@example.com", "--reason", "new laptop"]);
    assert!(release.status.success());
    assert_eq!(g.cli(&["restricted", "show", "bob@example.com"]).status.code(), Some(1), "not restricted");

    let check_bob = |g: &GuardProcess| {
        let (code, bob) = show_json(g, "Bob@Example.com");
        assert_eq!(code, Some(0), "{bob}");
        assert_eq!(bob["restriction"], serde_json::Value::Null);
        assert_eq!(actions(&bob), ["restricted", "replaced", "replaced", "released"]);
        let h = &bob["history"];
        assert_eq!((h[0]["by"].as_str(), h[1]["reason"].as_str()), (Some("policy"), Some("laptop stolen")));
        assert_eq!(h[1]["until"], "2099-01-01T00:00:00Z");
        assert_eq!((h[3]["by"].as_str(), h[3]["reason"].as_str()), (Some("tester (cli)"), Some("new laptop")));
        let text = stdout(&g.cli(&["senders", "show", "bob@example.com"]));
        assert!(text.contains("State:     may send"), "{text}");
        assert!(text.contains("released    by tester (cli): new laptop"), "{text}");
        // The per-hour series starts empty with each process: no whole hour seen yet.
        let hours = bob["hourly"]["hours"].as_array().unwrap();
        assert_eq!(hours.len(), 23);
        assert!(hours.iter().all(|h| h["external"].is_null() && h["internal"].is_null()), "{hours:?}");
        assert!(text.contains("Per hour:  highest in use, external/internal"), "{text}");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.ends_with("h -")),
            "{text}"
        );
    };
    check_bob(&g);

    // Counted, never restricted.
    let (code, carol) = show_json(&g, "carol@example.com");
    assert_eq!(code, Some(0));
    assert_eq!((carol["restriction"].is_null(), carol["history"].as_array().map(Vec::len)), (true, Some(0)));
    assert_eq!(carol["counters"]["external_last_hour"], 1);
    assert_eq!(g.cli(&["senders", "show", "nobody@example.com"]).status.code(), Some(1));

    // A graceful restart keeps counters and history …
    let mut g = g;
    stop_gracefully(&mut g);
    let mut g = GuardProcess::restart(g);
    check_bob(&g);
    assert_eq!(show_json(&g, "carol@example.com").0, Some(0), "counters snapshotted");
    // … and `kill -9` the history (counters start empty after a crash: carol is unknown then).
    send_signal(g.child.id(), "KILL");
    let _ = g.child.wait();
    let g = GuardProcess::restart(g);
    check_bob(&g);
    assert_eq!(show_json(&g, "carol@example.com").0, Some(1));
    let (status, _) = g.terminate();
    assert!(status.success());
}
