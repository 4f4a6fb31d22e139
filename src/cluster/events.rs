//! What nodes tell each other about restrictions: one [`ClusterEvent`] per restrict or release,
//! stamped so that the newest wins everywhere.

use serde::{Deserialize, Serialize};

use crate::policy::restriction::Restriction;

/// A restrict or release made on one node, as stored in Redis and broadcast (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    pub account: String,
    /// Milliseconds since the epoch on the node that made it (never earlier than an event that
    /// node knew for the account).
    pub at_ms: i64,
    /// The node that made it; breaks ties between equal stamps.
    pub node: String,
    /// Who acted: `policy` or the administrator.
    pub by: String,
    #[serde(flatten)]
    pub change: Change,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    Restrict { restriction: Restriction },
    Release { reason: String },
}

impl ClusterEvent {
    /// The order of events of one account: later stamp wins, then the greater node id.
    pub fn stamp(&self) -> (i64, &str) {
        (self.at_ms, &self.node)
    }

    /// The JSON form.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads an event; one that does not parse is logged and ignored.
pub fn decode(text: &str) -> Option<ClusterEvent> {
    match serde_json::from_str(text) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!("ignoring a cluster event that does not parse: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::policy::restriction::Counters;

    #[test]
    fn events_round_trip_and_order_by_stamp_then_node() {
        let at = OffsetDateTime::from_unix_timestamp(1_795_341_600).unwrap();
        let restriction =
            Restriction::by_policy("a@example.com", "limit", "default", at, None, Counters::default(), "");
        let restrict = ClusterEvent {
            account: "a@example.com".into(),
            at_ms: 1_795_341_600_123,
            node: "mx1".into(),
            by: "policy".into(),
            change: Change::Restrict { restriction },
        };
        let text = restrict.encode();
        assert!(text.contains("\"op\":\"restrict\""), "{text}");
        assert_eq!(decode(&text), Some(restrict.clone()));
        let release = ClusterEvent {
            at_ms: restrict.at_ms,
            node: "mx2".into(),
            change: Change::Release { reason: "ok".into() },
            ..restrict.clone()
        };
        assert!(release.stamp() > restrict.stamp(), "equal times: the greater node id wins");
        assert_eq!(decode("{not json"), None);
    }
}
