//! The test messages of `fixtures/messages` and the pieces a milter gets of them: headers as
//! `(name, value)` with the value as received (leading space kept, folding kept), the body.
#![allow(dead_code)]

use std::path::PathBuf;

/// The bytes of `fixtures/messages/<name>`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/messages").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Header section and body, split at the first empty line (CRLF or LF).
pub fn split(message: &[u8]) -> (&[u8], &[u8]) {
    for (i, w) in message.windows(4).enumerate() {
        if w == b"\r\n\r\n" {
            return (&message[..i + 2], &message[i + 4..]);
        }
    }
    for (i, w) in message.windows(2).enumerate() {
        if w == b"\n\n" {
            return (&message[..i + 1], &message[i + 2..]);
        }
    }
    (message, &[])
}

/// The headers as a milter receives them: the name, and the value after the colon with its
/// leading space and continuation lines. `lf_only` turns CRLF into LF the way Postfix passes
/// header values to milters.
pub fn headers(message: &[u8], lf_only: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (head, _) = split(message);
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in head.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").map(|l| l.strip_suffix(b"\r").unwrap_or(l)).unwrap_or(line);
        if bare.is_empty() {
            continue;
        }
        if bare[0] == b' ' || bare[0] == b'\t' {
            let (_, value) = out.last_mut().expect("a continuation after a header");
            value.extend_from_slice(if lf_only { b"\n" } else { b"\r\n" });
            value.extend_from_slice(bare);
            continue;
        }
        let colon = bare.iter().position(|&b| b == b':').expect("name: value");
        out.push((bare[..colon].to_vec(), bare[colon + 1..].to_vec()));
    }
    out
}

/// `large.eml`: `ham.eml`'s headers and a body of `body_len` bytes of plain text lines, built
/// here rather than committed.
pub fn large_message(body_len: usize) -> Vec<u8> {
    let ham = fixture("ham.eml");
    let (head, _) = split(&ham);
    let mut m = head.to_vec();
    m.extend_from_slice(b"\r\n");
    let line = b"The quarterly figures are attached below, line by line, for review.\r\n";
    while m.len() - head.len() - 2 + line.len() <= body_len {
        m.extend_from_slice(line);
    }
    m.resize(head.len() + 2 + body_len, b'.');
    m
}
