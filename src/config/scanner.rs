//! Where the scanners are: `verdict.spamd` and `verdict.rspamd` as typed addresses, parsed once
//! when the configuration is read and checked whether or not the source is switched on (a typo
//! should not wait for the day it is), so the clients are built without error paths of their
//! own.

use std::fmt;

/// `verdict.spamd`: the `host:port` spamd listens on — a name, an IPv4 address or an IPv6 one
/// in brackets, and a port. The name is resolved at each connection, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpamdAddress(String);

impl SpamdAddress {
    /// Parses `host:port`.
    ///
    /// # Errors
    /// What is wrong, in words for the configuration error.
    pub fn parse(addr: &str) -> Result<SpamdAddress, &'static str> {
        const FORM: &str = "must be HOST:PORT, e.g. \"127.0.0.1:783\" or \"[::1]:783\"";
        let (host, port) = addr.rsplit_once(':').ok_or(FORM)?;
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(FORM);
        }
        let plain_host =
            !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        let bracketed_ipv6 = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if plain_host || bracketed_ipv6 { Ok(SpamdAddress(addr.to_owned())) } else { Err(FORM) }
    }

    /// The address as written, for connecting and for messages.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `verdict.rspamd`: the base URL of rspamd's normal worker (http or https), with the
/// `/checkv2` endpoint the client posts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RspamdUrl {
    base: String,
    checkv2: url::Url,
}

impl RspamdUrl {
    /// Parses a base URL such as `http://127.0.0.1:11333`.
    ///
    /// # Errors
    /// [`RspamdUrlError::Url`] or [`RspamdUrlError::Scheme`].
    pub fn parse(base: &str) -> Result<RspamdUrl, RspamdUrlError> {
        let parsed = url::Url::parse(base).map_err(|source| RspamdUrlError::Url { url: base.to_owned(), source })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(RspamdUrlError::Scheme { url: base.to_owned() });
        }
        let checkv2 = parsed.join("checkv2").map_err(|source| RspamdUrlError::Url { url: base.to_owned(), source })?;
        Ok(RspamdUrl { base: base.to_owned(), checkv2 })
    }

    /// The base URL as written, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The `/checkv2` endpoint.
    pub fn checkv2(&self) -> &url::Url {
        &self.checkv2
    }
}

/// An rspamd base URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RspamdUrlError {
    #[error("invalid rspamd URL {url:?}")]
    Url {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("rspamd URL {url:?} must start with http:// or https://")]
    Scheme { url: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spamd_addresses() {
        for good in ["127.0.0.1:783", "[::1]:783", "spamd.example.org:783", "spam_d:1"] {
            assert_eq!(SpamdAddress::parse(good).map(|a| a.to_string()).as_deref(), Ok(good));
        }
        for bad in ["garbage", "127.0.0.1", "127.0.0.1:0", "::1:783", "[::1", ":783", "a b:783", "h:70000"] {
            assert!(SpamdAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rspamd_urls() {
        let u = RspamdUrl::parse("http://127.0.0.1:11333").unwrap();
        assert_eq!(u.base(), "http://127.0.0.1:11333");
        assert_eq!(u.checkv2().as_str(), "http://127.0.0.1:11333/checkv2");
        for bad in ["127.0.0.1:11333", "ftp://127.0.0.1/", "http//x"] {
            assert!(RspamdUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(RspamdUrl::parse("ftp://scanner").unwrap_err().to_string().contains("rspamd URL"));
    }
}
