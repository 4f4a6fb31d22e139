//! The system clock stepped under a running filter, forward by two days and then back by three,
//! with libfaketime (Debian's `faketime`) preloaded into the real binary: only the wall clock
//! moves (`FAKETIME_DONT_FAKE_MONOTONIC`), as with `date -s` or a wrong NTP server.
//!
//! What must hold: no restriction is lifted early (a step forward past midnight would end a
//! "until tomorrow" restriction on a plain wall clock), none is held for days and no account is
//! held back by counters that now lie in the future (a step back), and the counters neither
//! empty nor stick. The filter says so in its log and in `clock_behind_seconds`.
#![cfg(feature = "real-peers")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::GuardProcess;
use common::mta::{runtime, send};
use common::process::free_port;
use common::redis::wait_until;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// External recipients per hour.
const LIMIT: usize = 3;

fn config() -> String {
    format!(
        "[organization]\nlocal_domains = [\"example.com\"]\n\
         [policy.default]\nrecipient_limit_external_per_hour = {LIMIT}\n\
         action_when_threshold_reached = \"block_until_tomorrow\"\n"
    )
}

/// Moves the filter's wall clock to `offset` from the real one (libfaketime's "+2d", "-1d").
fn set_offset(file: &Path, offset: &str) {
    std::fs::write(file, format!("{offset}\n")).expect("write the faketime file");
}

/// The number of times the filter logged a clock step.
fn steps_logged(g: &GuardProcess) -> usize {
    g.log().matches("the system clock was stepped").count()
}

fn letters(account: &str, g: &GuardProcess, n: usize) -> String {
    String::from_utf8(runtime().block_on(send(g.milter_port, account, n))).unwrap()
}

#[test]
fn clock_steps_neither_lift_restrictions_nor_hold_accounts() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime missing (Debian package faketime, installed by scripts/test)"
    );
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("faketime");
    set_offset(&clock, "+0");
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        // Read the file on every clock read, so that a step lands at once.
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let g = GuardProcess::start_with_env(free_port(), "", &config(), &env);

    // Before any step: `restricted` goes over the limit and is restricted until 00:00 UTC;
    // `steady` and `held` spend part of their hour.
    assert_eq!(letters("restricted@example.com", &g, LIMIT + 1), "ccccy", "the 4th recipient restricts");
    assert_eq!(letters("restricted@example.com", &g, 1), "y");
    assert_eq!(letters("steady@example.com", &g, 2), "ccc");
    assert_eq!(letters("held@example.com", &g, 2), "ccc");

    // Two days forward: past the restriction's midnight, and past every window.
    set_offset(&clock, "+2d");
    assert!(wait_until(Duration::from_secs(5), || steps_logged(&g) >= 1), "no clock step logged:\n{}", g.log());
    assert_eq!(letters("restricted@example.com", &g, 1), "y", "a step forward lifted a restriction early");
    // `steady`'s hour still holds its 2 recipients: 1 more is fine, the next one is over.
    assert_eq!(letters("steady@example.com", &g, 1), "cc", "the counters stuck");
    assert_eq!(letters("steady@example.com", &g, 1), "cy", "a step forward emptied the counters");
    let behind = g.metric("clock_behind_seconds").expect("clock_behind_seconds") as i64;
    assert!((2 * 86_400 - 60..=2 * 86_400).contains(&behind), "clock_behind_seconds {behind} after +2d");

    // Three days back (a day behind the real time now): counters must not lie in the future.
    set_offset(&clock, "-1d");
    assert!(wait_until(Duration::from_secs(5), || steps_logged(&g) >= 2), "the second step not logged:\n{}", g.log());
    assert_eq!(letters("held@example.com", &g, 1), "cc", "a step back held an account within its limit");
    assert_eq!(letters("held@example.com", &g, 1), "cy", "a step back emptied the counters");
    assert_eq!(
        letters("fresh@example.com", &g, LIMIT),
        "cccc",
        "a step back held back an account that had sent nothing"
    );
    assert_eq!(letters("restricted@example.com", &g, 1), "y", "the restriction still holds");
    let behind = g.metric("clock_behind_seconds").expect("clock_behind_seconds") as i64;
    assert!((-86_400..=-86_400 + 60).contains(&behind), "clock_behind_seconds {behind} after -1d");

    let (status, log) = g.terminate();
    assert!(status.success(), "exit {status}:\n{log}");
    // (No notification relay listens here: its errors are expected and not about the clock.)
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ") && !l.contains("notify::worker")).collect();
    assert!(errors.is_empty(), "errors logged:\n{}", errors.join("\n"));
}
