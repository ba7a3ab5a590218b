//! Who may do what: accounts, tokens, private rooms, subject injection, limits. Each bad request
//! gets its error and appends nothing.

mod common;

use common::spawn_app;
use serde_json::{Value, json};

/// A JWT signed with `secret` (HS256) or unsigned (`alg: none`), with the given claims.
fn jwt(header: Value, claims: Value, secret: Option<&[u8]>) -> String {
    use base64_url as b64;
    let head = b64(&header.to_string());
    let body = b64(&claims.to_string());
    let signature = match secret {
        Some(secret) => jsonwebtoken::crypto::sign(
            format!("{head}.{body}").as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(secret),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap(),
        None => String::new(),
    };
    format!("{head}.{body}.{signature}")
}

fn base64_url(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn forged_expired_and_unsigned_tokens_are_refused_everywhere() {
    let app = spawn_app().await;
    // ada is a guest who claimed her name: a guest token counts only for a held name.
    app.token("ada").await;
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let good_claims = json!({"sub": "ada", "iat": now(), "exp": now() + 600, "kind": "guest"});
    let valid = jwt(hs.clone(), good_claims.clone(), Some(SECRET));
    assert_eq!(
        app.get("/api/rooms", &valid).await.status,
        200,
        "the control works"
    );

    let bad = [
        (
            "forged",
            jwt(
                hs.clone(),
                good_claims.clone(),
                Some(b"someone-elses-secret-0123456789ab"),
            ),
        ),
        (
            "expired",
            jwt(
                hs.clone(),
                json!({"sub": "ada", "iat": 1, "exp": now() - 3600, "kind": "guest"}),
                Some(SECRET),
            ),
        ),
        (
            "alg none",
            jwt(
                json!({"alg": "none", "typ": "JWT"}),
                good_claims.clone(),
                None,
            ),
        ),
        (
            "no exp",
            jwt(
                hs.clone(),
                json!({"sub": "ada", "kind": "guest"}),
                Some(SECRET),
            ),
        ),
        (
            "bad subject",
            jwt(
                hs.clone(),
                json!({"sub": "a.b", "exp": now() + 600, "kind": "guest"}),
                Some(SECRET),
            ),
        ),
        ("garbage", "not.a.token".to_string()),
    ];
    for (why, token) in &bad {
        let a = app.get("/api/rooms", token).await;
        assert_eq!(a.status, 401, "{why}");
        assert_eq!(a.body["code"], "unauthorized", "{why}");
        let a = app
            .post("/api/rooms/lobby/messages", token, json!({"text": "x"}))
            .await;
        assert_eq!(a.status, 401, "{why}");
        let ws = tokio_tungstenite::connect_async(app.ws_url(token)).await;
        assert!(
            matches!(ws, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401),
            "{why}: websocket refused"
        );
    }
    let token = app.token("ada").await;
    assert!(
        app.writes_after("lobby", 0, &token).await.is_empty(),
        "nothing appended"
    );
}

#[tokio::test]
async fn accounts_register_log_in_and_own_their_name() {
    let app = spawn_app().await;
    let register = |user: &str, password: &str| json!({"user": user, "password": password});
    let a = app
        .request(
            "POST",
            "/api/auth/register",
            None,
            Some(register("ada", "correct horse")),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let token = a.body["token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/rooms", &token).await.status, 200);

    for (body, status) in [
        (register("ada", "another password"), 409),
        (register("bob", "short"), 400),
        (register("Bad.Name", "long enough"), 400),
        (json!({"user": "bob"}), 400),
    ] {
        let a = app
            .request("POST", "/api/auth/register", None, Some(body.clone()))
            .await;
        assert_eq!(a.status, status, "{body}");
    }
    let login = |password: &str| json!({"user": "ada", "password": password});
    let ok = app
        .request(
            "POST",
            "/api/auth/login",
            None,
            Some(login("correct horse")),
        )
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.body["token"].is_string());
    for body in [
        login("wrong horse"),
        json!({"user": "nobody", "password": "whatever1"}),
        json!({"user": "a.b", "password": "whatever1"}),
    ] {
        let a = app
            .request("POST", "/api/auth/login", None, Some(body.clone()))
            .await;
        assert_eq!(a.status, 401, "{body}");
    }
    // A guest cannot take a registered name, nor keep using it once it is registered.
    let a = app
        .request(
            "POST",
            "/api/auth/guest",
            None,
            Some(json!({"user": "ada"})),
        )
        .await;
    assert_eq!(a.status, 409);
    // A name a guest holds cannot be registered: the guest keeps it.
    let early = app.token("carol").await;
    let a = app
        .request(
            "POST",
            "/api/auth/register",
            None,
            Some(register("carol", "carols password")),
        )
        .await;
    assert_eq!(a.status, 409);
    assert_eq!(app.get("/api/rooms", &early).await.status, 200);

    // Only the hash is stored.
    let stored = app
        .state
        .log
        .last_message(chatlog_events::Stream::Accounts, "chat.account.ada")
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(stored.body.to_vec()).unwrap();
    assert!(text.contains("$argon2id$"), "{text}");
    assert!(!text.contains("correct horse"));
}

#[tokio::test]
async fn guest_login_can_be_switched_off() {
    let app = common::spawn_app_with(|c| c.allow_guests = false).await;
    let a = app
        .request(
            "POST",
            "/api/auth/guest",
            None,
            Some(json!({"user": "ada"})),
        )
        .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body["code"], "forbidden");
}

