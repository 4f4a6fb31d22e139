//! Administration: the HTTP API and its token ([`api`], [`token`]), the web page it serves
//! ([`page`]), and the CLI's client side ([`client`]).

pub mod api;
pub mod client;
pub mod page;
pub mod token;
