//! Where each authenticated account sent from lately: the client networks of the last hour
//! and the countries of the last day, for the login-spread signal (a stolen password used by a
//! botnet from many places at once).
//!
//! Kept apart from [`super::accounts::AccountTable`] on purpose: most accounts never have it
//! (only authenticated mail under a policy with the signal on is noted), and the 64-byte
//! account slot stays as it is for everyone. Each tracked account holds a fixed set of slots,
//! one network (or country) more than the highest limit allows, so its memory is bounded
//! whatever a botnet does: a new network takes a free slot, or one that aged out, or the
//! oldest. [`LoginTable::evict_idle`] drops accounts with nothing seen in the last day.

use std::fmt;
use std::net::IpAddr;

use compact_str::CompactString;
use dashmap::DashMap;

use crate::config::{CountryCode, LOGIN_SPREAD_MAX_COUNTRIES, LOGIN_SPREAD_MAX_NETWORKS};

/// Networks an account's entry holds: one more than the highest limit, so the one that
/// passes it is seen.
pub const NETWORK_SLOTS: usize = LOGIN_SPREAD_MAX_NETWORKS as usize + 1;
/// Countries an account's entry holds, likewise.
pub const COUNTRY_SLOTS: usize = LOGIN_SPREAD_MAX_COUNTRIES as usize + 1;

/// How long a network counts: the rolling hour of `max_client_networks_per_hour`.
pub const NETWORK_WINDOW_SECS: u32 = 3600;
/// How long a country counts: the rolling day of `max_client_countries_per_day`.
pub const COUNTRY_WINDOW_SECS: u32 = 24 * 3600;

/// A client network: an IPv4 /24 or an IPv6 /48, in six bytes. An IPv4 network is written
/// behind `ff 00 00` — the multicast range, which is never a client's source address — so it
/// cannot be taken for an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Network([u8; 6]);

impl Network {
    /// The network of a client address (an IPv4-mapped IPv6 address is its IPv4 address).
    pub fn of(ip: IpAddr) -> Network {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Network([0xff, 0, 0, a, b, c])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Network([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [0xff, 0, 0, a, b, c] => write!(f, "{a}.{b}.{c}.0/24"),
            [a, b, c, d, e, g] => {
                let addr = std::net::Ipv6Addr::new(
                    u16::from_be_bytes([a, b]),
                    u16::from_be_bytes([c, d]),
                    u16::from_be_bytes([e, g]),
                    0,
                    0,
                    0,
                    0,
                    0,
                );
                write!(f, "{addr}/48")
            }
        }
    }
}

/// One account's recent places: slots of (what, last seen), a last-seen of 0 marks a free
/// slot. Times are seconds since the epoch in a `u32` (good until 2106), and the arrays are
/// kept apart rather than as pairs so that no slot pays for padding: 160 bytes in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginEntry {
    networks: [Network; NETWORK_SLOTS],
    network_seen: [u32; NETWORK_SLOTS],
    countries: [CountryCode; COUNTRY_SLOTS],
    country_seen: [u32; COUNTRY_SLOTS],
    /// The hour number (`Timestamp::hour`) the last alert went out in, under the `alert`
    /// action; 0 = never.
    alerted_hour: u32,
}

/// How many distinct places an account sent from, as of the message just noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spread {
    /// Client networks within the last hour.
    pub networks: u32,
    /// Countries within the last day.
    pub countries: u32,
}

/// Puts `item` seen at `now` in `items`/`seen`: refreshes its slot, or takes a free or aged-out
/// one, or the oldest. Returns how many slots were seen within `window` of `now`.
fn note<T: Copy + PartialEq>(items: &mut [T], seen: &mut [u32], item: T, now: u32, window: u32) -> u32 {
    let fresh = |t: u32| t != 0 && now.saturating_sub(t) < window;
    let mut slot = None;
    let mut oldest = 0;
    for i in 0..items.len() {
        if seen[i] != 0 && items[i] == item {
            slot = Some(i);
            break;
        }
        if seen[i] < seen[oldest] {
            oldest = i;
        }
    }
    let i = slot.unwrap_or(oldest);
    items[i] = item;
    // 0 marks a free slot; the first second of 1970 is no client's.
    seen[i] = now.max(1);
    seen.iter().filter(|&&t| fresh(t)).count() as u32
}

