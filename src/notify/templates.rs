//! Notification texts: the built-in subject and body templates (en, sv, nl, da — compiled
//! into the binary from `src/notify/templates/`), the administrator's overrides from
//! `notify.templates_dir`, and the variables every template sees.
//!
//! Values that reach a template are made safe for display first: control and bidi
//! characters in an account or reason are shown escaped (`\r`, `\u{202e}`), so a crafted
//! account name cannot rewrite the text around it. Shell commands quote their arguments,
//! so the command in the mail is the command to paste.

use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

use super::NotifyError;
use super::notice::{Notice, NoticeKind};
use crate::config::{Config, Language};
use crate::policy::clock::rfc3339;
use crate::policy::restriction::Counters;

/// The template of the restricted account's own notice.
const ACCOUNT_RESTRICTED: &str = "account_restricted";

/// Which text of a notification a template makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Subject,
    Body,
}

impl Part {
    fn suffix(self) -> &'static str {
        match self {
            Part::Subject => "subject.txt",
            Part::Body => "body.txt",
        }
    }
}

macro_rules! builtin {
    ($lang:literal) => {
        [
            (
                concat!($lang, "/sender_restricted.subject.txt"),
                include_str!(concat!("templates/", $lang, "/sender_restricted.subject.txt")),
            ),
            (
                concat!($lang, "/sender_restricted.body.txt"),
                include_str!(concat!("templates/", $lang, "/sender_restricted.body.txt")),
            ),
            (
                concat!($lang, "/sending_limit_exceeded.subject.txt"),
                include_str!(concat!("templates/", $lang, "/sending_limit_exceeded.subject.txt")),
            ),
            (
                concat!($lang, "/sending_limit_exceeded.body.txt"),
                include_str!(concat!("templates/", $lang, "/sending_limit_exceeded.body.txt")),
            ),
            (
                concat!($lang, "/approaching_limit.subject.txt"),
                include_str!(concat!("templates/", $lang, "/approaching_limit.subject.txt")),
            ),
            (
                concat!($lang, "/approaching_limit.body.txt"),
                include_str!(concat!("templates/", $lang, "/approaching_limit.body.txt")),
            ),
            (
                concat!($lang, "/sender_released.subject.txt"),
                include_str!(concat!("templates/", $lang, "/sender_released.subject.txt")),
            ),
            (
                concat!($lang, "/sender_released.body.txt"),
                include_str!(concat!("templates/", $lang, "/sender_released.body.txt")),
            ),
            (
                concat!($lang, "/account_restricted.subject.txt"),
                include_str!(concat!("templates/", $lang, "/account_restricted.subject.txt")),
            ),
            (
                concat!($lang, "/account_restricted.body.txt"),
                include_str!(concat!("templates/", $lang, "/account_restricted.body.txt")),
            ),
        ]
    };
}

/// The built-in templates, `<lang>/<event>.<subject|body>.txt`, and `account_restricted`,
/// the notice a restricted account itself gets (`notify_sender`).
const BUILTIN: [[(&str, &str); 10]; 4] = [builtin!("en"), builtin!("sv"), builtin!("nl"), builtin!("da")];

/// A rendered notification text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, no control characters.
    pub subject: String,
    pub body: String,
}

/// The compiled templates for one configuration.
pub struct Templates {
    env: Environment<'static>,
    language: Language,
    /// Overrides found in `templates_dir`: (base name, part) → template name.
    custom: Vec<(&'static str, Part, String)>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("language", &self.language)
            .field("custom", &self.custom)
            .finish_non_exhaustive()
    }
}

