//! `outbound-guard`: command line. Thin on purpose: parse arguments, load the configuration,
//! bind, hand over to the library, map failures to exit codes (0 ok, 1 unknown/not restricted
//! account, 2 usage, configuration or connection errors).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use outbound_guard::admin::client::{self, AdminClient, ClientError, path_segment, query_value};
use outbound_guard::cli::{Cli, Command, RestrictedCommand, SendersCommand, SimulateArgs};
use outbound_guard::config::Config;
use outbound_guard::daemon;
use outbound_guard::milter::server::Listener;
use outbound_guard::policy::clock::EngineClock;
use reqwest::Method;

const EXIT_USAGE: u8 = 2;

/// The account table on huge pages (see [`outbound_guard::huge_pages`]).
#[global_allocator]
static ALLOCATOR: outbound_guard::huge_pages::LargeBlocksOnHugePages =
    outbound_guard::huge_pages::LargeBlocksOnHugePages;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match cli.command {
        None | Some(Command::Run) => run(&cli.config),
        Some(Command::CheckConfig) => check_config(&cli.config, cli.json),
        Some(Command::Restricted(c)) => admin(&cli.config, cli.json, Admin::Restricted(c)),
        Some(Command::Senders(c)) => admin(&cli.config, cli.json, Admin::Senders(c)),
        Some(Command::Simulate(args)) => simulate(&cli.config, cli.json, &args),
    }
}

/// `simulate`: the report on standard output (text or JSON), the HTML page to a file.
fn simulate(path: &Path, json: bool, args: &SimulateArgs) -> ExitCode {
    use outbound_guard::simulate::{self, Options, input::Source};
    let config = match daemon::load_config(path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("outbound-guard: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let sources: Vec<Source> = args.logs.iter().map(|l| Source::from_arg(l)).collect();
    let options = Options { top: args.top as usize, year: args.year };
    let report = match simulate::simulate(config, &sources, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outbound-guard: simulate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(file) = &args.html
        && let Err(e) = std::fs::write(file, simulate::html::render(&report))
    {
        eprintln!("outbound-guard: simulate: cannot write {}: {e}", file.display());
        return ExitCode::from(EXIT_USAGE);
    }
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("outbound-guard: simulate: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        print!("{}", simulate::text::render(&report));
    }
    ExitCode::SUCCESS
}

fn check_config(path: &Path, json: bool) -> ExitCode {
    let checked = daemon::load_config(path);
    match checked {
        Ok(_) if json => {
            println!("{}", serde_json::json!({"valid": true, "file": path.display().to_string()}));
            ExitCode::SUCCESS
        }
        Ok(_) => {
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"valid": false, "error": e.to_string()}));
            }
            eprintln!("outbound-guard: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match daemon::load_config(path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("outbound-guard: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    daemon::init_logging(config.log.format, &config.log.level);
    // One thread: on small machines a second worker costs more CPU in wake-ups than it
    // gains; the work per message is microseconds.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outbound-guard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let services = match daemon::Services::new(config.clone(), EngineClock::System) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        // Before any socket is bound: an MTA (or a test) may connect, and an init system signal,
        // the moment the socket exists; a SIGTERM then must already mean a clean shutdown.
        let shutdown = match daemon::handle_signals(services.clone(), path.to_owned()) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match Listener::bind(&config.milter.listen, config.milter.socket_mode).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let local = match &config.milter.local_listen {
            None => None,
            Some(addr) => match Listener::bind(addr, config.milter.socket_mode).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!("milter.local_listen: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            },
        };
        let listener = daemon::MilterListeners { smtp: listener, local };
        let admin = match daemon::bind_admin(&config).await {
            Ok((l, token)) => (l, services.admin_state(token)),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        if let Err(e) = services.start_notifier(shutdown.clone()) {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
        daemon::run(listener, Some(admin), services, shutdown).await;
        ExitCode::SUCCESS
    })
}

enum Admin {
    Restricted(RestrictedCommand),
    Senders(SendersCommand),
}

/// Who is acting, for the audit trail.
fn operator() -> String {
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "cli".into());
    format!("{user} (cli)")
}

fn admin(path: &Path, json: bool, command: Admin) -> ExitCode {
    let config = match Config::load_admin(path) {
        Ok((admin, None)) => admin,
        Ok((admin, Some(e))) => {
            eprintln!(
                "outbound-guard: warning: {e}\n\
                 outbound-guard: (the running filter keeps the policy it has; this command uses only [admin])"
            );
            admin
        }
        Err(e) => {
            eprintln!("outbound-guard: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outbound-guard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let client = AdminClient::from_config(&config)?;
        let by = query_value(&operator());
        let (value, render): (_, fn(&serde_json::Value) -> String) = match command {
            Admin::Restricted(RestrictedCommand::List) => {
                (client.request(Method::GET, "/api/v1/restricted", None).await?, client::render_restricted_list)
            }
            Admin::Restricted(RestrictedCommand::Show { account }) => {
                let path = format!("/api/v1/restricted/{}", path_segment(&account));
                (client.request(Method::GET, &path, None).await?, client::render_restriction)
            }
            Admin::Restricted(RestrictedCommand::Release { account, reason }) => {
                let mut path = format!("/api/v1/restricted/{}?by={by}", path_segment(&account));
                if let Some(r) = reason {
                    path.push_str(&format!("&reason={}", query_value(&r)));
                }
                let v = client.request(Method::DELETE, &path, None).await?;
                (v, |v| {
                    format!("Released {}: it may send outbound mail again.\n", v["account"].as_str().unwrap_or("?"))
                })
            }
            Admin::Restricted(RestrictedCommand::Add { account, until, reason }) => {
                let body = serde_json::json!({"account": account, "reason": reason, "until": until, "by": operator()});
                (client.request(Method::POST, "/api/v1/restricted", Some(body)).await?, client::render_added)
            }
            Admin::Senders(SendersCommand::Top { limit }) => {
                let path = format!("/api/v1/senders?top={limit}");
                (client.request(Method::GET, &path, None).await?, client::render_senders)
            }
            Admin::Senders(SendersCommand::Show { account }) => {
                let path = format!("/api/v1/senders/{}", path_segment(&account));
                (client.request(Method::GET, &path, None).await?, client::render_sender)
            }
        };
        Ok::<_, ClientError>(if json { format!("{value}\n") } else { render(&value) })
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("outbound-guard: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
