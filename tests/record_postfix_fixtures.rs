//! Re-records the golden milter byte fixtures in `fixtures/postfix/`:
//! Postfix -> scripts/record-milter -> tests/peers/ref-milter.c (libmilter), and
//! Postfix -> scripts/record-milter -> outbound-guard itself (`postfix-guard-*`).
//!
//! Not a check: it rewrites files. It only runs when asked for:
//!
//! ```text
//! OG_RECORD_FIXTURES=1 cargo test --features real-peers \
//!     --test record_postfix_fixtures -- --ignored --test-threads=1
//! ```
//!
//! `OG_FIXTURE_DIR` overrides the output directory. See fixtures/postfix/README.md.
#![cfg(feature = "real-peers")]

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::binary::GuardProcess;
use common::postfix::{Postfix, PostfixOptions};
use common::process::{free_port, tcp_listening, wait_child};
use common::smtp_client::SmtpClient;
use common::smtp_sink::SmtpSink;
use common::swaks::Swaks;

const WAIT: Duration = Duration::from_secs(30);
const HELO: &str = "client.outbound-guard.test";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    std::env::var_os("OG_FIXTURE_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("fixtures").join("postfix"))
}

fn enabled() -> bool {
    if std::env::var("OG_RECORD_FIXTURES").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped: set OG_RECORD_FIXTURES=1 to re-record fixtures/postfix");
    false
}

/// Build tests/peers/ref-milter.c once per process.
fn ref_milter_bin() -> &'static Path {
    static BIN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &BIN.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("ref-milter");
        let src = repo().join("tests/peers/ref-milter.c");
        let o = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .args(["-lmilter", "-lpthread"])
            .output()
            .expect("run cc");
        assert!(o.status.success(), "building ref-milter failed: {o:?}");
        (dir, bin)
    })
    .1
}

/// The filter behind the recorder: libmilter's reference filter, or outbound-guard.
enum Upstream {
    RefMilter(Child),
    Guard(GuardProcess),
}

/// A recording in progress: a filter behind record-milter --once.
struct Recording {
    name: &'static str,
    work: tempfile::TempDir,
    upstream: Upstream,
    recorder: Child,
    record_port: u16,
}

impl Recording {
    /// Records Postfix talking to outbound-guard run with `config_tail`.
    fn start_guard(name: &'static str, config_tail: &str) -> Recording {
        let work = tempfile::tempdir().expect("tempdir");
        let guard = GuardProcess::start("", config_tail);
        let port = guard.milter_port;
        Self::record(name, work, Upstream::Guard(guard), port)
    }

