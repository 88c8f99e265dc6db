//! recbot: a server-side WebRTC peer that records rooms and answers calls.
//!
//! The modules form a stack, each using only those below it: [`media`] (reorder, VP8 assembly,
//! PLI, clocks) → [`record`] (WebM and Ogg writers, recordings) → [`signal`] (the wire
//! protocol, rooms, WebSocket sessions) → [`peer`] (webrtc-rs connections, negotiation, WHIP
//! sessions) → [`bot`] (the server-side peers: recorder, echo, play, voicemail) → [`cluster`] (many nodes on
//! Redis) → [`api`]
//! (HTTP, its state [`api::App`]) → [`server`] (startup, shutdown, the disk guard). [`client`]
//! is the test client (`recbot publish`), [`config`] the options, [`events`] the webhooks
//! (usable by any layer). [`store`] (object storage) sits between `record` and `bot`.
//! `ARCHITECTURE.md` has the map.

// No unsafe code, except the one call recorded in `limits::release_free_memory` (glibc's
// malloc_trim, which has no safe wrapper); `deny` rather than `forbid` so that it alone can
// be allowed, visibly.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod bot;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod compose;
pub mod config;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod logging;
pub mod media;
pub mod peer;
pub mod record;
pub mod server;
pub mod signal;
pub mod store;
pub mod telemetry;
pub mod util;
