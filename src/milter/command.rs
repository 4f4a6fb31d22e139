//! Typed milter commands (MTA → filter): decoding with nom, and encoding for the MTA side
//! (our test client and load generator use the same code, so both ends agree by construction;
//! golden captures from a real Postfix keep that agreement honest).
//!
//! Decoding borrows from the packet: no allocation on the hot path. Lists of NUL-terminated
//! strings stay as validated byte slices ([`NulStrings`]) and are iterated on demand.

use nom::combinator::{all_consuming, rest};
use nom::number::complete::{be_u16, be_u32, u8 as byte};
use nom::{IResult, Parser};
use thiserror::Error;

use super::frame::{self, Frame};
use super::negotiate::{Actions, Steps};

/// One command from the MTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `O`: the MTA's protocol version, actions and steps it offers.
    Negotiate(Offer),
    /// `D`: macro values for the stage named by `stage` (a command letter). Kept as the byte
    /// sent: an MTA may name a stage we do not know, and its macros are then simply ignored.
    Macros { stage: u8, pairs: NulStrings<'a> },
    /// `C`: the SMTP client.
    Connect { hostname: &'a [u8], peer: Peer<'a> },
    /// `H`: the HELO/EHLO argument.
    Helo { name: &'a [u8] },
    /// `M`: MAIL FROM.
    MailFrom(Envelope<'a>),
    /// `R`: RCPT TO.
    RcptTo(Envelope<'a>),
    /// `T`: DATA.
    Data,
    /// `L`: one header.
    Header { name: &'a [u8], value: &'a [u8] },
    /// `N`: end of headers.
    EndOfHeaders,
    /// `B`: a body chunk.
    Body(&'a [u8]),
    /// `E`: end of message, possibly carrying a last body chunk.
    EndOfMessage(&'a [u8]),
    /// `A`: the current message is aborted; the SMTP session goes on.
    Abort,
    /// `Q`: the connection ends.
    Quit,
    /// `K`: the SMTP session ended but the connection is reused for the next one.
    QuitNewConnection,
    /// `U`: an SMTP command the MTA did not recognise.
    Unknown(&'a [u8]),
}

/// The command letters (`SMFIC_*`): the kind byte of a packet from the MTA.
///
/// A byte that names none of them is refused when decoding ([`CommandError::UnknownKind`]),
/// so code past the decoder matches on this enum, never on raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CommandKind {
    Negotiate = b'O',
    Macros = b'D',
    Connect = b'C',
    Helo = b'H',
    MailFrom = b'M',
    RcptTo = b'R',
    Data = b'T',
    Header = b'L',
    EndOfHeaders = b'N',
    Body = b'B',
    EndOfMessage = b'E',
    Abort = b'A',
    Quit = b'Q',
    QuitNewConnection = b'K',
    /// `U`: an SMTP command the MTA did not recognise (not an unknown milter command).
    Unknown = b'U',
}

impl CommandKind {
    /// The kind named by a packet's first byte, if any.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            b'O' => Self::Negotiate,
            b'D' => Self::Macros,
            b'C' => Self::Connect,
            b'H' => Self::Helo,
            b'M' => Self::MailFrom,
            b'R' => Self::RcptTo,
            b'T' => Self::Data,
            b'L' => Self::Header,
            b'N' => Self::EndOfHeaders,
            b'B' => Self::Body,
            b'E' => Self::EndOfMessage,
            b'A' => Self::Abort,
            b'Q' => Self::Quit,
            b'K' => Self::QuitNewConnection,
            b'U' => Self::Unknown,
            _ => return None,
        })
    }

    /// The byte on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The libmilter name without its `SMFIC_` prefix, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Negotiate => "OPTNEG",
            Self::Macros => "MACRO",
            Self::Connect => "CONNECT",
            Self::Helo => "HELO",
            Self::MailFrom => "MAIL",
            Self::RcptTo => "RCPT",
            Self::Data => "DATA",
            Self::Header => "HEADER",
            Self::EndOfHeaders => "EOH",
            Self::Body => "BODY",
            Self::EndOfMessage => "EOM",
            Self::Abort => "ABORT",
            Self::Quit => "QUIT",
            Self::QuitNewConnection => "QUIT_NC",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl TryFrom<u8> for CommandKind {
    type Error = CommandError;

    fn try_from(byte: u8) -> Result<Self, CommandError> {
        Self::from_byte(byte).ok_or(CommandError::UnknownKind(byte))
    }
}

impl From<CommandKind> for u8 {
    fn from(kind: CommandKind) -> u8 {
        kind.code()
    }
}

/// The MTA's negotiation offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub version: u32,
    pub actions: Actions,
    pub steps: Steps,
}

/// Where the SMTP client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'a> {
    /// Family `U`: the MTA does not know.
    Unknown,
    /// Family `L`: a local (unix) socket.
    Local { port: u16, path: &'a [u8] },
    /// Family `4`.
    Inet { port: u16, address: &'a [u8] },
    /// Family `6`; Sendmail's `IPv6:` prefix is removed from `address`.
    Inet6 { port: u16, address: &'a [u8] },
}

/// MAIL FROM / RCPT TO: the address as the MTA sent it, then the ESMTP arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub address: &'a [u8],
    pub esmtp_args: NulStrings<'a>,
}

impl<'a> Envelope<'a> {
    /// The address without its angle brackets (`<>` gives an empty address).
    pub fn bare_address(&self) -> &'a [u8] {
        strip_angle_brackets(self.address)
    }
}

/// Removes one pair of surrounding angle brackets and surrounding blanks, if present.
pub fn strip_angle_brackets(address: &[u8]) -> &[u8] {
    let trimmed = address.trim_ascii();
    match trimmed {
        [b'<', inner @ .., b'>'] => inner,
        other => other,
    }
}

/// Zero or more NUL-terminated strings, validated when decoded.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct NulStrings<'a>(&'a [u8]);

impl<'a> NulStrings<'a> {
    /// Wraps `raw` if it is empty or ends with a NUL.
    pub fn new(raw: &'a [u8]) -> Option<Self> {
        (raw.is_empty() || raw.last() == Some(&0)).then_some(Self(raw))
    }

    /// The encoded bytes, terminators included.
    pub fn raw(&self) -> &'a [u8] {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The strings, without their terminators.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        // Each string ends at its NUL (the list ends with one, see `new`), found word at a
        // time as in `cstr` below; a byte-by-byte split was most of what a macro packet cost.
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (item, after) = match std::ffi::CStr::from_bytes_until_nul(rest) {
                Ok(found) => {
                    let end = found.count_bytes();
                    (&rest[..end], &rest[end + 1..])
                }
                Err(_) => (rest, &rest[rest.len()..]),
            };
            rest = after;
            Some(item)
        })
    }

    /// Consecutive pairs, as macro `name, value` lists are sent.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let mut it = self.iter();
        std::iter::from_fn(move || Some((it.next()?, it.next().unwrap_or_default())))
    }

    /// Encodes `items` as NUL-terminated strings (for building commands).
    pub fn encode<'s>(items: impl IntoIterator<Item = &'s [u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        for item in items {
            out.extend_from_slice(item);
            out.push(0);
        }
        out
    }
}

