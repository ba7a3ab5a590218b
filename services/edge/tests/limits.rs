//! Limits per user, across connections and routes, tried as an abusive user would: many sockets,
//! HTTP and WebSocket together, all at once. Over a limit: `rate_limited` (the connection stays)
//! or 429 with `Retry-After`, and nothing beyond the budget is stored.

mod common;

use std::time::Duration;

use common::{TestApp, Ws};
use serde_json::json;

/// Budgets small enough to exhaust in a test, and no refill to speak of while it runs.
async fn strict_app() -> TestApp {
    common::spawn_app_with(|c| {
        c.limits.sends_per_second = 0.01;
        c.limits.send_burst = 10.0;
        c.limits.signals_per_second = 0.01;
        c.limits.signal_burst = 5.0;
        c.limits.rooms_per_minute = 3.0;
        c.limits.login_failures_per_minute = 2.0;
        c.limits.max_connections_per_user = 20;
    })
    .await
}

/// Reads `n` answers (acks or errors) from `ws`, counting the acks and checking each error is
/// `rate_limited`.
async fn answers(ws: &mut Ws, n: usize) -> usize {
    let mut acks = 0;
    for _ in 0..n {
        let f = loop {
            let f = ws.next().await;
            if f["type"] == "ack" || f["type"] == "error" {
                break f;
            }
        };
        if f["type"] == "ack" {
            acks += 1;
        } else {
            assert_eq!(f["code"], "rate_limited", "{f}");
        }
    }
    acks
}

#[tokio::test]
async fn twelve_sockets_and_http_of_one_user_share_one_append_budget() {
    let app = strict_app().await;
    let token = app.token("ada").await;
    let mut sockets = Vec::new();
    for _ in 0..12 {
        sockets.push(app.ws("ada").await);
    }
    for (n, ws) in sockets.iter_mut().enumerate() {
        for m in 0..4 {
            let id = uuid::Uuid::now_v7().to_string();
            ws.send(json!({"type": "send", "room": "lobby", "text": format!("{n}.{m}"), "id": id}))
                .await;
        }
    }
    let posts = (0..20).map(|n| {
        app.post(
            "/api/rooms/lobby/messages",
            &token,
            json!({"text": format!("http {n}")}),
        )
    });
    let posted = futures::future::join_all(posts).await;
    let mut acked = 0;
    for ws in &mut sockets {
        acked += answers(ws, 4).await;
    }
    let created = posted.iter().filter(|a| a.status == 201).count();
    for refused in posted.iter().filter(|a| a.status != 201) {
        assert_eq!(refused.status, 429, "{refused:?}");
        assert!(refused.text.contains("rate_limited"), "{}", refused.text);
    }
    // 48 frames and 20 posts against one budget of 10.
    assert_eq!(acked + created, 10, "{acked} acked, {created} created");
    assert_eq!(app.writes_after("lobby", 0, &token).await.len(), 10);
    for ws in &mut sockets {
        ws.assert_alive().await;
    }
    // Another user's budget is untouched.
    let mut bob = app.ws("bob").await;
    bob.say("lobby", "still room for me").await;
}

#[tokio::test]
async fn a_429_says_when_to_come_back() {
    let app = strict_app().await;
    let token = app.token("ada").await;
    for n in 0..3 {
        let a = app
            .post("/api/rooms", &token, json!({"id": format!("r{n}")}))
            .await;
        assert_eq!(a.status, 201, "{a:?}");
    }
    let raw = raw_post(&app, "/api/rooms", &token, r#"{"id":"r3"}"#).await;
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    let retry = raw
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().to_string())
        })
        .expect("a Retry-After header");
    let secs: u64 = retry.parse().unwrap();
    assert!((1..=20).contains(&secs), "{secs}");
    // The room was not created.
    assert_eq!(app.get("/api/rooms/r3/messages", &token).await.status, 404);
}

