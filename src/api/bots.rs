//! `/api/bots`: answering bots (SPEC §6).
//!
//! `POST /api/bots {room, mode, media?, loop?, silence_s?, max_duration_s?}` → `201` Bot;
//! `GET /api/bots` → `{bots: [Bot]}` (newest first); `GET /api/bots/{id}` → Bot;
//! `DELETE /api/bots/{id}` → `204` once its messages are final and it left the room.
//! In a cluster a client's `POST` goes to the node with the most spare capacity, and
//! `GET`/`DELETE` to the node the bot index names (its last document when that node is gone).
//!
//! Errors (`{"error": {code, message}}`): `400 bad-request` for a bad body (unknown fields, an
//! unknown mode, a field the mode does not take, `media` that is not a plain file name in
//! `--media-dir`), `400 media-not-found` for a file that does not exist there (the request
//! names it in its body, so the fault is the body's, as for any other bad field),
//! `400 bad-media` for a file that is not Ogg Opus / WebM with VP8 or Opus, `400 bad-room` for a
//! bad room name, `404` for an unknown bot, `503 too-many-bots` / `room-full` / `too-many-rooms`. Nothing is started when a request fails.

use super::error::{join_code, ApiError};
use super::ApiJson;
use super::App;
use crate::bot::registry::{
    Bot, BotDoc, BotError, BotSpec, Mode, DEFAULT_MAX_DURATION, DEFAULT_SILENCE,
};
use crate::record::manifest::StopReason;
use crate::record::store::valid_id;
use crate::signal::protocol::valid_room_name;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Routes under `/api/bots` (behind the API token check).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/bots", post(create_bot).get(list_bots))
        .route("/api/bots/{id}", get(get_bot).delete(delete_bot))
        .route("/api/cluster/bot-handover/{id}", post(accept_bot_handover))
}

impl From<BotError> for ApiError {
    fn from(e: BotError) -> Self {
        let (status, code) = match &e {
            BotError::Join(join) => (StatusCode::SERVICE_UNAVAILABLE, join_code(join)),
            BotError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            BotError::MediaNotFound(_) => (StatusCode::BAD_REQUEST, "media-not-found"),
            BotError::BadMedia(..) => (StatusCode::BAD_REQUEST, "bad-media"),
            BotError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            BotError::TooMany(_) => (StatusCode::SERVICE_UNAVAILABLE, "too-many-bots"),
            BotError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "bot request failed");
        }
        Self::new(status, code, e.to_string())
    }
}

/// Body of `POST /api/bots` (serialized again when a cluster forwards it).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CreateBot {
    room: String,
    mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media: Option<String>,
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    looping: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    silence_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_duration_s: Option<f64>,
}

/// Checks a request and turns it into a [`BotSpec`].
fn spec(body: CreateBot) -> Result<BotSpec, ApiError> {
    if !valid_room_name(&body.room) {
        return Err(ApiError::bad_room());
    }
    let Some(mode) = Mode::parse(&body.mode) else {
        return Err(ApiError::bad_request(format!(
            "`mode` must be \"echo\", \"play\" or \"voicemail\", got {:?}",
            body.mode
        )));
    };
    let only = |field: &str, modes: &str| {
        ApiError::bad_request(format!(
            "`{field}` applies to {modes} only, not to `{}`",
            mode.name()
        ))
    };
    match mode {
        Mode::Echo if body.media.is_some() => return Err(only("media", "play and voicemail")),
        Mode::Play if body.media.is_none() => {
            return Err(ApiError::bad_request(
                "`media` (a file name in the media directory) is required for `play`",
            ))
        }
        _ => {}
    }
    if body.looping.is_some() && mode != Mode::Play {
        return Err(only("loop", "play"));
    }
    if mode != Mode::Voicemail {
        if body.silence_s.is_some() {
            return Err(only("silence_s", "voicemail"));
        }
        if body.max_duration_s.is_some() {
            return Err(only("max_duration_s", "voicemail"));
        }
    }
    let seconds =
        |value: Option<f64>, field: &str, min: f64, max: f64, default: Duration| match value {
            None => Ok(default),
            Some(s) if s.is_finite() && (min..=max).contains(&s) => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(ApiError::bad_request(format!(
                "`{field}` must be a number of seconds from {min} to {max}, got {s}"
            ))),
        };
    let silence = seconds(body.silence_s, "silence_s", 0.5, 600.0, DEFAULT_SILENCE)?;
    let max_duration = seconds(
        body.max_duration_s,
        "max_duration_s",
        1.0,
        86_400.0,
        DEFAULT_MAX_DURATION,
    )?;
    Ok(BotSpec {
        room: body.room,
        mode,
        media: body.media,
        looping: body.looping.unwrap_or(false),
        silence,
        max_duration,
    })
}

async fn create_bot(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<CreateBot>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let forwarded = body.clone();
    let spec = spec(body)?;
    let Some(cluster) = &app.cluster else {
        let bot = crate::bot::launch::start(&app.services, &app.bots, spec).await?;
        return Ok((StatusCode::CREATED, Json(bot.doc(&app.services.store))).into_response());
    };
    if cluster.is_draining() {
        return Err(crate::cluster::ClusterError::Draining.into());
    }
    // A client's call: on the node with the most spare capacity (SPEC §9).
    if let Some(scope) = super::cluster::scope(&app, &headers) {
        let json = serde_json::to_value(&forwarded).unwrap_or_default();
        if let Some(answer) = place(&scope, json).await? {
            return Ok(answer);
        }
    }
    let bot = Bot::new(spec, &app.services);
    bot.set_node(cluster.node_id(), 0);
    let bot = crate::bot::launch::start_bot(&app.services, &app.bots, bot).await?;
    if let Err(e) = cluster.register_bot(&bot).await {
        // Unindexed, no other node could find or restart it: do not run it half-known.
        let _ = app.bots.remove(bot.id(), StopReason::Error).await;
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(bot.doc(&app.services.store))).into_response())
}

