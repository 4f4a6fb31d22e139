//! The input is everything an MTA sends on one milter connection. It is cut into packets,
//! decoded into commands and fed to a `Session` with the pass-through policy, the way
//! `milter::connection` does, until the stream ends or the connection would be closed.
//!
//! Besides "never panics", it checks what holds by construction:
//! - a complete packet is not reported before its last byte is there;
//! - a decoded command encodes back to the exact packet it came from (except a `C` packet
//!   whose IPv6 address had Sendmail's `IPv6:` tag, which decoding removes);
//! - every byte the session writes is a sequence of well-formed replies that encode back to
//!   themselves, and modifications (if any) come before the final reply.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use outbound_guard::milter::command::{Command, Peer};
use outbound_guard::milter::frame;
use outbound_guard::milter::reply::Reply;
use outbound_guard::milter::session::{Flow, Session};
use outbound_guard::policy::PassThrough;

fuzz_target!(|data: &[u8]| {
    // The default reply texts. `Arc::default()` builds them whether the session takes them
    // as `Arc<ReplyTexts>` or behind a swappable pointer (`Arc<ArcSwap<ReplyTexts>>`).
    let mut session = Session::new(Arc::new(PassThrough), Arc::default());
    let mut out = Vec::new();
    let mut rest = data;
    // Until the input ends (possibly inside a packet) or a length the connection refuses.
    while let Ok(Some((packet, used))) = frame::decode(rest) {
        assert!(used > frame::LENGTH_BYTES && used <= rest.len());
        let raw = &rest[..used];
        rest = &rest[used..];
        assert_eq!(frame::decode(&raw[..used - 1]), Ok(None), "packet cut too early");

        let Ok(command) = Command::decode(packet) else {
            break;
        };
        assert_eq!(command.kind().code(), packet.kind);
        check_encoding(&command, raw);

        out.clear();
        match session.handle(command, &mut out) {
            Ok(flow) => {
                check_replies(&out);
                if flow == Flow::Close {
                    break;
                }
            }
            Err(error) => {
                // The message is logged by the connection layer; rendering it must not panic.
                let _ = error.to_string();
                break;
            }
        }
    }
});

fn check_encoding(command: &Command<'_>, raw: &[u8]) {
    let mut again = Vec::new();
    command.encode(&mut again);
    let lossy = matches!(command, Command::Connect { peer: Peer::Inet6 { .. }, .. });
    if lossy {
        let (packet, used) = frame::decode(&again).unwrap().unwrap();
        assert_eq!(used, again.len());
        Command::decode(packet).expect("a re-encoded command decodes");
    } else {
        assert_eq!(again, raw, "{command:?} does not encode back to its packet");
    }
}

fn check_replies(mut out: &[u8]) {
    let mut final_seen = false;
    while !out.is_empty() {
        let (packet, used) = frame::decode(out)
            .expect("the session writes valid packet lengths")
            .expect("the session writes whole packets");
        let reply = Reply::decode(packet).expect("the session writes valid replies");
        let mut again = Vec::new();
        reply.encode(&mut again);
        assert_eq!(again, &out[..used], "{reply:?} does not encode back to itself");
        assert!(!final_seen, "{reply:?} written after a final reply");
        final_seen = reply.is_final();
        out = &out[used..];
    }
}
