//! A client for rspamd's HTTP scan endpoint, `POST /checkv2` on the normal worker
//! (default port 11333).
//!
//! The message (at most `max_scan_bytes`, see [`super`]) is the request body; the envelope goes
//! in rspamd's request headers: `IP`, `Helo`, `From`, one `Rcpt` per recipient, `User` (the
//! account: rspamd then treats the sender as authenticated and applies its outbound settings)
//! and `Queue-Id`. The reply is JSON; we read `action`, `score` and `required_score`.
//!
//! Spam is an action of `reject`, `add header`, `rewrite subject`, `discard` or `quarantine`;
//! ham is `no action`, `greylist` or `soft reject` (a temporary refusal for rate limits or
//! greylisting, not a judgement of the content).
//!
//! One [`RspamdClient`] keeps a pool of keep-alive connections (reqwest), so share it (it is
//! cheap to clone). rspamd 3.4's normal worker answers every request with
//! `Connection: close` whatever we ask, so there each check opens a connection; a proxy in
//! front of rspamd, or a later rspamd, gets its connections reused.
//!
//! Connecting has its own short bound; the whole request, reply included, is bounded by
//! `verdict.timeout`; the reply body by [`MAX_REPLY`]. Failures never decide about the mail
//! (see [`super`]). HTTP proxies from the environment are ignored: the scanner is ours.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::spamd::MAX_CONNECT_TIMEOUT;
use super::{ScanError, ScanRequest, Source, Verdict, clip, header_safe};
use crate::config::RspamdUrl;

/// rspamd's reply lists every symbol that fired, with options: a few kilobytes normally.
pub const MAX_REPLY: usize = 1024 * 1024;

/// An rspamd at one base URL.
#[derive(Debug, Clone)]
pub struct RspamdClient {
    http: reqwest::Client,
    url: reqwest::Url,
    base: String,
    timeout: Duration,
    max_bytes: usize,
}

/// Whether an rspamd action means spam; `None` for an action we do not know.
pub(crate) fn action_is_spam(action: &str) -> Option<bool> {
    // Headers write "add header", the JSON reply the same; some tools write "add_header".
    let known: [(&str, bool); 8] = [
        ("reject", true),
        ("add header", true),
        ("rewrite subject", true),
        ("discard", true),
        ("quarantine", true),
        ("no action", false),
        ("greylist", false),
        ("soft reject", false),
    ];
    let same = |a: &str, b: &str| {
        a.len() == b.len()
            && a.bytes()
                .zip(b.bytes())
                .all(|(x, y)| x.eq_ignore_ascii_case(&y) || (x == b'_' && y == b' ') || (x == b' ' && y == b'_'))
    };
    known.iter().find(|(name, _)| same(action, name)).map(|&(_, spam)| spam)
}

/// The part of the `/checkv2` reply we use.
#[derive(Debug, Deserialize)]
struct Reply {
    action: Option<String>,
    score: Option<f64>,
    required_score: Option<f64>,
    error: Option<String>,
}

/// The HTTP client for rspamd could not be set up (its TLS backend failed to initialise).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the HTTP client for rspamd at {url:?}")]
pub struct RspamdClientError {
    url: String,
    #[source]
    source: reqwest::Error,
}

impl RspamdClient {
    /// A client for the rspamd normal worker at `base` (e.g. `http://127.0.0.1:11333`).
    /// `timeout` bounds each whole request; at most `max_bytes` of each message are sent.
    ///
    /// # Errors
    /// [`RspamdClientError`] when the HTTP client cannot be built.
    pub fn new(base: &RspamdUrl, timeout: Duration, max_bytes: usize) -> Result<RspamdClient, RspamdClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("outbound-guard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| RspamdClientError { url: base.base().to_owned(), source })?;
        Ok(RspamdClient { http, url: base.checkv2().clone(), base: base.base().to_owned(), timeout, max_bytes })
    }

