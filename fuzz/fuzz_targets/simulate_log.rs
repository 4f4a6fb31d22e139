//! The simulator end to end on whatever a log holds: any bytes, read as lines through the
//! message reassembly and the policy engine, give a report and never a panic; every line is
//! counted once, as read or as skipped by kind; the replay refuses no more recipients than it
//! counted; and each restriction it reports is of an account it counted or a domain.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use outbound_guard::config::Config;
use outbound_guard::simulate::Simulation;
use outbound_guard::simulate::input::YearInference;

/// Low limits and every signal the log can feed, so short inputs reach restrictions.
const CONFIG: &str = r#"
[organization]
local_domains = ["example.com"]
internal_networks = ["10.0.0.0/8", "127.0.0.0/8"]
[notify]
recipients = ["postmaster@example.com"]
from = "outbound-guard@example.com"
[policy.default]
recipient_limit_external_per_hour = 3
recipient_limit_internal_per_hour = 5
recipient_limit_per_day = 8
max_recipients_per_message = 4
max_client_networks_per_hour = 2
bounce_percent = 50
bounce_min_recipients = 2
escalate_after = 2
[[policy.domain]]
domain = "customer.example"
recipient_limit_external_per_hour = 4
action = "block"
"#;

fn config() -> Arc<Config> {
    static CONFIG_PARSED: OnceLock<Arc<Config>> = OnceLock::new();
    CONFIG_PARSED
        .get_or_init(|| Arc::new(Config::parse(std::path::Path::new("fuzz.toml"), CONFIG).expect("the fuzz config")))
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let mut simulation = Simulation::new(config());
    let mut years = YearInference::new(UNIX_EPOCH + Duration::from_secs(1_780_000_000), None);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    for line in &lines {
        simulation.line(line, &mut years);
    }
    let Ok(report) = simulation.finish(vec!["fuzz".to_owned()], 5) else { return };
    let unread: u64 = report.input.unread.values().sum();
    assert_eq!(report.input.lines, lines.len() as u64);
    assert_eq!(report.input.postfix_lines + unread, report.input.lines);
    assert!(report.messages.refused_recipients <= report.messages.recipients);
    for r in &report.restricted {
        assert!(r.account.starts_with('@') || !r.account.is_empty());
    }
});
