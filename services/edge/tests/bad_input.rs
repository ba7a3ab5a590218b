//! Bad input gets a clear error, appends nothing and leaves the connection open (docs/protocol.md
//! §3, §6).

mod common;

use common::{Ended, Ws, spawn_app};
use serde_json::json;

/// The next frame answering a request: a joined connection also gets the room's events (its own
/// `chat.member.joined`) and `presence` frames, whenever they come.
async fn reply(ws: &mut Ws) -> serde_json::Value {
    loop {
        let frame = ws.next().await;
        if frame["type"] != "event" && frame["type"] != "presence" {
            return frame;
        }
    }
}

#[tokio::test]
async fn bad_frames_get_errors_append_nothing_and_keep_the_connection() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ws = app.ws("ada").await;
    let head = ws.join("lobby", None).await;
    let id = uuid::Uuid::new_v4().to_string();

    let long_id = "x".repeat(33);
    let too_long_text = "é".repeat(4001);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "bad_request"),
        ("{\"type\":".into(), "bad_request"),
        ("[1,2]".into(), "bad_request"),
        (json!({"type": "explode"}).to_string(), "bad_request"),
        (json!({"room": "lobby"}).to_string(), "bad_request"),
        (
            json!({"type": "send", "room": "lobby"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "a.b", "text": "x"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "*", "text": "x"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": ">", "text": "x"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "UPPER", "text": "x"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "with space", "text": "x"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": long_id, "text": "x"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "", "text": "x"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "join", "room": "a.b"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "join", "room": "chat.room.>"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "join", "room": "nowhere"}).to_string(),
            "not_found",
        ),
        (
            json!({"type": "send", "room": "nowhere", "text": "x"}).to_string(),
            "not_found",
        ),
        (
            json!({"type": "join", "room": "lobby", "since": -1}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "leave", "room": "elsewhere"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "lobby", "text": "   \n "}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "lobby", "text": ""}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "lobby", "text": too_long_text}).to_string(),
            "too_large",
        ),
        (
            json!({"type": "send", "room": "lobby", "text": "x", "id": "not-a-uuid"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "lobby", "text": "x", "reply_to": "nope"}).to_string(),
            "bad_request",
        ),
        (
            json!({"type": "send", "room": "lobby", "text": 42, "id": id}).to_string(),
            "bad_request",
        ),
    ];
    for (frame, code) in &cases {
        ws.send_raw(frame).await;
        let error = reply(&mut ws).await;
        assert_eq!(error["type"], "error", "{frame} -> {error}");
        assert_eq!(error["code"], *code, "{frame} -> {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A join's error names the join (its id) and the room.
    ws.send(json!({"type": "join", "room": "nowhere", "id": "j1"}))
        .await;
    let error = reply(&mut ws).await;
    assert_eq!(
        (error["id"].as_str(), error["code"].as_str()),
        (Some("j1"), Some("not_found"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("nowhere"),
        "{error}"
    );
    // The error names the request it answers when the frame had an id.
    ws.send(json!({"type": "send", "room": "lobby", "text": 42, "id": id}))
        .await;
    assert_eq!(reply(&mut ws).await["id"], id.as_str());

    ws.assert_alive().await;
    assert!(
        app.writes_after("lobby", head, &token).await.is_empty(),
        "nothing appended"
    );

    // A text of exactly the limit is fine.
    let (_, seq) = ws.say("lobby", &"é".repeat(4000)).await;
    assert!(seq > head);
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_with_1009() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ws = app.ws("ada").await;
    let head = ws.join("lobby", None).await;
    let huge = json!({"type": "send", "room": "lobby", "text": "x".repeat(70 * 1024)});
    ws.send(huge).await;
    let (_, ended) = ws.until_end(common::PATIENCE).await;
    assert_eq!(ended, Ended::Closed(Some(1009)));
    assert!(app.writes_after("lobby", head, &token).await.is_empty());
}

#[tokio::test]
async fn a_websocket_without_a_good_token_is_refused_before_the_upgrade() {
    let app = spawn_app().await;
    for url in [
        format!("ws://{}/ws", app.addr),
        app.ws_url("garbage"),
        app.ws_url("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZGEiLCJleHAiOjk5OTk5OTk5OTl9."),
    ] {
        let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_http_api_validates_and_authenticates() {
    let app = spawn_app().await;
    let token = app.token("ada").await;

    // Unauthenticated and forged callers get 401 on every /api/ route but auth.
    for (method, path) in [
        ("GET", "/api/rooms"),
        ("POST", "/api/rooms"),
        ("POST", "/api/rooms/lobby/messages"),
        ("GET", "/api/rooms/lobby/events"),
    ] {
        let a = app.request(method, path, None, Some(json!({}))).await;
        assert_eq!(a.status, 401, "{method} {path}");
        assert_eq!(a.body["code"], "unauthorized");
        let a = app
            .request(method, path, Some("forged.token.here"), Some(json!({})))
            .await;
        assert_eq!(a.status, 401, "{method} {path}");
    }

    for bad in ["a.b", "*", ">", "UPPER", "with space", ""] {
        let a = app
            .request("POST", "/api/auth/guest", None, Some(json!({"user": bad})))
            .await;
        assert_eq!(a.status, 400, "guest {bad:?}");
        assert_eq!(a.body["code"], "bad_request");
    }
    let a = app
        .post("/api/rooms/a.b/messages", &token, json!({"text": "x"}))
        .await;
    assert_eq!(a.status, 400);
    let a = app
        .post("/api/rooms/lobby/messages", &token, json!({"text": " "}))
        .await;
    assert_eq!(a.status, 400);
    let a = app
        .post(
            "/api/rooms/lobby/messages",
            &token,
            json!({"text": "x".repeat(4001)}),
        )
        .await;
    assert_eq!(a.status, 413);
    assert_eq!(a.body["code"], "too_large");
    let a = app
        .post("/api/rooms/nowhere/messages", &token, json!({"text": "x"}))
        .await;
    assert_eq!(a.status, 404);
    let a = app.request("POST", "/api/rooms", Some(&token), None).await;
    assert_eq!(a.status, 400, "no body");
    assert!(
        app.events("lobby", 1, &token).await.is_empty(),
        "nothing appended"
    );

    // Rooms: create, conflict, list, post, read back.
    let a = app
        .post(
            "/api/rooms",
            &token,
            json!({"id": "dev", "name": "Developers", "topic": "rust"}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["id"], "dev");
    assert_eq!(a.body["name"], "Developers");
    assert_eq!(a.body["private"], false);
    let a = app.post("/api/rooms", &token, json!({"id": "dev"})).await;
    assert_eq!(a.status, 409);
    let a = app.post("/api/rooms", &token, json!({"id": "Dev!"})).await;
    assert_eq!(a.status, 400);

    let posted = app
        .post("/api/rooms/dev/messages", &token, json!({"text": "first"}))
        .await;
    assert_eq!(posted.status, 201);
    let seq = posted.body["seq"].as_u64().unwrap();
    app.history_caught_up(seq).await;
    let rooms = app.get("/api/rooms", &token).await;
    assert_eq!(rooms.status, 200);
    let dev = rooms
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "dev")
        .unwrap();
    assert_eq!(dev["last_seq"], seq);
    assert!(
        rooms
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "lobby")
    );

    let events = app.events("dev", 0, &token).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"]["type"], "chat.room.created");
    assert_eq!(events[1]["event"]["data"]["text"], "first");
    assert_eq!(events[1]["seq"], seq);
    let a = app
        .get("/api/rooms/dev/events?since=0&limit=0", &token)
        .await;
    assert_eq!(a.status, 400);
    let a = app.get("/api/rooms/dev/events?since=x", &token).await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn a_private_room_is_invisible_to_non_members() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let eve = app.token("eve").await;
    let a = app
        .post(
            "/api/rooms",
            &ada,
            json!({"id": "secret", "private": true, "members": ["bob"]}),
        )
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.body["members"], json!(["ada", "bob"]));
    app.history_caught_up(a.body["last_seq"].as_u64().unwrap())
        .await;

    let rooms = app.get("/api/rooms", &eve).await;
    assert_eq!(rooms.status, 200);
    assert!(
        rooms
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "lobby")
    );
    assert!(
        !rooms
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "secret")
    );
    assert_eq!(app.get("/api/rooms/secret/events", &eve).await.status, 404);
    let a = app
        .post("/api/rooms/secret/messages", &eve, json!({"text": "hi"}))
        .await;
    assert_eq!(a.status, 404);
    let mut ws = app.ws("eve").await;
    ws.send(json!({"type": "join", "room": "secret"})).await;
    assert_eq!(ws.next().await["code"], "not_found");

    let mut bob = app.ws("bob").await;
    let head = bob.join("secret", None).await;
    app.history_caught_up(head).await;
    let rooms = app.get("/api/rooms", &ada).await;
    assert!(
        rooms
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "secret")
    );
}

