//! Administration: the HTTP API and its token ([`api`], [`token`]), and the CLI's client side
//! ([`client`]).

pub mod api;
pub mod client;
pub mod token;
