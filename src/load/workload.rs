//! What the load generator sends: which account sends message `k`, to whom, with which
//! headers, body and macro values. Deterministic, so two runs of the same options send the
//! same mail and a limit's effect can be predicted.

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Distinct sending accounts; message `k` comes from account `k % accounts`.
    pub accounts: u64,
    /// Recipients per message, of which the first `internal` are in `local_domain`.
    pub recipients: u32,
    pub internal: u32,
    /// Whether the client authenticated (`{auth_authen}` is the account); otherwise the
    /// account is the envelope sender of a client in the internal networks.
    pub auth: bool,
    /// Body bytes (CRLF lines of at most 78 bytes).
    pub body_size: usize,
    /// Headers beyond From, To, Subject, Date and Message-ID.
    pub extra_headers: u32,
    pub local_domain: String,
    pub external_domain: String,
    /// Accounts are named `{prefix}{n}@{local_domain}`.
    pub account_prefix: String,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            accounts: 1000,
            recipients: 3,
            internal: 1,
            auth: true,
            body_size: 2048,
            extra_headers: 0,
            local_domain: "example.com".into(),
            external_domain: "example.net".into(),
            account_prefix: "user".into(),
        }
    }
}

/// The client an MTA would report: an address inside the default `internal_networks`.
pub const CLIENT_ADDR: &str = "127.0.0.1";
pub const CLIENT_NAME: &str = "client.example.com";
pub const HELO_NAME: &str = "client.example.com";

/// One message's envelope and identity.
#[derive(Debug, Clone)]
pub struct Message {
    pub sender: String,
    /// `{auth_authen}`, when the client authenticated.
    pub login: Option<String>,
    pub recipients: Vec<String>,
    /// Postfix's queue id (`i`).
    pub queue_id: String,
}

impl Workload {
    /// The account number of message `k`.
    pub fn account_of(&self, k: u64) -> u64 {
        k % self.accounts.max(1)
    }

    /// The address of account `n`.
    pub fn account(&self, n: u64) -> String {
        format!("{}{n}@{}", self.account_prefix, self.local_domain)
    }

    /// Message number `k`.
    pub fn message(&self, k: u64) -> Message {
        let sender = self.account(self.account_of(k));
        let recipients = (0..self.recipients)
            .map(|j| {
                let domain = if j < self.internal { &self.local_domain } else { &self.external_domain };
                format!("r{}-{j}@{domain}", k % 9973)
            })
            .collect();
        Message { login: self.auth.then(|| sender.clone()), sender, recipients, queue_id: queue_id(k) }
    }

    /// The header section of a message.
    pub fn headers(&self, m: &Message) -> Vec<(String, String)> {
        let mut h = vec![
            ("From".to_string(), format!("<{}>", m.sender)),
            ("To".to_string(), m.recipients.iter().map(|r| format!("<{r}>")).collect::<Vec<_>>().join(", ")),
            ("Subject".to_string(), format!("load test {}", m.queue_id)),
            ("Date".to_string(), "Sun, 22 Nov 2026 12:00:00 +0000".to_string()),
            ("Message-ID".to_string(), format!("<{}@{}>", m.queue_id, self.local_domain)),
        ];
        for i in 0..self.extra_headers {
            h.push((format!("X-Load-{i}"), "a header value of ordinary length for a mail header line".to_string()));
        }
        h
    }

    /// The body: `body_size` bytes of CRLF-terminated text lines.
    pub fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.body_size);
        let line = b"The quick brown fox jumps over the lazy dog; load test body text, line after line.";
        while body.len() < self.body_size {
            let room = self.body_size - body.len();
            if room <= 2 {
                body.extend(std::iter::repeat_n(b'.', room));
                break;
            }
            let take = (room - 2).min(76);
            body.extend_from_slice(&line[..take]);
            body.extend_from_slice(b"\r\n");
        }
        body
    }

    /// The value Postfix would give a macro for this message, `None` when it has none (Postfix
    /// then leaves the macro out of the packet).
    pub fn macro_value(&self, name: &str, m: &Message, rcpt: Option<&str>) -> Option<String> {
        Some(match name {
            "j" => "mta.example.com".into(),
            "{daemon_name}" => "smtpd".into(),
            "{daemon_addr}" => "127.0.0.1".into(),
            "v" => "Postfix 3.7".into(),
            "_" => format!("{CLIENT_NAME} [{CLIENT_ADDR}]"),
            "{client_addr}" => CLIENT_ADDR.into(),
            "{client_name}" => CLIENT_NAME.into(),
            "{client_port}" => "40000".into(),
            "i" => m.queue_id.clone(),
            "{auth_type}" => m.login.as_ref().map(|_| "PLAIN".to_string())?,
            "{auth_authen}" => m.login.clone()?,
            "{mail_addr}" => m.sender.clone(),
            "{rcpt_addr}" => rcpt?.to_string(),
            "{rcpt_host}" => rcpt?.rsplit_once('@').map(|(_, d)| d.to_string())?,
            "{rcpt_mailer}" => "smtp".into(),
            _ => return None,
        })
    }
}

/// A queue id shaped like Postfix's short ones (hex, 10 characters).
fn queue_id(k: u64) -> String {
    format!("{:010X}", k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_rotate_over_accounts_and_mix_recipients() {
        let w = Workload { accounts: 3, recipients: 3, internal: 1, ..Workload::default() };
        let m = w.message(4);
        assert_eq!(m.sender, "user1@example.com");
        assert_eq!(m.login.as_deref(), Some("user1@example.com"));
        assert!(m.recipients[0].ends_with("@example.com"));
        assert!(m.recipients[1].ends_with("@example.net") && m.recipients[2].ends_with("@example.net"));
        assert_ne!(w.message(1).queue_id, w.message(2).queue_id);
    }

    #[test]
    fn body_has_the_asked_size_in_crlf_lines() {
        for size in [0, 1, 2, 3, 80, 2048] {
            let b = Workload { body_size: size, ..Workload::default() }.body();
            assert_eq!(b.len(), size);
            assert!(b.windows(2).filter(|w| w == b"\r\n").count() >= size / 80);
        }
    }

    #[test]
    fn unauthenticated_mail_has_no_auth_macros() {
        let w = Workload { auth: false, ..Workload::default() };
        let m = w.message(0);
        assert_eq!(w.macro_value("{auth_authen}", &m, None), None);
        assert_eq!(w.macro_value("{mail_addr}", &m, None).as_deref(), Some("user0@example.com"));
        assert_eq!(w.macro_value("{tls_version}", &m, None), None);
    }
}
