//! The durable notification spool under `state.dir/spool/`: one JSON file per notice and
//! channel, written (temp file, fsync, rename, fsync of the directory) before the first
//! delivery attempt, moved to `done/` once delivered.
//!
//! The file name is the notice id, so a notice handed over twice lands on the same file,
//! and the `done/` marker keeps a delivered one from being sent again after a restart.
//! Markers older than a week are pruned; by then no one re-announces that event. A file
//! that cannot be read back goes to `bad/` with a log line instead of stopping the rest.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::NotifyError;
use super::notice::{Channel, Notice};

/// The spool format version; a reader refuses (moves to `bad/`) what it does not know.
const VERSION: u32 = 1;

/// One pending notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    pub id: String,
    pub channel: Channel,
    pub notice: Notice,
    /// Failed attempts so far; the backoff continues from here after a restart.
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl Entry {
    pub fn new(notice: Notice, channel: Channel) -> Entry {
        Entry { version: VERSION, id: notice.id(channel), channel, notice, attempts: 0, last_error: None }
    }
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating) the spool in `dir` and removes temp files a crash left behind.
    ///
    /// # Errors
    /// [`NotifyError::Spool`] when the directories cannot be created or read.
    pub fn open(dir: &Path) -> Result<Spool, NotifyError> {
        let spool = Spool { dir: dir.to_owned() };
        for d in [spool.dir.clone(), spool.done_dir(), spool.bad_dir()] {
            fs::create_dir_all(&d).map_err(|source| NotifyError::Spool { path: d, source })?;
        }
        for entry in read_dir(&spool.dir)? {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(".tmp-") {
                // A write that never reached its rename: the event was not acknowledged as
                // spooled, and the notice it held is rebuilt if the event comes again.
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn done_dir(&self) -> PathBuf {
        self.dir.join("done")
    }

    fn bad_dir(&self) -> PathBuf {
        self.dir.join("bad")
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Whether `id` is pending or was delivered.
    pub fn is_known(&self, id: &str) -> bool {
        self.path_of(id).exists() || self.done_dir().join(id).exists()
    }

    /// Every pending entry. Unreadable ones are moved to `bad/` and logged.
    ///
    /// # Errors
    /// [`NotifyError::Spool`] when the directory cannot be read.
    pub fn load(&self) -> Result<Vec<Entry>, NotifyError> {
        let mut out = Vec::new();
        for entry in read_dir(&self.dir)? {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
                .and_then(|e| {
                    if e.version != VERSION {
                        Err(format!("unknown spool format version {}", e.version))
                    } else if e.id != id {
                        Err(format!("holds id \"{}\"", e.id))
                    } else {
                        Ok(e)
                    }
                });
            match parsed {
                Ok(e) => out.push(e),
                Err(why) => {
                    let to = self.bad_dir().join(&name);
                    tracing::error!(
                        file = %path.display(),
                        moved_to = %to.display(),
                        "unreadable notification spool file set aside: {why}"
                    );
                    let _ = fs::rename(&path, &to);
                }
            }
        }
        out.sort_by(|a, b| a.notice.since.cmp(&b.notice.since).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Writes (or rewrites) `entry` durably.
    ///
    /// # Errors
    /// [`NotifyError::Spool`] when it cannot be written.
    pub fn write(&self, entry: &Entry) -> Result<(), NotifyError> {
        match self.write_all(std::slice::from_ref(entry)).pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes (or rewrites) `entries` durably: each file synced and renamed into place, then
    /// one sync of the directory for all the renames. Returns the ones that failed, by id.
    pub fn write_all(&self, entries: &[Entry]) -> Vec<(String, NotifyError)> {
        let mut failed = Vec::new();
        let mut renamed = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.write_file(entry) {
                Ok(()) => renamed.push(&entry.id),
                Err(e) => failed.push((entry.id.clone(), e)),
            }
        }
        if !renamed.is_empty()
            && let Err(source) = sync_dir(&self.dir)
        {
            // None of the renames is known to be durable.
            let kind = source.kind();
            failed.extend(
                renamed
                    .into_iter()
                    .map(|id| (id.clone(), NotifyError::Spool { path: self.dir.clone(), source: kind.into() })),
            );
        }
        failed
    }

    /// `entry`'s file, synced and renamed into place (the directory not yet synced).
    fn write_file(&self, entry: &Entry) -> Result<(), NotifyError> {
        let path = self.path_of(&entry.id);
        let tmp = self.dir.join(format!(".tmp-{}", entry.id));
        let io = |source| NotifyError::Spool { path: path.clone(), source };
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| io(e.into()))?;
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io)
    }

    /// Marks `id` delivered: the rename is atomic, so after a crash the notice is either
    /// still pending (and sent again) or done (and never sent again).
    ///
    /// # Errors
    /// [`NotifyError::Spool`] when the rename fails.
    pub fn complete(&self, id: &str) -> Result<(), NotifyError> {
        match self.complete_all(&[id.to_owned()]).pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Marks each of `ids` delivered, then syncs both directories once for all of them.
    /// Returns the ones that failed, by id.
    pub fn complete_all(&self, ids: &[String]) -> Vec<(String, NotifyError)> {
        let mut failed = Vec::new();
        let mut moved = Vec::with_capacity(ids.len());
        for id in ids {
            match self.move_to_done(id) {
                Ok(()) => moved.push(id),
                Err(e) => failed.push((id.clone(), e)),
            }
        }
        if !moved.is_empty()
            && let Err(source) = sync_dir(&self.done_dir()).and_then(|()| sync_dir(&self.dir))
        {
            let kind = source.kind();
            failed.extend(
                moved
                    .into_iter()
                    .map(|id| (id.clone(), NotifyError::Spool { path: self.path_of(id), source: kind.into() })),
            );
        }
        failed
    }

    /// Renames `id`'s file into `done/` (the directories not yet synced).
    fn move_to_done(&self, id: &str) -> Result<(), NotifyError> {
        let from = self.path_of(id);
        let to = self.done_dir().join(id);
        let io = |source| NotifyError::Spool { path: from.clone(), source };
        match fs::rename(&from, &to) {
            Ok(()) => {}
            // Not durable in the first place (the write failed); a marker still prevents a
            // duplicate if the event is announced again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                File::create(&to).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        // Touch, so pruning counts from delivery rather than from the last write.
        let _ = File::options().write(true).open(&to).and_then(|f| f.set_modified(SystemTime::now()));
        Ok(())
    }

    /// Drops a pending entry without delivering it.
    pub fn discard(&self, id: &str) {
        let _ = fs::remove_file(self.path_of(id));
        let _ = sync_dir(&self.dir);
    }

    /// Removes `done/` markers older than `keep`; returns how many.
    pub fn prune(&self, keep: Duration) -> usize {
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in read_dir(&self.done_dir()).unwrap_or_default() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| now.duration_since(m).is_ok_and(|age| age > keep));
            if old && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, NotifyError> {
    let rd = fs::read_dir(dir).map_err(|source| NotifyError::Spool { path: dir.to_owned(), source })?;
    Ok(rd.flatten().filter(|e| e.path().is_file()).collect())
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notice::tests::restricted;

    #[test]
    fn write_load_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(&tmp.path().join("spool")).unwrap();
        let e = Entry::new(restricted("alice@example.com"), Channel::Email);
        assert!(!spool.is_known(&e.id));
        spool.write(&e).unwrap();
        assert!(spool.is_known(&e.id));
        assert_eq!(spool.load().unwrap(), vec![e.clone()]);

        let mut again = e.clone();
        again.attempts = 3;
        again.last_error = Some("relay down".into());
        spool.write(&again).unwrap();
        assert_eq!(spool.load().unwrap(), vec![again]);

        spool.complete(&e.id).unwrap();
        assert!(spool.load().unwrap().is_empty());
        assert!(spool.is_known(&e.id), "a delivered notice stays known");
        assert_eq!(spool.prune(Duration::from_secs(3600)), 0);
        assert_eq!(spool.prune(Duration::ZERO), 1);
        assert!(!spool.is_known(&e.id));
    }

    #[test]
    fn leftovers_and_bad_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(".tmp-x"), b"half").unwrap();
        fs::write(dir.join("garbage.json"), b"{not json").unwrap();
        let e = Entry::new(restricted("a@example.com"), Channel::Webhook);
        fs::write(dir.join("other-id.json"), serde_json::to_vec(&e).unwrap()).unwrap();
        let spool = Spool::open(&dir).unwrap();
        assert!(!dir.join(".tmp-x").exists());
        assert!(spool.load().unwrap().is_empty());
        assert!(dir.join("bad/garbage.json").exists());
        assert!(dir.join("bad/other-id.json").exists(), "id must match the name");
    }
}
