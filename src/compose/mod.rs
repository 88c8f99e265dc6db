//! The meeting, whole (SPEC §11): the live mixed audio of a recording (`room-mix.ogg`) and,
//! after the stop, its composite video (`room.webm`).
//!
//! Above `record` (it implements the recording's [`AudioTap`](crate::record::session::AudioTap)
//! hook and reads its finished files), below `bot` (the recorder starts a mix and queues a
//! composite). [`mix`] is the pure mixer, [`live`] runs it on a recording.

pub mod live;
pub mod mix;

pub use live::{LiveMix, MIX_FILE};
