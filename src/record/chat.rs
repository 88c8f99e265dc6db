//! A recording's chat log, `chat.jsonl` (SPEC §11): one JSON line per chat message,
//! `{"t_ms", "from", "name", "text"}`, in the order written, `t_ms` never decreasing.
//!
//! Pure of the network: [`parse_message`] checks what a DataChannel delivered, and
//! [`ChatWriter`] appends lines. Each line goes to the OS in one `write` as soon as it is
//! written (no user-space buffer), so a crash loses at most a line being written; [`repair`]
//! cuts such a torn last line (a line is complete or absent). The file is created with its first
//! line. Content type: `application/x-ndjson` ([`CONTENT_TYPE`]), the name most tools know.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the chat log in a recording's folder.
pub const CHAT_FILE: &str = "chat.jsonl";
/// Content type the chat log is served with.
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// Largest chat message accepted, in bytes of the DataChannel message (SPEC §11: 4 KiB).
pub const MAX_MESSAGE: usize = 4096;
/// Label of the chat DataChannel on every PeerConnection.
pub const CHANNEL_LABEL: &str = "chat";

/// Why a chat message is not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Over [`MAX_MESSAGE`] bytes.
    #[error("over {MAX_MESSAGE} bytes")]
    TooLarge,
    /// Not a JSON object with a string `text`.
    #[error("not a JSON {{\"text\": string}}")]
    NotChat,
}

/// The text of a chat message as the DataChannel delivered it: a JSON object with a string
/// `text` (other fields are ignored), at most [`MAX_MESSAGE`] bytes. Never panics.
pub fn parse_message(data: &[u8]) -> Result<String, Refusal> {
    if data.len() > MAX_MESSAGE {
        return Err(Refusal::TooLarge);
    }
    // A map, not a struct: serde would take a struct from a JSON array too (`["hi"]`).
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(data).map_err(|_| Refusal::NotChat)?;
    match object.remove("text") {
        Some(serde_json::Value::String(text)) => Ok(text),
        _ => Err(Refusal::NotChat),
    }
}

/// One line of `chat.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    /// Time on the recording's clock (recorded time: pauses cut out), ms.
    pub t_ms: i64,
    /// Peer id of the sender.
    pub from: String,
    /// Display name of the sender.
    pub name: String,
    /// The message's text, exactly as sent.
    pub text: String,
}

/// Appends lines to a chat log. The file is created by the first line.
///
/// Invariant: `t_ms` of the lines written never decreases (an earlier time is raised to the
/// last one written).
#[derive(Debug)]
pub struct ChatWriter {
    path: PathBuf,
    file: Option<std::fs::File>,
    last_t_ms: i64,
    lines: u64,
    bytes: u64,
}

impl ChatWriter {
    /// A writer of `path` (not created yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            last_t_ms: i64::MIN,
            lines: 0,
            bytes: 0,
        }
    }

    /// Whether the file exists (a line was written).
    pub fn created(&self) -> bool {
        self.file.is_some()
    }

    /// Lines written.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes one line (in one `write` to the OS). Returns the line as written (its `t_ms`
    /// raised to keep the log monotonic) and whether this line created the file.
    pub fn write(
        &mut self,
        t_ms: i64,
        from: &str,
        name: &str,
        text: &str,
    ) -> std::io::Result<(ChatLine, bool)> {
        let line = ChatLine {
            t_ms: t_ms.max(self.last_t_ms),
            from: from.to_owned(),
            name: name.to_owned(),
            text: text.to_owned(),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let created = self.file.is_none();
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            ),
        };
        file.write_all(&bytes)?;
        self.last_t_ms = line.t_ms;
        self.lines += 1;
        self.bytes += bytes.len() as u64;
        Ok((line, created))
    }

    /// Makes the log durable (fsync), if it exists.
    pub fn finish(&mut self) -> std::io::Result<()> {
        match &self.file {
            Some(file) => file.sync_all(),
            None => Ok(()),
        }
    }
}

/// Cuts a torn last line (bytes after the last newline) of the chat log at `path`. Returns the
/// bytes cut (0 for an intact log); a missing log is not an error.
pub fn repair(path: &Path) -> std::io::Result<u64> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let cut = (bytes.len() - keep) as u64;
    if cut > 0 {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(keep as u64)?;
        file.sync_all()?;
    }
    Ok(cut)
}

/// Reads a chat log's lines (tests and tools); a line that does not parse is an error.
pub fn read_chat(path: &Path) -> std::io::Result<Vec<ChatLine>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_objects_within_the_limit_are_chat() {
        assert_eq!(parse_message(br#"{"text":"hi"}"#), Ok("hi".into()));
        assert_eq!(
            parse_message(r#"{"text":"h\u00e9 ✓ 🎉","x":1}"#.as_bytes()),
            Ok("hé ✓ 🎉".into())
        );
        for bad in [
            &b"hello"[..],
            b"{\"text\":5}",
            b"[\"text\"]",
            b"{}",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(parse_message(bad), Err(Refusal::NotChat), "{bad:?}");
        }
        let edge = format!(r#"{{"text":"{}"}}"#, "a".repeat(MAX_MESSAGE - 11));
        assert_eq!(edge.len(), MAX_MESSAGE);
        assert!(parse_message(edge.as_bytes()).is_ok());
        let over = format!(r#"{{"text":"{}"}}"#, "a".repeat(MAX_MESSAGE - 10));
        assert_eq!(parse_message(over.as_bytes()), Err(Refusal::TooLarge));
    }

    #[test]
    fn lines_are_exact_monotonic_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHAT_FILE);
        let mut w = ChatWriter::new(path.clone());
        assert!(!w.created());
        w.finish().unwrap();
        assert!(!path.exists());
        let (_, created) = w
            .write(1500, "p1", "alice", "a \"quote\"\nnewline")
            .unwrap();
        assert!(created);
        let (line, created) = w.write(1400, "p2", "bøb", "später 日本").unwrap();
        assert!(!created);
        assert_eq!(line.t_ms, 1500);
        w.write(2000, "p1", "alice", "").unwrap();
        w.finish().unwrap();
        assert_eq!(w.lines(), 3);
        assert_eq!(w.bytes(), std::fs::metadata(&path).unwrap().len());
        let lines = read_chat(&path).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].text, "a \"quote\"\nnewline");
        assert_eq!(lines[1].text, "später 日本");
        assert_eq!(lines[1].name, "bøb");
        assert_eq!(
            lines.iter().map(|l| l.t_ms).collect::<Vec<_>>(),
            [1500, 1500, 2000]
        );
        // A crash mid-line: repair cuts the torn line, the others stay.
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"t_ms":2100,"from":"p1","na"#);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(repair(&path).unwrap(), (torn.len() - whole.len()) as u64);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert_eq!(repair(&path).unwrap(), 0);
        assert_eq!(repair(&dir.path().join("none.jsonl")).unwrap(), 0);
    }
}
