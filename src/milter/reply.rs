//! Typed milter replies (filter → MTA): encoding for the filter, decoding (nom) for the MTA
//! side — our test client and load generator.
//!
//! The end-of-message modifications (`h i m + 2 - e b q`) are replies too: the filter sends any
//! number of them before the final verdict of the message.

use nom::bytes::complete::{tag, take_till};
use nom::combinator::{all_consuming, opt, rest};
use nom::number::complete::be_u32;
use nom::sequence::terminated;
use nom::{IResult, Parser};
use thiserror::Error;

use super::command::printable;
use super::frame::{self, Frame};
use super::negotiate::{Actions, Steps};

/// One reply to the MTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `O`: our answer to the negotiation offer.
    Negotiate(NegotiateReply<'a>),
    /// `c`: go on.
    Continue,
    /// `a`: accept this message (or connection) without further events.
    Accept,
    /// `r`: reject with the MTA's default 5xx text.
    Reject,
    /// `t`: temporary failure with the MTA's default 4xx text.
    Tempfail,
    /// `d`: accept but silently drop the message.
    Discard,
    /// `y`: reply with our own SMTP text, e.g. `550 5.1.8 …`.
    ReplyCode(&'a [u8]),
    /// `s`: skip the remaining body chunks.
    Skip,
    /// `p`: still working, reset the MTA's timeout.
    Progress,
    /// `q`: put the message on hold, with a reason.
    Quarantine(&'a [u8]),
    /// `h`: append a header.
    AddHeader { name: &'a [u8], value: &'a [u8] },
    /// `i`: insert a header at an index.
    InsertHeader { index: u32, name: &'a [u8], value: &'a [u8] },
    /// `m`: change (or with an empty value, delete) the index-th header of that name.
    ChangeHeader { index: u32, name: &'a [u8], value: &'a [u8] },
    /// `+`: add a recipient.
    AddRecipient(&'a [u8]),
    /// `2`: add a recipient with ESMTP arguments.
    AddRecipientWithArgs { recipient: &'a [u8], args: Option<&'a [u8]> },
    /// `-`: remove a recipient.
    DeleteRecipient(&'a [u8]),
    /// `e`: change the envelope sender.
    ChangeFrom { sender: &'a [u8], args: Option<&'a [u8]> },
    /// `b`: replace (a chunk of) the body.
    ReplaceBody(&'a [u8]),
}

/// The `O` reply: agreed version, actions, steps, and the macros we want per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateReply<'a> {
    pub version: u32,
    pub actions: Actions,
    pub steps: Steps,
    pub macros: MacroRequests<'a>,
}

/// The symbol list of a negotiation reply: (stage, space-separated macro names) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MacroRequests<'a>(&'a [u8]);

impl<'a> MacroRequests<'a> {
    /// Wraps an encoded list if it is well formed.
    pub fn new(raw: &'a [u8]) -> Option<Self> {
        let mut it = Self(raw).iter();
        for _ in it.by_ref() {}
        it.rest.is_empty().then_some(Self(raw))
    }

    pub fn raw(&self) -> &'a [u8] {
        self.0
    }

    /// The (stage, names) pairs.
    pub fn iter(&self) -> MacroRequestIter<'a> {
        MacroRequestIter { rest: self.0 }
    }

    /// Encodes a list of (stage, names).
    pub fn encode_list(list: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (stage, names) in list {
            out.extend_from_slice(&stage.to_be_bytes());
            out.extend_from_slice(names);
            out.push(0);
        }
        out
    }
}

/// Iterator over [`MacroRequests`]; stops at the first malformed entry.
pub struct MacroRequestIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for MacroRequestIter<'a> {
    type Item = (u32, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (rest, item) = (be_u32, cstr).parse(self.rest).ok()?;
        self.rest = rest;
        Some(item)
    }
}

/// Why a packet is not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("unknown milter reply {}", printable(*.0))]
    UnknownKind(u8),
    #[error("malformed {} reply: {what}", printable(*.kind))]
    Malformed { kind: u8, what: &'static str },
}

type Res<'a, T> = IResult<&'a [u8], T>;

fn cstr(input: &[u8]) -> Res<'_, &[u8]> {
    terminated(take_till(|b| b == 0), tag(&[0u8][..])).parse(input)
}

