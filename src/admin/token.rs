//! The bearer token of the admin API: a random secret in a file only its owner can read.
//!
//! Created (mode 0600) at first start when missing; a start with a token file that group or
//! others can read is refused, because anyone who can read it can release every account.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use subtle::ConstantTimeEq;

/// Why the token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot create the admin token file {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("the admin token file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    TooOpen { path: String, mode: u32 },
    #[error("the admin token file {0} is empty")]
    Empty(String),
}

/// Reads the token, creating the file with a new random token when it does not exist.
///
/// # Errors
/// [`TokenError`] when the file cannot be created or read, is empty, or is readable by others.
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    let shown = path.display().to_string();
    if !path.exists() {
        let create = |source| TokenError::Create { path: shown.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(create)?;
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| create(std::io::Error::other(e.to_string())))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(create)?;
        file.write_all(format!("{token}\n").as_bytes()).map_err(create)?;
        file.sync_all().map_err(create)?;
        tracing::info!(file = %shown, "admin API token created");
        return Ok(token);
    }
    let mode = std::fs::metadata(path)
        .map_err(|source| TokenError::Read { path: shown.clone(), source })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TokenError::TooOpen { path: shown, mode: mode & 0o777 });
    }
    read(path)
}

/// Reads an existing token (the CLI side).
///
/// # Errors
/// [`TokenError`] when the file cannot be read or is empty.
pub fn read(path: &Path) -> Result<String, TokenError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: shown.clone(), source })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(TokenError::Empty(shown));
    }
    Ok(token)
}

/// Compares a presented token with the real one in constant time.
pub fn matches(presented: &str, token: &str) -> bool {
    presented.len() == token.len() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/admin.token");
        let token = load_or_create(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), token);
        assert!(matches(&token, &token));
        assert!(!matches("wrong", &token));
    }

    #[test]
    fn a_readable_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("readable by group or others (mode 644)"), "{err}");
    }
}
