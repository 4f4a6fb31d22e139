//! One milter connection driven the way Postfix 3.7 drives it, on [`MtaClient`].
//!
//! Per SMTP session Postfix negotiates, then for each stage sends the stage's macros (also for
//! a stage the filter declined: Postfix does) and the command unless the filter declined it,
//! and waits for a reply only where the filter did not waive it (`NR_*`). Its stream is
//! buffered (4 KiB): packets go out when it waits for a reply, when smtpd hands the connection
//! to the cleanup server after DATA, and at QUIT. Nagle stays on. That pattern is what
//! exposes a filter that leaves a packet unacknowledged: the next small write waits for the
//! filter's delayed ACK (about 40 ms).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

use super::stats::{Outcome, Tally};
use super::workload::{CLIENT_ADDR, CLIENT_NAME, HELO_NAME, Message, Workload};
use crate::config::ListenAddr;
use crate::milter::client::{MtaClient, POSTFIX_OFFER, StageResult};
use crate::milter::command::{Command, CommandKind, Envelope, NulStrings, Peer};
use crate::milter::negotiate::macro_stage;

/// When packets leave the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Like Postfix: buffered, sent when a reply is awaited, after DATA and at QUIT.
    Postfix,
    /// Buffered and sent only when a reply is awaited or at QUIT: the DATA macros ride along
    /// with the end of message. What an MTA without the smtpd/cleanup split could do.
    Coalesced,
    /// One `write()` per packet, as soon as it is made.
    PerPacket,
}

impl Writes {
    pub fn name(self) -> &'static str {
        match self {
            Writes::Postfix => "postfix",
            Writes::Coalesced => "coalesced",
            Writes::PerPacket => "per-packet",
        }
    }

    fn buffer(self) -> usize {
        match self {
            // VSTREAM_BUFSIZE
            Writes::Postfix | Writes::Coalesced => 4096,
            // Every write is at least the capacity, so it goes straight to the socket.
            Writes::PerPacket => 0,
        }
    }
}

/// Postfix 3.7's default macro lists per stage (`milter_*_macros`), used for the stages the
/// filter did not name in its symbol list. Index: `macro_stage::*`.
const POSTFIX_MACROS: [&str; 7] = [
    "j {daemon_name} {daemon_addr} v _",
    "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mailer}",
    "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "i",
    "i",
    "i",
];

/// The filter's socket, TCP or unix.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens a connection; `nodelay` turns Nagle off (Postfix leaves it on).
///
/// # Errors
/// When the connection fails.
pub async fn connect(target: &ListenAddr, nodelay: bool) -> io::Result<Stream> {
    match target {
        ListenAddr::Inet(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(nodelay)?;
            Ok(Stream::Tcp(s))
        }
        ListenAddr::Unix(path) => Ok(Stream::Unix(tokio::net::UnixStream::connect(path).await?)),
    }
}

/// A negotiated milter connection with the macro lists Postfix would send on it.
pub struct Conversation {
    client: MtaClient<BufWriter<Stream>>,
    writes: Writes,
    /// Macro names per `macro_stage` index.
    macros: [Vec<String>; 7],
}

impl Conversation {
    /// Connects, negotiates with Postfix's offer, and sends the session's CONNECT and HELO.
    ///
    /// # Errors
    /// On connection or protocol failure.
    pub async fn open(
        target: &ListenAddr,
        writes: Writes,
        nodelay: bool,
        workload: &Workload,
        first: &Message,
        tally: &mut Tally,
    ) -> io::Result<(Conversation, Option<Outcome>)> {
        let stream = connect(target, nodelay).await?;
        tally.connections += 1;
        let mut client = MtaClient::new(BufWriter::with_capacity(writes.buffer(), stream));
        client.negotiate(POSTFIX_OFFER).await?;
        let mut macros: [Vec<String>; 7] = Default::default();
        for (i, list) in macros.iter_mut().enumerate() {
            let requested = client.macro_requests.iter().find(|(stage, _)| *stage as usize == i);
            let names = requested.map_or(POSTFIX_MACROS[i], |(_, names)| names.as_str());
            *list = names.split_whitespace().map(str::to_owned).collect();
        }
        let mut c = Conversation { client, writes, macros };
        c.send_macros(macro_stage::CONNECT, CommandKind::Connect, workload, first, None).await?;
        let peer = Peer::Inet { port: 40000, address: CLIENT_ADDR.as_bytes() };
        let r = c.client.stage(Command::Connect { hostname: CLIENT_NAME.as_bytes(), peer }).await?;
        if let Some(outcome) = refused("connect", &r, tally) {
            return Ok((c, Some(outcome)));
        }
        c.send_macros(macro_stage::HELO, CommandKind::Helo, workload, first, None).await?;
        let r = c.client.stage(Command::Helo { name: HELO_NAME.as_bytes() }).await?;
        let outcome = refused("helo", &r, tally);
        Ok((c, outcome))
    }

