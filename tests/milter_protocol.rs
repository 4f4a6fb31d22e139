//! The milter protocol against an in-process filter on a loopback port: negotiation, a whole
//! transaction, session reuse, and every kind of bad input ending only its own connection.

mod common;

use std::time::{Duration, Instant};

use common::daemon::TestDaemon;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::command::{Command, Offer, Peer};
use outbound_guard::milter::negotiate::{Actions, Steps, macro_stage};

const BASE: &str = "[milter]\nlisten = \"inet:127.0.0.1:0\"\n";

async fn daemon_with(extra: &str) -> TestDaemon {
    TestDaemon::start(&format!("{BASE}{extra}")).await
}

/// A negotiated connection from an internal client (127.0.0.1), so its mail is outbound.
async fn negotiated(d: &TestDaemon) -> MtaClient<tokio::net::TcpStream> {
    let mut c = MtaClient::connect(d.addr).await.expect("connect");
    c.negotiate(POSTFIX_OFFER).await.expect("negotiate");
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.expect("macros");
    c
}

/// Proves the filter is still serving: a fresh connection completes a transaction.
async fn assert_serving(d: &TestDaemon) {
    let mut c = negotiated(d).await;
    c.macros(b'M', &[("{auth_authen}", "alice@example.com")]).await.unwrap();
    assert_eq!(c.mail_from("<alice@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
}

#[tokio::test]
async fn negotiation_asks_only_for_what_the_policy_needs() {
    let d = daemon_with("").await;
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    let agreed = c.negotiate(POSTFIX_OFFER).await.unwrap();
    assert_eq!(agreed.version, 6);
    for skipped in [Steps::NO_CONNECT, Steps::NO_HELO, Steps::NO_DATA, Steps::NO_UNKNOWN] {
        assert!(agreed.steps.contains(skipped), "step {skipped:?} should be skipped");
    }
    assert!(!agreed.steps.intersects(Steps::NO_MAIL | Steps::NO_RCPT), "MAIL and RCPT are needed");
    let mail = c.macro_requests.iter().find(|(s, _)| *s == macro_stage::MAIL).expect("MAIL macros requested");
    for name in ["{auth_authen}", "{client_addr}", "{daemon_name}", "i"] {
        assert!(mail.1.split(' ').any(|n| n == name), "{name} missing from {:?}", mail.1);
    }
    d.stop().await;
}

#[tokio::test]
async fn a_whole_transaction_continues_and_the_session_is_reusable() {
    let d = daemon_with("").await;
    let mut c = negotiated(&d).await;
    // Postfix sends macros even for stages the filter declined.
    c.macros(b'C', &[("{client_addr}", "127.0.0.1"), ("{daemon_name}", "smtpd")]).await.unwrap();
    let connect = Command::Connect { hostname: b"localhost", peer: Peer::Inet { port: 4321, address: b"127.0.0.1" } };
    assert_eq!(c.stage(connect).await.unwrap().kind(), None, "CONNECT skipped");
    for round in 0..2 {
        c.macros(b'M', &[("{auth_authen}", "alice@example.com"), ("i", "ABC")]).await.unwrap();
        assert_eq!(c.mail_from("<alice@example.com>", &["SIZE=100"]).await.unwrap().kind(), Some(b'c'));
        for rcpt in ["<bob@example.com>", "<carol@example.org>", "<dave@example.net>"] {
            c.macros(b'R', &[("{rcpt_addr}", rcpt)]).await.unwrap();
            assert_eq!(c.rcpt_to(rcpt).await.unwrap().kind(), Some(b'c'), "round {round}");
        }
        c.macros(b'T', &[("i", "ABC")]).await.unwrap();
        let eom = c.message(&[("Subject", " hello"), ("X-Folded", " a\n\tb")], b"body\r\n").await.unwrap();
        assert_eq!(eom.kind(), Some(b'c'));
        assert!(eom.modifications.is_empty());
    }
    // An aborted transaction, then another one.
    c.mail_from("<alice@example.com>", &[]).await.unwrap();
    c.write(Command::Abort).await.unwrap();
    // The null sender is never counted or restricted: accepted at once.
    assert_eq!(c.mail_from("<>", &[]).await.unwrap().kind(), Some(b'a'));
    c.write(Command::Quit).await.unwrap();
    assert!(c.closed_by_filter(Duration::from_secs(5)).await.unwrap());
    d.stop().await;
}

#[tokio::test]
async fn quit_nc_starts_a_new_smtp_session_without_negotiation() {
    let d = daemon_with("").await;
    let mut c = negotiated(&d).await;
    c.mail_from("<a@example.com>", &[]).await.unwrap();
    c.write(Command::QuitNewConnection).await.unwrap();
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.unwrap();
    assert_eq!(c.mail_from("<b@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn an_old_mta_that_cannot_skip_stages_gets_answers_for_all() {
    let d = daemon_with("").await;
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    let agreed = c.negotiate(Offer { version: 6, actions: Actions::all(), steps: Steps::empty() }).await.unwrap();
    assert_eq!(agreed.steps, Steps::empty());
    c.macros(b'C', &[("{client_addr}", "::1")]).await.unwrap();
    let connect = Command::Connect { hostname: b"h", peer: Peer::Inet6 { port: 25, address: b"::1" } };
    assert_eq!(c.stage(connect).await.unwrap().kind(), Some(b'c'));
    assert_eq!(c.stage(Command::Helo { name: b"client.example" }).await.unwrap().kind(), Some(b'c'));
    assert_eq!(c.mail_from("<a@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
    assert_eq!(c.rcpt_to("<b@example.com>").await.unwrap().kind(), Some(b'c'));
    assert_eq!(c.message(&[("Subject", "x")], b"hi\r\n").await.unwrap().kind(), Some(b'c'));
    d.stop().await;
}

async fn assert_closed_after(d: &TestDaemon, bytes: &[u8], negotiate_first: bool) {
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    if negotiate_first {
        c.negotiate(POSTFIX_OFFER).await.unwrap();
    }
    c.write_raw(bytes).await.unwrap();
    assert!(c.closed_by_filter(Duration::from_secs(5)).await.unwrap(), "filter should close after {bytes:?}");
    assert_serving(d).await;
}

#[tokio::test]
async fn bad_input_ends_only_that_connection() {
    let d = daemon_with("").await;
    // An idle, healthy connection kept open alongside.
    let mut bystander = negotiated(&d).await;
    // Unknown command letter.
    assert_closed_after(&d, b"\0\0\0\x01Z", true).await;
    // Zero-length packet.
    assert_closed_after(&d, b"\0\0\0\0", true).await;
    // MAIL without its NUL terminator.
    assert_closed_after(&d, b"\0\0\0\x05Mab\0c", true).await;
    // CONNECT before negotiation.
    let mut connect = Vec::new();
    Command::Connect { hostname: b"h", peer: Peer::Unknown }.encode(&mut connect);
    assert_closed_after(&d, &connect, false).await;
    // BODY before MAIL.
    let mut body = Vec::new();
    Command::Body(b"x").encode(&mut body);
    assert_closed_after(&d, &body, true).await;
    // RCPT after a header: the message phase went backwards.
    let mut late = Vec::new();
    Command::MailFrom(outbound_guard::milter::command::Envelope { address: b"<a@b>", esmtp_args: Default::default() })
        .encode(&mut late);
    Command::Header { name: b"A", value: b"b" }.encode(&mut late);
    Command::RcptTo(outbound_guard::milter::command::Envelope { address: b"<c@d>", esmtp_args: Default::default() })
        .encode(&mut late);
    assert_closed_after(&d, &late, true).await;
    // The bystander never noticed.
    assert_eq!(bystander.mail_from("<x@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
    // Shutdown would wait for the bystander's message in flight; end it first.
    drop(bystander);
    d.stop().await;
}

#[tokio::test]
async fn an_oversized_packet_is_refused_from_its_length_alone() {
    let d = daemon_with("").await;
    let mut c = negotiated(&d).await;
    // Claim 1 MiB + 2 bytes and send nothing more: the filter must not wait for the rest.
    c.write_raw(&(1024 * 1024 + 2u32).to_be_bytes()).await.unwrap();
    assert!(c.closed_by_filter(Duration::from_secs(5)).await.unwrap());
    assert_serving(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn a_packet_half_sent_longer_than_io_timeout_ends_the_connection() {
    let d = daemon_with("io_timeout = \"200ms\"\n").await;
    let mut c = negotiated(&d).await;
    let started = Instant::now();
    c.write_raw(b"\0\0\0\x10Mhalf").await.unwrap();
    assert!(c.closed_by_filter(Duration::from_secs(5)).await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(200), "closed before io_timeout");
    assert_serving(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn an_idle_connection_outlives_io_timeout_and_ends_at_idle_timeout() {
    let d = daemon_with("io_timeout = \"100ms\"\nidle_timeout = \"600ms\"\n").await;
    let mut c = negotiated(&d).await;
    // Silent between commands for several io_timeouts: still open.
    assert!(!c.closed_by_filter(Duration::from_millis(350)).await.unwrap());
    assert_eq!(c.mail_from("<a@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
    // Then silent past idle_timeout: closed.
    let started = Instant::now();
    assert!(c.closed_by_filter(Duration::from_secs(5)).await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(500));
    d.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_the_message_in_flight_finish() {
    let mut d = daemon_with("").await;
    let mut idle = negotiated(&d).await;
    let mut busy = negotiated(&d).await;
    assert_eq!(busy.mail_from("<a@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
    d.request_shutdown();
    // The idle connection is closed at once; the busy one is not.
    assert!(idle.closed_by_filter(Duration::from_secs(5)).await.unwrap());
    assert!(!d.finished(Duration::from_millis(100)).await, "daemon must wait for the message in flight");
    // No new connections are taken.
    let refused = match MtaClient::connect(d.addr).await {
        Err(_) => true,
        Ok(mut late) => late.negotiate(POSTFIX_OFFER).await.is_err(),
    };
    assert!(refused, "a new connection was served during shutdown");
    // The message in flight completes, then the filter closes and stops.
    assert_eq!(busy.rcpt_to("<b@example.com>").await.unwrap().kind(), Some(b'c'));
    assert_eq!(busy.message(&[], b"x\r\n").await.unwrap().kind(), Some(b'c'));
    assert!(busy.closed_by_filter(Duration::from_secs(5)).await.unwrap());
    assert!(d.finished(Duration::from_secs(5)).await);
}

/// Waits (bounded) until the filter counts `n` connections open; the tests run on one thread,
/// where the count and the connection's slot are given back in the same step.
async fn open_connections_reach(d: &TestDaemon, n: i64) -> bool {
    let open = &d.services.engine.metrics().milter_connections_open;
    tokio::time::timeout(Duration::from_secs(5), async {
        while open.get() != n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_connection_over_max_connections_is_closed_at_once_and_counted() {
    let d = daemon_with("max_connections = 2\n").await;
    let refused = d.services.engine.metrics().milter_connections_refused.clone();
    let mut first = negotiated(&d).await;
    let mut second = negotiated(&d).await;
    // The third is closed before any packet, not left waiting in the accept queue.
    let mut third = MtaClient::connect(d.addr).await.unwrap();
    assert!(third.closed_by_filter(Duration::from_secs(2)).await.unwrap(), "third connection left open");
    assert_eq!(refused.get(), 1);
    // An MTA that sends its offer at once gets no negotiation either.
    let mut fourth = MtaClient::connect(d.addr).await.unwrap();
    assert!(fourth.negotiate(POSTFIX_OFFER).await.is_err(), "fourth connection was negotiated");
    assert_eq!(refused.get(), 2);
    // The connections held meanwhile are served as before.
    for c in [&mut first, &mut second] {
        c.macros(b'M', &[("{auth_authen}", "alice@example.com")]).await.unwrap();
        assert_eq!(c.mail_from("<alice@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
        assert_eq!(c.rcpt_to("<bob@example.com>").await.unwrap().kind(), Some(b'c'));
        assert_eq!(c.message(&[("Subject", " hi")], b"x\r\n").await.unwrap().kind(), Some(b'c'));
    }
    // Once one ends, its slot serves a new connection.
    first.write(Command::Quit).await.unwrap();
    assert!(first.closed_by_filter(Duration::from_secs(2)).await.unwrap());
    assert!(open_connections_reach(&d, 1).await, "the first connection's slot was not given back");
    assert_serving(&d).await;
    assert_eq!(refused.get(), 2);
    drop(second);
    d.stop().await;
}
