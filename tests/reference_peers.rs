//! Our milter code against peers we did not write.
//!
//! * Our MTA-side client ([`MtaClient`]) against libmilter, through `tests/peers/ref-milter.c`:
//!   what libmilter decoded from our packets, read back from the filter's callback log, is
//!   exactly what we sent. That proves the client right, not merely consistent with our own
//!   server. The client also honours the stages libmilter declined and the replies it waived.
//! * Our reply decoder against libmilter: the negotiation reply, every end-of-message
//!   modification and every final reply libmilter can send decode to the right [`Reply`].
//! * OpenDKIM's `miltertest` against the real `outbound-guard` binary: the scripts in
//!   `tests/peers/miltertest/` pass.
#![cfg(feature = "real-peers")]

mod common;

use std::time::Duration;

use common::binary::GuardProcess;
use common::refmilter::{RefMilter, miltertest};
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER, StageResult};
use outbound_guard::milter::command::{Command, Envelope, NulStrings, Peer};
use outbound_guard::milter::negotiate::{Actions, Steps, macro_stage};
use outbound_guard::milter::reply::Reply;

type Client = MtaClient<tokio::net::TcpStream>;

/// Bound on waiting for libmilter's asynchronous callbacks (close) to reach its log.
const WAIT: Duration = Duration::from_secs(10);
/// Bound on one miltertest run.
const MILTERTEST_LIMIT: Duration = Duration::from_secs(60);

