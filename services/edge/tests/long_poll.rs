//! A waiting long poll asks JetStream nothing until something arrives (alone in its test
//! binary: it reads the process-wide counter of JetStream reads).

mod common;

use std::sync::atomic::Ordering::Relaxed;

use chatlog_edge::metrics::counters::DIRECT_GETS;
use common::{PATIENCE, spawn_app};
use serde_json::json;

#[tokio::test]
async fn a_waiting_long_poll_costs_no_jetstream_read_until_an_event_arrives() {
    let app = spawn_app().await;
    let token = app.token("ada").await;
    let posted = app
        .post(
            "/api/rooms/lobby/messages",
            &token,
            json!({"text": "before"}),
        )
        .await;
    let head = posted.body["seq"].as_u64().unwrap();
    let rooms_live = app.state.hub.rooms();
    let path = format!("/api/rooms/lobby/events?since={head}&wait=2");
    let client = app.client;
    let poll_token = token.clone();
    let poll = tokio::spawn(async move { client.get(&path, &poll_token).await });
    chatlog_test_support::eventually("the poll waiting", PATIENCE, async || {
        (app.state.hub.rooms() > rooms_live).then_some(())
    })
    .await;
    let waiting = DIRECT_GETS.load(Relaxed);
    let answer = poll.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!([]), "nothing came");
    assert_eq!(
        DIRECT_GETS.load(Relaxed),
        waiting,
        "no JetStream read while it waited"
    );
}
