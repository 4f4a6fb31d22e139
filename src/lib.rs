//! outbound-guard: an outbound spam policy milter.
//!
//! # Layout
//!
//! The path of a message through the code follows the tree:
//!
//! - [`milter`]: the protocol — [`milter::frame`] (packets, size cap) → [`milter::command`] /
//!   [`milter::reply`] (typed, nom-decoded) → [`milter::session`] (state machine, the one place
//!   where a decision becomes a reply) → [`milter::connection`] (socket, timeouts) →
//!   [`milter::server`] (accept loop, connection cap, drain on shutdown).
//! - [`policy`]: decisions from plain facts (account, recipients, verdicts); knows nothing of
//!   the protocol or of storage. The engine ([`policy::engine`]) decides under one
//!   [`policy::compiled::Compiled`] configuration, keeps the [`policy::accounts`] table of
//!   [`policy::record`]s, and records restrictions through the [`policy::restriction`] store
//!   trait with the events that announce them ([`policy::events`]); time is one type,
//!   [`policy::clock::Timestamp`].
//! - [`state`]: the policy's traits on disk — restrictions in memory and in a checksummed,
//!   fsynced journal with an audit trail; the counters snapshot.
//! - [`notify`]: administrator notifications — events → localized email and webhook,
//!   through a durable spool with retries; never on the milter path.
//! - [`delivery`]: what became of the accepted messages — the Postfix log followed across
//!   rotations, each queue ID tied to its account, outcomes counted per account; the bounce
//!   signal. Off the milter path.
//! - [`verdict`]: the spam verdict on a message — from the headers a scanner in front of us
//!   wrote ([`verdict::headers`]) or by asking spamd ([`verdict::spamd`]) or rspamd
//!   ([`verdict::rspamd`]) directly; a scanner that fails is an error, never a refusal.
//! - [`cluster`]: `state.backend = "redis"` — counters and restrictions shared by several nodes
//!   through Redis, wrapped around the engine and the durable store; the local view decides
//!   when Redis is away.
//! - [`maillog`]: Postfix log lines as typed facts (nom), for the delivery follower and the
//!   simulator.
//! - [`simulate`]: `outbound-guard simulate` — a Postfix log's accepted messages rebuilt and
//!   replayed through the engine on the log's clock, reported as text, JSON or an HTML page.
//! - [`config`]: `plugin.toml` → raw structs → validated model with file/line/key errors; every
//!   value typed once (the relay URL, scanner addresses, the Redis target, header patterns,
//!   reply texts), so the layers above use it without parsing again.
//!
//! Each module uses only those below it: wiring (`main`, `cli`, `daemon`, `load`) → faces
//! around the engine (`admin`, `cluster`, `simulate`) → `milter`, `notify`, `delivery` → `state` → `policy` →
//! `verdict`, `maillog` → `config` → process-wide utilities (`metrics`, `huge_pages`).
//! - [`cli`]: the command line definition (clap), shared with the man page generator.
//! - [`daemon`]: wiring for `outbound-guard run`: logging, signals, the tasks.
//! - [`huge_pages`]: the process allocator, which backs the account table with huge pages.
//! - [`load`]: the load generator behind `milter-load` (src/bin): Postfix-like MTA-side
//!   connections on [`milter::client`], throughput, latency, the filter's CPU and memory.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod huge_pages;
pub mod load;
pub mod maillog;
pub mod metrics;
pub mod milter;
pub mod notify;
pub mod policy;
pub mod simulate;
pub mod state;
pub mod verdict;
