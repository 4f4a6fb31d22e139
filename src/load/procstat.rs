//! What a filter process costs, read from `/proc`: CPU time (`utime + stime` of
//! `/proc/PID/stat`) and peak resident memory (`VmHWM` of `/proc/PID/status`), summed over
//! the process and its descendants (rspamd works in child processes).

use std::fs;

/// One reading of the processes' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// CPU time used so far, in clock ticks.
    pub cpu_ticks: u64,
    /// Sum of the processes' peak resident set sizes, in KiB.
    pub peak_rss_kib: u64,
    /// How many processes were read.
    pub processes: usize,
}

/// Reads `pids` and all their descendants.
pub fn sample(pids: &[u32]) -> Sample {
    let mut all: Vec<u32> = pids.to_vec();
    let mut i = 0;
    while i < all.len() {
        for c in children(all[i]) {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        i += 1;
    }
    let mut s = Sample::default();
    for pid in all {
        let Some(ticks) = cpu_ticks(pid) else { continue };
        s.cpu_ticks += ticks;
        s.peak_rss_kib += peak_rss_kib(pid).unwrap_or(0);
        s.processes += 1;
    }
    s
}

/// Seconds per clock tick of `/proc/PID/stat`.
pub fn seconds_per_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1.0 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// `utime + stime` (fields 14 and 15 of stat; 12 and 13 after the name).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Live direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    // Linux lists them per thread; the main thread's list is enough for processes we start.
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        return Vec::new();
    };
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let busy: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert_ne!(busy, 1);
        let s = sample(&[me]);
        assert!(s.processes >= 1);
        assert!(s.peak_rss_kib > 0);
        assert_eq!(sample(&[u32::MAX]).processes, 0, "a pid that does not exist reads as nothing");
        assert!(seconds_per_tick() > 0.0);
    }
}
