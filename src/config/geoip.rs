//! `[geoip] database`: a MaxMind DB file (GeoLite2-Country, DB-IP lite, or any database with
//! `country.iso_code`) opened while the configuration is validated, so that a missing or broken
//! file is a configuration error at start and at reload, and read once: a reload opens the
//! file anew, nothing else does. Only the country's ISO code is ever looked up.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maxminddb::{Reader, path};

/// A country as the database names it: two ASCII capital letters (ISO 3166-1 alpha-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CountryCode(pub [u8; 2]);

impl CountryCode {
    /// The code of `text` when it is two ASCII letters (upper-cased).
    pub fn parse(text: &str) -> Option<CountryCode> {
        match text.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(CountryCode([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", char::from(self.0[0]), char::from(self.0[1]))
    }
}

/// An opened country database. Cheap to clone (the file's bytes are shared); two are equal
/// when read from the same path, so an unchanged configuration compares equal after a reload.
#[derive(Clone)]
pub struct GeoIp {
    path: PathBuf,
    reader: Arc<Reader<Vec<u8>>>,
}

impl GeoIp {
    /// Reads the database at `path`.
    ///
    /// # Errors
    /// Why the file cannot be read or is not a MaxMind DB, in words for the configuration error.
    pub fn open(path: &Path) -> Result<GeoIp, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let reader =
            Reader::from_source(bytes).map_err(|e| format!("{} is not a MaxMind DB database: {e}", path.display()))?;
        Ok(GeoIp { path: path.to_owned(), reader: Arc::new(reader) })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database's own name for its kind (`GeoLite2-Country`, `DBIP-Country-Lite`, ...).
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The country of `ip` (an IPv4-mapped IPv6 address is looked up as the IPv4 address);
    /// `None` when the database does not know it or has no country for it.
    pub fn country(&self, ip: IpAddr) -> Option<CountryCode> {
        let found = self.reader.lookup(ip.to_canonical()).ok()?;
        let code: &str = found.decode_path(&path!["country", "iso_code"]).ok()??;
        CountryCode::parse(code)
    }
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoIp").field("path", &self.path).field("type", &self.database_type()).finish()
    }
}

impl PartialEq for GeoIp {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

/// The tests' MaxMind DB writer, shared with the integration tests.
#[cfg(test)]
#[path = "../../tests/common/mmdb.rs"]
pub(crate) mod test_mmdb;

#[cfg(test)]
mod tests {
    use super::test_mmdb as mmdb;
    use super::*;
    use crate::config::{Config, ConfigError, Invalid};

    /// The configuration error of `text` read from `dir`/plugin.toml.
    fn invalid(dir: &Path, text: &str) -> Invalid {
        match Config::parse(&dir.join("plugin.toml"), text) {
            Err(ConfigError::Invalid(e)) => *e,
            other => panic!("expected an invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn the_database_is_opened_relative_to_the_file_or_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let e = invalid(dir.path(), "[policy.default]\n\n[geoip]\ndatabase = \"missing.mmdb\"\n");
        assert_eq!(e.key.as_deref(), Some("geoip.database"));
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("cannot read") && e.message.contains("missing.mmdb"), "{}", e.message);

        std::fs::write(dir.path().join("broken.mmdb"), b"\xAB\xCD\xEFMaxMind.com nothing").unwrap();
        let e = invalid(dir.path(), "[geoip]\ndatabase = \"broken.mmdb\"\n");
        assert_eq!(e.key.as_deref(), Some("geoip.database"));
        assert!(e.message.contains("is not a MaxMind DB database"), "{}", e.message);

        mmdb::documentation_countries().write(&dir.path().join("countries.mmdb"));
        let config =
            Config::parse(&dir.path().join("plugin.toml"), "[geoip]\ndatabase = \"countries.mmdb\"\n").unwrap();
        let geoip = config.geoip.expect("opened");
        assert_eq!(geoip.path(), dir.path().join("countries.mmdb"));
        assert_eq!(geoip.database_type(), "Test-Country");
        assert_eq!(geoip.country("2001:db8:2::1".parse().unwrap()), Some(CountryCode(*b"DK")));
    }

    #[test]
    fn counting_countries_needs_the_database_and_limits_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let e = invalid(dir.path(), "[policy.default]\nmax_client_countries_per_day = 2\n");
        assert_eq!(e.key.as_deref(), Some("policy.default.max_client_countries_per_day"));
        assert!(e.message.contains("needs [geoip] database"), "{}", e.message);
        let rule = "[[policy.rule]]\nname = \"r\"\npriority = 1\nfrom = [\"a@example.com\"]\n\
                    max_client_countries_per_day = 1\n";
        let e = invalid(dir.path(), rule);
        assert_eq!(e.key.as_deref(), Some("policy.rule[0].max_client_countries_per_day"));

        let e = invalid(dir.path(), "[policy.default]\nmax_client_networks_per_hour = 12\n");
        assert_eq!(e.key.as_deref(), Some("policy.default.max_client_networks_per_hour"));
        assert!(e.message.contains("between 0 and 11"), "{}", e.message);
        let e = invalid(dir.path(), "[policy.default]\nlogin_spread_action = \"ban\"\n");
        assert_eq!(e.key.as_deref(), Some("policy.default.login_spread_action"));

        let config =
            Config::parse(&dir.path().join("plugin.toml"), "[policy.default]\nmax_client_networks_per_hour = 11\n")
                .unwrap();
        assert_eq!(config.policies.default.max_client_networks_per_hour, 11);
        assert_eq!(config.policies.default.max_client_countries_per_day, 0);
        assert_eq!(config.policies.default.login_spread_action, crate::config::LimitAction::Block);
        assert!(config.geoip.is_none());
    }

    #[test]
    fn country_codes_are_two_letters_upper_cased() {
        assert_eq!(CountryCode::parse("se"), Some(CountryCode(*b"SE")));
        assert_eq!(CountryCode::parse("SE").unwrap().to_string(), "SE");
        assert_eq!(CountryCode::parse("SWE"), None);
        assert_eq!(CountryCode::parse("4X"), None);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("country.mmdb");
        std::fs::write(&file, b"not a database").unwrap();
        let why = GeoIp::open(&file).unwrap_err();
        assert!(why.contains("is not a MaxMind DB database"), "{why}");
        let why = GeoIp::open(&dir.path().join("missing.mmdb")).unwrap_err();
        assert!(why.starts_with("cannot read"), "{why}");
    }
}
