//! Which policy applies to an account: `[[policy.rule]]`s by priority, else `[policy.default]`.
//!
//! Rules match the *account* (never a header, never a MAIL FROM chosen by an authenticated
//! client). Within a rule, different condition kinds are ANDed and the values of one kind ORed;
//! any matching exception skips the rule; `sender_domain_is` matches subdomains too; a login
//! without `@` matches `from` entries literally and never a domain condition. The lists are
//! compiled once per configuration into canonical-form hash sets.

use std::collections::{BTreeMap, HashSet};

use super::account::{canonical, domain_of, is_same_or_subdomain};
use crate::config::{Policies, PolicySettings, Rule};

/// Index into [`CompiledPolicies::settings`]: 0 is the default, `i + 1` the i-th rule by priority.
pub type PolicyIndex = u16;

struct CompiledRule {
    from: HashSet<String>,
    from_member_of: Vec<HashSet<String>>,
    sender_domain_is: Vec<String>,
    except_if_from: HashSet<String>,
    except_if_from_member_of: Vec<HashSet<String>>,
    except_if_sender_domain_is: Vec<String>,
}

/// The policies of one configuration, ready to match accounts.
pub struct CompiledPolicies {
    settings: Vec<PolicySettings>,
    rules: Vec<CompiledRule>,
    /// `[[policy.domain]]` caps: the domain, the name it is counted and restricted under
    /// (`@domain`) and its settings' index (after the rules').
    domains: Vec<DomainCapIndex>,
}

/// A domain cap, compiled: see [`CompiledPolicies::domain_caps`].
pub struct DomainCapIndex {
    pub domain: String,
    pub account: String,
    pub policy: PolicyIndex,
}

fn canonical_set(items: &[String], strip: bool) -> HashSet<String> {
    items.iter().filter_map(|i| canonical(i.as_bytes(), strip).map(|c| c.into_owned())).collect()
}

/// The canonical forms of `items`, in order, without duplicates; an entry with no canonical
/// form (config validation lets none through) is dropped.
fn canonical_list(items: &[String], strip: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for c in items.iter().filter_map(|i| canonical(i.as_bytes(), strip)) {
        if !out.iter().any(|o| *o == c) {
            out.push(c.into_owned());
        }
    }
    out
}

fn group_sets(names: &[String], groups: &BTreeMap<String, Vec<String>>, strip: bool) -> Vec<HashSet<String>> {
    names.iter().map(|g| canonical_set(groups.get(g).map(Vec::as_slice).unwrap_or_default(), strip)).collect()
}

impl CompiledPolicies {
    /// Compiles validated policies; `strip_subaddress` must be the one accounts are folded with.
    pub fn new(policies: &Policies, groups: &BTreeMap<String, Vec<String>>, strip_subaddress: bool) -> Self {
        let compile = |r: &Rule| CompiledRule {
            from: canonical_set(&r.from, strip_subaddress),
            from_member_of: group_sets(&r.from_member_of, groups, strip_subaddress),
            sender_domain_is: r.sender_domain_is.clone(),
            except_if_from: canonical_set(&r.except_if_from, strip_subaddress),
            except_if_from_member_of: group_sets(&r.except_if_from_member_of, groups, strip_subaddress),
            except_if_sender_domain_is: r.except_if_sender_domain_is.clone(),
        };
        let mut settings = vec![policies.default.clone()];
        settings.extend(policies.rules.iter().map(|r| r.settings.clone()));
        // Compared with envelope recipients, which are in canonical form.
        for s in &mut settings {
            s.always_allowed_recipients = canonical_list(&s.always_allowed_recipients, strip_subaddress);
        }
        let mut domains = Vec::with_capacity(policies.domains.len());
        for cap in &policies.domains {
            let policy = settings.len() as PolicyIndex;
            settings.push(cap.settings());
            domains.push(DomainCapIndex { domain: cap.domain.clone(), account: cap.account(), policy });
        }
        CompiledPolicies { settings, rules: policies.rules.iter().map(compile).collect(), domains }
    }

    /// The policy for a canonical account; for a domain cap's `@domain`, the cap's.
    pub fn select(&self, account: &str) -> PolicyIndex {
        if self.rules.is_empty() && self.domains.is_empty() {
            return 0;
        }
        if account.starts_with('@') {
            return self.domains.iter().find(|d| d.account == account).map_or(0, |d| d.policy);
        }
        let domain = domain_of(account);
        let in_domains = |list: &[String]| domain.is_some_and(|d| list.iter().any(|p| is_same_or_subdomain(d, p)));
        let in_groups = |groups: &[HashSet<String>]| groups.iter().any(|g| g.contains(account));
        for (i, rule) in self.rules.iter().enumerate() {
            let matches = (rule.from.is_empty() || rule.from.contains(account))
                && (rule.from_member_of.is_empty() || in_groups(&rule.from_member_of))
                && (rule.sender_domain_is.is_empty() || in_domains(&rule.sender_domain_is));
            let excepted = rule.except_if_from.contains(account)
                || in_groups(&rule.except_if_from_member_of)
                || in_domains(&rule.except_if_sender_domain_is);
            if matches && !excepted {
                return (i + 1) as PolicyIndex;
            }
        }
        0
    }

