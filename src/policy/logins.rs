//! Where each authenticated account sent from lately: the client networks of the last hour
//! and the countries of the last day, for the login-spread signal (a stolen password used by a
//! botnet from many places at once).
//!
//! Kept apart from [`super::accounts::AccountTable`] on purpose: most accounts never have it
//! (only authenticated mail under a policy with the signal on is noted), and the 64-byte
//! account slot stays as it is for everyone. An account holds at most one network (or country)
//! more than the highest limit in force allows ([`Layout`]), so its memory is bounded whatever
//! a botnet does: a new network takes a free slot, or one that aged out, or the oldest.
//! [`LoginTable::evict_idle`] drops accounts with nothing seen in the last day.
//!
//! # Memory
//!
//! A million accounts may be tracked, so an entry is a packed run of bytes, not a struct:
//! the account as a 64-bit hash of its name (two accounts share an entry only if their names
//! collide, about 3 chances in 10^8 among a million accounts), the minute of its last message,
//! the hour of its last alert, then per network slot 4 bytes and a 1-byte minute stamp, per
//! country slot a 2-byte code and a 1-byte hour stamp: `14 + 5 × networks + 3 × countries`
//! bytes. Entries come in three size classes: room for 2 networks and 1 country (27 bytes),
//! then 5 and 3 (48), then the layout's all (92 under the highest limits, 11 and 5); an entry
//! moves up when a message finds no slot for its place, so most accounts, seen from a place or
//! two, pay for two. Each class keeps its entries in fixed chunks ([`CHUNK`] entries each, so
//! the table grows without doubling), found through a 4-byte-per-bucket index of 32 shards,
//! each behind its own lock; a place given up by a move is taken by the next new account.
//!
//! A network is its IPv4 /24 exactly, or a 32-bit hash of its IPv6 /48: two /48s of one
//! account whose hashes collide count as one, an undercount by one in rare cases, never a
//! network too many. An IPv6 network's name, for the evidence, is kept in a small table per
//! shard ([`NAMES`] per shard), which forgets the oldest names on a server seeing many /48s.
//!
//! Stamps wrap (256 minutes, 256 hours); each message frees the slots that aged out before it
//! looks at the others, and an entry quiet for an hour (a day) frees all its networks
//! (countries), so no stamp is ever read more than two windows after it was written and a wrap
//! never makes an old place look recent. Minutes and hours are whole: a network counts for 59
//! to 60 minutes, a country for 23 to 24 hours, never longer than the window.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::config::{CountryCode, LOGIN_SPREAD_MAX_COUNTRIES, LOGIN_SPREAD_MAX_NETWORKS};

/// How long a network counts, in minutes: the rolling hour of `max_client_networks_per_hour`.
pub const NETWORK_WINDOW_MINUTES: u32 = 60;
/// How long a country counts, in hours: the rolling day of `max_client_countries_per_day`.
pub const COUNTRY_WINDOW_HOURS: u32 = 24;

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

    /// The network in a slot's 4 bytes: an IPv4 /24 as itself below 2^24, an IPv6 /48 as a
    /// hash whose top byte is 1 to 254; never [`FREE`].
    fn key(self) -> u32 {
        match self.0 {
            [0xff, 0, 0, a, b, c] => u32::from_be_bytes([0, a, b, c]),
            [a, b, c, d, e, g] => {
                let x = u64::from_le_bytes([a, b, c, d, e, g, 0, 0]);
                let h = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
                ((1 + (h >> 24) % 254) << 24) | (h & 0x00ff_ffff)
            }
        }
    }

    fn is_v4_key(key: u32) -> bool {
        key >> 24 == 0
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

/// A free network slot.
const FREE: u32 = u32::MAX;
/// A free country slot.
const NO_COUNTRY: [u8; 2] = [0, 0];

/// How many slots each entry has: one network (country) more than the highest limit of the
/// configuration in force, so the one that passes it is seen; none for a signal no policy has
/// on (and no country slots without a country database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    networks: usize,
    countries: usize,
}

/// Bytes before the slots: the account's hash (8), the minute of its last message (4), the
/// hour of its last alert (2).
const HEADER: usize = 14;

impl Layout {
    /// The slots for the highest limits `max_networks` and `max_countries` (0 = off; each
    /// capped at the configuration's highest allowed value).
    pub fn for_limits(max_networks: u32, max_countries: u32) -> Layout {
        let slots = |max: u32, cap: u32| if max == 0 { 0 } else { max.min(cap) as usize + 1 };
        Layout {
            networks: slots(max_networks, LOGIN_SPREAD_MAX_NETWORKS),
            countries: slots(max_countries, LOGIN_SPREAD_MAX_COUNTRIES),
        }
    }

    /// Network slots per entry.
    pub fn networks(self) -> usize {
        self.networks
    }

    /// Country slots per entry.
    pub fn countries(self) -> usize {
        self.countries
    }

    /// Bytes per tracked account's entry.
    pub fn bytes(self) -> usize {
        HEADER + 5 * self.networks + 3 * self.countries
    }

    fn network_at(self, i: usize) -> usize {
        HEADER + 4 * i
    }

    fn network_stamp_at(self, i: usize) -> usize {
        HEADER + 4 * self.networks + i
    }

    fn country_at(self, i: usize) -> usize {
        HEADER + 5 * self.networks + 2 * i
    }

    fn country_stamp_at(self, i: usize) -> usize {
        HEADER + 5 * self.networks + 2 * self.countries + i
    }
}

/// How many distinct places an account sent from, as of the message just noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spread {
    /// Client networks within the last hour.
    pub networks: u32,
    /// Countries within the last day.
    pub countries: u32,
}

