//! A minimal writer of MaxMind DB files (the format of GeoLite2 and DB-IP lite), enough for a
//! country database the tests make themselves: an IPv6 tree with 32-bit records, IPv4
//! networks under `::/96` as in MaxMind's own files, and per network the map
//! `{"country": {"iso_code": "SE"}}`. Networks must not overlap.
//!
//! Layout (MaxMind DB spec, version 2.0): the search tree (one node per bit decided, two
//! records per node; a record is a node number, `node_count` for "no data", or
//! `node_count + 16 + offset` into the data section), 16 zero bytes, the data section, then
//! the marker `\xAB\xCD\xEFMaxMind.com` and the metadata map.

#![allow(dead_code)]

use std::net::IpAddr;

/// A record of the tree while it is built.
#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// A country database being built.
#[derive(Default)]
pub struct CountryDb {
    nodes: Vec<[Rec; 2]>,
    data: Vec<u8>,
}

fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (first, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        _ => {
            let n = size - 285;
            (30, vec![(n >> 8) as u8, n as u8])
        }
    };
    if kind <= 7 {
        out.push(kind << 5 | first);
    } else {
        out.push(first);
        out.push(kind - 7);
    }
    out.extend(extra);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn map(out: &mut Vec<u8>, pairs: usize) {
    control(out, 7, pairs);
}

/// An unsigned integer of `kind` (5: uint16, 6: uint32, 9: uint64), in as few bytes as it needs.
fn uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

impl CountryDb {
    pub fn new() -> CountryDb {
        CountryDb { nodes: vec![[Rec::Empty; 2]], data: Vec::new() }
    }

    /// `network` (e.g. "192.0.2.0/24", "2001:db8::/32") is in `country` (e.g. "SE").
    pub fn insert(&mut self, network: &str, country: &str) -> &mut CountryDb {
        let (addr, len) = network.split_once('/').expect("a network with its prefix length");
        let addr: IpAddr = addr.parse().expect("an address");
        let len: usize = len.parse().expect("a prefix length");
        let (bits, len) = match addr {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 96 + len),
            IpAddr::V6(v6) => (u128::from(v6), len),
        };
        let offset = self.data.len();
        map(&mut self.data, 1);
        string(&mut self.data, "country");
        map(&mut self.data, 1);
        string(&mut self.data, "iso_code");
        string(&mut self.data, country);
        let mut node = 0;
        for depth in 0..len {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == len {
                self.nodes[node][bit] = Rec::Data(offset);
                break;
            }
            node = match self.nodes[node][bit] {
                Rec::Node(next) => next,
                Rec::Empty => {
                    self.nodes.push([Rec::Empty; 2]);
                    let next = self.nodes.len() - 1;
                    self.nodes[node][bit] = Rec::Node(next);
                    next
                }
                Rec::Data(_) => panic!("{network} overlaps a network inserted before"),
            };
        }
        self
    }

    /// The database file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let count = self.nodes.len();
        let mut out = Vec::new();
        for node in &self.nodes {
            for rec in node {
                let value = match *rec {
                    Rec::Empty => count,
                    Rec::Node(n) => n,
                    Rec::Data(offset) => count + 16 + offset,
                };
                out.extend_from_slice(&(value as u32).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        map(&mut out, 9);
        string(&mut out, "binary_format_major_version");
        uint(&mut out, 5, 2);
        string(&mut out, "binary_format_minor_version");
        uint(&mut out, 5, 0);
        string(&mut out, "build_epoch");
        uint(&mut out, 9, 1_796_000_000);
        string(&mut out, "database_type");
        string(&mut out, "Test-Country");
        string(&mut out, "description");
        map(&mut out, 1);
        string(&mut out, "en");
        string(&mut out, "countries of documentation networks, for tests");
        string(&mut out, "ip_version");
        uint(&mut out, 5, 6);
        string(&mut out, "languages");
        control(&mut out, 11, 1);
        string(&mut out, "en");
        string(&mut out, "node_count");
        uint(&mut out, 6, count as u64);
        string(&mut out, "record_size");
        uint(&mut out, 5, 32);
        out
    }

    /// Writes the database to `path`.
    pub fn write(&self, path: &std::path::Path) {
        std::fs::write(path, self.build()).expect("the test database written");
    }
}

/// The tests' usual database: documentation networks in three countries, and one address
/// range it does not know.
pub fn documentation_countries() -> CountryDb {
    let mut db = CountryDb::new();
    db.insert("192.0.2.0/24", "SE")
        .insert("198.51.100.0/24", "DE")
        .insert("203.0.113.0/24", "US")
        .insert("2001:db8:1::/48", "NL")
        .insert("2001:db8:2::/48", "DK");
    db
}