impl std::fmt::Debug for NulStrings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|s| String::from_utf8_lossy(s))).finish()
    }
}

/// Why a packet is not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("unknown milter command {}", printable(*.0))]
    UnknownKind(u8),
    #[error("malformed {} packet: {what}", printable(.kind.code()))]
    Malformed { kind: CommandKind, what: &'static str },
}

/// Renders a command letter for messages: `'M'`, or its code when not printable.
pub fn printable(kind: u8) -> String {
    if kind.is_ascii_graphic() { format!("'{}'", kind as char) } else { format!("0x{kind:02x}") }
}

type Res<'a, T> = IResult<&'a [u8], T>;

/// A NUL-terminated string. Found with the standard library's word-at-a-time search rather
/// than a byte-by-byte `take_till`: a header value may be a megabyte, and this runs on the
/// connection's thread. (Not the `memchr` crate either: unoptimized, as in the test builds,
/// it is 25 times slower than the prebuilt standard library, and tests measure latency.)
fn cstr(input: &[u8]) -> Res<'_, &[u8]> {
    match std::ffi::CStr::from_bytes_until_nul(input) {
        Ok(found) => {
            let end = found.count_bytes();
            Ok((&input[end + 1..], &input[..end]))
        }
        Err(_) => Err(nom::Err::Error(nom::error::Error::new(&input[input.len()..], nom::error::ErrorKind::Tag))),
    }
}

