//! The spamd and rspamd clients against small in-process servers on 127.0.0.1:0 that play
//! the scanner exactly as a test needs: down, silent, garbage, counting bytes and
//! connections. (The real scanners are in `verdict_scanners.rs`, behind `real-peers`.)

mod common;

use std::time::{Duration, Instant};

use common::messages::{fixture, large_message};
use outbound_guard::config::RspamdUrl;
use outbound_guard::verdict::{RspamdClient, ScanError, ScanRequest, Source, SpamdClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const CAP: usize = 64 * 1024;

/// A port where nothing listens: bound, then closed.
async fn closed_port() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Accepts connections and never answers; keeps them open until the test ends.
async fn silent_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Reads a header block (up to the empty line) and returns its lines.
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            return Some(lines);
        }
        lines.push(line);
    }
}

fn content_length(head: &[String]) -> usize {
    head.iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// A fake spamd: reads one request, reports (head, body) and answers `reply`.
async fn fake_spamd(reply: &'static [u8]) -> (std::net::SocketAddr, mpsc::Receiver<(Vec<String>, Vec<u8>)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let mut r = BufReader::new(s);
            let Some(head) = read_head(&mut r).await else {
                continue;
            };
            let mut body = vec![0; content_length(&head)];
            if r.read_exact(&mut body).await.is_err() {
                continue;
            }
            let mut s = r.into_inner();
            let _ = s.write_all(reply).await;
            let _ = s.shutdown().await;
            let _ = tx.send((head, body)).await;
        }
    });
    (addr, rx)
}

fn request(message: &[u8]) -> ScanRequest<'_> {
    ScanRequest { message, user: Some("alice@example.com"), ..ScanRequest::default() }
}

#[tokio::test]
async fn spamd_down_is_a_connect_error_at_once() {
    let addr = closed_port().await;
    let client = SpamdClient::new(addr.to_string(), Duration::from_secs(5), CAP);
    let started = Instant::now();
    let err = client.check(&request(b"Subject: x\r\n\r\nx\r\n")).await.unwrap_err();
    assert!(matches!(err, ScanError::Connect { scanner: Source::Spamd, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(err.to_string(), format!("cannot connect to spamd at \"{addr}\""));
}

#[tokio::test]
async fn spamd_silent_is_a_timeout_within_the_bound() {
    let addr = silent_server().await;
    let timeout = Duration::from_millis(300);
    let client = SpamdClient::new(addr.to_string(), timeout, CAP);
    let started = Instant::now();
    let err = client.check(&request(b"Subject: x\r\n\r\nx\r\n")).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ScanError::Timeout { .. }), "{err}");
    assert!(took >= timeout && took < timeout * 4, "{took:?}");
}

#[tokio::test]
async fn spamd_gets_at_most_the_cap_and_a_matching_length() {
    let (addr, mut seen) = fake_spamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.4 / 5.0\r\n\r\n").await;
    let client = SpamdClient::new(addr.to_string(), Duration::from_secs(10), CAP);
    let large = large_message(2 * 1024 * 1024);
    let v = client.check(&request(&large)).await.unwrap();
    assert!(!v.spam);
    assert_eq!((v.score, v.required), (Some(0.4), Some(5.0)));
    let (head, body) = seen.recv().await.unwrap();
    assert_eq!(head[0], "CHECK SPAMC/1.5");
    assert!(head.contains(&format!("Content-length: {CAP}")), "{head:?}");
    assert!(head.contains(&"User: alice@example.com".to_owned()), "{head:?}");
    assert_eq!(body, &large[..CAP]);

    // A small message goes whole.
    let ham = fixture("ham.eml");
    client.check(&request(&ham)).await.unwrap();
    let (_, body) = seen.recv().await.unwrap();
    assert_eq!(body, ham);
}

#[tokio::test]
async fn spamd_garbage_is_a_protocol_error() {
    for reply in [
        &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
        b"SPAMD/1.1 76 Bad header line\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\n\r\n",
        b"\x00\x01\x02",
        b"",
    ] {
        let (addr, _seen) = fake_spamd(reply).await;
        let client = SpamdClient::new(addr.to_string(), Duration::from_secs(5), CAP);
        let err = client.check(&request(b"Subject: x\r\n\r\nx\r\n")).await.unwrap_err();
        assert!(matches!(err, ScanError::Protocol { .. }), "{reply:?}: {err}");
    }
}

/// A fake rspamd speaking HTTP/1.1 keep-alive: answers every request on a connection with
/// `reply` (status, JSON) and reports (accept count so far, request head, body).
async fn fake_rspamd(
    status: &'static str,
    reply: &'static str,
) -> (String, mpsc::Receiver<(usize, Vec<String>, Vec<u8>)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((s, _)) = l.accept().await {
            accepted += 1;
            let tx = tx.clone();
            tokio::spawn(serve_http(s, accepted, status, reply, tx));
        }
    });
    (format!("http://{addr}"), rx)
}

async fn serve_http(
    s: TcpStream,
    accepted: usize,
    status: &'static str,
    reply: &'static str,
    tx: mpsc::Sender<(usize, Vec<String>, Vec<u8>)>,
) {
    let mut r = BufReader::new(s);
    while let Some(head) = read_head(&mut r).await {
        let mut body = vec![0; content_length(&head)];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if r.get_mut().write_all(response.as_bytes()).await.is_err() {
            return;
        }
        let _ = tx.send((accepted, head, body)).await;
    }
}

