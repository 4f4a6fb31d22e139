//! The connection layer with a real policy: the input is what an MTA sends over a series of
//! milter connections to one filter. It is cut into packets and decoded as
//! `milter::connection` does, each command is handed to a `Session` of the in-memory policy
//! engine (low limits, header verdicts that tag, quarantine and copy, a domain cap), and the
//! replies are collected. Where `milter_stream` stops at the first refused command, here a
//! refused command, an undecodable packet or QUIT only ends that connection: the next packet
//! opens a new one on the same engine (every other one a `milter.local_listen` connection,
//! and each ten minutes later on the engine's clock), so MAIL before negotiation, BODY before
//! MAIL, repeated end-of-message, ABORT, QUIT_NC and macros at any point all reach the engine
//! and whatever state earlier connections left in it. Only a length the connection layer
//! refuses, or a packet cut by the end of the input, ends the run.
//!
//! Besides "never panics", it checks what the MTA relies on:
//! - every byte the session writes is a sequence of whole, valid replies that encode back to
//!   themselves, of the kinds the filter sends (negotiation, continue, accept, tempfail, a reply
//!   code with a 4xx/5xx text, add header, add recipient, quarantine);
//! - negotiation is answered once, with an `O`; macros, ABORT, QUIT and QUIT_NC never are;
//!   every other command gets exactly one final reply when the negotiated steps say the MTA
//!   waits for it and none otherwise, and end-of-message always gets one, last;
//! - modifications come only at end-of-message and only those the negotiation agreed to;
//! - a refused command writes nothing; only QUIT closes; after it the session is closed;
//! - without scanners and with the in-memory store the session never asks for an
//!   asynchronous step (`Flow::Scan`, `Flow::Prepare`).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use outbound_guard::config::Config;
use outbound_guard::metrics::Metrics;
use outbound_guard::milter::command::{Command, CommandKind};
use outbound_guard::milter::frame;
use outbound_guard::milter::negotiate::{Actions, Negotiated};
use outbound_guard::milter::reply::Reply;
use outbound_guard::milter::session::{Flow, Session, State};
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::Engine;
use outbound_guard::policy::events::EventSink;
use outbound_guard::state::memory::MemoryRestrictions;

/// Low limits so short inputs reach restrictions, and every message outcome the session turns
/// into modifications: tag (default), quarantine and a copy (for `news@`), a domain cap.
const CONFIG: &str = r#"
[organization]
local_domains = ["example.com"]
internal_networks = ["10.0.0.0/8", "127.0.0.0/8"]
[verdict]
sources = ["headers"]
[[verdict.rule]]
header = "X-Fuzz"
pattern = "^spam"
[notify]
recipients = ["postmaster@example.com"]
from = "outbound-guard@example.com"
[policy.default]
recipient_limit_external_per_hour = 3
recipient_limit_internal_per_hour = 5
recipient_limit_per_day = 8
max_recipients_per_message = 4
max_client_networks_per_hour = 2
spam_min_messages = 1
spam_percent = 50
spam_message_action = "tag"
bcc_suspicious_to = ["audit@example.com"]
escalate_after = 2
[[policy.rule]]
name = "news"
priority = 0
from = ["news@example.com"]
spam_message_action = "quarantine"
bcc_suspicious_to = ["audit@example.com"]
[[policy.domain]]
domain = "customer.example"
recipient_limit_external_per_hour = 4
action = "block"
"#;

fn config() -> Arc<Config> {
    static PARSED: OnceLock<Arc<Config>> = OnceLock::new();
    PARSED
        .get_or_init(|| Arc::new(Config::parse(std::path::Path::new("fuzz.toml"), CONFIG).expect("the fuzz config")))
        .clone()
}

/// The time the engine's clock starts at, and how far it moves between connections.
const START_SECS: u64 = 1_795_341_600;
const BETWEEN_CONNECTIONS: Duration = Duration::from_secs(600);

/// How one connection ended.
enum End {
    /// The session or the decoder ended it; the input goes on with a new connection.
    Connection,
    /// The input is used up, or its next length is one the connection layer refuses.
    Input,
}

fuzz_target!(|data: &[u8]| {
    // A fresh engine per input: a run depends on its input only.
    let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(START_SECS));
    let (sink, _events) = EventSink::channel(64);
    let engine = Arc::new(Engine::new(
        config(),
        Arc::new(MemoryRestrictions::default()),
        sink,
        clock.clone(),
        Arc::new(Metrics::new()),
    ));
    // The default reply texts.
    let replies = Arc::default();
    let mut rest = data;
    for connection in 0usize.. {
        let session = Session::new(engine.clone(), Arc::clone(&replies));
        let session = if connection % 2 == 1 { session.for_local_submissions() } else { session };
        if let End::Input = serve(session, &mut rest) {
            break;
        }
        clock.advance(BETWEEN_CONNECTIONS);
    }
});