    /// The base URL it talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Asks rspamd about one message.
    ///
    /// # Errors
    /// [`ScanError`]: connection refused or not accepted in time, the request over `timeout`,
    /// a non-200 status, a reply that is not rspamd's JSON or is over [`MAX_REPLY`]; an
    /// envelope value with a control character ([`ScanError::Request`]).
    pub async fn check(&self, request: &ScanRequest<'_>) -> Result<Verdict, ScanError> {
        let headers = self.headers(request)?;
        let body = request.message[..request.message.len().min(self.max_bytes)].to_vec();
        let result = self.http.post(self.url.clone()).headers(headers).body(body).send().await;
        let mut response = result.map_err(|e| self.transport_error(e))?;
        let status = response.status();

        let mut reply = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport_error(e))? {
            if reply.len() + chunk.len() > MAX_REPLY {
                return Err(self.protocol(format!("a reply over {MAX_REPLY} bytes")));
            }
            reply.extend_from_slice(&chunk);
        }
        let quoted = || format!("{:?}", clip(&String::from_utf8_lossy(&reply)));
        let parsed: Option<Reply> = serde_json::from_slice(&reply).ok();
        if !status.is_success() {
            let why = parsed.and_then(|r| r.error).map_or_else(quoted, |e| format!("{:?}", clip(&e)));
            return Err(self.protocol(format!("status {} {why}", status.as_u16())));
        }
        let Some(reply) = parsed else {
            return Err(self.protocol(format!("not rspamd's JSON: {}", quoted())));
        };
        if let Some(e) = reply.error {
            return Err(self.protocol(format!("error {:?}", clip(&e))));
        }
        let Some(action) = reply.action else {
            return Err(self.protocol("a reply without an action".into()));
        };
        let Some(spam) = action_is_spam(&action) else {
            return Err(self.protocol(format!("unknown action {:?}", clip(&action))));
        };
        let finite = |n: Option<f64>| n.filter(|n| n.is_finite());
        let (score, required) = (finite(reply.score), finite(reply.required_score));
        let mut detail = format!("action: {}", clip(&action));
        if let (Some(s), Some(r)) = (score, required) {
            detail.push_str(&format!(" [{s} / {r}]"));
        }
        Ok(Verdict { spam, score, required, source: Source::Rspamd, detail })
    }

    fn headers(&self, request: &ScanRequest<'_>) -> Result<HeaderMap, ScanError> {
        let mut map = HeaderMap::new();
        let mut add = |name: &'static str, value: &str| -> Result<(), ScanError> {
            let refuse = || ScanError::Request { scanner: Source::Rspamd, field: name, value: value.to_owned() };
            if !header_safe(value) {
                return Err(refuse());
            }
            let v = HeaderValue::from_str(value).map_err(|_| refuse())?;
            map.append(HeaderName::from_static_lower(name), v);
            Ok(())
        };
        if let Some(ip) = request.ip {
            add("IP", &ip.to_string())?;
        }
        if let Some(helo) = request.helo {
            add("Helo", helo)?;
        }
        if let Some(from) = request.from {
            add("From", from)?;
        }
        for rcpt in request.rcpt {
            add("Rcpt", rcpt)?;
        }
        if let Some(user) = request.user {
            add("User", user)?;
        }
        if let Some(id) = request.queue_id {
            add("Queue-Id", id)?;
        }
        Ok(map)
    }

    fn transport_error(&self, e: reqwest::Error) -> ScanError {
        if e.is_timeout() && !e.is_connect() {
            ScanError::Timeout { scanner: Source::Rspamd, addr: self.base.clone(), after: self.timeout }
        } else if e.is_connect() {
            ScanError::Connect { scanner: Source::Rspamd, addr: self.base.clone(), source: Box::new(e) }
        } else {
            ScanError::Io { scanner: Source::Rspamd, addr: self.base.clone(), source: Box::new(e) }
        }
    }

    fn protocol(&self, detail: String) -> ScanError {
        ScanError::Protocol { scanner: Source::Rspamd, addr: self.base.clone(), detail }
    }
}

/// `HeaderName::from_static` wants lower case; the names above are written as rspamd documents
/// them (HTTP header names are case-insensitive).
trait FromStaticLower {
    fn from_static_lower(name: &'static str) -> HeaderName;
}

impl FromStaticLower for HeaderName {
    fn from_static_lower(name: &'static str) -> HeaderName {
        HeaderName::from_bytes(name.as_bytes()).expect("a valid header name literal")
    }
}
