//! Raw configuration → validated model: defaults, ranges, cross-references, path resolution.
//! Each failure names the key path; `ConfigError::at` finds its line and value in the text.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::error::{ConfigError, KeyPath};
use super::raw::{RawAdmin, RawConfig, RawPolicy};
use super::replies::{self, ReplyTexts};
use super::*;

struct Validator<'a> {
    file: &'a Path,
    source: &'a str,
    base: PathBuf,
}

type Result<T> = std::result::Result<T, ConfigError>;

fn key(path: &str) -> KeyPath {
    let mut p = KeyPath::default();
    for part in path.split('.') {
        p = p.key(part);
    }
    p
}

impl Validator<'_> {
    fn err(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, self.source, path, message)
    }

    fn duration(&self, path: &KeyPath, value: Option<&String>, default: Duration) -> Result<Duration> {
        let Some(text) = value else {
            return Ok(default);
        };
        let d = duration::parse(text).map_err(|m| self.err(path, m))?;
        if d.is_zero() {
            return Err(self.err(path, "must be longer than zero"));
        }
        Ok(d)
    }

    fn int(
        &self,
        path: &KeyPath,
        value: Option<i64>,
        default: u32,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<u32> {
        let Some(v) = value else { return Ok(default) };
        if !range.contains(&v) {
            return Err(self.err(path, format!("must be between {} and {}", range.start(), range.end())));
        }
        Ok(v as u32)
    }

    fn choice<T: Copy>(&self, path: &KeyPath, value: Option<&String>, default: T, choices: &[(&str, T)]) -> Result<T> {
        let Some(text) = value else {
            return Ok(default);
        };
        choices.iter().find(|(name, _)| name == text).map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            self.err(path, format!("must be one of {}", names.join(", ")))
        })
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() { p.to_owned() } else { self.base.join(p) }
    }

    fn address(&self, path: &KeyPath, text: &str) -> Result<String> {
        let (local, domain) = text.rsplit_once('@').ok_or_else(|| self.err(path, "is not an email address"))?;
        if local.is_empty() || domain.is_empty() || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(self.err(path, "is not an email address"));
        }
        Ok(text.to_owned())
    }

    fn addresses(&self, path: &KeyPath, list: Option<&Vec<String>>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (i, a) in list.into_iter().flatten().enumerate() {
            out.push(self.address(&path.index(i), a)?);
        }
        Ok(out)
    }

    fn domain(&self, path: &KeyPath, text: &str) -> Result<String> {
        let trimmed = text.trim().trim_start_matches('@').trim_end_matches('.');
        let ascii = idna::domain_to_ascii(trimmed).map_err(|_| self.err(path, "is not a valid domain name"))?;
        // Labels of letters, digits, `-` (and `_`, found in real host names), 1–63 each.
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if ascii.is_empty() || ascii.len() > 253 || !ascii.split('.').all(label_ok) {
            return Err(self.err(path, "is not a valid domain name"));
        }
        Ok(ascii)
    }

    fn domains(&self, path: &KeyPath, list: Option<&Vec<String>>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (i, d) in list.into_iter().flatten().enumerate() {
            out.push(self.domain(&path.index(i), d)?);
        }
        Ok(out)
    }
}

/// Validates a parsed file.
fn validator<'a>(file: &'a Path, source: &'a str) -> Validator<'a> {
    let base = file.parent().map(Path::to_owned).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    Validator { file, source, base }
}

fn validate_admin(v: &Validator<'_>, a: RawAdmin) -> Result<AdminConfig> {
    Ok(AdminConfig {
        listen: a.listen.as_deref().unwrap_or("127.0.0.1:7358").parse().map_err(|_| {
            v.err(&key("admin.listen"), "must be HOST:PORT with an IP address, e.g. \"127.0.0.1:7358\"")
        })?,
        token_file: v.path(a.token_file.as_deref().unwrap_or("state/admin.token")),
    })
}

/// Only the `[admin]` table of a file, for the administration commands when the file as a
/// whole does not validate.
pub(super) fn admin_only(file: &Path, source: &str) -> Result<AdminConfig> {
    let v = validator(file, source);
    let table: toml::Table = toml::from_str(source).map_err(|e| ConfigError::from_toml(file, source, &e))?;
    let raw = match table.get("admin") {
        None => RawAdmin::default(),
        Some(admin) => admin.clone().try_into().map_err(|_| v.err(&key("admin"), "is not a valid [admin] table"))?,
    };
    validate_admin(&v, raw)
}