/// The age of a wrapping 1-byte stamp at `now` (both modulo 256).
fn age(now: u32, stamp: u8) -> u32 {
    u32::from((now as u8).wrapping_sub(stamp))
}

/// Names of IPv6 networks per shard, for the evidence.
pub const NAMES: usize = 1024;

/// The IPv6 networks lately new to an entry of the shard, by their slot value: a direct-mapped
/// table, so a name is forgotten once another /48 lands on its place.
#[derive(Default)]
struct Names(Vec<(u32, Network)>);

impl Names {
    fn remember(&mut self, key: u32, network: Network) {
        if self.0.is_empty() {
            self.0 = vec![(FREE, Network::default()); NAMES];
        }
        self.0[key as usize % NAMES] = (key, network);
    }

    fn name(&self, key: u32) -> Option<Network> {
        self.0.get(key as usize % NAMES).filter(|(k, _)| *k == key).map(|(_, n)| *n)
    }
}

/// One account's entry, locked in its shard: what the engine reads and resets when the spread
/// passes a limit.
pub struct LoginEntry<'a> {
    bytes: &'a mut [u8],
    layout: Layout,
    names: &'a mut Names,
}

impl LoginEntry<'_> {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.bytes[at], self.bytes[at + 1], self.bytes[at + 2], self.bytes[at + 3]])
    }

    fn set_u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn last_minute(&self) -> u32 {
        self.u32_at(8)
    }

    fn network(&self, i: usize) -> u32 {
        self.u32_at(self.layout.network_at(i))
    }

    fn country(&self, i: usize) -> [u8; 2] {
        let at = self.layout.country_at(i);
        [self.bytes[at], self.bytes[at + 1]]
    }

    /// Writes a new entry for `key`, every slot free.
    fn init(&mut self, key: u64, minute: u32) {
        self.bytes.fill(0);
        self.bytes[..8].copy_from_slice(&key.to_le_bytes());
        self.set_u32(8, minute);
        for i in 0..self.layout.networks {
            self.set_u32(self.layout.network_at(i), FREE);
        }
    }

    /// Frees the slots that aged out by `minute` (every one after a quiet window).
    fn sweep(&mut self, minute: u32) {
        let last = self.last_minute();
        let (quiet_minutes, hour) = (minute - last, minute / 60);
        let quiet_hours = hour - last / 60;
        let l = self.layout;
        for i in 0..l.networks {
            let stamp = self.bytes[l.network_stamp_at(i)];
            if quiet_minutes >= NETWORK_WINDOW_MINUTES || age(minute, stamp) >= NETWORK_WINDOW_MINUTES {
                self.set_u32(l.network_at(i), FREE);
            }
        }
        for i in 0..l.countries {
            let stamp = self.bytes[l.country_stamp_at(i)];
            if quiet_hours >= COUNTRY_WINDOW_HOURS || age(hour, stamp) >= COUNTRY_WINDOW_HOURS {
                let at = l.country_at(i);
                self.bytes[at..at + 2].copy_from_slice(&NO_COUNTRY);
            }
        }
    }

    /// Notes a message from `network` (and `country`, when known and counted) at `minute`
    /// (minutes since the epoch; a clock that went back counts as the entry's last minute).
    fn note(&mut self, network: Network, country: Option<CountryCode>, minute: u32) -> Spread {
        let minute = minute.max(self.last_minute());
        self.sweep(minute);
        self.set_u32(8, minute);
        let l = self.layout;
        let mut spread = Spread::default();
        if l.networks > 0 {
            let key = network.key();
            let (mut same, mut free, mut oldest) = (None, None, None::<(usize, u32)>);
            for i in 0..l.networks {
                let k = self.network(i);
                if k == key {
                    same = Some(i);
                    break;
                } else if k == FREE {
                    free = free.or(Some(i));
                } else {
                    let a = age(minute, self.bytes[l.network_stamp_at(i)]);
                    if oldest.is_none_or(|(_, o)| a > o) {
                        oldest = Some((i, a));
                    }
                }
            }
            let slot = match same {
                Some(i) => i,
                None => {
                    if !Network::is_v4_key(key) {
                        self.names.remember(key, network);
                    }
                    free.or(oldest.map(|(i, _)| i)).unwrap_or(0)
                }
            };
            self.set_u32(l.network_at(slot), key);
            self.bytes[l.network_stamp_at(slot)] = minute as u8;
            spread.networks = (0..l.networks).filter(|&i| self.network(i) != FREE).count() as u32;
        }
        if l.countries > 0 {
            let hour = minute / 60;
            if let Some(CountryCode(code)) = country {
                let (mut same, mut free, mut oldest) = (None, None, None::<(usize, u32)>);
                for i in 0..l.countries {
                    let c = self.country(i);
                    if c == code {
                        same = Some(i);
                        break;
                    } else if c == NO_COUNTRY {
                        free = free.or(Some(i));
                    } else {
                        let a = age(hour, self.bytes[l.country_stamp_at(i)]);
                        if oldest.is_none_or(|(_, o)| a > o) {
                            oldest = Some((i, a));
                        }
                    }
                }
                let slot = same.or(free).or(oldest.map(|(i, _)| i)).unwrap_or(0);
                let at = l.country_at(slot);
                self.bytes[at..at + 2].copy_from_slice(&code);
                self.bytes[l.country_stamp_at(slot)] = hour as u8;
            }
            spread.countries = (0..l.countries).filter(|&i| self.country(i) != NO_COUNTRY).count() as u32;
        }
        spread
    }

    /// Whether a message from `network` (and `country`) at `minute` would find no slot for
    /// it (networks, countries), after the slots that aged out are freed.
    fn lacks(&mut self, network: Network, country: Option<CountryCode>, minute: u32) -> (bool, bool) {
        self.sweep(minute.max(self.last_minute()));
        let l = self.layout;
        let key = network.key();
        let networks = l.networks > 0 && (0..l.networks).all(|i| self.network(i) != key && self.network(i) != FREE);
        let countries = match country {
            Some(CountryCode(code)) if l.countries > 0 => {
                (0..l.countries).all(|i| self.country(i) != code && self.country(i) != NO_COUNTRY)
            }
            _ => false,
        };
        (networks, countries)
    }

    /// The networks of the last hour as of the last message, oldest first: an IPv4 /24 by its
    /// name, an IPv6 /48 by its name while the shard remembers it.
    pub fn recent_networks(&self) -> Vec<String> {
        let (l, minute) = (self.layout, self.last_minute());
        let mut list: Vec<(u32, u32)> = (0..l.networks)
            .filter(|&i| self.network(i) != FREE)
            .map(|i| (age(minute, self.bytes[l.network_stamp_at(i)]), self.network(i)))
            .collect();
        list.sort_by_key(|(age, _)| std::cmp::Reverse(*age));
        list.into_iter()
            .map(|(_, key)| {
                if Network::is_v4_key(key) {
                    let [_, a, b, c] = key.to_be_bytes();
                    Network([0xff, 0, 0, a, b, c]).to_string()
                } else {
                    self.names.name(key).map_or_else(|| "an IPv6 /48 no longer named".to_owned(), |n| n.to_string())
                }
            })
            .collect()
    }

    /// The countries of the last day as of the last message, oldest first.
    pub fn recent_countries(&self) -> Vec<CountryCode> {
        let (l, hour) = (self.layout, self.last_minute() / 60);
        let mut list: Vec<(u32, [u8; 2])> = (0..l.countries)
            .filter(|&i| self.country(i) != NO_COUNTRY)
            .map(|i| (age(hour, self.bytes[l.country_stamp_at(i)]), self.country(i)))
            .collect();
        list.sort_by_key(|(age, _)| std::cmp::Reverse(*age));
        list.into_iter().map(|(_, code)| CountryCode(code)).collect()
    }

    /// Whether the alert of `hour` (`Timestamp::hour`) is still to go out; marks it as gone
    /// out. The hour is kept modulo 65,535 (7 years).
    pub fn first_alert_this_hour(&mut self, hour: u32) -> bool {
        let mark = ((hour % 65_535) as u16 + 1).to_le_bytes();
        let first = self.bytes[12..14] != mark;
        self.bytes[12..14].copy_from_slice(&mark);
        first
    }

    /// Forgets every place but the one of `network` (and `country`) at `now` (seconds since
    /// the epoch): what led to a restriction is not counted again after the account is
    /// released.
    pub fn restart(&mut self, network: Network, country: Option<CountryCode>, now: u32) {
        let (key, alerted) =
            (u64::from_le_bytes(self.bytes[..8].try_into().unwrap_or_default()), self.bytes[12..14].to_vec());
        let minute = (now / 60).max(self.last_minute());
        self.init(key, minute);
        self.bytes[12..14].copy_from_slice(&alerted);
        self.note(network, country, minute);
    }
}