    /// One message, MAIL FROM to end of message. Returns how it ended.
    ///
    /// # Errors
    /// On I/O or protocol failure.
    pub async fn message(
        &mut self,
        workload: &Workload,
        m: &Message,
        body: &[u8],
        tally: &mut Tally,
    ) -> io::Result<Outcome> {
        self.send_macros(macro_stage::MAIL, CommandKind::MailFrom, workload, m, None).await?;
        let sender = format!("<{}>", m.sender);
        let esmtp_args = NulStrings::default();
        let r = self.client.stage(Command::MailFrom(Envelope { address: sender.as_bytes(), esmtp_args })).await?;
        if let Some(outcome) = refused("mail", &r, tally) {
            return Ok(outcome);
        }
        let mut accepted = 0;
        for rcpt in &m.recipients {
            self.send_macros(macro_stage::RCPT, CommandKind::RcptTo, workload, m, Some(rcpt)).await?;
            let address = format!("<{rcpt}>");
            let r = self.client.stage(Command::RcptTo(Envelope { address: address.as_bytes(), esmtp_args })).await?;
            if let Some(reply) = &r.reply {
                tally.reply("rcpt", reply);
            }
            if matches!(r.kind(), None | Some(b'c' | b'a')) {
                accepted += 1;
                tally.recipients_accepted += 1;
            } else {
                tally.recipients_refused += 1;
            }
        }
        if accepted == 0 {
            // Postfix tells the filter the transaction is over (RSET or the session's end).
            self.client.write(Command::Abort).await?;
            return Ok(Outcome::NoRecipient);
        }
        self.send_macros(macro_stage::DATA, CommandKind::Data, workload, m, None).await?;
        let r = self.client.stage(Command::Data).await?;
        if let Some(outcome) = refused("data", &r, tally) {
            return Ok(outcome.at_data());
        }
        if self.writes == Writes::Postfix {
            // smtpd hands the milter connection to the cleanup server here.
            self.client.flush().await?;
        }
        for (name, value) in workload.headers(m) {
            let r = self.client.stage(Command::Header { name: name.as_bytes(), value: value.as_bytes() }).await?;
            if let Some(outcome) = refused("header", &r, tally) {
                return Ok(outcome.at_data());
            }
        }
        self.send_macros(macro_stage::END_OF_HEADERS, CommandKind::EndOfHeaders, workload, m, None).await?;
        let r = self.client.stage(Command::EndOfHeaders).await?;
        if let Some(outcome) = refused("eoh", &r, tally) {
            return Ok(outcome.at_data());
        }
        for chunk in body.chunks(65535) {
            let r = self.client.stage(Command::Body(chunk)).await?;
            if r.kind() == Some(b's') {
                break;
            }
            if let Some(outcome) = refused("body", &r, tally) {
                return Ok(outcome.at_data());
            }
        }
        self.send_macros(macro_stage::END_OF_MESSAGE, CommandKind::EndOfMessage, workload, m, None).await?;
        let r = self.client.stage(Command::EndOfMessage(b"")).await?;
        if let Some(reply) = &r.reply {
            tally.reply("eom", reply);
        }
        Ok(match r.kind() {
            None | Some(b'c' | b'a') => Outcome::Delivered,
            Some(b'd') => Outcome::Discarded,
            Some(_) => Outcome::RefusedAtData,
        })
    }

