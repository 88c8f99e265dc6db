//! The web page served at `/` and its assets under `/assets/` (embedded in the binary; plain
//! ES modules, no build step, nothing loaded from elsewhere).

use super::App;
use crate::api::error::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The page's content security policy: everything from this origin only, media also from
/// blobs (playback with an API token goes through a blob). `connect-src` names the WebSocket
/// origin too, for browsers whose `'self'` does not cover `ws:`.
fn csp(host: Option<&str>) -> String {
    let sockets = host
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; connect-src 'self'{sockets}; media-src 'self' blob:; \
         img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
         form-action 'self'"
    )
}

/// One embedded file: its name under `/assets/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every asset of the page.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_str!("../web/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_str!("../web/api.js"),
    },
    Asset {
        name: "bots.js",
        content_type: JS,
        body: include_str!("../web/bots.js"),
    },
    Asset {
        name: "call.js",
        content_type: JS,
        body: include_str!("../web/call.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_str!("../web/dom.js"),
    },
    Asset {
        name: "ice.js",
        content_type: JS,
        body: include_str!("../web/ice.js"),
    },
    Asset {
        name: "player.js",
        content_type: JS,
        body: include_str!("../web/player.js"),
    },
    Asset {
        name: "recordings.js",
        content_type: JS,
        body: include_str!("../web/recordings.js"),
    },
    Asset {
        name: "room.js",
        content_type: JS,
        body: include_str!("../web/room.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../web/icon.svg"),
    },
];

/// Routes of the page and its assets.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(index))
        .route("/favicon.ico", get(|| asset(Path("icon.svg".to_owned()))))
        .route("/assets/{name}", get(asset))
}

fn respond(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn index(headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let mut response = respond(
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&csp(host)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => respond(a.content_type, a.body),
        None => ApiError::not_found(format!("no asset `{name}`")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for line in asset.body.lines() {
                if let Some(rest) = line.split(" from './").nth(1) {
                    let module = rest.split('\'').next().unwrap_or_default();
                    assert!(
                        served.contains(&module),
                        "{} imports {module}, which is not served",
                        asset.name
                    );
                }
            }
        }
        let page = include_str!("../web/index.html");
        for needed in ["/assets/app.js", "/assets/style.css", "/assets/icon.svg"] {
            assert!(page.contains(needed), "index.html lacks {needed}");
        }
    }

    #[tokio::test]
    async fn assets_have_their_content_type_and_no_cache() {
        let r = asset(Path("style.css".to_owned())).await;
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/css; charset=utf-8");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        let r = asset(Path("app.js".to_owned())).await;
        assert_eq!(r.headers()[header::CONTENT_TYPE], JS);
        let r = asset(Path("../Cargo.toml".to_owned())).await;
        assert_eq!(r.status(), axum::http::StatusCode::NOT_FOUND);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        let r = index(headers).await;
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.starts_with(
                "default-src 'self'; connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"
            ),
            "{csp}"
        );
        // A strange Host adds nothing to the policy.
        assert_eq!(super::csp(Some("a b; script-src *")), super::csp(None));
    }
}