/// Entries per chunk of a slab: the slack of a partly filled chunk is at most this many
/// entries per class and shard.
pub const CHUNK: usize = 1024;

/// Shards of the table, each behind its own lock.
const SHARDS: usize = 32;

/// Size classes: an entry starts with room for 2 networks and 1 country and moves to the next
/// class when a message needs a slot it lacks: 5 networks and 3 countries, then all the
/// layout's. An account seen from one place pays for two, not for twelve.
const CLASSES: usize = 3;
const CLASS_NETWORKS: [usize; CLASSES] = [2, 5, usize::MAX];
const CLASS_COUNTRIES: [usize; CLASSES] = [1, 3, usize::MAX];

impl Layout {
    /// The slots of size class `k` under this layout.
    fn class(self, k: usize) -> Layout {
        Layout { networks: self.networks.min(CLASS_NETWORKS[k]), countries: self.countries.min(CLASS_COUNTRIES[k]) }
    }

    /// Bytes per entry in each size class, smallest first.
    pub fn class_bytes(self) -> [usize; CLASSES] {
        [0, 1, 2].map(|k| self.class(k).bytes())
    }
}

/// Bits of an index bucket for an entry's number (plus one) within its class.
const NUMBER_BITS: u32 = 22;

/// Entries a class of a shard can hold.
const MAX_ENTRIES: usize = (1 << NUMBER_BITS) - 2;

/// Where an entry is: its size class and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    class: usize,
    n: usize,
}

fn tag(key: u64) -> u32 {
    ((key >> 8) & 0xff) as u32
}

/// An index bucket: 8 more bits of the account's hash, compared first, the class in 2 bits,
/// the entry's number plus one below (so never 0, the empty bucket).
fn bucket_value(key: u64, p: Place) -> u32 {
    (tag(key) << 24) | ((p.class as u32) << NUMBER_BITS) | (p.n as u32 + 1)
}

fn place_of(v: u32) -> Place {
    Place { class: ((v >> NUMBER_BITS) & 3) as usize, n: (v & ((1 << NUMBER_BITS) - 1)) as usize - 1 }
}

/// The home bucket of `key` among `buckets`: the product's high half, so that any number of
/// buckets works (the index grows by half, not double).
fn home(key: u64, buckets: usize) -> usize {
    ((u128::from(key) * buckets as u128) >> 64) as usize
}

