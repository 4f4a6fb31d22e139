//! Administration: the HTTP API and its token ([`api`], [`token`]), the connection limits it is
//! served under ([`serve`]), the web page it serves ([`page`]), and the CLI's client side
//! ([`client`]).

pub mod api;
pub mod client;
pub mod page;
pub mod serve;
pub mod token;