/// The items seen within `window` of `now`, oldest first.
fn recent<T: Copy>(items: &[T], seen: &[u32], now: u32, window: u32) -> Vec<T> {
    let mut list: Vec<(u32, T)> = seen
        .iter()
        .zip(items)
        .filter(|(t, _)| **t != 0 && now.saturating_sub(**t) < window)
        .map(|(t, i)| (*t, *i))
        .collect();
    list.sort_by_key(|(t, _)| *t);
    list.into_iter().map(|(_, i)| i).collect()
}

impl LoginEntry {
    /// Notes a message from `network` (and `country`, when known and counted) at `now`.
    pub fn note(&mut self, network: Network, country: Option<CountryCode>, now: u32) -> Spread {
        let networks = note(&mut self.networks, &mut self.network_seen, network, now, NETWORK_WINDOW_SECS);
        let countries = match country {
            Some(c) => note(&mut self.countries, &mut self.country_seen, c, now, COUNTRY_WINDOW_SECS),
            None => {
                self.country_seen.iter().filter(|&&t| t != 0 && now.saturating_sub(t) < COUNTRY_WINDOW_SECS).count()
                    as u32
            }
        };
        Spread { networks, countries }
    }

    /// The networks of the last hour, oldest first.
    pub fn recent_networks(&self, now: u32) -> Vec<Network> {
        recent(&self.networks, &self.network_seen, now, NETWORK_WINDOW_SECS)
    }

    /// The countries of the last day, oldest first.
    pub fn recent_countries(&self, now: u32) -> Vec<CountryCode> {
        recent(&self.countries, &self.country_seen, now, COUNTRY_WINDOW_SECS)
    }

    /// Whether the alert of `hour` is still to go out; marks it as gone out.
    pub fn first_alert_this_hour(&mut self, hour: u32) -> bool {
        let first = self.alerted_hour != hour;
        self.alerted_hour = hour;
        first
    }

    /// Forgets every place but the one of `network` (and `country`) at `now`: what led to a
    /// restriction is not counted again after the account is released.
    pub fn restart(&mut self, network: Network, country: Option<CountryCode>, now: u32) {
        let alerted_hour = self.alerted_hour;
        *self = LoginEntry { alerted_hour, ..LoginEntry::default() };
        self.note(network, country, now);
    }

    /// Whether nothing was seen within the last day of `now` (the entry can go).
    fn idle(&self, now: u32) -> bool {
        let stale = |t: &u32| *t == 0 || now.saturating_sub(*t) >= COUNTRY_WINDOW_SECS;
        self.network_seen.iter().all(stale) && self.country_seen.iter().all(stale)
    }
}

/// Every authenticated account's recent places, for accounts under a policy with the
/// login-spread signal on.
#[derive(Default)]
pub struct LoginTable {
    map: DashMap<CompactString, LoginEntry, ahash::RandomState>,
}

impl LoginTable {
    /// Notes a message of `account` from `network` (and `country`) at `now` (seconds since the
    /// epoch), then hands the account's spread and its entry, still locked, to `over`, which
    /// returns what the caller needs when the spread passes its limits (the evidence, read and
    /// the entry reset under the same lock).
    pub fn note<R>(
        &self,
        account: &str,
        network: Network,
        country: Option<CountryCode>,
        now: u32,
        over: impl FnOnce(Spread, &mut LoginEntry) -> Option<R>,
    ) -> Option<R> {
        let mut entry = match self.map.get_mut(account) {
            Some(e) => e,
            None => self.map.entry(account.into()).or_default(),
        };
        let spread = entry.note(network, country, now);
        over(spread, &mut entry)
    }

