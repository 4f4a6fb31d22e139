//! Byte streams captured from a real Postfix 3.7 (fixtures/postfix, see its README) replayed
//! through our decoder and session, so wire compatibility does not rest on our own encoder.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use outbound_guard::config::Config;
use outbound_guard::config::ReplyTexts;
use outbound_guard::metrics::Metrics;
use outbound_guard::milter::command::Command;
use outbound_guard::milter::frame::{self, Frame};
use outbound_guard::milter::reply::Reply;
use outbound_guard::milter::session::{Flow, Session};
use outbound_guard::policy::PassThrough;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::Engine;
use outbound_guard::policy::events::EventSink;
use outbound_guard::state::memory::MemoryRestrictions;

const CAPTURES: [&str; 4] = ["postfix-plain", "postfix-auth", "postfix-two-messages", "postfix-rset"];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/postfix").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn frames(bytes: &[u8]) -> Vec<Frame<'_>> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (f, used) = frame::decode(rest).expect("valid framing").expect("whole packets only");
        out.push(f);
        rest = &rest[used..];
    }
    out
}

#[test]
fn every_postfix_packet_decodes() {
    for name in CAPTURES {
        let mta = fixture(&format!("{name}.mta.bin"));
        let kinds: String = frames(&mta)
            .into_iter()
            .map(|f| Command::decode(f).unwrap_or_else(|e| panic!("{name}: {e}")).kind().code() as char)
            .collect();
        assert!(kinds.starts_with('O'), "{name}: {kinds}");
        assert!(kinds.ends_with('Q'), "{name}: {kinds}");
        for expected in ['M', 'R', 'L', 'B', 'E'] {
            assert!(kinds.contains(expected), "{name} lacks {expected}: {kinds}");
        }
        // What libmilter answered decodes with our reply decoder.
        let filter = fixture(&format!("{name}.filter.bin"));
        for f in frames(&filter) {
            Reply::decode(f).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn the_captured_addresses_and_macros_read_as_postfix_meant_them() {
    let mta = fixture("postfix-auth.mta.bin");
    let mut login = None;
    let mut senders = Vec::new();
    for f in frames(&mta) {
        match Command::decode(f).unwrap() {
            Command::Macros { stage: b'M', pairs } => {
                for (name, value) in pairs.pairs() {
                    if name == b"{auth_authen}" {
                        login = Some(String::from_utf8_lossy(value).into_owned());
                    }
                }
            }
            Command::MailFrom(env) => senders.push(String::from_utf8_lossy(env.bare_address()).into_owned()),
            _ => {}
        }
    }
    assert_eq!(login.as_deref(), Some("alice@example.com"));
    assert_eq!(senders, ["alice@example.com"]);
}

#[test]
fn postfix_sessions_replay_through_our_session() {
    for name in CAPTURES {
        let mta = fixture(&format!("{name}.mta.bin"));
        let mut session =
            Session::new(Arc::new(PassThrough), Arc::new(arc_swap::ArcSwap::from_pointee(ReplyTexts::default())));
        let mut answered = String::new();
        let mut closed = false;
        for f in frames(&mta) {
            let command = Command::decode(f).unwrap();
            let mut out = Vec::new();
            let flow = session.handle(command, &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));
            for r in frames(&out) {
                answered.push(r.kind as char);
            }
            closed = flow == Flow::Close;
        }
        assert!(closed, "{name}: the session did not end at QUIT");
        // Negotiation first, then only "continue".
        assert!(answered.starts_with('O'), "{name}: {answered}");
        assert!(answered[1..].chars().all(|c| c == 'c'), "{name}: {answered}");
        let messages = frames(&mta).iter().filter(|f| f.kind == b'E').count();
        assert!(answered.matches('c').count() >= messages, "{name}: {answered}");
    }
}

/// Postfix talking to outbound-guard itself (`postfix-guard-limit`: the filter's own reduced
/// negotiation, an account restricted at its third recipient, then refused at MAIL FROM),
/// replayed through a fresh engine with the policy it was recorded with: our session answers
/// byte for byte what the running filter answered Postfix.
#[test]
fn a_postfix_session_with_the_filter_replays_to_the_same_bytes() {
    let policy_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/postfix/postfix-guard-limit.toml");
    let text = std::fs::read_to_string(&policy_path).unwrap();
    let config = Arc::new(Config::parse(&policy_path, &text).unwrap());
    let (sink, _events) = EventSink::channel(64);
    let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1_795_341_600));
    let engine =
        Arc::new(Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, clock, Arc::new(Metrics::new())));
    let mut session = Session::new(engine, Arc::new(arc_swap::ArcSwap::from_pointee(ReplyTexts::default())));
    let mta = fixture("postfix-guard-limit.mta.bin");
    let mut answered = Vec::new();
    for f in frames(&mta) {
        let command = Command::decode(f).unwrap();
        let flow = session.handle(command, &mut answered).unwrap();
        assert!(matches!(flow, Flow::KeepOpen | Flow::Close), "{flow:?}");
    }
    let recorded = fixture("postfix-guard-limit.filter.bin");
    let kinds = |bytes: &[u8]| frames(bytes).iter().map(|f| f.kind as char).collect::<String>();
    // Negotiation; MAIL, two recipients continue, the third restricts (y); end of message; the
    // next MAIL FROM is refused (y).
    assert_eq!(kinds(&recorded), "Occcycy");
    assert_eq!(kinds(&answered), kinds(&recorded));
    assert!(answered == recorded, "replies differ from the recording");
}
