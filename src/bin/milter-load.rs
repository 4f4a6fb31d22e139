//! `milter-load`: drives a milter filter with many MTA-side connections the way Postfix does
//! and reports msgs/s, latency percentiles, the filter's CPU per message and peak memory, and
//! the count of every reply. See `milter-load --help`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use outbound_guard::config::ListenAddr;
use outbound_guard::load::{self, Options, Workload, Writes};

/// Load generator for milter filters: an MTA-side client built from outbound-guard's codec.
#[derive(Debug, Parser)]
#[command(name = "milter-load", version)]
struct Cli {
    /// The filter's socket: inet:HOST:PORT or unix:PATH.
    #[arg(long, value_parser = parse_addr)]
    milter: ListenAddr,
    /// Concurrent milter connections (SMTP sessions).
    #[arg(short = 'c', long, default_value_t = 8)]
    concurrency: usize,
    /// Messages to send in the measured phase.
    #[arg(short = 'n', long, default_value_t = 2000)]
    messages: u64,
    /// Distinct sending accounts; message k comes from account k mod N.
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// Recipients per message.
    #[arg(long, default_value_t = 3)]
    recipients: u32,
    /// How many of each message's recipients are internal (in --local-domain).
    #[arg(long, default_value_t = 1)]
    internal: u32,
    /// Do not authenticate: no {auth_authen}; the sender of an internal client is the account.
    #[arg(long)]
    no_auth: bool,
    /// Body size in bytes.
    #[arg(long, default_value_t = 2048)]
    body_size: usize,
    /// Headers beyond From, To, Subject, Date and Message-ID.
    #[arg(long, default_value_t = 0)]
    extra_headers: u32,
    /// The organisation's domain (accounts and internal recipients).
    #[arg(long, default_value = "example.com")]
    local_domain: String,
    /// How packets leave the client: postfix (buffered; sent when a reply is awaited, after
    /// DATA and at QUIT), coalesced (only when a reply is awaited and at QUIT), per-packet.
    #[arg(long, value_enum, default_value_t = WritesArg::Postfix)]
    writes: WritesArg,
    /// Turn Nagle's algorithm off (Postfix leaves it on).
    #[arg(long)]
    nodelay: bool,
    /// Keep each connection for all its messages instead of one connection per message.
    #[arg(long)]
    reuse: bool,
    /// Before measuring, send one pipelined message from each of N other accounts
    /// (warm<n>@<local domain>) so the filter holds them. Suits filters that skip all but
    /// MAIL, RCPT and end of message (outbound-guard).
    #[arg(long, default_value_t = 0)]
    prewarm: u64,
    /// The filter's process id (repeatable); CPU and peak RSS include its descendants.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Stop the measured phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    max_time: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WritesArg {
    Postfix,
    Coalesced,
    PerPacket,
}

fn parse_addr(s: &str) -> Result<ListenAddr, String> {
    s.parse().map_err(|e: &str| format!("{s:?} {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = Options {
        target: cli.milter,
        concurrency: cli.concurrency,
        messages: cli.messages,
        workload: Workload {
            accounts: cli.accounts,
            recipients: cli.recipients,
            internal: cli.internal.min(cli.recipients),
            auth: !cli.no_auth,
            body_size: cli.body_size,
            extra_headers: cli.extra_headers,
            local_domain: cli.local_domain,
            ..Workload::default()
        },
        writes: match cli.writes {
            WritesArg::Postfix => Writes::Postfix,
            WritesArg::Coalesced => Writes::Coalesced,
            WritesArg::PerPacket => Writes::PerPacket,
        },
        nodelay: cli.nodelay,
        reuse: cli.reuse,
        prewarm: cli.prewarm,
        server_pids: cli.pids,
        max_time: Duration::from_secs(cli.max_time),
    };
    // One thread, like the filters it is compared with: the client must not take more of the
    // machine than an MTA's milter client would.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("milter-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(load::run(opts)) {
        Ok(report) => {
            if cli.json {
                println!("{}", serde_json::to_string(&report).expect("a report serializes"));
            } else {
                print!("{}", report.text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("milter-load: {e}");
            ExitCode::from(2)
        }
    }
}
