//! The message part of a Postfix log line: the queue ID it is about and what it says.
//!
//! Only the lines that tell what became of a message are interpreted (who sent it, what the
//! queue manager took, each recipient's outcome, refusals, bounces, administrator actions);
//! every other Postfix line is [`Event::Other`], which is not an error. A line of a kind we
//! interpret whose fields are not where they belong is [`Malformed`].

use nom::bytes::complete::{tag, take_until, take_while_m_n, take_while1};
use nom::character::complete::digit1;
use nom::combinator::map_res;
use nom::{IResult, Parser};

/// A Postfix daemon, from the last part of the program name (`postfix/submission/smtpd` →
/// [`Daemon::Smtpd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Daemon {
    Smtpd,
    Pickup,
    Cleanup,
    Qmgr,
    /// smtp, lmtp, local, virtual, pipe, error, retry, discard: the agents that decide a
    /// recipient's outcome (cleanup does too, for a local submission a milter refused).
    Delivery,
    Bounce,
    Postsuper,
    Other,
}

impl Daemon {
    pub fn of(name: &[u8]) -> Daemon {
        match name {
            b"smtpd" => Daemon::Smtpd,
            b"pickup" => Daemon::Pickup,
            b"cleanup" => Daemon::Cleanup,
            b"qmgr" | b"nqmgr" => Daemon::Qmgr,
            b"smtp" | b"lmtp" | b"local" | b"virtual" | b"pipe" | b"error" | b"retry" | b"discard" => Daemon::Delivery,
            b"bounce" => Daemon::Bounce,
            b"postsuper" => Daemon::Postsuper,
            _ => Daemon::Other,
        }
    }
}

/// A recipient's outcome as a delivery agent logs it (`status=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Sent,
    Bounced,
    Deferred,
    Expired,
    /// `deliverable` / `undeliverable` (address verification probes) and anything newer.
    Other,
}

/// A milter's action on a message, as cleanup or smtpd logs it (`milter-reject:` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MilterAction {
    Reject,
    Discard,
    Hold,
    Other,
}

/// What a bounce daemon line announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notification {
    /// `sender non-delivery notification`: a bounce to the sender.
    NonDelivery,
    /// `sender delivery status notification` (a DSN SUCCESS/DELAY the sender asked for).
    DeliveryStatus,
    /// `sender delay notification`.
    Delay,
    /// `postmaster non-delivery notification` and other kinds.
    Other,
}

/// What `postsuper` did to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PostsuperAction {
    Requeued,
    Removed,
    Held,
    Released,
    Other,
}

