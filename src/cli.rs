//! The command line, as clap sees it: shared by the binary (`src/main.rs`) and the man page
//! generator (`examples/manpage.rs`), so `outbound-guard.1` documents exactly what parses.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Outbound spam policy milter: per-account recipient limits, spam-share restriction,
/// administrator notification and release.
#[derive(Debug, Parser)]
#[command(name = "outbound-guard", version, about, propagate_version = true)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "OUTBOUND_GUARD_CONFIG", default_value = "/etc/outbound-guard/plugin.toml")]
    pub config: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the milter (the default).
    Run,
    /// Validate the configuration and exit.
    CheckConfig,
    /// Restricted accounts: list, show, release, add.
    #[command(subcommand)]
    Restricted(RestrictedCommand),
    /// Live counters of sending accounts.
    #[command(subcommand)]
    Senders(SendersCommand),
    /// What the configuration would have done to the mail in a Postfix log (changes nothing).
    Simulate(SimulateArgs),
}

/// `simulate`: replay a Postfix log through the policy of `--config`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Also write the report as one self-contained HTML page with plots to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// How many of the busiest accounts to show.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub top: u64,
    /// The year of the log's first line when its timestamps carry none (default: inferred from
    /// each file's modification time, or today for standard input).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1970..=9999))]
    pub year: Option<i32>,
    /// Postfix log files (syslog or `maillog_file` lines; plain or gzip), `-` for standard
    /// input; read in the order of their first timestamp.
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RestrictedCommand {
    /// List restricted accounts.
    List,
    /// Show one restriction with counters, policy and history.
    Show {
        /// The account: a SASL login, or an envelope sender address.
        account: String,
    },
    /// Release a restricted account.
    Release {
        /// The account: a SASL login, or an envelope sender address.
        account: String,
        /// Why, for the audit trail and the notification.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Restrict an account by hand; one restricted already gets the new reason and until.
    Add {
        /// The account: a SASL login, or an envelope sender address.
        account: String,
        /// RFC 3339 time the restriction ends; without it, until released.
        #[arg(long)]
        until: Option<String>,
        /// Why, for the audit trail and the notification.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SendersCommand {
    /// The busiest accounts with their live counters.
    Top {
        /// How many accounts to show (1 to 10000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
    },
    /// One account: counters, limits, policy, restriction and history (released ones too).
    Show {
        /// The account: a SASL login, or an envelope sender address.
        account: String,
    },
}
