//! Configuration: `plugin.toml` read into raw serde structs ([`raw`]), then validated into the
//! domain model below, published as an immutable `Arc<Config>`; a reload builds a new one.
//!
//! Errors name the file, line, key and value ([`error`]). Relative paths are resolved against
//! the directory of the configuration file.

pub mod duration;
pub mod error;
pub mod geoip;
pub mod raw;
pub mod redis;
pub mod relay;
pub mod replies;
pub mod scanner;
pub mod socket;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use error::{ConfigError, Invalid};
pub use geoip::{CountryCode, GeoIp};
pub use redis::{RedisTarget, RedisUrl, RedisUrlError};
pub use relay::{RelaySecurity, RelayUrl, RelayUrlError};
pub use replies::ReplyTexts;
pub use scanner::{RspamdUrl, RspamdUrlError, SpamdAddress};
pub use socket::ListenAddr;
pub use validate::builtin_default_policy;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub milter: MilterConfig,
    pub organization: Organization,
    pub state: StateConfig,
    pub verdict: VerdictConfig,
    pub notify: NotifyConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub replies: ReplyTexts,
    pub policies: Policies,
    pub groups: BTreeMap<String, Vec<String>>,
    pub delivery: DeliveryConfig,
    /// `[geoip] database`, opened: the country of a client address for the login-spread
    /// signal. `None` without the key.
    pub geoip: Option<GeoIp>,
}

/// `[milter]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterConfig {
    pub listen: ListenAddr,
    pub on_internal_error: InternalErrorAction,
    pub max_connections: usize,
    pub io_timeout: Duration,
    pub idle_timeout: Duration,
    /// Permissions of a unix socket.
    pub socket_mode: u32,
    /// A second socket for the MTA's local submissions (Postfix `non_smtpd_milters`): every
    /// transaction on it is a local submission.
    pub local_listen: Option<ListenAddr>,
}

/// What the MTA is told when the filter cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalErrorAction {
    Tempfail,
    Accept,
}

/// `[organization]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    /// Lower-case ASCII (IDNs in their `xn--` form).
    pub local_domains: Vec<String>,
    pub internal_networks: Vec<IpNet>,
    pub strip_subaddress: bool,
    /// The aggregate account every local submission is also counted under, as written;
    /// `None` when configured as `""`.
    pub local_submission_account: Option<String>,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub dir: PathBuf,
    pub backend: Backend,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Memory,
    /// Cluster mode: counters and restrictions shared through Redis at this URL.
    Redis(Box<RedisUrl>),
}

/// `[verdict]`.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictConfig {
    pub headers: bool,
    /// spamd, when it is among the sources.
    pub spamd: Option<SpamdAddress>,
    /// rspamd, when it is among the sources.
    pub rspamd: Option<RspamdUrl>,
    pub timeout: Duration,
    pub max_scan_bytes: usize,
    pub rules: Vec<HeaderRule>,
}

impl VerdictConfig {
    /// Whether any verdict source is enabled (otherwise no message is ever judged).
    pub fn any_source(&self) -> bool {
        self.headers || self.spamd.is_some() || self.rspamd.is_some()
    }
}

/// An administrator's extra header rule: a header field and what makes it say spam.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderRule {
    pub header: String,
    pub test: HeaderTest,
}

/// When a header rule's field says spam.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderTest {
    /// `pattern`: the field's value matches this regular expression.
    Pattern(HeaderPattern),
    /// `min_score`: the first number in the field's value is at least this.
    MinScore(f64),
}

/// A compiled `pattern`; two are equal when written the same.
#[derive(Debug, Clone)]
pub struct HeaderPattern(regex::Regex);

impl HeaderPattern {
    /// Compiles a pattern.
    ///
    /// # Errors
    /// When it is not a valid regular expression.
    pub fn new(pattern: &str) -> Result<HeaderPattern, regex::Error> {
        regex::Regex::new(pattern).map(HeaderPattern)
    }

    /// The compiled expression.
    pub fn regex(&self) -> &regex::Regex {
        &self.0
    }
}

impl PartialEq for HeaderPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    pub recipients: Vec<String>,
    pub from: String,
    /// Where notifications are relayed.
    pub smtp: RelayUrl,
    pub webhook: Option<String>,
    pub language: Language,
    pub templates_dir: Option<PathBuf>,
    pub warn_at_percent: u8,
    pub node_name: String,
    /// Base URL of the admin page as administrators reach it, for the links in notifications.
    pub admin_url: Option<String>,
}

/// Notification languages with built-in templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    En,
    Sv,
    Nl,
    Da,
}

impl Language {
    pub const ALL: [(&'static str, Language); 4] =
        [("en", Language::En), ("sv", Language::Sv), ("nl", Language::Nl), ("da", Language::Da)];
    pub fn code(self) -> &'static str {
        Self::ALL.iter().find(|(_, l)| *l == self).map_or("en", |(c, _)| c)
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive such as `info` or `outbound_guard=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[delivery]`: what became of the accepted messages, read from the MTA's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// The Postfix log to follow (rotation-safe); `None`: outcomes are not followed and the
    /// bounce signal is off.
    pub postfix_log: Option<PathBuf>,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: std::net::SocketAddr,
    pub token_file: PathBuf,
}

/// `[policy.default]` plus the `[[policy.rule]]`s sorted by priority, and the
/// `[[policy.domain]]` caps as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Policies {
    pub default: PolicySettings,
    pub rules: Vec<Rule>,
    pub domains: Vec<DomainCap>,
}

/// `[[policy.domain]]`: the recipients of every account whose domain is `domain` or a
/// subdomain of it, counted together against these limits (0 = none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCap {
    /// Canonical: IDNA ASCII, lower case.
    pub domain: String,
    pub recipient_limit_external_per_hour: u32,
    pub recipient_limit_per_day: u32,
    pub action: LimitAction,
}