impl Templates {
    /// Compiles the built-in templates and the overrides in `notify.templates_dir`.
    ///
    /// # Errors
    /// [`NotifyError::TemplateRead`] when an override cannot be read,
    /// [`NotifyError::Template`] when one does not compile — at start, so a typo is found
    /// before the first restriction rather than at it.
    pub fn load(config: &Config) -> Result<Templates, NotifyError> {
        let mut env = Environment::new();
        // Undefined variables are errors: a misspelt name in an override falls back to the
        // built-in text (with a log line) instead of silently printing nothing.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        for set in BUILTIN {
            for (name, source) in set {
                env.add_template(name, source)
                    .map_err(|e| NotifyError::Template { name: name.to_owned(), message: e.to_string() })?;
            }
        }
        let mut custom = Vec::new();
        if let Some(dir) = &config.notify.templates_dir {
            let lang = config.notify.language.code();
            let bases = NoticeKind::ALL.iter().map(|k| k.name()).chain([ACCOUNT_RESTRICTED]);
            for base in bases {
                for part in [Part::Subject, Part::Body] {
                    let file = format!("{base}.{}", part.suffix());
                    let Some(path) = [dir.join(lang).join(&file), dir.join(&file)].into_iter().find(|p| p.is_file())
                    else {
                        continue;
                    };
                    let source = std::fs::read_to_string(&path)
                        .map_err(|source| NotifyError::TemplateRead { path: path.clone(), source })?;
                    let name = format!("custom/{file}");
                    env.add_template_owned(name.clone(), source)
                        .map_err(|e| NotifyError::Template { name: display(&path), message: e.to_string() })?;
                    custom.push((base, part, name));
                }
            }
        }
        Ok(Templates { env, language: config.notify.language, custom })
    }

    /// Renders the subject and body of `notice` in the configured language.
    ///
    /// An administrator's template that fails to render (an unknown variable, say) is
    /// logged and replaced by the built-in one: a notification is never lost to a typo.
    ///
    /// # Errors
    /// [`NotifyError::Template`] only if a built-in template fails, which tests rule out.
    pub fn render(&self, notice: &Notice, config: &Config) -> Result<Rendered, NotifyError> {
        let vars = Vars::new(notice, config);
        let subject = self.render_part(notice.kind.name(), Part::Subject, &vars)?;
        let body = self.render_part(notice.kind.name(), Part::Body, &vars)?;
        Ok(Rendered { subject: one_line(&subject), body })
    }

    /// Renders the notice a restricted account itself gets, in the configured language. Its
    /// templates see [`AccountVars`] only, which hold no release command, admin URL or other
    /// administrator's detail: an override cannot leak what it is never given.
    ///
    /// # Errors
    /// As [`Templates::render`].
    pub fn render_for_account(&self, notice: &Notice, config: &Config) -> Result<Rendered, NotifyError> {
        let vars = AccountVars::new(notice, config);
        let subject = self.render_part(ACCOUNT_RESTRICTED, Part::Subject, &vars)?;
        let body = self.render_part(ACCOUNT_RESTRICTED, Part::Body, &vars)?;
        Ok(Rendered { subject: one_line(&subject), body })
    }

    fn render_part<V: Serialize>(&self, base: &str, part: Part, vars: &V) -> Result<String, NotifyError> {
        if let Some((_, _, name)) = self.custom.iter().find(|(b, p, _)| *b == base && *p == part) {
            match self.env.get_template(name).and_then(|t| t.render(vars)) {
                Ok(text) => return Ok(text),
                Err(e) => tracing::error!(
                    template = %name,
                    "notification template failed, using the built-in one instead: {e:#}"
                ),
            }
        }
        let name = format!("{}/{base}.{}", self.language.code(), part.suffix());
        self.env
            .get_template(&name)
            .and_then(|t| t.render(vars))
            .map_err(|e| NotifyError::Template { name, message: format!("{e:#}") })
    }
}

/// Checks the templates a configuration would use, for `check-config` and reload.
///
/// # Errors
/// As [`Templates::load`].
pub fn check(config: &Config) -> Result<(), NotifyError> {
    Templates::load(config).map(|_| ())
}

/// The variables every template sees (documented in docs/notifications.md).
#[derive(Debug, Serialize)]
pub struct Vars {
    pub event: &'static str,
    pub severity: &'static str,
    pub account: String,
    /// For a domain restricted as a unit (`@customer.example`): the domain, so that a
    /// template can say "every account of" rather than "the account".
    pub domain: Option<String>,
    pub reason: String,
    pub policy: String,
    pub limit: Option<String>,
    /// Counted / allowed for the limit concerned.
    pub used: Option<u32>,
    pub allowed: Option<u32>,
    pub counters: Counters,
    pub since: String,
    pub until: Option<String>,
    pub node: String,
    pub by: Option<String>,
    pub release_command: String,
    pub restrict_command: String,
    pub admin_url: String,
    pub queue_list_command: String,
    pub queue_delete_command: String,
    pub queue_delete_command_awk: String,
    pub config_file: String,
    pub language: &'static str,
    /// What led to a restriction: a limit's key, `spam`, `bounces`, `login_spread` or `manual` (empty for
    /// other events and older spool files).
    pub cause: String,
    /// A restriction made until released because the account was restricted by the policy
    /// again within `escalate_window` (the reason says how many times).
    pub escalated: bool,
}