/// One raw HTTP/1.1 request, for the headers the JSON client does not keep.
async fn raw_post(app: &TestApp, path: &str, token: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn typing_join_and_leave_share_a_budget_and_append_nothing_beyond_it() {
    let app = strict_app().await;
    let mut ws = app.ws("ada").await;
    ws.join("lobby", None).await; // 1 of 5
    for n in 0..40 {
        ws.send(
            json!({"type": "typing", "room": "lobby", "active": n % 2 == 0, "id": format!("t{n}")}),
        )
        .await;
    }
    let mut limited = 0;
    while limited < 36 {
        let f = ws.next().await;
        if f["type"] == "error" {
            assert_eq!(f["code"], "rate_limited", "{f}");
            limited += 1;
        }
    }
    // A join from another socket of ada's is over the budget too.
    let mut other = app.ws("ada").await;
    other
        .send(json!({"type": "join", "room": "lobby", "id": "j"}))
        .await;
    let f = other.next_of("error").await;
    assert_eq!(f["code"], "rate_limited");
    ws.assert_alive().await;
}

#[tokio::test]
async fn sixty_sockets_opened_at_once_keep_at_most_the_cap() {
    let app = strict_app().await;
    let token = app.token("ada").await;
    let url = app.ws_url(&token);
    let tries = (0..60).map(|_| tokio_tungstenite::connect_async(url.clone()));
    let results = futures::future::join_all(tries).await;
    let mut open = Vec::new();
    for r in results {
        match r {
            Ok((socket, _)) => open.push(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(open.len(), 20);
    // A closed one frees its seat once the server has seen it go: nothing tells the client when,
    // so it tries again until a socket opens.
    drop(open.pop());
    chatlog_test_support::eventually("the seat freed", common::PATIENCE, async || {
        tokio_tungstenite::connect_async(url.clone())
            .await
            .ok()
            .map(drop)
    })
    .await;
}

#[tokio::test]
async fn failed_logins_to_an_account_are_refused_for_a_while() {
    let app = strict_app().await;
    let a = app
        .request(
            "POST",
            "/api/auth/register",
            None,
            Some(json!({"user": "ada", "password": "correct horse"})),
        )
        .await;
    assert_eq!(a.status, 201);
    let login = |password: &str| {
        app.request(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"user": "ada", "password": password})),
        )
    };
    assert_eq!(login("wrong 1").await.status, 401);
    assert_eq!(login("wrong 2").await.status, 401);
    // The guesser is out of tries: even the right password waits now.
    for password in ["wrong 3", "correct horse"] {
        let a = login(password).await;
        assert_eq!(a.status, 429, "{a:?}");
    }
    // Another account is not affected.
    let a = app
        .request(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"user": "bob", "password": "whatever1"})),
        )
        .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn unauthenticated_routes_and_connections_are_limited_per_address() {
    let app = common::spawn_app_with(|c| {
        c.limits_exempt = Vec::new();
        c.limits.auth_per_minute = 1.0;
        c.limits.auth_burst = 3.0;
        c.limits.max_connections_per_address = 4;
        c.limits.max_connections_per_user = 100;
    })
    .await;
    let guest =
        |user: &str| app.request("POST", "/api/auth/guest", None, Some(json!({"user": user})));
    let first = guest("u0").await;
    assert_eq!(first.status, 200);
    let token = first.body["token"].as_str().unwrap().to_string();
    assert_eq!(guest("u1").await.status, 200);
    assert_eq!(
        app.request(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"user": "nobody", "password": "whatever1"}))
        )
        .await
        .status,
        401
    );
    // The address is out of tries, whichever route, whatever name.
    let credentials = json!({"user": "u9", "password": "long enough"});
    for (path, body) in [
        ("/api/auth/guest", json!({"user": "u9"})),
        ("/api/auth/register", credentials.clone()),
        ("/api/auth/login", credentials),
    ] {
        let a = app.request("POST", path, None, Some(body)).await;
        assert_eq!(a.status, 429, "{path}: {a:?}");
    }
    assert!(
        app.stored(chatlog_events::Stream::Accounts, "chat.account.u9")
            .await
            .is_empty()
    );
    // Connections: four from this address, whoever the user.
    let url = app.ws_url(&token);
    let tries = (0..10).map(|_| tokio_tungstenite::connect_async(url.clone()));
    let opened = futures::future::join_all(tries)
        .await
        .into_iter()
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(opened, 4);
}

/// Reads from `stream` until the server closes it, within `patience`; returns what it read.
async fn until_closed(stream: &mut tokio::net::TcpStream, patience: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let read = tokio::time::timeout(patience, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the connection open: {out:?}");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_request_head_or_body_trickled_in_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let app = common::spawn_app_with(|c| {
        c.limits.request_head = Duration::from_millis(300);
        c.limits.request_body = Duration::from_millis(300);
    })
    .await;
    // A head that never ends (slowloris): the connection is closed, with no answer.
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let answer = until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A kept-alive connection that goes quiet after its request is closed too.
    let mut idle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body that stops half way: an error, not a held request.
    let token = app.token("ada").await;
    let mut trickle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"text\":"
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let answer = until_closed(&mut trickle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(app.writes_after("lobby", 0, &token).await.is_empty());
}
