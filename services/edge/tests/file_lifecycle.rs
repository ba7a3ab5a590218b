//! What becomes of files when messages go (docs/protocol.md §10): a file names the messages that
//! attach it; once they are all deleted (by their author, or by a moderating function) it answers
//! 404 at once and its bytes are removed (after the author's delete, or by the sweeper), while a
//! file another live message carries stays; a file nobody attached is swept once older than the
//! unattached period.

mod common;

use std::time::Duration;

use chatlog_edge::files::{
    FileId,
    sweep::{Swept, sweep},
};
use chatlog_events::{ChatEvent, EventId, Payload, RoomId, UserId, event::MessageDeleted};
use chatlog_test_support::{eventually, eventually_ok};
use common::{
    TestApp,
    files::{download, metric, png, stored_messages, upload},
    spawn_app,
};
use serde_json::json;

const DAY: Duration = Duration::from_secs(86_400);

async fn uploaded(app: &TestApp, token: &str, room: &str, bytes: &[u8]) -> String {
    let up = upload(app, token, room, "cat.png", "image/png", bytes).await;
    assert_eq!(up.status, 201, "{:?}", String::from_utf8_lossy(&up.body));
    up.json()["id"].as_str().unwrap().to_string()
}

/// Posts a message carrying `files` as `token`'s user; its id and seq.
async fn post(app: &TestApp, token: &str, room: &str, files: &[&str]) -> (String, u64) {
    let posted = app
        .post(
            &format!("/api/rooms/{room}/messages"),
            token,
            json!({"text": "look", "attachments": files}),
        )
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let body = posted.body;
    (
        body["id"].as_str().unwrap().to_string(),
        body["seq"].as_u64().unwrap(),
    )
}

/// Deletes message `id` as `user` over the WebSocket; the delete's seq.
async fn delete(app: &TestApp, user: &str, id: &str) -> u64 {
    let mut ws = app.ws(user).await;
    ws.send(json!({"type": "delete", "room": "lobby", "message_id": id}))
        .await;
    ws.next_of("ack").await["seq"].as_u64().unwrap()
}

async fn status(app: &TestApp, token: &str, id: &str) -> u16 {
    download(app, token, id, &[]).await.status
}

async fn meta_status(app: &TestApp, token: &str, id: &str) -> u16 {
    app.get(&format!("/api/files/{id}/meta"), token)
        .await
        .status
}

async fn swept(app: &TestApp, unattached: Duration) -> Swept {
    sweep(
        &app.state.files,
        &app.state.log,
        &app.state.views,
        unattached,
    )
    .await
    .unwrap()
}

async fn exists(app: &TestApp, id: &str) -> bool {
    let id = FileId::parse(id).unwrap();
    app.state.files.get(&id).await.unwrap().is_some()
}

