//! The MTA side of the protocol, built from the same codec: used by the integration tests, the
//! load generator and anyone who wants to poke a running filter.
//!
//! It behaves like a well-mannered MTA: it negotiates, skips the stages the filter declined,
//! waits for a reply only where the filter owes one, and collects end-of-message
//! modifications up to the final reply.
//!
//! Over a buffered stream (a `tokio::io::BufWriter`) it writes the way Postfix does: packets
//! pile up in the buffer and go out when a reply is awaited (every read flushes first) or when
//! the caller says so with [`MtaClient::flush`].

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::command::{Command, CommandKind, Envelope, NulStrings, Offer};
use super::frame;
use super::negotiate::{Actions, Negotiated, Steps};
use super::reply::Reply;

/// What Postfix 3.7 offers: every action, every step it knows.
pub const POSTFIX_OFFER: Offer =
    Offer { version: 6, actions: Actions::from_bits_retain(0x1ff), steps: Steps::from_bits_retain(0x1f_ffff) };

/// A reply as received, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedReply {
    pub kind: u8,
    pub payload: Vec<u8>,
}

impl ReceivedReply {
    /// The typed reply.
    ///
    /// # Errors
    /// When the filter sent a malformed packet.
    pub fn decode(&self) -> io::Result<Reply<'_>> {
        Reply::decode(frame::Frame { kind: self.kind, payload: &self.payload })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// For `y` replies, the SMTP text.
    pub fn text(&self) -> Option<String> {
        match self.decode().ok()? {
            Reply::ReplyCode(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        }
    }
}

/// The outcome of one stage: the modifications (at end of message) and the final reply, or
/// `None` for the final reply when the filter owes none (skipped or no-reply stage).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageResult {
    pub modifications: Vec<ReceivedReply>,
    pub reply: Option<ReceivedReply>,
}

impl StageResult {
    /// The final reply's letter (`b'c'` continue, `b'y'` reply code …); `None` when no reply.
    pub fn kind(&self) -> Option<u8> {
        self.reply.as_ref().map(|r| r.kind)
    }
    /// The SMTP text of a `y` reply.
    pub fn text(&self) -> Option<String> {
        self.reply.as_ref().and_then(ReceivedReply::text)
    }
}

/// An MTA-side milter connection.
pub struct MtaClient<S> {
    stream: S,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// What the filter agreed to, after [`MtaClient::negotiate`].
    pub agreed: Option<Negotiated>,
    /// The filter's macro requests (stage, names).
    pub macro_requests: Vec<(u32, String)>,
    timeout: Duration,
}

