//! Redaction: a deleted message's text reaches no client again, on any path (`events`, a `join`
//! with `since`, `messages`, notifications); an edited message is served with its latest text.
//! The raw log keeps both for operators.

mod common;

use chatlog_events::Stream;
use common::spawn_app;
use serde_json::json;

#[tokio::test]
async fn a_deleted_message_is_served_redacted_and_an_edited_one_with_its_latest_text() {
    let app = spawn_app().await;
    let bob_token = app.token("bob").await;
    let mut bob = app.ws("bob").await;
    bob.join("lobby", None).await;
    let mut ada = app.ws("ada").await;
    let since = ada.join("lobby", None).await;
    let (gone, _) = ada.say("lobby", "the password is hunter2 @bob").await;
    let (kept, _) = ada.say("lobby", "teh typo").await;
    // bob was mentioned: his notification arrives live, before the deletion.
    let note = bob.next_of("notification").await;
    assert!(note.to_string().contains("hunter2"));
    ada.send(json!({"type": "edit", "room": "lobby", "message_id": kept, "text": "the typo"}))
        .await;
    ada.next_of("ack").await;
    ada.send(json!({"type": "delete", "room": "lobby", "message_id": gone}))
        .await;
    ada.next_of("ack").await;

    // `events`: the post of the deleted message without its data; the edited one's latest text.
    let events = app.events("lobby", since, &bob_token).await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("teh typo"), "{text}");
    let post = events
        .iter()
        .find(|e| e["event"]["id"] == gone.as_str())
        .expect("the deleted message's event is still listed");
    assert_eq!(post["event"]["data"], json!({"deleted": true}));
    let edited = events
        .iter()
        .find(|e| e["event"]["id"] == kept.as_str())
        .unwrap();
    assert_eq!(edited["event"]["data"]["text"], "the typo");

    // A `join` with `since`: the same.
    let mut carol = app.ws("carol").await;
    carol.join("lobby", Some(since)).await;
    let mut seen = Vec::new();
    loop {
        let (_, event) = carol.next_event().await;
        let last = event["type"] == "chat.message.deleted";
        seen.push(event);
        if last {
            break;
        }
    }
    let text = serde_json::to_string(&seen).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("teh typo"), "{text}");
    assert!(text.contains("the typo"), "{text}");

    // The page and the notifications.
    let page = app.get("/api/rooms/lobby/messages", &bob_token).await;
    assert!(!page.text.contains("hunter2"), "{}", page.text);
    let notes = app.get("/api/notifications", &bob_token).await;
    assert_eq!(notes.status, 200);
    assert!(!notes.text.contains("hunter2"), "{}", notes.text);
    assert_eq!(notes.body["notifications"][0]["text"], "");

    // The raw log still has it, for operators.
    let raw = app.stored(Stream::Rooms, "chat.room.lobby").await;
    assert!(raw.iter().any(|e| e.to_string().contains("hunter2")));
}
