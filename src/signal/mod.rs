//! Signaling: the wire protocol, the rooms hub, and the WebSocket route.

pub mod hub;
pub mod protocol;
pub mod whip;
pub mod ws;