fn nul_strings(input: &[u8]) -> Res<'_, NulStrings<'_>> {
    match NulStrings::new(input) {
        Some(list) => Ok((&input[input.len()..], list)),
        None => Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Verify))),
    }
}

fn offer(input: &[u8]) -> Res<'_, Offer> {
    // Bits we do not know are kept: the MTA may offer more than this crate names.
    (be_u32, be_u32, be_u32)
        .map(|(version, actions, steps)| Offer {
            version,
            actions: Actions::from_bits_retain(actions),
            steps: Steps::from_bits_retain(steps),
        })
        .parse(input)
}

fn macros(input: &[u8]) -> Res<'_, Command<'_>> {
    (byte, nul_strings).map(|(stage, pairs)| Command::Macros { stage, pairs }).parse(input)
}

fn peer(input: &[u8]) -> Res<'_, Peer<'_>> {
    let (input, family) = byte(input)?;
    match family {
        b'U' => Ok((input, Peer::Unknown)),
        b'L' => (be_u16, cstr).map(|(port, path)| Peer::Local { port, path }).parse(input),
        b'4' => (be_u16, cstr).map(|(port, address)| Peer::Inet { port, address }).parse(input),
        b'6' => (be_u16, cstr)
            .map(|(port, address): (u16, &[u8])| Peer::Inet6 { port, address: strip_ipv6_tag(address) })
            .parse(input),
        _ => Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Alt))),
    }
}

/// Sendmail writes IPv6 peers as `IPv6:2001:db8::1`; Postfix does not.
fn strip_ipv6_tag(address: &[u8]) -> &[u8] {
    match address.get(..5) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"IPv6:") => &address[5..],
        _ => address,
    }
}

fn envelope(input: &[u8]) -> Res<'_, Envelope<'_>> {
    (cstr, nul_strings).map(|(address, esmtp_args)| Envelope { address, esmtp_args }).parse(input)
}