impl Vars {
    pub fn new(notice: &Notice, config: &Config) -> Vars {
        let c = &notice.counters;
        let (used, allowed) = match notice.limit.as_deref() {
            Some("recipient_limit_external_per_hour") => (Some(c.external_last_hour), Some(c.external_limit_per_hour)),
            Some("recipient_limit_internal_per_hour") => (Some(c.internal_last_hour), Some(c.internal_limit_per_hour)),
            Some("recipient_limit_per_day") => (Some(c.last_day), Some(c.limit_per_day)),
            _ => (None, None),
        };
        let config_file = config_file(&config.file);
        let account_arg = shell_quote(&notice.account);
        let config_arg = shell_quote(&config_file);
        let domain = notice.account.strip_prefix('@').filter(|d| !d.is_empty());
        // A domain's queue: every sender of the domain or a subdomain of it.
        let (queue_list_command, awk_test) = match domain {
            None => (
                format!("postqueue -j | jq -r --arg s {account_arg} 'select(.sender == $s) | .queue_id'"),
                "$7 == s".to_owned(),
            ),
            Some(d) => (
                format!(
                    "postqueue -j | jq -r --arg d {} 'select(.sender | ascii_downcase | endswith(\"@\" + $d) or endswith(\".\" + $d)) | .queue_id'",
                    shell_quote(d)
                ),
                "tolower($7) ~ (\"[@.]\" s \"$\")".to_owned(),
            ),
        };
        let awk_value = shell_quote(domain.map_or(notice.account.as_str(), |d| d));
        Vars {
            domain: domain.map(printable),
            event: notice.kind.name(),
            severity: notice.kind.severity(),
            account: printable(&notice.account),
            reason: printable(&notice.reason),
            policy: printable(&notice.policy),
            limit: notice.limit.clone(),
            used,
            allowed,
            counters: notice.counters.clone(),
            since: rfc3339(notice.since),
            until: notice.until.map(rfc3339),
            node: printable(&notice.node),
            by: notice.by.as_deref().map(printable),
            release_command: format!("outbound-guard --config {config_arg} restricted release {account_arg}"),
            restrict_command: format!("outbound-guard --config {config_arg} restricted add {account_arg}"),
            admin_url: admin_url(config, &notice.account),
            queue_delete_command: format!("{queue_list_command} | postsuper -d -"),
            queue_list_command,
            queue_delete_command_awk: format!(
                "mailq | tail -n +2 | awk -v s={awk_value} 'BEGIN {{ RS = \"\" }} {awk_test} {{ print $1 }}' | tr -d '*!' | postsuper -d -"
            ),
            config_file: printable(&config_file),
            language: config.notify.language.code(),
            cause: printable(&notice.cause),
            escalated: notice.escalated,
        }
    }
}

/// What the restricted account's own notice may say: the account, since and until when, why
/// in broad terms (a limit, spam, an administrator) and whom it may still write to. Nothing
/// of the administration: no command, URL, token, counters or policy name.
#[derive(Debug, Serialize)]
pub struct AccountVars {
    pub account: String,
    /// `limit`, `spam`, `bounces`, `login_spread` or `administrator`.
    pub cause: &'static str,
    pub since: String,
    pub until: Option<String>,
    /// The policy's `always_allowed_recipients` (canonical form), as of the configuration in
    /// force.
    pub allowed_recipients: Vec<String>,
    pub language: &'static str,
}

impl AccountVars {
    pub fn new(notice: &Notice, config: &Config) -> AccountVars {
        let cause = if notice.limit.is_some() {
            "limit"
        } else if notice.by.is_some() {
            "administrator"
        } else if notice.cause == "bounces" {
            "bounces"
        } else if notice.cause == "login_spread" {
            "login_spread"
        } else {
            "spam"
        };
        let allowed = super::email::policy_settings(config, &notice.policy)
            .map(|p| {
                // In the form recipients are compared in (the configuration may spell them
                // otherwise), without repeats.
                let strip = config.organization.strip_subaddress;
                let mut list: Vec<String> = Vec::new();
                for a in &p.always_allowed_recipients {
                    let shown = crate::policy::account::canonical(a.as_bytes(), strip)
                        .map_or_else(|| printable(a), |c| printable(&c));
                    if !list.contains(&shown) {
                        list.push(shown);
                    }
                }
                list
            })
            .unwrap_or_default();
        AccountVars {
            account: printable(&notice.account),
            cause,
            since: rfc3339(notice.since),
            until: notice.until.map(rfc3339),
            allowed_recipients: allowed,
            language: config.notify.language.code(),
        }
    }
}