/// Escapes bytes as ref-milter writes them to its log; `space` for space-separated fields.
fn esc(bytes: &[u8], space: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b' ' if space => out.push_str("\\x20"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// ref-milter's log lines of connection `id`.
fn lines_of(log: &str, id: u32) -> Vec<String> {
    let prefix = format!("{id} ");
    log.lines().filter(|l| l.starts_with(&prefix)).map(str::to_owned).collect()
}

/// The decoded final reply of a stage the filter had to answer.
fn final_reply(r: &StageResult) -> Reply<'_> {
    r.reply.as_ref().expect("the filter owes a reply here").decode().expect("the reply decodes")
}

async fn expect_continue(c: &mut Client, command: Command<'_>) {
    let what = format!("{command:?}");
    let r = c.stage(command).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(final_reply(&r), Reply::Continue, "{what}");
    assert!(r.modifications.is_empty(), "{what}: {r:?}");
}

fn envelope<'a>(address: &'a str, raw_args: &'a [u8]) -> Envelope<'a> {
    Envelope { address: address.as_bytes(), esmtp_args: NulStrings::new(raw_args).expect("well-formed argument list") }
}

async fn negotiated(refm: &RefMilter) -> Client {
    let mut c = MtaClient::connect(refm.addr()).await.expect("connect");
    c.negotiate(POSTFIX_OFFER).await.expect("negotiate");
    c
}

// ---------------------------------------------------------------------------
// 1. our client, as libmilter decodes it

#[tokio::test]
async fn libmilter_decodes_every_stage_of_our_client_exactly_as_sent() {
    let refm = RefMilter::start(true, &[]);
    let mut c = MtaClient::connect(refm.addr()).await.expect("connect");

    // Negotiation: libmilter's `O` reply decodes with our decoder into what the filter chose.
    let agreed = c.negotiate(POSTFIX_OFFER).await.expect("negotiate");
    assert_eq!(agreed.version, 6);
    assert_eq!(agreed.actions, Actions::from_bits_retain(0x1ff), "every action Postfix offers");
    assert_eq!(agreed.steps, Steps::SKIP, "every stage, every reply");
    assert!(agreed.symbol_list);
    assert_eq!(
        c.macro_requests,
        vec![
            (macro_stage::CONNECT, "{client_addr} {daemon_name}".to_owned()),
            (macro_stage::MAIL, "i {auth_authen} {auth_type} {mail_addr}".to_owned()),
            (macro_stage::RCPT, "{rcpt_addr}".to_owned()),
            (macro_stage::END_OF_MESSAGE, "i".to_owned()),
        ]
    );
    let mut want = vec![format!(
        "1 negotiate offered_actions=0x{:x} offered_steps=0x{:x} actions=0x{:x} steps=0x{:x}",
        POSTFIX_OFFER.actions.bits(),
        POSTFIX_OFFER.steps.bits(),
        agreed.actions.bits(),
        agreed.steps.bits()
    )];

    // CONNECT (inet4) with its macros; `j` was not asked for and must not shift the pairs.
    c.macros(b'C', &[("j", "mail.example.com"), ("{client_addr}", "192.0.2.1"), ("{daemon_name}", "ORIGINATING")])
        .await
        .unwrap();
    expect_continue(
        &mut c,
        Command::Connect { hostname: b"client.example.com", peer: Peer::Inet { port: 4321, address: b"192.0.2.1" } },
    )
    .await;
    want.extend([
        "1 connect host=client.example.com family=4 addr=192.0.2.1 port=4321".to_owned(),
        "1 macro {client_addr}=192.0.2.1".to_owned(),
        "1 macro {daemon_name}=ORIGINATING".to_owned(),
    ]);
    expect_continue(&mut c, Command::Helo { name: b"client.example.com" }).await;
    want.push("1 helo client.example.com".to_owned());
    expect_continue(&mut c, Command::Unknown(b"XFROB now please")).await;
    want.push("1 unknown XFROB now please".to_owned());

    // Transaction 1: MAIL with ESMTP arguments, three RCPTs, a whole message.
    c.macros(
        b'M',
        &[
            ("i", "4AbC1dEfG1"),
            ("{auth_authen}", "alice@example.com"),
            ("{auth_type}", "PLAIN"),
            ("{mail_addr}", "alice@example.com"),
        ],
    )
    .await
    .unwrap();
    let r = c.mail_from("<alice@example.com>", &["SIZE=1234", "BODY=8BITMIME"]).await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    want.extend(
        [
            "envfrom <alice@example.com> SIZE=1234 BODY=8BITMIME",
            "macro i=4AbC1dEfG1",
            "macro {auth_authen}=alice@example.com",
            "macro {auth_type}=PLAIN",
            "macro {mail_addr}=alice@example.com",
        ]
        .map(|l| format!("1 {l}")),
    );

    let rcpts: [(&str, &[u8]); 3] = [
        ("bob@example.net", b"NOTIFY=SUCCESS,FAILURE\0ORCPT=rfc822;bob@example.net\0"),
        ("carol@example.org", b""),
        ("dave@example.com", b""),
    ];
    for (addr, args) in rcpts {
        c.macros(b'R', &[("{rcpt_addr}", addr)]).await.unwrap();
        let bracketed = format!("<{addr}>");
        expect_continue(&mut c, Command::RcptTo(envelope(&bracketed, args))).await;
        let mut line = format!("1 envrcpt {bracketed}");
        for arg in NulStrings::new(args).unwrap().iter() {
            line.push(' ');
            line.push_str(&esc(arg, true));
        }
        want.push(line);
        want.push(format!("1 macro {{rcpt_addr}}={addr}"));
    }

    expect_continue(&mut c, Command::Data).await;
    want.push("1 data".to_owned());
    let headers: [(&str, &[u8]); 5] = [
        ("From", b"Alice <alice@example.com>"),
        // folded as Postfix passes it on: the line break and indentation kept
        ("Subject", b"a folded subject\n\tthat goes on"),
        ("X-Name", "Jörg Müller – ☃".as_bytes()),
        ("X-Latin1", b"caf\xe9 cr\xe8me"),
        ("Message-ID", b"<4AbC1dEfG1@example.com>"),
    ];
    for (name, value) in headers {
        expect_continue(&mut c, Command::Header { name: name.as_bytes(), value }).await;
        want.push(format!("1 header {name}: {}", esc(value, false)));
    }
    expect_continue(&mut c, Command::EndOfHeaders).await;
    want.push("1 eoh".to_owned());

    let chunks: [&[u8]; 2] = [
        b"Hello Bob,\r\n\r\nthis is a test with a back\\slash and a tab\there.\r\n",
        "Grüße, and a NUL \0 byte\r\n-- \r\nAlice\r\n".as_bytes(),
    ];
    for chunk in chunks {
        expect_continue(&mut c, Command::Body(chunk)).await;
        want.push(format!("1 body len={} crc32={:08x} data={}", chunk.len(), crc32fast::hash(chunk), esc(chunk, true)));
    }
    c.macros(b'E', &[("i", "4AbC1dEfG1")]).await.unwrap();
    let eom = c.stage(Command::EndOfMessage(b"")).await.unwrap();
    assert_eq!(final_reply(&eom), Reply::Continue);
    assert!(eom.modifications.is_empty(), "{eom:?}");
    let whole = chunks.concat();
    want.push(format!("1 eom body_len={} body_crc32={:08x}", whole.len(), crc32fast::hash(&whole)));
    want.push("1 macro i=4AbC1dEfG1".to_owned());

    // Postfix ends every transaction with an abort. After end of message libmilter has no
    // transaction left to abort (its state table allows no abort after EOM), so it ignores
    // this one without running the callback.
    c.write(Command::Abort).await.unwrap();

    // Transaction 2: null sender, MAIL macros without {auth_type} and with an empty value,
    // aborted after RCPT: this abort reaches the filter.
    c.macros(b'M', &[("i", "4AbC1dEfG2"), ("{auth_authen}", "alice@example.com"), ("{mail_addr}", "")]).await.unwrap();
    let r = c.mail_from("<>", &[]).await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    want.extend(
        [
            "envfrom <>",
            "macro i=4AbC1dEfG2",
            "macro {auth_authen}=alice@example.com",
            "macro {auth_type} unset",
            "macro {mail_addr}=",
        ]
        .map(|l| format!("1 {l}")),
    );
    c.macros(b'R', &[("{rcpt_addr}", "erin@example.net")]).await.unwrap();
    let r = c.rcpt_to("<erin@example.net>").await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    want.push("1 envrcpt <erin@example.net>".to_owned());
    want.push("1 macro {rcpt_addr}=erin@example.net".to_owned());
    c.write(Command::Abort).await.unwrap();
    want.push("1 abort".to_owned());

    // Transaction 3: the client's one-call message helper.
    c.macros(b'M', &[("i", "4AbC1dEfG3")]).await.unwrap();
    let r = c.mail_from("<bob@example.com>", &[]).await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    want.extend(
        [
            "envfrom <bob@example.com>",
            "macro i=4AbC1dEfG3",
            "macro {auth_authen} unset",
            "macro {auth_type} unset",
            "macro {mail_addr} unset",
        ]
        .map(|l| format!("1 {l}")),
    );
    let r = c.rcpt_to("<frank@example.net>").await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    // MAIL cleared the RCPT macros of transaction 2, and none were sent this time.
    want.push("1 envrcpt <frank@example.net>".to_owned());
    want.push("1 macro {rcpt_addr} unset".to_owned());
    let body = b"second message\r\n";
    let eom = c.message(&[("Subject", "second")], body).await.expect("message");
    assert_eq!(final_reply(&eom), Reply::Continue);
    want.extend([
        "1 data".to_owned(),
        "1 header Subject: second".to_owned(),
        "1 eoh".to_owned(),
        format!("1 body len={} crc32={:08x} data={}", body.len(), crc32fast::hash(body), esc(body, true)),
        format!("1 eom body_len={} body_crc32={:08x}", body.len(), crc32fast::hash(body)),
        // No end-of-message macros were sent this time: libmilter looks `i` up in the
        // earlier stages and finds the MAIL one.
        "1 macro i=4AbC1dEfG3".to_owned(),
    ]);
    c.write(Command::Abort).await.unwrap();
    c.write(Command::Quit).await.unwrap();
    want.push("1 close".to_owned());

    let log = refm.wait_log_line("1 close", WAIT);
    assert_eq!(lines_of(&log, 1), want, "full log:\n{log}");

    // Connection 2: an IPv6 client. Connection 3: a client the MTA knows nothing about.
    for (id, host, peer, family_addr_port) in [
        (
            2,
            "v6.example.net",
            Peer::Inet6 { port: 2525, address: b"2001:db8::25" },
            "family=6 addr=2001:db8::25 port=2525",
        ),
        (3, "unknown", Peer::Unknown, "family=U addr=- port=-"),
    ] {
        let mut c = negotiated(&refm).await;
        c.macros(b'C', &[("{client_addr}", "2001:db8::25")]).await.unwrap();
        expect_continue(&mut c, Command::Connect { hostname: host.as_bytes(), peer }).await;
        c.write(Command::Quit).await.unwrap();
        let close = format!("{id} close");
        let log = refm.wait_log_line(&close, WAIT);
        let got = lines_of(&log, id);
        assert_eq!(
            got[1..],
            [
                format!("{id} connect host={host} {family_addr_port}"),
                format!("{id} macro {{client_addr}}=2001:db8::25"),
                format!("{id} macro {{daemon_name}} unset"),
                close,
            ],
            "full log:\n{log}"
        );
    }

    assert!(refm.stop().success(), "ref-milter exits 0 on SIGTERM");
}

#[tokio::test]
async fn our_client_skips_declined_stages_and_waits_only_for_owed_replies() {
    // The filter declines CONNECT, HELO and unknown commands and waives the replies to MAIL,
    // RCPT, DATA, each header, EOH and body chunks: only end of message is answered.
    let declined = Steps::NO_CONNECT | Steps::NO_HELO | Steps::NO_UNKNOWN;
    let waived = Steps::NR_MAIL | Steps::NR_RCPT | Steps::NR_DATA | Steps::NR_HEADER | Steps::NR_EOH | Steps::NR_BODY;
    let refm = RefMilter::start(true, &["-P", &format!("{:#x}", (declined | waived).bits())]);
    let mut c = negotiated(&refm).await;
    let agreed = c.agreed.expect("negotiated");
    assert_eq!(agreed.steps, declined | waived | Steps::SKIP);

    for (command, what) in [
        (
            Command::Connect {
                hostname: b"client.example.com",
                peer: Peer::Inet { port: 4321, address: b"192.0.2.1" },
            },
            "connect",
        ),
        (Command::Helo { name: b"client.example.com" }, "helo"),
        (Command::Unknown(b"XFROB"), "unknown"),
    ] {
        let r = c.stage(command).await.unwrap();
        assert_eq!(r, StageResult::default(), "{what} is not sent");
    }

    // Two transactions; the second ends in DISCARD, so a stray reply to any waived stage
    // would be read in its place and show up here. (The abort after each one is what Postfix
    // sends; libmilter ignores an abort after end of message, so it is not in the log.)
    for (n, sender, end) in [(1, "<alice@example.com>", Reply::Continue), (2, "<discard@example.com>", Reply::Discard)]
    {
        let r = c.mail_from(sender, &[]).await.unwrap();
        assert_eq!(r.kind(), None, "transaction {n}: MAIL is not answered");
        let r = c.rcpt_to("<bob@example.net>").await.unwrap();
        assert_eq!(r.kind(), None, "transaction {n}: RCPT is not answered");
        let eom = c.message(&[("Subject", "hi")], b"body\r\n").await.unwrap();
        assert_eq!(final_reply(&eom), end, "transaction {n}");
        c.write(Command::Abort).await.unwrap();
    }
    c.write(Command::Quit).await.unwrap();

    let log = refm.wait_log_line("1 close", WAIT);
    let events: Vec<String> = lines_of(&log, 1)
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap_or_default().to_owned())
        .filter(|e| e != "macro")
        .collect();
    let transaction = ["envfrom", "envrcpt", "data", "header", "eoh", "body", "eom"];
    let mut want = vec!["negotiate"];
    want.extend(transaction);
    want.extend(transaction);
    want.push("close");
    assert_eq!(events, want, "full log:\n{log}");
}

