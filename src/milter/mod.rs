//! The milter protocol (version 6), in layers: [`frame`] cuts packets, [`command`] and
//! [`reply`] type them, [`session`] holds the state machine and talks to the policy,
//! [`connection`] owns a socket and its timeouts, [`server`] accepts connections.

pub mod client;
pub mod command;
pub mod connection;
pub mod frame;
pub mod macros;
pub mod negotiate;
pub mod reply;
pub mod server;
pub mod session;
