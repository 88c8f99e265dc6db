//! Recording: pure writers (WebM, Ogg Opus) and readers, the manifest, the recording session
//! with its per-track tasks, and the store of all recordings.

pub mod disk;
pub mod inspect;
pub mod manifest;
pub mod mux;
pub mod ogg;
pub mod repair;
pub mod session;
pub mod store;
pub mod track;
pub mod webm;
pub mod webm_reader;
