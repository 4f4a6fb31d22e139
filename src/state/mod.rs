//! What must outlive the process: restrictions and their audit trail (a checksummed, fsynced
//! journal), and the counters snapshot written at graceful shutdown.

pub mod durable;
pub mod journal;
pub mod restrictions;
pub mod snapshot;