#[tokio::test]
async fn a_non_member_gets_not_found_on_every_path_of_a_private_room() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let eve = app.token("eve").await;
    let created = app
        .post("/api/rooms", &ada, json!({"id": "secret", "private": true}))
        .await;
    assert_eq!(created.status, 201);
    let mut ada_ws = app.ws("ada").await;
    ada_ws.join("secret", None).await;
    let (message_id, seq) = ada_ws.say("secret", "for members only").await;
    app.history_caught_up(seq).await;

    for path in [
        "/api/rooms/secret/messages",
        "/api/rooms/secret/events",
        "/api/rooms/secret/presence",
    ] {
        let a = app.get(path, &eve).await;
        assert_eq!(
            (a.status, a.body["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    let a = app
        .post(
            "/api/rooms/secret/messages",
            &eve,
            json!({"text": "let me in"}),
        )
        .await;
    assert_eq!(a.status, 404);
    let a = app
        .post("/api/rooms/secret/members", &eve, json!({"user": "eve"}))
        .await;
    assert_eq!(a.status, 404, "a non-member cannot add herself");
    let rooms = app.get("/api/rooms", &eve).await;
    assert!(
        !rooms
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "secret")
    );

    let mut eve_ws = app.ws("eve").await;
    let frames = [
        json!({"type": "join", "room": "secret"}),
        json!({"type": "join", "room": "secret", "since": 0}),
        json!({"type": "send", "room": "secret", "text": "hi"}),
        json!({"type": "edit", "room": "secret", "message_id": message_id, "text": "x"}),
        json!({"type": "delete", "room": "secret", "message_id": message_id}),
        json!({"type": "react", "room": "secret", "message_id": message_id, "emoji": "👍"}),
        json!({"type": "read", "room": "secret", "seq": seq}),
    ];
    for frame in &frames {
        eve_ws.send(frame.clone()).await;
        let error = eve_ws.next_of("error").await;
        assert_eq!(error["code"], "not_found", "{frame}");
    }
    assert_eq!(
        app.writes_after("secret", seq, &ada).await.len(),
        0,
        "nothing appended"
    );

    // Membership changes are events: added, eve sees it; removed, she does not.
    let a = app
        .post("/api/rooms/secret/members", &ada, json!({"user": "eve"}))
        .await;
    assert_eq!(a.status, 204);
    app.get_until("/api/rooms/secret/messages", &eve, |b| {
        b["messages"].is_array()
    })
    .await;
    eve_ws.join("secret", None).await;
    let a = app
        .request("DELETE", "/api/rooms/secret/members/ada", Some(&eve), None)
        .await;
    assert_eq!(a.status, 403, "only the creator removes others");
    let a = app
        .request("DELETE", "/api/rooms/secret/members/eve", Some(&ada), None)
        .await;
    assert_eq!(a.status, 204);
    // Her open socket hears she was removed, and then nothing more of the room.
    let (_, left) = eve_ws.next_event().await;
    assert_eq!(left["type"], "chat.member.left");
    assert_eq!(left["data"]["member"], "eve");
    let (_, after) = ada_ws.say("secret", "eve is gone").await;
    // Once ada's socket has it, the feed has handed it to every subscriber it still has.
    while ada_ws.next_message().await.0 != after {}
    eve_ws.send(json!({"type": "ping"})).await;
    loop {
        let frame = eve_ws.next().await;
        assert_ne!(
            frame["type"], "event",
            "an event after her removal (seq {after}): {frame}"
        );
        if frame["type"] == "pong" {
            break;
        }
    }
    chatlog_test_support::eventually(
        "eve no longer sees the room",
        common::PATIENCE,
        async || (app.get("/api/rooms/secret/messages", &eve).await.status == 404).then_some(()),
    )
    .await;
}

#[tokio::test]
async fn editing_someone_elses_message_is_forbidden_and_appends_nothing() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ada = app.ws("ada").await;
    let mut eve = app.ws("eve").await;
    let (id, seq) = ada.say("lobby", "mine").await;
    app.history_caught_up(seq).await;
    for frame in [
        json!({"type": "edit", "room": "lobby", "message_id": id, "text": "hijacked"}),
        json!({"type": "delete", "room": "lobby", "message_id": id}),
    ] {
        eve.send(frame.clone()).await;
        assert_eq!(eve.next_of("error").await["code"], "forbidden", "{frame}");
    }
    assert!(app.writes_after("lobby", seq, &token).await.is_empty());
}

#[tokio::test]
async fn subject_injection_ids_are_refused_on_every_endpoint_and_frame() {
    // Every bad id on every frame: far more frames than a user's budgets allow.
    let app = common::spawn_app_with(|c| {
        c.limits.signals_per_second = 10_000.0;
        c.limits.signal_burst = 10_000.0;
        c.limits.sends_per_second = 10_000.0;
        c.limits.send_burst = 10_000.0;
    })
    .await;
    let token = app.token("ada").await;
    let injections = [
        "a.b",
        "*",
        ">",
        "lobby.>",
        "lobby*",
        "UPPER",
        "with space",
        "a\tb",
        "%2e",
        "x".repeat(33).leak(),
    ];
    for bad in injections {
        let enc: String = bad
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        for (method, path) in [
            ("GET", format!("/api/rooms/{enc}/messages")),
            ("GET", format!("/api/rooms/{enc}/events")),
            ("GET", format!("/api/rooms/{enc}/presence")),
            ("POST", format!("/api/rooms/{enc}/messages")),
            ("POST", format!("/api/rooms/{enc}/members")),
        ] {
            let a = app
                .request(
                    method,
                    &path,
                    Some(&token),
                    Some(json!({"text": "x", "user": "bob"})),
                )
                .await;
            assert_eq!(a.status, 400, "{method} {path}: {a:?}");
        }
        let a = app.post("/api/rooms", &token, json!({"id": bad})).await;
        assert_eq!(a.status, 400, "create {bad:?}");
        let a = app
            .post(
                "/api/rooms",
                &token,
                json!({"id": "ok", "private": true, "members": [bad]}),
            )
            .await;
        assert_eq!(a.status, 400, "member {bad:?}");
        let a = app
            .request("POST", "/api/auth/guest", None, Some(json!({"user": bad})))
            .await;
        assert_eq!(a.status, 400, "guest {bad:?}");
        let a = app
            .request(
                "POST",
                "/api/auth/register",
                None,
                Some(json!({"user": bad, "password": "long enough"})),
            )
            .await;
        assert_eq!(a.status, 400, "register {bad:?}");
    }
    let mut ws = app.ws("ada").await;
    for bad in injections {
        for frame in [
            json!({"type": "join", "room": bad}),
            json!({"type": "leave", "room": bad}),
            json!({"type": "send", "room": bad, "text": "x"}),
            json!({"type": "typing", "room": bad, "active": true}),
            json!({"type": "read", "room": bad, "seq": 1}),
            json!({"type": "edit", "room": bad, "message_id": uuid::Uuid::new_v4().to_string(), "text": "x"}),
            json!({"type": "react", "room": bad, "message_id": uuid::Uuid::new_v4().to_string(), "emoji": "x"}),
        ] {
            ws.send(frame.clone()).await;
            assert_eq!(ws.next_of("error").await["code"], "bad_request", "{frame}");
        }
    }
    ws.assert_alive().await;
    assert!(app.writes_after("lobby", 0, &token).await.is_empty());
}

#[tokio::test]
async fn the_send_rate_is_limited_and_the_connection_stays() {
    let app = common::spawn_app_with(|c| {
        c.limits.sends_per_second = 1.0;
        c.limits.send_burst = 5.0;
    })
    .await;
    let token = app.token("ada").await;
    let mut ws = app.ws("ada").await;
    for n in 0..8 {
        ws.send(json!({"type": "send", "room": "lobby", "text": format!("m{n}"), "id": uuid::Uuid::new_v4().to_string()}))
            .await;
    }
    let mut acks = 0;
    let mut limited = 0;
    while acks + limited < 8 {
        let f = ws.next().await;
        match f["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => {
                assert_eq!(f["code"], "rate_limited");
                assert!(f["id"].is_string(), "the error names the send");
                limited += 1;
            }
            _ => {}
        }
    }
    assert_eq!((acks, limited), (5, 3));
    ws.assert_alive().await;
    assert_eq!(app.writes_after("lobby", 0, &token).await.len(), 5);
}

#[tokio::test]
async fn rooms_per_connection_and_connections_per_user_are_limited() {
    let app = common::spawn_app_with(|c| {
        c.limits.max_rooms_per_connection = 2;
        c.limits.max_connections_per_user = 2;
    })
    .await;
    let token = app.token("ada").await;
    for id in ["one", "two"] {
        assert_eq!(
            app.post("/api/rooms", &token, json!({"id": id}))
                .await
                .status,
            201
        );
    }
    let mut ws = app.ws("ada").await;
    ws.join("one", None).await;
    ws.join("two", None).await;
    ws.send(json!({"type": "join", "room": "lobby"})).await;
    let error = ws.next_of("error").await;
    assert_eq!(error["code"], "bad_request");
    ws.assert_alive().await;

    let _second = app.ws("ada").await;
    let third = tokio_tungstenite::connect_async(app.ws_url(&token)).await;
    assert!(
        matches!(third, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 429),
        "a third connection is refused"
    );
}

#[tokio::test]
async fn a_websocket_from_a_foreign_origin_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut request = app.ws_url(&token).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 403),
        "{refused:?}"
    );
    let mut request = app.ws_url(&token).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "http://localhost:3000".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}
