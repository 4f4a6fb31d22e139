//! Webhook delivery: one JSON POST per notice to `notify.webhook`, with the same facts as
//! the email plus a one-line `text` (the rendered subject) that chat services such as
//! Slack and Mattermost show as is. Any 2xx is delivered; everything else is retried by
//! the spool.

use std::time::Duration;

use serde::Serialize;

use super::NotifyError;
use super::notice::Notice;
use super::templates::Vars;
use crate::config::Config;
use crate::policy::clock::rfc3339;
use crate::policy::restriction::Counters;

/// The JSON body (documented in docs/notifications.md).
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// The deduplication id: the same id arriving twice is the same event.
    pub id: &'a str,
    pub event: &'static str,
    pub severity: &'static str,
    /// The rendered subject, for receivers that only show a `text` field.
    pub text: &'a str,
    pub account: &'a str,
    pub reason: &'a str,
    pub policy: &'a str,
    pub limit: Option<&'a str>,
    /// What led to a restriction, as the metrics label it (a limit's key, `spam`, `bounces`, `login_spread`,
    /// `manual`); null for other events.
    pub cause: Option<&'a str>,
    /// Whether a restriction was made until released because the account was restricted
    /// again within its policy's `escalate_window`.
    pub escalated: bool,
    pub counters: &'a Counters,
    pub since: String,
    pub until: Option<String>,
    pub node: &'a str,
    pub by: Option<&'a str>,
    pub release_command: String,
    pub admin_url: String,
}

impl<'a> Payload<'a> {
    pub fn new(id: &'a str, notice: &'a Notice, text: &'a str, config: &Config) -> Payload<'a> {
        let vars = Vars::new(notice, config);
        Payload {
            id,
            event: notice.kind.name(),
            severity: notice.kind.severity(),
            text,
            // Raw values: JSON escapes whatever they hold; the receiver decides how to show it.
            account: &notice.account,
            reason: &notice.reason,
            policy: &notice.policy,
            limit: notice.limit.as_deref(),
            cause: Some(notice.cause.as_str()).filter(|c| !c.is_empty()),
            escalated: notice.escalated,
            counters: &notice.counters,
            since: rfc3339(notice.since),
            until: notice.until.map(rfc3339),
            node: &notice.node,
            by: notice.by.as_deref(),
            release_command: vars.release_command,
            admin_url: vars.admin_url,
        }
    }
}

/// A client for webhook posts; one per notifier so connections can be reused.
///
/// # Errors
/// [`NotifyError::HttpClient`] when the TLS backend cannot be set up.
pub fn client(timeout: Duration) -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A redirect on a POST is a misconfigured URL, not something to follow blindly.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("outbound-guard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NotifyError::HttpClient(e.to_string()))
}

/// Posts `payload` to `url`.
///
/// # Errors
/// [`NotifyError::Webhook`] with the status or the connection error.
pub async fn post(client: &reqwest::Client, url: &str, payload: &Payload<'_>) -> Result<(), NotifyError> {
    let err = |message: String| NotifyError::Webhook { url: redact(url), message };
    let response = client
        .post(url)
        // Receivers that keep state can drop a retried duplicate by this key.
        .header("Idempotency-Key", payload.id)
        .json(payload)
        .send()
        .await
        // reqwest names the whole URL in its error, secret path and all; the log gets the
        // redacted one from `err`.
        .map_err(|e| err(error_chain(&e.without_url())))?;
    let status = response.status();
    if status.is_success() { Ok(()) } else { Err(err(format!("answered {status}"))) }
}

/// A webhook URL usually carries its secret in the path; logs get scheme, host and port.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(unparsable URL)".into(),
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

    /// A receiver that accepts the connection and never answers costs one timeout, not a
    /// notifier stuck for good.
    #[tokio::test]
    async fn a_receiver_that_never_answers_is_given_up_on_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            // Holds the connection open, reading nothing and answering nothing.
            std::future::pending::<()>().await;
            drop(socket);
        });
        let counters = Counters::default();
        let payload = Payload {
            id: "sender_restricted-webhook-1",
            event: "sender_restricted",
            severity: "high",
            text: "t",
            account: "a@example.com",
            reason: "r",
            policy: "default",
            limit: None,
            cause: None,
            escalated: false,
            counters: &counters,
            since: "2026-11-22T00:00:00Z".into(),
            until: None,
            node: "mx1",
            by: None,
            release_command: String::new(),
            admin_url: String::new(),
        };
        let started = std::time::Instant::now();
        let result = post(&client(Duration::from_millis(300)).unwrap(), &url, &payload).await;
        let elapsed = started.elapsed();
        let message = result.expect_err("no answer is a failure").to_string();
        assert!(message.contains("timed out"), "{message}");
        assert!(!message.contains("/hook"), "the URL's path stays out of the log: {message}");
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(10), "{elapsed:?}");
        held.abort();

        // A connection refused names the URL in reqwest's error too.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/secret123", closed.local_addr().unwrap());
        drop(closed);
        let message = post(&client(Duration::from_secs(5)).unwrap(), &url, &payload).await.unwrap_err().to_string();
        assert!(!message.contains("secret123"), "{message}");
    }

    #[test]
    fn redact_keeps_the_secret_out() {
        assert_eq!(redact("https://chat.example.com/hooks/abc123"), "https://chat.example.com/…");
        assert_eq!(redact("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080/…");
    }
}
