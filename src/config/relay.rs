//! Where notifications are relayed: `notify.smtp` as a typed [`RelayUrl`], parsed once when
//! the configuration is read, so the notifier and the policy (which exempts the relay's login)
//! use it without error paths of their own.
//!
//! Forms:
//! - `smtp://host[:port]` — plain SMTP, port 25 by default: a local relay.
//! - `smtp://host[:port]?tls=starttls` — STARTTLS required, port 587 by default
//!   (`tls=required` is the same; `tls=opportunistic` uses it when offered).
//! - `smtps://host[:port]` — TLS from the first byte, port 465 by default.
//! - `user:password@` before the host, percent-encoded, for SMTP AUTH at a remote relay.

/// A relay URL that cannot be used: the URL as shown (password masked) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{url}\": {why}")]
pub struct RelayUrlError {
    pub url: String,
    pub why: String,
}

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelaySecurity {
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
    pub security: RelaySecurity,
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
    /// [`RelayUrlError`] quoting the URL (password masked) and what is wrong.
    pub fn parse(text: &str) -> Result<RelayUrl, RelayUrlError> {
        let err = |why: &str| RelayUrlError { url: mask_password(text), why: why.to_owned() };
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
            ("smtp", None | Some("none")) => (RelaySecurity::Plain, 25),
            ("smtp", Some("starttls" | "required")) => (RelaySecurity::StartTls, 587),
            ("smtp", Some("opportunistic")) => (RelaySecurity::Opportunistic, 587),
            ("smtps", None | Some("wrapper")) => (RelaySecurity::Wrapper, 465),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_url_forms() {
        let r = RelayUrl::parse("smtp://127.0.0.1:25").unwrap();
        assert_eq!((r.host.as_str(), r.port, r.security), ("127.0.0.1", 25, RelaySecurity::Plain));
        assert_eq!(r.credentials, None);
        let r = RelayUrl::parse("smtp://relay.example.com").unwrap();
        assert_eq!(r.port, 25);
        let r = RelayUrl::parse("smtp://u%40x:p%3Ass@relay.example.com?tls=starttls").unwrap();
        assert_eq!((r.port, r.security), (587, RelaySecurity::StartTls));
        assert_eq!(r.credentials, Some(("u@x".into(), "p:ss".into())));
        assert!(!format!("{r:?}").contains("p:ss"), "password kept out of Debug");
        let r = RelayUrl::parse("smtp://relay.example.com:2525?tls=opportunistic").unwrap();
        assert_eq!((r.port, r.security), (2525, RelaySecurity::Opportunistic));
        let r = RelayUrl::parse("smtps://relay.example.com").unwrap();
        assert_eq!((r.port, r.security), (465, RelaySecurity::Wrapper));
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