pub(super) fn validate(file: &Path, source: &str, raw: RawConfig) -> Result<Config> {
    let v = validator(file, source);

    let m = raw.milter.unwrap_or_default();
    let listen_text = m.listen.as_deref().unwrap_or("inet:127.0.0.1:7357");
    let listen = match listen_text.parse::<ListenAddr>().map_err(|e| v.err(&key("milter.listen"), e))? {
        ListenAddr::Unix(p) => ListenAddr::Unix(v.path(&p.to_string_lossy())),
        inet => inet,
    };
    let socket_mode = match &m.socket_mode {
        None => 0o660,
        Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| v.err(&key("milter.socket_mode"), "must be an octal file mode such as \"0660\""))?,
    };
    let local_listen = match &m.local_listen {
        None => None,
        Some(text) => Some(match text.parse::<ListenAddr>().map_err(|e| v.err(&key("milter.local_listen"), e))? {
            ListenAddr::Unix(p) => ListenAddr::Unix(v.path(&p.to_string_lossy())),
            inet => inet,
        }),
    };
    if local_listen.as_ref().is_some_and(|l| *l == listen && !matches!(l, ListenAddr::Inet(a) if a.port() == 0)) {
        return Err(
            v.err(&key("milter.local_listen"), "is milter.listen too: local submissions need a socket of their own")
        );
    }
    let milter = MilterConfig {
        local_listen,
        listen,
        on_internal_error: v.choice(
            &key("milter.on_internal_error"),
            m.on_internal_error.as_ref(),
            InternalErrorAction::Tempfail,
            &[("tempfail", InternalErrorAction::Tempfail), ("accept", InternalErrorAction::Accept)],
        )?,
        max_connections: v.int(&key("milter.max_connections"), m.max_connections, 1024, 1..=1_000_000)? as usize,
        io_timeout: v.duration(&key("milter.io_timeout"), m.io_timeout.as_ref(), Duration::from_secs(30))?,
        idle_timeout: v.duration(&key("milter.idle_timeout"), m.idle_timeout.as_ref(), Duration::from_secs(3600))?,
        socket_mode,
    };

    let o = raw.organization.unwrap_or_default();
    let local_domains = match &o.local_domains {
        None => vec!["example.com".to_owned()],
        Some(list) => v.domains(&key("organization.local_domains"), Some(list))?,
    };
    let networks_text = o.internal_networks.clone().unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]);
    let mut internal_networks = Vec::new();
    for (i, text) in networks_text.iter().enumerate() {
        let net =
            text.parse::<IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from)).map_err(|_| {
                v.err(
                    &key("organization.internal_networks").index(i),
                    "is not a network; write e.g. \"192.0.2.0/24\" or \"2001:db8::/32\"",
                )
            })?;
        internal_networks.push(net.trunc());
    }
    let organization = Organization {
        local_domains,
        internal_networks,
        strip_subaddress: o.strip_subaddress.unwrap_or(true),
        local_submission_account: None,
    };
    let aggregate = o.local_submission_account.as_deref().unwrap_or("local-submissions");
    let organization = Organization {
        local_submission_account: match aggregate {
            "" => None,
            name if name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>') => {
                return Err(v.err(
                    &key("organization.local_submission_account"),
                    "must be an account name without spaces, control characters or angle brackets (\"\" for none)",
                ));
            }
            name => Some(name.to_owned()),
        },
        ..organization
    };

    let s = raw.state.unwrap_or_default();
    let backend =
        v.choice(&key("state.backend"), s.backend.as_ref(), "memory", &[("memory", "memory"), ("redis", "redis")])?;
    let backend = match backend {
        "redis" => {
            let text = s.redis_url.as_deref().unwrap_or("redis://127.0.0.1:6379/0");
            Backend::Redis(Box::new(RedisUrl::parse(text).map_err(|e| v.err(&key("state.redis_url"), e.to_string()))?))
        }
        _ => Backend::Memory,
    };
    let state = StateConfig { dir: v.path(s.dir.as_deref().unwrap_or("state")), backend };

    let vr = raw.verdict.unwrap_or_default();
    let sources = vr.sources.clone().unwrap_or_else(|| vec!["headers".into()]);
    let mut seen = HashSet::new();
    for (i, src) in sources.iter().enumerate() {
        let path = key("verdict.sources").index(i);
        if !["headers", "spamd", "rspamd"].contains(&src.as_str()) {
            return Err(v.err(&path, "must be one of \"headers\", \"spamd\", \"rspamd\""));
        }
        if !seen.insert(src.as_str()) {
            return Err(v.err(&path, "is listed twice"));
        }
    }
    // Checked whenever written, used or not: a typo should not wait for the day the source is
    // switched on.
    let spamd = SpamdAddress::parse(vr.spamd.as_deref().unwrap_or("127.0.0.1:783"))
        .map_err(|why| v.err(&key("verdict.spamd"), why))?;
    let rspamd = RspamdUrl::parse(vr.rspamd.as_deref().unwrap_or("http://127.0.0.1:11333"))
        .map_err(|e| v.err(&key("verdict.rspamd"), e.to_string()))?;
    let spamd = sources.iter().any(|s| s == "spamd").then_some(spamd);
    let rspamd = sources.iter().any(|s| s == "rspamd").then_some(rspamd);
    let mut rules = Vec::new();
    for (i, r) in vr.rule.iter().flatten().enumerate() {
        let path = key("verdict.rule").index(i);
        let header = r.header.clone().filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
        let header = header.ok_or_else(|| v.err(&path.key("header"), "must name a header field"))?;
        let test = match (&r.pattern, r.min_score) {
            (Some(pattern), None) => HeaderTest::Pattern(HeaderPattern::new(pattern).map_err(|e| {
                let why = e.to_string().lines().last().unwrap_or("invalid").trim().to_owned();
                v.err(&path.key("pattern"), format!("is not a valid regular expression: {why}"))
            })?),
            (None, Some(min)) => HeaderTest::MinScore(min),
            _ => return Err(v.err(&path, "needs exactly one of `pattern` or `min_score`")),
        };
        rules.push(HeaderRule { header, test });
    }
    let verdict = VerdictConfig {
        headers: sources.iter().any(|s| s == "headers"),
        spamd,
        rspamd,
        timeout: v.duration(&key("verdict.timeout"), vr.timeout.as_ref(), Duration::from_secs(30))?,
        max_scan_bytes: v.int(&key("verdict.max_scan_bytes"), vr.max_scan_bytes, 512 * 1024, 1024..=64 * 1024 * 1024)?
            as usize,
        rules,
    };

    let n = raw.notify.unwrap_or_default();
    let recipients = match &n.recipients {
        None => vec!["postmaster@example.com".to_owned()],
        Some(list) => v.addresses(&key("notify.recipients"), Some(list))?,
    };
    let from = v.address(&key("notify.from"), n.from.as_deref().unwrap_or("outbound-guard@example.com"))?;
    let smtp_text = n.smtp.as_deref().unwrap_or("smtp://127.0.0.1:25");
    if !(smtp_text.starts_with("smtp://") || smtp_text.starts_with("smtps://")) {
        return Err(v.err(&key("notify.smtp"), "must be an smtp:// or smtps:// URL"));
    }
    // The error quotes the URL with the password masked, which is the value shown.
    let smtp = RelayUrl::parse(smtp_text)
        .map_err(|e| v.err(&key("notify.smtp"), e.why).with_value(format!("\"{}\"", e.url)))?;
    if let Some(hook) = &n.webhook
        && !(hook.starts_with("http://") || hook.starts_with("https://"))
    {
        return Err(v.err(&key("notify.webhook"), "must be an http:// or https:// URL"));
    }
    let notify = NotifyConfig {
        recipients,
        from,
        smtp,
        webhook: n.webhook.clone(),
        language: v.choice(&key("notify.language"), n.language.as_ref(), Language::En, &Language::ALL)?,
        templates_dir: n.templates_dir.as_deref().map(|d| v.path(d)),
        warn_at_percent: v.int(&key("notify.warn_at_percent"), n.warn_at_percent, 80, 0..=100)? as u8,
        node_name: n.node_name.clone().unwrap_or_else(local_hostname),
        admin_url: n.admin_url.clone(),
    };
    if let Some(text) = &n.admin_url {
        let ok = url::Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(v.err(
                &key("notify.admin_url"),
                "must be an http:// or https:// URL, e.g. \"https://mail.example.com:7358/\"",
            ));
        }
    }
    if let Some(dir) = &notify.templates_dir
        && !dir.is_dir()
    {
        return Err(v.err(&key("notify.templates_dir"), format!("{} is not a directory", dir.display())));
    }

    let l = raw.log.unwrap_or_default();
    let log = LogConfig {
        format: v.choice(
            &key("log.format"),
            l.format.as_ref(),
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?,
        level: l.level.clone().unwrap_or_else(|| "info".into()),
    };
    if !is_log_filter(&log.level) {
        return Err(v.err(
            &key("log.level"),
            "is not a log level (trace, debug, info, warn, error, off) or a filter of `target=level` directives",
        ));
    }

    let admin = validate_admin(&v, raw.admin.unwrap_or_default())?;
    if let ListenAddr::Inet(milter_addr) = &milter.listen
        && milter_addr.port() == admin.listen.port()
        && milter_addr.port() != 0
        && (milter_addr.ip() == admin.listen.ip()
            || milter_addr.ip().is_unspecified()
            || admin.listen.ip().is_unspecified())
    {
        return Err(v.err(
            &key("admin.listen"),
            format!("is the milter's address too (milter.listen = {milter_addr}): give each its own port"),
        ));
    }

    let rp = raw.replies.unwrap_or_default();
    let defaults = ReplyTexts::default();
    let mut reply_texts = defaults.clone();
    reply_texts.on_internal_error = milter.on_internal_error;
    for (name, value, slot, expected) in [
        ("account_restricted", &rp.account_restricted, &mut reply_texts.account_restricted, '5'),
        ("limit_reached", &rp.limit_reached, &mut reply_texts.limit_reached, '5'),
        ("too_many_recipients", &rp.too_many_recipients, &mut reply_texts.too_many_recipients, '4'),
        ("spam_rejected", &rp.spam_rejected, &mut reply_texts.spam_rejected, '5'),
        ("too_many_recipients_local", &rp.too_many_recipients_local, &mut reply_texts.too_many_recipients_local, '5'),
    ] {
        if let Some(text) = value {
            let path = key("replies").key(name);
            replies::validate(text).map_err(|m| v.err(&path, m))?;
            if !text.starts_with(expected) {
                return Err(v.err(&path, format!("must be a {expected}xx reply")));
            }
            *slot = replies::escape_for_mta(text);
        }
    }

    let geoip = validate_geoip(&v, raw.geoip.unwrap_or_default(), raw.policy.as_ref())?;
    let groups = validate_groups(&v, raw.groups.unwrap_or_default())?;
    let policies = validate_policies(&v, raw.policy.unwrap_or_default(), &groups)?;

    let delivery = DeliveryConfig {
        postfix_log: match raw.delivery.unwrap_or_default().postfix_log.as_deref() {
            None => None,
            Some("") => {
                return Err(v.err(&key("delivery.postfix_log"), "is empty: give the log file, or leave the key out"));
            }
            Some(text) => Some(v.path(text)),
        },
    };

    Ok(Config {
        delivery,
        geoip,
        file: file.to_owned(),
        milter,
        organization,
        state,
        verdict,
        notify,
        log,
        admin,
        replies: reply_texts,
        policies,
        groups,
    })
}