/// Copies the entry `from` (of layout `fl`) into `to` (of layout `tl`), keeping the most
/// recent places that fit.
fn convert(from: &[u8], fl: Layout, to: &mut [u8], tl: Layout) {
    let minute = u32::from_le_bytes([from[8], from[9], from[10], from[11]]);
    let mut networks: Vec<(u32, u32, u8)> = (0..fl.networks)
        .map(|i| (u32::from_le_bytes(from[fl.network_at(i)..][..4].try_into().unwrap_or([0xff; 4])), i))
        .filter(|(key, _)| *key != FREE)
        .map(|(key, i)| (age(minute, from[fl.network_stamp_at(i)]), key, from[fl.network_stamp_at(i)]))
        .collect();
    networks.sort_by_key(|(age, ..)| *age);
    let mut countries: Vec<(u32, [u8; 2], u8)> = (0..fl.countries)
        .map(|i| ([from[fl.country_at(i)], from[fl.country_at(i) + 1]], i))
        .filter(|(code, _)| *code != NO_COUNTRY)
        .map(|(code, i)| (age(minute / 60, from[fl.country_stamp_at(i)]), code, from[fl.country_stamp_at(i)]))
        .collect();
    countries.sort_by_key(|(age, ..)| *age);
    to[..HEADER].copy_from_slice(&from[..HEADER]);
    for i in 0..tl.networks {
        let (key, stamp) = networks.get(i).map_or((FREE, 0), |&(_, key, stamp)| (key, stamp));
        to[tl.network_at(i)..][..4].copy_from_slice(&key.to_le_bytes());
        to[tl.network_stamp_at(i)] = stamp;
    }
    for i in 0..tl.countries {
        let (code, stamp) = countries.get(i).map_or((NO_COUNTRY, 0), |&(_, code, stamp)| (code, stamp));
        to[tl.country_at(i)..][..2].copy_from_slice(&code);
        to[tl.country_stamp_at(i)] = stamp;
    }
}

/// The entries of one size class of a shard, in fixed chunks.
struct Slab {
    layout: Layout,
    chunks: Vec<Box<[u8]>>,
    len: usize,
    /// Entries given up by accounts that moved to a larger class (their last minute is 0),
    /// taken first by new ones.
    free: Vec<u32>,
}

impl Slab {
    fn new(layout: Layout) -> Slab {
        Slab { layout, chunks: Vec::new(), len: 0, free: Vec::new() }
    }

    fn bytes(&self, n: usize) -> &[u8] {
        let stride = self.layout.bytes();
        &self.chunks[n / CHUNK][n % CHUNK * stride..][..stride]
    }

    fn bytes_mut(&mut self, n: usize) -> &mut [u8] {
        let stride = self.layout.bytes();
        &mut self.chunks[n / CHUNK][n % CHUNK * stride..][..stride]
    }

    fn key_of(&self, n: usize) -> u64 {
        let b = self.bytes(n);
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    fn last_minute_of(&self, n: usize) -> u32 {
        let b = self.bytes(n);
        u32::from_le_bytes([b[8], b[9], b[10], b[11]])
    }

    /// Room for one more entry: a free one, or a new one at the end; `None` when full.
    fn take(&mut self) -> Option<usize> {
        if let Some(n) = self.free.pop() {
            return Some(n as usize);
        }
        if self.len >= MAX_ENTRIES {
            return None;
        }
        if self.len == self.chunks.len() * CHUNK {
            self.chunks.push(vec![0; CHUNK * self.layout.bytes()].into_boxed_slice());
        }
        self.len += 1;
        Some(self.len - 1)
    }

    fn give_back(&mut self, n: usize) {
        self.bytes_mut(n)[8..12].fill(0);
        self.free.push(n as u32);
    }

    /// Rewrites every entry for `layout`.
    fn relayout(&mut self, layout: Layout) {
        let old = std::mem::replace(self, Slab::new(layout));
        self.len = old.len;
        self.free = old.free.clone();
        self.chunks =
            (0..old.len.div_ceil(CHUNK)).map(|_| vec![0; CHUNK * layout.bytes()].into_boxed_slice()).collect();
        for n in 0..old.len {
            convert(old.bytes(n), old.layout, self.bytes_mut(n), layout);
        }
    }

    /// Drops the entries with nothing seen within the last day of `minute` and the free
    /// ones, moving the others down so that the chunks they leave go back; returns how many
    /// entries in use were dropped.
    fn evict_idle(&mut self, minute: u32) -> usize {
        let idle_after = COUNTRY_WINDOW_HOURS * 60;
        let (mut kept, mut dropped) = (0, 0);
        let mut buf = [0u8; 128];
        for n in 0..self.len {
            let last = self.last_minute_of(n);
            if minute.saturating_sub(last) >= idle_after {
                dropped += usize::from(last != 0);
                continue;
            }
            if kept != n {
                let stride = self.layout.bytes();
                buf[..stride].copy_from_slice(self.bytes(n));
                self.bytes_mut(kept).copy_from_slice(&buf[..stride]);
            }
            kept += 1;
        }
        self.len = kept;
        self.free = Vec::new();
        self.chunks.truncate(kept.div_ceil(CHUNK));
        self.chunks.shrink_to_fit();
        dropped
    }
}

/// One shard: its entries in size classes, and the index that finds them by the account's
/// hash.
struct Shard {
    layout: Layout,
    slabs: [Slab; CLASSES],
    /// Entries in use, over all classes.
    entries: usize,
    /// Open addressing, linear probing; see [`bucket_value`].
    index: Vec<u32>,
    names: Names,
}

impl Shard {
    fn new(layout: Layout) -> Shard {
        Shard {
            layout,
            slabs: [0, 1, 2].map(|k| Slab::new(layout.class(k))),
            entries: 0,
            index: Vec::new(),
            names: Names::default(),
        }
    }

