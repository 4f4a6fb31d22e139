//! Property tests: every command and reply decodes to what was encoded, and no byte sequence
//! makes the decoders panic.

use outbound_guard::milter::command::{Command, Envelope, NulStrings, Offer, Peer};
use outbound_guard::milter::frame;
use outbound_guard::milter::negotiate::{Actions, Steps};
use outbound_guard::milter::reply::{MacroRequests, NegotiateReply, Reply};
use proptest::prelude::*;

/// A NUL-free string, as every string field of the protocol is.
fn text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..40)
}

fn texts() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(text(), 0..5)
}

/// Owned inputs from which a borrowed [`Command`] is built.
#[derive(Debug, Clone)]
enum Input {
    Negotiate(u32, u32, u32),
    Macros(u8, Vec<Vec<u8>>),
    Connect(Vec<u8>, u8, u16, Vec<u8>),
    Helo(Vec<u8>),
    Mail(Vec<u8>, Vec<Vec<u8>>),
    Rcpt(Vec<u8>, Vec<Vec<u8>>),
    Header(Vec<u8>, Vec<u8>),
    Body(Vec<u8>),
    EndOfMessage(Vec<u8>),
    Unknown(Vec<u8>),
    Bare(u8),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c)| Input::Negotiate(a, b, c)),
        (any::<u8>(), texts()).prop_map(|(s, l)| Input::Macros(s, l)),
        (text(), prop::sample::select(vec![b'U', b'L', b'4', b'6']), any::<u16>(), text())
            .prop_filter("no IPv6: tag (it is stripped on decode)", |(_, f, _, a)| *f != b'6'
                || !a.starts_with(b"IPv6:"))
            .prop_map(|(h, f, p, a)| Input::Connect(h, f, p, a)),
        text().prop_map(Input::Helo),
        (text(), texts()).prop_map(|(a, l)| Input::Mail(a, l)),
        (text(), texts()).prop_map(|(a, l)| Input::Rcpt(a, l)),
        (text(), text()).prop_map(|(n, v)| Input::Header(n, v)),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Input::Body),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Input::EndOfMessage),
        text().prop_map(Input::Unknown),
        prop::sample::select(vec![b'T', b'N', b'A', b'Q', b'K']).prop_map(Input::Bare),
    ]
}

fn check_command(input: &Input) {
    let (list_a, list_b);
    let command = match input {
        Input::Negotiate(version, actions, steps) => {
            // Any bits, known or not: the MTA may offer more than we name.
            let (actions, steps) = (Actions::from_bits_retain(*actions), Steps::from_bits_retain(*steps));
            Command::Negotiate(Offer { version: *version, actions, steps })
        }
        Input::Macros(stage, items) => {
            list_a = NulStrings::encode(items.iter().map(Vec::as_slice));
            Command::Macros { stage: *stage, pairs: NulStrings::new(&list_a).unwrap() }
        }
        Input::Connect(host, family, port, address) => {
            let (port, address) = (*port, address.as_slice());
            let peer = match family {
                b'U' => Peer::Unknown,
                b'L' => Peer::Local { port, path: address },
                b'4' => Peer::Inet { port, address },
                _ => Peer::Inet6 { port, address },
            };
            Command::Connect { hostname: host, peer }
        }
        Input::Helo(name) => Command::Helo { name },
        Input::Mail(address, args) | Input::Rcpt(address, args) => {
            list_b = NulStrings::encode(args.iter().map(Vec::as_slice));
            let env = Envelope { address, esmtp_args: NulStrings::new(&list_b).unwrap() };
            if matches!(input, Input::Mail(..)) { Command::MailFrom(env) } else { Command::RcptTo(env) }
        }
        Input::Header(name, value) => Command::Header { name, value },
        Input::Body(chunk) => Command::Body(chunk),
        Input::EndOfMessage(chunk) => Command::EndOfMessage(chunk),
        Input::Unknown(line) => Command::Unknown(line),
        Input::Bare(b'T') => Command::Data,
        Input::Bare(b'N') => Command::EndOfHeaders,
        Input::Bare(b'A') => Command::Abort,
        Input::Bare(b'Q') => Command::Quit,
        Input::Bare(_) => Command::QuitNewConnection,
    };
    let mut buf = Vec::new();
    command.encode(&mut buf);
    let (f, used) = frame::decode(&buf).unwrap().unwrap();
    assert_eq!(used, buf.len());
    assert_eq!(Command::decode(f).unwrap(), command);
}

proptest! {
    #[test]
    fn commands_round_trip(input in input()) {
        check_command(&input);
    }

    #[test]
    fn replies_round_trip(kind in 0usize..18, a in text(), b in text(), n in any::<u32>(), flag in any::<bool>()) {
        let list = MacroRequests::encode_list(&[(n % 7, a.as_slice()), (2, b.as_slice())]);
        let reply = match kind {
            0 => Reply::Negotiate(NegotiateReply {
                version: n,
                actions: Actions::from_bits_retain(n ^ 1),
                steps: Steps::from_bits_retain(n ^ 2),
                macros: MacroRequests::new(&list).unwrap(),
            }),
            1 => Reply::Continue,
            2 => Reply::Accept,
            3 => Reply::Reject,
            4 => Reply::Tempfail,
            5 => Reply::Discard,
            6 => Reply::ReplyCode(&a),
            7 => Reply::Skip,
            8 => Reply::Progress,
            9 => Reply::Quarantine(&a),
            10 => Reply::AddHeader { name: &a, value: &b },
            11 => Reply::InsertHeader { index: n, name: &a, value: &b },
            12 => Reply::ChangeHeader { index: n, name: &a, value: &b },
            13 => Reply::AddRecipient(&a),
            14 => Reply::AddRecipientWithArgs { recipient: &a, args: flag.then_some(b.as_slice()) },
            15 => Reply::DeleteRecipient(&a),
            16 => Reply::ChangeFrom { sender: &a, args: flag.then_some(b.as_slice()) },
            _ => Reply::ReplaceBody(&a),
        };
        let mut buf = Vec::new();
        reply.encode(&mut buf);
        let (f, used) = frame::decode(&buf).unwrap().unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(Reply::decode(f).unwrap(), reply);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut rest = bytes.as_slice();
        while let Ok(Some((f, used))) = frame::decode(rest) {
            let _ = Command::decode(f);
            let _ = Reply::decode(f);
            rest = &rest[used..];
        }
        if let Some((&kind, payload)) = bytes.split_first() {
            let f = frame::Frame { kind, payload };
            let _ = Command::decode(f);
            let _ = Reply::decode(f);
        }
    }
}
