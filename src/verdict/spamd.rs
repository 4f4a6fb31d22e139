//! A client for SpamAssassin's spamd (the SPAMC/1.5 protocol that `spamc` speaks): one `CHECK`
//! per message on a fresh TCP connection (spamd answers one request per connection).
//!
//! Request: `CHECK SPAMC/1.5`, `Content-length` (the bytes actually sent: at most
//! `max_scan_bytes`, see [the module above](super)), `User: <account>` so that spamd applies that
//! user's preferences when it has any, a blank line, the message. Reply:
//! `SPAMD/1.1 0 EX_OK` and `Spam: True ; 15.3 / 5.0` (spam flag ; score / required).
//!
//! The write side is closed after the message: spamd reads lines and would otherwise wait
//! for the end of a last line cut by the cap.
//!
//! Everything is under one deadline (`verdict.timeout`) and connecting under a shorter one;
//! the reply is read up to a small cap; anything that is not such a reply is a
//! [`ScanError::Protocol`]. Failures never decide about the mail (see [`super`]).

use std::time::Duration;

use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take_till, take_while1};
use nom::character::complete::{char, digit1, space0, space1};
use nom::combinator::value;
use nom::sequence::{delimited, terminated};
use nom::{IResult, Parser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::{ScanError, ScanRequest, Source, Verdict, clip, header_safe};
use crate::config::VerdictConfig;

/// A `CHECK` reply is two short lines; anything longer is not spamd.
const MAX_REPLY: usize = 16 * 1024;

/// Connecting to a scanner on the LAN takes milliseconds; one that has not accepted after this
/// long is down or overloaded, and waiting longer only holds the SMTP client.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A spamd at one address.
#[derive(Debug, Clone)]
pub struct SpamdClient {
    addr: String,
    timeout: Duration,
    connect_timeout: Duration,
    max_bytes: usize,
}

impl SpamdClient {
    /// A client for spamd at `addr` (`host:port`). `timeout` bounds the whole exchange,
    /// connecting included; at most `max_bytes` of each message are sent.
    pub fn new(addr: impl Into<String>, timeout: Duration, max_bytes: usize) -> SpamdClient {
        SpamdClient { addr: addr.into(), timeout, connect_timeout: timeout.min(MAX_CONNECT_TIMEOUT), max_bytes }
    }

    /// The client `[verdict]` asks for, if `spamd` is among its sources.
    pub fn from_config(config: &VerdictConfig) -> Option<SpamdClient> {
        let addr = config.spamd.as_ref()?;
        Some(SpamdClient::new(addr.as_str(), config.timeout, config.max_scan_bytes))
    }

    /// The address it talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Asks spamd about one message.
    ///
    /// # Errors
    /// [`ScanError`]: connection refused or not accepted in time, the exchange over
    /// `timeout`, a broken connection, or a reply that is not a spamd verdict; an account name
    /// with a control character ([`ScanError::Request`]).
    pub async fn check(&self, request: &ScanRequest<'_>) -> Result<Verdict, ScanError> {
        let head = self.request_head(request)?;
        let body = &request.message[..request.message.len().min(self.max_bytes)];
        let start = Instant::now();
        let deadline = start + self.timeout;

        let connect_deadline = deadline.min(start + self.connect_timeout);
        let mut stream = match timeout_at(connect_deadline, TcpStream::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.connect_error(e)),
            Err(_) => {
                return Err(self.connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not accepted within {:?}", self.connect_timeout),
                )));
            }
        };
        // Small request head and one message: no need to wait for more to coalesce.
        let _ = stream.set_nodelay(true);

        let exchange = async {
            stream.write_all(&head).await?;
            stream.write_all(body).await?;
            // spamd reads the message line by line: a message cut at the cap mid-line leaves
            // it waiting for the rest of that line until its own timeout, despite
            // Content-length. Closing our side (as spamc does) ends the line.
            stream.shutdown().await?;
            read_reply(&mut stream).await
        };
        let reply = match timeout_at(deadline, exchange).await {
            Err(_) => {
                return Err(ScanError::Timeout {
                    scanner: Source::Spamd,
                    addr: self.addr.clone(),
                    after: self.timeout,
                });
            }
            Ok(Err(e)) => {
                return Err(ScanError::Io { scanner: Source::Spamd, addr: self.addr.clone(), source: Box::new(e) });
            }
            Ok(Ok(reply)) => reply,
        };
        parse_reply(&reply).map_err(|detail| ScanError::Protocol {
            scanner: Source::Spamd,
            addr: self.addr.clone(),
            detail,
        })
    }

    fn request_head(&self, request: &ScanRequest<'_>) -> Result<Vec<u8>, ScanError> {
        let len = request.message.len().min(self.max_bytes);
        let mut head = format!("CHECK SPAMC/1.5\r\nContent-length: {len}\r\n");
        if let Some(user) = request.user {
            if !header_safe(user) {
                return Err(ScanError::Request { scanner: Source::Spamd, field: "User", value: user.to_owned() });
            }
            head.push_str("User: ");
            head.push_str(user);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        Ok(head.into_bytes())
    }

    fn connect_error(&self, e: std::io::Error) -> ScanError {
        ScanError::Connect { scanner: Source::Spamd, addr: self.addr.clone(), source: Box::new(e) }
    }
}

