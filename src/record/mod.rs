//! Recording: pure writers (WebM, Ogg Opus) and readers, the manifest, the recording session
//! with its per-track tasks, and the store of all recordings.

pub mod chat;
pub mod clip;
pub mod disk;
pub mod ebml;
pub mod inspect;
pub mod manifest;
pub mod mux;
pub mod ogg;
pub mod repair;
pub mod session;
pub mod sink;
pub mod stats;
pub mod store;
pub mod track;
pub mod webm;
pub mod webm_reader;

/// Helpers shared by the tests of the writers, readers and repair.
#[cfg(test)]
pub(crate) mod test_tools {
    /// Compares `bytes` with the stored file `tests/data/golden/<name>` (written instead when
    /// RECBOT_BLESS=1), reporting the first differing offset.
    pub(crate) fn same_as_golden(name: &str, bytes: &[u8]) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/golden")
            .join(name);
        if std::env::var("RECBOT_BLESS").as_deref() == Ok("1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let first_diff = golden.iter().zip(bytes).position(|(a, b)| a != b);
        assert!(
            first_diff.is_none() && golden.len() == bytes.len(),
            "{name}: {} bytes, golden {}; first difference at {first_diff:?}",
            bytes.len(),
            golden.len()
        );
    }

    /// Whether `tool` runs (`version_arg` is its harmless "print the version" flag). A missing
    /// tool fails the test when CI=true, and skips the check otherwise.
    pub(crate) fn tool_ok(tool: &str, version_arg: &str) -> bool {
        let found = std::process::Command::new(tool)
            .arg(version_arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{tool} is required when CI=true"
            );
            eprintln!("skipping {tool} checks: {tool} not found");
        }
        found
    }

    /// [`tool_ok`] with the version flag the checked tools take.
    pub(crate) fn tool(name: &str) -> bool {
        let flag = match name {
            "mkvinfo" => "--version",
            "opusinfo" => "-V",
            _ => "-version",
        };
        tool_ok(name, flag)
    }
}