/// What a Postfix line says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// smtpd: the SMTP client of a message, and its SASL login when it authenticated:
    /// `client=name[addr]`, `, sasl_method=PLAIN, sasl_username=user`.
    Client { name: &'a [u8], addr: &'a [u8], sasl_username: Option<&'a [u8]> },
    /// pickup: a local submission (`sendmail(1)`): the submitting Unix user and the sender.
    Pickup { uid: u32, sender: &'a [u8] },
    /// cleanup: `message-id=<…>` (the brackets removed).
    MessageId(&'a [u8]),
    /// qmgr: the message entered the active queue: `from=<…>, size=N, nrcpt=N (queue active)`.
    QueueActive { sender: &'a [u8], size: u64, nrcpt: u32 },
    /// qmgr: the message left the queue.
    Removed,
    /// qmgr: the message expired and went back to the sender (`forced`: `status=force-expired`,
    /// an administrator's `postsuper -f`).
    Expired { sender: &'a [u8], forced: bool },
    /// A delivery agent's outcome for one recipient.
    Delivery { to: &'a [u8], orig_to: Option<&'a [u8]>, relay: &'a [u8], dsn: &'a [u8], status: DeliveryStatus },
    /// A milter acted on the message (cleanup for content stages, smtpd for envelope stages).
    Milter { action: MilterAction, stage: &'a [u8], sender: Option<&'a [u8]>, recipient: Option<&'a [u8]> },
    /// smtpd refused a command before the message had a queue ID (`NOQUEUE: reject: RCPT …`).
    Refused { stage: &'a [u8], sender: Option<&'a [u8]>, recipient: Option<&'a [u8]> },
    /// bounce: a notification about this message, queued as `notice`.
    Notification { kind: Notification, notice: &'a [u8] },
    /// postsuper: an administrator's action on the message.
    Postsuper(PostsuperAction),
    /// A Postfix line this parser does not interpret (connect, TLS, warnings, statistics …).
    Other,
}

/// A line of a kind the parser interprets, whose fields are not as Postfix writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

type Res<'a, T> = IResult<&'a [u8], T>;

/// A queue ID, then `: `. Short IDs are upper-case hex; long ones (`enable_long_queue_ids`)
/// are 10 or more letters and digits without vowels. Words such as postsuper's `Requeued:`
/// are neither.
fn queue_id(input: &[u8]) -> Res<'_, &[u8]> {
    let (rest, id) = take_while_m_n(5, 32, |b: u8| b.is_ascii_alphanumeric())(input)?;
    let (rest, _) = tag(&b": "[..])(rest)?;
    let short = id.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    let long = id.len() >= 10 && !id.iter().any(|b| b"AEIOUaeiou".contains(b));
    if !(short || long || id == b"NOQUEUE") {
        return Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Verify)));
    }
    Ok((rest, id))
}

/// The queue ID a message starts with, if any, and the rest.
pub fn split_queue_id(message: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match queue_id(message) {
        Ok((rest, id)) if id != b"NOQUEUE" => (Some(id), rest),
        _ => (None, message),
    }
}

/// The value of `key` in a `key=value, key=value` list (`key` given with its `=`): up to the
/// next `, ` or the end; a `<…>` value keeps what is between the brackets, even a comma.
fn field<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(text, key)?;
    // Only at the start of the text or after a separator, so `orig_to=` is not found for `to=`.
    if at > 0 && !matches!(text[at - 1], b' ' | b',') {
        let later = field(&text[at + key.len()..], key)?;
        return Some(later);
    }
    let value = &text[at + key.len()..];
    if let Some(inner) = value.strip_prefix(b"<") {
        let end = find(inner, b">")?;
        return Some(&inner[..end]);
    }
    let end = value.iter().position(|&b| b == b',' || b == b' ').unwrap_or(value.len());
    Some(&value[..end])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn uint<T: std::str::FromStr>(input: &[u8]) -> Res<'_, T> {
    map_res(digit1, |d: &[u8]| std::str::from_utf8(d).unwrap_or_default().parse::<T>()).parse(input)
}

fn parse_u<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    uint::<T>(value).ok().filter(|(rest, _)| rest.is_empty()).map(|(_, n)| n)
}

/// smtpd: `client=name[addr]…`.
fn client(text: &[u8]) -> Option<Event<'_>> {
    let value = text.strip_prefix(b"client=")?;
    let (rest, name) = take_until::<_, _, nom::error::Error<&[u8]>>(&b"["[..])(value).ok()?;
    let (_, addr) = take_until::<_, _, nom::error::Error<&[u8]>>(&b"]"[..])(&rest[1..]).ok()?;
    Some(Event::Client { name, addr, sasl_username: field(rest, b"sasl_username=") })
}

fn delivery_status(value: &[u8]) -> DeliveryStatus {
    match value {
        b"sent" => DeliveryStatus::Sent,
        b"bounced" => DeliveryStatus::Bounced,
        b"deferred" => DeliveryStatus::Deferred,
        b"expired" => DeliveryStatus::Expired,
        _ => DeliveryStatus::Other,
    }
}

/// The `key=value` pairs of a `key=value, key=value` list, in order, in one pass (a `<…>`
/// value up to its `>`, even a comma); they end where no `, ` follows a value. Postfix writes
/// its keys in a fixed order, so the lines most of a log is made of (deliveries, the queue
/// manager's) are read without searching them once per key.
fn pairs(text: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest.take()?;
        let eq = memchr::memchr(b'=', r)?;
        let value = &r[eq + 1..];
        let (value, after) = match value.strip_prefix(b"<") {
            Some(inner) => {
                let end = memchr::memchr(b'>', inner)?;
                (&inner[..end], &inner[end + 1..])
            }
            None => value.split_at(value.iter().position(|&b| b == b',' || b == b' ').unwrap_or(value.len())),
        };
        rest = after.strip_prefix(b", ");
        Some((&r[..eq], value))
    })
}

