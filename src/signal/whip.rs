//! WHIP ingest (RFC 9725, SPEC §3): `POST /rooms/{room}/whip`.

use crate::app::App;
use axum::Router;
use std::sync::Arc;

/// The WHIP sessions of the service.
#[derive(Default)]
pub struct WhipSessions {}

/// Routes of WHIP ingest.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
}
