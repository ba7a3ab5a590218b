//! Server-sent events and long polling (docs/protocol.md §8) on a real nats-server.

mod common;

use common::{PATIENCE, spawn_app, spawn_app_with};
use serde_json::{Value, json};

/// Posts `text` to `room` as the owner of `token`: its seq.
async fn post(app: &common::TestApp, token: &str, room: &str, text: &str) -> u64 {
    let path = format!("/api/rooms/{room}/messages");
    let answer = app.post(&path, token, json!({ "text": text })).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    answer.body["seq"].as_u64().unwrap()
}

/// The next `chat.message.posted` event of `stream`: (its id, its text).
async fn next_message(stream: &mut chatlog_test_support::client::EventStream) -> (u64, String) {
    loop {
        let event = stream.next().await.expect("the stream goes on");
        if event.event.as_deref() == Some("chat.message.posted") {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            let id = event.id.expect("an id").parse().unwrap();
            return (id, data["data"]["text"].as_str().unwrap().to_string());
        }
    }
}

#[tokio::test]
async fn an_event_stream_resumes_exactly_after_the_last_event_id() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let first = post(&app, &token, "lobby", "one").await;
    post(&app, &token, "lobby", "two").await;
    post(&app, &token, "lobby", "three").await;

    // As an EventSource that reconnects: Last-Event-ID, the token in the query.
    let path = format!("/api/rooms/lobby/stream?token={token}");
    let (status, mut stream) = app
        .event_stream(&path, &[("last-event-id", &first.to_string())])
        .await;
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut stream).await.1, "two");
    let (seen, text) = next_message(&mut stream).await;
    assert_eq!(text, "three");
    let live = post(&app, &token, "lobby", "four").await;
    assert_eq!(next_message(&mut stream).await, (live, "four".to_string()));
    drop(stream);

    // Away, two more, back with `?since=` and the header instead of the query token.
    post(&app, &token, "lobby", "five").await;
    post(&app, &token, "lobby", "six").await;
    let path = format!("/api/rooms/lobby/stream?since={seen}");
    let bearer = format!("Bearer {token}");
    let (status, mut stream) = app.event_stream(&path, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let texts = [
        next_message(&mut stream).await.1,
        next_message(&mut stream).await.1,
        next_message(&mut stream).await.1,
    ];
    assert_eq!(texts, ["four", "five", "six"], "in order, once");
}

#[tokio::test]
async fn an_event_stream_shows_deleted_messages_redacted_and_changes_nothing() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ws = app.ws("ada").await;
    let (id, seq) = ws.say("lobby", "a secret").await;
    ws.send(json!({"type": "delete", "room": "lobby", "message_id": id}))
        .await;
    ws.next_of("ack").await;
    let head = app
        .state
        .log
        .room_head(&"lobby".parse().unwrap())
        .await
        .unwrap();
    let path = format!("/api/rooms/lobby/stream?token={token}&since={}", seq - 1);
    let (_, mut stream) = app.event_stream(&path, &[]).await;
    let event = stream.next().await.unwrap();
    assert_eq!(event.id, Some(seq.to_string()));
    assert!(!event.data.contains("a secret"), "{event:?}");
    assert!(event.data.contains(r#""deleted":true"#), "{event:?}");
    // Reading appended no membership (a join records it before `joined`)...
    assert_eq!(
        app.state
            .log
            .room_head(&"lobby".parse().unwrap())
            .await
            .unwrap(),
        head
    );
    // ...and no presence: after a round trip through the stream, ada is still not online.
    let seq = post(&app, &token, "lobby", "later").await;
    assert_eq!(next_message(&mut stream).await, (seq, "later".to_string()));
    let presence = app.get("/api/rooms/lobby/presence", &token).await;
    assert_eq!(presence.body["online"], json!([]), "{presence:?}");
}

#[tokio::test]
async fn bad_stream_and_long_poll_requests_are_refused_clearly() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let (status, _) = app.event_stream("/api/rooms/lobby/stream", &[]).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = app
        .event_stream("/api/rooms/lobby/stream?token=not-a-token", &[])
        .await;
    assert_eq!(status, 401);
    let path = format!("/api/rooms/lobby/stream?token={token}");
    let (status, _) = app.event_stream(&path, &[("last-event-id", "nine")]).await;
    assert_eq!(status, 400, "Last-Event-ID not a number");
    let (status, _) = app.event_stream(&format!("{path}&since=-3"), &[]).await;
    assert_eq!(status, 400);
    let (status, _) = app
        .event_stream(&format!("/api/rooms/nowhere/stream?token={token}"), &[])
        .await;
    assert_eq!(status, 404);
    // A private room is invisible to others.
    let bob = app.token("bob").await;
    let created = app
        .post(
            "/api/rooms",
            &bob,
            json!({"id": "hideout", "private": true}),
        )
        .await;
    assert_eq!(created.status, 201);
    let (status, _) = app
        .event_stream(&format!("/api/rooms/hideout/stream?token={token}"), &[])
        .await;
    assert_eq!(status, 404);

    let answer = app.get("/api/rooms/lobby/events?wait=31", &token).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.text.contains("at most 30"), "{answer:?}");
    let answer = app.get("/api/rooms/lobby/events?wait=soon", &token).await;
    assert_eq!(answer.status, 400);
    let answer = app.get("/api/rooms/hideout/events?wait=1", &token).await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn a_long_poll_answers_with_the_event_it_waited_for() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let head = post(&app, &token, "lobby", "before").await;
    let rooms_live = app.state.hub.rooms();
    let path = format!("/api/rooms/lobby/events?since={head}&wait=20&token={token}");
    let client = app.client;
    let poll = tokio::spawn(async move { client.request("GET", &path, None, None).await });
    // Waiting on the room's feed (nobody else listens to the lobby).
    chatlog_test_support::eventually("the poll waiting", PATIENCE, async || {
        (app.state.hub.rooms() > rooms_live).then_some(())
    })
    .await;
    let seq = post(&app, &token, "lobby", "awaited").await;
    let answer = poll.await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let events = answer.body.as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["seq"], seq);
    assert_eq!(events[0]["event"]["data"]["text"], "awaited");

    // With nothing to wait for: at once.
    let answer = app
        .get(
            &format!("/api/rooms/lobby/events?since={head}&wait=20"),
            &token,
        )
        .await;
    assert_eq!(answer.body.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_waiting_long_poll_holds_one_of_the_users_connections() {
    let app = spawn_app_with(|c| c.limits.max_connections_per_user = 1).await;
    let token = app.token("ada").await;
    let head = post(&app, &token, "lobby", "before").await;
    let path = format!("/api/rooms/lobby/events?since={head}&wait=1");
    // With ada's one seat free, the poll waits and answers nothing new.
    let answer = app.get(&path, &token).await;
    assert_eq!(
        (answer.status, answer.body.clone()),
        (200, json!([])),
        "{answer:?}"
    );
    // With her socket holding it, a poll that would wait is refused; one with events is not.
    let _ws = app.ws("ada").await;
    let answer = app.get(&path, &token).await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert!(answer.retry_after.is_some());
    let answer = app
        .get(
            &format!("/api/rooms/lobby/events?since={}&wait=1", head - 1),
            &token,
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
}
