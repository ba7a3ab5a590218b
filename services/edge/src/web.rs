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
        "/js/files.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js/files.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
];

/// The page runs only its own scripts and styles: no inline script, no plugin, not framed. Images
/// may be `blob:` URLs (attachments are fetched with the token, then shown).
const PAGE_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_of_the_web_client_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/js");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("/js/{name}");
            assert!(
                FILES.iter().any(|(p, _, _)| *p == path),
                "{path} is not served: add it to FILES"
            );
        }
    }

    #[test]
    fn the_page_runs_only_its_own_scripts() {
        let response = file("text/html; charset=utf-8", "<p>");
        let policy = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(policy.starts_with("default-src 'self';"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(
            response.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
    }
}
