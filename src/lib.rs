//! recbot: a server-side WebRTC peer that records rooms and answers calls.
//!
//! The modules follow the flow of media: [`signal`] (rooms, WebSocket signaling) →
//! [`peer`] (webrtc-rs connections, negotiation) → [`media`] (reorder, VP8 assembly, PLI,
//! clocks) → [`record`] (WebM and Ogg writers, recordings) → [`api`] (HTTP). [`bot`] holds the
//! server-side peers (the recorder), [`client`] the test client (`recbot publish`), [`app`] the
//! service's lifecycle and [`config`] its options. `ARCHITECTURE.md` has the map.

// No unsafe code, except the one call recorded in `limits::release_free_memory` (glibc's
// malloc_trim, which has no safe wrapper); `deny` rather than `forbid` so that it alone can
// be allowed, visibly.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod bot;
pub mod cli;
pub mod client;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod logging;
pub mod media;
pub mod peer;
pub mod record;
pub mod signal;
pub mod telemetry;
pub mod util;
