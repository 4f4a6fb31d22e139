//! The policy bench's decision workload run a fixed number of times, for counting rather than
//! timing: `scripts/decision-instructions` runs it under callgrind and reports the instructions
//! one 3-recipient decision costs at a million resident accounts. On a shared machine, where
//! the timed bench moves ±20% from run to run, the count is the same in every run, so it shows
//! what a change to the decision path does to the work it does (not to its cache misses,
//! which only the timed bench sees).
//!
//! ```sh
//! cargo run --release --example decision_cost -- 100000
//! ```

#[path = "../benches/common/decision.rs"]
mod decision;

use decision::{ACCOUNTS, STRIDE, engine, fill, one_message};
use outbound_guard::policy::engine::{Engine, Transaction};

/// The counted part: `messages` decisions in the steady state (every account already known).
#[inline(never)]
fn steady_state(engine: &Engine, messages: usize) {
    let (mut buf, mut tx) = ([0u8; 32], Transaction::default());
    let mut i = 0;
    for _ in 0..messages {
        i = (i + STRIDE) % ACCOUNTS;
        one_message(engine, &mut tx, decision::account(&mut buf, i));
    }
}

fn main() {
    let messages = std::env::args().nth(1).map_or(Ok(100_000), |n| n.parse::<usize>());
    let Ok(messages) = messages else {
        eprintln!("usage: decision_cost [MESSAGES]");
        std::process::exit(2);
    };
    let (engine, _events) = engine();
    fill(&engine);
    steady_state(&engine, messages);
    println!("{messages} decisions over {} accounts", engine.tracked_accounts());
}
