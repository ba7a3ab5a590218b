//! The web client: static files embedded in the binary at build time (no Node step to run
//! chatlog), served at `/`: the page, its entry script `/app.js` (a module) and the modules it
//! imports under `/js/` (one Ingress rule routes that prefix, infra/k8s/chatlog.yaml).

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// (path, content type, body) of every embedded file.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/app.js"),
    ),
    (
        "/js/protocol.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/protocol.js"),
    ),
    (
        "/js/fold.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/fold.js"),
    ),
    (
        "/js/state.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/state.js"),
    ),
    (
        "/js/http.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/http.js"),
    ),
    (
        "/js/render.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/render.js"),
    ),
    (
        "/js/connection.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/connection.js"),
    ),
    (
        "/js/rooms.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/rooms.js"),
    ),
    (
        "/js/messages.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/messages.js"),
    ),
    (
        "/js/notifications.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/notifications.js"),
    ),
    (
        "/js/session.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/session.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
];

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Routes for the embedded files.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for &(path, content_type, body) in FILES {
        router = router.route(path, get(move || async move { file(content_type, body) }));
    }
    router
}