#[tokio::test]
async fn control_characters_are_refused_in_text_names_and_topics_and_nothing_is_stored() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ws = app.ws("ada").await;
    ws.join("lobby", None).await;
    // The worst the old limits let through: 3 990 `\u0001`, six bytes each in JSON.
    let controls = "\u{1}".repeat(3990);
    for text in [
        controls.as_str(),
        "a\u{202e}txt.exe",
        "bell\u{7}",
        "c1\u{85}",
    ] {
        ws.send(json!({"type": "send", "room": "lobby", "text": text, "id": uuid::Uuid::new_v4().to_string()}))
            .await;
        let answer = reply(&mut ws).await;
        assert_eq!(answer["code"], "bad_request", "{answer}");
        let posted = app
            .post("/api/rooms/lobby/messages", &token, json!({"text": text}))
            .await;
        assert_eq!(posted.status, 400, "{posted:?}");
    }
    // Newlines and tabs are text.
    let (_, seq) = ws.say("lobby", "two\nlines\tand a tab").await;
    assert!(seq > 0);
    for (body, status) in [
        (json!({"id": "ctl", "topic": "\u{1}".repeat(1000)}), 400),
        (json!({"id": "ctl", "name": "bad\u{202e}name"}), 400),
        (json!({"id": "ctl", "name": "n".repeat(101)}), 413),
        (json!({"id": "ctl", "topic": "t".repeat(1001)}), 413),
    ] {
        let a = app.post("/api/rooms", &token, body.clone()).await;
        assert_eq!(a.status, status, "{body}: {a:?}");
    }
    assert_eq!(app.get("/api/rooms/ctl/messages", &token).await.status, 404);
    let writes = app.writes_after("lobby", 0, &token).await;
    assert_eq!(writes.len(), 1, "{writes:?}");
}
