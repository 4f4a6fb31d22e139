//! The Postfix log line parser (the delivery follower and the simulator read whatever the
//! MTA's log holds). Any bytes give a line or a reason to skip it, never a panic; what a line
//! gives borrows from that line; and a line that parses still parses with a `\r` appended
//! (a log copied through a Windows share), to the same facts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outbound_guard::maillog;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        match maillog::parse(line) {
            Ok(parsed) => {
                let inside = |s: &[u8]| s.is_empty() || line.as_ptr_range().contains(&s.as_ptr());
                assert!(inside(parsed.host) && inside(parsed.program));
                if let Some(qid) = parsed.queue_id {
                    assert!(inside(qid));
                }
                if line.ends_with(b"\r") {
                    continue;
                }
                let mut with_cr = line.to_vec();
                with_cr.push(b'\r');
                assert_eq!(maillog::parse(&with_cr).map(|p| p.event), Ok(parsed.event));
            }
            Err(why) => {
                let _ = why.name();
            }
        }
    }
});