// ---------------------------------------------------------------------------
// 2. libmilter's replies, as our decoder reads them

#[tokio::test]
async fn libmilter_modifications_decode_to_our_replies() {
    let refm = RefMilter::start(true, &["-m"]);
    let mut c = negotiated(&refm).await;
    expect_continue(
        &mut c,
        Command::Connect { hostname: b"client.example.com", peer: Peer::Inet { port: 4321, address: b"192.0.2.1" } },
    )
    .await;
    expect_continue(&mut c, Command::Helo { name: b"client" }).await;
    let r = c.mail_from("<alice@example.com>", &[]).await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    let r = c.rcpt_to("<deleted@example.com>").await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    let eom = c.message(&[("Subject", "original")], b"original body\r\n").await.unwrap();

    let mods: Vec<Reply<'_>> = eom.modifications.iter().map(|m| m.decode().expect("modification decodes")).collect();
    assert_eq!(
        mods,
        vec![
            Reply::AddHeader { name: b"X-Ref-Added", value: b"yes" },
            Reply::InsertHeader { index: 1, name: b"X-Ref-Inserted", value: b"yes" },
            Reply::ChangeHeader { index: 1, name: b"Subject", value: b"changed" },
            Reply::AddRecipient(b"<added@example.com>"),
            Reply::AddRecipientWithArgs { recipient: b"<added2@example.com>", args: Some(b"NOTIFY=NEVER") },
            Reply::DeleteRecipient(b"<deleted@example.com>"),
            Reply::ChangeFrom { sender: b"<new-from@example.com>", args: None },
            Reply::ReplaceBody(b"Body replaced by ref-milter.\r\n"),
            Reply::Quarantine(b"ref quarantine"),
            Reply::Progress,
        ]
    );
    assert_eq!(final_reply(&eom), Reply::Continue);
    c.write(Command::Quit).await.unwrap();

    let log = refm.wait_log_line("1 close", WAIT);
    let mod_lines: Vec<String> = lines_of(&log, 1).into_iter().filter(|l| l.starts_with("1 mod ")).collect();
    let ops = [
        "addheader",
        "insheader",
        "chgheader",
        "addrcpt",
        "addrcpt_par",
        "delrcpt",
        "chgfrom",
        "replacebody",
        "quarantine",
        "progress",
    ];
    assert_eq!(
        mod_lines,
        ops.map(|op| format!("1 mod {op} ok")),
        "libmilter sent every modification; full log:\n{log}"
    );
}