/// A delivery line's fields in Postfix's order (`to`, `orig_to`, `relay`, `conn_use`,
/// `delay`, `delays`, `dsn`, `status`), ending at `status`.
fn delivery_in_order(text: &[u8]) -> Option<Event<'_>> {
    let (mut to, mut orig_to, mut relay, mut dsn) = (None, None, &b""[..], &b""[..]);
    for (key, value) in pairs(text) {
        match key {
            b"to" => to = Some(value),
            b"orig_to" => orig_to = Some(value),
            b"relay" => relay = value,
            b"dsn" => dsn = value,
            b"status" => {
                return Some(Event::Delivery { to: to?, orig_to, relay, dsn, status: delivery_status(value) });
            }
            _ => {}
        }
    }
    None
}

fn delivery(text: &[u8]) -> Result<Event<'_>, Malformed> {
    if let Some(event) = delivery_in_order(text) {
        return Ok(event);
    }
    // Not in the usual order or shape: look for each key.
    let to = field(text, b"to=").ok_or(Malformed)?;
    let status = field(text, b"status=").ok_or(Malformed)?;
    Ok(Event::Delivery {
        to,
        orig_to: field(text, b"orig_to="),
        relay: field(text, b"relay=").unwrap_or_default(),
        dsn: field(text, b"dsn=").unwrap_or_default(),
        status: delivery_status(status),
    })
}

/// `… from=<s> to=<r> proto=…`: the envelope at the end of a reject line (space-separated).
fn envelope(text: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let tail = match find(text, b"; from=<") {
        Some(at) => &text[at + 2..],
        None => return (None, None),
    };
    (field(tail, b"from="), field(tail, b"to="))
}

/// `milter-reject: END-OF-MESSAGE from …` → the action and the stage.
fn milter(text: &[u8]) -> Option<Event<'_>> {
    let rest = text.strip_prefix(b"milter-")?;
    let (rest, action) = take_while1::<_, _, nom::error::Error<&[u8]>>(|b: u8| b.is_ascii_lowercase())(rest).ok()?;
    let rest = rest.strip_prefix(b": ")?;
    let stage = &rest[..rest.iter().position(|&b| b == b' ').unwrap_or(rest.len())];
    let action = match action {
        b"reject" => MilterAction::Reject,
        b"discard" => MilterAction::Discard,
        b"hold" => MilterAction::Hold,
        _ => MilterAction::Other,
    };
    let (sender, recipient) = envelope(rest);
    Some(Event::Milter { action, stage, sender, recipient })
}

/// `reject: RCPT from …: 554 …; from=<s> to=<r> …`.
fn refused(text: &[u8]) -> Option<Event<'_>> {
    let rest = text.strip_prefix(b"reject: ")?;
    let stage = &rest[..rest.iter().position(|&b| b == b' ').unwrap_or(rest.len())];
    let (sender, recipient) = envelope(rest);
    Some(Event::Refused { stage, sender, recipient })
}

fn qmgr(text: &[u8]) -> Result<Event<'_>, Malformed> {
    if text == b"removed" {
        return Ok(Event::Removed);
    }
    if !text.starts_with(b"from=") {
        return Ok(Event::Other);
    }
    let (mut sender, mut size, mut nrcpt, mut status) = (None, None, None, None);
    for (key, value) in pairs(text) {
        match key {
            b"from" => sender = Some(value),
            b"size" => size = Some(value),
            b"nrcpt" => nrcpt = Some(value),
            b"status" => status = Some(value),
            _ => {}
        }
    }
    let sender = sender.ok_or(Malformed)?;
    // A line in an odd shape (`from=<a>>, status=…` is seen in the wild): search it.
    let status = match status {
        None if !text.ends_with(b"(queue active)") => field(text, b"status="),
        found => found,
    };
    if let Some(status) = status {
        return Ok(match status {
            b"expired" => Event::Expired { sender, forced: false },
            b"force-expired" => Event::Expired { sender, forced: true },
            _ => Event::Other,
        });
    }
    if !text.ends_with(b"(queue active)") {
        return Ok(Event::Other);
    }
    let size = size.and_then(parse_u).ok_or(Malformed)?;
    let nrcpt = nrcpt.and_then(parse_u).ok_or(Malformed)?;
    Ok(Event::QueueActive { sender, size, nrcpt })
}

