//! `/api/bots`: answering bots (SPEC §6).

use crate::app::App;
use axum::Router;
use std::sync::Arc;

/// Routes under `/api/bots` (behind the API token check).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
}