impl MtaClient<tokio::net::TcpStream> {
    /// Connects over TCP.
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn connect(addr: std::net::SocketAddr) -> io::Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self::new(s))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> MtaClient<S> {
    pub fn new(stream: S) -> Self {
        MtaClient {
            stream,
            buf: Vec::with_capacity(4096),
            out: Vec::with_capacity(4096),
            agreed: None,
            macro_requests: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }

    /// The underlying stream (e.g. to write raw bytes in a test).
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Negotiates with `offer`, returning what the filter agreed to.
    ///
    /// # Errors
    /// On I/O failure or when the filter does not answer with a negotiation reply.
    pub async fn negotiate(&mut self, offer: Offer) -> io::Result<Negotiated> {
        self.write(Command::Negotiate(offer)).await?;
        let reply = self.read_reply().await?;
        let Reply::Negotiate(n) = reply.decode()? else {
            return Err(invalid(format!("expected a negotiation reply, got {}", reply.kind as char)));
        };
        let agreed = Negotiated {
            version: n.version,
            actions: n.actions,
            steps: n.steps,
            symbol_list: n.actions.contains(Actions::SET_SYMBOL_LIST),
        };
        self.macro_requests =
            n.macros.iter().map(|(stage, names)| (stage, String::from_utf8_lossy(names).into_owned())).collect();
        self.agreed = Some(agreed);
        Ok(agreed)
    }

    /// Whether the filter asked to skip this stage.
    pub fn skipped(&self, kind: CommandKind) -> bool {
        use CommandKind as K;
        let Some(n) = self.agreed else { return false };
        let flag = match kind {
            K::Connect => Steps::NO_CONNECT,
            K::Helo => Steps::NO_HELO,
            K::MailFrom => Steps::NO_MAIL,
            K::RcptTo => Steps::NO_RCPT,
            K::Data => Steps::NO_DATA,
            K::Header => Steps::NO_HEADERS,
            K::EndOfHeaders => Steps::NO_EOH,
            K::Body => Steps::NO_BODY,
            K::Unknown => Steps::NO_UNKNOWN,
            K::Negotiate | K::Macros | K::EndOfMessage | K::Abort | K::Quit | K::QuitNewConnection => Steps::empty(),
        };
        n.steps.intersects(flag)
    }

    /// Sends macros for a stage (never answered).
    ///
    /// # Errors
    /// On I/O failure.
    pub async fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) -> io::Result<()> {
        let raw = NulStrings::encode(pairs.iter().flat_map(|(n, v)| [n.as_bytes(), v.as_bytes()]));
        let pairs = NulStrings::new(&raw).expect("encoded list is well formed");
        self.write(Command::Macros { stage, pairs }).await
    }

    /// Sends a command as an MTA would: not at all if the filter skipped its stage; then waits
    /// for the final reply if the filter owes one.
    ///
    /// # Errors
    /// On I/O failure, timeout, or a malformed reply.
    pub async fn stage(&mut self, command: Command<'_>) -> io::Result<StageResult> {
        let kind = command.kind();
        if self.skipped(kind) {
            return Ok(StageResult::default());
        }
        self.write(command).await?;
        let owes_reply = self.agreed.is_none_or(|n| n.expects_reply(kind));
        if !owes_reply {
            return Ok(StageResult::default());
        }
        let mut result = StageResult::default();
        loop {
            let reply = self.read_reply().await?;
            if reply.decode()?.is_final() {
                result.reply = Some(reply);
                return Ok(result);
            }
            result.modifications.push(reply);
        }
    }

    /// MAIL FROM with optional ESMTP arguments.
    ///
    /// # Errors
    /// As [`MtaClient::stage`].
    pub async fn mail_from(&mut self, address: &str, args: &[&str]) -> io::Result<StageResult> {
        let raw = NulStrings::encode(args.iter().map(|a| a.as_bytes()));
        let esmtp_args = NulStrings::new(&raw).expect("encoded list is well formed");
        self.stage(Command::MailFrom(Envelope { address: address.as_bytes(), esmtp_args })).await
    }

    /// RCPT TO.
    ///
    /// # Errors
    /// As [`MtaClient::stage`].
    pub async fn rcpt_to(&mut self, address: &str) -> io::Result<StageResult> {
        self.stage(Command::RcptTo(Envelope { address: address.as_bytes(), esmtp_args: NulStrings::default() })).await
    }

    /// DATA, the headers, end of headers, the body in one chunk, end of message: what an MTA
    /// sends for a whole message after the envelope. Returns the end-of-message result; an
    /// earlier non-continue reply is returned instead, as the MTA would stop there.
    ///
    /// # Errors
    /// As [`MtaClient::stage`].
    pub async fn message(&mut self, headers: &[(&str, &str)], body: &[u8]) -> io::Result<StageResult> {
        let mut stages: Vec<Command<'_>> = vec![Command::Data];
        for (name, value) in headers {
            stages.push(Command::Header { name: name.as_bytes(), value: value.as_bytes() });
        }
        stages.push(Command::EndOfHeaders);
        if !body.is_empty() {
            stages.push(Command::Body(body));
        }
        for command in stages {
            let r = self.stage(command).await?;
            if r.kind().is_some_and(|k| k != b'c') {
                return Ok(r);
            }
        }
        self.stage(Command::EndOfMessage(b"")).await
    }

    /// Sends a command without waiting for anything.
    ///
    /// # Errors
    /// On I/O failure or timeout.
    pub async fn write(&mut self, command: Command<'_>) -> io::Result<()> {
        self.out.clear();
        command.encode(&mut self.out);
        self.write_raw_buffered().await
    }

    /// Writes raw bytes (for malformed-input tests).
    ///
    /// # Errors
    /// On I/O failure or timeout.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(bytes);
        self.write_raw_buffered().await
    }

    async fn write_raw_buffered(&mut self) -> io::Result<()> {
        tokio::time::timeout(self.timeout, self.stream.write_all(&self.out))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// Sends whatever a buffered stream holds (a no-op on an unbuffered one).
    ///
    /// # Errors
    /// On I/O failure or timeout.
    pub async fn flush(&mut self) -> io::Result<()> {
        tokio::time::timeout(self.timeout, self.stream.flush())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// Reads one reply packet.
    ///
    /// # Errors
    /// On I/O failure, timeout, end of stream, or a malformed frame.
    pub async fn read_reply(&mut self) -> io::Result<ReceivedReply> {
        // Whoever waits for an answer must first have sent the question.
        self.flush().await?;
        loop {
            if let Some((f, used)) = frame::decode(&self.buf).map_err(|e| invalid(e.to_string()))? {
                let reply = ReceivedReply { kind: f.kind, payload: f.payload.to_vec() };
                self.buf.drain(..used);
                return Ok(reply);
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply from the filter"))??;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the filter closed the connection"));
            }
        }
    }

    /// Waits until the filter closes the connection; returns whether it did within the timeout.
    ///
    /// # Errors
    /// On I/O failure other than a reset.
    pub async fn closed_by_filter(&mut self, within: Duration) -> io::Result<bool> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut scratch = [0u8; 256];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Err(_) => return Ok(false),
                Ok(Ok(0)) => return Ok(true),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