fn pickup(text: &[u8]) -> Result<Event<'_>, Malformed> {
    if !text.starts_with(b"uid=") {
        return Ok(Event::Other);
    }
    let uid = field(text, b"uid=").and_then(parse_u).ok_or(Malformed)?;
    let sender = field(text, b"from=").ok_or(Malformed)?;
    Ok(Event::Pickup { uid, sender })
}

fn bounce(text: &[u8]) -> Event<'_> {
    let Some(at) = find(text, b" notification: ") else { return Event::Other };
    let kind = match &text[..at] {
        b"sender non-delivery" => Notification::NonDelivery,
        b"sender delivery status" => Notification::DeliveryStatus,
        b"sender delay" => Notification::Delay,
        _ => Notification::Other,
    };
    Event::Notification { kind, notice: &text[at + b" notification: ".len()..] }
}

fn postsuper(text: &[u8]) -> Event<'_> {
    Event::Postsuper(match text {
        b"requeued" => PostsuperAction::Requeued,
        b"removed" => PostsuperAction::Removed,
        b"placed on hold" => PostsuperAction::Held,
        b"released from hold" => PostsuperAction::Released,
        _ => PostsuperAction::Other,
    })
}

/// What the message of a line of `daemon` says, once its queue ID (if any) was split off.
pub fn event<'a>(daemon: Daemon, queue_id: Option<&[u8]>, text: &'a [u8]) -> Result<Event<'a>, Malformed> {
    if queue_id.is_none() {
        // Before a queue file exists only refusals matter, by smtpd or by a milter.
        return Ok(match text.strip_prefix(b"NOQUEUE: ") {
            Some(rest) => refused(rest).or_else(|| milter(rest)).unwrap_or(Event::Other),
            None => Event::Other,
        });
    }
    if text.starts_with(b"milter-") {
        return Ok(milter(text).unwrap_or(Event::Other));
    }
    match daemon {
        Daemon::Smtpd if text.starts_with(b"client=") => client(text).ok_or(Malformed),
        Daemon::Smtpd if text.starts_with(b"reject: ") => Ok(refused(text).unwrap_or(Event::Other)),
        Daemon::Pickup => pickup(text),
        Daemon::Cleanup if text.starts_with(b"message-id=") => {
            let id = &text[b"message-id=".len()..];
            Ok(Event::MessageId(id.strip_prefix(b"<").and_then(|i| i.strip_suffix(b">")).unwrap_or(id)))
        }
        Daemon::Cleanup if text.starts_with(b"reject: ") => Ok(refused(text).unwrap_or(Event::Other)),
        // A message a non-smtpd milter refused bounces its recipients right in cleanup.
        Daemon::Cleanup if text.starts_with(b"to=") => delivery(text),
        Daemon::Qmgr => qmgr(text),
        Daemon::Delivery if text.starts_with(b"to=") => delivery(text),
        Daemon::Bounce => Ok(bounce(text)),
        Daemon::Postsuper => Ok(postsuper(text)),
        _ => Ok(Event::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(daemon: &[u8], message: &[u8]) -> Result<Event<'static>, Malformed> {
        let message: &'static [u8] = Box::leak(message.to_vec().into_boxed_slice());
        let (qid, text) = split_queue_id(message);
        event(Daemon::of(daemon), qid, text)
    }

    #[test]
    fn a_delivery_line_gives_recipient_relay_dsn_and_status() {
        let e = ev(
            b"smtp",
            b"4PbC4x469Jz3tBr: to=<u@example.net>, orig_to=<f@example.de>, relay=127.0.0.1[127.0.0.1]:10024, \
              delay=2.4, delays=0.29/0.02/0.01/2.1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as X)",
        );
        assert_eq!(
            e,
            Ok(Event::Delivery {
                to: b"u@example.net",
                orig_to: Some(b"f@example.de"),
                relay: b"127.0.0.1[127.0.0.1]:10024",
                dsn: b"2.0.0",
                status: DeliveryStatus::Sent
            })
        );
    }

    #[test]
    fn an_address_with_a_comma_inside_its_brackets_is_kept_whole() {
        let e = ev(b"smtp", b"ABCDE12345: to=<\"a, b\"@example.net>, relay=none, dsn=4.4.1, status=deferred (x)");
        assert!(matches!(e, Ok(Event::Delivery { to: b"\"a, b\"@example.net", status: DeliveryStatus::Deferred, .. })));
    }

    #[test]
    fn smtpd_client_with_and_without_a_login() {
        let e =
            ev(b"smtpd", b"4PbCZy4PWKz3tBr: client=unknown[2a02:8109::15c8], sasl_method=PLAIN, sasl_username=v@u.net");
        assert_eq!(
            e,
            Ok(Event::Client { name: b"unknown", addr: b"2a02:8109::15c8", sasl_username: Some(b"v@u.net") })
        );
        let e = ev(b"smtpd", b"D6DDA23B0F: client=unknown[99.88.77.66]");
        assert_eq!(e, Ok(Event::Client { name: b"unknown", addr: b"99.88.77.66", sasl_username: None }));
        assert_eq!(ev(b"smtpd", b"D6DDA23B0F: client=unknown"), Err(Malformed));
    }

    #[test]
    fn qmgr_active_removed_and_expired() {
        assert_eq!(
            ev(b"qmgr", b"6B1B62259: from=<00000001@baz.acme.gov>, size=84778, nrcpt=7 (queue active)"),
            Ok(Event::QueueActive { sender: b"00000001@baz.acme.gov", size: 84778, nrcpt: 7 })
        );
        assert_eq!(
            ev(b"qmgr", b"6B1B62259: from=<>, size=12, nrcpt=1 (queue active)"),
            Ok(Event::QueueActive { sender: b"", size: 12, nrcpt: 1 })
        );
        assert_eq!(ev(b"qmgr", b"6B1B62259: removed"), Ok(Event::Removed));
        assert_eq!(
            ev(b"qmgr", b"BACE842E73: from=<noreply@domain.com>, status=force-expired, returned to sender"),
            Ok(Event::Expired { sender: b"noreply@domain.com", forced: true })
        );
        assert_eq!(ev(b"qmgr", b"6B1B62259: from=<a@b>, size=x, nrcpt=7 (queue active)"), Err(Malformed));
    }

    #[test]
    fn pickup_milter_refusal_bounce_and_postsuper() {
        assert_eq!(
            ev(b"pickup", b"3743C9C4074: uid=65534 from=<cron@example.com>"),
            Ok(Event::Pickup { uid: 65534, sender: b"cron@example.com" })
        );
        assert_eq!(
            ev(b"pickup", b"7A8A19D4032: uid=102 from=<cron@example.com> orig_id=4A4419D402D"),
            Ok(Event::Pickup { uid: 102, sender: b"cron@example.com" })
        );
        assert_eq!(
            ev(b"cleanup", b"D6DDA23B0F: milter-reject: END-OF-MESSAGE from unknown[1.2.3.4]: 4.7.1 Greylisting; from=<u2@example.com> to=<d@dest.com> proto=ESMTP helo=<h>"),
            Ok(Event::Milter { action: MilterAction::Reject, stage: b"END-OF-MESSAGE", sender: Some(b"u2@example.com"), recipient: Some(b"d@dest.com") })
        );
        assert_eq!(
            ev(b"smtpd", b"NOQUEUE: reject: RCPT from x[1.2.3.4]: 554 5.7.1 <v@e.org>: Relay access denied; from=<s@e.net> to=<v@e.org> proto=ESMTP helo=<h>"),
            Ok(Event::Refused { stage: b"RCPT", sender: Some(b"s@e.net"), recipient: Some(b"v@e.org") })
        );
        assert_eq!(
            ev(b"bounce", b"732BB407C3: sender non-delivery notification: 5DE184083C"),
            Ok(Event::Notification { kind: Notification::NonDelivery, notice: b"5DE184083C" })
        );
        assert_eq!(ev(b"postsuper", b"732BB407C3: requeued"), Ok(Event::Postsuper(PostsuperAction::Requeued)));
        assert_eq!(ev(b"postsuper", b"Requeued: 1 message"), Ok(Event::Other));
        assert_eq!(ev(b"cleanup", b"4PbC4z6W5Qz3tG3: message-id=<a@b>"), Ok(Event::MessageId(b"a@b")));
    }
}
