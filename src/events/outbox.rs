//! The durable outbox of one webhook URL: a folder with one file per undelivered event,
//! `{seq:020}.json`, so that the name order is the order the events happened in.
//!
//! A file is written whole before [`crate::events::Events::emit`] returns (a unique temp file,
//! fsync, rename, folder fsync), and removed once the receiver has answered 2xx (or the
//! event was given up). What a crash or SIGKILL leaves is therefore exactly the events not
//! yet delivered, plus temp files that [`OutboxDir::open`] removes.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Suffix of an event file.
const SUFFIX: &str = ".json";
/// Prefix of a temp file (never an event file's name: those start with a digit).
const TEMP_PREFIX: &str = ".event";
/// Suffix given to a file that cannot be read as an event (kept for inspection, not retried).
const BAD_SUFFIX: &str = ".bad";

/// One event as stored: everything needed to send it again, byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The `webhook-id`: the same on every attempt, across restarts.
    pub id: String,
    /// Events with the same key reach the URL in sequence order (a recording or bot id).
    pub order_key: Option<String>,
    /// When it was emitted, Unix milliseconds (retries end 24 h after this).
    pub created_ms: i64,
    /// The exact request body (signed as it is).
    pub body: String,
}

/// The folder of one URL's undelivered events.
#[derive(Debug)]
pub struct OutboxDir {
    path: PathBuf,
}

impl OutboxDir {
    /// Opens (creates) the folder, removes temp files a crash left, and returns the events
    /// found in it, oldest first. Unreadable files are renamed `*.bad` and logged.
    pub fn open(path: &Path) -> std::io::Result<(Self, Vec<(u64, StoredEvent)>)> {
        std::fs::create_dir_all(path)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e,
                        "stale event temp file not removed");
                }
                continue;
            }
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|stem| stem.parse::<u64>().ok())
            else {
                continue;
            };
            let parsed = std::fs::read(entry.path()).and_then(|bytes| {
                serde_json::from_slice::<StoredEvent>(&bytes).map_err(std::io::Error::other)
            });
            match parsed {
                Ok(event) => found.push((seq, event)),
                Err(e) => {
                    tracing::error!(file = %entry.path().display(), error = %e,
                        "unreadable webhook event set aside");
                    let mut bad = entry.path().into_os_string();
                    bad.push(BAD_SUFFIX);
                    let _ = std::fs::rename(entry.path(), bad);
                }
            }
        }
        found.sort_by_key(|(seq, _)| *seq);
        Ok((
            Self {
                path: path.to_owned(),
            },
            found,
        ))
    }

    fn file(&self, seq: u64) -> PathBuf {
        self.path.join(format!("{seq:020}{SUFFIX}"))
    }

    /// Writes event `seq` whole and durably (temp file, fsync, rename, folder fsync).
    pub fn write(&self, seq: u64, event: &StoredEvent) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.path)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.file(seq)).map_err(|e| e.error)?;
        std::fs::File::open(&self.path)?.sync_all()
    }

    /// Reads event `seq` back.
    pub async fn read(&self, seq: u64) -> std::io::Result<StoredEvent> {
        let bytes = tokio::fs::read(self.file(seq)).await?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    /// Removes event `seq` (delivered or given up); one already gone is not an error.
    pub fn remove(&self, seq: u64) -> std::io::Result<()> {
        match std::fs::remove_file(self.file(seq)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> StoredEvent {
        StoredEvent {
            id: id.into(),
            order_key: Some("r1".into()),
            created_ms: 1,
            body: r#"{"type":"x"}"#.into(),
        }
    }

    #[tokio::test]
    async fn events_survive_a_reopen_in_order_and_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, found) = OutboxDir::open(dir.path()).unwrap();
        assert!(found.is_empty());
        outbox.write(10, &event("b")).unwrap();
        outbox.write(9, &event("a")).unwrap();
        outbox.write(11, &event("c")).unwrap();
        outbox.remove(11).unwrap();
        outbox.remove(11).unwrap();
        assert_eq!(outbox.read(9).await.unwrap(), event("a"));
        std::fs::write(dir.path().join(".event123"), b"half").unwrap();
        std::fs::write(dir.path().join("00000000000000000012.json"), b"{trunc").unwrap();
        let (_, found) = OutboxDir::open(dir.path()).unwrap();
        let ids: Vec<(u64, String)> = found.into_iter().map(|(s, e)| (s, e.id)).collect();
        assert_eq!(ids, vec![(9, "a".into()), (10, "b".into())]);
        assert!(!dir.path().join(".event123").exists());
        assert!(dir.path().join("00000000000000000012.json.bad").exists());
    }
}
