//! Email delivery: the relay URL (`notify.smtp`), the message (typed lettre headers only,
//! so no value can start a header of its own), and one SMTP transaction per attempt.
//!
//! Relay URL forms:
//! - `smtp://host[:port]` — plain SMTP, port 25 by default: a local relay.
//! - `smtp://host[:port]?tls=starttls` — STARTTLS required, port 587 by default
//!   (`tls=required` is the same; `tls=opportunistic` uses it when offered).
//! - `smtps://host[:port]` — TLS from the first byte, port 465 by default.
//! - `user:password@` before the host, percent-encoded, for SMTP AUTH at a remote relay.

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
use crate::config::Config;

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No TLS: a relay on this host or a trusted network.
    Plain,
    /// STARTTLS, refused if the relay does not offer it.
    StartTls,
    /// STARTTLS if offered, plain otherwise.
    Opportunistic,
    /// TLS from the first byte (`smtps://`).
    Wrapper,
}

/// A parsed `notify.smtp`.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayUrl {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for RelayUrl {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl RelayUrl {
    /// Parses a relay URL (forms in the module documentation).
    ///
    /// # Errors
    /// [`NotifyError::SmtpUrl`] quoting the URL (password masked) and what is wrong.
    pub fn parse(text: &str) -> Result<RelayUrl, NotifyError> {
        let err = |why: &str| NotifyError::SmtpUrl { url: mask_password(text), why: why.to_owned() };
        let url = url::Url::parse(text).map_err(|e| err(&e.to_string()))?;
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(err("no host")),
        };
        let mut tls = None;
        for (k, v) in url.query_pairs() {
            match &*k {
                "tls" => tls = Some(v.into_owned()),
                other => return Err(err(&format!("unknown parameter \"{other}\""))),
            }
        }
        let (security, default_port) = match (url.scheme(), tls.as_deref()) {
            ("smtp", None | Some("none")) => (Security::Plain, 25),
            ("smtp", Some("starttls" | "required")) => (Security::StartTls, 587),
            ("smtp", Some("opportunistic")) => (Security::Opportunistic, 587),
            ("smtps", None | Some("wrapper")) => (Security::Wrapper, 465),
            ("smtp" | "smtps", Some(other)) => {
                return Err(err(&format!(
                    "tls=\"{other}\" is not one of starttls, opportunistic, none (smtp://) or wrapper (smtps://)"
                )));
            }
            (scheme, _) => return Err(err(&format!("scheme \"{scheme}\" is not smtp or smtps"))),
        };
        if url.path().len() > 1 {
            return Err(err("a relay URL has no path"));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| err("user or password is not UTF-8 after percent-decoding"))
        };
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, Some(pass)) => Some((decode(user)?, decode(pass)?)),
            (_, None) => return Err(err("a user needs a password (user:password@host)")),
        };
        Ok(RelayUrl { host, port: url.port().unwrap_or(default_port), security, credentials })
    }

    /// A transport for one attempt. Built per attempt (no pool): notifications are rare and
    /// a fresh connection never trips over one the relay closed meanwhile.
    fn transport(&self, helo: &str, timeout: Duration) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
        let tls_params = || {
            TlsParameters::new(self.host.clone())
                .map_err(|e| NotifyError::SmtpUrl { url: self.host.clone(), why: format!("tls: {e}") })
        };
        let tls = match self.security {
            Security::Plain => Tls::None,
            Security::StartTls => Tls::Required(tls_params()?),
            Security::Opportunistic => Tls::Opportunistic(tls_params()?),
            Security::Wrapper => Tls::Wrapper(tls_params()?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.as_str())
            .port(self.port)
            .tls(tls)
            .timeout(Some(timeout))
            .hello_name(ClientId::Domain(helo.to_owned()));
        if let Some((user, pass)) = &self.credentials {
            b = b.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        Ok(b.build())
    }
}

/// `user:secret@` shown as `user:***@` in errors and logs.
fn mask_password(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => text.to_owned(),
    }
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

/// Who gets a notification: `notify.recipients` plus the policy's `notify_recipients`,
/// without duplicates (compared case-insensitively).
pub fn recipients(config: &Config, policy: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let policy_list = std::iter::once(&config.policies.default)
        .chain(config.policies.rules.iter().map(|r| &r.settings))
        .find(|s| s.name == policy)
        .map(|s| s.notify_recipients.as_slice())
        .unwrap_or_default();
    for r in config.notify.recipients.iter().chain(policy_list) {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(r)) {
            out.push(r.clone());
        }
    }
    out
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
    let transport = relay.transport(helo, timeout)?;
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
    use super::*;

    #[test]
    fn relay_url_forms() {
        let r = RelayUrl::parse("smtp://127.0.0.1:25").unwrap();
        assert_eq!((r.host.as_str(), r.port, r.security), ("127.0.0.1", 25, Security::Plain));
        assert_eq!(r.credentials, None);
        let r = RelayUrl::parse("smtp://relay.example.com").unwrap();
        assert_eq!(r.port, 25);
        let r = RelayUrl::parse("smtp://u%40x:p%3Ass@relay.example.com?tls=starttls").unwrap();
        assert_eq!((r.port, r.security), (587, Security::StartTls));
        assert_eq!(r.credentials, Some(("u@x".into(), "p:ss".into())));
        assert!(!format!("{r:?}").contains("p:ss"), "password kept out of Debug");
        let r = RelayUrl::parse("smtp://relay.example.com:2525?tls=opportunistic").unwrap();
        assert_eq!((r.port, r.security), (2525, Security::Opportunistic));
        let r = RelayUrl::parse("smtps://relay.example.com").unwrap();
        assert_eq!((r.port, r.security), (465, Security::Wrapper));
        let r = RelayUrl::parse("smtp://[::1]:25").unwrap();
        assert_eq!(r.host, "::1");
    }

    #[test]
    fn relay_url_errors_quote_the_value_without_the_password() {
        for (url, needle) in [
            ("http://relay", "scheme \"http\""),
            ("smtp://relay?tls=maybe", "tls=\"maybe\""),
            ("smtp://relay?foo=1", "unknown parameter \"foo\""),
            ("smtp://user@relay", "needs a password"),
            ("smtp://relay/x", "no path"),
        ] {
            let e = RelayUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(e.contains(url.split('?').next().unwrap()), "{url}: {e}");
        }
        let e = RelayUrl::parse("ftp://u:secret@relay").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
