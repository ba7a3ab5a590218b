//! Messages carrying files (docs/protocol.md §10): a `send` frame and `POST .../messages` name
//! files the sender uploaded to that room, and the message carries their metadata on every read
//! path; any other id is refused, and nothing is appended.

mod common;

use common::{
    files::{png, upload},
    spawn_app,
};
use serde_json::{Value, json};

/// Uploads a small PNG as `user` to `room`; its id.
async fn uploaded(app: &common::TestApp, token: &str, room: &str, seed: u32) -> String {
    let up = upload(app, token, room, "cat.png", "image/png", &png(2000, seed)).await;
    assert_eq!(up.status, 201, "{:?}", String::from_utf8_lossy(&up.body));
    up.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_message_carries_the_files_its_sender_uploaded_to_the_room() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let file = uploaded(&app, &ada, "lobby", 1).await;
    let want = json!([{"id": file, "name": "cat.png", "size": 2000, "content_type": "image/png"}]);

    // Over HTTP, with no text: a message of files alone.
    let posted = app
        .post(
            "/api/rooms/lobby/messages",
            &ada,
            json!({"text": "", "attachments": [file]}),
        )
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let page = app
        .get_until("/api/rooms/lobby/messages", &ada, |b| {
            b["messages"].as_array().is_some_and(|m| !m.is_empty())
        })
        .await;
    assert_eq!(page["messages"][0]["attachments"], want);

    // Over the WebSocket, to a reader who joined: the live event carries them.
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    let mut ws = app.ws("ada").await;
    ws.send(
        json!({"type": "send", "room": "lobby", "id": "0190f7a2-5b1c-7000-8000-0000000000aa",
        "text": "the cat again", "attachments": [file, file]}),
    )
    .await;
    let ack = ws.next_of("ack").await;
    assert_eq!(ack["id"], "0190f7a2-5b1c-7000-8000-0000000000aa", "{ack}");
    let (_, event) = bob.next_message().await;
    let event = if event["data"]["text"] == "the cat again" {
        event
    } else {
        bob.next_message().await.1
    };
    // The same file named twice is carried once.
    assert_eq!(event["data"]["attachments"], want, "{event}");
    let events = app.events("lobby", 0, &ada).await;
    let stored: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"]["type"] == "chat.message.posted")
        .collect();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|e| e["event"]["data"]["attachments"] == want)
    );
}

#[tokio::test]
async fn an_id_of_another_user_another_room_or_no_file_is_refused_and_nothing_is_appended() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bob = app.token("bob").await;
    let created = app.post("/api/rooms", &ada, json!({"id": "dev"})).await;
    assert_eq!(created.status, 201);
    let adas = uploaded(&app, &ada, "lobby", 1).await;
    let adas_in_dev = uploaded(&app, &ada, "dev", 2).await;
    let before = app.events("lobby", 0, &ada).await.len();
    let unknown = format!("lobby.{}", "0".repeat(64));
    let many: Vec<String> = (0..11).map(|_| adas.clone()).collect();
    for (token, attachments, why) in [
        (&bob, json!([adas]), "ada's file, sent by bob"),
        (&ada, json!([adas_in_dev]), "a file of another room"),
        (&ada, json!([unknown]), "no such file"),
        (&ada, json!(["lobby.x"]), "not a file id"),
        (&ada, json!(["../etc/passwd"]), "not a file id"),
        (&ada, json!(many), "more than 10"),
        (&ada, json!("lobby.abc"), "not a list"),
    ] {
        let answer = app
            .post(
                "/api/rooms/lobby/messages",
                token,
                json!({"text": "look", "attachments": attachments}),
            )
            .await;
        assert_eq!(answer.status, 400, "{why}: {answer:?}");
        assert_eq!(answer.body["code"], "bad_request", "{why}");
    }
    // Blank text without files is still refused.
    let blank = app
        .post("/api/rooms/lobby/messages", &ada, json!({"text": "  "}))
        .await;
    assert_eq!(blank.status, 400);
    // Over the WebSocket: an error naming the frame, the connection kept.
    let mut ws = app.ws("bob").await;
    ws.send(
        json!({"type": "send", "room": "lobby", "id": "0190f7a2-5b1c-7000-8000-0000000000bb",
        "text": "mine now", "attachments": [adas]}),
    )
    .await;
    let error = ws.next_of("error").await;
    assert_eq!(
        (&error["code"], &error["id"]),
        (
            &json!("bad_request"),
            &json!("0190f7a2-5b1c-7000-8000-0000000000bb")
        ),
        "{error}"
    );
    ws.assert_alive().await;
    // Nothing of all that reached the log: one more post is the only event after.
    let (_, seq) = app.ws("ada").await.say("lobby", "still here").await;
    let after = app.events("lobby", 0, &ada).await;
    assert_eq!(after.len(), before + 1, "{after:?}");
    assert_eq!(after.last().unwrap()["seq"], seq);
}
