//! Where Redis is: `state.redis_url` as a [`RedisUrl`], parsed once when the configuration is
//! read, so cluster mode starts without a parse and an error path of its own.
//!
//! - `redis://[user:password@]host:port/db`, `rediss://…` (TLS, rustls with the system's
//!   roots; `rediss://…/#insecure` skips verification), `redis+unix:///path?db=N`,
//!   `unix:///path` — one server, as the `redis` crate reads them.
//! - `redis+sentinel://[user:password@]host:port[,host:port…]/service[/db]` (and
//!   `rediss+sentinel://` for TLS to the sentinels and the master): the master of `service`
//!   is asked of the sentinels at every (re)connection, so a failover is one reconnection. The
//!   user and password are the master's; the sentinels are reached without.

use redis::sentinel::SentinelNodeConnectionInfo;
use redis::{Client, IntoConnectionInfo, RedisResult, TlsMode};

/// The schemes `state.redis_url` accepts.
const SCHEMES: [&str; 6] =
    ["redis://", "rediss://", "redis+unix://", "unix://", "redis+sentinel://", "rediss+sentinel://"];

/// `state.redis_url`: the URL as written (compared on reload) and the target it names.
#[derive(Clone)]
pub struct RedisUrl {
    text: String,
    target: RedisTarget,
}

/// A `state.redis_url` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error("must be a redis://, rediss://, redis+unix:// or redis+sentinel:// URL")]
    Scheme,
    #[error("is not a usable Redis URL: {0}")]
    Unusable(#[from] redis::RedisError),
}

impl RedisUrl {
    /// Parses a URL of one of the forms in the module documentation.
    ///
    /// # Errors
    /// [`RedisUrlError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<RedisUrl, RedisUrlError> {
        if !SCHEMES.iter().any(|s| text.starts_with(s)) {
            return Err(RedisUrlError::Scheme);
        }
        Ok(RedisUrl { text: text.to_owned(), target: RedisTarget::parse(text)? })
    }

    /// The server or sentinels to connect to.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }
}

impl PartialEq for RedisUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for RedisUrl {}

impl std::fmt::Debug for RedisUrl {
    /// Never prints a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.target.fmt(f)
    }
}

/// What a `redis_url` names: one server, or the sentinels that know the current master.
#[derive(Clone)]
pub enum RedisTarget {
    Direct(Client),
    Sentinel { sentinels: Vec<String>, service: String, node: SentinelNodeConnectionInfo },
}

impl std::fmt::Debug for RedisTarget {
    /// Never prints a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Direct(c) => write!(f, "{:?}", c.get_connection_info().addr()),
            RedisTarget::Sentinel { sentinels, service, .. } => write!(f, "sentinels {sentinels:?} service {service}"),
        }
    }
}

impl RedisTarget {
    /// Parses a URL.
    ///
    /// # Errors
    /// When the URL is not one of the forms above.
    fn parse(url: &str) -> RedisResult<RedisTarget> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else {
            return Ok(RedisTarget::Direct(Client::open(url)?));
        };
        let invalid = |what: &str| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "sentinel URL", what.to_owned()))
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| invalid("no /service after the sentinel addresses"))?;
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let service = parts.next().ok_or_else(|| invalid("no service name"))?.to_owned();
        let db: i64 = match parts.next() {
            Some(d) => d.parse().map_err(|_| invalid("the database is not a number"))?,
            None => 0,
        };
        let scheme = if tls { "rediss" } else { "redis" };
        let sentinels: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{h}")).collect();
        if sentinels.is_empty() {
            return Err(invalid("no sentinel address"));
        }
        // The master's settings (user, password, db) in the crate's own URL reading.
        let master_url = match auth {
            Some(a) => format!("redis://{a}@sentinel-master/{db}"),
            None => format!("redis://sentinel-master/{db}"),
        };
        let settings = master_url.as_str().into_connection_info()?.redis_settings().clone();
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(settings);
        if tls {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        Ok(RedisTarget::Sentinel { sentinels, service, node })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_debug_hides_passwords() {
        assert!(matches!(RedisTarget::parse("redis://:secret@127.0.0.1:6379/0").unwrap(), RedisTarget::Direct(_)));
        assert!(matches!(RedisTarget::parse("rediss://127.0.0.1:6380/").unwrap(), RedisTarget::Direct(_)));
        let t = RedisTarget::parse("redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2:26379/mymaster/2").unwrap();
        let RedisTarget::Sentinel { sentinels, service, .. } = &t else { panic!("not sentinel") };
        assert_eq!(sentinels, &["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]);
        assert_eq!(service, "mymaster");
        assert!(!format!("{t:?}").contains("secret"));
        assert!(RedisTarget::parse("redis+sentinel://10.0.0.1:26379").is_err());
        assert!(matches!(RedisUrl::parse("http://127.0.0.1:6379"), Err(RedisUrlError::Scheme)));
        let u = RedisUrl::parse("redis://:secret@127.0.0.1:6379/0").unwrap();
        assert!(!format!("{u:?}").contains("secret"));
        assert_eq!(u, RedisUrl::parse("redis://:secret@127.0.0.1:6379/0").unwrap());
        assert!(RedisTarget::parse("redis+sentinel://10.0.0.1:26379/m/x").is_err());
    }
}