#[tokio::test]
async fn libmilter_final_replies_decode_to_our_replies() {
    let refm = RefMilter::start(false, &[]);
    let mut c = negotiated(&refm).await;
    expect_continue(
        &mut c,
        Command::Connect { hostname: b"client.example.com", peer: Peer::Inet { port: 4321, address: b"192.0.2.1" } },
    )
    .await;
    expect_continue(&mut c, Command::Helo { name: b"client" }).await;

    for (sender, want) in [
        ("<reject@example.com>", Reply::Reject),
        ("<tempfail@example.com>", Reply::Tempfail),
        ("<replycode@example.com>", Reply::ReplyCode(b"550 5.7.1 ref says no")),
        ("<accept@example.com>", Reply::Accept),
    ] {
        let r = c.mail_from(sender, &[]).await.unwrap();
        assert_eq!(final_reply(&r), want, "MAIL FROM {sender}");
        c.write(Command::Abort).await.unwrap();
    }

    let r = c.mail_from("<discard@example.com>", &[]).await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    let r = c.rcpt_to("<bob@example.net>").await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    let eom = c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
    assert_eq!(final_reply(&eom), Reply::Discard, "EOM of discard@");
    c.write(Command::Abort).await.unwrap();

    let r = c.mail_from("<alice@example.com>", &[]).await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    let r = c.rcpt_to("<skipbody@example.net>").await.unwrap();
    assert_eq!(final_reply(&r), Reply::Continue);
    expect_continue(&mut c, Command::Data).await;
    expect_continue(&mut c, Command::Header { name: b"Subject", value: b"skip" }).await;
    expect_continue(&mut c, Command::EndOfHeaders).await;
    let r = c.stage(Command::Body(b"first chunk\r\n")).await.unwrap();
    assert_eq!(final_reply(&r), Reply::Skip, "first body chunk to skipbody@");
    let eom = c.stage(Command::EndOfMessage(b"")).await.unwrap();
    assert_eq!(final_reply(&eom), Reply::Continue);
    c.write(Command::Quit).await.unwrap();
    drop(c);
    assert!(refm.stop().success(), "ref-milter exits 0 on SIGTERM");
}