/// `[geoip] database`, opened; and no policy counts countries without it.
fn validate_geoip(
    v: &Validator<'_>,
    raw: super::raw::RawGeoip,
    policies: Option<&super::raw::RawPolicies>,
) -> Result<Option<GeoIp>> {
    let path = key("geoip.database");
    let geoip = match raw.database.as_deref() {
        None => None,
        Some("") => return Err(v.err(&path, "is empty: give the database file, or leave the key out")),
        Some(text) => Some(GeoIp::open(&v.path(text)).map_err(|why| v.err(&path, why))?),
    };
    if geoip.is_none()
        && let Some(p) = policies
    {
        let counts_countries = |p: &RawPolicy| p.max_client_countries_per_day.is_some_and(|n| n > 0);
        let default = p.default.iter().filter(|d| counts_countries(d)).map(|_| key("policy.default"));
        let rules = p.rule.iter().flatten().enumerate();
        let rules = rules.filter(|(_, r)| counts_countries(r)).map(|(i, _)| key("policy.rule").index(i));
        if let Some(at) = default.chain(rules).next() {
            return Err(v.err(
                &at.key("max_client_countries_per_day"),
                "counts countries, which needs [geoip] database (a MaxMind DB file such as GeoLite2-Country)",
            ));
        }
    }
    Ok(geoip)
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn validate_groups(v: &Validator<'_>, raw: BTreeMap<String, Vec<String>>) -> Result<BTreeMap<String, Vec<String>>> {
    let mut groups = BTreeMap::new();
    for (name, members) in raw {
        let path = key("groups").key(&name);
        let mut list = Vec::new();
        for (i, m) in members.iter().enumerate() {
            if m.trim().is_empty() || m.chars().any(char::is_control) {
                return Err(v.err(&path.index(i), "is not an account name"));
            }
            list.push(m.trim().to_owned());
        }
        groups.insert(name, list);
    }
    Ok(groups)
}

const RULE_ONLY: [&str; 8] = [
    "name",
    "priority",
    "from",
    "from_member_of",
    "sender_domain_is",
    "except_if_from",
    "except_if_from_member_of",
    "except_if_sender_domain_is",
];

fn rule_only_keys_present(p: &RawPolicy) -> Option<&'static str> {
    let present = [
        p.name.is_some(),
        p.priority.is_some(),
        p.from.is_some(),
        p.from_member_of.is_some(),
        p.sender_domain_is.is_some(),
        p.except_if_from.is_some(),
        p.except_if_from_member_of.is_some(),
        p.except_if_sender_domain_is.is_some(),
    ];
    present.iter().position(|&b| b).map(|i| RULE_ONLY[i])
}

