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

#[cfg(test)]
mod tests {
    use super::*;

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
