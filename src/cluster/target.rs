//! Where Redis is: `state.redis_url` as a connectable target.
//!
//! - `redis://[user:password@]host:port/db`, `rediss://…` (TLS, rustls with the system's
//!   roots; `rediss://…/#insecure` skips verification), `redis+unix:///path?db=N`,
//!   `unix:///path` — one server, as the `redis` crate reads them.
//! - `redis+sentinel://[user:password@]host:port[,host:port…]/service[/db]` (and
//!   `rediss+sentinel://` for TLS to the sentinels and the master): the master of `service`
//!   is asked of the sentinels at every (re)connection, so a failover is one reconnection. The
//!   user and password are the master's; the sentinels are reached without.

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, IntoConnectionInfo, RedisResult, TlsMode};

/// A parsed `redis_url`.
#[derive(Clone)]
pub enum Target {
    Direct(Client),
    Sentinel { sentinels: Vec<String>, service: String, node: SentinelNodeConnectionInfo },
}

impl std::fmt::Debug for Target {
    /// Never prints a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Direct(c) => write!(f, "{:?}", c.get_connection_info().addr()),
            Target::Sentinel { sentinels, service, .. } => write!(f, "sentinels {sentinels:?} service {service}"),
        }
    }
}

impl Target {
    /// Parses a URL.
    ///
    /// # Errors
    /// When the URL is not one of the forms above.
    pub fn parse(url: &str) -> RedisResult<Target> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else {
            return Ok(Target::Direct(Client::open(url)?));
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
        Ok(Target::Sentinel { sentinels, service, node })
    }

    /// A client of the server to use now (for Sentinel: the current master).
    ///
    /// # Errors
    /// When no sentinel answers with a master.
    pub async fn client(&self) -> RedisResult<Client> {
        match self {
            Target::Direct(c) => Ok(c.clone()),
            Target::Sentinel { sentinels, service, node } => {
                let mut sentinel = SentinelClient::build(
                    sentinels.clone(),
                    service.clone(),
                    Some(node.clone()),
                    SentinelServerType::Master,
                )?;
                sentinel.async_get_client().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_debug_hides_passwords() {
        assert!(matches!(Target::parse("redis://:secret@127.0.0.1:6379/0").unwrap(), Target::Direct(_)));
        assert!(matches!(Target::parse("rediss://127.0.0.1:6380/").unwrap(), Target::Direct(_)));
        let t = Target::parse("redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2:26379/mymaster/2").unwrap();
        let Target::Sentinel { sentinels, service, .. } = &t else { panic!("not sentinel") };
        assert_eq!(sentinels, &["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]);
        assert_eq!(service, "mymaster");
        assert!(!format!("{t:?}").contains("secret"));
        assert!(Target::parse("redis+sentinel://10.0.0.1:26379").is_err());
        assert!(Target::parse("redis+sentinel://10.0.0.1:26379/m/x").is_err());
    }
}
