//! Presence, typing, notifications and unread counts through the edge, with the handlers
//! running as `chatlog up` runs them (presence timeouts shortened).

mod common;

use std::time::{Duration, Instant};

use common::{OFFLINE_AFTER, TYPING_FOR, spawn_app};
use serde_json::json;

#[tokio::test]
async fn a_join_brings_presence_and_two_tabs_stay_online_until_both_are_gone() {
    let app = spawn_app().await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    bob.presence_until("lobby", |online, _| online == ["bob"])
        .await;

    let mut tab1 = app.ws("ada").await;
    let mut tab2 = app.ws("ada").await;
    tab1.join("lobby", None).await;
    let (online, _) = tab1
        .presence_until("lobby", |o, _| o.contains(&"ada".into()))
        .await;
    assert_eq!(online, ["ada", "bob"], "a joiner gets the room's presence");
    bob.presence_until("lobby", |o, _| o == ["ada", "bob"])
        .await;
    tab2.join("lobby", None).await;

    tab1.send(json!({"type": "leave", "room": "lobby"})).await;
    tab1.next_of("left").await;
    drop(tab1);
    let token = app.token("carol").await;
    // ada still has a tab: still online. A join after tab1 left is a marker in the log: once bob
    // sees it, the view has applied tab1 going too.
    let mut dan = app.ws("dan").await;
    dan.join("lobby", None).await;
    bob.presence_until("lobby", |o, _| o.contains(&"dan".into()))
        .await;
    let presence = app.get("/api/rooms/lobby/presence", &token).await;
    assert_eq!(presence.status, 200);
    assert_eq!(presence.body["online"], json!(["ada", "bob", "dan"]));

    drop(tab2);
    bob.presence_until("lobby", |o, _| o == ["bob", "dan"])
        .await;
}

#[tokio::test]
async fn typing_shows_and_ends_by_itself() {
    let app = spawn_app().await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    bob.presence_until("lobby", |o, _| o.len() == 2).await;

    ada.send(json!({"type": "typing", "room": "lobby", "active": true}))
        .await;
    bob.presence_until("lobby", |_, t| t == ["ada"]).await;
    ada.send(json!({"type": "typing", "room": "lobby", "active": false}))
        .await;
    bob.presence_until("lobby", |_, t| t.is_empty()).await;

    // Started again, never stopped: it runs out after TYPING_FOR.
    ada.send(json!({"type": "typing", "room": "lobby", "active": true}))
        .await;
    bob.presence_until("lobby", |_, t| t == ["ada"]).await;
    let started = Instant::now();
    bob.presence_until("lobby", |_, t| t.is_empty()).await;
    assert!(
        started.elapsed() >= TYPING_FOR / 2,
        "{:?}",
        started.elapsed()
    );

    // Typing in a room one has not joined is refused.
    ada.send(json!({"type": "typing", "room": "elsewhere", "active": true}))
        .await;
    assert_eq!(ada.next_of("error").await["code"], "bad_request");
}

#[tokio::test]
async fn a_silent_connection_goes_offline_after_the_timeout() {
    // A connection whose edge stops heartbeating (here: the handler never hears of it again
    // because its events stop) is set offline by the presence handler itself.
    let app = spawn_app().await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    // Ada's "edge" is this test: it appends online, then dies without a word.
    let client = app.state.log.client().clone();
    let js = async_nats::jetstream::new(client);
    let online = chatlog_events::ChatEvent::in_room(
        &chatlog_events::RoomId::parse("lobby").unwrap(),
        chatlog_events::UserId::parse("ada").unwrap(),
        "edge",
        chatlog_events::Payload::PresenceOnline(chatlog_events::event::Presence::of("doomed")),
    );
    let enc = online.encode().unwrap();
    js.publish_with_headers(enc.subject, enc.headers, enc.body)
        .await
        .unwrap()
        .await
        .unwrap();
    bob.presence_until("lobby", |o, _| o == ["ada", "bob"])
        .await;
    let started = Instant::now();
    bob.presence_until("lobby", |o, _| o == ["bob"]).await;
    let took = started.elapsed();
    assert!(
        took < OFFLINE_AFTER * 3,
        "offline within the timeout ({took:?})"
    );
    // Bob heartbeats all along: he never timed out.
    let token = app.token("carol").await;
    let presence = app.get("/api/rooms/lobby/presence", &token).await;
    assert_eq!(presence.body["online"], json!(["bob"]));
}

