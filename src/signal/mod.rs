//! Signaling: the wire protocol, the rooms hub, and the WebSocket session (its HTTP route is
//! in `api`).

pub mod hub;
pub mod protocol;
pub mod queue;
pub mod ws;
