//! One configuration compiled for deciding: the policies and their limiters, the accounts never
//! counted, the header judge and the scanner clients — built once per load or reload and
//! swapped whole, so a transaction decides under one configuration from MAIL FROM to its end.

use std::sync::Arc;

use super::Needs;
use super::account::canonical;
use super::clock::Timestamp;
use super::limits::Limiters;
use super::logins::Layout;
use super::record::AccountRecord;
use super::restriction::Counters;
use super::rules::{CompiledPolicies, PolicyIndex};
use crate::config::{Config, SpamMessageAction};
use crate::verdict::{HeaderJudge, HeaderNames, RspamdClient, SpamdClient};

/// One configuration, compiled for deciding.
pub struct Compiled {
    pub config: Arc<Config>,
    pub policies: CompiledPolicies,
    pub limiters: Limiters,
    /// Accounts never counted: the notifier's own address and relay login.
    pub(super) exempt: Vec<String>,
    /// The aggregate account of local submissions, canonical; `None` when there is none.
    pub(super) local_submission_account: Option<String>,
    pub(super) judge: HeaderJudge,
    /// The headers a session keeps for the judge: none when header verdicts are off.
    pub(super) header_names: Arc<HeaderNames>,
    pub(super) spamd: Option<SpamdClient>,
    pub(super) rspamd: Option<RspamdClient>,
    /// Whether any policy has the login-spread signal on: without it, MAIL FROM pays one
    /// branch for it.
    pub(super) login_spread: bool,
    /// The slots of each account's login-spread entry: for the highest limits of any policy
    /// (no country slots without a country database).
    pub(super) login_layout: Layout,
}

impl Compiled {
    pub fn new(config: Arc<Config>) -> Compiled {
        let strip = config.organization.strip_subaddress;
        let policies = CompiledPolicies::new(&config.policies, &config.groups, strip);
        let limiters = Limiters::new(policies.all());
        // The notifier's own mail: its sender, and the login it authenticates with when
        // `notify.smtp` names one (then the account is that login, not the sender). Nothing
        // else: exempting any mail that merely claims `notify.from` as its sender would let an
        // authenticated account forge it and never be counted.
        let relay_login = config.notify.smtp.credentials.as_ref().map(|(user, _)| user.as_str());
        let exempt = std::iter::once(config.notify.from.as_str())
            .chain(relay_login)
            .filter_map(|raw| canonical(raw.as_bytes(), strip).map(|c| c.into_owned()))
            .collect();
        let local_submission_account = config
            .organization
            .local_submission_account
            .as_deref()
            .and_then(|name| canonical(name.as_bytes(), strip).map(|c| c.into_owned()));
        let judge = HeaderJudge::new(&config.verdict);
        let header_names = Arc::new(if config.verdict.headers { judge.names() } else { HeaderNames::default() });
        let spamd = SpamdClient::from_config(&config.verdict);
        // The URL was parsed with the configuration; what can still fail is the HTTP client's
        // TLS set-up, which leaves the other sources working.
        let rspamd = config.verdict.rspamd.as_ref().and_then(|url| {
            RspamdClient::new(url, config.verdict.timeout, config.verdict.max_scan_bytes)
                .map_err(|e| tracing::error!("rspamd disabled: {e}"))
                .ok()
        });
        let login_spread =
            policies.all().iter().any(|p| p.max_client_networks_per_hour > 0 || p.max_client_countries_per_day > 0);
        let highest = |limit: fn(&crate::config::PolicySettings) -> u32| policies.all().iter().map(limit).max();
        let login_layout = Layout::for_limits(
            highest(|p| p.max_client_networks_per_hour).unwrap_or(0),
            if config.geoip.is_some() { highest(|p| p.max_client_countries_per_day).unwrap_or(0) } else { 0 },
        );
        Compiled {
            config,
            policies,
            limiters,
            exempt,
            local_submission_account,
            judge,
            header_names,
            spamd,
            rspamd,
            login_spread,
            login_layout,
        }
    }

    /// Whether messages go to a scanner (spamd, rspamd) at end of message.
    pub fn scans(&self) -> bool {
        self.spamd.is_some() || self.rspamd.is_some()
    }

    /// The headers a session keeps of a message for the header verdict.
    pub fn header_names(&self) -> Arc<HeaderNames> {
        self.header_names.clone()
    }

    /// What the MTA must send and allow for this configuration.
    pub fn needs(&self) -> Needs {
        let v = &self.config.verdict;
        let scanners = self.scans();
        let all = self.policies.all();
        Needs {
            headers: v.headers || scanners,
            body: scanners,
            add_headers: all.iter().any(|p| p.spam_message_action == SpamMessageAction::Tag),
            quarantine: all.iter().any(|p| p.spam_message_action == SpamMessageAction::Quarantine),
            add_recipients: all.iter().any(|p| !p.bcc_suspicious_to.is_empty()),
            max_scan_bytes: v.max_scan_bytes,
        }
    }
}

impl Compiled {
    /// The live counters of `record` under `policy` at `now`.
    pub fn counters_of(&self, policy: PolicyIndex, record: &AccountRecord, now: Timestamp) -> Counters {
        record.counters(&self.limiters, policy, self.policies.settings(policy).spam_window, now)
    }
}
