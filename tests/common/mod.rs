//! Shared test support: an in-process daemon, and (for `real-peers` tests) real outside
//! programs — Postfix, Sendmail, smtp-sink, swaks, the libmilter reference filter, miltertest, spamd,
//! rspamd, redis-server — on private configurations and free loopback ports; the test messages of
//! `fixtures/messages`; the README's deployment recipes.
#![allow(dead_code)]

pub mod binary;
pub mod daemon;
pub mod messages;
pub mod mmdb;
pub mod mta;
pub mod nodes;
pub mod notify_peers;
pub mod postfix;
pub mod postfix_alternate_dirs;
pub mod process;
pub mod readme;
pub mod redis;
pub mod refmilter;
pub mod scanners;
pub mod sendmail;
pub mod smtp_client;
pub mod smtp_sink;
pub mod swaks;
pub mod tls;
pub mod webdriver;
