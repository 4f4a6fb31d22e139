//! The machine under the real-peer tests: the loopback addresses, free ports and whether one is
//! listening, child processes (their children, signals, bounded waits), files' owners and modes
//! from `/etc/passwd`, and the text of a program's output. std only, no async runtime.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often the `wait_*` helpers poll.
pub const POLL: Duration = Duration::from_millis(20);

/// The loopback address Postfix listens on and treats as `mynetworks` by default.
pub const INSIDE_ADDR: &str = "127.0.0.1";
/// A loopback address outside the default `mynetworks` (an "outside" client).
pub const OUTSIDE_ADDR: &str = "127.0.0.2";

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((INSIDE_ADDR, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// Does this process run as root (effective uid 0)?
pub fn is_root() -> bool {
    // "Uid:\treal\teffective\tsaved\tfs"
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// (uid, gid) of a user from /etc/passwd.
pub fn user_ids(user: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == user { Some((f[2].parse().ok()?, f[3].parse().ok()?)) } else { None }
    })
}

/// Give `path` to `user` and that user's group.
pub fn chown_user(path: &Path, user: &str) -> io::Result<()> {
    let (uid, gid) = user_ids(user).ok_or_else(|| io::Error::other(format!("user {user} not in /etc/passwd")))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

/// Set the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Process state letter from /proc/PID/stat (`None` when the process is gone).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Running (not gone, not a zombie).
fn pid_alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// Live (non-zombie) direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut f = stat[close + 1..].split_whitespace();
        let state = f.next().unwrap_or("");
        let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == pid && state != "Z" && state != "X" {
            out.push(child);
        }
    }
    out
}

/// `kill -s SIG PID` (for processes a test started itself).
pub fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Wait (bounded) until each pid is gone or a zombie; SIGKILL stragglers.
pub fn reap_or_kill(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| pid_alive(p)) && Instant::now() < deadline {
        sleep(POLL);
    }
    for &p in pids {
        if pid_alive(p) {
            send_signal(p, "KILL");
        }
    }
}

/// Wait for a child with a bound; SIGKILL it when the bound is hit.
pub fn wait_child(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => sleep(POLL),
        }
    }
}

/// Bytes as text, invalid UTF-8 replaced.
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A finished program's stdout followed by its stderr.
pub fn output_text(o: &Output) -> String {
    format!("{}{}", lossy(&o.stdout), lossy(&o.stderr))
}

/// Is something listening on 127.0.0.1:port (from /proc/net/tcp; no
/// connection is made, so a milter or smtpd sees nothing)?
pub fn tcp_listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == want && f[3] == "0A"
            })
        })
        .unwrap_or(false)
}