const HAM_JSON: &str = r#"{"is_skipped":false,"score":1.2,"required_score":15.0,"action":"no action","symbols":{}}"#;

#[tokio::test]
async fn rspamd_envelope_headers_cap_and_connection_reuse() {
    let (url, mut seen) = fake_rspamd("200 OK", HAM_JSON).await;
    let client = RspamdClient::new(&RspamdUrl::parse(&url).unwrap(), Duration::from_secs(10), CAP).unwrap();
    let large = large_message(2 * 1024 * 1024);
    let rcpt = ["bob@example.org", "carol@example.net"];
    let req = ScanRequest {
        message: &large,
        user: Some("alice@example.com"),
        ip: Some("192.0.2.10".parse().unwrap()),
        helo: Some("client.example.com"),
        from: Some("alice@example.com"),
        rcpt: &rcpt,
        queue_id: Some("4Xk2b31Zz9z1x"),
    };
    let v = client.check(&req).await.unwrap();
    assert_eq!(v.source, Source::Rspamd);
    assert!(!v.spam);
    assert_eq!((v.score, v.required), (Some(1.2), Some(15.0)));
    assert_eq!(v.detail, "action: no action [1.2 / 15]");

    let (conn, head, body) = seen.recv().await.unwrap();
    assert_eq!(head[0], "POST /checkv2 HTTP/1.1");
    let lower: Vec<String> = head.iter().map(|l| l.to_ascii_lowercase()).collect();
    for expected in [
        "ip: 192.0.2.10",
        "helo: client.example.com",
        "from: alice@example.com",
        "rcpt: bob@example.org",
        "rcpt: carol@example.net",
        "user: alice@example.com",
        "queue-id: 4xk2b31zz9z1x",
    ] {
        assert!(lower.contains(&expected.to_owned()), "{expected} not in {head:?}");
    }
    assert_eq!(body, &large[..CAP]);

    // The second check reuses the pooled connection.
    client.check(&req).await.unwrap();
    let (conn2, _, _) = seen.recv().await.unwrap();
    assert_eq!((conn, conn2), (1, 1));
}

#[tokio::test]
async fn rspamd_actions_map_to_spam() {
    let (url, _seen) = fake_rspamd("200 OK", r#"{"score":16.2,"required_score":15.0,"action":"reject"}"#).await;
    let v = RspamdClient::new(&RspamdUrl::parse(&url).unwrap(), Duration::from_secs(5), CAP)
        .unwrap()
        .check(&request(b"Subject: x\r\n\r\nx\r\n"))
        .await
        .unwrap();
    assert!(v.spam);
    assert_eq!((v.score, v.required), (Some(16.2), Some(15.0)));
}

#[tokio::test]
async fn rspamd_failures_are_scan_errors() {
    let small = b"Subject: x\r\n\r\nx\r\n";
    let addr = closed_port().await;
    let started = Instant::now();
    let err = RspamdClient::new(&RspamdUrl::parse(&format!("http://{addr}")).unwrap(), Duration::from_secs(5), CAP)
        .unwrap()
        .check(&request(small))
        .await
        .unwrap_err();
    assert!(matches!(err, ScanError::Connect { scanner: Source::Rspamd, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let addr = silent_server().await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = RspamdClient::new(&RspamdUrl::parse(&format!("http://{addr}")).unwrap(), timeout, CAP)
        .unwrap()
        .check(&request(small))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ScanError::Timeout { .. }), "{err}");
    assert!(took >= timeout && took < timeout * 4, "{took:?}");

    for (status, reply, says) in [
        ("200 OK", "not json", "not rspamd's JSON"),
        ("200 OK", r#"{"score":1}"#, "without an action"),
        ("200 OK", r#"{"action":"frobnicate"}"#, "unknown action \"frobnicate\""),
        ("500 Internal Server Error", r#"{"error":"cannot parse input"}"#, "status 500 \"cannot parse input\""),
        ("404 Not Found", "nope", "status 404"),
    ] {
        let (url, _seen) = fake_rspamd(status, reply).await;
        let err = RspamdClient::new(&RspamdUrl::parse(&url).unwrap(), Duration::from_secs(5), CAP)
            .unwrap()
            .check(&request(small))
            .await
            .unwrap_err();
        assert!(matches!(err, ScanError::Protocol { .. }), "{reply}: {err}");
        assert!(err.to_string().contains(says), "{err}");
    }

    // A value that would inject a header is refused before anything is sent.
    let (url, _seen) = fake_rspamd("200 OK", HAM_JSON).await;
    let rcpt = ["bob@example.org\r\nUser: root"];
    let err = RspamdClient::new(&RspamdUrl::parse(&url).unwrap(), Duration::from_secs(5), CAP)
        .unwrap()
        .check(&ScanRequest { message: small, rcpt: &rcpt, ..ScanRequest::default() })
        .await
        .unwrap_err();
    assert!(matches!(err, ScanError::Request { field: "Rcpt", .. }), "{err}");
}

#[test]
fn rspamd_url_must_be_http() {
    for bad in ["127.0.0.1:11333", "ftp://127.0.0.1/", "http//x"] {
        assert!(RspamdUrl::parse(bad).is_err(), "{bad}");
    }
    let c =
        RspamdClient::new(&RspamdUrl::parse("http://127.0.0.1:11333").unwrap(), Duration::from_secs(1), CAP).unwrap();
    assert_eq!(c.base(), "http://127.0.0.1:11333");
}
