//! Writes the man page `deploy/outbound-guard.1` from the clap definition of the command line
//! (`outbound_guard::cli`), so the page documents exactly what the binary parses:
//!
//! ```sh
//! cargo run --example manpage            # rewrites deploy/outbound-guard.1
//! cargo run --example manpage -- -       # prints it instead
//! ```
//!
//! The page is committed (the Debian package takes it as it is, no generation step at package
//! time) and `tests/deploy_files.rs` fails when it no longer matches the command line.

use std::io::Write;
use std::path::PathBuf;

use clap::CommandFactory;
use clap_mangen::Man;

use outbound_guard::cli::Cli;

/// Where the page lives in the repository, relative to the crate root.
pub const PAGE: &str = "deploy/outbound-guard.1";

/// The sections clap cannot know: what the service needs around the command line.
const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success; for \fBrun\fR, a clean stop after SIGTERM.
.TP
\fB1\fR
The account is unknown or not restricted.
.TP
\fB2\fR
Usage, configuration or connection error (the message names the file, line, key and value).
.SH SIGNALS
.TP
\fBSIGHUP\fR
Re-read the configuration. A valid file takes effect for the next transaction, counters and
restrictions are kept; an invalid one is refused and the running policy stays.
.TP
\fBSIGTERM\fR
Stop accepting connections; a message in flight is finished (at most 60\~s), then exit 0.
.SH ENVIRONMENT
.TP
\fBOUTBOUND_GUARD_CONFIG\fR
The configuration file when \fB\-\-config\fR is not given.
.TP
\fBRUST_LOG\fR
Overrides the log level of \fBrun\fR (logs go to standard error).
.SH FILES
.TP
\fI/etc/outbound\-guard/plugin.toml\fR
The configuration (commented; every key shows its default).
.TP
\fI/var/lib/outbound\-guard/\fR
State: restrictions journal, audit log, notification spool, \fIadmin.token\fR (the bearer
token of the HTTP API, created mode 0600 at first start).
.TP
\fI/run/outbound\-guard/\fR
For a unix milter socket, e.g. \fBlisten = "unix:/run/outbound\-guard/milter.sock"\fR.
.TP
\fI/lib/systemd/system/outbound\-guard.service\fR
The systemd unit (\fBsystemctl reload\fR sends SIGHUP).
.SH "SEE ALSO"
\fBpostconf\fR(5) (smtpd_milters, milter_default_action), \fBsystemd.exec\fR(5),
\fI/usr/share/doc/outbound\-guard/README.md\fR (section "Deployment": Postfix and Sendmail).
"#;

/// The whole page.
///
/// # Errors
/// Only from writing into memory, i.e. never in practice.
pub fn render() -> std::io::Result<Vec<u8>> {
    let man = Man::new(Cli::command());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    commands_section(&mut out);
    out.extend_from_slice(EXTRA.as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// `COMMANDS`: every leaf command with its full synopsis and arguments (clap_mangen's own
/// subcommand section lists only the first level, and `restricted release` is what an
/// administrator looks up).
fn commands_section(out: &mut Vec<u8>) {
    let mut text = String::from(".SH COMMANDS\n");
    let root = Cli::command();
    for command in root.get_subcommands() {
        leaves(command, &mut Vec::new(), &mut text);
    }
    out.extend_from_slice(text.as_bytes());
}

fn leaves(command: &clap::Command, path: &mut Vec<String>, text: &mut String) {
    path.push(command.get_name().to_string());
    if command.has_subcommands() {
        for sub in command.get_subcommands() {
            leaves(sub, path, text);
        }
    } else {
        let mut synopsis = format!(".TP\n\\fB{}\\fR", roff(&path.join(" ")));
        let args: Vec<&clap::Arg> = command
            .get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_hide_set() && a.get_id() != "help")
            .collect();
        for arg in &args {
            let value = arg.get_id().as_str().to_uppercase();
            match arg.get_long() {
                Some(long) => synopsis.push_str(&format!(" [\\fB\\-\\-{}\\fR \\fI{}\\fR]", roff(long), roff(&value))),
                None => synopsis.push_str(&format!(" \\fI{}\\fR", roff(&value))),
            }
        }
        text.push_str(&synopsis);
        text.push('\n');
        if let Some(about) = command.get_about() {
            text.push_str(&roff(&about.to_string()));
            text.push('\n');
        }
        for arg in &args {
            let Some(help) = arg.get_help() else { continue };
            let name = match arg.get_long() {
                Some(long) => format!("\\fB\\-\\-{}\\fR", roff(long)),
                None => format!("\\fI{}\\fR", roff(&arg.get_id().as_str().to_uppercase())),
            };
            let default = match arg.get_default_values() {
                [] => String::new(),
                values => format!(" (default: {})", roff(&values[0].to_string_lossy())),
            };
            text.push_str(&format!(".RS\n.TP\n{name}\n{}{default}\n.RE\n", roff(&help.to_string())));
        }
    }
    path.pop();
}

/// Escapes text for roff: backslashes, hyphens (so they stay ASCII in copy-paste), and a
/// leading dot or quote that would start a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) { format!("\\&{escaped}") } else { escaped }
}

#[allow(dead_code)] // the test that checks the committed page includes this file as a module
fn main() -> std::io::Result<()> {
    let page = render()?;
    match std::env::args().nth(1).as_deref() {
        Some("-") => std::io::stdout().write_all(&page),
        _ => {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(PAGE);
            std::fs::write(&path, page)?;
            eprintln!("wrote {}", path.display());
            Ok(())
        }
    }
}