const LIMIT_ACTIONS: [(&str, LimitAction); 3] = [
    ("block_until_tomorrow", LimitAction::BlockUntilTomorrow),
    ("block", LimitAction::Block),
    ("alert", LimitAction::Alert),
];

fn settings(
    v: &Validator<'_>,
    at: &KeyPath,
    p: &RawPolicy,
    base: &PolicySettings,
    name: String,
) -> Result<PolicySettings> {
    let limit = |k: &str, value: Option<i64>, default: u32| v.int(&at.key(k), value, default, 0..=u32::MAX as i64);
    Ok(PolicySettings {
        name,
        recipient_limit_external_per_hour: limit(
            "recipient_limit_external_per_hour",
            p.recipient_limit_external_per_hour,
            base.recipient_limit_external_per_hour,
        )?,
        recipient_limit_internal_per_hour: limit(
            "recipient_limit_internal_per_hour",
            p.recipient_limit_internal_per_hour,
            base.recipient_limit_internal_per_hour,
        )?,
        recipient_limit_per_day: limit(
            "recipient_limit_per_day",
            p.recipient_limit_per_day,
            base.recipient_limit_per_day,
        )?,
        max_recipients_per_message: limit(
            "max_recipients_per_message",
            p.max_recipients_per_message,
            base.max_recipients_per_message,
        )?,
        action_when_threshold_reached: v.choice(
            &at.key("action_when_threshold_reached"),
            p.action_when_threshold_reached.as_ref(),
            base.action_when_threshold_reached,
            &LIMIT_ACTIONS,
        )?,
        spam_window: v.duration(&at.key("spam_window"), p.spam_window.as_ref(), base.spam_window)?,
        spam_min_messages: limit("spam_min_messages", p.spam_min_messages, base.spam_min_messages)?,
        spam_percent: v.int(&at.key("spam_percent"), p.spam_percent, base.spam_percent.into(), 0..=100)? as u8,
        spam_action: v.choice(&at.key("spam_action"), p.spam_action.as_ref(), base.spam_action, &LIMIT_ACTIONS)?,
        spam_message_action: v.choice(
            &at.key("spam_message_action"),
            p.spam_message_action.as_ref(),
            base.spam_message_action,
            &[
                ("accept", SpamMessageAction::Accept),
                ("tag", SpamMessageAction::Tag),
                ("quarantine", SpamMessageAction::Quarantine),
                ("reject", SpamMessageAction::Reject),
            ],
        )?,
        bcc_suspicious_to: match &p.bcc_suspicious_to {
            None => base.bcc_suspicious_to.clone(),
            Some(list) => v.addresses(&at.key("bcc_suspicious_to"), Some(list))?,
        },
        notify_recipients: match &p.notify_recipients {
            None => base.notify_recipients.clone(),
            Some(list) => v.addresses(&at.key("notify_recipients"), Some(list))?,
        },
        notify_sender: p.notify_sender.unwrap_or(base.notify_sender),
        always_allowed_recipients: match &p.always_allowed_recipients {
            None => base.always_allowed_recipients.clone(),
            // Checked here as addresses; the policy compares them in its canonical form
            // (policy/rules.rs), which also drops duplicates.
            Some(list) => v.addresses(&at.key("always_allowed_recipients"), Some(list))?,
        },
        max_client_networks_per_hour: v.int(
            &at.key("max_client_networks_per_hour"),
            p.max_client_networks_per_hour,
            base.max_client_networks_per_hour,
            0..=i64::from(LOGIN_SPREAD_MAX_NETWORKS),
        )?,
        max_client_countries_per_day: v.int(
            &at.key("max_client_countries_per_day"),
            p.max_client_countries_per_day,
            base.max_client_countries_per_day,
            0..=i64::from(LOGIN_SPREAD_MAX_COUNTRIES),
        )?,
        login_spread_action: v.choice(
            &at.key("login_spread_action"),
            p.login_spread_action.as_ref(),
            base.login_spread_action,
            &LIMIT_ACTIONS,
        )?,
        bounce_percent: v.int(&at.key("bounce_percent"), p.bounce_percent, base.bounce_percent.into(), 0..=100)? as u8,
        bounce_min_recipients: v.int(
            &at.key("bounce_min_recipients"),
            p.bounce_min_recipients,
            base.bounce_min_recipients,
            1..=u32::MAX as i64,
        )?,
        bounce_window: v.duration(&at.key("bounce_window"), p.bounce_window.as_ref(), base.bounce_window)?,
        bounce_action: v.choice(
            &at.key("bounce_action"),
            p.bounce_action.as_ref(),
            base.bounce_action,
            &LIMIT_ACTIONS,
        )?,
        // At most 50: the history a lookup reads back holds an account's newest 100 entries,
        // a restriction and its release each.
        escalate_after: v.int(&at.key("escalate_after"), p.escalate_after, base.escalate_after, 0..=50)?,
        escalate_window: v.duration(&at.key("escalate_window"), p.escalate_window.as_ref(), base.escalate_window)?,
    })
}

