//! The CLI's side of the admin API: finds the running daemon from the configuration
//! (`admin.listen`, `admin.token_file`), sends one request, and renders the answer as a table
//! or as JSON. Exit codes: 0 success, 1 account unknown / not restricted, 2 usage or
//! connection errors.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::token;
use crate::config::AdminConfig;

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("cannot reach the filter's admin API at {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("the admin API answered {status}: {message}")]
    Api { status: StatusCode, message: String },
}

impl ClientError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Api { status, .. } if *status == StatusCode::NOT_FOUND => 1,
            _ => 2,
        }
    }
}

/// A client for the daemon described by a configuration.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// # Errors
    /// When the token file cannot be read.
    pub fn from_config(admin: &AdminConfig) -> Result<AdminClient, ClientError> {
        let token = token::read(&admin.token_file)?;
        let addr = reachable(admin.listen);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()
            .map_err(|source| ClientError::Connect { url: addr.to_string(), source })?;
        Ok(AdminClient { base: format!("http://{addr}"), token, http })
    }

    /// Sends a request and returns the JSON answer of a 2xx response.
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the daemon cannot be reached, [`ClientError::Api`] for a
    /// non-2xx answer (its `error` message included).
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|source| ClientError::Connect { url: url.clone(), source })?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"].as_str().unwrap_or("no detail").to_owned();
            Err(ClientError::Api { status, message })
        }
    }
}

/// Where to connect for a listen address: an unspecified address means this host.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// Percent-encodes an account for a URL path segment.
pub fn path_segment(account: &str) -> String {
    let mut out = String::new();
    for b in account.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@+".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn query_value(text: &str) -> String {
    path_segment(text).replace('+', "%2B")
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// "used/limit" for a counter, "used" when the limit is 0 (none).
fn against(counters: &Value, used: &str, limit: &str) -> String {
    let u = counters[used].as_u64().unwrap_or(0);
    match counters[limit].as_u64().unwrap_or(0) {
        0 => u.to_string(),
        l => format!("{u}/{l}"),
    }
}

/// Lays out rows in aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// `restricted list` as a table.
pub fn render_restricted_list(v: &Value) -> String {
    let list = v["restricted"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "No restricted accounts.\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                text(&r["account"]),
                text(&r["created_at"]),
                if r["until"].is_null() { "until released".into() } else { text(&r["until"]) },
                text(&r["source"]),
                text(&r["reason"]),
            ]
        })
        .collect();
    table(&["ACCOUNT", "SINCE", "UNTIL", "SOURCE", "REASON"], &rows)
}

/// One restriction (with counters and history) as text.
pub fn render_restriction(r: &Value) -> String {
    let mut out = String::new();
    let c = &r["counters"];
    let until = if r["until"].is_null() { "until an administrator releases it".into() } else { text(&r["until"]) };
    let _ = writeln!(out, "Account:   {}", text(&r["account"]));
    let _ = writeln!(out, "Reason:    {}", text(&r["reason"]));
    let _ = writeln!(out, "Policy:    {}", text(&r["policy"]));
    let _ = writeln!(out, "Source:    {}", text(&r["source"]));
    let _ = writeln!(out, "Since:     {}", text(&r["created_at"]));
    let _ = writeln!(out, "Until:     {until}");
    counters_line(&mut out, c);
    render_history(&mut out, &r["history"]);
    out
}

/// The answer to `restricted add`: the restriction, after a line saying whether it replaced
/// the reason and `until` of one in force.
pub fn render_added(r: &Value) -> String {
    let head = if r["replaced"].as_bool() == Some(true) {
        "Replaced the reason and until of the restriction in force (the history keeps both)."
    } else {
        "Restricted."
    };
    format!("{head}\n{}", render_restriction(r))
}

/// The `Counters:` line of `restricted show` and `senders show`.
fn counters_line(out: &mut String, c: &Value) {
    let _ = writeln!(
        out,
        "Counters:  external/hour {}  internal/hour {}  day {}  spam {}/{} messages",
        against(c, "external_last_hour", "external_limit_per_hour"),
        against(c, "internal_last_hour", "internal_limit_per_hour"),
        against(c, "last_day", "limit_per_day"),
        c["spam_messages"].as_u64().unwrap_or(0),
        c["messages"].as_u64().unwrap_or(0),
    );
}

/// An account's history, oldest first.
fn render_history(out: &mut String, history: &Value) {
    if let Some(history) = history.as_array().filter(|h| !h.is_empty()) {
        let _ = writeln!(out, "History:");
        for h in history {
            let until = match h["action"].as_str() {
                Some("released") => String::new(),
                _ if h["until"].is_null() => "  (until released)".into(),
                _ => format!("  (until {})", text(&h["until"])),
            };
            let _ = writeln!(
                out,
                "  {}  {:<10}  by {}: {}{until}",
                text(&h["at"]),
                text(&h["action"]),
                text(&h["by"]),
                text(&h["reason"])
            );
        }
    }
}