#[tokio::test]
async fn a_mention_reaches_the_other_users_socket_and_the_notification_list() {
    let app = spawn_app().await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    let bob_token = app.token("bob").await;
    // Bob's membership is recorded when he joins; wait until the view knows it.
    app.wait_member("lobby", "bob").await;

    let sent = Instant::now();
    let (message_id, seq) = ada.say("lobby", "hey @bob and @nobody, look").await;
    let frame = bob.next_of("notification").await;
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    let event = &frame["event"];
    assert_eq!(event["type"], "chat.notification.created");
    assert_eq!(event["subject"], "bob");
    assert_eq!(event["data"]["room"], "lobby");
    assert_eq!(event["data"]["seq"], seq);
    assert_eq!(event["data"]["message_id"], message_id.as_str());
    assert_eq!(event["data"]["by"], "ada");
    assert_eq!(event["data"]["reason"], "mention");

    let stored = app.events("lobby", seq - 1, &bob_token).await;
    let posted = stored.iter().find(|e| e["seq"] == seq).unwrap();
    assert_eq!(
        posted["event"]["data"]["mentions"],
        json!(["bob"]),
        "@nobody does not exist"
    );

    let list = app
        .get_until("/api/notifications?unread=true", &bob_token, |b| {
            b["unread"] == 1
        })
        .await;
    let n = &list["notifications"][0];
    assert_eq!(
        (n["room"].as_str(), n["by"].as_str(), n["read"].as_bool()),
        (Some("lobby"), Some("ada"), Some(false))
    );
    let id = n["id"].as_str().unwrap().to_string();

    let read = app
        .post("/api/notifications/read", &bob_token, json!({"ids": [id]}))
        .await;
    assert_eq!(read.status, 204);
    let list = app
        .get_until("/api/notifications", &bob_token, |b| b["unread"] == 0)
        .await;
    assert_eq!(list["notifications"][0]["read"], true);
    let bad = app
        .post(
            "/api/notifications/read",
            &bob_token,
            json!({"ids": ["nope"]}),
        )
        .await;
    assert_eq!(bad.status, 400);
    // The author is never notified of its own mention.
    let ada_token = app.token("ada").await;
    ada.say("lobby", "note to self @ada").await;
    let list = app.get("/api/notifications", &ada_token).await;
    assert_eq!(list.body["notifications"], json!([]));
}

#[tokio::test]
async fn unread_counts_before_and_after_a_read_marker() {
    let app = spawn_app().await;
    let mut bob = app.ws("bob").await;
    let head = bob.join("lobby", None).await;
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    let bob_token = app.token("bob").await;
    app.wait_member("lobby", "bob").await;
    let mut last = head;
    for n in 0..3 {
        last = ada.say("lobby", &format!("unread {n}")).await.1;
    }
    let (_, own) = bob.say("lobby", "my own does not count").await;
    app.history_caught_up(own).await;
    let unread = app.get("/api/unread", &bob_token).await;
    assert_eq!(unread.status, 200, "{unread:?}");
    assert_eq!(unread.body["rooms"]["lobby"], 3);

    bob.send(json!({"type": "read", "room": "lobby", "seq": last}))
        .await;
    bob.next_of("ack").await;
    app.get_until("/api/unread", &bob_token, |b| b["rooms"]["lobby"] == 0)
        .await;
    ada.say("lobby", "one more").await;
    let (_, seq) = ada.say("lobby", "and another").await;
    app.history_caught_up(seq).await;
    assert_eq!(
        app.get("/api/unread", &bob_token).await.body["rooms"]["lobby"],
        2
    );
    // A room never joined is not listed.
    let carol = app.token("carol").await;
    assert_eq!(
        app.get("/api/unread", &carol).await.body["rooms"],
        json!({})
    );
    bob.send(json!({"type": "read", "room": "a.b", "seq": 1}))
        .await;
    assert_eq!(bob.next_of("error").await["code"], "bad_request");
}

#[tokio::test]
async fn a_peer_that_goes_silent_is_dropped_and_goes_offline() {
    // A dead network sends no close: the edge's own pings find out.
    let app = common::spawn_app_with(|c| c.limits.ping = Duration::from_millis(200)).await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    let mut ada = app.ws("ada").await;
    ada.join("lobby", None).await;
    bob.presence_until("lobby", |o, _| o == ["ada", "bob"])
        .await;
    // From here on ada's client neither reads nor answers pings (nobody polls her socket),
    // while bob's keeps reading (and so answering) all along.
    let silent = Instant::now();
    bob.presence_until("lobby", |o, _| o == ["bob"]).await;
    assert!(
        silent.elapsed() < Duration::from_secs(5),
        "{:?}",
        silent.elapsed()
    );
    drop(ada);
}

#[tokio::test]
async fn a_connection_in_three_rooms_heartbeats_once_a_period_and_stays_online_in_each() {
    use futures::StreamExt;
    let app = spawn_app().await;
    let token = app.token("bob").await;
    for room in ["attic", "kitchen"] {
        let created = app.post("/api/rooms", &token, json!({"id": room})).await;
        assert_eq!(created.status, 201, "{created:?}");
    }
    let mut live = app
        .state
        .log
        .client()
        .subscribe("live.presence.*")
        .await
        .unwrap();
    let mut bob = app.ws_with_token(&token).await;
    for room in ["lobby", "kitchen", "attic"] {
        bob.join(room, None).await;
    }
    // Heartbeats spanning more than the offline timeout: one per period, on the first room's
    // subject, naming all three (the edge heartbeats every 300 ms in the tests).
    let mut heartbeats = Vec::new();
    let started = Instant::now();
    while started.elapsed() < OFFLINE_AFTER + Duration::from_millis(500) {
        let m = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("presence events")
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if event["type"] == "chat.presence.heartbeat" {
            heartbeats.push((m.subject.to_string(), event["data"]["rooms"].clone()));
        }
    }
    let periods = started.elapsed().as_millis() / 300;
    assert!(
        !heartbeats.is_empty() && heartbeats.len() as u128 <= periods + 1,
        "{} heartbeats in {periods} periods",
        heartbeats.len()
    );
    for (subject, rooms) in &heartbeats {
        assert_eq!(subject, "live.presence.attic");
        assert_eq!(rooms, &json!(["attic", "kitchen", "lobby"]));
    }
    for room in ["lobby", "kitchen", "attic"] {
        let presence = app
            .get(&format!("/api/rooms/{room}/presence"), &token)
            .await;
        assert_eq!(presence.body["online"], json!(["bob"]), "{room}");
    }
}
