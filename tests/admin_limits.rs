//! The admin port's bounds against an in-process filter, with raw TCP clients: a connection
//! that sends nothing and one that dribbles its request head are closed at the head deadline,
//! a client that stops reading its answers is closed at the write deadline, connections over
//! the cap are closed at once and counted, and the milter keeps accepting and negotiating while
//! the admin port is full. Tokio's time is paused, so the 10 s deadlines
//! pass without waiting for them.

mod common;

use std::time::Duration;

use common::daemon::TestDaemon;
use outbound_guard::admin::serve::{HEAD_TIMEOUT, MAX_CONNECTIONS, WRITE_TIMEOUT};
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const POLICY: &str = "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
    [organization]\nlocal_domains = [\"example.com\"]\n";

/// Slack over a deadline for the server to notice it (paused time: only timer rounding).
const SLACK: Duration = Duration::from_secs(1);

/// Reads until the server closes the connection (EOF or reset), at most `within`; what it
/// wrote before closing, or `None` when it was still open.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(got)
}

/// No answer, or one that is not a success: the server gave up on the request.
fn not_served(written: &[u8]) {
    let text = String::from_utf8_lossy(written);
    assert!(!text.starts_with("HTTP/1.1 2"), "the request was served: {text:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_at_the_head_deadline() {
    let d = TestDaemon::start(POLICY).await;
    let start = Instant::now();
    let mut idle = TcpStream::connect(d.admin_addr).await.unwrap();
    let written = closed_within(&mut idle, HEAD_TIMEOUT + SLACK).await.expect("closed within the head deadline");
    assert!(start.elapsed() >= HEAD_TIMEOUT, "closed early, after {:?}", start.elapsed());
    not_served(&written);

    // A keep-alive connection that goes quiet after an answer gets the same deadline.
    let mut kept = TcpStream::connect(d.admin_addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let answered = Instant::now();
    closed_within(&mut kept, HEAD_TIMEOUT + SLACK).await.expect("idle keep-alive closed within the deadline");
    assert!(answered.elapsed() >= HEAD_TIMEOUT);

    // Shutdown does not wait for an idle connection: it is closed, and the daemon stops.
    let mut idle = TcpStream::connect(d.admin_addr).await.unwrap();
    d.request_shutdown();
    closed_within(&mut idle, SLACK).await.expect("an idle connection is closed at shutdown");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dribbled_request_head_is_closed_at_the_deadline() {
    let d = TestDaemon::start(POLICY).await;

    // One header line, then nothing.
    let start = Instant::now();
    let mut slow = TcpStream::connect(d.admin_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n").await.unwrap();
    let written = closed_within(&mut slow, HEAD_TIMEOUT + SLACK).await.expect("closed within the head deadline");
    assert!(start.elapsed() >= HEAD_TIMEOUT);
    not_served(&written);

    // A byte every 2 s: each read is quick, but the head as a whole is not.
    let start = Instant::now();
    let mut dribble = TcpStream::connect(d.admin_addr).await.unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut sent = 0;
    for byte in head {
        if dribble.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        let mut probe = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(2), dribble.read(&mut probe)).await {
            Err(_) => continue,
            Ok(Ok(n)) => {
                not_served(&probe[..n]);
                break;
            }
            Ok(Err(_)) => break,
        }
    }
    closed_within(&mut dribble, SLACK).await.expect("closed");
    assert!(sent < head.len(), "the whole head got through");
    let elapsed = start.elapsed();
    assert!(elapsed >= HEAD_TIMEOUT && elapsed <= HEAD_TIMEOUT + Duration::from_secs(2) + SLACK, "{elapsed:?}");
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_closed_at_the_write_deadline() {
    let d = TestDaemon::start(POLICY).await;
    let metrics = d.services.engine.metrics().clone();
    // Far more answers than the two sockets' buffers hold, asked for at once and never read:
    // the server's writes stop making progress.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(d.admin_addr).await.unwrap();
    let (_unread, mut asks) = stream.into_split();
    let requests = b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n".repeat(5000);
    let writer = tokio::spawn(async move {
        // The server stops reading once it cannot write; what is left is never sent.
        let _ = asks.write_all(&requests).await;
        asks
    });
    let accepted = Instant::now();
    while metrics.admin_connections_open.get() == 0 {
        assert!(accepted.elapsed() < SLACK, "the connection was never taken");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = Instant::now();
    let mut stalled_for = None;
    while start.elapsed() <= WRITE_TIMEOUT + HEAD_TIMEOUT + SLACK {
        if metrics.admin_connections_open.get() == 0 {
            stalled_for = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stalled_for = stalled_for.expect("a connection whose answers are not read stays open");
    assert!(stalled_for >= WRITE_TIMEOUT, "closed before the write deadline: {stalled_for:?}");
    writer.abort();

    // Its slot is free: the API answers the next client.
    let resp = reqwest::get(format!("{}/healthz", d.admin_url())).await.expect("admin API reachable");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    d.stop().await;
}

#[tokio::test(start_paused = true)]
async fn over_the_cap_a_connection_is_closed_at_once_and_the_milter_still_serves() {
    let d = TestDaemon::start(POLICY).await;
    let metrics = d.services.engine.metrics().clone();
    let start = Instant::now();
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(TcpStream::connect(d.admin_addr).await.unwrap());
    }
    // The listener takes connections in order: these two come after the cap is full.
    for _ in 0..2 {
        let mut over = TcpStream::connect(d.admin_addr).await.unwrap();
        let written = closed_within(&mut over, Duration::from_millis(100)).await.expect("closed at once");
        assert!(written.is_empty(), "nothing is written to a refused connection");
    }
    assert_eq!(metrics.admin_connections_refused.get(), 2);
    assert_eq!(metrics.admin_connections_open.get(), MAX_CONNECTIONS as i64);

    // The point of the cap: the milter still accepts and negotiates while the admin port is full.
    let mut mta = MtaClient::connect(d.addr).await.expect("milter accepts");
    mta.negotiate(POSTFIX_OFFER).await.expect("milter negotiates while the admin port is full");
    assert!(start.elapsed() < HEAD_TIMEOUT, "all of this happened before any deadline");

    // The held connections go at their deadline; then the API answers on a fresh connection.
    for s in &mut held {
        closed_within(s, HEAD_TIMEOUT + SLACK).await.expect("closed at the head deadline");
    }
    assert!(start.elapsed() <= HEAD_TIMEOUT + SLACK);
    assert_eq!(metrics.admin_connections_open.get(), 0);
    let resp = reqwest::get(format!("{}/metrics", d.admin_url())).await.expect("admin API reachable again");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.contains("outbound_guard_admin_connections_refused_total 2\n"), "{text}");
    drop(mta);
    d.stop().await;
}