fn macro_requests(input: &[u8]) -> Res<'_, MacroRequests<'_>> {
    match MacroRequests::new(input) {
        Some(list) => Ok((&input[input.len()..], list)),
        None => Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Verify))),
    }
}

impl<'a> Reply<'a> {
    /// The reply letter.
    pub fn kind(&self) -> u8 {
        match self {
            Reply::Negotiate(_) => b'O',
            Reply::Continue => b'c',
            Reply::Accept => b'a',
            Reply::Reject => b'r',
            Reply::Tempfail => b't',
            Reply::Discard => b'd',
            Reply::ReplyCode(_) => b'y',
            Reply::Skip => b's',
            Reply::Progress => b'p',
            Reply::Quarantine(_) => b'q',
            Reply::AddHeader { .. } => b'h',
            Reply::InsertHeader { .. } => b'i',
            Reply::ChangeHeader { .. } => b'm',
            Reply::AddRecipient(_) => b'+',
            Reply::AddRecipientWithArgs { .. } => b'2',
            Reply::DeleteRecipient(_) => b'-',
            Reply::ChangeFrom { .. } => b'e',
            Reply::ReplaceBody(_) => b'b',
        }
    }

    /// Whether this reply ends the MTA's wait (as opposed to a modification or progress note).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Reply::Negotiate(_)
                | Reply::Continue
                | Reply::Accept
                | Reply::Reject
                | Reply::Tempfail
                | Reply::Discard
                | Reply::ReplyCode(_)
                | Reply::Skip
        )
    }

    /// Appends this reply as one packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = frame::begin(self.kind(), out);
        match *self {
            Reply::Negotiate(n) => {
                for v in [n.version, n.actions.bits(), n.steps.bits()] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(n.macros.raw());
            }
            Reply::ReplyCode(text)
            | Reply::Quarantine(text)
            | Reply::AddRecipient(text)
            | Reply::DeleteRecipient(text) => push_cstr(out, text),
            Reply::AddHeader { name, value } => {
                push_cstr(out, name);
                push_cstr(out, value);
            }
            Reply::InsertHeader { index, name, value } | Reply::ChangeHeader { index, name, value } => {
                out.extend_from_slice(&index.to_be_bytes());
                push_cstr(out, name);
                push_cstr(out, value);
            }
            Reply::AddRecipientWithArgs { recipient: first, args } | Reply::ChangeFrom { sender: first, args } => {
                push_cstr(out, first);
                if let Some(args) = args {
                    push_cstr(out, args);
                }
            }
            Reply::ReplaceBody(chunk) => out.extend_from_slice(chunk),
            Reply::Continue
            | Reply::Accept
            | Reply::Reject
            | Reply::Tempfail
            | Reply::Discard
            | Reply::Skip
            | Reply::Progress => {}
        }
        frame::finish(start, out);
    }

    /// Decodes one reply packet (the MTA side of the conversation).
    ///
    /// # Errors
    /// [`ReplyError`] naming the reply and what is wrong with it.
    pub fn decode(frame: Frame<'a>) -> Result<Self, ReplyError> {
        let kind = frame.kind;
        let p = frame.payload;
        let whole = |r: Res<'a, Reply<'a>>, what| r.map(|(_, c)| c).map_err(|_| ReplyError::Malformed { kind, what });
        let empty = |r: Reply<'a>| {
            if p.is_empty() {
                Ok(r)
            } else {
                Err(ReplyError::Malformed { kind, what: "unexpected data after the reply" })
            }
        };
        let text = |ctor: fn(&'a [u8]) -> Reply<'a>, what| whole(all_consuming(cstr).map(ctor).parse(p), what);
        match kind {
            b'O' => whole(
                all_consuming((be_u32, be_u32, be_u32, macro_requests))
                    // Bits we do not know are kept, so a reply decodes and encodes back as sent.
                    .map(|(version, actions, steps, macros)| {
                        Reply::Negotiate(NegotiateReply {
                            version,
                            actions: Actions::from_bits_retain(actions),
                            steps: Steps::from_bits_retain(steps),
                            macros,
                        })
                    })
                    .parse(p),
                "expected version, actions, steps and a symbol list",
            ),
            b'c' => empty(Reply::Continue),
            b'a' => empty(Reply::Accept),
            b'r' => empty(Reply::Reject),
            b't' => empty(Reply::Tempfail),
            b'd' => empty(Reply::Discard),
            b's' => empty(Reply::Skip),
            b'p' => empty(Reply::Progress),
            b'y' => text(Reply::ReplyCode, "expected a NUL-terminated SMTP reply"),
            b'q' => text(Reply::Quarantine, "expected a NUL-terminated reason"),
            b'+' => text(Reply::AddRecipient, "expected a NUL-terminated recipient"),
            b'-' => text(Reply::DeleteRecipient, "expected a NUL-terminated recipient"),
            b'h' => whole(
                all_consuming((cstr, cstr)).map(|(name, value)| Reply::AddHeader { name, value }).parse(p),
                "expected a NUL-terminated header name and value",
            ),
            b'i' => whole(
                all_consuming((be_u32, cstr, cstr))
                    .map(|(index, name, value)| Reply::InsertHeader { index, name, value })
                    .parse(p),
                "expected an index and a NUL-terminated header name and value",
            ),
            b'm' => whole(
                all_consuming((be_u32, cstr, cstr))
                    .map(|(index, name, value)| Reply::ChangeHeader { index, name, value })
                    .parse(p),
                "expected an index and a NUL-terminated header name and value",
            ),
            b'2' => whole(
                all_consuming((cstr, opt(cstr)))
                    .map(|(recipient, args)| Reply::AddRecipientWithArgs { recipient, args })
                    .parse(p),
                "expected a NUL-terminated recipient and arguments",
            ),
            b'e' => whole(
                all_consuming((cstr, opt(cstr))).map(|(sender, args)| Reply::ChangeFrom { sender, args }).parse(p),
                "expected a NUL-terminated sender and arguments",
            ),
            b'b' => whole(rest.map(Reply::ReplaceBody).parse(p), "unreachable"),
            other => Err(ReplyError::UnknownKind(other)),
        }
    }
}

