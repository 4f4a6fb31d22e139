//! The SMTP reply texts the filter sends when it refuses something. Each is configurable under
//! `[replies]`; the defaults say what happened and what to do, in plain words.

use super::InternalErrorAction;

/// Default for MAIL FROM of a restricted account.
pub const DEFAULT_ACCOUNT_RESTRICTED: &str = "550 5.1.8 This account is restricted from sending outbound mail; \
     please contact your mail administrator";
/// Default for the recipient that reached a limit.
pub const DEFAULT_LIMIT_REACHED: &str = "550 5.2.2 This account has reached its outbound recipient limit and is \
     now restricted from sending; please contact your mail administrator";
/// Default for a recipient over the per-message cap.
pub const DEFAULT_TOO_MANY_RECIPIENTS: &str =
    "452 4.5.3 Too many recipients for one message; send the rest in another message";

/// Default for a local submission over the per-message cap: refused whole and for good, since
/// the MTA cannot refuse some recipients of a local message and a retry cannot succeed.
pub const DEFAULT_TOO_MANY_RECIPIENTS_LOCAL: &str =
    "550 5.5.3 Too many recipients for one message; send it as several smaller messages";

/// Default for a message judged spam under `spam_message_action = "reject"`.
pub const DEFAULT_SPAM_REJECTED: &str =
    "550 5.7.1 Message refused: it was judged to be spam. Please contact your mail administrator";

/// A configured reply text as the MTA must be sent it: Postfix and Sendmail read the text of a
/// milter reply as a format (Postfix turns `%%` into `%` and drops a lone `%`), so a `%` the
/// administrator wrote — "100% of the quota", "a%20b" in a URL — is doubled to reach the
/// client as written.
pub fn escape_for_mta(text: &str) -> String {
    text.replace('%', "%%")
}

/// Reply texts in effect: `"CODE X.Y.Z text"`, validated by the configuration loader, in the
/// form sent to the MTA ([`escape_for_mta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTexts {
    pub account_restricted: String,
    pub limit_reached: String,
    pub too_many_recipients: String,
    pub spam_rejected: String,
    pub too_many_recipients_local: String,
    /// What the MTA is told when the filter cannot decide.
    pub on_internal_error: InternalErrorAction,
}

impl Default for ReplyTexts {
    fn default() -> Self {
        ReplyTexts {
            account_restricted: DEFAULT_ACCOUNT_RESTRICTED.to_owned(),
            limit_reached: DEFAULT_LIMIT_REACHED.to_owned(),
            too_many_recipients: DEFAULT_TOO_MANY_RECIPIENTS.to_owned(),
            spam_rejected: DEFAULT_SPAM_REJECTED.to_owned(),
            too_many_recipients_local: DEFAULT_TOO_MANY_RECIPIENTS_LOCAL.to_owned(),
            on_internal_error: InternalErrorAction::Tempfail,
        }
    }
}

/// Checks that `text` is one SMTP reply line: a 4xx/5xx code, an enhanced status code of the
/// same class, then text; no control characters (a CR/LF would let the text end the reply).
///
/// # Errors
/// A sentence saying what is wrong, for the configuration error.
pub fn validate(text: &str) -> Result<(), &'static str> {
    let mut parts = text.splitn(3, ' ');
    let code = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default();
    let words = parts.next().unwrap_or_default();
    let class = code.as_bytes().first().copied();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) || !matches!(class, Some(b'4' | b'5')) {
        return Err("must start with a 4xx or 5xx reply code");
    }
    let mut fields = status.split('.');
    let status_ok = fields.next().map(str::as_bytes) == class.as_ref().map(std::slice::from_ref)
        && fields.clone().count() == 2
        && fields.all(|f| !f.is_empty() && f.len() <= 3 && f.bytes().all(|b| b.is_ascii_digit()));
    if !status_ok {
        return Err("the reply code must be followed by an enhanced status code of the same class, e.g. 550 5.7.1");
    }
    if words.trim().is_empty() {
        return Err("must have text after the status code");
    }
    if text.chars().any(char::is_control) {
        return Err("must be one line without control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_carry_the_documented_codes() {
        let t = ReplyTexts::default();
        for (text, prefix) in [
            (&t.account_restricted, "550 5.1.8 "),
            (&t.limit_reached, "550 5.2.2 "),
            (&t.too_many_recipients, "452 4.5.3 "),
            (&t.spam_rejected, "550 5.7.1 "),
            (&t.too_many_recipients_local, "550 5.5.3 "),
        ] {
            assert!(text.starts_with(prefix));
            assert_eq!(validate(text), Ok(()));
            // Defaults are stored as written, not through `escape_for_mta`: no `%` in them.
            assert!(!text.contains('%'));
        }
    }

    #[test]
    fn bad_texts_are_refused() {
        assert!(validate("250 2.0.0 fine").is_err());
        assert!(validate("550 4.1.8 mismatch").is_err());
        assert!(validate("550 5.1.8").is_err());
        assert!(validate("550 5.1.8 two\r\n250 lines").is_err());
        assert!(validate("55 5.1.8 x").is_err());
        assert!(validate("550 5.1 x").is_err());
    }
}
