//! Presence and notifications across processes: an edge killed with SIGKILL while its user is
//! online; a notifications handler rebuilt from scratch.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chatlog_test_support::{NatsServer, client::Client};
use common::Proc;
use serde_json::{Value, json};

const OFFLINE_AFTER_SECS: u64 = 2;

fn chatlog(nats: &NatsServer, data: &Path, args: &[&str]) -> Command {
    let mut cmd = common::command(&nats.url(), data, args);
    cmd.env("CHATLOG_OFFLINE_AFTER", OFFLINE_AFTER_SECS.to_string())
        .env("CHATLOG_TICK_MS", "100")
        .env("CHATLOG_HEARTBEAT_MS", "300");
    cmd
}

/// Starts `chatlog <what>` and waits until it is ready.
async fn start(nats: &NatsServer, data: &Path, what: &str) -> (Proc, Client) {
    common::setup(&nats.url());
    common::serve(chatlog(nats, data, &[what])).await
}

#[tokio::test]
async fn a_user_of_an_edge_killed_with_sigkill_goes_offline_within_the_timeout() {
    let nats = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let (_up, a) = start(&nats, data.path(), "up").await;
    let (mut doomed, b) = start(&nats, &data.path().join("b"), "edge").await;

    let mut bob = a.ws("bob").await;
    bob.join("lobby", None).await;
    let mut ada = b.ws("ada").await;
    ada.join("lobby", None).await;
    bob.presence_until("lobby", |online, _| online == ["ada", "bob"])
        .await;

    doomed.kill9();
    let killed = Instant::now();
    bob.presence_until("lobby", |online, _| online == ["bob"])
        .await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(OFFLINE_AFTER_SECS * 3),
        "ada went offline {took:?} after her edge died"
    );
    assert!(
        took >= Duration::from_millis(OFFLINE_AFTER_SECS * 1000 / 2),
        "not before her heartbeats stopped mattering ({took:?})"
    );
}

/// The `chat.notification.created` events stored for `user`.
fn stored_notifications(nats: &NatsServer, data: &Path, user: &str) -> Vec<Value> {
    common::stdout_of(chatlog(
        nats,
        data,
        &["events", "replay", "--stream", "users", "--room", user],
    ))
    .lines()
    .map(|l| serde_json::from_str::<Value>(l).unwrap())
    .filter(|l| l["event"]["type"] == "chat.notification.created")
    .collect()
}

#[tokio::test]
async fn a_notifications_handler_rebuilt_from_scratch_notifies_nobody_twice() {
    let nats = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let (mut up, a) = start(&nats, data.path(), "up").await;
    let mut bob = a.ws("bob").await;
    bob.join("lobby", None).await;
    a.wait_member("lobby", "bob").await;
    let token = a.token("ada").await;
    for text in ["hi @bob", "again @bob"] {
        let posted = a
            .post("/api/rooms/lobby/messages", &token, json!({ "text": text }))
            .await;
        assert_eq!(posted.status, 201);
        assert_eq!(
            bob.next_of("notification").await["event"]["data"]["text"],
            text
        );
    }
    assert_eq!(stored_notifications(&nats, data.path(), "bob").len(), 2);

    // Rebuild both views of the notifications handler from scratch, with it stopped.
    up.kill9();
    let out = chatlog(&nats, data.path(), &["views", "rebuild", "notifications"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored_notifications(&nats, data.path(), "bob").len(), 2);

    // A wiped mentions view under a running handler does not notify again either.
    std::fs::remove_dir_all(data.path().join("views/mentions")).unwrap();
    let (_up, a) = start(&nats, data.path(), "up").await;
    let bob_token = a.token("bob").await;
    let list = a
        .get_until("/api/notifications", &bob_token, |b| {
            b["notifications"].as_array().is_some_and(|n| n.len() == 2)
        })
        .await;
    assert_eq!(list["unread"], 2);
    // Something new after the restart is notified once, and nothing old again.
    let posted = a
        .post(
            "/api/rooms/lobby/messages",
            &token,
            json!({"text": "third @bob"}),
        )
        .await;
    assert_eq!(posted.status, 201);
    a.get_until("/api/notifications", &bob_token, |b| b["unread"] == 3)
        .await;
    assert_eq!(stored_notifications(&nats, data.path(), "bob").len(), 3);
}