// ---------------------------------------------------------------------------
// 3. miltertest against the real binary

/// 127.0.0.1 is internal and every limit is far away, so nothing may stop a message.
const NOTHING_STOPS: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
     internal_networks = [\"127.0.0.1/32\"]\n\
     [policy.default]\nrecipient_limit_external_per_hour = 10000\n\
     recipient_limit_internal_per_hour = 10000\nrecipient_limit_per_day = 10000\n\
     max_recipients_per_message = 10000\n";

/// Runs a miltertest script against a freshly started `outbound-guard` with `config_tail`.
fn miltertest_against_guard(script: &str, defines: &[&str], config_tail: &str) {
    let guard = GuardProcess::start("", config_tail);
    let sock = format!("inet:{}@127.0.0.1", guard.milter_port);
    let run = miltertest(script, &sock, defines, MILTERTEST_LIMIT);
    let (status, log) = guard.terminate();
    let context = format!("{}\n--- outbound-guard log\n{log}", run.transcript());
    assert!(run.success(), "{script} failed\n{context}");
    assert!(run.stdout.contains(&format!("{script}: ok")), "{script} did not report ok\n{context}");
    assert!(status.success(), "outbound-guard exit status {status}\n{context}");
}

#[test]
fn miltertest_all_stages_pass_through_our_filter() {
    miltertest_against_guard("all-stages.lua", &[], NOTHING_STOPS);
}

#[test]
fn miltertest_inbound_mail_is_accepted_at_mail_from() {
    miltertest_against_guard("accept-inbound.lua", &["expect=accept"], NOTHING_STOPS);
}

#[test]
fn miltertest_account_over_its_limit_is_refused() {
    miltertest_against_guard(
        "restricted.lua",
        &["limit=3"],
        "[policy.default]\nrecipient_limit_external_per_hour = 3\n",
    );
}
