//! Loopback peers for notification tests, in-process on 127.0.0.1:0: a small SMTP relay
//! that can be switched "down" (it answers 421 and hangs up, as a relay under maintenance
//! does) and an HTTP endpoint that answers a given list of statuses. Each reports what it
//! received over a channel, so tests wait on arrivals instead of sleeping.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the test relay saw.
#[derive(Debug, Clone)]
pub enum SmtpEvent {
    /// A connection was turned away because the relay is "down".
    Refused,
    /// A message was accepted (250 after DATA).
    Message(Received),
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Dot-unstuffed, CRLF line ends as sent.
    pub data: Vec<u8>,
}

/// The test relay.
pub struct TestSmtp {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    events: mpsc::UnboundedReceiver<SmtpEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl TestSmtp {
    pub async fn start(up: bool) -> TestSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let flag = Arc::new(AtomicBool::new(up));
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn({
            let flag = flag.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let tx = tx.clone();
                    let up = flag.load(Ordering::SeqCst);
                    tokio::spawn(async move {
                        let _ = serve(stream, up, tx).await;
                    });
                }
            }
        });
        TestSmtp { addr, up: flag, events, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.addr.port())
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// The next thing that happened, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SmtpEvent> {
        tokio::time::timeout(timeout, self.events.recv()).await.ok().flatten()
    }

    /// The next accepted message (skipping refusals); panics after `timeout`.
    pub async fn message(&mut self, timeout: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(SmtpEvent::Message(m)) => return m,
                Some(SmtpEvent::Refused) => continue,
                None => panic!("no message arrived within {timeout:?}"),
            }
        }
    }

    /// Everything that already happened, without waiting.
    pub fn drain(&mut self) -> Vec<SmtpEvent> {
        let mut v = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            v.push(e);
        }
        v
    }
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, up: bool, tx: mpsc::UnboundedSender<SmtpEvent>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    if !up {
        w.write_all(b"421 4.3.2 test relay is down\r\n").await?;
        let _ = tx.send(SmtpEvent::Refused);
        return Ok(());
    }
    w.write_all(b"220 test-relay ESMTP\r\n").await?;
    let mut mail_from = String::new();
    let mut rcpts = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let upper = text.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250-test-relay\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = angle(&text[10..]);
            rcpts.clear();
            b"250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(angle(&text[8..]));
            b"250 2.1.5 ok\r\n"
        } else if upper == "DATA" {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut data = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
                let l = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
                data.extend_from_slice(l);
            }
            let _ = tx.send(SmtpEvent::Message(Received {
                mail_from: mail_from.clone(),
                rcpts: std::mem::take(&mut rcpts),
                data,
            }));
            b"250 2.0.0 queued\r\n"
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 2.0.0 ok\r\n"
        } else {
            b"502 5.5.2 not implemented\r\n"
        };
        w.write_all(reply).await?;
    }
}

fn angle(arg: &str) -> String {
    let arg = arg.trim();
    let end = arg.find('>').map_or(arg.len(), |i| i + 1);
    arg[..end].trim_start_matches('<').trim_end_matches('>').to_owned()
}

/// One request the test endpoint received.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The test HTTP endpoint.
pub struct TestHttp {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<HttpRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl TestHttp {
    /// Answers the statuses in `script` in order, then 200 forever.
    pub async fn start(script: &[u16]) -> TestHttp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<u16>>()));
        let (tx, requests) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let _ = serve_http(stream, script, tx).await;
                });
            }
        });
        TestHttp { addr, requests, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    pub async fn next(&mut self, timeout: Duration) -> Option<HttpRequest> {
        tokio::time::timeout(timeout, self.requests.recv()).await.ok().flatten()
    }

    pub fn drain(&mut self) -> Vec<HttpRequest> {
        let mut v = Vec::new();
        while let Ok(e) = self.requests.try_recv() {
            v.push(e);
        }
        v
    }
}

impl Drop for TestHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_http(
    stream: TcpStream,
    script: Arc<Mutex<VecDeque<u16>>>,
    tx: mpsc::UnboundedSender<HttpRequest>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).await?;
        let status = script.lock().unwrap().pop_front().unwrap_or(200);
        let _ = tx.send(HttpRequest { method, path, headers, body, status });
        w.write_all(format!("HTTP/1.1 {status} Test\r\nContent-Length: 0\r\n\r\n").as_bytes()).await?;
    }
}