/// Polls (the release after a delete runs in the background) until `id` is gone from the
/// bucket, or fails after a deadline.
async fn until_removed(app: &TestApp, id: &str) {
    let what = format!("{id} removed after its message's delete");
    eventually(what, Duration::from_secs(10), async || {
        (!exists(app, id).await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_message_makes_its_file_404_at_once_and_removes_its_bytes() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bob = app.token("bob").await;
    let before = stored_messages(&app).await;
    let file = uploaded(&app, &ada, "lobby", &png(300_000, 1)).await;
    let (message, _) = post(&app, &ada, "lobby", &[&file]).await;
    assert_eq!(status(&app, &bob, &file).await, 200);
    let info = FileId::parse(&file).unwrap();
    let names = app.state.files.get(&info).await.unwrap().unwrap().messages;
    assert_eq!(
        names.keys().map(|m| m.to_string()).collect::<Vec<_>>(),
        [message.as_str()],
        "the stored message is named by its file"
    );

    delete(&app, "ada", &message).await;
    // At once, for every reader, its uploader too, exactly as a file that never was.
    assert_eq!(status(&app, &bob, &file).await, 404);
    assert_eq!(status(&app, &ada, &file).await, 404);
    assert_eq!(meta_status(&app, &bob, &file).await, 404);
    let never = format!("lobby.{}", "0".repeat(64));
    assert_eq!(
        download(&app, &bob, &file, &[]).await.body,
        download(&app, &bob, &never, &[]).await.body
    );
    until_removed(&app, &file).await;
    // Its chunks are purged (just after its info is marked deleted): only that info is left.
    eventually_ok("the chunks purged", Duration::from_secs(10), async || {
        let left = stored_messages(&app).await;
        if left == before + 1 {
            Ok(())
        } else {
            Err(format!(
                "{left} messages in the bucket's stream, not {}",
                before + 1
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn a_file_two_messages_carry_goes_with_the_second() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bob = app.token("bob").await;
    let bytes = png(5000, 2);
    let file = uploaded(&app, &ada, "lobby", &bytes).await;
    let (first, _) = post(&app, &ada, "lobby", &[&file]).await;
    // The same bytes by another uploader are the same file.
    assert_eq!(uploaded(&app, &bob, "lobby", &bytes).await, file);
    let (second, _) = post(&app, &bob, "lobby", &[&file]).await;

    delete(&app, "ada", &first).await;
    assert_eq!(status(&app, &bob, &file).await, 200);
    // Whatever the release after the delete does, the sweep too keeps it (and forgets the
    // deleted message).
    let report = swept(&app, DAY).await;
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(status(&app, &ada, &file).await, 200);
    let names = app
        .state
        .files
        .get(&FileId::parse(&file).unwrap())
        .await
        .unwrap()
        .unwrap()
        .messages;
    assert_eq!(
        names.keys().map(|m| m.to_string()).collect::<Vec<_>>(),
        [second.as_str()]
    );

    delete(&app, "bob", &second).await;
    assert_eq!(status(&app, &ada, &file).await, 404);
    until_removed(&app, &file).await;
}

#[tokio::test]
async fn one_file_attached_twice_by_its_uploader_lives_while_either_message_does() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let file = uploaded(&app, &ada, "lobby", &png(4000, 3)).await;
    let (first, _) = post(&app, &ada, "lobby", &[&file]).await;
    let (second, _) = post(&app, &ada, "lobby", &[&file]).await;
    delete(&app, "ada", &second).await;
    assert_eq!(status(&app, &ada, &file).await, 200);
    assert!(swept(&app, DAY).await.removed.is_empty());
    assert!(exists(&app, &file).await);
    delete(&app, "ada", &first).await;
    assert_eq!(status(&app, &ada, &file).await, 404);
    until_removed(&app, &file).await;
}

#[tokio::test]
async fn a_file_never_attached_is_swept_once_older_than_the_period_and_kept_before() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bob = app.token("bob").await;
    let file = uploaded(&app, &ada, "lobby", &png(2000, 4)).await;
    let attached = uploaded(&app, &ada, "lobby", &png(2000, 5)).await;
    post(&app, &ada, "lobby", &[&attached]).await;

    let kept = swept(&app, DAY).await;
    assert_eq!(kept.files, 2);
    assert!(kept.removed.is_empty(), "{kept:?}");
    // Just uploaded: readable by the room's readers.
    assert_eq!(status(&app, &bob, &file).await, 200);

    let report = swept(&app, Duration::ZERO).await;
    assert_eq!(
        report
            .removed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [file.as_str()]
    );
    assert!(!exists(&app, &file).await);
    assert_eq!(status(&app, &bob, &file).await, 404);
    // The file a live message carries is kept, however old.
    assert_eq!(status(&app, &bob, &attached).await, 200);
    // Process-wide counters (the other tests of this binary sweep too): at least these.
    assert!(metric(&app, "chatlog_edge_file_sweeps_total ").await >= 2);
    assert!(metric(&app, "chatlog_edge_files_removed_total ").await >= 1);
}

#[tokio::test]
async fn a_moderators_delete_makes_the_file_404_and_the_sweep_removes_it() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bob = app.token("bob").await;
    let file = uploaded(&app, &ada, "lobby", &png(3000, 6)).await;
    let (message, _) = post(&app, &ada, "lobby", &[&file]).await;

    // As the functions runtime appends it: straight to the log, from a function.
    let lobby = RoomId::parse("lobby").unwrap();
    let deleted = ChatEvent::in_room(
        &lobby,
        UserId::parse("mod").unwrap(),
        "function/mod",
        Payload::MessageDeleted(MessageDeleted {
            message_id: EventId::parse(&message).unwrap(),
        }),
    );
    let encoded = deleted.encode().unwrap();
    app.state
        .log
        .jetstream()
        .publish_with_headers(encoded.subject, encoded.headers, encoded.body)
        .await
        .unwrap()
        .await
        .unwrap();

    assert_eq!(status(&app, &bob, &file).await, 404);
    assert_eq!(status(&app, &ada, &file).await, 404);
    // Nothing on the edge saw that delete: the bytes stay until the sweep, which takes them
    // however recent the upload.
    assert!(exists(&app, &file).await);
    let report = swept(&app, DAY).await;
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(!exists(&app, &file).await);
}

#[tokio::test]
async fn another_rooms_reader_gets_404_for_a_file_its_message_carries() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let eve = app.token("eve").await;
    let created = app
        .post("/api/rooms", &ada, json!({"id": "secret", "private": true}))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let file = uploaded(&app, &ada, "secret", &png(2000, 7)).await;
    post(&app, &ada, "secret", &[&file]).await;
    assert_eq!(status(&app, &ada, &file).await, 200);
    assert_eq!(status(&app, &eve, &file).await, 404);
    assert_eq!(meta_status(&app, &eve, &file).await, 404);
}

#[tokio::test]
async fn two_sweepers_at_once_remove_each_file_once_without_errors() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let mut files = Vec::new();
    for seed in 0..6 {
        files.push(uploaded(&app, &ada, "lobby", &png(1500, 100 + seed)).await);
    }
    let (a, b) = tokio::join!(swept(&app, Duration::ZERO), swept(&app, Duration::ZERO));
    assert_eq!((a.failed, b.failed), (0, 0), "{a:?} {b:?}");
    let mut removed: Vec<String> = a
        .removed
        .iter()
        .chain(&b.removed)
        .map(ToString::to_string)
        .collect();
    removed.sort();
    files.sort();
    assert_eq!(removed, files, "each file removed once, by one of them");
    for file in &files {
        assert!(!exists(&app, file).await);
    }
}

#[tokio::test]
async fn a_file_deleted_with_its_message_cannot_be_attached_but_uploaded_again_it_can() {
    let app = spawn_app().await;
    let ada = app.token("ada").await;
    let bytes = png(2500, 8);
    let file = uploaded(&app, &ada, "lobby", &bytes).await;
    let (message, _) = post(&app, &ada, "lobby", &[&file]).await;
    delete(&app, "ada", &message).await;
    until_removed(&app, &file).await;
    let refused = app
        .post(
            "/api/rooms/lobby/messages",
            &ada,
            json!({"text": "again", "attachments": [file]}),
        )
        .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(uploaded(&app, &ada, "lobby", &bytes).await, file);
    post(&app, &ada, "lobby", &[&file]).await;
    assert_eq!(download(&app, &ada, &file, &[]).await.body, bytes);
}
