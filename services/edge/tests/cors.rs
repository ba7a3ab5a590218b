//! CORS for browser clients hosted elsewhere (services/edge/src/cors.rs): the configured origins
//! get their preflights answered and `Access-Control-Allow-Origin` on every answer, any other
//! origin nothing; the WebSocket's `Origin` check uses the same list.

mod common;
mod raw;

use common::spawn_app_with;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const LISTED: &str = "https://app.example";
const OTHER: &str = "https://evil.example";

async fn app() -> common::TestApp {
    spawn_app_with(|config| config.cors_origins = vec![LISTED.to_string()]).await
}

fn preflight(origin: &str) -> [(&str, &str); 3] {
    [
        ("Origin", origin),
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "authorization, content-type",
        ),
    ]
}

#[tokio::test]
async fn a_preflight_from_a_listed_origin_is_answered_and_from_another_gets_nothing() {
    let app = app().await;
    let answer = raw::request(app.addr, "OPTIONS", "/api/rooms", &preflight(LISTED)).await;
    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(LISTED));
    let methods = answer.header("access-control-allow-methods").unwrap();
    for method in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(method), "{methods}");
    }
    let headers = answer
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for header in ["authorization", "content-type", "last-event-id"] {
        assert!(headers.contains(header), "{headers}");
    }
    let max_age: u64 = answer
        .header("access-control-max-age")
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_age > 0);
    assert_eq!(
        answer.header("access-control-allow-credentials"),
        None,
        "tokens are no cookies"
    );

    let answer = raw::request(app.addr, "OPTIONS", "/api/rooms", &preflight(OTHER)).await;
    assert!(answer.cors().is_empty(), "{answer:?}");
    assert_eq!(answer.status, 405, "not a method of the route: {answer:?}");
    assert_eq!(answer.json()["code"], "method_not_allowed");
}

#[tokio::test]
async fn an_answer_to_a_listed_origin_carries_allow_origin_and_to_another_none() {
    let app = app().await;
    let token = app.token("ada").await;
    let bearer = format!("Bearer {token}");
    let answer = raw::request(
        app.addr,
        "GET",
        "/api/rooms",
        &[("Origin", LISTED), ("Authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(LISTED));
    assert!(
        answer
            .header("access-control-expose-headers")
            .is_some_and(|h| h.contains("Retry-After")),
        "{answer:?}"
    );
    assert!(answer.header("vary").is_some_and(|v| v.contains("Origin")));
    // Errors too: the page must be able to read why.
    let answer = raw::request(app.addr, "GET", "/api/rooms", &[("Origin", LISTED)]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.header("access-control-allow-origin"), Some(LISTED));

    for origin in [
        OTHER,
        "null",
        "https://app.example.evil",
        "http://app.example",
    ] {
        let answer = raw::request(
            app.addr,
            "GET",
            "/api/rooms",
            &[("Origin", origin), ("Authorization", &bearer)],
        )
        .await;
        assert_eq!(answer.status, 200, "{origin}");
        assert!(answer.cors().is_empty(), "{origin}: {answer:?}");
    }
}

#[tokio::test]
async fn without_a_list_there_is_no_cors_at_all() {
    let app = spawn_app_with(|_| {}).await;
    let answer = raw::request(app.addr, "OPTIONS", "/api/rooms", &preflight(LISTED)).await;
    assert_eq!(answer.status, 405);
    assert!(answer.cors().is_empty(), "{answer:?}");
    let answer = raw::request(app.addr, "GET", "/healthz", &[("Origin", LISTED)]).await;
    assert_eq!(answer.status, 200);
    assert!(answer.cors().is_empty(), "{answer:?}");
}

#[tokio::test]
async fn a_websocket_from_a_listed_origin_is_let_in_and_from_another_foreign_one_refused() {
    let app = app().await;
    let token = app.token("ada").await;
    let open = |origin: &'static str| {
        let mut request = app.ws_url(&token).into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let (mut ws, _) = open(LISTED).await.expect("a listed origin is let in");
    ws.close(None).await.unwrap();
    let refused = open(OTHER).await;
    assert!(
        matches!(refused, Err(tungstenite::Error::Http(ref r)) if r.status() == 403),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_page_of_a_listed_origin_may_ask_for_a_range_and_read_a_downloads_headers() {
    let app = app().await;
    let token = app.token("ada").await;
    let up = common::files::upload(
        &app,
        &token,
        "lobby",
        "notes.txt",
        "text/plain",
        b"hello, files",
    )
    .await;
    assert_eq!(up.status, 201);
    let id = up.json()["id"].as_str().unwrap().to_string();
    let path = format!("/api/files/{id}");

    let asked = [
        ("Origin", LISTED),
        ("Access-Control-Request-Method", "GET"),
        (
            "Access-Control-Request-Headers",
            "authorization, range, if-none-match",
        ),
    ];
    let answer = raw::request(app.addr, "OPTIONS", &path, &asked).await;
    assert_eq!(answer.status, 204, "{answer:?}");
    let allowed = answer
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for header in ["range", "if-none-match"] {
        assert!(allowed.contains(header), "{allowed}");
    }

    let bearer = format!("Bearer {token}");
    let answer = raw::request(
        app.addr,
        "GET",
        &path,
        &[
            ("Origin", LISTED),
            ("Authorization", &bearer),
            ("Range", "bytes=0-4"),
        ],
    )
    .await;
    assert_eq!(answer.status, 206, "{answer:?}");
    assert_eq!(answer.body, "hello");
    let exposed = answer
        .header("access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for header in [
        "etag",
        "content-range",
        "content-disposition",
        "content-length",
        "accept-ranges",
        "retry-after",
    ] {
        assert!(exposed.contains(header), "{header} in {exposed}");
    }
    // Each one exposed is one the answer has.
    for header in [
        "etag",
        "content-range",
        "content-disposition",
        "accept-ranges",
    ] {
        assert!(answer.header(header).is_some(), "{header}: {answer:?}");
    }
}
