//! The OpenAPI document (`/api/openapi.json`, services/edge/src/openapi.rs) lists exactly the
//! router's routes, each with its JSON errors; the document and its page are served; bad input
//! anywhere is answered with the JSON error body (unknown routes, wrong methods, what axum's
//! extractors refuse). infra/api-check.sh runs schemathesis against the same document.

mod common;
mod raw;

use std::collections::{BTreeMap, BTreeSet};

use common::spawn_app;
use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(chatlog_edge::openapi::json()).expect("the document is JSON")
}

/// (method, path) of every operation of the document.
fn documented() -> BTreeSet<(String, String)> {
    let doc = document();
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            operations.insert((method.clone(), path.clone()));
        }
    }
    operations
}

/// (method, path) of every route of `app()`, read from its source (as
/// services/chatlog/tests/manifests.rs reads its paths): `.route("P", get(h).post(h))`. The web
/// client's files (`.merge(web::router())`) are not API.
fn routed() -> BTreeSet<(String, String)> {
    let lib = include_str!("../src/lib.rs");
    let app = &lib[lib.find("pub fn app(").expect("app()")..];
    let app = &app[..app.find("\n}\n").expect("the end of app()")];
    let mut routes = BTreeSet::new();
    for (at, _) in app.match_indices(".route(") {
        let rest = app[at + ".route(".len()..].trim_start();
        let (path, rest) = rest
            .strip_prefix('"')
            .and_then(|r| r.split_once('"'))
            .unwrap_or_else(|| panic!("a route path literal at {rest:.40}"));
        // The method router: up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("the end of .route(");
        let router = &rest[..end];
        let mut methods = 0;
        for method in ["get", "post", "put", "patch", "delete"] {
            for (at, _) in router.match_indices(&format!("{method}(")) {
                let before = router[..at].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    routes.insert((method.to_string(), path.to_string()));
                    methods += 1;
                }
            }
        }
        assert!(methods > 0, "no method for {path}: {router}");
    }
    assert!(routes.len() >= 20, "{routes:?}");
    routes
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_router() {
    let routed = routed();
    let documented = documented();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes without #[utoipa::path] in openapi::ApiDoc: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented operations no route serves: {unrouted:?}"
    );
}

#[test]
fn every_error_is_documented_as_the_json_error_body_with_retry_after_where_it_applies() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["token"]["in"], "query");
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let name = format!("{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses
                    .keys()
                    .any(|s| s.starts_with('1') || s.starts_with('2')),
                "{name}: no success"
            );
            let api = path.starts_with("/api/");
            let open = path.starts_with("/api/auth/")
                || path == "/api/openapi.json"
                || path == "/api/docs";
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            assert_eq!(secured, (api && !open) || path == "/ws", "{name}: security");
            if secured {
                assert!(responses.contains_key("401"), "{name}: 401");
            }
            for (status, response) in responses {
                if status.as_str() < "400" {
                    continue;
                }
                if path == "/readyz" {
                    continue; // a probe's answer, plain text
                }
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{name} {status}"
                );
                let retry_after = !response["headers"]["Retry-After"].is_null();
                assert_eq!(
                    retry_after,
                    status == "429" || status == "503",
                    "{name} {status}: Retry-After"
                );
            }
        }
    }
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["code", "message"]));
}

/// `path` with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{room}", "lobby").replace("{user}", "ada")
}

#[tokio::test]
async fn every_documented_operation_is_served_and_any_other_method_is_a_json_405() {
    let app = spawn_app().await;
    let mut by_path: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (method, path) in documented() {
        by_path.entry(path).or_default().insert(method);
    }
    for (path, methods) in &by_path {
        let target = concrete(path);
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let answer = raw::request(app.addr, method, &target, &[]).await;
            let name = format!("{method} {target}");
            if methods.contains(&method.to_ascii_lowercase()) {
                let fallback = answer.status == 404 && answer.body.contains("route not found");
                assert!(
                    answer.status != 405 && !fallback,
                    "{name}: not routed ({answer:?})"
                );
                assert!(answer.status < 500, "{name}: {answer:?}");
            } else {
                assert_eq!(answer.status, 405, "{name}: {answer:?}");
                assert_eq!(answer.json()["code"], "method_not_allowed", "{name}");
                let allow: BTreeSet<String> = answer
                    .header("allow")
                    .unwrap_or_default()
                    .split(',')
                    .map(|m| m.trim().to_ascii_lowercase())
                    .filter(|m| m != "head")
                    .collect();
                assert_eq!(&allow, methods, "{name}: Allow");
            }
        }
    }
    for target in [
        "/nowhere",
        "/api/nowhere",
        "/api/rooms/lobby/nowhere",
        "/api/rooms/",
    ] {
        let answer = raw::request(app.addr, "GET", target, &[]).await;
        assert_eq!(answer.status, 404, "{target}: {answer:?}");
        assert_eq!(answer.json()["code"], "not_found", "{target}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{target}"
        );
    }
}

#[tokio::test]
async fn the_document_and_its_page_are_served_with_nothing_from_elsewhere() {
    let app = spawn_app().await;
    let answer = raw::request(app.addr, "GET", "/api/openapi.json", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.json(), document());

    let page = raw::request(app.addr, "GET", "/api/docs", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("fetch('openapi.json')"), "{}", page.body);
    for elsewhere in [
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "href=\"//",
        "@import",
    ] {
        assert!(
            !page.body.contains(elsewhere),
            "the page loads {elsewhere}…"
        );
    }
}

/// Regressions of what axum's extractors answered in plain text, and of what schemathesis
/// (infra/api-check.sh) found.
#[tokio::test]
async fn what_the_extractors_refuse_is_answered_with_the_json_error_body() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    // A path segment that is not UTF-8 once decoded.
    let answer = raw::request(app.addr, "GET", "/api/rooms/%FF/messages", &auth).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["code"], "bad_request");
    // A query that does not parse.
    let answer = raw::request(app.addr, "GET", "/api/rooms?limit=many", &auth).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["code"], "bad_request");
    // `/ws` without a WebSocket handshake, and with a key that is not 16 bytes of base64.
    let ws = format!("/ws?token={token}");
    let answer = raw::request(app.addr, "GET", &ws, &[]).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["code"], "bad_request");
    let handshake = |key: &'static str| {
        [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
        ]
    };
    for key in [
        "",
        "not base64",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZR==",
    ] {
        let answer = raw::request(app.addr, "GET", &ws, &handshake(key)).await;
        assert_eq!(answer.status, 400, "{key:?}: {answer:?}");
        assert!(
            answer.json()["message"]
                .as_str()
                .unwrap()
                .contains("Sec-WebSocket-Key"),
            "{key:?}: {answer:?}"
        );
    }
    let answer = raw::request(app.addr, "GET", &ws, &handshake("dGhlIHNhbXBsZSBub25jZQ==")).await;
    assert_eq!(answer.status, 101, "{answer:?}");
    // Without a token, whatever else: 401 first.
    let answer = raw::request(app.addr, "GET", "/ws", &handshake("")).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    // The event stream's `since` is checked beside a `Last-Event-ID`.
    let answer = raw::request(
        app.addr,
        "GET",
        "/api/rooms/lobby/stream?since=-1",
        &[auth[0], ("Last-Event-ID", "0")],
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.json()["message"].as_str().unwrap().contains("since"));
}
