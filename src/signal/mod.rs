//! Signaling: the wire protocol, the rooms hub, and the WebSocket and WHIP sessions (their
//! HTTP routes are in `api`).

pub mod hub;
pub mod protocol;
pub mod whip;
pub mod ws;