impl DomainCap {
    /// The name the domain is restricted and counted under: `@customer.example`.
    pub fn account(&self) -> String {
        format!("@{}", self.domain)
    }

    /// The cap as the policy settings its counting runs under: only its own limits, its
    /// action when one is reached, and nothing that would act on a message.
    pub fn settings(&self) -> PolicySettings {
        PolicySettings {
            name: format!("domain {}", self.domain),
            recipient_limit_external_per_hour: self.recipient_limit_external_per_hour,
            recipient_limit_internal_per_hour: 0,
            recipient_limit_per_day: self.recipient_limit_per_day,
            max_recipients_per_message: 0,
            action_when_threshold_reached: self.action,
            spam_min_messages: 0,
            spam_percent: 0,
            spam_action: LimitAction::Alert,
            spam_message_action: SpamMessageAction::Accept,
            bcc_suspicious_to: Vec::new(),
            notify_recipients: Vec::new(),
            notify_sender: false,
            always_allowed_recipients: Vec::new(),
            ..validate::builtin_default_policy()
        }
    }
}

/// What happens when a limit is reached or spam share exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    BlockUntilTomorrow,
    Block,
    Alert,
}

/// What happens to one message judged spam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpamMessageAction {
    Accept,
    Tag,
    Quarantine,
    Reject,
}

/// The keys of a policy. A limit of 0 means "no limit of this kind".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    pub name: String,
    pub recipient_limit_external_per_hour: u32,
    pub recipient_limit_internal_per_hour: u32,
    pub recipient_limit_per_day: u32,
    pub max_recipients_per_message: u32,
    pub action_when_threshold_reached: LimitAction,
    pub spam_window: Duration,
    pub spam_min_messages: u32,
    pub spam_percent: u8,
    pub spam_action: LimitAction,
    pub spam_message_action: SpamMessageAction,
    pub bcc_suspicious_to: Vec<String>,
    pub notify_recipients: Vec<String>,
    /// Whether a restricted account is itself told, at its own address.
    pub notify_sender: bool,
    /// Recipients a restricted account may still write to (e.g. the helpdesk), canonical.
    pub always_allowed_recipients: Vec<String>,
    /// Login spread: distinct client networks (IPv4 /24, IPv6 /48) one authenticated account
    /// may send from within a rolling hour; 0 disables it.
    pub max_client_networks_per_hour: u32,
    /// Login spread: distinct countries (by `[geoip] database`) within a rolling 24 h; 0
    /// disables it.
    pub max_client_countries_per_day: u32,
    pub login_spread_action: LimitAction,
    /// Bounce signal: the share (percent) of the account's recipients with a final outcome in
    /// `bounce_window` that bounced; 0 disables it.
    pub bounce_percent: u8,
    /// ... and at least this many bounced recipients.
    pub bounce_min_recipients: u32,
    pub bounce_window: Duration,
    pub bounce_action: LimitAction,
    /// Repeat offenders: the policy restriction that is at least the `escalate_after`-th
    /// within `escalate_window` is made until released, whatever the action says; 0 is off.
    pub escalate_after: u32,
    pub escalate_window: Duration,
}

/// The highest `max_client_networks_per_hour`: the login-spread state of an account holds one
/// network more than the limit, and no more (its memory is bounded and small).
pub const LOGIN_SPREAD_MAX_NETWORKS: u32 = 11;

/// The highest `max_client_countries_per_day`, for the same reason.
pub const LOGIN_SPREAD_MAX_COUNTRIES: u32 = 5;

/// A custom policy and the accounts it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: i64,
    pub from: Vec<String>,
    pub from_member_of: Vec<String>,
    pub sender_domain_is: Vec<String>,
    pub except_if_from: Vec<String>,
    pub except_if_from_member_of: Vec<String>,
    pub except_if_sender_domain_is: Vec<String>,
    /// The default's settings with this rule's overrides applied.
    pub settings: PolicySettings,
}

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line, key and value of the first problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
        Self::parse(path, &source)
    }

    /// The `[admin]` settings of the file at `path`, for the administration commands: from the
    /// whole file when it validates; otherwise from its `[admin]` table alone, with the whole
    /// file's error handed back too, so that an administrator can still release an account
    /// while an unrelated part of the file is being fixed (the running filter keeps the
    /// policy it has).
    ///
    /// # Errors
    /// The whole file's error when not even its `[admin]` table can be read.
    pub fn load_admin(path: &Path) -> Result<(AdminConfig, Option<ConfigError>), ConfigError> {
        let source =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
        match Self::parse(path, &source) {
            Ok(config) => Ok((config.admin, None)),
            Err(whole) => match validate::admin_only(path, &source) {
                Ok(admin) => Ok((admin, Some(whole))),
                Err(_) => Err(whole),
            },
        }
    }

    /// Validates configuration text as if read from `path`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(source).map_err(|e| ConfigError::from_toml(path, source, &e))?;
        validate::validate(path, source, raw)
    }
}