/// `senders show`: an account's counters, limits, policy, restriction and history.
pub fn render_sender(s: &Value) -> String {
    let mut out = String::new();
    let c = &s["counters"];
    let _ = writeln!(out, "Account:   {}", text(&s["account"]));
    let _ = writeln!(out, "Policy:    {}", text(&s["policy"]));
    counters_line(&mut out, c);
    let l = &s["limits"];
    let _ = writeln!(
        out,
        "Limits:    external/hour {}  internal/hour {}  day {}  per message {}  spam {}% of at least {} in {} s",
        text(&l["recipient_limit_external_per_hour"]),
        text(&l["recipient_limit_internal_per_hour"]),
        text(&l["recipient_limit_per_day"]),
        text(&l["max_recipients_per_message"]),
        text(&l["spam_percent"]),
        text(&l["spam_min_messages"]),
        text(&l["spam_window_seconds"]),
    );
    let r = &s["restriction"];
    if r.is_null() {
        let _ = writeln!(out, "State:     may send");
    } else {
        let until = if r["until"].is_null() { "until an administrator releases it".into() } else { text(&r["until"]) };
        let _ =
            writeln!(out, "State:     restricted since {} ({}), {until}", text(&r["created_at"]), text(&r["source"]));
        let _ = writeln!(out, "Reason:    {}", text(&r["reason"]));
    }
    render_hourly(&mut out, &s["hourly"]);
    render_history(&mut out, &s["history"]);
    out
}

/// The per-hour series of `senders show`: each whole hour's highest sample of the recipients in
/// use against the external / internal hourly limit, oldest first, `-` where not recorded;
/// nothing when the answer has no series (an older filter).
fn render_hourly(out: &mut String, hourly: &Value) {
    let Some(hours) = hourly["hours"].as_array().filter(|h| !h.is_empty()) else { return };
    let every = hourly["sample_seconds"].as_u64().unwrap_or(60);
    let _ = writeln!(
        out,
        "Per hour:  highest in use, external/internal, sampled every {every} s (UTC, oldest first, - not recorded):"
    );
    let cells: Vec<String> = hours
        .iter()
        .map(|h| {
            let hour = h["start"].as_str().and_then(|s| s.get(11..13)).unwrap_or("??");
            match (h["external"].as_u64(), h["internal"].as_u64()) {
                (Some(e), Some(i)) => format!("{hour}h {e}/{i}"),
                _ => format!("{hour}h -"),
            }
        })
        .collect();
    for row in cells.chunks(8) {
        let _ = writeln!(out, "  {}", row.iter().map(|c| format!("{c:<10}")).collect::<String>().trim_end());
    }
}

/// `senders top` as a table.
pub fn render_senders(v: &Value) -> String {
    let list = v["senders"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "No sending activity recorded.\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let c = &s["counters"];
            vec![
                text(&s["account"]),
                text(&s["policy"]),
                against(c, "external_last_hour", "external_limit_per_hour"),
                against(c, "internal_last_hour", "internal_limit_per_hour"),
                against(c, "last_day", "limit_per_day"),
                if s["restricted"].as_bool() == Some(true) { "restricted".into() } else { "-".into() },
            ]
        })
        .collect();
    table(&["ACCOUNT", "POLICY", "EXTERNAL/H", "INTERNAL/H", "DAY", "STATE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(path_segment("alice+x@example.com"), "alice+x@example.com");
        assert_eq!(path_segment("\"john doe\"@example.com"), "%22john%20doe%22@example.com");
        assert_eq!(query_value("a+b c"), "a%2Bb%20c");
    }

    #[test]
    fn the_per_hour_series_reads_oldest_first_with_gaps_marked() {
        let mut hours: Vec<Value> = (1..=23)
            .map(|h| json!({"start": format!("2026-11-22T{:02}:00:00Z", h % 24), "external": null, "internal": null}))
            .collect();
        hours[21] = json!({"start": "2026-11-22T22:00:00Z", "external": 38, "internal": 1});
        hours[22] = json!({"start": "2026-11-22T23:00:00Z", "external": 0, "internal": 7});
        let s = json!({"account": "a@x", "policy": "default", "counters": {}, "limits": {}, "restriction": null,
            "history": [], "hourly": {"measure": "peak_in_use", "sample_seconds": 60, "hours": hours}});
        let text = render_sender(&s);
        assert!(text.contains("Per hour:  highest in use, external/internal, sampled every 60 s"), "{text}");
        let lines: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("Per hour")).skip(1).take(3).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("  01h -"), "{text}");
        assert!(lines[2].ends_with("22h 38/1  23h 0/7"), "{text}");
        // An answer without a series (an older filter) prints no such line.
        let old = json!({"account": "a@x", "counters": {}, "limits": {}, "restriction": null, "history": []});
        assert!(!render_sender(&old).contains("Per hour"));
    }

    #[test]
    fn tables_align() {
        let v = json!({"restricted": [{"account": "a@x", "created_at": "2026-01-01T00:00:00Z", "until": null, "source": "policy", "reason": "limit"}]});
        let t = render_restricted_list(&v);
        assert!(t.starts_with("ACCOUNT"), "{t}");
        assert!(t.contains("until released"), "{t}");
        assert_eq!(render_restricted_list(&json!({"restricted": []})), "No restricted accounts.\n");
    }
}
