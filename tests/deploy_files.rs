//! The files under `deploy/` agree with the code and with each other — cheap checks that run
//! without installing anything (the package itself is installed in `tests/deploy.rs`):
//!
//! * `deploy/plugin.toml` is the repository's `plugin.toml` with only the state paths changed,
//!   and is a valid configuration;
//! * the committed man page is what `cargo run --example manpage` writes today;
//! * the unit starts the binary the package installs with the configuration the package
//!   installs, and carries the settings the service depends on;
//! * the package manifest ships all of them where the unit and the man page say they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outbound_guard::config::Config;

#[path = "../examples/manpage.rs"]
mod manpage;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The lines where the packaged configuration may differ, as (section, line in plugin.toml,
/// line in deploy/plugin.toml).
const ALLOWED_DIFFERENCES: [(&str, &str, &str); 2] = [
    ("[state]", r#"dir = "state""#, r#"dir = "/var/lib/outbound-guard""#),
    ("[admin]", r#"token_file = "state/admin.token""#, r#"token_file = "/var/lib/outbound-guard/admin.token""#),
];

#[test]
fn packaged_config_is_the_repository_config_with_only_the_state_paths_changed() {
    let source = read("plugin.toml");
    let packaged = read("deploy/plugin.toml");
    let (a, b): (Vec<&str>, Vec<&str>) = (source.lines().collect(), packaged.lines().collect());
    assert_eq!(a.len(), b.len(), "deploy/plugin.toml has lines added or removed; it must follow plugin.toml");
    let mut section = "";
    let mut seen = Vec::new();
    for (n, (x, y)) in a.iter().zip(&b).enumerate() {
        if x.starts_with('[') {
            section = x;
        }
        if x == y {
            continue;
        }
        let allowed = ALLOWED_DIFFERENCES.iter().find(|(s, from, to)| *s == section && from == x && to == y);
        assert!(
            allowed.is_some(),
            "line {}: plugin.toml has {x:?} but deploy/plugin.toml has {y:?}; only the state paths may differ \
             (copy the change over)",
            n + 1
        );
        seen.push(*x);
    }
    assert_eq!(seen.len(), ALLOWED_DIFFERENCES.len(), "expected both state paths changed, changed: {seen:?}");
}

#[test]
fn packaged_config_is_valid_and_keeps_state_under_var_lib() {
    let config = Config::load(&repo("deploy/plugin.toml")).expect("deploy/plugin.toml is valid");
    assert_eq!(config.state.dir, Path::new("/var/lib/outbound-guard"));
    assert_eq!(config.admin.token_file, Path::new("/var/lib/outbound-guard/admin.token"));
    outbound_guard::notify::check(&config).expect("notification settings are valid");
}

#[test]
fn committed_man_page_matches_the_command_line() {
    let fresh = manpage::render().expect("render the man page");
    let committed = std::fs::read(repo(manpage::PAGE)).unwrap_or_default();
    assert!(
        fresh == committed,
        "{} is out of date with src/cli.rs: run `cargo run --example manpage` and commit the result",
        manpage::PAGE
    );
    let text = String::from_utf8(fresh).expect("UTF-8");
    for needle in [".TH outbound-guard 1", "check\\-config", "restricted release", "\\-\\-reason", ".SH FILES"] {
        assert!(text.contains(needle), "man page lacks {needle:?}");
    }
}

/// `Key=Value` lines of a unit file; a key given several times keeps every value.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';', '[']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_string()).or_default().push(v.trim().to_string());
        }
    }
    out
}

/// A systemd time span like `90s`, `2min`, `1min 30s` in seconds (the units a unit file here uses).
fn seconds(span: &str) -> u64 {
    span.split_whitespace()
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            let n: u64 = digits.parse().unwrap_or_else(|_| panic!("time span {span:?}"));
            match &part[digits.len()..] {
                "" | "s" | "sec" => n,
                "m" | "min" => n * 60,
                "h" => n * 3600,
                unit => panic!("unit {unit:?} in {span:?}"),
            }
        })
        .sum()
}

#[test]
fn unit_runs_the_packaged_binary_with_the_packaged_config_and_its_directories() {
    let unit = unit_settings(&read("deploy/outbound-guard.service"));
    let one = |key: &str| -> &str {
        match unit.get(key).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("{key}= should be set once, is {other:?}"),
        }
    };
    assert_eq!(one("ExecStart"), "/usr/bin/outbound-guard --config /etc/outbound-guard/plugin.toml run");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "outbound-guard"),
        ("RuntimeDirectory", "outbound-guard"),
        ("ConfigurationDirectory", "outbound-guard"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ] {
        assert_eq!(one(key), value, "{key}=");
    }
    // SIGTERM lets a message in flight finish for up to 60 s; systemd must not SIGKILL sooner.
    assert!(seconds(one("TimeoutStopSec")) > 60, "TimeoutStopSec={}", one("TimeoutStopSec"));
    assert!(unit["SystemCallFilter"].iter().any(|v| v == "@system-service"), "{:?}", unit["SystemCallFilter"]);

    // The directories the unit creates are the ones the packaged configuration uses.
    let config = Config::load(&repo("deploy/plugin.toml")).expect("valid");
    assert_eq!(config.state.dir, Path::new("/var/lib").join(one("StateDirectory")));
    assert!(config.admin.token_file.starts_with(&config.state.dir));
}

#[test]
fn package_manifest_installs_what_the_unit_and_the_man_page_name() {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| (a[0].as_str().expect("source").to_string(), a[1].as_str().expect("dest").to_string()))
        .collect();
    let installs = |source: &str, dest: &str| {
        assert!(
            assets.iter().any(|(s, d)| s == source && d == dest),
            "[package.metadata.deb] assets should install {source} to {dest}: {assets:?}"
        );
        assert!(source.starts_with("target/") || repo(source).is_file(), "{source} is missing");
    };
    installs("target/release/outbound-guard", "usr/bin/");
    installs("deploy/plugin.toml", "etc/outbound-guard/plugin.toml");
    installs("deploy/outbound-guard.service", "lib/systemd/system/");
    installs("deploy/outbound-guard.1", "usr/share/man/man1/");
    let scripts = deb["maintainer-scripts"].as_str().expect("maintainer-scripts");
    for script in ["postinst", "prerm", "postrm"] {
        let path = repo(scripts).join(script);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.starts_with("#!/bin/sh\n") && text.contains("set -e"), "{script}: a /bin/sh script with set -e");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert!(mode & 0o111 != 0, "{script} must be executable (mode {mode:o})");
    }
}