/// Reads until the header section of the reply is complete (a `CHECK` reply has no body) or
/// spamd closes, at most [`MAX_REPLY`] bytes.
async fn read_reply(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_REPLY {
            buf.truncate(MAX_REPLY);
            return Ok(buf);
        }
    }
}

/// `SPAMD/1.1 0 EX_OK`: the protocol version, the sysexits code, its name.
fn status_line(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    terminated(
        (
            delimited((tag("SPAMD/"), digit1, char('.'), digit1, space1), digit1, space0),
            take_till(|b| b == b'\r' || b == b'\n'),
        ),
        alt((tag("\r\n"), tag("\n"))),
    )
    .parse(input)
}

/// `True ; 15.3 / 5.0`.
fn spam_value(input: &[u8]) -> IResult<&[u8], (bool, f64, f64)> {
    let number = |i| -> IResult<&[u8], f64> {
        let (rest, text) = take_while1(|b: u8| b.is_ascii_digit() || b == b'.' || b == b'-')(i)?;
        match std::str::from_utf8(text).ok().and_then(|t| t.parse::<f64>().ok()) {
            Some(n) if n.is_finite() => Ok((rest, n)),
            _ => Err(nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Float))),
        }
    };
    (
        delimited(
            space0,
            alt((
                value(true, alt((tag_no_case("true"), tag_no_case("yes")))),
                value(false, alt((tag_no_case("false"), tag_no_case("no")))),
            )),
            (space0, char(';'), space0),
        ),
        number,
        delimited((space0, char('/'), space0), number, space0),
    )
        .parse(input)
}

/// The verdict in a spamd reply, or what is wrong with it (quoted, for the error message).
fn parse_reply(reply: &[u8]) -> Result<Verdict, String> {
    let quoted = || format!("{:?}", clip(&String::from_utf8_lossy(reply)));
    if reply.is_empty() {
        return Err("nothing (connection closed)".into());
    }
    let (mut rest, (code, text)) = status_line(reply).map_err(|_| quoted())?;
    if code != b"0" {
        return Err(format!("error {} {:?}", String::from_utf8_lossy(code), String::from_utf8_lossy(text)));
    }
    loop {
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(quoted)?;
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        rest = &rest[end + 1..];
        if line.is_empty() {
            return Err(format!("no Spam header: {}", quoted()));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(quoted());
        };
        if !line[..colon].eq_ignore_ascii_case(b"Spam") {
            continue;
        }
        let (_, (spam, score, required)) = spam_value(&line[colon + 1..]).map_err(|_| quoted())?;
        return Ok(Verdict {
            spam,
            score: Some(score),
            required: Some(required),
            source: Source::Spamd,
            detail: format!("Spam:{}", clip(&String::from_utf8_lossy(&line[colon + 1..]))),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_spam_and_ham_replies() {
        let v = parse_reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1003.3 / 5.0\r\n\r\n").unwrap();
        assert!(v.spam);
        assert_eq!((v.score, v.required), (Some(1003.3), Some(5.0)));
        assert_eq!(v.source, Source::Spamd);
        assert_eq!(v.detail, "Spam: True ; 1003.3 / 5.0");
        let v = parse_reply(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nspam: False ; -0.5 / 5.0\r\n\r\n").unwrap();
        assert!(!v.spam);
        assert_eq!(v.score, Some(-0.5));
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        for reply in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"SPAMD/1.1 76 Bad header line: GARBAGE\r\n",
            b"SPAMD/1.1 0 EX_OK\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe ; 1 / 2\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; nan / 5\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5",
            b"SPAMD/1.1 0 EX_OK\r\nno colon here\r\n\r\n",
            b"SPAMD/",
            b"\xff\xfe\x00\x01",
        ] {
            assert!(parse_reply(reply).is_err(), "{:?}", String::from_utf8_lossy(reply));
        }
        let err = parse_reply(b"SPAMD/1.0 76 Bad header line: GARBAGE\r\n").unwrap_err();
        assert_eq!(err, "error 76 \"Bad header line: GARBAGE\"");
    }

    #[test]
    fn request_head_announces_the_capped_length_and_refuses_injection() {
        let c = SpamdClient::new("127.0.0.1:1", Duration::from_secs(1), 10);
        let msg = [b'x'; 100];
        let head = c
            .request_head(&ScanRequest { message: &msg, user: Some("alice@example.com"), ..ScanRequest::default() })
            .unwrap();
        assert_eq!(head, b"CHECK SPAMC/1.5\r\nContent-length: 10\r\nUser: alice@example.com\r\n\r\n");
        let err = c
            .request_head(&ScanRequest { message: &msg, user: Some("alice\r\nUser: root"), ..ScanRequest::default() })
            .unwrap_err();
        assert!(matches!(err, ScanError::Request { field: "User", .. }), "{err}");
    }
}
