//! Redis key names. The account is a hash tag (`{…}`), so an account's keys share one Redis
//! Cluster slot and a script may touch them together.

/// The hash of an account's TATs (fields [`TAT_FIELDS`], microseconds since the epoch).
pub fn tats(account: &str) -> String {
    format!("og:{{{account}}}:tat")
}

/// The hash of an account's newest restriction event (fields `at`, `node`, `data`).
pub fn event(account: &str) -> String {
    format!("og:{{{account}}}:ev")
}

/// The set of accounts that have an event (for reconciliation).
pub const ACCOUNTS: &str = "og:accounts";

/// The pub/sub channel of events.
pub const CHANNEL: &str = "og:events";

/// Field names of the TAT hash, in `LimitKind` order: external per hour, internal per hour,
/// per day.
pub const TAT_FIELDS: [&str; 3] = ["e", "i", "d"];

#[cfg(test)]
mod tests {
    #[test]
    fn keys_of_one_account_share_a_hash_tag() {
        assert_eq!(super::tats("a@example.com"), "og:{a@example.com}:tat");
        assert_eq!(super::event("a@example.com"), "og:{a@example.com}:ev");
    }
}
