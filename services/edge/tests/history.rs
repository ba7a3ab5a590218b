//! The history view through the edge: message pages, edits, deletes and reactions.

mod common;

use common::spawn_app;
use serde_json::json;

#[tokio::test]
async fn messages_page_backwards_with_edits_deletes_and_reactions_folded_in() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ada = app.ws("ada").await;
    let mut bob = app.ws("bob").await;
    let mut seqs = Vec::new();
    let mut ids = Vec::new();
    for n in 0..5 {
        let (id, seq) = ada.say("lobby", &format!("m{n}")).await;
        ids.push(id);
        seqs.push(seq);
    }
    app.history_caught_up(seqs[4]).await;

    // Edit and delete are the author's; reactions are anyone's.
    let edit_id = uuid::Uuid::new_v4().to_string();
    ada.send(json!({"type": "edit", "room": "lobby", "message_id": ids[0], "text": "m0 edited", "id": edit_id}))
        .await;
    assert_eq!(ada.next_of("ack").await["id"], edit_id.as_str());
    ada.send(json!({"type": "delete", "room": "lobby", "message_id": ids[1]}))
        .await;
    let deleted = ada.next_of("ack").await["seq"].as_u64().unwrap();
    bob.send(json!({"type": "react", "room": "lobby", "message_id": ids[2], "emoji": "🎉"}))
        .await;
    bob.next_of("ack").await;
    bob.send(json!({"type": "react", "room": "lobby", "message_id": ids[3], "emoji": "👍"}))
        .await;
    let last = bob.next_of("ack").await["seq"].as_u64().unwrap();
    bob.send(json!({"type": "react", "room": "lobby", "message_id": ids[3], "emoji": "👍", "remove": true}))
        .await;
    let last = last.max(bob.next_of("ack").await["seq"].as_u64().unwrap());

    // Someone else's message: forbidden; an unknown one: not found; a bad id: bad request.
    let nope = uuid::Uuid::new_v4().to_string();
    bob.send(json!({"type": "edit", "room": "lobby", "message_id": ids[0], "text": "mine now", "id": nope}))
        .await;
    let error = bob.next_of("error").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("forbidden"), Some(nope.as_str()))
    );
    bob.send(json!({"type": "delete", "room": "lobby", "message_id": ids[0]}))
        .await;
    assert_eq!(bob.next_of("error").await["code"], "forbidden");
    bob.send(json!({"type": "react", "room": "lobby", "message_id": uuid::Uuid::new_v4().to_string(), "emoji": "👍"}))
        .await;
    assert_eq!(bob.next_of("error").await["code"], "not_found");
    bob.send(json!({"type": "react", "room": "lobby", "message_id": "x", "emoji": "👍"}))
        .await;
    assert_eq!(bob.next_of("error").await["code"], "bad_request");
    bob.send(json!({"type": "react", "room": "lobby", "message_id": ids[2], "emoji": "a b"}))
        .await;
    assert_eq!(bob.next_of("error").await["code"], "bad_request");
    app.history_caught_up(deleted).await;
    ada.send(json!({"type": "edit", "room": "lobby", "message_id": ids[1], "text": "undead"}))
        .await;
    assert_eq!(
        ada.next_of("error").await["code"],
        "not_found",
        "a deleted message takes no edit"
    );

    app.history_caught_up(last).await;
    let page = app.get("/api/rooms/lobby/messages?limit=3", &token).await;
    assert_eq!(page.status, 200, "{page:?}");
    let messages = page.body["messages"].as_array().unwrap();
    let got: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, seqs[2..].to_vec(), "the latest three, oldest first");
    assert_eq!(page.body["has_more"], true);
    assert_eq!(messages[0]["reactions"], json!({"🎉": ["bob"]}));
    assert_eq!(
        messages[1]["reactions"],
        json!({}),
        "a removed reaction is gone"
    );
    assert_eq!(messages[0]["user"], "ada");
    assert!(messages[0]["time"].is_string());

    let older = app
        .get(
            &format!("/api/rooms/lobby/messages?before={}&limit=3", seqs[2]),
            &token,
        )
        .await;
    let older = older.body;
    assert_eq!(older["has_more"], false);
    let first = &older["messages"][0];
    assert_eq!(
        (first["text"].as_str(), first["edited"].as_bool()),
        (Some("m0 edited"), Some(true))
    );
    let second = &older["messages"][1];
    assert_eq!(
        (second["text"].as_str(), second["deleted"].as_bool()),
        (Some(""), Some(true))
    );

    assert_eq!(
        app.get("/api/rooms/lobby/messages?limit=0", &token)
            .await
            .status,
        400
    );
    assert_eq!(app.get("/api/rooms/a.b/messages", &token).await.status, 400);
    assert_eq!(
        app.get("/api/rooms/nowhere/messages", &token).await.status,
        404
    );
    let all = app
        .get("/api/rooms/lobby/messages?limit=1000", &token)
        .await;
    assert_eq!(
        all.body["messages"].as_array().unwrap().len(),
        5,
        "limit is capped, not refused"
    );
}

#[tokio::test]
async fn the_room_list_comes_from_the_history_view() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let created = app
        .post(
            "/api/rooms",
            &token,
            json!({"id": "dev", "name": "Developers", "topic": "rust"}),
        )
        .await;
    assert_eq!(created.status, 201);
    let posted = app
        .post("/api/rooms/dev/messages", &token, json!({"text": "hi"}))
        .await;
    let seq = posted.body["seq"].as_u64().unwrap();
    app.history_caught_up(seq).await;
    let rooms = app.get("/api/rooms", &token).await;
    let dev = rooms
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "dev")
        .cloned()
        .unwrap();
    assert_eq!(dev["name"], "Developers");
    assert_eq!(dev["topic"], "rust");
    assert_eq!(dev["private"], false);
    assert_eq!(dev["last_seq"], seq);
}

#[tokio::test]
async fn a_message_is_on_the_page_read_right_after_its_post_and_takes_an_edit_at_once() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let mut ada = app.ws("ada").await;
    // Each read follows its write at once: the view commits 20 ms after a quiet moment, so a
    // read that did not wait for it would miss the write nearly every time.
    for n in 0..10 {
        let posted = app
            .post(
                "/api/rooms/lobby/messages",
                &token,
                json!({"text": format!("p{n}")}),
            )
            .await;
        assert_eq!(posted.status, 201, "{posted:?}");
        let id = posted.body["id"].as_str().unwrap().to_string();
        let page = app.get("/api/rooms/lobby/messages?limit=1", &token).await;
        assert_eq!(
            page.body["messages"][0]["id"],
            id.as_str(),
            "the page read right after post {n}: {page:?}"
        );

        ada.send(json!({"type": "edit", "room": "lobby", "message_id": id, "text": format!("p{n} edited")}))
            .await;
        let acked = ada.next_of("ack").await;
        assert!(acked["seq"].as_u64().is_some(), "{acked}");
        let page = app.get("/api/rooms/lobby/messages?limit=1", &token).await;
        assert_eq!(
            page.body["messages"][0]["text"],
            format!("p{n} edited").as_str(),
            "the page read right after edit {n}: {page:?}"
        );
    }
}
