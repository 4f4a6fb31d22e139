//! Email delivery: the connection to the relay (`notify.smtp`, a [`RelayUrl`] parsed with the
//! configuration), the message (typed lettre headers only, so no value can start a header of
//! its own), and one SMTP transaction per attempt.

use std::time::Duration;

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message, SinglePart};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncTransport, Tokio1Executor};

use super::NotifyError;
use super::templates::Rendered;
use crate::config::{Config, PolicySettings, RelaySecurity, RelayUrl};

/// A transport to `relay` for one attempt. Built per attempt (no pool): notifications are rare
/// and a fresh connection never trips over one the relay closed meanwhile.
fn transport(
    relay: &RelayUrl,
    helo: &str,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
    let tls_params = || {
        TlsParameters::new(relay.host.clone())
            .map_err(|e| NotifyError::SmtpUrl { url: relay.host.clone(), why: format!("tls: {e}") })
    };
    let tls = match relay.security {
        RelaySecurity::Plain => Tls::None,
        RelaySecurity::StartTls => Tls::Required(tls_params()?),
        RelaySecurity::Opportunistic => Tls::Opportunistic(tls_params()?),
        RelaySecurity::Wrapper => Tls::Wrapper(tls_params()?),
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(relay.host.as_str())
        .port(relay.port)
        .tls(tls)
        .timeout(Some(timeout))
        .hello_name(ClientId::Domain(helo.to_owned()));
    if let Some((user, pass)) = &relay.credentials {
        b = b.credentials(Credentials::new(user.clone(), pass.clone()));
    }
    Ok(b.build())
}

/// `Auto-Submitted: auto-generated` (RFC 3834): vacation responders and ticket systems
/// must not answer a notification.
#[derive(Debug, Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

/// `X-Outbound-Guard-Event: <event>`, for the administrators' mail filters.
#[derive(Debug, Clone)]
struct EventHeader(&'static str);

impl Header for EventHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Outbound-Guard-Event")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(EventHeader("unknown"))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.to_owned())
    }
}

/// The settings of the policy named `policy` in `config`, if it still exists.
pub fn policy_settings<'a>(config: &'a Config, policy: &str) -> Option<&'a PolicySettings> {
    std::iter::once(&config.policies.default)
        .chain(config.policies.rules.iter().map(|r| &r.settings))
        .find(|s| s.name == policy)
}

/// Who gets a notification: `notify.recipients` plus the policy's `notify_recipients`,
/// without duplicates (compared case-insensitively).
pub fn recipients(config: &Config, policy: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let policy_list = policy_settings(config, policy).map(|s| s.notify_recipients.as_slice()).unwrap_or_default();
    for r in config.notify.recipients.iter().chain(policy_list) {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(r)) {
            out.push(r.clone());
        }
    }
    out
}

/// The address an account's own notice goes to: the account itself when it is an address
/// a message can carry in `To:` (a local part and a domain, nothing that could end a
/// header). `None` for a login without `@`, a domain restricted as a unit (`@example.com`)
/// or any name lettre would not accept as a mailbox.
pub fn account_address(account: &str) -> Option<String> {
    let (local, domain) = account.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || account.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let address: lettre::Address = account.parse().ok()?;
    Some(address.to_string())
}

/// Builds the message for `to`. `id` is the notice id: the Message-ID derives from it, so a
/// resend after a crash between the relay's acceptance and the spool update carries the
/// same Message-ID and can be recognised as the duplicate it is.
///
/// # Errors
/// [`NotifyError::Address`] for an unusable From or recipient list,
/// [`NotifyError::Message`] if lettre refuses the message.
pub fn build(
    config: &Config,
    to: &[String],
    rendered: &Rendered,
    event: &'static str,
    id: &str,
) -> Result<Message, NotifyError> {
    let from: Mailbox = config
        .notify
        .from
        .parse()
        .map_err(|e| NotifyError::Address { address: config.notify.from.clone(), why: format!("{e}") })?;
    let domain = config.notify.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let mut b = Message::builder()
        .from(from)
        .subject(rendered.subject.clone())
        .message_id(Some(format!("<{id}@{domain}>")))
        .date_now()
        .header(AutoSubmitted)
        .header(EventHeader(event));
    let mut any = false;
    for r in to {
        match r.parse::<Mailbox>() {
            Ok(m) => {
                b = b.to(m);
                any = true;
            }
            // One bad address must not cost the others their notification.
            Err(e) => tracing::error!(recipient = %r, "notification recipient skipped: {e}"),
        }
    }
    if !any {
        return Err(NotifyError::Address { address: to.join(", "), why: "no usable notification recipient".into() });
    }
    b.singlepart(SinglePart::plain(rendered.body.clone())).map_err(|e| NotifyError::Message(e.to_string()))
}

/// Sends one message through the relay.
///
/// # Errors
/// [`NotifyError::Smtp`] with the relay's reply or the connection error.
pub async fn send(relay: &RelayUrl, helo: &str, timeout: Duration, message: Message) -> Result<(), NotifyError> {
    let transport = transport(relay, helo, timeout)?;
    // lettre's own timeout covers each command; this bounds the whole transaction, so a
    // relay that trickles bytes cannot hold a delivery slot forever.
    match tokio::time::timeout(timeout * 4, transport.send(message)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            Err(NotifyError::Smtp { relay: format!("{}:{}", relay.host, relay.port), message: error_chain(&e) })
        }
        Err(_) => Err(NotifyError::Smtp {
            relay: format!("{}:{}", relay.host, relay.port),
            message: format!("no answer within {:?}", timeout * 4),
        }),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::account_address;

    #[test]
    fn only_an_address_gets_its_own_notice() {
        assert_eq!(account_address("alice@example.com").as_deref(), Some("alice@example.com"));
        for none in [
            "alice",
            "@customer.example",
            "alice@",
            "x\r\nBcc: victim@example.net\r\ny@example.com",
            "a b@example.com",
            "a@b@example.com",
        ] {
            assert_eq!(account_address(none), None, "{none:?}");
        }
    }
}
