//! Letting an unprivileged user submit mail to a private Postfix instance with `sendmail -C DIR`.
//!
//! Postfix's `postdrop` runs set-group-ID, so it accepts a configuration directory other than
//! the standard one only when the standard `main.cf` lists it in `alternate_config_directories`
//! (the mechanism multi-instance setups use). A test instance that wants `sendmail(1)` run as,
//! say, `nobody` registers its directory there for its lifetime ([`AlternateConfigDir`]) and
//! removes it when dropped. Tests run in parallel threads and processes, so every
//! read-modify-write of the standard `main.cf` happens under an exclusive lock on a lock file
//! in the temp directory, and the file is replaced by a rename: a `postdrop` reading it meanwhile sees the
//! old or the new text, never half of one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const PARAMETER: &str = "alternate_config_directories";

/// A config directory registered in the standard `main.cf`; unregistered on drop.
pub struct AlternateConfigDir {
    standard_main_cf: PathBuf,
    dir: String,
}

impl AlternateConfigDir {
    /// Register `dir` in `standard_config_dir/main.cf` (created when missing).
    pub fn register(standard_config_dir: &Path, dir: &Path) -> io::Result<AlternateConfigDir> {
        let registered = AlternateConfigDir {
            standard_main_cf: standard_config_dir.join("main.cf"),
            dir: dir.display().to_string(),
        };
        registered.edit(|dirs, me| {
            if !dirs.iter().any(|d| d == me) {
                dirs.push(me.to_string());
            }
        })?;
        Ok(registered)
    }

    fn edit(&self, change: impl FnOnce(&mut Vec<String>, &str)) -> io::Result<()> {
        let lock_path = std::env::temp_dir().join("outbound-guard-tests-alternate-config-dirs.lock");
        let lock = fs::File::options().create(true).truncate(false).write(true).open(&lock_path)?;
        lock.lock()?;
        let text = match fs::read_to_string(&self.standard_main_cf) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let (mut dirs, rest) = split_parameter(&text);
        change(&mut dirs, &self.dir);
        let mut out = rest;
        if !dirs.is_empty() {
            out.push_str(&format!("{PARAMETER} = {}\n", dirs.join(" ")));
        }
        if out.trim().is_empty() {
            // Nothing but our setting was there: leave no file behind.
            return match fs::remove_file(&self.standard_main_cf) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = self.standard_main_cf.with_extension("cf.outbound-guard-tests.tmp");
        fs::write(&tmp, out)?;
        fs::rename(&tmp, &self.standard_main_cf)
        // `lock` is released when dropped here.
    }
}

impl Drop for AlternateConfigDir {
    fn drop(&mut self) {
        let _ = self.edit(|dirs, me| dirs.retain(|d| d != me));
    }
}

/// The directories listed in `alternate_config_directories` (with its continuation lines), and
/// the rest of the text without that setting.
fn split_parameter(text: &str) -> (Vec<String>, String) {
    let mut dirs = Vec::new();
    let mut rest = String::new();
    let mut in_setting = false;
    for line in text.lines() {
        let continuation = line.starts_with([' ', '\t']) && !line.trim().is_empty();
        if in_setting && continuation {
            dirs.extend(words(line));
            continue;
        }
        in_setting = false;
        if let Some((key, value)) = line.split_once('=')
            && key.trim() == PARAMETER
            && !line.starts_with([' ', '\t', '#'])
        {
            in_setting = true;
            dirs.extend(words(value));
            continue;
        }
        rest.push_str(line);
        rest.push('\n');
    }
    (dirs, rest)
}

fn words(value: &str) -> impl Iterator<Item = String> + '_ {
    value.split([' ', '\t', ',']).filter(|w| !w.is_empty()).map(str::to_string)
}