    /// Pre-warm: sends `messages` without waiting between them (pipelined), then reads every
    /// reply they are owed. Only MAIL, RCPT and end of message are sent, so this suits a
    /// filter that skips the other stages (outbound-guard); every reply must be continue.
    /// Returns how many replies were not.
    ///
    /// # Errors
    /// On I/O or protocol failure (a filter that refuses MAIL and then sees RCPT may close).
    pub async fn pipelined(&mut self, workload: &Workload, messages: &[Message]) -> io::Result<u64> {
        let agreed = self.client.agreed.unwrap_or(crate::milter::negotiate::Negotiated {
            version: 6,
            actions: crate::milter::negotiate::Actions::empty(),
            steps: crate::milter::negotiate::Steps::empty(),
            symbol_list: false,
        });
        let mut owed = 0u64;
        for m in messages {
            self.send_macros(macro_stage::MAIL, CommandKind::MailFrom, workload, m, None).await?;
            let sender = format!("<{}>", m.sender);
            let esmtp_args = NulStrings::default();
            self.client.write(Command::MailFrom(Envelope { address: sender.as_bytes(), esmtp_args })).await?;
            for rcpt in &m.recipients {
                self.send_macros(macro_stage::RCPT, CommandKind::RcptTo, workload, m, Some(rcpt)).await?;
                let address = format!("<{rcpt}>");
                self.client.write(Command::RcptTo(Envelope { address: address.as_bytes(), esmtp_args })).await?;
            }
            self.send_macros(macro_stage::END_OF_MESSAGE, CommandKind::EndOfMessage, workload, m, None).await?;
            self.client.write(Command::EndOfMessage(b"")).await?;
            let owes = |k: CommandKind| !self.client.skipped(k) && agreed.expects_reply(k);
            owed += [CommandKind::MailFrom, CommandKind::EndOfMessage].into_iter().filter(|&k| owes(k)).count() as u64
                + if owes(CommandKind::RcptTo) { m.recipients.len() as u64 } else { 0 };
        }
        let mut bad = 0;
        while owed > 0 {
            let reply = self.client.read_reply().await?;
            if reply.decode()?.is_final() {
                owed -= 1;
                if reply.kind != b'c' {
                    bad += 1;
                }
            }
        }
        Ok(bad)
    }

    /// QUIT, sent at once; the connection closes when this is dropped.
    ///
    /// # Errors
    /// On I/O failure.
    pub async fn quit(mut self) -> io::Result<()> {
        self.client.write(Command::Quit).await?;
        self.client.flush().await
    }

    async fn send_macros(
        &mut self,
        stage: u32,
        letter: CommandKind,
        workload: &Workload,
        m: &Message,
        rcpt: Option<&str>,
    ) -> io::Result<()> {
        let names = &self.macros[stage as usize];
        if names.is_empty() {
            return Ok(());
        }
        let values: Vec<(&str, String)> =
            names.iter().filter_map(|n| workload.macro_value(n, m, rcpt).map(|v| (n.as_str(), v))).collect();
        let pairs: Vec<(&str, &str)> = values.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.client.macros(letter.code(), &pairs).await
    }
}

impl Outcome {
    fn at_data(self) -> Outcome {
        if self == Outcome::RefusedAtMail { Outcome::RefusedAtData } else { self }
    }
}

/// Counts the stage's reply and says how the message ends if the filter stopped it there.
fn refused(stage: &str, r: &StageResult, tally: &mut Tally) -> Option<Outcome> {
    let reply = r.reply.as_ref()?;
    tally.reply(stage, reply);
    match reply.kind {
        b'c' | b's' => None,
        // Accepted without further events: delivered as far as the filter is concerned.
        b'a' => Some(Outcome::Delivered),
        b'd' => Some(Outcome::Discarded),
        _ => Some(Outcome::RefusedAtMail),
    }
}