/// Where a client's new bot goes in a cluster: `None` to start it here (this node is the
/// best), or the answer of the best other node (forwarded as a node-local call; a node that
/// cannot be reached is skipped for the next). `503` when no node takes bots.
async fn place(
    cluster: &crate::cluster::Cluster,
    body: serde_json::Value,
) -> Result<Option<axum::response::Response>, ApiError> {
    let order = cluster.bot_placement().await?;
    for node in &order {
        if node.id == cluster.node_id() {
            return Ok(None);
        }
        let answer = super::cluster::proxy(
            cluster,
            &node.id,
            &node.url,
            axum::http::Method::POST,
            "/api/bots",
            &axum::http::HeaderMap::new(),
            Some(body.clone()),
        )
        .await;
        match answer {
            Ok(response) => return Ok(Some(response)),
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "bot placement: node unreachable; next")
            }
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too-many-bots",
        "no node of the cluster can take a bot now",
    ))
}

#[derive(Debug, Deserialize)]
struct HandoverQuery {
    from: String,
}

/// `POST /api/cluster/bot-handover/{id}?from=NODE` (internal, between the nodes of a
/// cluster): draining node `from` hands bot `id` to this node, which starts it (same id and
/// spec) and answers its Bot. `404` without a cluster.
async fn accept_bot_handover(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<HandoverQuery>,
) -> Result<Json<BotDoc>, ApiError> {
    let Some(cluster) = &app.cluster else {
        return Err(ApiError::not_found("no such route"));
    };
    let id = checked_id(&id)?;
    Ok(Json(cluster.accept_bot_handover(id, &query.from).await?))
}

async fn list_bots(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list: Vec<BotDoc> = app
        .bots
        .list()
        .iter()
        .map(|b| b.doc(&app.services.store))
        .collect();
    let mut list: Vec<serde_json::Value> = list
        .into_iter()
        .filter_map(|b| serde_json::to_value(b).ok())
        .collect();
    // In a cluster: every node's bots.
    if let Some(scope) = super::cluster::scope(&app, &headers) {
        for answer in super::cluster::gather(&scope, "/api/bots").await? {
            if let Some(bots) = answer["bots"].as_array() {
                list.extend(bots.iter().cloned());
            }
        }
    }
    Ok(Json(serde_json::json!({ "bots": list })))
}

fn checked_id(id: &str) -> Result<&str, ApiError> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("no bot `{id}`")))
    }
}

async fn get_bot(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let id = checked_id(&id)?;
    match app.bots.get(id) {
        Ok(bot) => Ok(Json(bot.doc(&app.services.store)).into_response()),
        Err(e) => match elsewhere(&app, &headers, axum::http::Method::GET, id).await? {
            Some(answer) => Ok(answer),
            None => Err(e.into()),
        },
    }
}

/// In a cluster, for a client's call about a bot this node does not have: the answer of the
/// node that has it.
async fn elsewhere(
    app: &App,
    headers: &axum::http::HeaderMap,
    method: axum::http::Method,
    id: &str,
) -> Result<Option<axum::response::Response>, ApiError> {
    use axum::response::IntoResponse;
    let Some(scope) = super::cluster::scope(app, headers) else {
        return Ok(None);
    };
    let path = format!("/api/bots/{id}");
    // The index says which node runs it; its last document when that node is gone.
    if let Some(entry) = scope.lookup_bot(id).await? {
        if entry.node != scope.node_id() {
            if let Some(url) = scope.node_url(&entry.node).await? {
                let answer = super::cluster::proxy(
                    &scope,
                    &entry.node,
                    &url,
                    method.clone(),
                    &path,
                    &axum::http::HeaderMap::new(),
                    None,
                )
                .await;
                match answer {
                    Ok(answer) => return Ok(Some(answer)),
                    Err(e) => {
                        tracing::warn!(bot = %id, node = %entry.node, error = %e, "the bot's node does not answer")
                    }
                }
            }
            // Its node is gone or does not answer (and the bot was not restarted yet): a
            // delete ends it in the index (the fence moves on: a node that was only cut off
            // stops its copy at its next write); a read gets the last document.
            if method == axum::http::Method::DELETE {
                scope.forget_bot(id, &entry.node).await?;
                return Ok(Some(StatusCode::NO_CONTENT.into_response()));
            }
            if let Some(doc) = entry.doc {
                return Ok(Some(Json(doc).into_response()));
            }
        }
    }
    // Bots the index does not know (started before the node joined): ask every node.
    super::cluster::first_found(&scope, method, &path).await
}

async fn delete_bot(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let id = checked_id(&id)?;
    if app.bots.get(id).is_err() {
        if let Some(answer) = elsewhere(&app, &headers, axum::http::Method::DELETE, id).await? {
            return Ok(answer);
        }
    }
    app.bots.remove(id, StopReason::Requested).await?;
    if let Some(cluster) = &app.cluster {
        cluster.forget_bot(id, cluster.node_id()).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