/// The config file as the release command must name it: absolute, because the
/// administrator runs the command from wherever they are.
fn config_file(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path)).to_string_lossy().into_owned()
}

/// Characters kept as they are in the `#account=` fragment.
const FRAGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'@').remove(b'.').remove(b'-').remove(b'_').remove(b'+');

/// The web page with the account preselected. The account goes in the fragment, which the
/// browser keeps to itself: account names stay out of proxy and access logs.
pub fn admin_url(config: &Config, account: &str) -> String {
    let base = match &config.notify.admin_url {
        Some(url) => url.split('#').next().unwrap_or(url).to_owned(),
        None => {
            let listen = config.admin.listen;
            // A wildcard listen address is no address to click; the node name is the
            // best guess at how administrators reach this host.
            if listen.ip().is_unspecified() {
                format!("http://{}:{}/", config.notify.node_name, listen.port())
            } else {
                format!("http://{listen}/")
            }
        }
    };
    format!("{base}#account={}", utf8_percent_encode(account, FRAGMENT))
}

/// Shows control and bidi-override characters escaped so they can neither break a line
/// nor reorder the text around them.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else if is_bidi_or_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn is_bidi_or_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Quotes `s` for a POSIX shell: as is when harmless, else in single quotes; with control
/// or bidi characters in `$'…'` (bash, zsh, ksh, POSIX.1-2024 sh), the only form that can
/// carry them on one line and show them for what they are.
pub fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_owned();
    }
    let hidden = |c: char| c.is_control() || is_bidi_or_invisible(c);
    if s.chars().any(hidden) {
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if hidden(c) => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The longest subject we send, in characters. A header line may not exceed 998 octets
/// and lettre can fold only at spaces and inside encoded words; a long ASCII account has
/// neither, so the subject is cut well below that (the body carries the full account).
const MAX_SUBJECT_CHARS: usize = 300;

/// A subject is one line: any line break or control character an override (or an account)
/// brings becomes a space; over [`MAX_SUBJECT_CHARS`] it is cut with an ellipsis.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.trim().chars().enumerate() {
        if i == MAX_SUBJECT_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notice::tests::restricted;
    use std::path::Path;

    pub(crate) fn config(extra_notify: &str) -> Config {
        Config::parse(
            Path::new("/etc/outbound-guard/plugin.toml"),
            &format!("[notify]\nnode_name = \"mx1\"\n{extra_notify}\n[admin]\nlisten = \"127.0.0.1:7358\"\n"),
        )
        .expect("valid test configuration")
    }

    fn render(lang: &str, notice: &Notice) -> Rendered {
        let c = config(&format!("language = \"{lang}\""));
        Templates::load(&c).unwrap().render(notice, &c).unwrap()
    }

    /// Words each language's restriction mail must contain besides the facts.
    const WORDS: [(&str, &[&str]); 4] = [
        ("en", &["external recipients per hour", "still delivered", "password", "release it"]),
        ("sv", &["externa mottagare per timme", "levereras som vanligt", "lösenord", "häv spärren"]),
        ("nl", &["externe ontvangers per uur", "gewoon bezorgd", "wachtwoord", "Hef de blokkade op"]),
        ("da", &["eksterne modtagere i timen", "leveres stadig", "adgangskode", "ophæv spærringen"]),
    ];

    #[test]
    fn english_subject_is_the_specified_one() {
        let r = render("en", &restricted("alice@example.com"));
        assert_eq!(r.subject, "Outbound spam notification - alice@example.com blocked from sending outbound mail");
    }

    #[test]
    fn restriction_body_states_the_facts_in_every_language() {
        let n = restricted("alice@example.com");
        for (lang, words) in WORDS {
            let r = render(lang, &n);
            assert!(r.subject.contains("alice@example.com"), "{lang}: {}", r.subject);
            let b = &r.body;
            for needle in [
                "alice@example.com",
                "500 counted",
                "2026-11-22T10:15:00Z",
                "2026-11-23T00:00:00Z",
                "\"default\"",
                "outbound-guard --config /etc/outbound-guard/plugin.toml restricted release alice@example.com",
                "http://127.0.0.1:7358/#account=alice@example.com",
                "postqueue -j | jq -r --arg s alice@example.com 'select(.sender == $s) | .queue_id' | postsuper -d -",
                "awk -v s=alice@example.com",
                "12 ",
                "512 ",
            ]
            .iter()
            .filter(|n| *n != &"500 counted")
            {
                assert!(b.contains(needle), "{lang}: {needle:?} missing from\n{b}");
            }
            assert!(b.contains("(500 "), "{lang}: count missing\n{b}");
            for w in words {
                assert!(b.contains(w), "{lang}: {w:?} missing from\n{b}");
            }
            assert!(!b.contains("{{") && !b.contains("{%"), "{lang}: unrendered\n{b}");
            assert!(!b.starts_with('\n'), "{lang}: leading blank line");
        }
    }

    /// A login-spread restriction says so in every language, for the administrators (with the
    /// networks counted) and for the account.
    #[test]
    fn a_login_spread_restriction_says_so_in_every_language() {
        let mut n = restricted("alice@example.com");
        n.limit = None;
        n.cause = "login_spread".into();
        n.reason = "authenticated login sent from 3 client networks within an hour (192.0.2.0/24, \
                    198.51.100.0/24, 203.0.113.0/24; limit 2)"
            .into();
        for (lang, admin_word, account_word) in [
            ("en", "more places", "more places"),
            ("sv", "fler platser", "fler platser"),
            ("nl", "meer plaatsen", "meer plaatsen"),
            ("da", "flere steder", "flere steder"),
        ] {
            let c = config(&format!("language = \"{lang}\""));
            let t = Templates::load(&c).unwrap();
            let body = t.render(&n, &c).unwrap().body;
            assert!(body.contains(admin_word), "{lang}: {admin_word:?} missing from\n{body}");
            assert!(body.contains("198.51.100.0/24"), "{lang}: the evidence\n{body}");
            let own = t.render_for_account(&n, &c).unwrap().body;
            assert!(own.contains(account_word), "{lang}: {account_word:?} missing from\n{own}");
            assert!(!own.contains("spam"), "{lang}: not spam\n{own}");
        }
    }

    /// A restriction for bounces says so in every language, for the administrators and for
    /// the account, and carries the evidence of the reason.
    #[test]
    fn a_bounce_restriction_says_so_in_every_language() {
        let mut n = restricted("alice@example.com");
        n.limit = None;
        n.cause = "bounces".into();
        n.reason =
            "25 of its 40 recipients with a final outcome in the last 1h bounced; e.g. x@remote.example: 5.1.1".into();
        for (lang, admin_word, account_word) in [
            ("en", "bounced", "could not be delivered"),
            ("sv", "studsade", "kunde inte levereras"),
            ("nl", "gebounced", "niet worden bezorgd"),
            ("da", "kom retur", "kunne ikke leveres"),
        ] {
            let c = config(&format!("language = \"{lang}\""));
            let t = Templates::load(&c).unwrap();
            let body = t.render(&n, &c).unwrap().body;
            assert!(body.contains(admin_word), "{lang}: {admin_word:?} missing from\n{body}");
            assert!(body.contains("x@remote.example: 5.1.1"), "{lang}: the evidence\n{body}");
            let own = t.render_for_account(&n, &c).unwrap().body;
            assert!(own.contains(account_word), "{lang}: {account_word:?} missing from\n{own}");
        }
    }

    #[test]
    fn until_released_when_no_end() {
        let mut n = restricted("alice@example.com");
        n.until = None;
        n.limit = None;
        n.by = Some("admin-api".into());
        let phrases = [
            ("en", "until an administrator releases it"),
            ("sv", "tills en administratör häver spärren"),
            ("nl", "tot een beheerder de blokkade opheft"),
            ("da", "indtil en administrator ophæver spærringen"),
        ];
        for (lang, phrase) in phrases {
            let b = render(lang, &n).body;
            assert!(b.contains(phrase), "{lang}\n{b}");
            assert!(b.contains("admin-api"), "{lang}\n{b}");
        }
    }

    #[test]
    fn an_escalated_restriction_says_it_is_a_repeat_in_every_language() {
        let mut n = restricted("alice@example.com");
        n.until = None;
        n.reason.push_str(" (2nd restriction within 7d: until released)");
        let phrases =
            [("en", "A repeat:"), ("sv", "En upprepning:"), ("nl", "Een herhaling:"), ("da", "En gentagelse:")];
        for (lang, phrase) in phrases {
            assert!(!render(lang, &n).body.contains(phrase), "{lang}: only when escalated");
            n.escalated = true;
            let b = render(lang, &n).body;
            n.escalated = false;
            assert!(b.contains(phrase) && b.contains("escalate_window"), "{lang}\n{b}");
            assert!(b.contains("(2nd restriction within 7d: until released)"), "{lang}\n{b}");
            assert!(!b.contains("{{") && !b.contains("{%"), "{lang}: unrendered\n{b}");
        }
    }

    #[test]
    fn every_kind_renders_in_every_language() {
        for (lang, _) in Language::ALL {
            for kind in NoticeKind::ALL {
                let mut n = restricted("bob@example.com");
                n.kind = kind;
                if kind == NoticeKind::SenderReleased {
                    n.by = Some("ops@example.com".into());
                }
                let r = render(lang, &n);
                assert!(r.subject.contains("bob@example.com"), "{lang}/{kind:?}");
                assert!(!r.subject.contains('\n'));
                assert!(r.body.contains("bob@example.com"), "{lang}/{kind:?}");
                assert!(r.body.contains("mx1"), "{lang}/{kind:?}");
                if kind == NoticeKind::SenderReleased {
                    assert!(r.body.contains("ops@example.com"), "{lang}/{kind:?}");
                }
            }
        }
    }

    #[test]
    fn a_restricted_domain_reads_as_a_domain_in_every_language() {
        for (lang, _) in Language::ALL {
            let r = render(lang, &restricted("@customer.example"));
            assert!(r.subject.contains("@customer.example"), "{lang}");
            assert!(
                r.body.contains(" customer.example ") && r.body.contains("(@customer.example)"),
                "{lang}\n{}",
                r.body
            );
            assert!(r.body.contains("restricted release @customer.example"), "{lang}");
            assert!(r.body.contains("--arg d customer.example"), "{lang}\n{}", r.body);
        }
        let account = render("en", &restricted("bob@example.com"));
        assert!(account.body.contains("The account bob@example.com can no longer"), "{}", account.body);
    }

    #[test]
    fn crafted_account_is_shown_escaped_and_quoted() {
        let n = restricted("evil\r\nBcc: x@example.net\u{202e}'$(rm -rf /)");
        let r = render("en", &n);
        assert!(!r.subject.contains('\r') && !r.subject.contains('\n'));
        assert!(r.subject.contains("evil\\r\\nBcc: x@example.net\\u{202e}'$(rm -rf /)"), "{}", r.subject);
        assert!(!r.body.contains("evil\r") && !r.body.contains('\u{202e}'));
        assert!(
            r.body.contains("restricted release $'evil\\r\\nBcc: x@example.net\\xe2\\x80\\xae\\'$(rm -rf /)'"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains("#account=evil%0D%0ABcc%3A%20x@example.net%E2%80%AE%27%24%28rm%20-rf%20%2F%29"),
            "{}",
            r.body
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a@b.c"), "a@b.c");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("a\nb"), "$'a\\nb'");
        assert_eq!(shell_quote("jörg@exämple.se"), "'jörg@exämple.se'");
    }

    #[test]
    fn admin_url_forms() {
        let c = config("admin_url = \"https://mail.example.com/guard/#x\"");
        assert_eq!(admin_url(&c, "a+b@example.com"), "https://mail.example.com/guard/#account=a+b@example.com");
        let c = Config::parse(
            Path::new("p.toml"),
            "[notify]\nnode_name = \"mx1.example.com\"\n[admin]\nlisten = \"0.0.0.0:7358\"\n",
        )
        .unwrap();
        assert_eq!(admin_url(&c, "a"), "http://mx1.example.com:7358/#account=a");
    }

    /// The restricted account's own notice, per language: the account, when, that it still
    /// receives, whom it may write to; nothing of the administration.
    #[test]
    fn account_notice_tells_the_account_and_nothing_of_the_administration() {
        let words = [
            ("en", ["has been stopped", "still receive", "You can still write to", "Change your password"]),
            ("sv", ["är stoppad", "tar fortfarande emot", "kan fortfarande skriva till", "Byt lösenord"]),
            ("nl", ["is gestopt", "ontvangt nog steeds", "kunt nog wel schrijven naar", "Wijzig nu uw wachtwoord"]),
            ("da", ["har været stoppet", "modtager stadig", "kan stadig skrive til", "Skift din adgangskode"]),
        ];
        for (lang, words) in words {
            let c = config(&format!(
                "language = \"{lang}\"\n[policy.default]\nalways_allowed_recipients = [\"helpdesk@example.com\"]"
            ));
            let t = Templates::load(&c).unwrap();
            let n = restricted("alice@example.com");
            let r = t.render_for_account(&n, &c).unwrap();
            assert!(r.subject.contains("alice@example.com"), "{lang}: {}", r.subject);
            for needle in ["alice@example.com", "helpdesk@example.com", "2026-11-22T10:15:00Z", "2026-11-23T00:00:00Z"]
                .into_iter()
                .chain(words)
            {
                assert!(r.body.contains(needle), "{lang}: {needle:?} missing from\n{}", r.body);
            }
            for secret in ["outbound-guard --config", "restricted release", "http://", "#account=", "postsuper", "mx1"]
            {
                assert!(!r.body.contains(secret) && !r.subject.contains(secret), "{lang}: {secret:?} in\n{}", r.body);
            }
            assert!(!r.body.contains("{{") && !r.body.contains("{%"), "{lang}: unrendered\n{}", r.body);
            // Without the list: it may write to no one, and no empty list is shown.
            let c = config(&format!("language = \"{lang}\""));
            let body = Templates::load(&c).unwrap().render_for_account(&n, &c).unwrap().body;
            assert!(!body.contains("helpdesk@example.com") && !body.contains(words[2]), "{lang}\n{body}");
        }
    }

    #[test]
    fn account_notice_shows_a_crafted_account_escaped() {
        let c = config("");
        let n = restricted("evil\r\nBcc: x@example.net\u{202e}@example.com");
        let r = Templates::load(&c).unwrap().render_for_account(&n, &c).unwrap();
        assert!(!r.subject.contains('\r') && !r.subject.contains('\n'), "{}", r.subject);
        assert!(r.subject.contains("evil\\r\\nBcc: x@example.net\\u{202e}@example.com"), "{}", r.subject);
        assert!(!r.body.contains("evil\r") && !r.body.contains('\u{202e}'), "{}", r.body);
    }

    #[test]
    fn overrides_per_language_and_for_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sv")).unwrap();
        std::fs::write(dir.path().join("sender_restricted.subject.txt"), "[ALL] {{ account }} {{ event }}").unwrap();
        std::fs::write(dir.path().join("sv/sender_restricted.subject.txt"), "[SV] {{ account }}\n").unwrap();
        std::fs::write(dir.path().join("sender_released.body.txt"), "{{ no_such_variable }}").unwrap();
        let tdir = dir.path().display();
        let n = restricted("a@example.com");
        let c = config(&format!("templates_dir = \"{tdir}\"\nlanguage = \"en\""));
        let t = Templates::load(&c).unwrap();
        assert_eq!(t.render(&n, &c).unwrap().subject, "[ALL] a@example.com sender_restricted");
        let c = config(&format!("templates_dir = \"{tdir}\"\nlanguage = \"sv\""));
        let t = Templates::load(&c).unwrap();
        assert_eq!(t.render(&n, &c).unwrap().subject, "[SV] a@example.com");
        // A broken override falls back to the built-in text.
        let mut released = n.clone();
        released.kind = NoticeKind::SenderReleased;
        let body = t.render(&released, &c).unwrap().body;
        assert!(body.contains("får skicka utgående e-post igen"), "{body}");

        std::fs::write(dir.path().join("approaching_limit.body.txt"), "{% if %}").unwrap();
        let e = Templates::load(&c).unwrap_err().to_string();
        assert!(e.contains("approaching_limit.body.txt"), "{e}");
    }
}