/// Feeds packets from `rest` to `session` until the connection or the input ends.
fn serve(mut session: Session<Engine>, rest: &mut &[u8]) -> End {
    let mut negotiated: Option<Negotiated> = None;
    let mut out = Vec::new();
    loop {
        let Ok(Some((packet, used))) = frame::decode(rest) else { return End::Input };
        *rest = &rest[used..];
        let Ok(command) = Command::decode(packet) else { return End::Connection };
        let kind = command.kind();
        out.clear();
        match session.handle(command, &mut out) {
            Ok(flow) => {
                assert!(!matches!(flow, Flow::Scan | Flow::Prepare), "{flow:?} without scanners or a shared store");
                let replies = decode_replies(&out);
                check_answer(kind, &replies, negotiated.as_ref());
                if let Some(Reply::Negotiate(agreed)) = replies.first() {
                    negotiated = Some(Negotiated {
                        version: agreed.version,
                        actions: agreed.actions,
                        steps: agreed.steps,
                        symbol_list: !agreed.macros.raw().is_empty(),
                    });
                }
                assert_eq!(flow == Flow::Close, kind == CommandKind::Quit, "{flow:?} after {kind:?}");
                assert_eq!(session.in_transaction(), matches!(session.state(), State::Message(_)));
                if flow == Flow::Close {
                    assert_eq!(session.state(), State::Closed);
                    return End::Connection;
                }
            }
            Err(error) => {
                assert!(out.is_empty(), "a refused {kind:?} wrote {out:?}");
                // The connection layer logs it; rendering it must not panic.
                let _ = error.to_string();
                return End::Connection;
            }
        }
    }
}

/// The replies in `out`, each checked to be whole, valid and to encode back to itself.
fn decode_replies(mut out: &[u8]) -> Vec<Reply<'_>> {
    let mut replies = Vec::new();
    while !out.is_empty() {
        let (packet, used) = frame::decode(out)
            .expect("the session writes valid packet lengths")
            .expect("the session writes whole packets");
        let reply = Reply::decode(packet).expect("the session writes valid replies");
        let mut again = Vec::new();
        reply.encode(&mut again);
        assert_eq!(again, &out[..used], "{reply:?} does not encode back to itself");
        replies.push(reply);
        out = &out[used..];
    }
    replies
}

/// What may answer a command of `kind`, given what was negotiated.
fn check_answer(kind: CommandKind, replies: &[Reply<'_>], negotiated: Option<&Negotiated>) {
    use CommandKind as K;
    match kind {
        K::Negotiate => {
            assert!(matches!(replies, [Reply::Negotiate(_)]), "negotiation answered with {replies:?}");
            return;
        }
        K::Macros | K::Abort | K::Quit | K::QuitNewConnection => {
            assert!(replies.is_empty(), "{kind:?} answered with {replies:?}");
            return;
        }
        _ => {}
    }
    // Any other command is only accepted after the negotiation.
    let negotiated = negotiated.expect("a command other than negotiation or QUIT accepted before negotiation");
    let Some((last, modifications)) = replies.split_last() else {
        assert!(!negotiated.expects_reply(kind), "{kind:?} not answered though the MTA waits for it");
        return;
    };
    assert!(negotiated.expects_reply(kind), "{kind:?} answered with {replies:?} though the reply was waived");
    check_final(last);
    if kind != K::EndOfMessage {
        assert!(modifications.is_empty(), "{kind:?} answered with {replies:?}");
    }
    for m in modifications {
        let needs = match m {
            Reply::AddHeader { .. } => Actions::ADD_HEADERS,
            Reply::AddRecipient(_) => Actions::ADD_RCPT,
            Reply::Quarantine(_) => Actions::QUARANTINE,
            other => panic!("the filter never sends {other:?}"),
        };
        assert!(negotiated.actions.contains(needs), "{m:?} without {needs:?} negotiated");
    }
}

fn check_final(reply: &Reply<'_>) {
    match reply {
        Reply::Continue | Reply::Accept | Reply::Tempfail => {}
        Reply::ReplyCode(text) => {
            assert!(
                text.len() >= 3 && matches!(text[0], b'4' | b'5') && text[1..3].iter().all(u8::is_ascii_digit),
                "reply text without a 4xx/5xx code: {:?}",
                String::from_utf8_lossy(text)
            );
        }
        other => panic!("the filter never ends a command with {other:?}"),
    }
}