    /// The domain caps an account's domain falls under: every cap on its domain or a parent
    /// of it (each sums all the accounts below it). Empty for a login without a domain.
    pub fn domain_caps<'a>(&'a self, account: &'a str) -> impl Iterator<Item = &'a DomainCapIndex> + 'a {
        let domain = if self.domains.is_empty() { None } else { domain_of(account) };
        self.domains.iter().filter(move |d| domain.is_some_and(|a| is_same_or_subdomain(a, &d.domain)))
    }

    /// Every domain cap of the configuration.
    pub fn domain_cap_list(&self) -> &[DomainCapIndex] {
        &self.domains
    }

    /// Whether any domain cap is configured.
    pub fn has_domain_caps(&self) -> bool {
        !self.domains.is_empty()
    }

    /// The cap of exactly `domain` (canonical), if one is configured.
    pub fn domain_cap(&self, domain: &str) -> Option<&DomainCapIndex> {
        self.domains.iter().find(|d| d.domain == domain)
    }

    /// The settings of a policy.
    pub fn settings(&self, index: PolicyIndex) -> &PolicySettings {
        self.settings.get(index as usize).unwrap_or(&self.settings[0])
    }

    /// All policies, default first.
    pub fn all(&self) -> &[PolicySettings] {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn compiled(text: &str) -> CompiledPolicies {
        let config = Config::parse(Path::new("t.toml"), text).unwrap();
        CompiledPolicies::new(&config.policies, &config.groups, config.organization.strip_subaddress)
    }

    fn name(p: &CompiledPolicies, account: &str) -> String {
        p.settings(p.select(account)).name.clone()
    }

    #[test]
    fn default_when_nothing_matches() {
        let p = compiled("");
        assert_eq!(name(&p, "alice@example.com"), "default");
    }

    #[test]
    fn lowest_priority_number_wins_and_lists_are_ored() {
        let p = compiled(
            r#"
            [[policy.rule]]
            name = "late"
            priority = 10
            sender_domain_is = ["example.com"]
            [[policy.rule]]
            name = "early"
            priority = 1
            from = ["News@Example.com", "promo@example.com"]
            "#,
        );
        assert_eq!(name(&p, "news@example.com"), "early");
        assert_eq!(name(&p, "promo@example.com"), "early");
        assert_eq!(name(&p, "alice@example.com"), "late");
        assert_eq!(name(&p, "alice@sub.example.com"), "late");
        assert_eq!(name(&p, "alice@example.org"), "default");
    }

    #[test]
    fn condition_kinds_are_anded_and_exceptions_skip() {
        let p = compiled(
            r#"
            [groups]
            marketing = ["a@mkt.example.com", "b@example.com"]
            [[policy.rule]]
            name = "mkt"
            priority = 0
            from_member_of = ["marketing"]
            sender_domain_is = ["mkt.example.com"]
            except_if_from = ["c@mkt.example.com"]
            [[policy.rule]]
            name = "domain-but-not-boss"
            priority = 1
            sender_domain_is = ["mkt.example.com"]
            except_if_from = ["boss@mkt.example.com"]
            "#,
        );
        assert_eq!(name(&p, "a@mkt.example.com"), "mkt");
        assert_eq!(name(&p, "b@example.com"), "default", "member, but not in the domain");
        assert_eq!(name(&p, "c@mkt.example.com"), "domain-but-not-boss");
        assert_eq!(name(&p, "boss@mkt.example.com"), "default");
    }

    #[test]
    fn a_login_without_domain_matches_from_literally_and_never_a_domain() {
        let p = compiled(
            r#"
            [[policy.rule]]
            name = "by-login"
            priority = 0
            from = ["Bob"]
            [[policy.rule]]
            name = "by-domain"
            priority = 1
            sender_domain_is = ["example.com"]
            "#,
        );
        assert_eq!(name(&p, "bob"), "by-login");
        assert_eq!(name(&p, "carol"), "default");
    }

    #[test]
    fn rule_settings_inherit_the_default() {
        let p = compiled(
            r#"
            [policy.default]
            recipient_limit_per_day = 50
            [[policy.rule]]
            name = "news"
            priority = 0
            from = ["news@example.com"]
            recipient_limit_external_per_hour = 5000
            "#,
        );
        let s = p.settings(p.select("news@example.com"));
        assert_eq!(s.recipient_limit_external_per_hour, 5000);
        assert_eq!(s.recipient_limit_per_day, 50);
    }
}