    fn entry(&mut self, p: Place) -> LoginEntry<'_> {
        let slab = &mut self.slabs[p.class];
        let layout = slab.layout;
        LoginEntry { bytes: slab.bytes_mut(p.n), layout, names: &mut self.names }
    }

    fn key_at(&self, p: Place) -> u64 {
        self.slabs[p.class].key_of(p.n)
    }

    /// The entry of `key` and its index bucket.
    fn find(&self, key: u64) -> Option<(Place, usize)> {
        if self.index.is_empty() {
            return None;
        }
        let (tag, buckets) = (tag(key), self.index.len());
        let mut b = home(key, buckets);
        loop {
            let v = self.index[b];
            if v == 0 {
                return None;
            }
            if v >> 24 == tag && self.key_at(place_of(v)) == key {
                return Some((place_of(v), b));
            }
            b = if b + 1 == buckets { 0 } else { b + 1 };
        }
    }

    /// Puts `key`'s entry at `p` in the index; returns its bucket.
    fn place(&mut self, key: u64, p: Place) -> usize {
        let buckets = self.index.len();
        let mut b = home(key, buckets);
        while self.index[b] != 0 {
            b = if b + 1 == buckets { 0 } else { b + 1 };
        }
        self.index[b] = bucket_value(key, p);
        b
    }

    /// Rebuilds the index with `buckets` buckets for the entries in use.
    fn reindex(&mut self, buckets: usize) {
        self.index = vec![0; buckets.max(16)];
        for class in 0..CLASSES {
            for n in 0..self.slabs[class].len {
                if self.slabs[class].last_minute_of(n) != 0 {
                    let p = Place { class, n };
                    self.place(self.key_at(p), p);
                }
            }
        }
    }

    /// A new entry for `key` at `minute`, in the smallest class; `None` when it is full.
    fn insert(&mut self, key: u64, minute: u32) -> Option<(Place, usize)> {
        // At most 7/8 full; grown by half.
        if (self.entries + 1) * 8 > self.index.len() * 7 {
            let buckets = (self.index.len() * 3 / 2).max(64);
            self.reindex(buckets);
        }
        let p = Place { class: 0, n: self.slabs[0].take()? };
        self.entry(p).init(key, minute);
        self.entries += 1;
        Some((p, self.place(key, p)))
    }

    /// Moves the entry at `p` (in index bucket `bucket`) to a larger class when the message
    /// from `network` and `country` at `minute` needs a slot it lacks; returns where it is.
    fn make_room(
        &mut self,
        (p, bucket): (Place, usize),
        network: Network,
        country: Option<CountryCode>,
        minute: u32,
    ) -> Place {
        let (networks, countries) = self.entry(p).lacks(network, country, minute);
        if !networks && !countries {
            return p;
        }
        let now = self.slabs[p.class].layout;
        let Some(class) = (p.class + 1..CLASSES).find(|&k| {
            let l = self.slabs[k].layout;
            (networks && l.networks > now.networks) || (countries && l.countries > now.countries)
        }) else {
            return p;
        };
        let Some(n) = self.slabs[class].take() else {
            return p;
        };
        let mut buf = [0u8; 128];
        let stride = now.bytes();
        buf[..stride].copy_from_slice(self.slabs[p.class].bytes(p.n));
        let to = self.slabs[class].layout;
        convert(&buf[..stride], now, self.slabs[class].bytes_mut(n), to);
        self.slabs[p.class].give_back(p.n);
        let moved = Place { class, n };
        self.index[bucket] = bucket_value(self.key_at(moved), moved);
        moved
    }

    /// Rewrites every entry for `layout`, keeping the most recent places that fit.
    fn relayout(&mut self, layout: Layout) {
        self.layout = layout;
        for (k, slab) in self.slabs.iter_mut().enumerate() {
            if slab.layout != layout.class(k) {
                slab.relayout(layout.class(k));
            }
        }
    }

    /// Drops the entries with nothing seen within the last day of `minute`; returns how many.
    fn evict_idle(&mut self, minute: u32) -> usize {
        let dropped: usize = self.slabs.iter_mut().map(|s| s.evict_idle(minute)).sum();
        self.entries -= dropped;
        // Room for a third more before the index grows again.
        self.reindex(self.entries * 4 / 3 * 8 / 7 + 1);
        dropped
    }
}

/// Every authenticated account's recent places, for accounts under a policy with the
/// login-spread signal on.
pub struct LoginTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: ahash::RandomState,
}

impl Default for LoginTable {
    /// A table for the highest limits.
    fn default() -> LoginTable {
        LoginTable::new(Layout::for_limits(LOGIN_SPREAD_MAX_NETWORKS, LOGIN_SPREAD_MAX_COUNTRIES))
    }
}

