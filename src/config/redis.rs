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
//! - `redis+cluster://[user:password@]host:port[,host:port…][/]` (and `rediss+cluster://`):
//!   a Redis Cluster. The addresses are seeds: any one that answers gives the map of the
//!   cluster, so listing a few (not necessarily all) survives the loss of some. A cluster has
//!   only database 0, so a path other than `/` or `/0` is an error rather than ignored.

use redis::sentinel::SentinelNodeConnectionInfo;
use redis::{Client, IntoConnectionInfo, TlsMode};

/// The schemes `state.redis_url` accepts.
const SCHEMES: [&str; 8] = [
    "redis://",
    "rediss://",
    "redis+unix://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
];

/// `state.redis_url`: the URL as written (compared on reload) and the target it names.
#[derive(Clone)]
pub struct RedisUrl {
    text: String,
    target: RedisTarget,
}

/// A `state.redis_url` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error("must be a redis://, rediss://, redis+unix://, redis+sentinel:// or redis+cluster:// URL")]
    Scheme,
    #[error("is not a usable Redis URL: {0}")]
    Unusable(#[from] redis::RedisError),
    #[error("is not a usable Redis Cluster URL: {0}")]
    Cluster(String),
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

/// What a `redis_url` names: one server, the sentinels that know the current master, or the
/// seed nodes of a Redis Cluster.
#[derive(Clone)]
pub enum RedisTarget {
    Direct(Client),
    Sentinel {
        sentinels: Vec<String>,
        service: String,
        node: SentinelNodeConnectionInfo,
    },
    /// `nodes` are one `redis://` (or `rediss://`) URL per seed, with the credentials: the
    /// cluster client is built from them at each connection (with the link's timeouts), and
    /// the subscription is made on one of them.
    Cluster {
        nodes: Vec<String>,
        addresses: Vec<String>,
    },
}

impl std::fmt::Debug for RedisTarget {
    /// Never prints a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Direct(c) => write!(f, "{:?}", c.get_connection_info().addr()),
            RedisTarget::Sentinel { sentinels, service, .. } => write!(f, "sentinels {sentinels:?} service {service}"),
            RedisTarget::Cluster { addresses, .. } => write!(f, "cluster {addresses:?}"),
        }
    }
}

impl RedisTarget {
    /// Parses a URL.
    ///
    /// # Errors
    /// When the URL is not one of the forms above.
    fn parse(url: &str) -> Result<RedisTarget, RedisUrlError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis+cluster://") {
            return parse_cluster(false, r);
        } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
            return parse_cluster(true, r);
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
            return Err(invalid("no sentinel address").into());
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

/// `[user:password@]host:port[,host:port…][/[0]]` of a cluster URL.
fn parse_cluster(tls: bool, rest: &str) -> Result<RedisTarget, RedisUrlError> {
    let invalid = RedisUrlError::Cluster;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(path, "" | "0") {
        return Err(invalid(format!("a cluster has only database 0, not /{path}")));
    }
    let addresses: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
    if addresses.is_empty() {
        return Err(invalid("no node address (host:port,host:port…)".into()));
    }
    for address in &addresses {
        // A seed without a port is more likely a typo than a cluster on 6379.
        let port = address.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0) {
            return Err(invalid(format!("{address:?} is not host:port")));
        }
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let nodes: Vec<String> = addresses
        .iter()
        .map(|a| match auth {
            Some(auth) => format!("{scheme}://{auth}@{a}/"),
            None => format!("{scheme}://{a}/"),
        })
        .collect();
    // The crate's own reading of each seed (and of the set: TLS for all or none).
    redis::cluster::ClusterClient::new(nodes.iter().map(String::as_str)).map_err(|e| invalid(e.to_string()))?;
    Ok(RedisTarget::Cluster { nodes, addresses })
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

    #[test]
    fn cluster_urls_name_their_seeds_and_bad_forms_say_what_is_wrong() {
        let t = RedisTarget::parse("redis+cluster://user:secret@10.0.0.1:7000,10.0.0.2:7001/").unwrap();
        let RedisTarget::Cluster { nodes, addresses } = &t else { panic!("not cluster") };
        assert_eq!(addresses, &["10.0.0.1:7000", "10.0.0.2:7001"]);
        assert_eq!(nodes, &["redis://user:secret@10.0.0.1:7000/", "redis://user:secret@10.0.0.2:7001/"]);
        assert!(!format!("{t:?}").contains("secret"), "{t:?}");
        assert!(matches!(RedisTarget::parse("redis+cluster://10.0.0.1:7000").unwrap(), RedisTarget::Cluster { .. }));
        assert!(matches!(RedisTarget::parse("redis+cluster://[::1]:7000/0").unwrap(), RedisTarget::Cluster { .. }));
        let tls = RedisTarget::parse("rediss+cluster://10.0.0.1:7000/").unwrap();
        assert!(matches!(&tls, RedisTarget::Cluster { nodes, .. } if nodes[0].starts_with("rediss://")));
        assert!(RedisUrl::parse("redis+cluster://10.0.0.1:7000/").is_ok());

        let error = |url: &str| RedisUrl::parse(url).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error("redis+cluster:///").contains("no node address"), "{}", error("redis+cluster:///"));
        assert!(error("redis+cluster://10.0.0.1/").contains("\"10.0.0.1\" is not host:port"));
        assert!(error("redis+cluster://10.0.0.1:7000,10.0.0.2:x/").contains("10.0.0.2:x"));
        assert!(error("redis+cluster://:7000/").contains("is not host:port"));
        assert_eq!(
            error("redis+cluster://10.0.0.1:7000/2"),
            "is not a usable Redis Cluster URL: a cluster has only database 0, not /2"
        );
        assert!(error("redis+clusters://10.0.0.1:7000/").contains("redis+cluster://"));
    }
}
