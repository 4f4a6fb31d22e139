//! A minimal lock-step SMTP client on 127.0.0.1 (std only), for sessions swaks cannot script:
//! [`SmtpClient`] sends one command at a time and reads each [`SmtpReply`] whole, keeping a
//! transcript; [`read_banner`] reads what a server says on connect.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::process::{INSIDE_ADDR, lossy};

/// Read everything a TCP server sends until it closes or `timeout`; handy
/// for checking a banner without swaks.
pub fn read_banner(port: u16, timeout: Duration) -> io::Result<String> {
    let mut s = TcpStream::connect((INSIDE_ADDR, port))?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    let _ = s.write_all(b"QUIT\r\n");
    Ok(lossy(&buf[..n]))
}

/// One SMTP reply (all lines of a multi-line reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    /// The lines without the code and separator, e.g. `["2.0.0 Ok: queued as X"]`.
    pub lines: Vec<String>,
}

impl SmtpReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    /// The lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A lock-step (no pipelining) SMTP client on 127.0.0.1, std only.
pub struct SmtpClient {
    reader: io::BufReader<TcpStream>,
    writer: TcpStream,
    transcript: String,
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl SmtpClient {
    /// Connect to 127.0.0.1:port and read the 220 greeting (it is in
    /// [`Self::transcript`]).
    pub fn connect(port: u16) -> io::Result<SmtpClient> {
        let s = TcpStream::connect((INSIDE_ADDR, port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = SmtpClient { reader: io::BufReader::new(s.try_clone()?), writer: s, transcript: String::new() };
        let greeting = c.read_reply()?;
        if greeting.code != 220 {
            return Err(io::Error::other(format!("greeting: {greeting:?}")));
        }
        Ok(c)
    }

    /// Everything sent (`C: `) and received (`S: `) so far, one line each
    /// (LF line ends).
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Read one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> io::Result<SmtpReply> {
        use std::io::BufRead;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            self.transcript.push_str(&format!("S: {line}\n"));
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad reply line {line:?}")))?;
            lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(SmtpReply { code, lines });
            }
        }
    }

    /// Send raw bytes (no CRLF added).
    pub fn send_raw(&mut self, data: &[u8]) -> io::Result<()> {
        for line in lossy(data).split_inclusive('\n') {
            self.transcript.push_str(&format!("C: {}\n", line.trim_end_matches(['\r', '\n'])));
        }
        self.writer.write_all(data)
    }

    /// Send one command line (CRLF added) and read the reply.
    pub fn command(&mut self, line: &str) -> io::Result<SmtpReply> {
        self.send_raw(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    pub fn ehlo(&mut self, name: &str) -> io::Result<SmtpReply> {
        self.command(&format!("EHLO {name}"))
    }

    /// `AUTH PLAIN` with an initial response.
    pub fn auth_plain(&mut self, user: &str, password: &str) -> io::Result<SmtpReply> {
        let token = base64(format!("\0{user}\0{password}").as_bytes());
        self.command(&format!("AUTH PLAIN {token}"))
    }

    /// MAIL, RCPT for each recipient, DATA, the message, `.`. Stops at the
    /// first failing step and returns that reply (a RCPT failure only stops
    /// when no recipient was accepted). `data` may use LF or CRLF line ends;
    /// it is sent with CRLF and dot-stuffed.
    pub fn send_message(&mut self, from: &str, rcpts: &[&str], data: &str) -> io::Result<SmtpReply> {
        let r = self.command(&format!("MAIL FROM:<{from}>"))?;
        if !r.is_positive() {
            return Ok(r);
        }
        let mut last_bad = None;
        let mut accepted = 0;
        for rcpt in rcpts {
            let r = self.command(&format!("RCPT TO:<{rcpt}>"))?;
            if r.is_positive() {
                accepted += 1;
            } else {
                last_bad = Some(r);
            }
        }
        if accepted == 0 {
            return Ok(last_bad.unwrap_or(SmtpReply { code: 554, lines: vec!["no recipients".into()] }));
        }
        let r = self.command("DATA")?;
        if r.code != 354 {
            return Ok(r);
        }
        let mut wire = String::new();
        for line in data.replace("\r\n", "\n").trim_end_matches('\n').split('\n') {
            if line.starts_with('.') {
                wire.push('.');
            }
            wire.push_str(line);
            wire.push_str("\r\n");
        }
        wire.push_str(".\r\n");
        self.send_raw(wire.as_bytes())?;
        self.read_reply()
    }

    /// `QUIT`, then wait for the server to close.
    pub fn quit(mut self) -> io::Result<SmtpReply> {
        let r = self.command("QUIT")?;
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        Ok(r)
    }
}