impl<'a> Command<'a> {
    /// Decodes one command packet.
    ///
    /// # Errors
    /// [`CommandError`] naming the command and what is wrong with it.
    pub fn decode(frame: Frame<'a>) -> Result<Self, CommandError> {
        use CommandKind as K;
        let kind = CommandKind::try_from(frame.kind)?;
        let p = frame.payload;
        let malformed = |what| move |_| CommandError::Malformed { kind, what };
        let whole = |r: Res<'a, Command<'a>>, what| r.map(|(_, c)| c).map_err(malformed(what));
        let empty = |c: Command<'a>| {
            if p.is_empty() {
                Ok(c)
            } else {
                Err(CommandError::Malformed { kind, what: "unexpected data after the command" })
            }
        };
        match kind {
            K::Negotiate => whole(
                all_consuming(offer).map(Command::Negotiate).parse(p),
                "expected version, actions and steps (12 bytes)",
            ),
            K::Macros => {
                whole(all_consuming(macros).parse(p), "expected a stage letter and NUL-terminated name/value pairs")
            }
            K::Connect => whole(
                all_consuming((cstr, peer)).map(|(hostname, peer)| Command::Connect { hostname, peer }).parse(p),
                "expected hostname, family (U, L, 4, 6), port and address",
            ),
            K::Helo => whole(
                all_consuming(cstr).map(|name| Command::Helo { name }).parse(p),
                "expected a NUL-terminated HELO name",
            ),
            K::MailFrom => whole(
                all_consuming(envelope).map(Command::MailFrom).parse(p),
                "expected a NUL-terminated sender and ESMTP arguments",
            ),
            K::RcptTo => whole(
                all_consuming(envelope).map(Command::RcptTo).parse(p),
                "expected a NUL-terminated recipient and ESMTP arguments",
            ),
            K::Data => empty(Command::Data),
            K::Header => whole(
                all_consuming((cstr, cstr)).map(|(name, value)| Command::Header { name, value }).parse(p),
                "expected a NUL-terminated header name and value",
            ),
            K::EndOfHeaders => empty(Command::EndOfHeaders),
            K::Body => whole(rest.map(Command::Body).parse(p), "unreachable"),
            K::EndOfMessage => whole(rest.map(Command::EndOfMessage).parse(p), "unreachable"),
            K::Abort => empty(Command::Abort),
            K::Quit => empty(Command::Quit),
            K::QuitNewConnection => empty(Command::QuitNewConnection),
            K::Unknown => {
                whole(all_consuming(cstr).map(Command::Unknown).parse(p), "expected a NUL-terminated SMTP command")
            }
        }
    }

    /// The command letter.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Negotiate(_) => CommandKind::Negotiate,
            Command::Macros { .. } => CommandKind::Macros,
            Command::Connect { .. } => CommandKind::Connect,
            Command::Helo { .. } => CommandKind::Helo,
            Command::MailFrom(_) => CommandKind::MailFrom,
            Command::RcptTo(_) => CommandKind::RcptTo,
            Command::Data => CommandKind::Data,
            Command::Header { .. } => CommandKind::Header,
            Command::EndOfHeaders => CommandKind::EndOfHeaders,
            Command::Body(_) => CommandKind::Body,
            Command::EndOfMessage(_) => CommandKind::EndOfMessage,
            Command::Abort => CommandKind::Abort,
            Command::Quit => CommandKind::Quit,
            Command::QuitNewConnection => CommandKind::QuitNewConnection,
            Command::Unknown(_) => CommandKind::Unknown,
        }
    }

    /// Appends this command as one packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = frame::begin(self.kind().code(), out);
        match *self {
            Command::Negotiate(Offer { version, actions, steps }) => {
                for v in [version, actions.bits(), steps.bits()] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            Command::Macros { stage, pairs } => {
                out.push(stage);
                out.extend_from_slice(pairs.raw());
            }
            Command::Connect { hostname, peer } => {
                push_cstr(out, hostname);
                match peer {
                    Peer::Unknown => out.push(b'U'),
                    Peer::Local { port, path } => push_family(out, b'L', port, path),
                    Peer::Inet { port, address } => push_family(out, b'4', port, address),
                    Peer::Inet6 { port, address } => push_family(out, b'6', port, address),
                }
            }
            Command::Helo { name } => push_cstr(out, name),
            Command::MailFrom(env) | Command::RcptTo(env) => {
                push_cstr(out, env.address);
                out.extend_from_slice(env.esmtp_args.raw());
            }
            Command::Header { name, value } => {
                push_cstr(out, name);
                push_cstr(out, value);
            }
            Command::Body(chunk) | Command::EndOfMessage(chunk) => out.extend_from_slice(chunk),
            Command::Unknown(line) => push_cstr(out, line),
            Command::Data | Command::EndOfHeaders | Command::Abort | Command::Quit | Command::QuitNewConnection => {}
        }
        frame::finish(start, out);
    }
}

fn push_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

