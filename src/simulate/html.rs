//! The simulator's report as one self-contained HTML page (`--html FILE`): no external
//! assets, so it opens from a file:// URL or as a mail attachment.

use std::fmt::Write;

use super::report::Report;

/// Text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>outbound-guard simulation</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}</style></head><body>\n",
    );
    let _ = writeln!(out, "<h1>What this policy would have done</h1>");
    let _ = writeln!(
        out,
        "<p>{} lines from {}, {} to {}.</p>",
        report.input.lines,
        escape(&report.input.files.join(", ")),
        escape(report.input.first.as_deref().unwrap_or("-")),
        escape(report.input.last.as_deref().unwrap_or("-")),
    );
    let _ = writeln!(out, "<h2>Would have been restricted</h2><table id=\"restricted\">");
    let _ = writeln!(
        out,
        "<tr><th>when</th><th>account</th><th>policy</th><th>cause</th><th>reason</th><th>refused after</th></tr>"
    );
    for r in &report.restricted {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.at),
            escape(&r.account),
            escape(&r.policy),
            escape(&r.cause),
            escape(&r.reason),
            r.refused_recipients
        );
    }
    out.push_str("</table>\n");
    out.push_str("</body></html>\n");
    out
}
