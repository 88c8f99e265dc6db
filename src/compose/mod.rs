//! The meeting, whole (SPEC §11): the live mixed audio of a recording (`room-mix.ogg`) and,
//! after the stop, its composite video (`room.webm`).
//!
//! Above `record` (it implements the recording's [`AudioTap`](crate::record::session::AudioTap)
//! hook and reads its finished files), below `bot` (the recorder starts a mix and queues a
//! composite). [`mix`] is the pure mixer, [`live`] runs it on a recording; [`render`] draws
//! and encodes the composite, [`worker`] runs renders in the background; [`vpx`] is the
//! only unsafe code of the crate (libvpx).

pub mod live;
pub mod mix;
pub mod render;
pub mod vpx;
pub mod worker;

pub use live::{LiveMix, MIX_FILE};
pub use worker::{Composited, COMPOSITE_FILE};
