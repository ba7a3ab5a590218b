//! Membership decided at the head of the log, end to end through real clients and a real
//! nats-server: removal takes effect at once, a removed member cannot come back by any path, a
//! join is a member before `joined`, and every read shows the writes before it.

mod common;

use chatlog_events::Stream;
use common::{TestApp, Ws, spawn_app};
use serde_json::{Value, json};

/// Creates private room `id` by `creator` with `members`.
async fn private_room(app: &TestApp, creator: &str, id: &str, members: &[&str]) {
    let token = app.token(creator).await;
    let a = app
        .post(
            "/api/rooms",
            &token,
            json!({"id": id, "private": true, "members": members}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
}

async fn remove(app: &TestApp, by: &str, room: &str, member: &str) -> u16 {
    let token = app.token(by).await;
    app.request(
        "DELETE",
        &format!("/api/rooms/{room}/members/{member}"),
        Some(&token),
        None,
    )
    .await
    .status
}

async fn add(app: &TestApp, by: &str, room: &str, member: &str) -> u16 {
    let token = app.token(by).await;
    app.post(
        &format!("/api/rooms/{room}/members"),
        &token,
        json!({"user": member}),
    )
    .await
    .status
}

/// The room's stored events, raw from the log.
async fn stored(app: &TestApp, room: &str) -> Vec<Value> {
    app.stored(Stream::Rooms, &format!("chat.room.{room}"))
        .await
}

fn joins_by(events: &[Value], user: &str) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == "chat.member.joined" && e["data"]["member"] == user)
        .count()
}

/// The next frame that is not a presence frame.
async fn next_not_presence(ws: &mut Ws) -> Value {
    loop {
        let frame = ws.next().await;
        if frame["type"] != "presence" {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_removed_member_is_out_at_once_on_every_path() {
    let app = spawn_app().await;
    private_room(&app, "ada", "secret", &["bob"]).await;
    let bob_token = app.token("bob").await;
    let mut bob = app.ws("bob").await;
    bob.join("secret", None).await;
    // A second socket of bob's, on another edge: the removal reaches every edge.
    let mut bob2 = app.another_edge().await.ws("bob").await;
    bob2.join("secret", None).await;

    assert_eq!(remove(&app, "ada", "secret", "bob").await, 204);
    for ws in [&mut bob, &mut bob2] {
        // The removal itself, then `left`, unasked.
        let (_, event) = ws.next_event().await;
        assert_eq!(event["type"], "chat.member.left", "{event}");
        let left = next_not_presence(ws).await;
        assert_eq!(left, json!({"type": "left", "room": "secret"}));
    }
    // Nothing more of the room: ada's message does not reach bob.
    let mut ada = app.ws("ada").await;
    ada.join("secret", None).await;
    ada.say("secret", "after bob").await;
    bob.send(json!({"type": "typing", "room": "secret", "active": true}))
        .await;
    let refused = next_not_presence(&mut bob).await;
    assert_eq!(refused["type"], "error", "{refused}");
    bob.send(json!({"type": "read", "room": "secret", "seq": 1}))
        .await;
    let refused = next_not_presence(&mut bob).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    bob.send(json!({"type": "join", "room": "secret"})).await;
    let refused = next_not_presence(&mut bob).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    bob.send(json!({"type": "send", "room": "secret", "text": "still here?"}))
        .await;
    let refused = next_not_presence(&mut bob).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    for path in [
        "/api/rooms/secret/messages",
        "/api/rooms/secret/events",
        "/api/rooms/secret/presence",
    ] {
        assert_eq!(app.get(path, &bob_token).await.status, 404, "{path}");
    }
    // Bob cannot put himself back, by any route.
    assert_eq!(add(&app, "bob", "secret", "bob").await, 404);
    let rooms = app.get("/api/rooms", &bob_token).await;
    assert!(
        !rooms.body.to_string().contains("\"secret\""),
        "{:?}",
        rooms.body
    );
    let events = stored(&app, "secret").await;
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "chat.member.joined" && e["data"]["user"] == "bob"),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| e["data"]["text"] == "still here?"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_join_sent_the_moment_the_removal_arrives_is_refused_every_time() {
    // Two hundred joins and as many membership changes in seconds: over the default budgets.
    let app = common::spawn_app_with(|c| {
        c.limits.signals_per_second = 1000.0;
        c.limits.signal_burst = 1000.0;
        c.limits.sends_per_second = 1000.0;
        c.limits.send_burst = 1000.0;
    })
    .await;
    private_room(&app, "ada", "secret", &[]).await;
    let mut bob = app.ws("bob").await;
    for round in 0..100 {
        assert_eq!(
            add(&app, "ada", "secret", "bob").await,
            204,
            "round {round}"
        );
        bob.join("secret", None).await;
        assert_eq!(
            remove(&app, "ada", "secret", "bob").await,
            204,
            "round {round}"
        );
        loop {
            let (_, event) = bob.next_event().await;
            if event["type"] == "chat.member.left" {
                break;
            }
        }
        bob.send(json!({"type": "join", "room": "secret"})).await;
        // `left` (the removal's) may come first; then the join's answer, a refusal.
        let mut answer = next_not_presence(&mut bob).await;
        if answer["type"] == "left" {
            answer = next_not_presence(&mut bob).await;
        }
        assert_eq!(answer["type"], "error", "round {round}: {answer}");
        assert_eq!(answer["code"], "not_found", "round {round}: {answer}");
    }
    // Every membership of bob's came from ada; bob never added himself.
    let events = stored(&app, "secret").await;
    assert_eq!(joins_by(&events, "bob"), 100);
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "chat.member.joined")
            .all(|e| e["data"]["user"] == "ada"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_room_just_created_is_listed_by_the_next_read() {
    let app = common::spawn_app_with(|c| c.limits.rooms_per_minute = 100.0).await;
    let token = app.token("ada").await;
    for n in 0..20 {
        let id = format!("room-{n}");
        let a = app.post("/api/rooms", &token, json!({"id": id})).await;
        assert_eq!(a.status, 201, "{a:?}");
        let rooms = app.get("/api/rooms?limit=500", &token).await;
        assert_eq!(rooms.status, 200);
        let listed = rooms.body.as_array().unwrap();
        assert!(
            listed.iter().any(|r| r["id"] == id.as_str()),
            "{id}: {listed:?}"
        );
    }
    // Paged by id.
    let page = app.get("/api/rooms?after=room-1&limit=2", &token).await;
    let ids: Vec<&str> = page
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["room-10", "room-11"]);
    assert_eq!(app.get("/api/rooms?limit=501", &token).await.status, 400);
    assert_eq!(app.get("/api/rooms?after=Bad.Id", &token).await.status, 400);
}

#[tokio::test]
async fn a_mention_sent_right_after_joined_notifies() {
    let app = spawn_app().await;
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    for n in 0..10 {
        let name = format!("bob{n}");
        let mut bob = app.ws(&name).await;
        bob.join("lobby", None).await;
        ada.say("lobby", &format!("hello @{name}")).await;
        let note = bob.next_of("notification").await;
        assert_eq!(note["event"]["data"]["by"], "ada", "{note}");
        assert_eq!(note["event"]["data"]["reason"], "mention");
    }
    // A join is stored before `joined`: the member is in the log already.
    let events = stored(&app, "lobby").await;
    assert_eq!(joins_by(&events, "bob9"), 1);
}
