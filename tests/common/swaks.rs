//! The `swaks` SMTP client as a test's sender: [`Swaks`] builds the command line (loopback server,
//! a fixed HELO, a timeout), [`SwaksOutput`] keeps the transcript and reads the server's replies
//! back out of it; [`swaks`] runs it with bare arguments.

use std::process::{Command, Output, Stdio};

use super::process::{INSIDE_ADDR, OUTSIDE_ADDR, output_text};

/// Run `swaks` with these arguments (no defaults added).
pub fn swaks(args: &[&str]) -> Output {
    Command::new("swaks").args(args).stdin(Stdio::null()).output().expect("run swaks")
}

/// The result of a swaks run.
#[derive(Debug)]
pub struct SwaksOutput {
    pub output: Output,
    /// stdout + stderr.
    pub transcript: String,
}

impl SwaksOutput {
    /// swaks exited 0 (the whole transaction was accepted).
    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// Server reply lines (`<-  250 ...` and error replies `<** 535 ...`),
    /// without the swaks prefix.
    pub fn replies(&self) -> Vec<String> {
        self.transcript
            .lines()
            .filter_map(|l| {
                let rest = l
                    .strip_prefix("<-")
                    .or_else(|| l.strip_prefix("<**"))
                    .or_else(|| l.strip_prefix("<~*"))
                    .or_else(|| l.strip_prefix("<~"))?;
                Some(rest.trim_start().to_string())
            })
            .collect()
    }

    /// The reply codes, one per reply (continuation lines `250-...` skipped).
    pub fn codes(&self) -> Vec<u16> {
        self.replies()
            .iter()
            .filter(|r| r.as_bytes().get(3) != Some(&b'-'))
            .filter_map(|r| r.get(..3).and_then(|c| c.parse().ok()))
            .collect()
    }

    /// Some reply starts with `prefix` (e.g. `"535"`, `"4"`, `"250 2.0.0 Ok: queued"`).
    pub fn has_reply(&self, prefix: &str) -> bool {
        self.replies().iter().any(|r| r.starts_with(prefix))
    }

    /// The queue id from `250 2.0.0 Ok: queued as ID`.
    pub fn queue_id(&self) -> Option<String> {
        self.replies().iter().find_map(|r| r.split("queued as ").nth(1).map(|s| s.trim().to_string()))
    }
}

/// A swaks command builder. Defaults: `--server 127.0.0.1:PORT`,
/// `--helo client.outbound-guard.test`, `--timeout 30`.
#[derive(Clone, Debug)]
pub struct Swaks {
    server: String,
    from: Option<String>,
    to: Vec<String>,
    args: Vec<String>,
}

impl Swaks {
    pub fn new(port: u16) -> Swaks {
        Swaks {
            server: format!("{INSIDE_ADDR}:{port}"),
            from: None,
            to: Vec::new(),
            args: vec!["--helo".into(), "client.outbound-guard.test".into(), "--timeout".into(), "30".into()],
        }
    }
    pub fn from(mut self, addr: &str) -> Self {
        self.from = Some(addr.to_string());
        self
    }
    /// Add one recipient (may be called several times).
    pub fn to(mut self, addr: &str) -> Self {
        self.to.push(addr.to_string());
        self
    }
    pub fn tos(mut self, addrs: &[&str]) -> Self {
        self.to.extend(addrs.iter().map(|s| s.to_string()));
        self
    }
    pub fn helo(self, name: &str) -> Self {
        self.arg("--helo").arg(name)
    }
    /// AUTH PLAIN with these credentials.
    pub fn auth_plain(self, user: &str, password: &str) -> Self {
        self.arg("--auth").arg("PLAIN").arg("--auth-user").arg(user).arg("--auth-password").arg(password)
    }
    /// AUTH LOGIN with these credentials.
    pub fn auth_login(self, user: &str, password: &str) -> Self {
        self.arg("--auth").arg("LOGIN").arg("--auth-user").arg(user).arg("--auth-password").arg(password)
    }
    /// Connect from 127.0.0.2 (outside the default `mynetworks`).
    pub fn outside(self) -> Self {
        self.local_interface(OUTSIDE_ADDR)
    }
    pub fn local_interface(self, addr: &str) -> Self {
        self.arg("--local-interface").arg(addr)
    }
    /// Add (or replace) a header, e.g. `"Subject: hi"`.
    pub fn header(self, h: &str) -> Self {
        self.arg("--header").arg(h)
    }
    pub fn body(self, b: &str) -> Self {
        self.arg("--body").arg(b)
    }
    /// The whole DATA content (swaks's `--data`; `\n` in it is a line break).
    pub fn data(self, d: &str) -> Self {
        self.arg("--data").arg(d)
    }
    /// `--quit-after` CONNECT|FIRST-HELO|...|MAIL|RCPT (swaks names).
    pub fn quit_after(self, stage: &str) -> Self {
        self.arg("--quit-after").arg(stage)
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }
    pub fn args(mut self, a: &[&str]) -> Self {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    /// The full argument list.
    pub fn command_args(&self) -> Vec<String> {
        let mut v = vec!["--server".to_string(), self.server.clone()];
        if let Some(f) = &self.from {
            v.push("--from".into());
            v.push(f.clone());
        }
        if !self.to.is_empty() {
            v.push("--to".into());
            v.push(self.to.join(","));
        }
        v.extend(self.args.iter().cloned());
        v
    }
    pub fn run(&self) -> SwaksOutput {
        let args = self.command_args();
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let output = swaks(&refs);
        let transcript = output_text(&output);
        SwaksOutput { output, transcript }
    }
}
