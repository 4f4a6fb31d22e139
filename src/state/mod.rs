//! What must outlive the process, behind the policy's traits: restrictions and their audit
//! trail ([`durable`], on a checksummed, fsynced [`journal`], with [`memory`] answering
//! lookups and [`history`] finding an account's entries in the audit log), and the counters snapshot written at graceful shutdown ([`snapshot`], which owns
//! the account records' byte format).

pub mod durable;
pub mod history;
pub mod journal;
pub mod memory;
pub mod snapshot;