    /// A copy of the account's entry, if it is tracked.
    pub fn get(&self, account: &str) -> Option<LoginEntry> {
        self.map.get(account).map(|e| e.clone())
    }

    /// Accounts tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops the accounts with nothing seen in the last day; returns how many.
    pub fn evict_idle(&self, now: u32) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| !e.idle(now));
        if self.map.capacity() > 4 * self.map.len().max(64) {
            self.map.shrink_to_fit();
        }
        before.saturating_sub(self.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Network {
        Network::of(text.parse().unwrap())
    }

    #[test]
    fn an_entry_is_small_and_bounded() {
        // The budget: at most 200 bytes per tracked account; with its inline key the
        // map's slot is 24 bytes more.
        let entry = std::mem::size_of::<LoginEntry>();
        let slot = entry + std::mem::size_of::<CompactString>();
        println!("login-spread entry: {entry} bytes, {slot} with its key in the map");
        assert!(entry <= 200, "{entry}");
        assert!(slot <= 200, "{slot}");
    }

    #[test]
    fn networks_are_ipv4_slash_24_and_ipv6_slash_48() {
        assert_eq!(net("192.0.2.1"), net("192.0.2.254"));
        assert_ne!(net("192.0.2.1"), net("192.0.3.1"));
        assert_eq!(net("::ffff:192.0.2.9"), net("192.0.2.1"), "IPv4-mapped is the IPv4 address");
        assert_eq!(net("2001:db8:1::1"), net("2001:db8:1:ffff::2"));
        assert_ne!(net("2001:db8:1::1"), net("2001:db8:2::1"));
        assert_eq!(net("192.0.2.77").to_string(), "192.0.2.0/24");
        assert_eq!(net("2001:db8:1:2::3").to_string(), "2001:db8:1::/48");
    }

    #[test]
    fn distinct_places_count_within_their_windows() {
        let mut e = LoginEntry::default();
        let t = 1_800_000_000;
        assert_eq!(e.note(net("192.0.2.1"), Some(CountryCode(*b"SE")), t).networks, 1);
        assert_eq!(e.note(net("192.0.2.2"), Some(CountryCode(*b"SE")), t + 1), Spread { networks: 1, countries: 1 });
        assert_eq!(e.note(net("198.51.100.1"), Some(CountryCode(*b"DE")), t + 2), Spread { networks: 2, countries: 2 });
        // An hour later the networks are forgotten; the countries are not.
        let later = t + 2 + NETWORK_WINDOW_SECS;
        assert_eq!(e.note(net("203.0.113.1"), None, later), Spread { networks: 1, countries: 2 });
        assert_eq!(e.recent_countries(later), vec![CountryCode(*b"SE"), CountryCode(*b"DE")]);
        assert_eq!(e.recent_networks(later), vec![net("203.0.113.1")]);
        assert!(!e.idle(later));
        assert!(e.idle(later + COUNTRY_WINDOW_SECS));
    }

    #[test]
    fn a_botnet_fills_the_slots_and_no_more() {
        let mut e = LoginEntry::default();
        let t = 1_800_000_000;
        for i in 0..200u32 {
            let ip = IpAddr::from([10, (i / 256) as u8, (i % 256) as u8, 1]);
            let spread = e.note(Network::of(ip), None, t + i);
            assert_eq!(spread.networks, (i + 1).min(NETWORK_SLOTS as u32));
        }
        assert_eq!(e.recent_networks(t + 200).len(), NETWORK_SLOTS);
    }

    #[test]
    fn the_table_evicts_accounts_idle_for_a_day() {
        let table = LoginTable::default();
        let t = 1_800_000_000;
        table.note("a@example.com", net("192.0.2.1"), None, t, |_, _| None::<()>);
        table.note("b@example.com", net("192.0.2.1"), None, t + 3600, |_, _| None::<()>);
        assert_eq!(table.evict_idle(t + COUNTRY_WINDOW_SECS), 1);
        assert!(table.get("a@example.com").is_none());
        assert_eq!(table.len(), 1);
    }
}