/// The built-in defaults of `[policy.default]`, as `plugin.toml` documents them.
pub fn builtin_default_policy() -> PolicySettings {
    PolicySettings {
        name: "default".into(),
        recipient_limit_external_per_hour: 500,
        recipient_limit_internal_per_hour: 1000,
        recipient_limit_per_day: 1000,
        max_recipients_per_message: 500,
        action_when_threshold_reached: LimitAction::BlockUntilTomorrow,
        spam_window: Duration::from_secs(24 * 3600),
        spam_min_messages: 10,
        spam_percent: 30,
        spam_action: LimitAction::Block,
        spam_message_action: SpamMessageAction::Tag,
        bcc_suspicious_to: Vec::new(),
        notify_recipients: Vec::new(),
        notify_sender: false,
        always_allowed_recipients: Vec::new(),
        max_client_networks_per_hour: 0,
        max_client_countries_per_day: 0,
        login_spread_action: LimitAction::Block,
        bounce_percent: 0,
        bounce_min_recipients: 20,
        bounce_window: Duration::from_secs(3600),
        bounce_action: LimitAction::Block,
        escalate_after: 0,
        escalate_window: Duration::from_secs(7 * 86_400),
    }
}

fn validate_policies(
    v: &Validator<'_>,
    raw: super::raw::RawPolicies,
    groups: &BTreeMap<String, Vec<String>>,
) -> Result<Policies> {
    let builtin = builtin_default_policy();
    let default_raw = raw.default.unwrap_or_default();
    let default_path = key("policy.default");
    if let Some(k) = rule_only_keys_present(&default_raw) {
        return Err(
            v.err(&default_path.key(k), "belongs in a [[policy.rule]]; [policy.default] applies to every account")
        );
    }
    let default = settings(v, &default_path, &default_raw, &builtin, "default".into())?;

    let mut rules = Vec::new();
    let mut names = HashSet::new();
    let mut priorities = BTreeMap::new();
    for (i, r) in raw.rule.unwrap_or_default().iter().enumerate() {
        let at = key("policy.rule").index(i);
        let name = r.name.clone().filter(|n| !n.trim().is_empty()).ok_or_else(|| v.err(&at, "needs a `name`"))?;
        if name == "default" || !names.insert(name.clone()) {
            return Err(v.err(&at.key("name"), "is used twice (\"default\" is taken by [policy.default])"));
        }
        let priority =
            r.priority.ok_or_else(|| v.err(&at, format!("rule \"{name}\" needs a `priority` (lowest wins)")))?;
        if let Some(other) = priorities.insert(priority, name.clone()) {
            return Err(v.err(
                &at.key("priority"),
                format!("is also the priority of rule \"{other}\"; priorities must differ"),
            ));
        }
        let list = |k: &str, l: &Option<Vec<String>>| -> Result<Vec<String>> {
            let mut out = Vec::new();
            for (j, item) in l.iter().flatten().enumerate() {
                if item.trim().is_empty() || item.chars().any(char::is_control) {
                    return Err(v.err(&at.key(k).index(j), "is empty or has control characters"));
                }
                out.push(item.trim().to_owned());
            }
            Ok(out)
        };
        let from = list("from", &r.from)?;
        let from_member_of = list("from_member_of", &r.from_member_of)?;
        let sender_domain_is = v.domains(&at.key("sender_domain_is"), r.sender_domain_is.as_ref())?;
        let except_if_from = list("except_if_from", &r.except_if_from)?;
        let except_if_from_member_of = list("except_if_from_member_of", &r.except_if_from_member_of)?;
        let except_if_sender_domain_is =
            v.domains(&at.key("except_if_sender_domain_is"), r.except_if_sender_domain_is.as_ref())?;
        for (k, names) in [("from_member_of", &from_member_of), ("except_if_from_member_of", &except_if_from_member_of)]
        {
            for (j, g) in names.iter().enumerate() {
                if !groups.contains_key(g) {
                    return Err(v.err(
                        &at.key(k).index(j),
                        format!("names group \"{g}\", which is not defined under [groups]"),
                    ));
                }
            }
        }
        if from.is_empty() && from_member_of.is_empty() && sender_domain_is.is_empty() {
            return Err(v.err(
                &at,
                format!("rule \"{name}\" has no condition: give `from`, `from_member_of` or `sender_domain_is`"),
            ));
        }
        let settings = settings(v, &at, r, &default, name)?;
        rules.push(Rule {
            priority,
            from,
            from_member_of,
            sender_domain_is,
            except_if_from,
            except_if_from_member_of,
            except_if_sender_domain_is,
            settings,
        });
    }
    rules.sort_by_key(|r| r.priority);
    let domains = validate_domain_caps(v, raw.domain.unwrap_or_default())?;
    Ok(Policies { default, rules, domains })
}