    fn start(name: &'static str) -> Recording {
        let work = tempfile::tempdir().expect("tempdir");
        let ref_port = free_port();
        let mut ref_milter = Command::new(ref_milter_bin())
            .arg("-p")
            .arg(format!("inet:{ref_port}@127.0.0.1"))
            .arg("-l")
            .arg(work.path().join(format!("{name}.ref-milter.log")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ref-milter");
        let mut line = String::new();
        let mut stdout = BufReader::new(ref_milter.stdout.take().unwrap());
        stdout.read_line(&mut line).expect("ref-milter stdout");
        assert!(line.contains("listening"), "ref-milter said {line:?}");
        // Keep draining so a later write cannot hit a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Self::record(name, work, Upstream::RefMilter(ref_milter), ref_port)
    }

    fn record(name: &'static str, work: tempfile::TempDir, upstream: Upstream, upstream_port: u16) -> Recording {
        let record_port = free_port();
        let prefix = work.path().join(name);
        let decoded = fs::File::create(work.path().join(format!("{name}.decoded.txt"))).unwrap();
        let recorder = Command::new("python3")
            .arg(repo().join("scripts/record-milter"))
            .args(["--once", "--decode"])
            .arg(record_port.to_string())
            .arg(format!("127.0.0.1:{upstream_port}"))
            .arg(&prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(decoded)
            .spawn()
            .expect("spawn record-milter");
        let deadline = Instant::now() + WAIT;
        while !tcp_listening(record_port) {
            assert!(Instant::now() < deadline, "record-milter not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Recording { name, work, upstream, recorder, record_port }
    }

    fn options(&self, sink: &SmtpSink) -> PostfixOptions {
        PostfixOptions::new()
            .relay_to(sink)
            .smtpd_milters(&format!("inet:127.0.0.1:{}", self.record_port))
            .milter_default_action("tempfail")
            .milter_protocol(6)
    }

    /// Wait for the milter session to end, then copy the files into place.
    fn finish(mut self, smtp_transcript: &str) {
        let deadline = Instant::now() + WAIT;
        while matches!(self.recorder.try_wait(), Ok(None)) {
            assert!(Instant::now() < deadline, "record-milter did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(self.recorder.wait().unwrap().success(), "record-milter failed");
        let exts: &[&str] = match self.upstream {
            Upstream::RefMilter(mut ref_milter) => {
                std::thread::sleep(Duration::from_millis(200)); // let ref-milter log its close
                let _ = ref_milter.kill();
                wait_child(&mut ref_milter, Duration::from_secs(5));
                &["mta.bin", "filter.bin", "decoded.txt", "ref-milter.log", "smtp.txt"]
            }
            Upstream::Guard(guard) => {
                let (status, log) = guard.terminate();
                assert!(status.success(), "outbound-guard exited with {status}:\n{log}");
                &["mta.bin", "filter.bin", "decoded.txt", "smtp.txt"]
            }
        };
        fs::write(self.work.path().join(format!("{}.smtp.txt", self.name)), smtp_transcript).unwrap();
        let out = out_dir();
        fs::create_dir_all(&out).unwrap();
        for ext in exts {
            let f = format!("{}.{ext}", self.name);
            let src = self.work.path().join(&f);
            assert!(src.exists(), "missing {f}");
            fs::copy(&src, out.join(&f)).unwrap();
        }
        eprintln!("recorded {} into {}", self.name, out.display());
    }
}

const PLAIN_DATA: &str = "From: Alice Example <alice@example.com>
To: bob@example.net, carol@example.org
Cc: dave@example.com
Subject: Quarterly numbers
 for the outbound-guard fixtures
Date: Thu, 01 Jan 2026 12:00:00 +0000
Message-ID: <postfix-plain@client.outbound-guard.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii
X-Folded: first part
\tsecond part after a tab

Hi all,

here are the numbers.
.a line that starts with a dot
-- 
Alice
";

#[test]
#[ignore = "rewrites fixtures/postfix; run with OG_RECORD_FIXTURES=1 and --ignored"]
fn record_postfix_plain() {
    if !enabled() {
        return;
    }
    let rec = Recording::start("postfix-plain");
    let sink = SmtpSink::start();
    let pf = Postfix::start(rec.options(&sink));
    let r = Swaks::new(pf.smtp_port())
        .helo(HELO)
        .from("alice@example.com")
        .tos(&["bob@example.net", "carol@example.org", "dave@example.com"])
        // swaks adds the final CRLF itself.
        .data(PLAIN_DATA.trim_end_matches('\n'))
        .run();
    assert!(r.success(), "{}", r.transcript);
    assert_eq!(sink.wait_for_messages(1, WAIT).len(), 1, "{}", pf.log());
    rec.finish(&r.transcript);
}

#[test]
#[ignore = "rewrites fixtures/postfix; run with OG_RECORD_FIXTURES=1 and --ignored"]
fn record_postfix_auth() {
    if !enabled() {
        return;
    }
    let rec = Recording::start("postfix-auth");
    let sink = SmtpSink::start();
    let pf = Postfix::start(rec.options(&sink).sasl_user("alice@example.com", "s3cret"));
    let r = Swaks::new(pf.smtp_port())
        .helo(HELO)
        .outside()
        .auth_plain("alice@example.com", "s3cret")
        .from("alice@example.com")
        .to("bob@example.net")
        .data(
            "From: alice@example.com\nTo: bob@example.net\nSubject: authenticated\n\
             Message-ID: <postfix-auth@client.outbound-guard.test>\n\
             Date: Thu, 01 Jan 2026 12:00:00 +0000\n\nsent after AUTH PLAIN",
        )
        .run();
    assert!(r.success(), "{}", r.transcript);
    assert!(r.has_reply("235"), "{}", r.transcript);
    assert_eq!(sink.wait_for_messages(1, WAIT).len(), 1, "{}", pf.log());
    rec.finish(&r.transcript);
}

#[test]
#[ignore = "rewrites fixtures/postfix; run with OG_RECORD_FIXTURES=1 and --ignored"]
fn record_postfix_two_messages() {
    if !enabled() {
        return;
    }
    let rec = Recording::start("postfix-two-messages");
    let sink = SmtpSink::start();
    let pf = Postfix::start(rec.options(&sink));
    let mut c = SmtpClient::connect(pf.smtp_port()).unwrap();
    assert_eq!(c.ehlo(HELO).unwrap().code, 250);
    let r1 = c
        .send_message(
            "alice@example.com",
            &["bob@example.net"],
            "From: alice@example.com\nTo: bob@example.net\nSubject: first of two\n\
             Message-ID: <postfix-two-1@client.outbound-guard.test>\n\nfirst body\n",
        )
        .unwrap();
    assert_eq!(r1.code, 250, "{}", c.transcript());
    let r2 = c
        .send_message(
            "alice@example.com",
            &["carol@example.org", "dave@example.com"],
            "From: alice@example.com\nTo: carol@example.org, dave@example.com\n\
             Subject: second of two\nMessage-ID: <postfix-two-2@client.outbound-guard.test>\n\n\
             second body\nline two\n",
        )
        .unwrap();
    assert_eq!(r2.code, 250, "{}", c.transcript());
    let transcript = c.transcript().to_string();
    c.quit().unwrap();
    assert_eq!(sink.wait_for_messages(2, WAIT).len(), 2, "{}", pf.log());
    rec.finish(&transcript);
}

#[test]
#[ignore = "rewrites fixtures/postfix; run with OG_RECORD_FIXTURES=1 and --ignored"]
fn record_postfix_rset() {
    if !enabled() {
        return;
    }
    let rec = Recording::start("postfix-rset");
    let sink = SmtpSink::start();
    let pf = Postfix::start(rec.options(&sink));
    let mut c = SmtpClient::connect(pf.smtp_port()).unwrap();
    assert_eq!(c.ehlo(HELO).unwrap().code, 250);
    assert_eq!(c.command("MAIL FROM:<alice@example.com>").unwrap().code, 250);
    assert_eq!(c.command("RCPT TO:<bob@example.net>").unwrap().code, 250);
    assert_eq!(c.command("RCPT TO:<carol@example.org>").unwrap().code, 250);
    assert_eq!(c.command("RSET").unwrap().code, 250);
    let r = c
        .send_message(
            "alice@example.com",
            &["dave@example.com"],
            "From: alice@example.com\nTo: dave@example.com\nSubject: after RSET\n\
             Message-ID: <postfix-rset@client.outbound-guard.test>\n\nonly this one is sent\n",
        )
        .unwrap();
    assert_eq!(r.code, 250, "{}", c.transcript());
    let transcript = c.transcript().to_string();
    c.quit().unwrap();
    let msgs = sink.wait_for_messages(1, WAIT);
    assert_eq!(msgs.len(), 1, "{}", pf.log());
    assert_eq!(msgs[0].rcpts, ["dave@example.com"]);
    rec.finish(&transcript);
}

#[test]
#[ignore = "rewrites fixtures/postfix; run with OG_RECORD_FIXTURES=1 and --ignored"]
fn record_postfix_guard_limit() {
    if !enabled() {
        return;
    }
    // outbound-guard's own negotiation (only MAIL, RCPT and end of message; macros by symbol
    // list), an authenticated account reaching its limit of 2 external recipients on the third,
    // then refused at MAIL FROM in the same SMTP session.
    // The policy is a fixture too: tests/golden_postfix.rs replays the capture with it.
    let policy = fs::read_to_string(repo().join("fixtures/postfix/postfix-guard-limit.toml")).expect("policy");
    let rec = Recording::start_guard("postfix-guard-limit", &policy);
    let sink = SmtpSink::start();
    let pf = Postfix::start(rec.options(&sink).sasl_user("alice@example.com", "s3cret"));
    let mut c = SmtpClient::connect(pf.smtp_port()).unwrap();
    assert_eq!(c.ehlo(HELO).unwrap().code, 250);
    assert_eq!(c.auth_plain("alice@example.com", "s3cret").unwrap().code, 235, "{}", c.transcript());
    let r = c
        .send_message(
            "alice@example.com",
            &["bob@example.net", "carol@example.org", "erin@example.org"],
            "From: alice@example.com\nTo: bob@example.net, carol@example.org, erin@example.org\n\
             Subject: two of three\nMessage-ID: <postfix-guard-limit@client.outbound-guard.test>\n\n\
             the third recipient was refused\n",
        )
        .unwrap();
    assert_eq!(r.code, 250, "{}", c.transcript());
    assert!(c.transcript().contains("S: 550 5.2.2"), "{}", c.transcript());
    assert_eq!(c.command("MAIL FROM:<alice@example.com>").unwrap().code, 550);
    let transcript = c.transcript().to_string();
    c.quit().unwrap();
    assert_eq!(sink.wait_for_messages(1, WAIT).len(), 1, "{}", pf.log());
    rec.finish(&transcript);
}

/// `fixtures/postfix/maillog.log`: the log a real Postfix wrote (its `maillog_file`) while the
/// filter limited it — SMTP clients with and without a login, local submissions run as an
/// unprivileged user, a recipient that bounces, one that is deferred, a refusal by the filter
/// at RCPT TO and at end of message, a relay refusal. The maillog parser's tests and its
/// benchmark read it; lines naming the instance's private directory are left out.
#[test]
#[ignore = "rewrites fixtures/postfix; run with OG_RECORD_FIXTURES=1 and --ignored"]
fn record_postfix_maillog() {
    if !enabled() {
        return;
    }
    let local_port = free_port();
    let guard = GuardProcess::start(
        &format!("local_listen = \"inet:127.0.0.1:{local_port}\""),
        "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.1/32\"]\n\
         [policy.default]\nrecipient_limit_external_per_hour = 6\nmax_recipients_per_message = 5\n",
    );
    let sink = SmtpSink::start();
    let dead = free_port();
    let pf = Postfix::start(
        PostfixOptions::new()
            .relay_to(&sink)
            .smtpd_milters(&guard.milter_address())
            .non_smtpd_milters(&format!("inet:127.0.0.1:{local_port}"))
            .milter_default_action("tempfail")
            .sasl_user("alice@example.com", "s3cret")
            .unprivileged_submission()
            .main_cf(&format!(
                "transport_maps = inline:{{ {{ bounce.example = error:5.1.1 no such user }}, {{ later.example = smtp:[127.0.0.1]:{dead} }} }}"
            )),
    );
    let swaks = || Swaks::new(pf.smtp_port());
    assert!(swaks().from("bob@example.com").tos(&["one@example.net", "x@bounce.example"]).run().success());
    assert!(swaks().from("bob@example.com").to("y@later.example").run().success());
    assert!(
        swaks()
            .outside()
            .auth_plain("alice@example.com", "s3cret")
            .from("alice@example.com")
            .tos(&["two@example.net", "three@example.org"])
            .run()
            .success()
    );
    assert!(swaks().outside().from("stranger@example.net").to("postmaster@example.com").run().success());
    assert!(!swaks().outside().from("stranger@example.net").to("victim@example.org").run().success());
    let body = b"From: cron@example.com\nSubject: report\n\nnightly report\n";
    for rcpts in [
        &["four@example.net"][..],
        &["a@example.net", "b@example.net", "c@example.net", "d@example.net", "e@example.net", "f@example.net"],
    ] {
        assert!(pf.sendmail_as("nobody", "cron@example.com", rcpts, body).status.success());
    }
    // The account reaches its limit of 6: refused at RCPT TO, then at MAIL FROM.
    let over = swaks()
        .from("bob@example.com")
        .tos(&["five@example.net", "six@example.net", "seven@example.net", "eight@example.net", "ten@example.net"])
        .run();
    assert!(over.has_reply("550 5.2.2"), "{}", over.transcript);
    assert!(swaks().from("bob@example.com").to("nine@example.net").run().has_reply("550 5.1.8"));
    assert!(pf.wait_log("status=bounced", WAIT) && pf.wait_log("status=deferred", WAIT), "{}", pf.log());
    assert!(pf.wait_log("milter-reject: END-OF-MESSAGE", WAIT), "{}", pf.log());
    sink.wait_for_messages(4, WAIT);
    // Nothing of the recording machine in the fixture: the instance's directory, and the host
    // name swaks puts in its Message-IDs.
    let root = pf.root_dir().display().to_string();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let log: String = pf
        .log()
        .lines()
        .filter(|l| !l.contains(&root))
        .map(|l| format!("{}\n", l.replace(&format!("@{host}>"), &format!("@{HELO}>"))))
        .collect();
    fs::write(out_dir().join("maillog.log"), log).expect("write maillog.log");
}