fn push_family(out: &mut Vec<u8>, family: u8, port: u16, address: &[u8]) {
    out.push(family);
    out.extend_from_slice(&port.to_be_bytes());
    push_cstr(out, address);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(kind: u8, payload: &[u8]) -> Result<Command<'_>, CommandError> {
        Command::decode(Frame { kind, payload })
    }

    #[test]
    fn mail_from_with_brackets_and_esmtp_args() {
        let cmd = decode(b'M', b"<a@example.com>\0SIZE=100\0BODY=8BITMIME\0").unwrap();
        let Command::MailFrom(env) = cmd else { panic!("{cmd:?}") };
        assert_eq!(env.bare_address(), b"a@example.com");
        assert_eq!(env.esmtp_args.iter().collect::<Vec<_>>(), vec![&b"SIZE=100"[..], b"BODY=8BITMIME"]);
    }

    #[test]
    fn nul_strings_split_at_each_terminator_empty_strings_included() {
        let items = |raw: &'static [u8]| NulStrings::new(raw).unwrap().iter().collect::<Vec<_>>();
        assert!(items(b"").is_empty());
        assert_eq!(items(b"\0"), vec![&b""[..]]);
        assert_eq!(items(b"a\0\0"), vec![&b"a"[..], b""]);
        assert_eq!(items(b"{auth_authen}\0alice\0i\0\0"), vec![&b"{auth_authen}"[..], b"alice", b"i", b""]);
        let pairs = NulStrings::new(b"i\0ABC\0j\0").unwrap().pairs().collect::<Vec<_>>();
        assert_eq!(pairs, vec![(&b"i"[..], &b"ABC"[..]), (b"j", b"")]);
    }

    #[test]
    fn null_sender_and_address_without_brackets() {
        let Command::MailFrom(env) = decode(b'M', b"<>\0").unwrap() else { panic!() };
        assert_eq!(env.bare_address(), b"");
        assert!(env.esmtp_args.is_empty());
        let Command::RcptTo(env) = decode(b'R', b"b@example.org\0").unwrap() else { panic!() };
        assert_eq!(env.bare_address(), b"b@example.org");
    }

    #[test]
    fn connect_families() {
        let c = decode(b'C', b"mx.example\x004\x00\x19192.0.2.1\0").unwrap();
        assert_eq!(
            c,
            Command::Connect { hostname: b"mx.example", peer: Peer::Inet { port: 25, address: b"192.0.2.1" } }
        );
        let c = decode(b'C', b"h\x006\x01\xbbIPv6:2001:db8::1\0").unwrap();
        assert_eq!(c, Command::Connect { hostname: b"h", peer: Peer::Inet6 { port: 443, address: b"2001:db8::1" } });
        let c = decode(b'C', b"localhost\0L\0\0/run/x.sock\0").unwrap();
        assert_eq!(c, Command::Connect { hostname: b"localhost", peer: Peer::Local { port: 0, path: b"/run/x.sock" } });
        assert_eq!(decode(b'C', b"h\0U").unwrap(), Command::Connect { hostname: b"h", peer: Peer::Unknown });
        assert!(decode(b'C', b"h\0X").is_err());
    }

    #[test]
    fn macros_pairs() {
        let Command::Macros { stage, pairs } = decode(b'D', b"M{auth_authen}\0alice\0i\0ABC123\0").unwrap() else {
            panic!()
        };
        assert_eq!(stage, b'M');
        let pairs: Vec<_> = pairs.pairs().collect();
        assert_eq!(pairs, vec![(&b"{auth_authen}"[..], &b"alice"[..]), (b"i", b"ABC123")]);
        assert_eq!(decode(b'D', b"C").unwrap(), Command::Macros { stage: b'C', pairs: NulStrings::default() });
    }

    #[test]
    fn end_of_message_with_and_without_body() {
        assert_eq!(decode(b'E', b"").unwrap(), Command::EndOfMessage(b""));
        assert_eq!(decode(b'E', b"tail").unwrap(), Command::EndOfMessage(b"tail"));
    }

    #[test]
    fn malformed_packets_name_the_command() {
        let err = decode(b'M', b"no terminator").unwrap_err();
        assert_eq!(err.to_string(), "malformed 'M' packet: expected a NUL-terminated sender and ESMTP arguments");
        assert!(decode(b'O', b"\0\0\0\x06").is_err());
        assert!(decode(b'T', b"x").is_err());
        assert_eq!(decode(b'Z', b"").unwrap_err(), CommandError::UnknownKind(b'Z'));
        assert_eq!(decode(0x01, b"").unwrap_err().to_string(), "unknown milter command 0x01");
        // 'U' is a command (an SMTP command the MTA did not know), not an unknown one.
        assert_eq!(
            decode(b'U', b"").unwrap_err().to_string(),
            "malformed 'U' packet: expected a NUL-terminated SMTP command"
        );
    }

    #[test]
    fn every_kind_is_its_own_byte() {
        for byte in 0..=u8::MAX {
            match CommandKind::from_byte(byte) {
                Some(kind) => {
                    assert_eq!(kind.code(), byte);
                    assert_eq!(CommandKind::try_from(byte), Ok(kind));
                }
                None => assert_eq!(CommandKind::try_from(byte), Err(CommandError::UnknownKind(byte))),
            }
        }
    }

    #[test]
    fn header_keeps_value_bytes_verbatim() {
        let c = decode(b'L', b"Subject\0 folded\n\tvalue\0").unwrap();
        assert_eq!(c, Command::Header { name: b"Subject", value: b" folded\n\tvalue" });
    }
}