fn validate_domain_caps(v: &Validator<'_>, raw: Vec<super::raw::RawDomainCap>) -> Result<Vec<DomainCap>> {
    let mut caps: Vec<DomainCap> = Vec::new();
    for (i, d) in raw.iter().enumerate() {
        let at = key("policy.domain").index(i);
        let text = d.domain.as_ref().ok_or_else(|| v.err(&at, "needs a `domain`"))?;
        let domain = v.domain(&at.key("domain"), text)?;
        if caps.iter().any(|c| c.domain == domain) {
            return Err(v.err(&at.key("domain"), "has a [[policy.domain]] cap already; one per domain"));
        }
        let limit = |k: &str, value: Option<i64>| v.int(&at.key(k), value, 0, 0..=u32::MAX as i64);
        let cap = DomainCap {
            recipient_limit_external_per_hour: limit(
                "recipient_limit_external_per_hour",
                d.recipient_limit_external_per_hour,
            )?,
            recipient_limit_per_day: limit("recipient_limit_per_day", d.recipient_limit_per_day)?,
            action: v.choice(&at.key("action"), d.action.as_ref(), LimitAction::Alert, &LIMIT_ACTIONS)?,
            domain,
        };
        if cap.recipient_limit_external_per_hour == 0 && cap.recipient_limit_per_day == 0 {
            return Err(v.err(
                &at,
                format!(
                    "cap of \"{}\" sets no limit: give `recipient_limit_external_per_hour` or `recipient_limit_per_day`",
                    cap.domain
                ),
            ));
        }
        caps.push(cap);
    }
    Ok(caps)
}

/// Whether `text` is a level or a filter of directives each with a level: `info`,
/// `warn,outbound_guard=debug`. tracing's own parser also takes a bare word as a target with
/// every level, so `verbose` would pass it, enable only a target of that name and silence the
/// whole log; a directive without a level is refused here instead.
fn is_log_filter(text: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |word: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word.trim()));
    !text.trim().is_empty()
        && text.split(',').all(|directive| match directive.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(directive),
        })
        && tracing_subscriber::EnvFilter::try_new(text).is_ok()
}