fn push_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(reply: Reply<'_>) {
        let mut buf = Vec::new();
        reply.encode(&mut buf);
        let (frame, used) = frame::decode(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(Reply::decode(frame).unwrap(), reply);
    }

    #[test]
    fn reply_code_is_nul_terminated_text() {
        let mut buf = Vec::new();
        Reply::ReplyCode(b"550 5.1.8 restricted").encode(&mut buf);
        assert_eq!(buf, b"\0\0\0\x16y550 5.1.8 restricted\0");
    }

    #[test]
    fn every_reply_round_trips() {
        let list = MacroRequests::encode_list(&[(2, b"{auth_authen} i"), (3, b"{rcpt_addr}")]);
        for reply in [
            Reply::Negotiate(NegotiateReply {
                version: 6,
                actions: Actions::all(),
                steps: Steps::from_bits_retain(0x3ff),
                macros: MacroRequests::new(&list).unwrap(),
            }),
            Reply::Continue,
            Reply::Accept,
            Reply::Reject,
            Reply::Tempfail,
            Reply::Discard,
            Reply::Skip,
            Reply::Progress,
            Reply::ReplyCode(b"452 4.5.3 too many"),
            Reply::Quarantine(b"spam"),
            Reply::AddHeader { name: b"X-A", value: b"1" },
            Reply::InsertHeader { index: 0, name: b"X-B", value: b"2" },
            Reply::ChangeHeader { index: 1, name: b"Subject", value: b"" },
            Reply::AddRecipient(b"<c@example.com>"),
            Reply::AddRecipientWithArgs { recipient: b"<d@example.com>", args: Some(b"NOTIFY=NEVER") },
            Reply::AddRecipientWithArgs { recipient: b"<d@example.com>", args: None },
            Reply::DeleteRecipient(b"<e@example.com>"),
            Reply::ChangeFrom { sender: b"<f@example.com>", args: None },
            Reply::ChangeFrom { sender: b"<f@example.com>", args: Some(b"SIZE=1") },
            Reply::ReplaceBody(b"new body\r\n"),
        ] {
            roundtrip(reply);
        }
    }

    #[test]
    fn symbol_list_is_validated() {
        assert!(MacroRequests::new(b"\0\0\0\x02i\0").is_some());
        assert!(MacroRequests::new(b"\0\0\0\x02i").is_none());
        assert!(MacroRequests::new(b"\0\0").is_none());
    }
}
