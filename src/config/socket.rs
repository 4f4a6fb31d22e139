//! Where the milter listens: `inet:HOST:PORT` (also `inet:[::1]:PORT`, and Sendmail's
//! `inet:PORT@HOST` / `inet6:PORT@HOST`) or `unix:PATH`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// A milter listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const HELP: &str = "must be \"inet:HOST:PORT\" (e.g. \"inet:127.0.0.1:7357\") or \"unix:PATH\"";
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if path.is_empty() {
                return Err("names no socket path; write e.g. \"unix:/run/outbound-guard/milter.sock\"");
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("inet:").or_else(|| s.strip_prefix("inet6:")).ok_or(HELP)?;
        if let Ok(addr) = rest.parse::<SocketAddr>() {
            return Ok(ListenAddr::Inet(addr));
        }
        // Sendmail's form: PORT@HOST.
        if let Some((port, host)) = rest.split_once('@') {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if let (Ok(port), Ok(ip)) = (port.parse::<u16>(), host.parse::<IpAddr>()) {
                return Ok(ListenAddr::Inet(SocketAddr::new(ip, port)));
            }
        }
        Err(HELP)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Inet(addr) => write!(f, "inet:{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!("inet:127.0.0.1:7357".parse(), Ok(ListenAddr::Inet("127.0.0.1:7357".parse().unwrap())));
        assert_eq!("inet:[::1]:7357".parse(), Ok(ListenAddr::Inet("[::1]:7357".parse().unwrap())));
        assert_eq!("inet:7357@127.0.0.1".parse(), Ok(ListenAddr::Inet("127.0.0.1:7357".parse().unwrap())));
        assert_eq!("unix:/run/x.sock".parse(), Ok(ListenAddr::Unix("/run/x.sock".into())));
        for bad in ["127.0.0.1:7357", "inet:localhost", "inet:1.2.3.4:99999", "unix:", "tcp:1.2.3.4:1"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
