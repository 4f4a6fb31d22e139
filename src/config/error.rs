//! Configuration errors that name the file, the line, the key and the value, for both kinds of
//! failure: the file does not parse into the expected shape (toml/serde), or a value is
//! understood but impossible (validation). Both locate the key in the source text.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path such as `policy.rule[1].priority`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }
    /// The last key of the path, if it ends with one.
    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }
    pub fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Why a configuration cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read { file: PathBuf, source: std::io::Error },
    /// The file says something wrong or impossible.
    Invalid(Box<Invalid>),
}

/// The details of an invalid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, source } => {
                write!(f, "cannot read configuration {}: {source}", file.display())
            }
            ConfigError::Invalid(e) => {
                write!(f, "{}", e.file.display())?;
                if let Some(line) = e.line {
                    write!(f, ":{line}")?;
                }
                write!(f, ": ")?;
                match (&e.key, &e.value) {
                    (Some(k), Some(v)) => write!(f, "{k} = {v}: ")?,
                    (Some(k), None) => write!(f, "{k}: ")?,
                    _ => {}
                }
                write!(f, "{}", e.message)
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid(_) => None,
        }
    }
}

impl ConfigError {
    /// The details, when the file was read but is wrong.
    pub fn invalid(&self) -> Option<&Invalid> {
        match self {
            ConfigError::Invalid(e) => Some(e),
            ConfigError::Read { .. } => None,
        }
    }

    /// An error for a toml/serde failure: the key is found from the error's position.
    pub fn from_toml(file: &Path, source: &str, err: &toml::de::Error) -> Self {
        let span = err.span();
        let located =
            span.clone().and_then(|s| key_path_at(source, s.clone()).or_else(|| key_by_table_header(source, s)));
        let value = span.as_ref().and_then(|s| source.get(s.clone())).map(|v| shorten(v.trim()));
        // toml's own message is its first line; position and snippet are ours to give.
        let message = err.message().lines().next().unwrap_or("invalid TOML").trim();
        let message =
            message.replace("expected i64", "expected an integer").replace("expected f64", "expected a number");
        let value = match &located {
            // For an unknown key the span is the key itself: the value is what was written after
            // it (none for a table).
            Some(path) if value.as_deref() == path.last_key() => span_of(source, path)
                .filter(|s| Some(s) != span.as_ref())
                .and_then(|s| source.get(s))
                .map(|v| shorten(v.trim())),
            _ => value,
        };
        // A duplicate key's span is the key; its value is what follows `=` on its line.
        let value = match (&value, &span) {
            (_, Some(s)) if message.starts_with("duplicate key") && located.is_some() => source
                .get(s.end..)
                .and_then(|rest| rest.lines().next())
                .and_then(|rest| rest.split_once('='))
                .map(|(_, v)| shorten(v.trim()))
                .or(value),
            _ => value,
        };
        ConfigError::Invalid(Box::new(Invalid {
            file: file.to_owned(),
            line: span.map(|s| line_of(source, s.start)),
            key: located.map(|p| p.to_string()),
            value,
            message,
        }))
    }

    /// The same error showing `value` instead of the text in the file (e.g. with a password
    /// masked).
    #[must_use]
    pub fn with_value(mut self, value: String) -> Self {
        if let ConfigError::Invalid(e) = &mut self {
            e.value = Some(value);
        }
        self
    }

    /// An error for a value that parsed but cannot be used.
    pub fn at(file: &Path, source: &str, path: &KeyPath, message: impl Into<String>) -> Self {
        let span = span_of(source, path);
        let value = span.as_ref().and_then(|s| source.get(s.clone())).map(|v| shorten(v.trim()));
        ConfigError::Invalid(Box::new(Invalid {
            file: file.to_owned(),
            line: span.map(|s| line_of(source, s.start)),
            key: Some(path.to_string()),
            value,
            message: message.into(),
        }))
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// 1-based line of a byte offset.
pub fn line_of(source: &str, offset: usize) -> usize {
    source.as_bytes()[..offset.min(source.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The span of the value at `path` (or of the key itself for a table), if present in the text.
pub fn span_of(source: &str, path: &KeyPath) -> Option<Range<usize>> {
    let root = DeTable::parse(source).ok()?;
    let mut table = root.get_ref();
    let mut found: Option<Range<usize>> = None;
    let mut current: Option<&DeValue<'_>> = None;
    for seg in &path.0 {
        match seg {
            Seg::Key(k) => {
                let t = match current {
                    None => table,
                    Some(v) => v.as_table()?,
                };
                let (key, value) = t.get_key_value(k.as_str())?;
                found = Some(if value.get_ref().is_table() { key.span() } else { value.span() });
                table = t;
                current = Some(value.get_ref());
            }
            Seg::Index(i) => {
                let item = current?.as_array()?.get(*i)?;
                found = Some(item.span());
                current = Some(item.get_ref());
            }
        }
    }
    let _ = table;
    found
}

/// The deepest key path whose key or value contains `span`.
pub fn key_at(source: &str, span: Range<usize>) -> Option<String> {
    key_path_at(source, span).map(|p| p.to_string())
}

fn key_path_at(source: &str, span: Range<usize>) -> Option<KeyPath> {
    let root = DeTable::parse(source).ok()?;
    let mut best = None;
    walk_table(root.get_ref(), &KeyPath::default(), &span, &mut best);
    best
}

/// The key at `span` named under the table header above it, for an error that keeps the file
/// from parsing at all (a duplicate key), when [`key_path_at`] has no tree to walk.
fn key_by_table_header(source: &str, span: Range<usize>) -> Option<KeyPath> {
    let text = source.get(span.clone())?.split('=').next()?.trim();
    let bare = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !text.split('.').all(|k| bare(k.trim())) {
        return None;
    }
    let header = source[..span.start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_owned());
    let mut path = KeyPath::default();
    for part in header.iter().flat_map(|h| h.split('.')).chain(text.split('.')) {
        path = path.key(part.trim());
    }
    Some(path)
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
}

fn walk_table(table: &DeTable<'_>, at: &KeyPath, span: &Range<usize>, best: &mut Option<KeyPath>) {
    for (key, value) in table.iter() {
        let path = at.key(key.get_ref());
        if contains(&key.span(), span) || contains(&value.span(), span) {
            *best = Some(path.clone());
        }
        walk_value(value.get_ref(), &path, span, best);
    }
}

fn walk_value(value: &DeValue<'_>, at: &KeyPath, span: &Range<usize>, best: &mut Option<KeyPath>) {
    match value {
        DeValue::Table(t) => walk_table(t, at, span, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = at.index(i);
                if contains(&item.span(), span) {
                    *best = Some(path.clone());
                }
                walk_value(item.get_ref(), &path, span, best);
            }
        }
        _ => {}
    }
}
