//! The web page served at `/` (embedded in the binary; no build step).

use crate::app::App;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Routes of the page and its assets.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/", get(index))
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../web/index.html"))
}