impl LoginTable {
    /// An empty table whose entries have `layout`'s slots.
    pub fn new(layout: Layout) -> LoginTable {
        LoginTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new(layout))).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    fn key(&self, account: &str) -> u64 {
        self.hasher.hash_one(account.as_bytes())
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard> {
        // A panic under the lock leaves at worst one entry half noted: still bounded.
        self.shards[key as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a message of `account` from `network` (and `country`) at `now` (seconds since the
    /// epoch), then hands the account's spread and its entry, still locked, to `over`, which
    /// returns what the caller needs when the spread passes its limits (the evidence, read and
    /// the entry reset under the same lock). `None` without calling `over` when the account
    /// cannot be tracked (a shard holding 16 million accounts).
    pub fn note<R>(
        &self,
        account: &str,
        network: Network,
        country: Option<CountryCode>,
        now: u32,
        over: impl FnOnce(Spread, &mut LoginEntry<'_>) -> Option<R>,
    ) -> Option<R> {
        let key = self.key(account);
        let minute = now / 60;
        let mut shard = self.shard(key);
        let found = match shard.find(key) {
            Some(found) => found,
            None => shard.insert(key, minute)?,
        };
        let p = shard.make_room(found, network, country, minute);
        let mut entry = shard.entry(p);
        let spread = entry.note(network, country, minute);
        over(spread, &mut entry)
    }

    /// Whether the account is tracked.
    pub fn contains(&self, account: &str) -> bool {
        let key = self.key(account);
        self.shard(key).find(key).is_some()
    }

    /// The slots each entry has.
    pub fn layout(&self) -> Layout {
        self.shard(0).layout
    }

    /// After a reload: every entry gets `layout`'s slots, keeping its most recent places that
    /// fit (all of them when the limits rose).
    pub fn set_layout(&self, layout: Layout) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if shard.layout != layout {
                shard.relayout(layout);
            }
        }
    }

    /// Accounts tracked.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).entries).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the accounts with nothing seen in the last day of `now` (seconds since the
    /// epoch); returns how many.
    pub fn evict_idle(&self, now: u32) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).evict_idle(now / 60)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Network {
        Network::of(text.parse().unwrap())
    }

    const T: u32 = 1_800_000_000 / 60 * 60;
    const SE: Option<CountryCode> = Some(CountryCode(*b"SE"));
    const DE: Option<CountryCode> = Some(CountryCode(*b"DE"));

    /// Notes `account` from `network` at `now` and returns the spread.
    fn note(table: &LoginTable, account: &str, network: Network, country: Option<CountryCode>, now: u32) -> Spread {
        let mut seen = None;
        table.note(account, network, country, now, |spread, _| {
            seen = Some(spread);
            None::<()>
        });
        seen.expect("noted")
    }

    fn recent(table: &LoginTable, account: &str, now: u32) -> (Vec<String>, Vec<CountryCode>) {
        // The evidence as of a message from a network the account already has.
        let mut out = None;
        table.note(account, net("192.0.2.1"), None, now, |_, e| {
            out = Some((e.recent_networks(), e.recent_countries()));
            None::<()>
        });
        out.unwrap()
    }

    #[test]
    fn an_entry_is_sized_to_the_limits_in_force() {
        assert_eq!(Layout::for_limits(4, 2).bytes(), 48, "the cautious start: 5 networks, 3 countries");
        assert_eq!(Layout::for_limits(1, 0).bytes(), 24, "2 networks");
        assert_eq!(Layout::for_limits(11, 5).bytes(), 92, "the highest limits: 12 networks, 6 countries");
        assert_eq!(Layout::for_limits(4, 0).bytes(), 14 + 25, "no countries counted");
        assert_eq!(Layout::for_limits(99, 99), Layout::for_limits(11, 5), "capped as the configuration is");
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
        // In a slot: IPv4 exactly, IPv6 hashed apart from it and from a free slot.
        assert_eq!(net("0.0.0.1").key(), 0);
        assert_eq!(net("255.255.255.1").key(), 0x00ff_ffff);
        for i in 0..10_000u32 {
            let v6 = Network::of(IpAddr::from([0x2001, 0xdb8, i as u16, (i >> 16) as u16, 0, 0, 0, 1]));
            let top = v6.key() >> 24;
            assert!((1..=254).contains(&top), "{v6}: {top}");
        }
    }

    #[test]
    fn distinct_places_count_within_their_windows() {
        let table = LoginTable::new(Layout::for_limits(4, 2));
        let a = "a@example.com";
        assert_eq!(note(&table, a, net("192.0.2.1"), SE, T).networks, 1);
        assert_eq!(note(&table, a, net("192.0.2.2"), SE, T + 1), Spread { networks: 1, countries: 1 });
        assert_eq!(note(&table, a, net("198.51.100.1"), DE, T + 2), Spread { networks: 2, countries: 2 });
        // 59 minutes on they still count; an hour on the networks are forgotten, not the countries.
        assert_eq!(note(&table, a, net("198.51.100.1"), None, T + 59 * 60), Spread { networks: 2, countries: 2 });
        let later = T + 3600;
        assert_eq!(note(&table, a, net("203.0.113.1"), None, later), Spread { networks: 2, countries: 2 });
        let (networks, countries) = recent(&table, a, later + 60);
        assert_eq!(networks, ["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24"]);
        assert_eq!(countries, [CountryCode(*b"SE"), CountryCode(*b"DE")]);
        // 23 hours on the countries count, 24 hours on they do not.
        assert_eq!(note(&table, a, net("203.0.113.1"), None, T + 23 * 3600).countries, 2);
        assert_eq!(note(&table, a, net("203.0.113.1"), None, T + 24 * 3600).countries, 0);
    }

    #[test]
    fn a_botnet_fills_the_slots_and_no_more_at_the_highest_limits_too() {
        for (limit, slots) in [(4, 5), (11, 12)] {
            let table = LoginTable::new(Layout::for_limits(limit, 5));
            for i in 0..200u32 {
                let ip = IpAddr::from([10, (i / 256) as u8, (i % 256) as u8, 1]);
                let spread = note(&table, "a@example.com", Network::of(ip), None, T + i);
                assert_eq!(spread.networks, (i + 1).min(slots), "limit {limit}");
            }
            // Countries: 6 slots under the highest limit of 5.
            for (i, code) in [b"SE", b"DE", b"NL", b"DK", b"NO", b"FI", b"FR", b"ES"].into_iter().enumerate() {
                let spread = note(&table, "b@example.com", net("192.0.2.1"), Some(CountryCode(*code)), T + i as u32);
                assert_eq!(spread.countries, (i as u32 + 1).min(6));
            }
        }
    }

    #[test]
    fn slots_are_reused_after_they_age_out_and_a_wrapped_stamp_is_never_recent() {
        let table = LoginTable::new(Layout::for_limits(4, 2));
        let a = "a@example.com";
        for i in 0..5u8 {
            assert_eq!(note(&table, a, net(&format!("10.0.{i}.1")), None, T).networks, u32::from(i) + 1);
        }
        // An hour later all five slots are free again and taken one by one.
        for i in 0..5u8 {
            let spread = note(&table, a, net(&format!("10.1.{i}.1")), None, T + 3600);
            assert_eq!(spread.networks, u32::from(i) + 1);
        }
        // Busy every 50 minutes for five hours from one network: the one of minute 0 is gone for
        // good, even at minute 256, where its 1-byte stamp reads as new again.
        let b = "b@example.com";
        note(&table, b, net("10.9.9.1"), None, T);
        for m in (50..=250).step_by(50) {
            let expected = if m == 50 { 2 } else { 1 };
            assert_eq!(note(&table, b, net("10.8.8.1"), None, T + m * 60).networks, expected, "minute {m}");
        }
        assert_eq!(note(&table, b, net("10.8.8.1"), None, T + 256 * 60).networks, 1);
        // Quiet for exactly 256 minutes: nothing from before counts.
        let c = "c@example.com";
        note(&table, c, net("10.9.9.1"), None, T);
        assert_eq!(note(&table, c, net("10.8.8.1"), None, T + 256 * 60).networks, 1);
        // Countries the same way over 256 hours, busy every 20 hours.
        let d = "d@example.com";
        note(&table, d, net("10.9.9.1"), SE, T);
        for h in (20..=240).step_by(20) {
            let expected = if h == 20 { 2 } else { 1 };
            assert_eq!(note(&table, d, net("10.9.9.1"), DE, T + h * 3600).countries, expected, "hour {h}");
        }
        assert_eq!(note(&table, d, net("10.9.9.1"), DE, T + 256 * 3600).countries, 1);
    }

    #[test]
    fn a_clock_that_goes_back_counts_as_the_last_minute() {
        let table = LoginTable::new(Layout::for_limits(4, 2));
        let a = "a@example.com";
        note(&table, a, net("10.0.0.1"), None, T + 600);
        assert_eq!(note(&table, a, net("10.0.1.1"), None, T).networks, 2, "nothing forgotten");
        assert_eq!(note(&table, a, net("10.0.2.1"), None, T + 600 + 3600).networks, 1, "an hour after the last");
    }

    #[test]
    fn restart_keeps_only_the_current_place_and_the_alert_mark() {
        let table = LoginTable::new(Layout::for_limits(4, 2));
        let a = "a@example.com";
        note(&table, a, net("10.0.0.1"), SE, T);
        note(&table, a, net("10.0.1.1"), DE, T);
        table.note(a, net("10.0.2.1"), DE, T, |_, e| {
            assert!(e.first_alert_this_hour(500_000));
            assert!(!e.first_alert_this_hour(500_000));
            e.restart(net("10.0.2.1"), DE, T);
            assert!(!e.first_alert_this_hour(500_000), "the mark survives");
            assert!(e.first_alert_this_hour(500_001));
            None::<()>
        });
        assert_eq!(note(&table, a, net("10.0.2.1"), DE, T), Spread { networks: 1, countries: 1 });
    }

    #[test]
    fn raising_the_limits_keeps_every_place_and_gives_room_for_more() {
        let table = LoginTable::new(Layout::for_limits(2, 1));
        let a = "a@example.com";
        for (i, c) in [SE, DE, SE].into_iter().enumerate() {
            note(&table, a, net(&format!("10.0.{i}.1")), c, T + i as u32 * 60);
        }
        table.set_layout(Layout::for_limits(11, 5));
        assert_eq!(table.layout().bytes(), 92);
        let (networks, countries) = recent(&table, a, T + 180);
        assert_eq!(networks, ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "192.0.2.0/24"]);
        assert_eq!(countries, [CountryCode(*b"SE"), CountryCode(*b"DE")]);
        for i in 3..20u32 {
            let spread = note(&table, a, net(&format!("10.0.{i}.1")), None, T + 240);
            assert_eq!(spread.networks, (i + 2).min(12));
        }
        // Lowered again: the most recent places that fit stay.
        table.set_layout(Layout::for_limits(1, 0));
        let (networks, countries) = recent(&table, a, T + 300);
        assert_eq!(networks.len(), 2);
        assert!(networks.contains(&"192.0.2.0/24".to_owned()), "{networks:?}");
        assert!(countries.is_empty());
    }

    #[test]
    fn ipv6_networks_are_named_in_the_evidence_while_remembered() {
        let table = LoginTable::new(Layout::for_limits(4, 2));
        let a = "a@example.com";
        note(&table, a, net("2001:db8:1::1"), None, T);
        note(&table, a, net("2001:db8:2::1"), None, T + 60);
        let (networks, _) = recent(&table, a, T + 120);
        assert_eq!(networks, ["2001:db8:1::/48", "2001:db8:2::/48", "192.0.2.0/24"]);
        // Many other /48s new to the same shard push the names out; the count stays right.
        let shard = table.key(a) as usize % SHARDS;
        let mut others = 0;
        for i in 0..2_000_000u32 {
            let b = format!("b{i}@example.com");
            if table.key(&b) as usize % SHARDS == shard {
                let other = IpAddr::from([0x2001, 0x100 + (i >> 16) as u16, i as u16, 0, 0, 0, 0, 1]);
                note(&table, &b, Network::of(other), None, T);
                others += 1;
                if others == 16 * NAMES {
                    break;
                }
            }
        }
        let (networks, _) = recent(&table, a, T + 180);
        assert_eq!(networks.len(), 3);
        assert!(networks.contains(&"an IPv6 /48 no longer named".to_owned()), "{networks:?}");
    }

    /// The size class of `account`'s entry.
    fn class(table: &LoginTable, account: &str) -> usize {
        let key = table.key(account);
        table.shard(key).find(key).expect("tracked").0.class
    }

    #[test]
    fn an_entry_moves_to_a_larger_class_only_when_it_needs_a_slot() {
        let table = LoginTable::new(Layout::for_limits(11, 5));
        assert_eq!(table.layout().class_bytes(), [27, 48, 92]);
        assert_eq!(Layout::for_limits(4, 2).class_bytes(), [27, 48, 48], "no class above the limits");
        let a = "a@example.com";
        note(&table, a, net("10.0.0.1"), SE, T);
        assert_eq!(note(&table, a, net("10.0.1.1"), SE, T + 60), Spread { networks: 2, countries: 1 });
        assert_eq!(class(&table, a), 0, "two networks, one country");
        assert_eq!(note(&table, a, net("10.0.1.1"), DE, T + 120), Spread { networks: 2, countries: 2 });
        assert_eq!(class(&table, a), 1, "a second country");
        for i in 2..5u32 {
            assert_eq!(note(&table, a, net(&format!("10.0.{i}.1")), None, T + 180).networks, i + 1);
        }
        assert_eq!(class(&table, a), 1, "five networks");
        assert_eq!(note(&table, a, net("10.0.5.1"), None, T + 240), Spread { networks: 6, countries: 2 });
        assert_eq!(class(&table, a), 2, "a sixth network");
        let (networks, countries) = recent(&table, a, T + 300);
        assert_eq!(networks[..2], ["10.0.0.0/24".to_owned(), "10.0.1.0/24".to_owned()], "moved with it: {networks:?}");
        assert_eq!(networks.len(), 7);
        assert_eq!(countries, [CountryCode(*b"SE"), CountryCode(*b"DE")]);
        // An account whose old places aged out has room again: it stays where it is.
        let b = "b@example.com";
        note(&table, b, net("10.0.0.1"), SE, T);
        note(&table, b, net("10.0.1.1"), SE, T);
        assert_eq!(note(&table, b, net("10.0.2.1"), SE, T + 3600).networks, 1);
        assert_eq!(class(&table, b), 0);
    }

    #[test]
    fn a_place_given_up_is_taken_by_the_next_account_and_eviction_closes_the_gaps() {
        let mut shard = Shard::new(Layout::for_limits(11, 5));
        let minute = T / 60;
        shard.insert(1, minute).unwrap();
        for i in 0..3u8 {
            let network = net(&format!("10.0.{i}.1"));
            let p = shard.make_room(shard.find(1).unwrap(), network, None, minute);
            shard.entry(p).note(network, None, minute);
        }
        assert_eq!(shard.find(1).unwrap().0, Place { class: 1, n: 0 });
        assert_eq!(shard.slabs[0].free, [0]);
        assert_eq!(shard.insert(2, minute).unwrap().0, Place { class: 0, n: 0 }, "the place given up");
        assert_eq!((shard.slabs[0].len, shard.entries), (1, 2));
        // Another move leaves a gap at the start of class 0, which eviction closes.
        shard.insert(3, minute).unwrap();
        for i in 0..3u8 {
            let network = net(&format!("10.0.{i}.1"));
            let p = shard.make_room(shard.find(2).unwrap(), network, None, minute);
            shard.entry(p).note(network, None, minute);
        }
        assert_eq!(shard.slabs[0].free, [0]);
        assert_eq!(shard.evict_idle(minute), 0);
        assert!(shard.slabs[0].free.is_empty());
        assert_eq!((shard.slabs[0].len, shard.slabs[1].len, shard.entries), (1, 2, 3));
        for key in 1..=3 {
            assert!(shard.find(key).is_some(), "{key}");
        }
        assert_eq!(shard.find(3).unwrap().0, Place { class: 0, n: 0 });
        assert_eq!(shard.evict_idle(minute + 24 * 60), 3);
        assert_eq!(shard.entries, 0);
        assert!(shard.slabs.iter().all(|s| s.len == 0 && s.chunks.is_empty()));
    }

    #[test]
    fn the_table_grows_and_evicts_accounts_idle_for_a_day() {
        let table = LoginTable::new(Layout::for_limits(4, 2));
        let accounts = 20 * CHUNK;
        for i in 0..accounts {
            // Even accounts at T from Sweden, odd ones an hour later from Germany.
            let (now, country) = if i % 2 == 0 { (T, SE) } else { (T + 3600, DE) };
            note(
                &table,
                &format!("{i}@example.com"),
                Network::of(IpAddr::from([10, 0, (i / 256) as u8, 1])),
                country,
                now,
            );
        }
        assert_eq!(table.len(), accounts);
        assert_eq!(table.evict_idle(T + 24 * 3600), accounts / 2);
        assert_eq!(table.len(), accounts / 2);
        for i in 0..accounts {
            let name = format!("{i}@example.com");
            assert_eq!(table.contains(&name), i % 2 == 1, "{name}");
        }
        // The ones kept kept their places: Sweden is their second country of the day (their
        // network of 23 hours ago no longer counts).
        for i in (1..accounts).step_by(2) {
            let spread = note(&table, &format!("{i}@example.com"), net("192.0.2.1"), SE, T + 24 * 3600);
            assert_eq!(spread, Spread { networks: 1, countries: 2 }, "{i}");
        }
        assert_eq!(table.evict_idle(T + 48 * 3600), accounts / 2);
        assert!(table.is_empty());
    }
}
