//! Short MTA conversations with a running filter, through the library's own MTA client.

use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::command::Command as Milter;

/// A current-thread runtime for a synchronous test that drives the client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// One message of the authenticated `account` to `n` external recipients; the reply letters
/// (MAIL, then each RCPT). The connection ends without a message body, as after a QUIT.
pub async fn send(port: u16, account: &str, n: usize) -> Vec<u8> {
    let mut c = MtaClient::connect(([127, 0, 0, 1], port).into()).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'M', &[("{auth_authen}", account)]).await.unwrap();
    let mut codes = vec![c.mail_from(&format!("<{account}>"), &[]).await.unwrap().kind().unwrap()];
    if codes[0] == b'c' {
        for i in 0..n {
            codes.push(c.rcpt_to(&format!("<r{i}@example.net>")).await.unwrap().kind().unwrap());
        }
    }
    c.write(Milter::Quit).await.unwrap();
    codes
}
