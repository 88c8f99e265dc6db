//! The cluster-wide answers of the recordings API (SPEC §9): placement of a new recording,
//! and every recording reachable from every node (the owner answers, through a proxied call,
//! or the index's last document when the owner is gone). Used only with `--redis` and only for
//! calls that are not already a node-local internal call ([`LOCAL_HEADER`]).

use super::error::ApiError;
use super::App;
use crate::cluster::{Cluster, ClusterError, LOCAL_HEADER};
use crate::record::manifest::RecordingDoc;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;

/// The cluster to answer for, when the call is a client's (not a node-local internal one).
pub fn scope(app: &App, headers: &HeaderMap) -> Option<Arc<Cluster>> {
    let cluster = app.cluster.as_ref()?;
    (!headers.contains_key(LOCAL_HEADER)).then(|| Arc::clone(cluster))
}

/// Headers passed through a proxied call, both ways.
const PASSED: [header::HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::ETAG,
    header::LAST_MODIFIED,
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_RANGE,
];

/// Sends a node-local call to `url` + `path` and passes its answer back (status, the headers
/// of [`PASSED`], the body streamed).
pub async fn proxy(
    cluster: &Cluster,
    node: &str,
    url: &str,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Option<serde_json::Value>,
) -> Result<Response, ClusterError> {
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|e| ClusterError::Node(node.into(), e.to_string()))?;
    let mut request = cluster.request(method, url, path);
    for name in PASSED.iter().skip(6) {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            request = request.header(name.as_str(), value);
        }
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| ClusterError::Node(node.into(), e.to_string()))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    for name in PASSED.iter().take(6) {
        if let Some(value) = answer
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
        {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .map_err(|e| ClusterError::Node(node.into(), e.to_string()))
}

/// `POST /api/recordings` in a cluster: on the live node with the most spare capacity, the
/// nodes with the room's WHIP sessions first (this one: at once; another: forwarded to its
/// advertised URL). A node that cannot be reached is skipped for the next best.
pub async fn create(
    app: &Arc<App>,
    cluster: &Cluster,
    body: serde_json::Value,
    start_here: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    if cluster.is_draining() {
        return Err(ClusterError::Draining.into());
    }
    let room = body["room"].as_str().unwrap_or_default();
    let order = cluster.placement_for(room).await?;
    let _ = app;
    for node in &order {
        if node.id == cluster.node_id() {
            return start_here.await;
        }
        match proxy(
            cluster,
            &node.id,
            &node.url,
            Method::POST,
            "/api/recordings",
            &HeaderMap::new(),
            Some(body.clone()),
        )
        .await
        {
            Ok(response) => return Ok(response),
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "placement: node unreachable; next")
            }
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too-many-recordings",
        "no node of the cluster can take a recording now",
    ))
}

/// The recordings of every node: each owner's live list, and the index's last document for
/// those whose owner is gone; newest first.
pub async fn list(app: &App, cluster: &Cluster) -> Result<Vec<RecordingDoc>, ApiError> {
    let ids = cluster.recording_ids().await?;
    let entries = cluster.lookup_many(&ids).await?;
    let mut live: HashMap<String, (String, RecordingDoc)> = HashMap::new();
    for recording in app.services.store.list() {
        let doc = recording.doc();
        live.insert(doc.id.clone(), (cluster.node_id().to_owned(), doc));
    }
    let others = cluster.others().await?;
    let answers = futures::future::join_all(others.iter().map(|node| async move {
        let answer = cluster
            .request(reqwest::Method::GET, &node.url, "/api/recordings")
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()?;
        let docs: Vec<RecordingDoc> = serde_json::from_value(answer["recordings"].clone()).ok()?;
        Some((node.id.clone(), docs))
    }))
    .await;
    let mut remote: HashMap<String, HashMap<String, RecordingDoc>> = HashMap::new();
    for (node, docs) in answers.into_iter().flatten() {
        remote.insert(node, docs.into_iter().map(|d| (d.id.clone(), d)).collect());
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (id, entry) in entries {
        let doc = if entry.node == cluster.node_id() {
            live.get(&id).map(|(_, d)| d.clone())
        } else {
            remote.get(&entry.node).and_then(|m| m.get(&id).cloned())
        };
        if let Some(doc) = doc.or(entry.doc) {
            seen.insert(id);
            out.push(doc);
        }
    }
    // Recordings of this node that the index does not know (made before it joined).
    let mut extra: Vec<RecordingDoc> = live
        .into_values()
        .map(|(_, d)| d)
        .filter(|d| !seen.contains(&d.id))
        .collect();
    extra.sort_by(|a, b| b.id.cmp(&a.id));
    out.extend(extra);
    Ok(out)
}

/// Where a call about recording `id` goes: `None` to answer here (this node owns it, or the
/// index does not know it), or the owner's id and URL (`None` when the owner is gone) with
/// the index's last document.
pub async fn owner(
    cluster: &Cluster,
    id: &str,
) -> Result<Option<(String, Option<String>, Option<RecordingDoc>)>, ApiError> {
    let Some(entry) = cluster.lookup(id).await? else {
        return Ok(None);
    };
    if entry.node == cluster.node_id() {
        return Ok(None);
    }
    let url = cluster.node_url(&entry.node).await?;
    Ok(Some((entry.node, url, entry.doc)))
}

/// The index's last document of a recording whose owner is gone, or `503`.
pub fn last_known(node: &str, doc: Option<RecordingDoc>) -> Result<Response, ApiError> {
    match doc {
        Some(doc) => Ok(axum::Json(doc).into_response()),
        None => Err(ClusterError::Node(node.into(), "no heartbeat".into()).into()),
    }
}

/// The JSON answers of every other live node to a node-local `GET path` (nodes that do not
/// answer are left out).
pub async fn gather(cluster: &Cluster, path: &str) -> Result<Vec<serde_json::Value>, ApiError> {
    let others = cluster.others().await?;
    let answers = futures::future::join_all(others.iter().map(|node| async move {
        cluster
            .request(reqwest::Method::GET, &node.url, path)
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    }))
    .await;
    Ok(answers.into_iter().flatten().collect())
}

/// The first answer other than `404` of the other live nodes to a node-local call (for what
/// the cluster does not index, like bots), or `None` when none has it.
pub async fn first_found(
    cluster: &Cluster,
    method: Method,
    path: &str,
) -> Result<Option<Response>, ApiError> {
    for node in cluster.others().await? {
        let answer = proxy(
            cluster,
            &node.id,
            &node.url,
            method.clone(),
            path,
            &HeaderMap::new(),
            None,
        )
        .await;
        if let Ok(response) = answer {
            if response.status() != StatusCode::NOT_FOUND {
                return Ok(Some(response));
            }
        }
    }
    Ok(None)
}
