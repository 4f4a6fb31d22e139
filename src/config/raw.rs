//! The configuration file as written: serde structs that refuse unknown keys and wrong types.
//! Every field is optional here; defaults and meaning are given by the validated model
//! (`config::model`), so the two concerns stay apart.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub milter: Option<RawMilter>,
    pub organization: Option<RawOrganization>,
    pub state: Option<RawState>,
    pub verdict: Option<RawVerdict>,
    pub notify: Option<RawNotify>,
    pub log: Option<RawLog>,
    pub admin: Option<RawAdmin>,
    pub replies: Option<RawReplies>,
    pub policy: Option<RawPolicies>,
    pub groups: Option<BTreeMap<String, Vec<String>>>,
    pub delivery: Option<RawDelivery>,
    pub geoip: Option<RawGeoip>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMilter {
    pub listen: Option<String>,
    pub on_internal_error: Option<String>,
    pub max_connections: Option<i64>,
    pub io_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub socket_mode: Option<String>,
    pub local_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrganization {
    pub local_domains: Option<Vec<String>>,
    pub internal_networks: Option<Vec<String>>,
    pub strip_subaddress: Option<bool>,
    pub local_submission_account: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub dir: Option<String>,
    pub backend: Option<String>,
    pub redis_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerdict {
    pub sources: Option<Vec<String>>,
    pub spamd: Option<String>,
    pub rspamd: Option<String>,
    pub timeout: Option<String>,
    pub max_scan_bytes: Option<i64>,
    pub rule: Option<Vec<RawHeaderRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderRule {
    pub header: Option<String>,
    pub pattern: Option<String>,
    pub min_score: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub recipients: Option<Vec<String>>,
    pub from: Option<String>,
    pub smtp: Option<String>,
    pub webhook: Option<String>,
    pub language: Option<String>,
    pub templates_dir: Option<String>,
    pub warn_at_percent: Option<i64>,
    pub node_name: Option<String>,
    pub admin_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub postfix_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoip {
    pub database: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplies {
    pub account_restricted: Option<String>,
    pub limit_reached: Option<String>,
    pub too_many_recipients: Option<String>,
    pub spam_rejected: Option<String>,
    pub too_many_recipients_local: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    pub default: Option<RawPolicy>,
    pub rule: Option<Vec<RawPolicy>>,
    pub domain: Option<Vec<RawDomainCap>>,
}

/// `[[policy.domain]]`: an aggregate cap over every account of one sender domain.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomainCap {
    pub domain: Option<String>,
    pub recipient_limit_external_per_hour: Option<i64>,
    pub recipient_limit_per_day: Option<i64>,
    pub action: Option<String>,
}

/// `[policy.default]` and each `[[policy.rule]]`: one shape, because a rule may override any
/// key of the default. Which keys are allowed where is checked during validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    // Only in rules.
    pub name: Option<String>,
    pub priority: Option<i64>,
    pub from: Option<Vec<String>>,
    pub from_member_of: Option<Vec<String>>,
    pub sender_domain_is: Option<Vec<String>>,
    pub except_if_from: Option<Vec<String>>,
    pub except_if_from_member_of: Option<Vec<String>>,
    pub except_if_sender_domain_is: Option<Vec<String>>,
    // Settings.
    pub recipient_limit_external_per_hour: Option<i64>,
    pub recipient_limit_internal_per_hour: Option<i64>,
    pub recipient_limit_per_day: Option<i64>,
    pub max_recipients_per_message: Option<i64>,
    pub action_when_threshold_reached: Option<String>,
    pub spam_window: Option<String>,
    pub spam_min_messages: Option<i64>,
    pub spam_percent: Option<i64>,
    pub spam_action: Option<String>,
    pub spam_message_action: Option<String>,
    pub bcc_suspicious_to: Option<Vec<String>>,
    pub notify_recipients: Option<Vec<String>>,
    pub notify_sender: Option<bool>,
    pub always_allowed_recipients: Option<Vec<String>>,
    pub max_client_networks_per_hour: Option<i64>,
    pub max_client_countries_per_day: Option<i64>,
    pub login_spread_action: Option<String>,
    pub bounce_percent: Option<i64>,
    pub bounce_min_recipients: Option<i64>,
    pub bounce_window: Option<String>,
    pub bounce_action: Option<String>,
    pub escalate_after: Option<i64>,
    pub escalate_window: Option<String>,
}
