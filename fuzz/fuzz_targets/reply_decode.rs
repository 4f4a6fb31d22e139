//! Reply decoding (the MTA side: our test client and load generator read these).
//!
//! The input is read two ways: as one packet without its length prefix (first byte = reply
//! letter, the rest = payload), which is easy for the fuzzer to hit, and as a stream of
//! length-prefixed packets as a filter would send them. Every reply that decodes must encode
//! back to the exact bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outbound_guard::milter::frame::{self, Frame};
use outbound_guard::milter::reply::Reply;

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, payload)) = data.split_first() {
        let mut raw = Vec::new();
        frame::encode(kind, payload, &mut raw);
        check(Frame { kind, payload }, &raw);
    }

    let mut rest = data;
    while let Ok(Some((packet, used))) = frame::decode(rest) {
        check(packet, &rest[..used]);
        rest = &rest[used..];
    }
});

fn check(packet: Frame<'_>, raw: &[u8]) {
    match Reply::decode(packet) {
        Ok(reply) => {
            assert_eq!(reply.kind(), packet.kind);
            let _ = reply.is_final();
            if let Reply::Negotiate(n) = reply {
                // A symbol list that decoded is fully walkable.
                let walked: usize = n.macros.iter().map(|(_, names)| 4 + names.len() + 1).sum();
                assert_eq!(walked, n.macros.raw().len());
            }
            let mut again = Vec::new();
            reply.encode(&mut again);
            assert_eq!(again, raw, "{reply:?} does not encode back to its packet");
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}
