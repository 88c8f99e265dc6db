//! The command line: `recbot [serve] | publish | repair | inspect | man` (SPEC §1). The
//! service's options are [`ServeArgs`] (in [`crate::config`]), the publisher's
//! [`PublishArgs`] (in [`crate::client`]); this module only puts them together, so that
//! `config` does not depend on the client.

use crate::client::PublishArgs;
use crate::config::ServeArgs;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// recbot: a WebRTC peer that records rooms and answers calls.
#[derive(Debug, Parser)]
#[command(
    name = "recbot",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the word `serve` too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
// Parsed once at start: the size of the `serve` options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve(ServeArgs),
    /// Join a room as ordinary peer(s) and send pre-encoded VP8 and Opus at real-time pace.
    Publish(PublishArgs),
    /// Repair recordings left unfinished by a crash: a recording folder, or a recordings
    /// directory (every unfinished recording in it). What `serve` does at start.
    Repair {
        /// A recording folder or the recordings directory.
        dir: PathBuf,
    },
    /// Print what a recording file holds: codec, duration, frames, keyframes, cues, gaps.
    Inspect {
        /// WebM or Ogg files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write the manual pages generated from these definitions: recbot(1) and one page per
    /// subcommand into DIR with --out (e.g. /usr/local/share/man/man1), else recbot(1) to
    /// standard output.
    Man {
        /// Folder for `recbot.1`, `recbot-serve.1`, ... (created if missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}
