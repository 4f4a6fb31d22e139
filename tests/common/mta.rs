//! Short MTA conversations with a running filter, through the library's own MTA client.

use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER, StageResult};
use outbound_guard::milter::command::Command as Milter;

/// A reply as the tests compare it: the SMTP code and enhanced status of a `y` reply
/// (`550 5.2.2`), else the reply letter (`c`, `t` …), `-` for none.
pub fn code(r: &StageResult) -> String {
    match r.kind() {
        Some(b'y') => r.text().unwrap()[..9].to_owned(),
        Some(k) => (k as char).to_string(),
        None => "-".into(),
    }
}

/// A current-thread runtime for a synchronous test that drives the client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// One message of the authenticated `account` to `n` external recipients; the reply letters
/// (MAIL, then each RCPT). The message is sent to its end when a recipient was accepted (its
/// recipients count once it is delivered), then the connection ends with QUIT.
pub async fn send(port: u16, account: &str, n: usize) -> Vec<u8> {
    try_send(port, account, n).await.expect("the filter answers")
}

/// [`send`], with the error when the filter goes away mid-conversation.
pub async fn try_send(port: u16, account: &str, n: usize) -> std::io::Result<Vec<u8>> {
    let mut c = MtaClient::connect(([127, 0, 0, 1], port).into()).await?;
    c.negotiate(POSTFIX_OFFER).await?;
    c.macros(b'M', &[("{auth_authen}", account)]).await?;
    let reply = |r: outbound_guard::milter::client::StageResult| {
        r.kind().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no reply"))
    };
    let mut codes = vec![reply(c.mail_from(&format!("<{account}>"), &[]).await?)?];
    if codes[0] == b'c' {
        for i in 0..n {
            codes.push(reply(c.rcpt_to(&format!("<r{i}@example.net>")).await?)?);
        }
        if codes[1..].contains(&b'c') {
            c.message(&[("Subject", "load")], b"x\r\n").await?;
        }
    }
    c.write(Milter::Quit).await?;
    Ok(codes)
}

/// One local submission (a connection to the filter's local-submission socket, as Postfix's
/// cleanup opens for `sendmail(1)`) from `sender` to `n` external recipients; the reply letters
/// (MAIL, each RCPT, then the end of message when MAIL FROM was accepted).
pub async fn send_local(port: u16, sender: &str, n: usize) -> Vec<u8> {
    let mut c = MtaClient::connect(([127, 0, 0, 1], port).into()).await.expect("connect");
    c.negotiate(POSTFIX_OFFER).await.expect("negotiate");
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.expect("macros");
    let letter = |r: outbound_guard::milter::client::StageResult| r.kind().expect("a reply");
    let mut codes = vec![letter(c.mail_from(&format!("<{sender}>"), &[]).await.expect("MAIL"))];
    if codes[0] == b'c' {
        for i in 0..n {
            codes.push(letter(c.rcpt_to(&format!("<r{i}@example.net>")).await.expect("RCPT")));
        }
        codes.push(letter(c.message(&[("Subject", "report")], b"x\r\n").await.expect("message")));
    }
    c.write(Milter::Quit).await.expect("QUIT");
    codes
}
