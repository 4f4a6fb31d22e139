//! Shared test support: an in-process daemon, and (for `real-peers` tests) real outside
//! programs — Postfix, smtp-sink, swaks, the libmilter reference filter, miltertest, spamd,
//! rspamd, redis-server — on private configurations and free loopback ports; the test messages of
//! `fixtures/messages`.
#![allow(dead_code)]

pub mod binary;
pub mod daemon;
pub mod messages;
pub mod mta;
pub mod notify_peers;
pub mod postfix;
pub mod postfix_alternate_dirs;
pub mod process;
pub mod redis;
pub mod refmilter;
pub mod scanners;
pub mod smtp_client;
pub mod smtp_sink;
pub mod swaks;
pub mod tls;
pub mod webdriver;
